"""The oracle: an ideal observer of each lesion's true rim, and its PR AUC.

For each true lesion, the observer knows the lesion's true extent and measures, on the
reconstructed QSM, the median of the edge shell (lesion voxels within ``SHELL_MM`` of the edge)
minus the median of the core. It divides by the standard deviation of that same contrast over
independent redraws of the noisy reconstruction around the lesion, giving a
contrast-to-noise ratio. Like an expert reader, who follows a vessel through neighbouring
slices and discounts it, it leaves out voxels touched by a known vein or calcification (and
their one-voxel blooming) before taking the medians.

Two observers are reported:

* the **oracle** (the issue's "ideal observer that knows each lesion's true rim CNR"): it also
  knows everything in the image except the rim (signal known, background known, in the sense of
  Barrett & Myers), so it subtracts the shell-minus-core contrast that the same lesion shows in
  the noise-free reconstruction *without* rims (bright neighbouring cortex, CSF, veins,
  blooming). Its decision variable ``observed_rim_cnr`` is the rim's own contrast plus noise,
  over the noise SD; ``rim_cnr`` is the noise-free value. ``oracle_pr_auc`` ranks by it.
  Its statistic (medians of a shell and a core, veins left out) is a reader's, not the most
  efficient one: a matched filter that knows the rim's signal reaches about three times the
  CNR (docs/synth.md), so this ceiling is reader-like by design.
* the **image contrast** observer ranks by the plain shell-minus-core contrast of the noisy
  image over its noise (``observed_cnr``; ``expected_cnr`` noise-free). It is fooled by bright
  neighbours and veins, as a naive reader is; its PR AUC is reported beside the oracle's.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from .qsm import NoiseModel, local_noise_realisations

SHELL_MM = 1.5
N_NOISE_REALISATIONS = 16


def shell_and_core(labels: np.ndarray, lesion_id: int, spacing_mm: float,
                   excluded: np.ndarray | None = None,
                   tight_box: tuple[slice, ...] | None = None
                   ) -> tuple[tuple[slice, ...], np.ndarray, np.ndarray] | None:
    """Box and boolean shell/core masks (in the box) of one lesion of a label map.

    ``excluded`` (bool, whole grid) marks voxels to leave out (veins); a part that would be
    left empty keeps its voxels instead. ``tight_box`` (from ``ndimage.find_objects``) saves
    searching the whole grid.
    """
    if tight_box is None:
        found = ndimage.find_objects((labels == lesion_id).astype(np.int8))
        tight_box = found[0] if found else None
    if tight_box is None:
        return None
    pad = 1
    box = tuple(slice(max(0, s.start - pad), min(n, s.stop + pad))
                for s, n in zip(tight_box, labels.shape))
    region = labels[box]
    inside = region == lesion_id
    depth = ndimage.distance_transform_edt(inside) * spacing_mm
    shell = inside & (depth <= SHELL_MM)
    core = inside & (depth > SHELL_MM)
    if not core.any():
        core = inside & (depth >= depth.max())
    if excluded is not None:
        keep = ~excluded[box]
        shell = shell & keep if (shell & keep).any() else shell
        core = core & keep if (core & keep).any() else core
    return box, shell, core


def shell_minus_core(qsm: np.ndarray, box, shell: np.ndarray, core: np.ndarray) -> float:
    """Median QSM of the shell minus that of the core (ppm); medians ignore a central vein."""
    region = qsm[box]
    return float(np.median(region[shell]) - np.median(region[core]))


def noise_of_contrast(qsm_clean: np.ndarray, noise_model: NoiseModel, box, shell, core,
                      rng: np.random.Generator) -> float:
    """SD of the shell-minus-core contrast over independent redraws of the noisy image.

    The reconstruction's noise is neither stationary (it rises where the GRE magnitude is dark,
    near veins and iron) nor white (streaks along the magic cone), so it is redrawn with the
    same model around the lesion itself, and added to the noise-free image before the medians
    are taken (a median over mixed voxels, part rim and part not, moves more with noise than
    the noise's own median does): the spread an ideal observer knows.
    """
    noisy = qsm_clean[box] + local_noise_realisations(noise_model, box, N_NOISE_REALISATIONS, rng)
    values = np.median(noisy[:, shell], axis=1) - np.median(noisy[:, core], axis=1)
    return float(np.std(values.astype(np.float64), ddof=1))


def vessel_exclusion(vessel_fraction: np.ndarray, threshold: float = 0.1) -> np.ndarray:
    """Voxels a reader discounts: touched by a vessel, plus one voxel of blooming around it."""
    return ndimage.binary_dilation(vessel_fraction > threshold)


def lesion_rim_cnr(qsm: np.ndarray, qsm_clean: np.ndarray, qsm_background: np.ndarray,
                   labels: np.ndarray, noise_model: NoiseModel, spacing_mm: float,
                   rng: np.random.Generator, vessel_fraction: np.ndarray | None = None
                   ) -> dict[int, dict[str, float]]:
    """Per lesion id: shell-minus-core contrasts (ppb) and CNRs of both observers.

    ``qsm_clean`` is the noise-free reconstruction, ``qsm_background`` the noise-free
    reconstruction without rims (what the oracle knows).
    """
    excluded = None if vessel_fraction is None else vessel_exclusion(vessel_fraction)
    out = {}
    boxes = ndimage.find_objects(labels)
    for lesion_id in np.unique(labels[labels > 0]):
        masks = shell_and_core(labels, int(lesion_id), spacing_mm, excluded,
                               boxes[int(lesion_id) - 1])
        if masks is None:
            continue
        box, shell, core = masks
        sd = noise_of_contrast(qsm_clean, noise_model, box, shell, core, rng)
        if not np.isfinite(sd) or sd <= 0:
            continue
        expected = shell_minus_core(qsm_clean, box, shell, core)
        observed = shell_minus_core(qsm, box, shell, core)
        background = shell_minus_core(qsm_background, box, shell, core)
        out[int(lesion_id)] = {"shell_minus_core_ppb": 1000 * expected,
                               "observed_shell_minus_core_ppb": 1000 * observed,
                               "contrast_noise_sd_ppb": 1000 * sd,
                               "expected_cnr": expected / sd, "observed_cnr": observed / sd,
                               "rim_shell_minus_core_ppb": 1000 * (expected - background),
                               "rim_cnr": (expected - background) / sd,
                               "observed_rim_cnr": (observed - background) / sd}
    return out


def oracle_pr_auc(rim_positive: np.ndarray, observed_cnr: np.ndarray) -> float:
    """Average precision (PR AUC) of the ideal observer over a cohort's lesions."""
    # imported here: scikit-learn takes ~0.4 s to import, which every worker process would pay
    from sklearn.metrics import average_precision_score

    rim_positive = np.asarray(rim_positive, dtype=bool)
    if rim_positive.all() or not rim_positive.any():
        return float("nan")
    return float(average_precision_score(rim_positive, np.asarray(observed_cnr)))
