"""Redraw each lesion's border on FLAIR, so that outlines do not depend on the rater.

Raters draw lesion borders more or less generously, and each rater consistently so: one
marks every voxel the lesion touches, another only the voxels it fills. The rim of a PRL lies
at the border, so the rim read-out (edge layer against core) and the mask channel of the
patches shift with the rater. This module puts every border at the same place: where the
FLAIR signal crosses half-way between the white matter around the lesion and the lesion
itself (the full width at half maximum of a blurred edge, which is where a partial-volume
fraction of 0.5 lies).

Each lesion keeps its id and may only change near its given border: voxels within
``reach_mm`` of it can join, and voxels of the given lesion can leave. A voxel is claimed by
the nearest lesion only, so neighbours do not merge. A lesion that FLAIR does not show as
clearly brighter than its surroundings, or whose redrawn outline would fall below the smallest lesion
volume, keeps its given outline.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
from scipy import ndimage, stats

#: Fraction of the way from the surrounding white matter to the lesion where the border lies.
HALF_CONTRAST = 0.5
#: How far (mm) the border may move outwards; about two voxels of a 1.2 mm grid.
REACH_MM = 2.5
#: The ring (mm from the given border) whose median FLAIR is the surrounding white matter.
BACKGROUND_RING_MM = (3.5, 6.5)
#: Percentile of FLAIR inside the given lesion taken as the lesion's level (the upper
#: quartile: above the partial-volume voxels at the border, below single noisy voxels).
LESION_PERCENTILE = 75.0
#: Fewest ring voxels for a usable background level.
MIN_RING_VOXELS = 10
#: The lesion must stand this many noise SDs (robust SD of the ring) above its surroundings;
#: below that the half-contrast level lies in the noise and would draw a speckled outline.
MIN_CONTRAST_SD = 3.0


def refine_lesion_outlines(
    labels: nib.Nifti1Image,
    flair_on_qsm: nib.Nifti1Image,
    brain_mask: nib.Nifti1Image,
    *,
    min_volume_mm3: float,
    fraction: float = HALF_CONTRAST,
    reach_mm: float = REACH_MM,
) -> nib.Nifti1Image:
    """Label map of the same lesions (same ids) with borders at ``fraction`` of their FLAIR contrast.

    ``labels`` (0 background, N lesion N), ``flair_on_qsm`` and ``brain_mask`` share the QSM
    grid. Returns an int32 label map on that grid.
    """
    label_data = np.asarray(labels.dataobj).astype(np.int32)
    flair = np.asarray(flair_on_qsm.dataobj, dtype=np.float32)
    brain = np.asarray(brain_mask.dataobj) > 0
    zooms = nib.affines.voxel_sizes(labels.affine)
    min_voxels = min_volume_mm3 / float(np.prod(zooms))
    # Nearest lesion of every voxel near one: each voxel can join that lesion only.
    distance_mm, nearest_index = ndimage.distance_transform_edt(label_data == 0, sampling=zooms,
                                                                return_indices=True)
    nearest = label_data[tuple(nearest_index)]
    pad = np.ceil(BACKGROUND_RING_MM[1] / zooms).astype(int) + 1

    refined = np.zeros_like(label_data)
    for lesion_id, bbox in enumerate(ndimage.find_objects(label_data), start=1):
        if bbox is None:
            continue
        box = tuple(slice(max(s.start - p, 0), min(s.stop + p, n)) for s, p, n in zip(bbox, pad, label_data.shape))
        given = label_data[box] == lesion_id
        outline = _refined_lesion(given, label_data[box], flair[box], brain[box], nearest[box] == lesion_id,
                                  distance_mm[box], zooms, fraction, reach_mm)
        if outline is None or outline.sum() < min_voxels:
            outline = given
        view = refined[box]
        view[outline & (view == 0)] = lesion_id
    img = nib.Nifti1Image(refined, labels.affine)
    img.set_qform(labels.affine, code=1)
    img.set_sform(labels.affine, code=1)
    return img


def _refined_lesion(given: np.ndarray, labels: np.ndarray, flair: np.ndarray, brain: np.ndarray,
                    claimed: np.ndarray, distance_to_any_mm: np.ndarray, zooms: np.ndarray,
                    fraction: float, reach_mm: float) -> np.ndarray | None:
    """One lesion's redrawn outline in its box, or None when FLAIR gives no usable contrast."""
    outside_mm = ndimage.distance_transform_edt(~given, sampling=zooms)
    others = (labels > 0) & ~given
    ring = ((outside_mm >= BACKGROUND_RING_MM[0]) & (outside_mm <= BACKGROUND_RING_MM[1]) & brain
            & (distance_to_any_mm >= BACKGROUND_RING_MM[0]))
    if ring.sum() < MIN_RING_VOXELS:
        return None
    background = float(np.median(flair[ring]))
    noise_sd = float(stats.median_abs_deviation(flair[ring], scale="normal"))
    lesion_level = float(np.percentile(flair[given], LESION_PERCENTILE))
    if lesion_level - background <= MIN_CONTRAST_SD * noise_sd:
        return None
    threshold = background + fraction * (lesion_level - background)
    candidates = (given | ((outside_mm <= reach_mm) & claimed & brain)) & (flair > threshold)
    pieces, _ = ndimage.label(candidates, structure=np.ones((3, 3, 3), dtype=bool))
    kept_ids = np.unique(pieces[given & candidates])
    # Lesions are solid: a voxel enclosed by the outline is lesion even where noise dips below
    # (but never a voxel of another lesion the outline happens to enclose).
    return ndimage.binary_fill_holes(np.isin(pieces, kept_ids[kept_ids > 0])) & ~others
