"""Rigid FLAIR → QSM registration with antsRegistration (antspyx, in-process).

Mattes mutual information (32 bins), rigid (Euler) transform, regular sampling of 20 % of the
fixed voxels with an explicit random seed. antsRegistration is called directly (not through
``ants.registration``) so that the seed is an argument instead of antspyx's global
configuration; with single-threaded ITK the same inputs and seed give the same matrix.
antsRegistration treats a seed of 0 as "seed from the clock": our ``seed`` is passed on as
``seed + 1`` (:func:`ants_random_seed`), so the pipeline default ``--seed 0`` is reproducible too.
Before this, seed 0 made every run different, and one synthetic 2D-FLAIR subject landed
anywhere from 0.05° to 94° off from run to run.

Three things make it robust on thick-slice (2D) FLAIR, where a single run from the centroid
start converged 14° off on one synthetic subject:

1. Both images are first resampled to the same *isotropic* 2 mm grid
   (:func:`resample_isotropic`): anti-aliased where the voxels are finer, linearly interpolated
   along 3 mm slices. ANTs shrinks both images by the same voxel factors, so a 1 × 1 × 3 mm
   FLAIR left anisotropic became 6 × 6 × 18 mm at the coarsest level.
2. A multi-start search (:data:`START_ROTATIONS_DEG`): from the centroid-aligned start and from
   rotations of ±:data:`START_ANGLE_DEG` about each axis (through the fixed head centroid), a
   short coarse registration at 8 mm voxels; the candidate with the highest normalised mutual
   information (:func:`normalised_mutual_information`, computed here in numpy on the 2 mm grid)
   wins.
3. The winner is refined at 4 and 2 mm.

Cost: antsRegistration's time grows with the number of sampled voxels, about 3 µs per sample
and iteration here. A search that also ran a 4 mm level, and 30 iterations at 2 mm, cost 42 s
of CPU per full-size subject; searching at 8 mm only cuts that by about half. Measured by hand
in November 2026 on 23 synthetic subjects (cohort seeds 11–15 small and 21 full, 11 of them 2D
FLAIR), seeds 0 and 1, each run in its own process, with the 8 mm search and 15 iterations at
2 mm (15 s CPU full size, 2 s small): every run within 0.22° and 0.44 mm of the truth, and
repeated runs with the same seed bit-identical. The 2 mm level keeps 30 iterations because with
15 an unmasked, noisy QSM map as the fixed image (no magnitude) ended 2° off on one subject
(0.57° with 30).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import ants
import nibabel as nib
import numpy as np
from ants.internal import get_lib_fn, get_pointer_string
from scipy import ndimage

from .antsio import to_ants
from .resample import resample_to_reference
from .transforms import lps_to_ras_transform, rigid_matrix, write_itk_rigid

#: Registration works on isotropic voxels of this size; finer data add time, not accuracy.
ISOTROPIC_MM = 2.0
SAMPLING_RATE = 0.2
GRADIENT_STEP = 0.25
HISTOGRAM_BINS = 32
#: Rotation of the extra starts of the multi-start search (degrees, about one axis each).
START_ANGLE_DEG = 10.0
START_ROTATIONS_DEG: tuple[tuple[float, float, float], ...] = (
    (0.0, 0.0, 0.0),
    *(tuple(sign * START_ANGLE_DEG * (axis == k) for k in range(3)) for axis in range(3) for sign in (1.0, -1.0)),
)


@dataclass(frozen=True)
class Schedule:
    """A coarse-to-fine schedule: shrink factors and smoothing (voxels of the isotropic grid)."""

    shrink: tuple[int, ...]
    smoothing_vox: tuple[float, ...]
    iterations: tuple[int, ...]


#: Short coarse runs of the multi-start search (8 mm voxels).
SEARCH = Schedule(shrink=(4,), smoothing_vox=(2,), iterations=(100,))
#: Refinement of the best candidate (4 and 2 mm voxels).
REFINE = Schedule(shrink=(2, 1), smoothing_vox=(1, 0), iterations=(50, 30))
#: The single-start schedule used for the affine template-to-subject registration.
AFFINE = Schedule(shrink=(6, 4, 2, 1), smoothing_vox=(3, 2, 1, 0), iterations=(200, 100, 50, 25))


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


def start_transforms(moving: nib.Nifti1Image, fixed: nib.Nifti1Image) -> list[np.ndarray]:
    """The starts of the multi-start search: the centroid translation composed with each of
    :data:`START_ROTATIONS_DEG`, rotating about the fixed foreground centroid."""
    centre = _centroid_ras(fixed, foreground_mask(fixed))
    to_centre, from_centre = np.eye(4), np.eye(4)
    to_centre[:3, 3], from_centre[:3, 3] = -centre, centre
    translation = initial_translation(moving, fixed)
    return [translation @ from_centre @ rigid_matrix(angles, (0, 0, 0)) @ to_centre for angles in START_ROTATIONS_DEG]


def resample_isotropic(img: nib.Nifti1Image, spacing_mm: float) -> nib.Nifti1Image:
    """The image on a grid of the same orientation and extent with cubic voxels of ``spacing_mm``.

    Axes finer than ``spacing_mm`` are anti-aliased first (Gaussian, σ = the FWHM of the coarser
    voxel over 2.355, in input voxels); coarser axes (thick 2D slices) are interpolated
    linearly. Trilinear sampling; the FOV stays centred.
    """
    zooms = nib.affines.voxel_sizes(img.affine)
    factors = spacing_mm / zooms
    data = np.asarray(img.dataobj, dtype=np.float32)
    sigma = np.sqrt(np.maximum(factors**2 - 1.0, 0.0)) / 2.355
    smoothed = ndimage.gaussian_filter(data, sigma=sigma) if np.any(sigma > 0) else data
    extent_vox = np.array(data.shape) / factors
    shape = tuple(int(max(1, np.round(n))) for n in extent_vox)
    affine = img.affine.copy()
    affine[:3, :3] = img.affine[:3, :3] @ np.diag(factors)
    # Same FOV centre: the centre of the new grid maps onto the centre of the old one.
    old_centre = (np.array(data.shape) - 1) / 2.0
    new_centre = (np.array(shape) - 1) / 2.0
    affine[:3, 3] = nib.affines.apply_affine(img.affine, old_centre) - affine[:3, :3] @ new_centre
    return resample_to_reference(nib.Nifti1Image(smoothed, img.affine),
                                 nib.Nifti1Image(np.zeros(shape, np.uint8), affine))


def normalised_mutual_information(
    fixed: nib.Nifti1Image, moving: nib.Nifti1Image, qsm_to_flair_ras: np.ndarray, bins: int = HISTOGRAM_BINS
) -> float:
    """Studholme's normalised mutual information (H(F) + H(M)) / H(F, M) of the two images on the
    fixed grid, over the fixed voxels whose mapped point falls inside the moving image.

    Normalised MI does not reward a transform for changing the overlap, which is what lets it
    compare candidates that started far apart. Intensities are clipped to their 0.5–99.5th
    percentiles (as ANTs' winsorising) before binning.
    """
    voxel_map = np.linalg.inv(moving.affine) @ np.asarray(qsm_to_flair_ras, float) @ fixed.affine
    sampled = ndimage.affine_transform(
        np.asarray(moving.dataobj, dtype=np.float32),
        voxel_map[:3, :3],
        voxel_map[:3, 3],
        output_shape=fixed.shape,
        order=1,
        mode="constant",
        cval=np.nan,
    )
    inside = np.isfinite(sampled)
    a = np.asarray(fixed.dataobj, dtype=np.float32)[inside]
    b = sampled[inside]
    if a.size < bins * bins:
        return 0.0
    edges_a = np.linspace(*np.percentile(a, [0.5, 99.5]), bins + 1)
    edges_b = np.linspace(*np.percentile(b, [0.5, 99.5]), bins + 1)
    joint, _, _ = np.histogram2d(np.clip(a, edges_a[0], edges_a[-1]), np.clip(b, edges_b[0], edges_b[-1]),
                                 bins=(edges_a, edges_b))
    joint /= joint.sum()

    def entropy(p: np.ndarray) -> float:
        p = p[p > 0]
        return float(-(p * np.log(p)).sum())

    return (entropy(joint.sum(axis=1)) + entropy(joint.sum(axis=0))) / entropy(joint)


def ants_random_seed(seed: int) -> int:
    """The ``--random-seed`` given to antsRegistration for our ``seed`` (≥ 0): ``seed + 1``,
    because ANTs seeds from the clock when given 0."""
    if int(seed) < 0 or int(seed) >= 2**31 - 1:
        raise ValueError(f"registration seed must be in [0, 2**31 - 2], got {seed}")
    return int(seed) + 1


def _matrix_from_ants_transform_file(path: str) -> np.ndarray:
    """Read an ANTs/ITK linear transform file as a 4×4 RAS point mapping (fixed → moving)."""
    transform = ants.read_transform(path)
    origin_and_axes = np.vstack([np.zeros(3), np.eye(3)])
    mapped = np.array([transform.apply_to_point(tuple(p)) for p in origin_and_axes])
    lps = np.eye(4)
    lps[:3, 3] = mapped[0]
    lps[:3, :3] = (mapped[1:] - mapped[0]).T
    return lps_to_ras_transform(lps)


def _run_ants(
    fixed: ants.ANTsImage,
    moving: ants.ANTsImage,
    initial: np.ndarray,
    transform: str,
    schedule: Schedule,
    seed: int,
) -> np.ndarray:
    """One antsRegistration run from ``initial`` (4×4 RAS, fixed → moving); the result likewise."""
    with tempfile.TemporaryDirectory(prefix="bids_rim_reg_") as tmp:
        init_path = write_itk_rigid(initial, Path(tmp) / "init.txt")
        prefix = str(Path(tmp) / "linear_")
        fixed_str, moving_str = get_pointer_string(fixed), get_pointer_string(moving)
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
            "--convergence", f"[{'x'.join(map(str, schedule.iterations))},1e-6,10]",
            "--shrink-factors", "x".join(map(str, schedule.shrink)),
            "--smoothing-sigmas", "x".join(map(str, schedule.smoothing_vox)) + "vox",
            "--random-seed", str(ants_random_seed(seed)),
        ]
        status = get_lib_fn("antsRegistration")(args)
        if status != 0:
            raise RuntimeError(f"antsRegistration failed with exit code {status}")
        return _matrix_from_ants_transform_file(prefix + "0GenericAffine.mat")


def register_rigid(
    moving_flair: nib.Nifti1Image,
    fixed: nib.Nifti1Image,
    *,
    seed: int = 0,
) -> np.ndarray:
    """Estimate the rigid transform that aligns FLAIR (moving) to the GRE magnitude (fixed).

    Returns ``qsm_to_flair_ras``: a 4×4 matrix mapping a fixed-world point (RAS mm) to the same
    anatomy in FLAIR world. Multi-start coarse search, then refinement (module docstring). The
    metric uses the whole images, no brain mask (restricting it to the brain sent one subject
    11° off). The fixed image should be the GRE magnitude on the QSM grid; QSM itself as the
    fixed image is much less reliable (its contrast is not FLAIR-like; see the README's
    registration numbers). Reproducible: the same inputs and seed give the same matrix as long
    as ITK runs single-threaded (the default, see :mod:`bids_rim.preproc.antsio`).
    """
    fixed_iso = resample_isotropic(fixed, ISOTROPIC_MM)
    moving_iso = resample_isotropic(moving_flair, ISOTROPIC_MM)
    fixed_ants, moving_ants = to_ants(fixed_iso), to_ants(moving_iso)
    candidates = [
        _run_ants(fixed_ants, moving_ants, start, "Rigid", SEARCH, seed)
        for start in start_transforms(moving_iso, fixed_iso)
    ]
    scores = [normalised_mutual_information(fixed_iso, moving_iso, matrix) for matrix in candidates]
    best = candidates[int(np.argmax(scores))]
    return _run_ants(fixed_ants, moving_ants, best, "Rigid", REFINE, seed)


def register_affine(
    moving: nib.Nifti1Image,
    fixed: nib.Nifti1Image,
    *,
    seed: int = 0,
) -> np.ndarray:
    """A 12-parameter affine registration (used to bring a template to a subject): one start at
    the centroid translation, four levels (8 → 2 mm voxels... relative shrink 6, 4, 2, 1).

    Returns the 4×4 matrix mapping a fixed-world point (RAS mm) to moving world.
    """
    fixed_iso = resample_isotropic(fixed, ISOTROPIC_MM)
    moving_iso = resample_isotropic(moving, ISOTROPIC_MM)
    initial = initial_translation(moving_iso, fixed_iso)
    return _run_ants(to_ants(fixed_iso), to_ants(moving_iso), initial, "Affine", AFFINE, seed)
