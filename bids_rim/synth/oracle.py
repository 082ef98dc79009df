"""The oracle: an ideal observer of each lesion's true rim, and its PR AUC.

For each true lesion, the observer knows the lesion's true extent and measures, on the
reconstructed QSM, the median of the edge shell (lesion voxels within ``SHELL_MM`` of the edge) minus the median of the core. It divides by the standard deviation of
that same contrast on the reconstruction's noise (the masks moved to random places in the
brain), giving a contrast-to-noise ratio. ``expected_cnr`` uses the noise-free reconstruction
(what the lesion truly shows, blooming and veins included); ``observed_cnr`` the real, noisy one
(the ideal observer's decision variable). The oracle PR AUC ranks lesions by ``observed_cnr``.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from sklearn.metrics import average_precision_score

SHELL_MM = 1.5
N_NOISE_PLACEMENTS = 24


def shell_and_core(labels: np.ndarray, lesion_id: int, spacing_mm: float
                   ) -> tuple[tuple[slice, ...], np.ndarray, np.ndarray] | None:
    """Box and boolean shell/core masks (in the box) of one lesion of a label map."""
    found = ndimage.find_objects((labels == lesion_id).astype(np.int8))
    if not found or found[0] is None:
        return None
    pad = 1
    box = tuple(slice(max(0, s.start - pad), min(n, s.stop + pad))
                for s, n in zip(found[0], labels.shape))
    region = labels[box]
    inside = region == lesion_id
    depth = ndimage.distance_transform_edt(inside) * spacing_mm
    shell = inside & (depth <= SHELL_MM)
    core = inside & (depth > SHELL_MM)
    if not core.any():
        core = inside & (depth >= depth.max())
    return box, shell, core


def shell_minus_core(qsm: np.ndarray, box, shell: np.ndarray, core: np.ndarray) -> float:
    """Median QSM of the shell minus that of the core (ppm); medians ignore a central vein."""
    region = qsm[box]
    return float(np.median(region[shell]) - np.median(region[core]))


def noise_of_contrast(noise: np.ndarray, brain: np.ndarray, box, shell, core,
                      rng: np.random.Generator) -> float:
    """Std of the shell-minus-core contrast over random placements in the noise image."""
    size = np.array([s.stop - s.start for s in box])
    corners = np.argwhere(brain) - size // 2
    corners = corners[np.all((corners >= 0) & (corners + size <= brain.shape), axis=1)]
    values = []
    for index in rng.permutation(len(corners))[:8 * N_NOISE_PLACEMENTS]:
        placed = tuple(slice(c, c + s) for c, s in zip(corners[index], size))
        if brain[placed][shell | core].mean() < 0.95:  # keep placements inside the brain
            continue
        values.append(shell_minus_core(noise, placed, shell, core))
        if len(values) == N_NOISE_PLACEMENTS:
            break
    return float(np.std(values)) if len(values) > 2 else float("nan")


def lesion_rim_cnr(qsm: np.ndarray, qsm_clean: np.ndarray, labels: np.ndarray, brain: np.ndarray,
                   spacing_mm: float, rng: np.random.Generator) -> dict[int, dict[str, float]]:
    """Per lesion id: shell-minus-core contrast (ppb, noise-free and observed) and their CNR."""
    noise = qsm - qsm_clean
    out = {}
    for lesion_id in np.unique(labels[labels > 0]):
        masks = shell_and_core(labels, int(lesion_id), spacing_mm)
        if masks is None:
            continue
        box, shell, core = masks
        sd = noise_of_contrast(noise, brain, box, shell, core, rng)
        if not np.isfinite(sd) or sd <= 0:
            continue
        expected = shell_minus_core(qsm_clean, box, shell, core)
        observed = shell_minus_core(qsm, box, shell, core)
        out[int(lesion_id)] = {"shell_minus_core_ppb": 1000 * expected,
                               "observed_shell_minus_core_ppb": 1000 * observed,
                               "contrast_noise_sd_ppb": 1000 * sd,
                               "expected_cnr": expected / sd, "observed_cnr": observed / sd}
    return out


def oracle_pr_auc(rim_positive: np.ndarray, observed_cnr: np.ndarray) -> float:
    """Average precision (PR AUC) of the ideal observer over a cohort's lesions."""
    rim_positive = np.asarray(rim_positive, dtype=bool)
    if rim_positive.all() or not rim_positive.any():
        return float("nan")
    return float(average_precision_score(rim_positive, np.asarray(observed_cnr)))
