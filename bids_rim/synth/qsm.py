"""QSM physics: susceptibility -> field (dipole kernel) -> noisy field -> Tikhonov inversion.

B0 is along the third voxel axis of the QSM grid (the scanner z axis). Streaking, blooming,
loss of contrast near the magic cone and correlated noise all come from these steps.

The inversion is the closed-form Tikhonov solution ``D F / (D^2 + lambda)`` followed by the
global correction of its known underestimation that real closed-form pipelines apply (e.g.
the correction factor of superfast dipole inversion, Schweser et al. 2013): the result is
divided by the mean of ``D^2 / (D^2 + lambda)`` over k-space, so that a broadband structure
keeps its mean contrast while structures near the magic cone are still lost.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import fft

from .threads import worker_threads


def _padded_shape(shape: tuple[int, ...], pad: int) -> tuple[int, ...]:
    return tuple(fft.next_fast_len(n + 2 * pad, real=True) for n in shape)


def dipole_kernel(shape: tuple[int, int, int], spacing_mm: float) -> np.ndarray:
    """Unit dipole response D(k) = 1/3 - kz^2/|k|^2 on the rfft grid (D(0) = 0)."""
    kx = fft.fftfreq(shape[0], spacing_mm).astype(np.float32)
    ky = fft.fftfreq(shape[1], spacing_mm).astype(np.float32)
    kz = fft.rfftfreq(shape[2], spacing_mm).astype(np.float32)
    k2 = kx[:, None, None] ** 2 + ky[None, :, None] ** 2 + kz[None, None, :] ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        kernel = 1.0 / 3.0 - kz[None, None, :] ** 2 / k2
    kernel[0, 0, 0] = 0.0
    return kernel.astype(np.float32)


class DipoleModel:
    """Forward and inverse dipole operators on a zero-padded grid."""

    def __init__(self, shape: tuple[int, int, int], spacing_mm: float, tikhonov_lambda: float,
                 pad: int = 12, workers: int | None = None):
        self.shape = shape
        self.padded = _padded_shape(shape, pad)
        self.kernel = dipole_kernel(self.padded, spacing_mm)
        power = self.kernel ** 2
        power += np.float32(tikhonov_lambda)
        kept = self.kernel ** 2
        kept /= power  # 0 where the kernel is 0, so the sum runs over the rest
        self.contrast_kept = float(kept.sum(dtype=np.float64) / np.count_nonzero(self.kernel))
        del kept
        self.inverse = self.kernel / power
        self.inverse /= np.float32(self.contrast_kept)
        self.workers = worker_threads() if workers is None else workers

    def _apply(self, volume: np.ndarray, operator: np.ndarray) -> np.ndarray:
        spectrum = fft.rfftn(np.asarray(volume, dtype=np.float32), s=self.padded,
                             workers=self.workers)
        spectrum *= operator
        out = fft.irfftn(spectrum, s=self.padded, workers=self.workers, overwrite_x=True)
        # a view of the grid's corner, not a copy: a fresh full-size array costs more than the
        # padding it keeps alive
        return out[tuple(slice(0, n) for n in self.shape)]

    def field_ppm(self, chi_ppm: np.ndarray) -> np.ndarray:
        """Local field shift (ppm of B0) created by a susceptibility map."""
        return self._apply(chi_ppm, self.kernel)

    def invert(self, field_ppm: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Tikhonov-regularised, underestimation-corrected inversion of the masked field."""
        out = self._apply(field_ppm * mask, self.inverse)
        out *= mask
        return out

    def noise_gain(self) -> float:
        """RMS gain of the inversion for white field noise (noise_chi = gain * noise_field)."""
        weights = np.full(self.inverse.shape[2], 2.0)
        weights[0] = 1.0
        if self.padded[2] % 2 == 0:
            weights[-1] = 1.0
        power = np.sum((self.inverse ** 2).sum(axis=(0, 1)) * weights)
        return float(np.sqrt(power / np.prod(self.padded)))


@dataclass(frozen=True)
class NoiseModel:
    """What is needed to redraw a reconstruction's noise: per-voxel field-noise SD, mask, inversion."""

    field_sigma_ppm: np.ndarray     # SD of the field noise per voxel (rises where magnitude is dark)
    mask: np.ndarray                # float mask applied before and after the inversion
    spacing_mm: float
    tikhonov_lambda: float
    contrast_kept: float            # the global underestimation correction of the full inversion


@lru_cache(maxsize=64)
def _box_inverse(shape: tuple[int, int, int], spacing_mm: float, tikhonov_lambda: float,
                 contrast_kept: float) -> np.ndarray:
    kernel = dipole_kernel(shape, spacing_mm)
    return (kernel / (kernel ** 2 + tikhonov_lambda) / contrast_kept).astype(np.float32)


def local_noise_realisations(model: NoiseModel, box: tuple[slice, ...], n: int,
                             rng: np.random.Generator, margin_mm: float = 8.0) -> np.ndarray:
    """``n`` independent draws of the reconstruction noise inside ``box``, shape (n, *box).

    The noise is drawn and inverted on the box grown by ``margin_mm`` (the inverse kernel
    decays like 1/r^3, so field noise farther away adds little), with the same per-voxel
    field-noise SD, mask and inversion as the full image: the local noise an ideal observer
    knows, including its correlation and its rise near veins. The FFT is not zero-padded: its
    periodic extension stands in for the noise beyond the margin, which the full image has
    too. Against 96 full-image inversions (64^3, 1.2 mm) the SD of the mean of a 10^3 box was
    +0 % unpadded vs -11 % padded by the margin (which drops all noise beyond it), shell-minus-
    core +6 % vs -2 % (+-4 % sampling error), at a quarter of the cost.
    """
    margin = int(np.ceil(margin_mm / model.spacing_mm))
    full = model.mask.shape
    grown = tuple(slice(max(0, b.start - margin), min(m, b.stop + margin))
                  for b, m in zip(box, full))
    sigma = model.field_sigma_ppm[grown]
    mask = model.mask[grown]
    fft_shape = _padded_shape(sigma.shape, 0)
    inverse = _box_inverse(fft_shape, model.spacing_mm, model.tikhonov_lambda,
                           model.contrast_kept)
    field = rng.standard_normal((n, *sigma.shape), dtype=np.float32) * (sigma * mask)
    spectrum = fft.rfftn(field, s=fft_shape, axes=(1, 2, 3), workers=worker_threads())
    spectrum *= inverse
    chi = fft.irfftn(spectrum, s=fft_shape, axes=(1, 2, 3), workers=worker_threads())
    inner = tuple(slice(b.start - g.start, b.stop - g.start) for b, g in zip(box, grown))
    return (chi[(slice(None), *(slice(0, k) for k in sigma.shape))] * mask)[
        (slice(None), *inner)].astype(np.float32)
