"""Rigid FLAIR → QSM registration with antsRegistration (antspyx, in-process).

Mutual information (Mattes, 32 bins), rigid (Euler) transform, three resolution levels
(shrink 4, 2, 1; smoothing 2, 1, 0 voxels), regular sampling of 25 % of the fixed voxels with an
explicit random seed: the same inputs, seed and thread count give the same matrix. The start is
the translation that aligns the centroids of the two foregrounds, so FOV offsets of several
centimetres are fine. antsRegistration is called directly (not through ``ants.registration``)
so that the seed is an argument instead of antspyx's global configuration.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import ants
import nibabel as nib
import numpy as np
from ants.internal import get_lib_fn, get_pointer_string

from .antsio import to_ants
from .transforms import lps_to_ras_transform, write_itk_rigid

SHRINK_FACTORS = (4, 2, 1)
SMOOTHING_SIGMAS_VOX = (2, 1, 0)
ITERATIONS = (200, 100, 50)
SAMPLING_RATE = 0.25
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


def initial_translation(moving: nib.Nifti1Image, fixed: nib.Nifti1Image, fixed_mask: np.ndarray | None = None) -> np.ndarray:
    """4×4 translation mapping the fixed foreground centroid onto the moving foreground centroid."""
    fixed_fg = fixed_mask if fixed_mask is not None else foreground_mask(fixed)
    matrix = np.eye(4)
    matrix[:3, 3] = _centroid_ras(moving, foreground_mask(moving)) - _centroid_ras(fixed, fixed_fg)
    return matrix


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
    fixed_mask: nib.Nifti1Image | None = None,
    seed: int = 0,
    threads: int = 1,
) -> np.ndarray:
    """Estimate the rigid transform that aligns FLAIR (moving) to QSM or GRE magnitude (fixed).

    Returns ``qsm_to_flair_ras``: a 4×4 matrix mapping a fixed-world point (RAS mm) to the same
    anatomy in FLAIR world. ``fixed_mask`` (e.g. the brain mask on the QSM grid) restricts the
    metric to the brain. ``threads`` sets ITK's default thread count through
    ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS``; ITK reads it when it first starts in a process, so
    call this in a fresh process (as Nipype nodes are) for the setting to take effect.
    """
    return _register_linear(moving_flair, fixed, "Rigid", fixed_mask=fixed_mask, seed=seed, threads=threads)


def register_affine(
    moving: nib.Nifti1Image,
    fixed: nib.Nifti1Image,
    *,
    fixed_mask: nib.Nifti1Image | None = None,
    seed: int = 0,
    threads: int = 1,
) -> np.ndarray:
    """Like :func:`register_rigid` with a 12-parameter affine (used to bring a template to a subject).

    Returns the 4×4 matrix mapping a fixed-world point (RAS mm) to moving world.
    """
    return _register_linear(moving, fixed, "Affine", fixed_mask=fixed_mask, seed=seed, threads=threads)


def _register_linear(
    moving: nib.Nifti1Image,
    fixed: nib.Nifti1Image,
    transform: str,
    *,
    fixed_mask: nib.Nifti1Image | None,
    seed: int,
    threads: int,
) -> np.ndarray:
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(int(threads))
    mask_data = None if fixed_mask is None else np.asarray(fixed_mask.dataobj) > 0
    fixed_ants = to_ants(fixed)
    moving_ants = to_ants(moving)
    keep_alive = [fixed_ants, moving_ants]
    mask_option = "[NA,NA]"
    if mask_data is not None:
        mask_ants = to_ants(nib.Nifti1Image(mask_data.astype(np.float32), fixed_mask.affine))
        keep_alive.append(mask_ants)
        mask_option = f"[{get_pointer_string(mask_ants)},NA]"

    with tempfile.TemporaryDirectory(prefix="bids_rim_reg_") as tmp:
        init_path = write_itk_rigid(initial_translation(moving, fixed, mask_data), Path(tmp) / "init.txt")
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
            "--transform", f"{transform}[0.1]",
            "--metric", f"MI[{fixed_str},{moving_str},1,{HISTOGRAM_BINS},Regular,{SAMPLING_RATE}]",
            "--convergence", f"[{'x'.join(map(str, ITERATIONS))},1e-6,10]",
            "--shrink-factors", "x".join(map(str, SHRINK_FACTORS)),
            "--smoothing-sigmas", "x".join(map(str, SMOOTHING_SIGMAS_VOX)) + "vox",
            "--masks", mask_option,
            "--random-seed", str(int(seed)),
        ]
        status = get_lib_fn("antsRegistration")(args)
        if status != 0:
            raise RuntimeError(f"antsRegistration failed with exit code {status}")
        matrix = _matrix_from_ants_transform_file(prefix + "0GenericAffine.mat")
    del keep_alive
    return matrix
