"""Validation of input images: one clear line naming the file and the problem.

Every check raises :class:`InputError` (a ``ValueError``) whose message starts with the file
name, so the CLI can print it as is. Conditions that still allow a useful run (thick-slice 2D
FLAIR, an empty lesion mask) return a warning string instead of raising.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from bids_rim.errors import InputError  # re-exported: preproc code and its callers use it

#: A susceptibility map in ppm has a robust (1st–99th percentile) range well under 1 ppm in brain;
#: field maps in Hz (1 ppm ≈ 128 Hz at 3 T) or phase in radians (range about 2π) exceed this.
MAX_QSM_ROBUST_RANGE_PPM = 2.0
#: The least robust range of a plausible brain susceptibility map in ppm: a rejected map whose
#: range divided by 1000 lies between this and the maximum above is probably in ppb.
MIN_QSM_ROBUST_RANGE_PPM = 0.05
#: Slices at least this thick mark a 2D FLAIR acquisition (typically 3–5 mm).
THICK_SLICE_MM = 4.0
#: Minimum fraction of the QSM field of view that must fall inside the FLAIR field of view.
MIN_FOV_OVERLAP_FRACTION = 0.25


def _name(path: str | os.PathLike | None, img: nib.Nifti1Image | None = None) -> str:
    if path is not None:
        return str(path)
    filename = img.get_filename() if img is not None else None
    return filename or "<in-memory image>"


def load_nifti(path: str | os.PathLike) -> nib.Nifti1Image:
    """Load a NIfTI file (``.nii`` or ``.nii.gz``) fully into memory, or raise InputError.

    The voxel data are read here, so truncated gzip streams and short files fail now, with the
    file named, instead of deep inside a workflow node.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty (0 bytes)")
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except (EOFError, OSError, zlib.error, gzip.BadGzipFile, ValueError, nib.filebasedimages.ImageFileError) as error:
        raise InputError(f"{path}: cannot read NIfTI image (truncated or corrupt file: {error})") from error
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(f"{path}: not a NIfTI image ({type(img).__name__})")
    loaded = nib.Nifti1Image(data, img.affine, img.header)
    loaded.set_filename(str(path))
    return loaded


def same_grid(first: nib.Nifti1Image, second: nib.Nifti1Image) -> bool:
    """True when two images share their voxel grid: shape (3D) and affine (to 0.001 mm)."""
    return first.shape[:3] == second.shape[:3] and bool(np.allclose(first.affine, second.affine, atol=1e-3))


def ensure_3d(img: nib.Nifti1Image, path: str | os.PathLike | None = None) -> nib.Nifti1Image:
    """Return the image as 3D (a trailing singleton 4th axis is dropped); raise for 4D series."""
    shape = img.shape
    if len(shape) == 3:
        return img
    if len(shape) > 3 and all(n == 1 for n in shape[3:]):
        squeezed = nib.Nifti1Image(np.asanyarray(img.dataobj).reshape(shape[:3]), img.affine, img.header)
        if img.get_filename():
            squeezed.set_filename(img.get_filename())
        return squeezed
    raise InputError(f"{_name(path, img)}: expected a 3D image, got shape {tuple(shape)} (a 4D series?)")


def check_finite(img: nib.Nifti1Image, path: str | os.PathLike | None = None) -> None:
    """Raise if the image holds NaN or infinite voxels."""
    data = np.asanyarray(img.dataobj)
    if np.issubdtype(data.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(data)))
        if bad:
            raise InputError(f"{_name(path, img)}: {bad} voxels are NaN or Inf (a NaN background? bids_rim reads 0 as "
                             "outside the map: set them to 0, e.g. fslmaths IN -nan OUT)")


def check_not_constant(img: nib.Nifti1Image, path: str | os.PathLike | None = None, what: str = "image") -> None:
    """Raise if every finite voxel of the image has the same value (all zero, or a constant).

    Such an image holds no contrast to correct or register (N4 and antsRegistration would fail
    later with no file named). ``what`` names the image in the message ("FLAIR", "GRE magnitude").
    Two reductions over the data (min and max) and no copy, unless NaN or Inf are present.
    """
    data = np.asanyarray(img.dataobj)
    if data.size == 0:
        raise InputError(f"{_name(path, img)}: the {what} image has no voxels")
    low, high = data.min(), data.max()
    if np.issubdtype(data.dtype, np.inexact) and not (np.isfinite(low) and np.isfinite(high)):
        finite = data[np.isfinite(data)]
        if finite.size == 0:
            raise InputError(f"{_name(path, img)}: the {what} image has no finite voxel (all NaN or Inf)")
        low, high = finite.min(), finite.max()
    if low == high:
        raise InputError(f"{_name(path, img)}: the {what} image is constant (every voxel {low:g}); nothing to register")


def check_qsm_units(qsm: nib.Nifti1Image, path: str | os.PathLike | None = None) -> None:
    """Raise if a susceptibility map does not look like ppm (ppb, Hz or radians instead).

    The hint names ppb only when the range divided by 1000 is a plausible range in ppm.
    """
    data = np.asarray(qsm.dataobj, dtype=np.float64)
    values = data[(data != 0) & np.isfinite(data)]
    if values.size == 0:
        raise InputError(f"{_name(path, qsm)}: QSM map is all zero")
    low, high = np.percentile(values, [1, 99])
    span = high - low
    if span > MAX_QSM_ROBUST_RANGE_PPM:
        if MIN_QSM_ROBUST_RANGE_PPM <= span / 1000 <= MAX_QSM_ROBUST_RANGE_PPM:
            question = "is it in ppb (then divide it by 1000), Hz or radians?"
        else:
            question = "is it in Hz or radians?"
        raise InputError(
            f"{_name(path, qsm)}: QSM values span {span:.3g} between the 1st and 99th percentiles; "
            f"a map in ppm spans less than {MAX_QSM_ROBUST_RANGE_PPM} — {question}"
        )


def fov_overlap_fraction(qsm: nib.Nifti1Image, flair: nib.Nifti1Image, qsm_to_flair_ras: np.ndarray | None = None,
                         points_per_axis: int = 12) -> float:
    """Fraction of a regular lattice over the QSM field of view that lies inside the FLAIR field of view."""
    axes = [np.linspace(0, n - 1, points_per_axis) for n in qsm.shape[:3]]
    ijk = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    world = nib.affines.apply_affine(qsm.affine, ijk)
    if qsm_to_flair_ras is not None:
        world = nib.affines.apply_affine(qsm_to_flair_ras, world)
    flair_ijk = nib.affines.apply_affine(np.linalg.inv(flair.affine), world)
    upper = np.asarray(flair.shape[:3]) - 0.5
    inside = np.all((flair_ijk >= -0.5) & (flair_ijk <= upper), axis=1)
    return float(inside.mean())


def check_overlap(qsm: nib.Nifti1Image, flair: nib.Nifti1Image, qsm_path=None, flair_path=None) -> None:
    """Raise if QSM and FLAIR hardly overlap in world space (wrong affine, wrong subject, wrong file)."""
    fraction = fov_overlap_fraction(qsm, flair)
    if fraction < MIN_FOV_OVERLAP_FRACTION:
        raise InputError(
            f"{_name(flair_path, flair)}: FLAIR covers only {100 * fraction:.0f} % of the QSM field of view of "
            f"{_name(qsm_path, qsm)}; the images do not overlap in world space (check their affines)"
        )


def check_lesion_mask(mask: nib.Nifti1Image, reference: nib.Nifti1Image,
                      path: str | os.PathLike | None = None) -> str | None:
    """Raise if a lesion mask is not binary (0/1) or not on the grid of its reference image.

    An empty mask (no voxel is 1: a control, or a patient without lesions) is valid; it returns
    a warning instead, and the session gets an empty lesion table (0 lesions, 0 rim+).
    """
    name = _name(path, mask)
    if mask.shape[:3] != reference.shape[:3] or len(mask.shape) != 3:
        raise InputError(f"{name}: lesion mask shape {tuple(mask.shape)} does not match its image grid "
                         f"{tuple(reference.shape[:3])}")
    if not np.allclose(mask.affine, reference.affine, atol=1e-3):
        raise InputError(f"{name}: lesion mask affine differs from its image's affine (not on the same grid)")
    data = np.asanyarray(mask.dataobj)
    values = np.unique(data)
    if not np.all(np.isin(values, (0, 1))):
        shown = ", ".join(f"{v:g}" for v in values[:6]) + (", …" if values.size > 6 else "")
        raise InputError(f"{name}: lesion mask is not binary (values {shown}); expected 0 and 1 (threshold a "
                         "probability map, or set every label above 0 to 1, e.g. fslmaths IN -bin OUT)")
    if not np.any(data == 1):
        return f"{name}: no lesion in this mask (no voxel is 1): the session will have 0 lesions"
    return None


def thick_slice_warning(flair: nib.Nifti1Image, path: str | os.PathLike | None = None) -> str | None:
    """A warning for a 2D FLAIR with thick slices (processing goes on; lesion edges are coarse)."""
    zooms = np.asarray(flair.header.get_zooms()[:3], dtype=float)
    if zooms.max() >= THICK_SLICE_MM:
        return (
            f"{_name(path, flair)}: FLAIR has {zooms.max():.1f} mm slices (a 2D acquisition?); it is used, "
            "but lesion boundaries and small lesions will be less accurate"
        )
    return None
