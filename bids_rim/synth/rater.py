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


#: The rater's threshold wobbles smoothly: white noise filtered by a Gaussian of this SD
#: (FLAIR voxels), scaled to an SD of ``WOBBLE_SD``.
WOBBLE_SIGMA_VOX = 2.0
WOBBLE_SD = 0.1
#: Below this partial volume no threshold (clipped to 0.1-0.9) can mark a voxel.
LOWEST_THRESHOLD = 0.1


def rater_mask(rng: np.random.Generator, lesion_fraction: np.ndarray, lesion_labels: np.ndarray,
               missed: set[int], params: RaterParams) -> np.ndarray:
    """Binary mask: the partial-volume map thresholded at a rater-specific, slightly varying level.

    A threshold below 0.5 dilates the edges, above 0.5 erodes them; missed lesions are removed.
    Only the box around the lesions can be marked, so the wobble is drawn there alone (on the
    box grown by the filter's reach, so that inside the box it is the same Gaussian field as
    one drawn on the whole grid) and scaled by the filter's exact interior gain.
    """
    threshold = rng.uniform(*params.mask_threshold)
    mask = np.zeros(lesion_fraction.shape, dtype=np.uint8)
    box = _bounding_box((lesion_fraction > LOWEST_THRESHOLD) | (lesion_labels > 0), margin=1)
    if box is None:
        return mask
    reach = int(4.0 * WOBBLE_SIGMA_VOX + 0.5)  # gaussian_filter's default truncation
    outer = tuple(slice(max(0, b.start - reach), min(n, b.stop + reach))
                  for b, n in zip(box, lesion_fraction.shape))
    noise = rng.standard_normal(tuple(o.stop - o.start for o in outer), dtype=np.float32)
    inner = tuple(slice(b.start - o.start, b.stop - o.start) for b, o in zip(box, outer))
    wobble = ndimage.gaussian_filter(noise, WOBBLE_SIGMA_VOX)[inner]
    wobble *= np.float32(WOBBLE_SD / _filtered_noise_sd(WOBBLE_SIGMA_VOX, reach))
    marked = lesion_fraction[box] > np.clip(threshold + wobble, LOWEST_THRESHOLD, 0.9)
    if missed:
        marked &= ~ndimage.grey_dilation(np.isin(lesion_labels[box], list(missed)), size=3)
    mask[box] = marked
    return mask


def _filtered_noise_sd(sigma: float, reach: int) -> float:
    """SD of unit white noise after a separable 3-D Gaussian filter (truncated at ``reach``)."""
    x = np.arange(-reach, reach + 1)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    kernel /= kernel.sum()
    return float(np.sum(kernel ** 2) ** 1.5)


def _bounding_box(selected: np.ndarray, margin: int) -> tuple[slice, ...] | None:
    """Box around the True voxels, grown by ``margin`` voxels (within the grid); None if none."""
    bounds = []
    for axis, n in enumerate(selected.shape):
        hits = np.flatnonzero(selected.any(axis=tuple(a for a in range(selected.ndim) if a != axis)))
        if not len(hits):
            return None
        bounds.append(slice(max(0, hits[0] - margin), min(n, hits[-1] + 1 + margin)))
    return tuple(bounds)


def rater_rim_label(rng: np.random.Generator, lesion: Lesion, expected_cnr: float,
                    params: RaterParams) -> int:
    """The rater's call: faint rims are sometimes missed, edge veins sometimes called rims."""
    if lesion.rim_positive:
        missed = expected_cnr < params.faint_rim_cnr and rng.uniform() < params.faint_rim_missed_prob
        return 0 if missed else 1
    if lesion.confounder == "edge_vein" and rng.uniform() < params.edge_vein_called_rim_prob:
        return 1
    return 0
