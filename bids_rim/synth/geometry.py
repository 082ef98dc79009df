"""Small geometric helpers: rotations, rigid transforms, voxel grids and resampling."""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def rotation_matrix(angles_deg: np.ndarray) -> np.ndarray:
    """3x3 rotation about x, then y, then z (angles in degrees)."""
    ax, ay, az = np.deg2rad(np.asarray(angles_deg, dtype=float))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def rigid_matrix(angles_deg: np.ndarray, translation_mm: np.ndarray,
                 centre_mm: np.ndarray | None = None) -> np.ndarray:
    """4x4 rigid transform rotating about ``centre_mm`` (default origin), then translating."""
    centre = np.zeros(3) if centre_mm is None else np.asarray(centre_mm, dtype=float)
    mat = np.eye(4)
    rot = rotation_matrix(angles_deg)
    mat[:3, :3] = rot
    mat[:3, 3] = centre - rot @ centre + np.asarray(translation_mm, dtype=float)
    return mat


def random_rigid(rng: np.random.Generator, max_angle_deg: float, max_shift_mm: float,
                 min_angle_deg: float = 0.0, min_shift_mm: float = 0.0,
                 centre_mm: np.ndarray | None = None) -> tuple[np.ndarray, float, float]:
    """A rigid transform with a total rotation and shift drawn uniformly in the given ranges.

    Returns the 4x4 matrix, the rotation angle (deg) and the shift length (mm).
    """
    angle = rng.uniform(min_angle_deg, max_angle_deg)
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    shift = rng.uniform(min_shift_mm, max_shift_mm)
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    rot = _axis_angle(axis, np.deg2rad(angle))
    centre = np.zeros(3) if centre_mm is None else np.asarray(centre_mm, dtype=float)
    mat = np.eye(4)
    mat[:3, :3] = rot
    mat[:3, 3] = centre - rot @ centre + shift * direction
    return mat, float(angle), float(shift)


def _axis_angle(axis: np.ndarray, angle_rad: float) -> np.ndarray:
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle_rad) * k + (1 - np.cos(angle_rad)) * (k @ k)


def grid_affine(spacing_mm: np.ndarray, shape: tuple[int, int, int], centre_mm: np.ndarray,
                rotation: np.ndarray | None = None) -> np.ndarray:
    """Affine of a grid with the given spacing and orientation whose centre sits at ``centre_mm``."""
    rot = np.eye(3) if rotation is None else rotation
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag(np.asarray(spacing_mm, dtype=float))
    half = (np.asarray(shape) - 1) / 2.0
    affine[:3, 3] = np.asarray(centre_mm, dtype=float) - affine[:3, :3] @ half
    return affine


def voxel_world_coords(affine: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """World (mm) coordinates of every voxel centre, shape (3, *shape), float32."""
    ijk = np.indices(shape, dtype=np.float32).reshape(3, -1)
    world = affine[:3, :3].astype(np.float32) @ ijk + affine[:3, 3:4].astype(np.float32)
    return world.reshape((3, *shape))


def resample(volume: np.ndarray, source_affine: np.ndarray, target_affine: np.ndarray,
             target_shape: tuple[int, int, int], world_map: np.ndarray | None = None,
             order: int = 1, cval: float = 0.0) -> np.ndarray:
    """Sample ``volume`` on a target grid.

    ``world_map`` (4x4) maps target world points to source world points (identity if None).
    """
    mapping = np.eye(4) if world_map is None else world_map
    vox = np.linalg.inv(source_affine) @ mapping @ target_affine
    return ndimage.affine_transform(volume, vox[:3, :3], vox[:3, 3], output_shape=target_shape,
                                    order=order, mode="constant", cval=cval, prefilter=False)


def upsample_to(coarse: np.ndarray, shape: tuple[int, ...], out: np.ndarray | None = None
                ) -> np.ndarray:
    """Linear interpolation of a coarse array onto ``shape`` (corners aligned), float32.

    Separable: one two-tap interpolation per axis, which gives what ``ndimage.zoom(order=1,
    grid_mode=False)`` gives (up to float32 rounding) at a fraction of its cost. Each output
    plane along an axis is ``low + (high - low) * weight`` of two input planes, written in
    place; the last axis is expanded first and the first axis last, so the full-size pass
    writes whole contiguous planes (into ``out`` when given).
    """
    result = np.asarray(coarse, dtype=np.float32)
    for axis in reversed(range(len(shape))):
        n, n_in = shape[axis], result.shape[axis]
        position = np.linspace(0.0, n_in - 1.0, n) if n_in > 1 else np.zeros(n)
        below = np.clip(np.floor(position).astype(int), 0, max(n_in - 2, 0))
        weight = (position - below).astype(np.float32)
        target_shape = (*result.shape[:axis], n, *result.shape[axis + 1:])
        target = out if axis == 0 and out is not None else np.empty(target_shape, np.float32)
        source, dest = np.moveaxis(result, axis, 0), np.moveaxis(target, axis, 0)
        if n_in == 1:
            dest[...] = source[0]
        else:
            step = np.moveaxis(np.diff(result, axis=axis), axis, 0)
            for i, (low, w) in enumerate(zip(below, weight)):
                np.multiply(step[low], w, out=dest[i])
                dest[i] += source[low]
        result = target
    return result


def smooth_random_field(rng: np.random.Generator, shape: tuple[int, int, int],
                        scale_vox: float, sd: float = 1.0) -> np.ndarray:
    """Gaussian random field with correlation length ``scale_vox`` (voxels) and standard dev ``sd``.

    Drawn on a coarse lattice and interpolated, which is fast and smooth.
    """
    step = max(1.0, scale_vox / 2.0)
    coarse_shape = tuple(int(np.ceil(n / step)) + 1 for n in shape)
    coarse = ndimage.gaussian_filter(rng.standard_normal(coarse_shape), 1.0, mode="wrap")
    coarse = (coarse / (coarse.std() + 1e-12)).astype(np.float32)
    field = upsample_to(coarse, shape)
    field *= np.float32(sd)
    return field
