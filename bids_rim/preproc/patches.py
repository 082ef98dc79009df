"""One 3D patch per lesion for the models (docs/interfaces.md §3).

Grid: P×P×P points on an isotropic grid aligned with the RAS world axes (axis 0 = x/right,
1 = y/anterior, 2 = z/superior), centred on the lesion centroid, shifted by less than a voxel
so that on an axis-aligned QSM grid whose voxels equal the sampling spacing the samples fall
exactly on voxel centres: QSM is then read, not interpolated. On oblique or other grids values
are trilinear. With odd P the centre sample sits on the lesion centroid's voxel.
Points outside the image are 0.

Spacing: ``spacing_mm``, or the QSM's finest voxel size where that is coarser. Patches never
invent resolution: trilinear upsampling of a 1.12–1.18 mm QSM to 1 mm blurs a rim one voxel
thick into its neighbours. On the 40-patient synthetic diagnosis cohort (docs/training.md) the
median edge-minus-core statistic ranked the lesions with PR AUC 0.34 / 0.23 / 0.17 (three
test folds) in 1 mm patches and 0.44 / 0.29 / 0.22 in patches at the QSM's own voxel size;
the radiomics random forest 0.34 / 0.17 / 0.11 against 0.38 / 0.23 / 0.15.

Channels: ``qsm_ppm`` = QSM − NAWM median of QSM (ppm); ``flair_nawm`` = FLAIR / NAWM median of
FLAIR; ``lesion_mask`` = 1 inside THIS lesion (other lesions are 0), nearest-neighbour.

Large lesions (policy): a patch must hold the whole lesion plus ``margin_mm`` around it (the
rim lies at and just outside the border). If the lesion's farthest voxel from the centre plus
the margin exceeds half the field of view at the spacing above, the spacing grows to
``(radius + margin) / (P / 2)`` so it fits whole, and the lesion is flagged
``flag_patch_rescaled``. Lesions are never cut.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

CHANNELS = ("qsm_ppm", "flair_nawm", "lesion_mask")
PATCH_META_COLUMNS = ["lesion_id", "patch_spacing_mm", "flag_patch_rescaled"]


def _sample(data: np.ndarray, voxel_coords: np.ndarray, order: int) -> np.ndarray:
    return ndimage.map_coordinates(data, voxel_coords, order=order, mode="constant", cval=0.0, prefilter=False)


def lesion_patch_grid(
    label_data: np.ndarray,
    lesion_id: int,
    affine: np.ndarray,
    *,
    patch_size: int = 32,
    spacing_mm: float = 1.0,
    margin_mm: float = 4.0,
    bbox: tuple[slice, ...] | None = None,
) -> tuple[np.ndarray, float, bool]:
    """Where the patch of one lesion samples its image: voxel coordinates (3, P³) on the grid of
    ``affine``, the spacing in mm and whether it was widened to hold the lesion (module docstring).

    ``bbox`` (from ``ndimage.find_objects``) only saves the search for the lesion's voxels. Any
    image on the same grid can be read at these coordinates, which is how the benchmark's error
    analysis puts the true lesion outline into exactly the patch the model saw.
    """
    if bbox is None:
        bbox = ndimage.find_objects((label_data == lesion_id).astype(np.int8))[0]
    voxel_mm = nib.affines.voxel_sizes(affine)
    base_spacing_mm = max(float(spacing_mm), float(voxel_mm.min()))
    offsets = np.arange(patch_size, dtype=np.float64) - (patch_size - 1) / 2.0
    grid = np.stack(np.meshgrid(offsets, offsets, offsets, indexing="ij"), axis=0).reshape(3, -1)
    ijk = np.argwhere(label_data[bbox] == lesion_id) + np.array([s.start for s in bbox])
    half_width = (patch_size - 1) / 2.0
    centre_ijk = np.round(ijk.mean(axis=0) - half_width) + half_width
    centre_xyz = nib.affines.apply_affine(affine, centre_ijk)
    half_voxel_mm = 0.5 * float(voxel_mm.max())
    radius_mm = np.linalg.norm(nib.affines.apply_affine(affine, ijk) - centre_xyz, axis=1).max() + half_voxel_mm
    needed_mm = (radius_mm + margin_mm) / (patch_size / 2.0)
    spacing = max(base_spacing_mm, needed_mm)
    world = centre_xyz[:, None] + spacing * grid
    world_to_voxel = np.linalg.inv(affine)
    voxel = world_to_voxel[:3, :3] @ world + world_to_voxel[:3, 3:]
    return voxel, float(spacing), bool(spacing > base_spacing_mm)


def extract_patches(
    qsm: nib.Nifti1Image,
    flair_on_qsm: nib.Nifti1Image,
    labels: nib.Nifti1Image,
    *,
    qsm_reference_ppm: float,
    flair_reference: float,
    patch_size: int = 32,
    spacing_mm: float = 1.0,
    margin_mm: float = 4.0,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Return patches (N, 3, P, P, P) float32 in lesion-id order and their metadata.

    ``spacing_mm`` is the finest sampling spacing; a coarser QSM is sampled at its own voxel size.

    ``qsm_reference_ppm`` and ``flair_reference`` are the NAWM medians
    (:func:`bids_rim.preproc.normalise.nawm_median`). The table has one row per lesion:
    ``lesion_id``, ``patch_spacing_mm``, ``flag_patch_rescaled``.
    """
    if flair_reference <= 0:
        raise ValueError(f"FLAIR NAWM reference must be positive, got {flair_reference}")
    qsm_data = np.asarray(qsm.dataobj, dtype=np.float32)
    flair_data = np.asarray(flair_on_qsm.dataobj, dtype=np.float32)
    label_data = np.asarray(labels.dataobj).astype(np.int32)

    lesion_ids = [i for i in np.unique(label_data) if i != 0]
    patches = np.zeros((len(lesion_ids), len(CHANNELS)) + (patch_size,) * 3, dtype=np.float32)
    meta = []
    bboxes = ndimage.find_objects(label_data)
    shape = (patch_size,) * 3
    for n, lesion_id in enumerate(lesion_ids):
        voxel, spacing, rescaled = lesion_patch_grid(label_data, lesion_id, qsm.affine, patch_size=patch_size,
                                                     spacing_mm=spacing_mm, margin_mm=margin_mm,
                                                     bbox=bboxes[lesion_id - 1])
        inside = np.all((voxel > -0.5) & (voxel < np.array(qsm.shape[:3])[:, None] - 0.5), axis=0)
        qsm_patch = np.where(inside, _sample(qsm_data, voxel, 1) - qsm_reference_ppm, 0.0)
        flair_patch = _sample(flair_data, voxel, 1) / flair_reference
        mask_patch = _sample((label_data == lesion_id).astype(np.float32), voxel, 0)
        patches[n, 0] = qsm_patch.reshape(shape)
        patches[n, 1] = flair_patch.reshape(shape)
        patches[n, 2] = mask_patch.reshape(shape)
        meta.append({"lesion_id": int(lesion_id), "patch_spacing_mm": spacing, "flag_patch_rescaled": rescaled})
    return patches, pd.DataFrame.from_records(meta, columns=PATCH_META_COLUMNS)


def save_patches(path: str | os.PathLike, patches: np.ndarray, meta: pd.DataFrame) -> Path:
    """Write patches and their ids/spacings with ``numpy.savez_compressed`` (no pickled objects)."""
    path = Path(path)
    with path.open("wb") as handle:
        np.savez_compressed(
            handle,
            patches=patches.astype(np.float32),
            lesion_id=meta["lesion_id"].to_numpy(dtype=np.int32),
            spacing_mm=meta["patch_spacing_mm"].to_numpy(dtype=np.float32),
            channels=np.array(CHANNELS),
        )
    return path


def load_patches(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read the patches (N, 3, P, P, P) float32 and their lesion ids (N,) int32 (pickles refused)."""
    with np.load(path, allow_pickle=False) as data:
        return data["patches"], data["lesion_id"]


def load_patch_spacing_mm(path: str | os.PathLike) -> np.ndarray:
    """Read the sampling spacing (mm) of each patch of a patch file, in the order of its ids."""
    with np.load(path, allow_pickle=False) as data:
        return data["spacing_mm"]
