"""Conversion between nibabel images (RAS world) and ANTsPy images (LPS physical space).

nibabel's affine maps voxel indices to RAS+ millimetres; ITK/ANTs store origin, spacing and a
direction matrix in LPS+ millimetres. The two differ by a flip of the first two world axes,
``LPS = diag(-1, -1, 1) @ RAS``. Every call into antspyx goes through these two functions so the
flip is written exactly once. Voxel index order is the same on both sides.

ITK's thread count is process-wide and read from ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` when
ITK first runs. Multi-threaded ITK sums metric contributions in a varying order, so two
identical registrations with 2 threads differed by up to 0.01 in matrix entries; with one
thread they are bit-identical. bids_rim therefore defaults the variable to 1 (an explicit
setting in the environment wins); bids_rim parallelises across sessions instead. The default
is set in ``bids_rim/preproc/__init__.py`` so it precedes any ``import ants`` of this package.
"""

from __future__ import annotations

import ants
import nibabel as nib
import numpy as np

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def _rotation_and_zooms(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split the 3×3 part of an affine into unit direction columns and voxel sizes (mm)."""
    linear = np.asarray(affine, dtype=float)[:3, :3]
    zooms = np.linalg.norm(linear, axis=0)
    direction = linear / zooms
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise ValueError("affine has shear; ANTs images need an orthogonal direction matrix")
    return direction, zooms


def to_ants(img: nib.Nifti1Image) -> "ants.ANTsImage":
    """Return a float32 ANTs image with the same voxels and the same place in the world as ``img``."""
    affine = img.affine
    direction, zooms = _rotation_and_zooms(affine)
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim != 3:
        raise ValueError(f"expected a 3D image, got shape {data.shape}")
    return ants.from_numpy(
        np.ascontiguousarray(data),
        origin=tuple(float(v) for v in RAS_TO_LPS @ affine[:3, 3]),
        spacing=tuple(float(v) for v in zooms),
        direction=RAS_TO_LPS @ direction,
    )


def ants_affine_ras(ants_img: "ants.ANTsImage") -> np.ndarray:
    """The nibabel (voxel → RAS mm) affine of an ANTs image."""
    affine = np.eye(4)
    affine[:3, :3] = RAS_TO_LPS @ np.asarray(ants_img.direction) @ np.diag(ants_img.spacing)
    affine[:3, 3] = RAS_TO_LPS @ np.asarray(ants_img.origin)
    return affine


def from_ants(ants_img: "ants.ANTsImage", dtype: type = np.float32) -> nib.Nifti1Image:
    """Return a nibabel image with the voxels of ``ants_img`` and its RAS affine."""
    data = np.asarray(ants_img.numpy(), dtype=dtype)
    img = nib.Nifti1Image(data, ants_affine_ras(ants_img))
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    return img
