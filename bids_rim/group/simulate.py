"""Participant-level lesion tables drawn from a known count model, for tests and the benchmark.

No images: each subject gets a ``participants.tsv`` row and a lesion table whose rim+ count is
Poisson with log rate ``base_log_rate + site_log_rate[site] + edss_log_rate · EDSS``. Rim+
lesions get probabilities in (0.5, 1), rim- lesions in (0, 0.5), so the model's label
(threshold 0.5) equals the planted truth and regressions on the labels see the planted rates.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

TABLE_COLUMNS = ("lesion_id", "centroid_x_mm", "centroid_y_mm", "centroid_z_mm", "volume_mm3",
                 "qsm_shell_minus_core_ppb", "flair_contrast", "rim_probability", "rim_uncertainty", "rim_label")


@dataclass(frozen=True)
class SimulatedCohort:
    """Where the simulated dataset lies and the truth it was drawn from."""

    bids_dir: Path
    output_dir: Path
    participants: pd.DataFrame  # participants.tsv plus the planted rim+ count
    base_log_rate: float
    edss_log_rate: float
    site_log_rate: Mapping[str, float]


def lesion_table_text(rng: np.random.Generator, n_rim_positive: int, n_rim_negative: int) -> str:
    """A lesion table (TSV text) with ``n_rim_positive`` rim+ and ``n_rim_negative`` rim- lesions."""
    labels = np.r_[np.ones(n_rim_positive, int), np.zeros(n_rim_negative, int)]
    probabilities = np.where(labels == 1, 0.5 + 0.5 * rng.beta(3, 2, labels.size), 0.5 * rng.beta(1.5, 4, labels.size))
    lines = ["\t".join(TABLE_COLUMNS)]
    for lesion_id, (label, probability) in enumerate(zip(labels, probabilities), start=1):
        x_mm, y_mm, z_mm = rng.uniform(-60, 60, 3)
        lines.append(f"{lesion_id}\t{x_mm:.1f}\t{y_mm:.1f}\t{z_mm:.1f}\t{rng.lognormal(4.5, 0.8):.1f}\t"
                     f"{(12 if label else 1) + rng.normal(0, 4):.2f}\t{1.5 + rng.normal(0, 0.2):.3f}\t"
                     f"{probability:.4f}\t{rng.uniform(0, 0.1):.4f}\t{label}")
    return "\n".join(lines) + "\n"


def simulate_cohort_tables(root: Path, *, n_subjects: int, site_log_rate: Mapping[str, float],
                           edss_log_rate: float = 0.0, base_log_rate: float = 0.0, mean_rim_negative: float = 8.0,
                           dispersion_alpha: float = 0.0, seed: int = 0) -> SimulatedCohort:
    """Write ``root/bids`` (dataset_description.json, participants.tsv) and ``root/out`` lesion tables.

    ``dispersion_alpha`` > 0 draws counts from a negative binomial (gamma-Poisson mixture, NB2:
    variance = mean + alpha·mean²) instead of a Poisson.
    """
    rng = np.random.default_rng(seed)
    bids_dir, output_dir = Path(root) / "bids", Path(root) / "out"
    bids_dir.mkdir(parents=True, exist_ok=True)
    (bids_dir / "dataset_description.json").write_text(
        json.dumps({"Name": "simulated tables", "BIDSVersion": "1.10.0"}))
    sites = list(site_log_rate)
    width = max(3, len(str(n_subjects)))
    participants = pd.DataFrame({
        "participant_id": [f"sub-{index:0{width}d}" for index in range(1, n_subjects + 1)],
        "site": [sites[index % len(sites)] for index in range(n_subjects)],
        "age": rng.integers(20, 65, n_subjects),
        "sex": rng.choice(["F", "M"], n_subjects, p=[0.7, 0.3]),
        "EDSS": rng.choice(np.arange(0, 8.5, 0.5), n_subjects),
        "disease_duration": rng.integers(0, 30, n_subjects),
    })
    log_rate = base_log_rate + participants["site"].map(site_log_rate) + edss_log_rate * participants["EDSS"]
    rate = np.exp(log_rate)
    if dispersion_alpha > 0:
        rate = rate * rng.gamma(1 / dispersion_alpha, dispersion_alpha, n_subjects)
    participants["planted_rim_positive_count"] = rng.poisson(rate)
    participants.drop(columns="planted_rim_positive_count").to_csv(bids_dir / "participants.tsv", sep="\t", index=False)
    for participant, count in zip(participants["participant_id"], participants["planted_rim_positive_count"]):
        anat = output_dir / participant / "anat"
        anat.mkdir(parents=True, exist_ok=True)
        text = lesion_table_text(rng, int(count), int(rng.poisson(mean_rim_negative)))
        (anat / f"{participant}_desc-lesions_table.tsv").write_text(text)
    return SimulatedCohort(bids_dir, output_dir, participants, base_log_rate, edss_log_rate, dict(site_log_rate))
