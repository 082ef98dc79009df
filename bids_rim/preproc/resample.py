"""Resampling of FLAIR-space images (FLAIR, lesion masks) onto the QSM grid.

QSM is the primary signal and is never resampled for lesion work: everything else is brought
to its grid. The voxel-to-voxel mapping is one affine (reference voxel → reference world →
FLAIR world through ``qsm_to_flair_ras`` → moving voxel), applied with
``scipy.ndimage.affine_transform``; points outside the moving image get 0.
"""

from __future__ import annotations

from typing import Literal

import nibabel as nib
import numpy as np
from scipy import ndimage

_ORDER = {"nearest": 0, "linear": 1}


def resample_to_reference(
    moving: nib.Nifti1Image,
    reference: nib.Nifti1Image,
    qsm_to_flair_ras: np.ndarray | None = None,
    *,
    interpolation: Literal["linear", "nearest"] = "linear",
) -> nib.Nifti1Image:
    """Return ``moving`` sampled on the grid of ``reference``.

    ``qsm_to_flair_ras`` maps reference-world points to moving-world points (identity when None).
    The output has the reference's shape and affine, float32 for ``linear`` and the moving
    image's dtype for ``nearest`` (so label values survive).
    """
    if interpolation not in _ORDER:
        raise ValueError(f"interpolation must be one of {sorted(_ORDER)}, got {interpolation!r}")
    world_map = np.eye(4) if qsm_to_flair_ras is None else np.asarray(qsm_to_flair_ras, dtype=float)
    voxel_map = np.linalg.inv(moving.affine) @ world_map @ reference.affine
    data = np.asarray(moving.dataobj)
    if interpolation == "linear":
        data = data.astype(np.float32)
    out = ndimage.affine_transform(
        data,
        voxel_map[:3, :3],
        offset=voxel_map[:3, 3],
        output_shape=reference.shape[:3],
        order=_ORDER[interpolation],
        mode="constant",
        cval=0,
    )
    img = nib.Nifti1Image(out, reference.affine)
    img.set_qform(reference.affine, code=1)
    img.set_sform(reference.affine, code=1)
    return img


def resample_mask_to_reference(
    mask: nib.Nifti1Image,
    reference: nib.Nifti1Image,
    qsm_to_flair_ras: np.ndarray | None = None,
    *,
    min_fraction: float = 0.5,
) -> nib.Nifti1Image:
    """Binary mask on the reference grid: linear interpolation of the 0/1 mask, kept where
    the interpolated value (the voxel's covered fraction) is at least ``min_fraction``.

    Partial-volume thresholding at 0.5 keeps the mask's volume close to the original when the
    grids differ in resolution, which nearest-neighbour sampling of a fine mask does not.
    """
    binary = nib.Nifti1Image((np.asarray(mask.dataobj) > 0).astype(np.float32), mask.affine)
    fraction = resample_to_reference(binary, reference, qsm_to_flair_ras, interpolation="linear")
    out = (np.asarray(fraction.dataobj) >= min_fraction).astype(np.uint8)
    return nib.Nifti1Image(out, reference.affine)
