"""Participants, sites and the planted group-level truth (rim+ counts depend on EDSS and site)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .params import LesionParams, PrlCountModel, SiteParams


@dataclass(frozen=True)
class Site:
    """One scanner site's protocol."""

    label: str
    index: int
    qsm_spacing_mm: float
    qsm_noise_ppb: float
    tikhonov_lambda: float
    residual_background_ppb: float
    flair_protocol: str
    flair_snr: float
    flair_oblique_deg: float
    flair_intensity_scale: float
    gre_snr: float


@dataclass(frozen=True)
class Participant:
    """Demographics and lesion counts of one participant."""

    participant_id: str
    site: Site
    age: int
    sex: str
    edss: float
    disease_duration: int
    expected_rim_positive: float
    n_rim_positive: int
    n_rim_negative: int


def draw_sites(rng: np.random.Generator, n_sites: int, params: SiteParams) -> list[Site]:
    """Draw each site's protocol; FLAIR protocols alternate 3D, 2D, 3D, ..."""
    sites = []
    for index in range(n_sites):
        sites.append(Site(
            label=f"site{index + 1}", index=index,
            qsm_spacing_mm=round(float(rng.uniform(*params.qsm_spacing_mm)), 2),
            qsm_noise_ppb=float(rng.uniform(*params.qsm_noise_ppb)),
            tikhonov_lambda=float(rng.uniform(*params.tikhonov_lambda)),
            residual_background_ppb=float(rng.uniform(*params.residual_background_ppb)),
            flair_protocol=params.flair_protocols[index % len(params.flair_protocols)],
            flair_snr=float(rng.uniform(*params.flair_snr)),
            flair_oblique_deg=float(rng.uniform(*params.flair_oblique_deg)),
            flair_intensity_scale=float(rng.uniform(*params.flair_intensity_scale)),
            gre_snr=float(rng.uniform(*params.gre_snr))))
    return sites


def expected_rim_positive_count(edss: float, site_index: int, model: PrlCountModel) -> float:
    """Mean of the planted negative-binomial rim+ count: exp(b0 + b_edss (EDSS-3) + b_site)."""
    site_coef = model.site_coefs[site_index % len(model.site_coefs)]
    return float(np.exp(model.intercept + model.edss_coef * (edss - 3.0) + site_coef))


def draw_participant(rng: np.random.Generator, number: int, site: Site, model: PrlCountModel,
                     lesions: LesionParams) -> Participant:
    """Draw demographics, then rim+ count (NegBin) and the total lesion count (log-normal)."""
    age = int(np.clip(rng.normal(40, 10), 18, 70))
    duration = int(np.clip(rng.gamma(2.0, 4.0), 0, age - 15))
    # + 0.0 turns the -0.0 that rounding a small negative value gives into 0.0 (participants.tsv)
    edss = float(np.clip(np.round(2 * (1.0 + 0.15 * duration + rng.normal(0, 1.2))) / 2, 0, 7.5)) + 0.0
    mu = expected_rim_positive_count(edss, site.index, model)
    k = model.dispersion_size
    n_pos = int(min(rng.negative_binomial(k, k / (k + mu)), model.max_count))
    low, high = lesions.count_range
    total = int(np.clip(round(lesions.count_median * np.exp(lesions.count_log_sd * rng.normal())),
                        low, high))
    total = max(total, n_pos)
    sex = "F" if rng.uniform() < 0.7 else "M"
    return Participant(f"sub-{number:03d}", site, age, sex, edss, duration, mu, n_pos, total - n_pos)
