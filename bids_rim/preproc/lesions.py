"""Lesions on the QSM grid: built-in FLAIR segmentation, connected components, stable ids.

Policies (documented here because the lesion table and patches depend on them):

* Components use 26-connectivity by default and lesions smaller than ``min_volume_mm3``
  (default 14.1 mm³, a sphere 3 mm across, the NAIMS minimum) are dropped.
* Confluent lesions: inside each component, the voxels deeper than ``split_depth_mm`` from its
  border are the cores. Two or more separate cores mean lobes joined by a neck thinner than
  twice that depth, i.e. touching lesions. With ``confluent_policy="split"`` every voxel of
  the component goes to its nearest core (a distance-based watershed) and each lobe becomes a
  lesion, provided every lobe still reaches the minimum volume (otherwise the component stays
  whole). With ``"merge"`` the component stays whole. Either way ``flag_confluent`` marks
  lesions that came from such a component.
* Stable ids: lesions are numbered 1..N in the order of their centroid in world space
  (x, then y, then z, RAS mm, rounded to 0.1 mm). Reruns give the same ids, and masks that
  differ by a few voxels keep the order unless two centroids are within noise of each other
  on x.
"""

from __future__ import annotations

from typing import Literal

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from .normalise import brain_depth_mm, flair_tissue_classes, nawm_mask

#: Volume of a sphere 3 mm in diameter (NAIMS consensus minimum lesion size), mm³.
NAIMS_MIN_VOLUME_MM3 = 14.1

_STRUCTURES = {6: 1, 18: 2, 26: 3}


def _structure(connectivity: int) -> np.ndarray:
    if connectivity not in _STRUCTURES:
        raise ValueError(f"connectivity must be 6, 18 or 26, got {connectivity}")
    return ndimage.generate_binary_structure(3, _STRUCTURES[connectivity])


def voxel_volume_mm3(img: nib.Nifti1Image) -> float:
    """Volume of one voxel in mm³ (from the affine, so oblique grids are right)."""
    return float(abs(np.linalg.det(img.affine[:3, :3])))


def remove_small_components(mask: np.ndarray, min_voxels: float, structure: np.ndarray) -> np.ndarray:
    """Boolean mask without the connected components that have fewer than ``min_voxels`` voxels."""
    labels, count = ndimage.label(mask, structure=structure)
    if count == 0:
        return mask.astype(bool)
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[labels]


def segment_lesions_flair(
    flair_on_qsm: nib.Nifti1Image,
    brain_mask: nib.Nifti1Image,
    *,
    min_ratio_to_nawm: float = 1.4,
    z_threshold: float = 3.0,
    min_volume_mm3: float = NAIMS_MIN_VOLUME_MM3,
    edge_margin_mm: float = 2.0,
    seed: int = 0,
) -> nib.Nifti1Image:
    """Built-in lesion segmentation: FLAIR hyperintensity relative to normal-appearing white matter.

    A voxel is lesion when its lightly smoothed (σ = 0.5 voxel) FLAIR exceeds both
    ``min_ratio_to_nawm`` × the NAWM median (lesions are 1.5–2.5 × white matter on FLAIR, cortex
    about 1.2–1.3 ×) and the grey-matter level plus ``z_threshold`` robust standard deviations
    of NAWM (1.4826 × MAD: noise must not lift grey matter over the line), lies at least
    ``edge_margin_mm`` inside the brain (the brain edge is bright on FLAIR), and belongs to a
    26-connected component of at least ``min_volume_mm3``. This is a simple intensity model,
    not a trained segmenter: it misses faint lesions and lesions in the cortical ribbon and can
    catch bright grey matter. Use a rater's mask whenever one exists.
    """
    data = np.asarray(flair_on_qsm.dataobj, dtype=np.float32)
    classes = flair_tissue_classes(flair_on_qsm, brain_mask, seed=seed)
    depth_mm = brain_depth_mm(brain_mask)
    nawm = np.asarray(nawm_mask(flair_on_qsm, brain_mask, classes=classes, depth_mm=depth_mm).dataobj) > 0
    if not nawm.any():
        raise ValueError("no normal-appearing white matter found; cannot segment lesions")
    wm_values = data[nawm]
    median = float(np.median(wm_values))
    robust_sd = 1.4826 * float(np.median(np.abs(wm_values - median)))
    gm_level = classes.gm_level
    threshold = max(min_ratio_to_nawm * median, gm_level + z_threshold * robust_sd)
    smoothed = ndimage.gaussian_filter(data, sigma=0.5)
    lesion = (smoothed > threshold) & (depth_mm >= edge_margin_mm)
    lesion = remove_small_components(lesion, min_volume_mm3 / voxel_volume_mm3(flair_on_qsm), _structure(26))
    return nib.Nifti1Image(lesion.astype(np.uint8), flair_on_qsm.affine)


def _split_component(component: np.ndarray, zooms: np.ndarray, split_depth_mm: float,
                     structure: np.ndarray) -> tuple[np.ndarray, int]:
    """Lobe labels (1..n) of one component and the number of deep cores it has."""
    depth = ndimage.distance_transform_edt(np.pad(component, 1), sampling=zooms)[1:-1, 1:-1, 1:-1]
    cores, n_cores = ndimage.label(depth > split_depth_mm, structure=structure)
    if n_cores < 2:
        return component.astype(np.int32), n_cores
    _, nearest = ndimage.distance_transform_edt(cores == 0, sampling=zooms, return_indices=True)
    lobes = cores[tuple(nearest)]
    lobes[~component] = 0
    return lobes.astype(np.int32), n_cores


def label_lesions(
    mask: nib.Nifti1Image,
    *,
    min_volume_mm3: float = NAIMS_MIN_VOLUME_MM3,
    connectivity: int = 26,
    confluent_policy: Literal["split", "merge"] = "split",
    split_depth_mm: float = 2.0,
) -> tuple[nib.Nifti1Image, pd.DataFrame]:
    """Label a binary lesion mask into lesions with stable ids (see the module docstring).

    Returns the label map (int32, 0 background, 1..N) on the mask's grid and a table with
    ``lesion_id``, ``volume_mm3``, ``centroid_x_mm``, ``centroid_y_mm``, ``centroid_z_mm`` (RAS)
    and ``flag_confluent``, one row per lesion in id order.
    """
    if confluent_policy not in ("split", "merge"):
        raise ValueError(f"confluent_policy must be 'split' or 'merge', got {confluent_policy!r}")
    structure = _structure(connectivity)
    zooms = nib.affines.voxel_sizes(mask.affine)
    voxel_mm3 = voxel_volume_mm3(mask)
    min_voxels = min_volume_mm3 / voxel_mm3
    binary = np.asarray(mask.dataobj) > 0
    components, count = ndimage.label(binary, structure=structure)

    pieces: list[tuple[tuple[slice, ...], np.ndarray, bool]] = []  # (bbox, boolean piece, confluent)
    for index, bbox in enumerate(ndimage.find_objects(components), start=1):
        component = components[bbox] == index
        if component.sum() < min_voxels:
            continue
        lobes, n_cores = _split_component(component, zooms, split_depth_mm, structure)
        confluent = n_cores >= 2
        lobe_ids = range(1, n_cores + 1) if confluent else ()
        lobe_masks = [lobes == i for i in lobe_ids]
        if confluent_policy == "split" and confluent and all(m.sum() >= min_voxels for m in lobe_masks):
            pieces.extend((bbox, m, True) for m in lobe_masks)
        else:
            pieces.append((bbox, component, confluent))

    rows = []
    for bbox, piece, confluent in pieces:
        offset = np.array([s.start for s in bbox])
        centroid_ijk = np.argwhere(piece).mean(axis=0) + offset
        centroid_xyz = nib.affines.apply_affine(mask.affine, centroid_ijk)
        rows.append((tuple(np.round(centroid_xyz, 1)), centroid_xyz, int(piece.sum()) * voxel_mm3, confluent))
    order = sorted(range(len(rows)), key=lambda n: rows[n][0])

    labels = np.zeros(binary.shape, dtype=np.int32)
    records = []
    for lesion_id, n in enumerate(order, start=1):
        bbox, piece, _ = pieces[n]
        labels[bbox][piece] = lesion_id
        _, xyz, volume, confluent = rows[n]
        records.append({
            "lesion_id": lesion_id,
            "volume_mm3": volume,
            "centroid_x_mm": xyz[0],
            "centroid_y_mm": xyz[1],
            "centroid_z_mm": xyz[2],
            "flag_confluent": bool(confluent),
        })
    table = pd.DataFrame.from_records(
        records,
        columns=["lesion_id", "volume_mm3", "centroid_x_mm", "centroid_y_mm", "centroid_z_mm", "flag_confluent"]
    )
    img = nib.Nifti1Image(labels, mask.affine)
    img.set_qform(mask.affine, code=1)
    img.set_sform(mask.affine, code=1)
    return img, table
