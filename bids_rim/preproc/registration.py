"""Rigid FLAIR → QSM registration with antsRegistration (antspyx, in-process).

Mutual information (Mattes, 32 bins), rigid (Euler) transform, the schedule of ANTs' own
"Rigid" preset (four levels, shrink 6, 4, 2, 1, smoothing 3, 2, 1, 0 voxels, gradient step
0.25, stop when the metric changes by < 1e-6 over 10 iterations; at most 200, 100, 50, 25
iterations instead of 1000, 500, 250, 100, which on a 1 mm phantom head was 20 % faster and as
accurate: 0.17° and 0.03 mm), run on both images first brought to about 2 mm voxels
(:func:`downsample_to_spacing`) — finer data add time, not accuracy. Regular sampling of 20 %
of the fixed voxels with an explicit random seed: the same inputs and seed give the same
matrix (with single-threaded ITK). The start is
the translation that aligns the centroids of the two foregrounds, so FOV offsets of several
centimetres are fine. antsRegistration is called directly (not through ``ants.registration``)
so that the seed is an argument instead of antspyx's global configuration.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import ants
import nibabel as nib
import numpy as np
from scipy import ndimage
from ants.internal import get_lib_fn, get_pointer_string

from .antsio import to_ants
from .resample import resample_to_reference
from .transforms import lps_to_ras_transform, write_itk_rigid

#: The finest resolution level works at about this voxel size; finer data add time, not accuracy.
FINEST_LEVEL_MM = 2.0
#: Relative shrink factors and smoothing (in voxels of each level) of the three levels.
LEVEL_SHRINK = (6, 4, 2, 1)
SMOOTHING_SIGMAS_VOX = (3, 2, 1, 0)
ITERATIONS = (200, 100, 50, 25)
SAMPLING_RATE = 0.2
GRADIENT_STEP = 0.25
HISTOGRAM_BINS = 32


def foreground_mask(img: nib.Nifti1Image) -> np.ndarray:
    """Boolean foreground of an image: its non-zero support when the background is exactly zero
    (masked QSM, zero-filled FOV), otherwise voxels above 10 % of the robust maximum."""
    data = np.asarray(img.dataobj, dtype=np.float32)
    nonzero = data != 0
    if nonzero.mean() < 0.9:
        return nonzero
    return np.abs(data) > 0.1 * np.percentile(np.abs(data), 99)


def _centroid_ras(img: nib.Nifti1Image, mask: np.ndarray) -> np.ndarray:
    ijk = np.argwhere(mask).mean(axis=0)
    return nib.affines.apply_affine(img.affine, ijk)


def initial_translation(moving: nib.Nifti1Image, fixed: nib.Nifti1Image) -> np.ndarray:
    """4×4 translation mapping the fixed foreground centroid onto the moving foreground centroid.

    Both foregrounds come from the images themselves (not from a brain mask) so that like is
    compared with like: a head against a head. Starting from the brain-mask centroid against
    the FLAIR head centroid put one synthetic subject 15° off.
    """
    matrix = np.eye(4)
    matrix[:3, 3] = _centroid_ras(moving, foreground_mask(moving)) - _centroid_ras(fixed, foreground_mask(fixed))
    return matrix


def downsample_to_spacing(img: nib.Nifti1Image, spacing_mm: float) -> nib.Nifti1Image:
    """The image on a grid of the same orientation and extent with voxels of about ``spacing_mm``.

    Gaussian anti-aliasing (σ = the FWHM of the coarser voxel over 2.355, in input voxels)
    followed by trilinear sampling. Images already that coarse are returned unchanged.
    Registering at 2 mm gives sub-millimetre transforms; pyramid building at 0.6 mm cost more
    than the optimisation itself.
    """
    zooms = np.linalg.norm(img.affine[:3, :3], axis=0)
    factors = spacing_mm / zooms
    if np.all(factors < 1.5):
        return img
    factors = np.maximum(factors, 1.0)
    data = np.asarray(img.dataobj, dtype=np.float32)
    smoothed = ndimage.gaussian_filter(data, sigma=np.sqrt(np.maximum(factors**2 - 1.0, 0.0)) / 2.355)
    shape = tuple(int(np.ceil(n / f)) for n, f in zip(data.shape, factors))
    affine = img.affine.copy()
    affine[:3, :3] = img.affine[:3, :3] @ np.diag(factors)
    # Keep the FOV centred: voxel centre 0 of the new grid sits half a new voxel in.
    affine[:3, 3] = nib.affines.apply_affine(img.affine, (factors - 1.0) / 2.0)
    return resample_to_reference(nib.Nifti1Image(smoothed, img.affine), nib.Nifti1Image(np.zeros(shape, np.uint8), affine))


def _matrix_from_ants_transform_file(path: str) -> np.ndarray:
    """Read an ANTs/ITK linear transform file as a 4×4 RAS point mapping (fixed → moving)."""
    transform = ants.read_transform(path)
    origin_and_axes = np.vstack([np.zeros(3), np.eye(3)])
    mapped = np.array([transform.apply_to_point(tuple(p)) for p in origin_and_axes])
    lps = np.eye(4)
    lps[:3, 3] = mapped[0]
    lps[:3, :3] = (mapped[1:] - mapped[0]).T
    return lps_to_ras_transform(lps)


def register_rigid(
    moving_flair: nib.Nifti1Image,
    fixed: nib.Nifti1Image,
    *,
    seed: int = 0,
) -> np.ndarray:
    """Estimate the rigid transform that aligns FLAIR (moving) to the GRE magnitude (fixed).

    Returns ``qsm_to_flair_ras``: a 4×4 matrix mapping a fixed-world point (RAS mm) to the same
    anatomy in FLAIR world. The metric uses the whole images, no brain mask: on three small
    synthetic subjects the whole-image metric was within 0.1° and 0.2 mm every time, while
    restricting it to the brain sent one subject 11° off. The fixed image should be the GRE
    magnitude on the QSM grid; QSM itself as the fixed image failed on the same subjects
    (1–60° off): its contrast is not FLAIR-like. Reproducible: the same inputs and seed give the
    same matrix as long as ITK runs single-threaded (the default, see
    :mod:`bids_rim.preproc.antsio`).
    """
    return _register_linear(moving_flair, fixed, "Rigid", seed=seed)


def register_affine(
    moving: nib.Nifti1Image,
    fixed: nib.Nifti1Image,
    *,
    seed: int = 0,
) -> np.ndarray:
    """Like :func:`register_rigid` with a 12-parameter affine (used to bring a template to a subject).

    Returns the 4×4 matrix mapping a fixed-world point (RAS mm) to moving world.
    """
    return _register_linear(moving, fixed, "Affine", seed=seed)


def _register_linear(
    moving: nib.Nifti1Image,
    fixed: nib.Nifti1Image,
    transform: str,
    *,
    seed: int,
) -> np.ndarray:
    fixed = downsample_to_spacing(fixed, FINEST_LEVEL_MM)
    moving = downsample_to_spacing(moving, FINEST_LEVEL_MM)
    zooms = np.linalg.norm(fixed.affine[:3, :3], axis=0)
    base_shrink = max(1, int(round(FINEST_LEVEL_MM / zooms.min())))
    fixed_ants = to_ants(fixed)
    moving_ants = to_ants(moving)

    with tempfile.TemporaryDirectory(prefix="bids_rim_reg_") as tmp:
        init_path = write_itk_rigid(initial_translation(moving, fixed), Path(tmp) / "init.txt")
        prefix = str(Path(tmp) / "linear_")
        fixed_str, moving_str = get_pointer_string(fixed_ants), get_pointer_string(moving_ants)
        args = [
            "--dimensionality", "3",
            "--float", "1",
            "--collapse-output-transforms", "1",
            "--output", prefix,
            "--interpolation", "Linear",
            "--winsorize-image-intensities", "[0.005,0.995]",
            "--use-histogram-matching", "0",
            "--initial-moving-transform", str(init_path),
            "--transform", f"{transform}[{GRADIENT_STEP}]",
            "--metric", f"MI[{fixed_str},{moving_str},1,{HISTOGRAM_BINS},Regular,{SAMPLING_RATE}]",
            "--convergence", f"[{'x'.join(map(str, ITERATIONS))},1e-6,10]",
            "--shrink-factors", "x".join(str(f * base_shrink) for f in LEVEL_SHRINK),
            "--smoothing-sigmas", "x".join(map(str, SMOOTHING_SIGMAS_VOX)) + "vox",
            "--random-seed", str(int(seed)),
        ]
        status = get_lib_fn("antsRegistration")(args)
        if status != 0:
            raise RuntimeError(f"antsRegistration failed with exit code {status}")
        matrix = _matrix_from_ants_transform_file(prefix + "0GenericAffine.mat")
    return matrix
