"""How many threads the generator's heavy numeric calls use, and a threaded point sampler.

Only calls whose result does not depend on the split are threaded (pocketfft's FFTs, pointwise
interpolation), so the bytes written are the same whatever the thread count.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy import ndimage

from bids_rim.config import usable_cpus


def worker_threads() -> int:
    """``OMP_NUM_THREADS`` when set (tests set 1; cohort workers get their share of the CPUs),
    else the usable CPUs."""
    try:
        requested = int(os.environ.get("OMP_NUM_THREADS", "0"))
    except ValueError:
        requested = 0
    return max(1, requested or usable_cpus())


def sample_linear(volume: np.ndarray, points: np.ndarray, threads: int | None = None
                  ) -> np.ndarray:
    """Linear interpolation of ``volume`` at ``points`` (3, ...), 0 outside, float32.

    The points are split along their first grid axis between ``threads`` threads (default
    :func:`worker_threads`); ndimage releases the GIL, and each point's value is computed
    alone, so the split changes nothing but the time.
    """
    out = np.empty(points.shape[1:], dtype=np.float32)
    threads = max(1, min(worker_threads() if threads is None else threads, out.shape[0]))
    edges = np.linspace(0, out.shape[0], threads + 1).astype(int)

    def run(part: int) -> None:
        a, b = edges[part], edges[part + 1]
        ndimage.map_coordinates(volume, points[:, a:b], order=1, mode="constant", cval=0.0,
                                prefilter=False, output=out[a:b])

    if threads == 1:
        run(0)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(run, range(threads)))
    return out
