"""Rigid transforms as 4×4 RAS matrices, and their ITK text-file form.

Convention (docs/interfaces.md §2): ``qsm_to_flair_ras`` maps a point of QSM world (RAS mm) to the
same anatomical point in FLAIR world — the direction needed to pull FLAIR onto the QSM grid. ITK
transforms live in LPS; an ITK file maps fixed (QSM) points to moving (FLAIR) points, so the
file written as ``from-FLAIR_to-QSM_mode-image_xfm.txt`` holds the same mapping in LPS, which is
how fMRIPrep and ``antsApplyTransforms`` read such a file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

_FLIP4 = np.diag([-1.0, -1.0, 1.0, 1.0])
_ITK_LINEAR_TYPES = (
    "AffineTransform_double_3_3",
    "AffineTransform_float_3_3",
    "MatrixOffsetTransformBase_double_3_3",
    "MatrixOffsetTransformBase_float_3_3",
)


def ras_to_lps_transform(matrix_ras: np.ndarray) -> np.ndarray:
    """Express a point-to-point transform of RAS space in LPS space (the flip is its own inverse)."""
    return _FLIP4 @ np.asarray(matrix_ras, dtype=float) @ _FLIP4


lps_to_ras_transform = ras_to_lps_transform


def rotation_angle_deg(matrix: np.ndarray) -> float:
    """Total rotation angle (degrees) of the 3×3 part of a rigid 4×4 matrix."""
    rotation = np.asarray(matrix, dtype=float)[:3, :3]
    cos_angle = np.clip((np.trace(rotation) - 1.0) / 2.0, -1.0, 1.0)
    return float(np.degrees(np.arccos(cos_angle)))


def translation_mm(matrix: np.ndarray) -> float:
    """Length (mm) of the translation part of a 4×4 matrix."""
    return float(np.linalg.norm(np.asarray(matrix, dtype=float)[:3, 3]))


def rigid_matrix(rotation_deg_xyz: tuple[float, float, float],
                 translation_xyz_mm: tuple[float, float, float]) -> np.ndarray:
    """Build a 4×4 rigid matrix from rotations about x, y, z (degrees, applied x then y then z)."""
    ax, ay, az = np.radians(rotation_deg_xyz)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    matrix = np.eye(4)
    matrix[:3, :3] = rz @ ry @ rx
    matrix[:3, 3] = translation_xyz_mm
    return matrix


def write_itk_rigid(matrix_ras: np.ndarray, path: str | os.PathLike) -> Path:
    """Write a 4×4 RAS transform (QSM → FLAIR points) as an ITK text transform (LPS, centre 0)."""
    lps = ras_to_lps_transform(matrix_ras)
    params = list(lps[:3, :3].ravel()) + list(lps[:3, 3])
    text = (
        "#Insight Transform File V1.0\n"
        "#Transform 0\n"
        "Transform: AffineTransform_double_3_3\n"
        f"Parameters: {' '.join(repr(float(v)) for v in params)}\n"
        "FixedParameters: 0 0 0\n"
    )
    path = Path(path)
    path.write_text(text)
    return path


def read_itk_rigid(path: str | os.PathLike) -> np.ndarray:
    """Read an ITK text affine transform and return it as a 4×4 RAS matrix."""
    fields: dict[str, str] = {}
    for line in Path(path).read_text().splitlines():
        if ":" in line and not line.startswith("#"):
            key, value = line.split(":", 1)
            fields[key.strip()] = value.strip()
    if fields.get("Transform") not in _ITK_LINEAR_TYPES:
        raise ValueError(f"{path}: not a 3D ITK affine transform (Transform: {fields.get('Transform')})")
    params = np.array(fields["Parameters"].split(), dtype=float)
    center = np.array(fields.get("FixedParameters", "0 0 0").split(), dtype=float)
    linear = params[:9].reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = linear
    # ITK: y = A (x - c) + t + c
    lps[:3, 3] = params[9:12] + center - linear @ center
    return lps_to_ras_transform(lps)


__all__ = [
    "ras_to_lps_transform",
    "lps_to_ras_transform",
    "rotation_angle_deg",
    "translation_mm",
    "rigid_matrix",
    "write_itk_rigid",
    "read_itk_rigid",
]
