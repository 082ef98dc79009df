"""Rasterising tubes (veins) with partial volume into a voxel grid."""
from __future__ import annotations

import numpy as np


def tube_fraction(shape: tuple[int, int, int], points_vox: np.ndarray, radius_vox: float,
                  out: np.ndarray | None = None) -> np.ndarray:
    """Partial-volume fraction of a tube along ``points_vox`` (N, 3), max-accumulated into ``out``.

    The cross-section is a Gaussian whose integral equals the tube's area pi r^2 (so a vein
    thinner than a voxel fills it only partly), capped at 1 for thick tubes.
    """
    frac = np.zeros(shape, dtype=np.float32) if out is None else out
    sigma2 = radius_vox ** 2 / 2.0 + 1.0 / 12.0
    peak = min(1.0, radius_vox ** 2 / (2.0 * sigma2))
    half = int(np.ceil(np.sqrt(sigma2) * 3.0))
    points = _densify(points_vox, 0.5)
    offsets = np.arange(-half, half + 1)
    for p in points:
        centre = np.round(p).astype(int)
        lo = centre - half
        if np.any(centre + half < 0) or np.any(lo >= np.array(shape)):
            continue
        sl = tuple(slice(max(0, lo[a]), min(shape[a], centre[a] + half + 1)) for a in range(3))
        axes = [offsets[(sl[a].start - lo[a]):(sl[a].stop - lo[a])] + centre[a] - p[a]
                for a in range(3)]
        d2 = axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2
        np.maximum(frac[sl], np.minimum(1.0, peak * np.exp(-d2 / (2 * sigma2))), out=frac[sl])
    return frac


def _densify(points: np.ndarray, max_step: float) -> np.ndarray:
    """Insert points so that consecutive ones are at most ``max_step`` apart."""
    out = [points[0]]
    for a, b in zip(points[:-1], points[1:]):
        n = max(1, int(np.ceil(np.linalg.norm(b - a) / max_step)))
        out.extend(a + (b - a) * t for t in np.arange(1, n + 1) / n)
    return np.asarray(out)
