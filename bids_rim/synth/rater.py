"""The human rater: imperfect lesion masks and rim labels, as they are handed over."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from .lesions import Lesion
from .params import RaterParams


def missed_lesions(rng: np.random.Generator, lesions: list[Lesion], params: RaterParams) -> set[int]:
    """Ids of small lesions the rater overlooks."""
    return {lesion.lesion_id for lesion in lesions
            if lesion.volume_mm3 < params.missed_small_lesion_mm3
            and rng.uniform() < params.missed_small_lesion_prob}


def rater_mask(rng: np.random.Generator, lesion_fraction: np.ndarray, lesion_labels: np.ndarray,
               missed: set[int], params: RaterParams) -> np.ndarray:
    """Binary mask: the partial-volume map thresholded at a rater-specific, slightly varying level.

    A threshold below 0.5 dilates the edges, above 0.5 erodes them; missed lesions are removed.
    """
    threshold = rng.uniform(*params.mask_threshold)
    wobble = ndimage.gaussian_filter(rng.standard_normal(lesion_fraction.shape).astype(np.float32), 2.0)
    wobble *= 0.1 / (wobble.std() + 1e-9)
    mask = lesion_fraction > np.clip(threshold + wobble, 0.1, 0.9)
    if missed:
        near_missed = ndimage.grey_dilation(np.isin(lesion_labels, list(missed)), size=3)
        mask &= ~near_missed
    return mask.astype(np.uint8)


def rater_rim_label(rng: np.random.Generator, lesion: Lesion, expected_cnr: float,
                    params: RaterParams) -> int:
    """The rater's call: faint rims are sometimes missed, edge veins sometimes called rims."""
    if lesion.rim_positive:
        missed = expected_cnr < params.faint_rim_cnr and rng.uniform() < params.faint_rim_missed_prob
        return 0 if missed else 1
    if lesion.confounder == "edge_vein" and rng.uniform() < params.edge_vein_called_rim_prob:
        return 1
    return 0
