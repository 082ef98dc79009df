"""Every realism number of the synthetic cohort, in one place.

Each difficulty is a frozen :class:`SynthParams`. ``realistic`` holds the defaults of issue 2;
``easy`` and ``hard`` are built from it with :func:`dataclasses.replace` and change only the
entries listed in ``DIFFICULTY_CHANGES`` (documented in docs/synth.md). Ranges are (low, high)
tuples sampled uniformly unless the name says otherwise. Susceptibility is in ppm relative to
CSF, lesion contrasts in ppb relative to normal-appearing white matter (NAWM).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

Range = tuple[float, float]


@dataclass(frozen=True)
class TissueParams:
    """Susceptibility (ppm, relative to CSF) and FLAIR intensity (relative to WM) of tissues."""

    chi_wm_ppm: Range = (-0.04, -0.02)
    chi_cortical_gm_ppm: Range = (0.01, 0.03)
    chi_globus_pallidus_ppm: Range = (0.15, 0.20)
    chi_putamen_ppm: Range = (0.06, 0.10)
    chi_caudate_ppm: Range = (0.05, 0.08)
    chi_thalamus_ppm: Range = (0.00, 0.02)
    chi_red_nucleus_ppm: Range = (0.10, 0.18)
    chi_substantia_nigra_ppm: Range = (0.10, 0.18)
    chi_dentate_ppm: Range = (0.09, 0.11)
    chi_vein_ppm: Range = (0.25, 0.45)
    chi_calcification_ppm: Range = (-0.15, -0.05)
    # smooth, low-amplitude susceptibility texture inside tissue (myelin/iron heterogeneity)
    chi_texture_sd_ppm: float = 0.004
    chi_texture_scale_mm: float = 6.0
    flair_wm: float = 1.0
    flair_gm: float = 1.3
    flair_csf: float = 0.2
    flair_deep_gm: float = 1.15
    flair_vein: float = 0.9
    r2star_wm_hz: float = 20.0
    r2star_gm_hz: float = 15.0
    r2star_csf_hz: float = 3.0
    r2star_per_ppm_iron_hz: float = 110.0      # R2* rise per ppm of paramagnetic iron
    r2star_vein_hz: float = 60.0
    r2star_lesion_change_hz: float = -3.0       # demyelination lowers R2*
    proton_density_wm: float = 0.70
    proton_density_gm: float = 0.80
    proton_density_csf: float = 1.00
    proton_density_lesion_change: float = 0.08


@dataclass(frozen=True)
class AnatomyParams:
    """Per-subject variation of the MNI152 anatomy."""

    scale_range: Range = (0.92, 1.08)          # per-axis head size factor
    rotation_deg_sd: float = 4.0                # head pose in the scanner (each axis)
    translation_mm_sd: float = 3.0
    deformation_mm_sd: float = 2.0              # smooth non-linear warp amplitude
    deformation_scale_mm: float = 20.0          # its spatial correlation length
    n_medullary_veins: int = 140                # per brain, radiating from the ventricles
    n_cortical_veins: int = 60
    medullary_length_mm: Range = (12.0, 35.0)
    cortical_length_mm: Range = (20.0, 50.0)
    vein_radius_mm: Range = (0.3, 0.8)
    cortical_vein_radius_mm: Range = (0.5, 0.9)
    deep_vein_radius_mm: Range = (0.9, 1.4)


@dataclass(frozen=True)
class LesionParams:
    """Lesion burden, geometry and classes (rim+, rim-, mimics)."""

    count_median: float = 20.0                  # total lesions per patient, log-normal
    count_log_sd: float = 0.75
    count_range: tuple[int, int] = (3, 80)
    volume_median_mm3: float = 100.0            # log-normal
    volume_log_sd: float = 1.0
    volume_range_mm3: Range = (10.0, 5000.0)
    rim_positive_volume_factor: float = 1.5     # PRLs are larger on average (literature)
    elongation: Range = (1.2, 2.0)              # long / short semi-axis
    shape_irregularity: float = 0.15            # relative radial perturbation
    location_weights: dict[str, float] = field(default_factory=lambda: {
        "periventricular": 0.55, "juxtacortical": 0.2, "deep_white_matter": 0.15,
        "infratentorial": 0.10})
    confluent_pair_fraction: float = 0.08
    flair_ratio_to_wm: Range = (1.6, 2.6)
    rim_negative_chi_ppb: Range = (-10.0, 3.0)  # iso/hypo lesions (demyelination)
    diffuse_fraction_of_rim_negative: float = 0.10
    diffuse_chi_ppb: Range = (10.0, 40.0)
    central_vein_fraction: float = 0.5
    edge_vein_fraction_of_rim_negative: float = 0.15
    calcification_fraction: float = 0.02
    rim_chi_ppb: Range = (15.0, 50.0)
    rim_thickness_mm: Range = (0.7, 2.0)
    rim_coverage: Range = (2.0 / 3.0, 1.0)
    rim_core_chi_ppb: Range = (0.0, 10.0)


@dataclass(frozen=True)
class PrlCountModel:
    """Planted truth for group statistics: rim+ count per patient ~ NegBin(mean mu, size k).

    log(mu) = intercept + edss_coef * (EDSS - 3) + site_coef[site index] (site 1 is the reference;
    sites beyond the list reuse it cyclically).
    """

    # intercept and size set so that, over the drawn EDSS and the site effects, ~10 % of
    # lesions are rim+, ~50 % of patients have >= 1 and ~20 % >= 4 (issue 2; meta-analyses:
    # 10-12 % of lesions, 41-52 % of patients). 20 000 drawn patients at 1 / 2 / 3 sites:
    # 8.5 / 10.4 / 9.0 % of lesions, >= 1 PRL 46 / 49 / 46 %, >= 4 PRL 19 / 22 / 19 %.
    intercept: float = 0.95                     # mu = 2.59 at EDSS 3, site 1
    edss_coef: float = 0.25                     # per EDSS point
    site_coefs: tuple[float, ...] = (0.0, 0.4, -0.3)
    dispersion_size: float = 0.3                # NegBin size k (smaller = more overdispersed)
    max_count: int = 30


@dataclass(frozen=True)
class SiteParams:
    """Ranges from which each site's protocol is drawn."""

    qsm_spacing_mm: Range = (0.6, 1.0)
    qsm_noise_ppb: Range = (5.0, 10.0)          # target white-noise level of the reconstruction
    tikhonov_lambda: Range = (0.01, 0.04)       # reconstruction quality: lower = more streaking
    residual_background_ppb: Range = (1.0, 4.0)  # smooth field left after background removal
    flair_protocols: tuple[str, ...] = ("3D", "2D")   # 3D: 1 mm iso; 2D: 0.9 x 0.9 x 3 mm
    flair_snr: Range = (15.0, 30.0)
    flair_bias_amplitude: float = 0.20          # +-20 %
    flair_oblique_deg: Range = (0.0, 15.0)      # FOV tilt of the FLAIR slab
    flair_intensity_scale: Range = (300.0, 1200.0)
    gre_snr: Range = (40.0, 80.0)
    gre_echo_time_s: float = 0.02
    head_offset_deg: Range = (0.0, 6.0)         # rigid head motion between FLAIR and QSM
    head_offset_mm: Range = (0.0, 6.0)


@dataclass(frozen=True)
class RaterParams:
    """Imperfection of the human rater who hands over masks and rim labels."""

    mask_threshold: Range = (0.35, 0.65)        # partial-volume threshold: <0.5 dilates, >0.5 erodes
    missed_small_lesion_mm3: float = 30.0
    missed_small_lesion_prob: float = 0.15
    faint_rim_cnr: float = 1.5                  # below this, a rater misses a rim with prob
    faint_rim_missed_prob: float = 0.3
    edge_vein_called_rim_prob: float = 0.15


@dataclass(frozen=True)
class SynthParams:
    """All realism numbers of one difficulty."""

    difficulty: str = "realistic"
    tissue: TissueParams = TissueParams()
    anatomy: AnatomyParams = AnatomyParams()
    lesions: LesionParams = LesionParams()
    prl_counts: PrlCountModel = PrlCountModel()
    sites: SiteParams = SiteParams()
    rater: RaterParams = RaterParams()


_REALISTIC = SynthParams()

DIFFICULTY_CHANGES: dict[str, dict[str, dict[str, object]]] = {
    "easy": {
        "lesions": {"rim_chi_ppb": (30.0, 60.0), "rim_thickness_mm": (1.2, 2.0),
                    "edge_vein_fraction_of_rim_negative": 0.05},
        "sites": {"qsm_noise_ppb": (3.0, 5.0), "head_offset_deg": (0.0, 2.0),
                  "head_offset_mm": (0.0, 2.0)},
    },
    "realistic": {},
    "hard": {
        "lesions": {"rim_chi_ppb": (8.0, 35.0), "rim_coverage": (0.5, 1.0),
                    "edge_vein_fraction_of_rim_negative": 0.25,
                    "diffuse_fraction_of_rim_negative": 0.2},
        "sites": {"qsm_noise_ppb": (8.0, 14.0), "tikhonov_lambda": (0.005, 0.02)},
    },
}


def get_params(difficulty: str = "realistic") -> SynthParams:
    """Return the parameter table of a difficulty (``easy``, ``realistic`` or ``hard``)."""
    if difficulty not in DIFFICULTY_CHANGES:
        raise ValueError(f"unknown difficulty {difficulty!r}; choose one of "
                         f"{', '.join(DIFFICULTY_CHANGES)}")
    params = _REALISTIC
    for group, changes in DIFFICULTY_CHANGES[difficulty].items():
        params = replace(params, **{group: replace(getattr(params, group), **changes)})
    return replace(params, difficulty=difficulty)


def with_qsm_noise_scaled(params: SynthParams, factor: float) -> SynthParams:
    """``params`` with every site's QSM noise range multiplied by ``factor`` (> 0).

    For studies of how much a method loses to noise, not for benchmarks: everything else, the
    random draws included, stays as it is, so the same seed gives the same cohort at another
    noise level.
    """
    if not factor > 0:
        raise ValueError(f"QSM noise scale must be > 0, got {factor}")
    low, high = params.sites.qsm_noise_ppb
    return replace(params, sites=replace(params.sites, qsm_noise_ppb=(low * factor, high * factor)))
