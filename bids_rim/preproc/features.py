"""Per-lesion measurements for the lesion table (docs/interfaces.md §3).

Definitions (units in the column names):

* shell: voxels within ``shell_mm`` (default 1.5 mm, but at least one voxel) of the lesion
  border on either side — lesion voxels at most that deep, plus non-lesion brain voxels at most
  that far outside that belong to no other lesion. This is where a paramagnetic rim sits.
  Depths are Euclidean distances between voxel centres, so a border voxel is one voxel deep.
* core: lesion voxels deeper than the shell; a lesion too small to have any keeps its
  deepest voxels (those within half a voxel of its maximal depth) as core.
* QSM values are reported in ppb relative to the NAWM median of QSM; ``flair_contrast`` is the
  lesion's mean FLAIR divided by the NAWM median of FLAIR.
* ventricles: FLAIR CSF-class voxels inside the brain mask, at least ``EDGE_MARGIN_MM`` from the
  brain edge (excluding sulcal CSF), kept only in 26-connected components of at least
  ``MIN_VENTRICLE_VOLUME_MM3`` whose centroid is within 35 % of the brain's extent of the
  brain's centroid. ``distance_to_ventricles_mm`` is the smallest distance from a lesion voxel
  to a ventricle voxel (0 for lesions touching the ventricles), NaN when none are found.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.spatial import cKDTree

from .normalise import EDGE_MARGIN_MM, TissueClasses, brain_depth_mm, flair_tissue_classes, nawm_mask, nawm_median

MIN_VENTRICLE_VOLUME_MM3 = 500.0
PPM_TO_PPB = 1000.0

LESION_TABLE_COLUMNS = [
    "lesion_id",
    "centroid_i", "centroid_j", "centroid_k",
    "centroid_x_mm", "centroid_y_mm", "centroid_z_mm",
    "volume_mm3",
    "qsm_shell_ppb", "qsm_core_ppb", "qsm_shell_minus_core_ppb", "qsm_lesion_minus_nawm_ppb",
    "flair_contrast",
    "distance_to_ventricles_mm",
    "flag_confluent", "flag_touches_brain_edge",
]


def ventricle_mask(
    flair: nib.Nifti1Image,
    brain_mask: nib.Nifti1Image,
    *,
    seed: int = 0,
    classes: TissueClasses | None = None,
    depth_mm: np.ndarray | None = None,
) -> nib.Nifti1Image:
    """Estimate the lateral ventricles from FLAIR (see the module docstring for the rule).

    ``classes`` and ``depth_mm`` (:func:`~bids_rim.preproc.normalise.brain_depth_mm`) may be
    passed when the caller has them already.
    """
    zooms = nib.affines.voxel_sizes(flair.affine)
    brain = np.asarray(brain_mask.dataobj) > 0
    data = np.asarray(flair.dataobj, dtype=np.float32)
    if classes is None:
        classes = flair_tissue_classes(flair, brain_mask, seed=seed)
    if depth_mm is None:
        depth_mm = brain_depth_mm(brain_mask)
    csf = brain & (data < classes.csf_wm_boundary) & (depth_mm >= EDGE_MARGIN_MM)
    labels, count = ndimage.label(csf, structure=np.ones((3, 3, 3)))
    ventricles = np.zeros_like(brain)
    if count:
        brain_ijk = np.argwhere(brain)
        centre = brain_ijk.mean(axis=0)
        extent_mm = (brain_ijk.max(axis=0) - brain_ijk.min(axis=0)) * zooms
        voxel_mm3 = float(abs(np.linalg.det(flair.affine[:3, :3])))
        index = np.arange(1, count + 1)
        sizes = ndimage.sum_labels(np.ones_like(labels), labels, index) * voxel_mm3
        centroids = np.array(ndimage.center_of_mass(csf, labels, index))
        near_centre = np.all(np.abs(centroids - centre) * zooms <= 0.35 * extent_mm, axis=1)
        keep = index[(sizes >= MIN_VENTRICLE_VOLUME_MM3) & near_centre]
        ventricles = np.isin(labels, keep)
    return nib.Nifti1Image(ventricles.astype(np.uint8), flair.affine)


def lesion_table(
    qsm: nib.Nifti1Image,
    flair_on_qsm: nib.Nifti1Image,
    labels: nib.Nifti1Image,
    brain_mask: nib.Nifti1Image,
    *,
    nawm: nib.Nifti1Image | None = None,
    label_table: pd.DataFrame | None = None,
    ventricles: nib.Nifti1Image | None = None,
    shell_mm: float = 1.5,
) -> pd.DataFrame:
    """One row per lesion with the columns of :data:`LESION_TABLE_COLUMNS`.

    ``nawm`` defaults to :func:`nawm_mask` of FLAIR with the lesions excluded. ``label_table``
    (from :func:`label_lesions`) supplies ``flag_confluent``; without it a lesion is flagged
    when it touches another lesion (which is what the "split" policy leaves behind, but misses
    components kept whole by the "merge" policy). ``ventricles`` defaults to
    :func:`ventricle_mask`. The patch columns
    (``patch_spacing_mm``, ``flag_patch_rescaled``) come from :func:`extract_patches` and are
    merged on ``lesion_id`` by the caller.
    """
    zooms = nib.affines.voxel_sizes(qsm.affine)
    voxel_mm3 = float(abs(np.linalg.det(qsm.affine[:3, :3])))
    qsm_ppm = np.asarray(qsm.dataobj, dtype=np.float64)
    flair = np.asarray(flair_on_qsm.dataobj, dtype=np.float64)
    label_data = np.asarray(labels.dataobj).astype(np.int64)
    brain = np.asarray(brain_mask.dataobj) > 0
    if nawm is None or ventricles is None:
        classes = flair_tissue_classes(flair_on_qsm, brain_mask)
        depth_mm = brain_depth_mm(brain_mask)
        if nawm is None:
            nawm = nawm_mask(flair_on_qsm, brain_mask, labels, classes=classes, depth_mm=depth_mm)
        if ventricles is None:
            ventricles = ventricle_mask(flair_on_qsm, brain_mask, classes=classes, depth_mm=depth_mm)
    qsm_reference = nawm_median(qsm, nawm)
    flair_reference = nawm_median(flair_on_qsm, nawm)
    ventricle_data = np.asarray(ventricles.dataobj) > 0
    # Nearest ventricle voxel of each lesion voxel, in the same voxel-index × voxel-size
    # millimetres as the distance transforms (a k-d tree: only lesion voxels are queried).
    ventricle_tree = cKDTree(np.argwhere(ventricle_data) * zooms) if ventricle_data.any() else None
    confluent = {} if label_table is None else dict(zip(label_table["lesion_id"], label_table["flag_confluent"]))

    band_mm = max(shell_mm, float(zooms.max()))
    pad_vox = np.ceil(band_mm / zooms).astype(int) + 2
    records = []
    for lesion_id, bbox in enumerate(ndimage.find_objects(label_data), start=1):
        if bbox is None:
            continue
        box = tuple(slice(max(s.start - p, 0), min(s.stop + p, n)) for s, p, n in zip(bbox, pad_vox, label_data.shape))
        lesion = label_data[box] == lesion_id
        # Pad so that lesions at the array edge still have an outside.
        depth_in = ndimage.distance_transform_edt(np.pad(lesion, 1), sampling=zooms)[1:-1, 1:-1, 1:-1]
        distance_out = ndimage.distance_transform_edt(~lesion, sampling=zooms)
        free_brain = brain[box] & (label_data[box] == 0)
        shell = (lesion & (depth_in <= band_mm)) | (free_brain & (distance_out <= band_mm))
        core = lesion & (depth_in > band_mm)
        if not core.any():
            core = lesion & (depth_in >= depth_in.max() - 0.5 * zooms.min())
        q = qsm_ppm[box]
        shell_ppb = (q[shell].mean() - qsm_reference) * PPM_TO_PPB
        core_ppb = (q[core].mean() - qsm_reference) * PPM_TO_PPB
        centroid_ijk = np.argwhere(lesion).mean(axis=0) + np.array([s.start for s in box])
        centroid_xyz = nib.affines.apply_affine(qsm.affine, centroid_ijk)
        grown = ndimage.binary_dilation(lesion, np.ones((3, 3, 3)))
        touches_other = bool(np.any(grown & (label_data[box] != 0) & ~lesion))
        touches_edge = bool(np.any(grown & ~brain[box])) or any(
            s.start == 0 or s.stop == n for s, n in zip(bbox, label_data.shape)
        )
        if ventricle_tree is None:
            ventricle_mm = np.nan
        else:
            lesion_mm = (np.argwhere(lesion) + np.array([s.start for s in box])) * zooms
            ventricle_mm = float(ventricle_tree.query(lesion_mm, k=1)[0].min())
        records.append({
            "lesion_id": lesion_id,
            "centroid_i": centroid_ijk[0], "centroid_j": centroid_ijk[1], "centroid_k": centroid_ijk[2],
            "centroid_x_mm": centroid_xyz[0], "centroid_y_mm": centroid_xyz[1], "centroid_z_mm": centroid_xyz[2],
            "volume_mm3": lesion.sum() * voxel_mm3,
            "qsm_shell_ppb": shell_ppb,
            "qsm_core_ppb": core_ppb,
            "qsm_shell_minus_core_ppb": shell_ppb - core_ppb,
            "qsm_lesion_minus_nawm_ppb": (q[lesion].mean() - qsm_reference) * PPM_TO_PPB,
            "flair_contrast": flair[box][lesion].mean() / flair_reference,
            "distance_to_ventricles_mm": ventricle_mm,
            "flag_confluent": bool(confluent[lesion_id]) if label_table is not None else touches_other,
            "flag_touches_brain_edge": touches_edge,
        })
    return pd.DataFrame.from_records(records, columns=LESION_TABLE_COLUMNS)
