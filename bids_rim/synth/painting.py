"""Rasterising tubes (veins) with partial volume into a voxel grid."""
from __future__ import annotations

import math

import numpy as np

MAX_CHUNK_WORK = 24_000   # voxels x segments painted in one vectorised step


def tube_fraction(shape: tuple[int, int, int], points_vox: np.ndarray, radius_vox: float,
                  out: np.ndarray | None = None) -> np.ndarray:
    """Partial-volume fraction of a tube along ``points_vox`` (N, 3), max-accumulated into ``out``.

    The cross-section is a Gaussian of the distance to the centre line (a polyline), whose
    integral equals the tube's area pi r^2 (so a vein thinner than a voxel fills it only
    partly), capped at 1 for thick tubes and cut at ceil(3 SD). Runs of consecutive segments
    are painted together in their bounding box (vectorised over the segments), which is fast.
    """
    frac = np.zeros(shape, dtype=np.float32) if out is None else out
    sigma2 = radius_vox ** 2 / 2.0 + 1.0 / 12.0
    peak = min(1.0, radius_vox ** 2 / (2.0 * sigma2))
    reach = float(np.ceil(np.sqrt(sigma2) * 3.0))
    points = np.asarray(points_vox, dtype=np.float64)
    rows = points.tolist()  # the run-growing below works on 3 numbers at a time: plain floats
    start = 0
    while start < len(rows) - 1:
        stop = start + 1  # the run paints segments start .. stop-1 (points start .. stop)
        low = [min(a, b) for a, b in zip(rows[start], rows[stop])]
        high = [max(a, b) for a, b in zip(rows[start], rows[stop])]
        lo, hi = _box(low, high, reach, shape)
        while stop + 1 < len(rows):
            low2 = [min(a, b) for a, b in zip(low, rows[stop + 1])]
            high2 = [max(a, b) for a, b in zip(high, rows[stop + 1])]
            lo2, hi2 = _box(low2, high2, reach, shape)
            if math.prod(max(h - k, 0) for h, k in zip(hi2, lo2)) * (stop + 1 - start) > MAX_CHUNK_WORK:
                break
            stop, lo, hi, low, high = stop + 1, lo2, hi2, low2, high2
        if all(h > k for h, k in zip(hi, lo)):
            _paint_run(frac, points[start:stop + 1], np.array(lo), np.array(hi), sigma2, peak,
                       reach)
        start = stop
    return frac


def _box(low: list[float], high: list[float], reach: float, shape: tuple[int, int, int]
         ) -> tuple[list[int], list[int]]:
    """Voxel box (lo, hi) of the points' bounding box (low, high) grown by ``reach``."""
    lo = [max(math.floor(v - reach), 0) for v in low]
    hi = [min(math.ceil(v + reach) + 1, n) for v, n in zip(high, shape)]
    return lo, hi


def _paint_run(frac: np.ndarray, points: np.ndarray, lo: np.ndarray, hi: np.ndarray,
               sigma2: float, peak: float, reach: float) -> None:
    """Max-accumulate the Gaussian of the distance to a run of segments into ``frac[lo:hi]``."""
    a = points[:-1].astype(np.float32)
    step = (points[1:] - points[:-1]).astype(np.float32)
    length2 = np.maximum(np.sum(step * step, axis=1), np.float32(1e-12))
    axes = [np.arange(lo[k], hi[k], dtype=np.float32) for k in range(3)]
    rel = [axes[0][None, :, None, None] - a[:, 0, None, None, None],
           axes[1][None, None, :, None] - a[:, 1, None, None, None],
           axes[2][None, None, None, :] - a[:, 2, None, None, None]]
    t = sum(rel[k] * step[:, k, None, None, None] for k in range(3)) / length2[:, None, None, None]
    np.clip(t, 0.0, 1.0, out=t)
    d2 = sum((rel[k] - t * step[:, k, None, None, None]) ** 2 for k in range(3)).min(axis=0)
    value = np.minimum(np.float32(1.0), np.float32(peak) * np.exp(d2 / np.float32(-2 * sigma2)))
    value[d2 > reach ** 2] = 0.0
    sl = tuple(slice(lo[k], hi[k]) for k in range(3))
    np.maximum(frac[sl], value, out=frac[sl])
