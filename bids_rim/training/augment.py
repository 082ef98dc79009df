"""Patch augmentations (MONAI): flips, 90° rotations about the z axis, QSM noise, a simulated FLAIR
mis-registration, and simulated diffusely paramagnetic rim− lesions.

Rotations stay in the axial plane: QSM's dipole streaks and blooming have a preferred axis (B0,
about z), so a rotation that tips z into x or y makes artefacts that real data do not have. On the
40-patient benchmark rotations in all three planes gave held-out PR AUC 0.307 and 0.173 on two
folds where in-plane rotations gave 0.428 and 0.150 (one run each; docs/training.md).

Diffusely paramagnetic lesions (iron throughout, no rim) are rim− but bright on QSM; on the
40-patient benchmark they carry about half of asym's false positives, and a training fold holds
only about 55 of them (docs/training.md). :func:`add_diffuse_paramagnetism` turns a rim− patch into
one: a uniform susceptibility offset inside the lesion mask, its edge blurred about as the
reconstruction blurs an edge. The label stays rim−.

One :class:`PatchAugmenter` holds seeded MONAI transforms so that a run is reproducible.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.transforms import Compose, RandAxisFlip, RandGaussianNoise, RandRotate90
from scipy import ndimage

QSM_NOISE_STD_PPM = 0.003
# Diffuse iron in a lesion without a rim: +5 to +45 ppb over the whole lesion (uniform draw), a
# margin on both sides of the synthetic cohort's diffuse lesions (10–40 ppb, bids_rim.synth.params)
# that reaches the brightest rims (15–50 ppb), so that brightness alone cannot say "rim".
DIFFUSE_OFFSET_PPM = (0.005, 0.045)
DIFFUSE_EDGE_BLUR_VOXELS = 0.7  # Gaussian SD: about what dipole inversion and resampling do to an edge


def add_diffuse_paramagnetism(patch: np.ndarray, offset_ppm: float,
                              edge_blur_voxels: float = DIFFUSE_EDGE_BLUR_VOXELS) -> np.ndarray:
    """A copy of ``patch`` (3, P, P, P: QSM ppm, FLAIR, lesion mask) whose lesion is ``offset_ppm``
    more paramagnetic throughout, the offset's edge blurred by ``edge_blur_voxels`` (Gaussian SD)."""
    out = np.array(patch, dtype=np.float32)
    out[0] += np.float32(offset_ppm) * ndimage.gaussian_filter(out[2], edge_blur_voxels)
    return out


class PatchAugmenter:
    """Augments batches (B, 3, P, P, P) of patches, one random draw per patch.

    Args:
        seed: seeds every random draw.
        flair_shift_voxels: largest shift of the FLAIR channel relative to QSM (0 disables it);
            mimics a residual FLAIR→QSM registration error of 1–2 mm.
        qsm_noise_std_ppm: std of added Gaussian noise on the QSM channel (0 disables it).
        diffuse_fraction: probability that a rim− patch (label 0) is made diffusely paramagnetic
            (:func:`add_diffuse_paramagnetism`, offset drawn from ``DIFFUSE_OFFSET_PPM``); needs the
            labels in :meth:`__call__`. 0 disables it.
    """

    def __init__(self, seed: int, flair_shift_voxels: int = 0, qsm_noise_std_ppm: float = QSM_NOISE_STD_PPM,
                 diffuse_fraction: float = 0.0) -> None:
        self.spatial = Compose([RandAxisFlip(prob=0.5), RandRotate90(prob=0.5, spatial_axes=(0, 1))])
        self.spatial.set_random_state(seed)
        self.noise = RandGaussianNoise(prob=0.5, std=qsm_noise_std_ppm) if qsm_noise_std_ppm > 0 else None
        if self.noise is not None:
            self.noise.set_random_state(seed + 1)
        self.flair_shift_voxels = flair_shift_voxels
        self.rng = np.random.default_rng(seed + 2)
        self.diffuse_fraction = diffuse_fraction
        self.diffuse_rng = np.random.default_rng(seed + 3)

    def _shift_flair(self, patch: torch.Tensor) -> torch.Tensor:
        shift = self.rng.integers(-self.flair_shift_voxels, self.flair_shift_voxels + 1, size=3)
        if not shift.any():
            return patch
        flair = patch[1]
        # Replicate-pad then crop: a shift that brings in edge values rather than zeros or wrap-around.
        pad = self.flair_shift_voxels
        padded = torch.nn.functional.pad(flair[None, None], (pad,) * 6, mode="replicate")[0, 0]
        size = flair.shape
        start = [pad - int(s) for s in shift]
        shifted = padded[start[0] : start[0] + size[0], start[1] : start[1] + size[1], start[2] : start[2] + size[2]]
        return torch.stack([patch[0], shifted, patch[2]])

    def _diffuse(self, patch: torch.Tensor, label: int | None) -> torch.Tensor:
        if self.diffuse_fraction <= 0 or label is None or label != 0:
            return patch
        if self.diffuse_rng.uniform() >= self.diffuse_fraction:
            return patch
        offset = self.diffuse_rng.uniform(*DIFFUSE_OFFSET_PPM)
        return torch.from_numpy(add_diffuse_paramagnetism(patch.numpy(), offset)).to(patch.dtype)

    def __call__(self, batch: torch.Tensor, labels: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
        """Augmented copy of ``batch``; ``labels`` (B,) are needed for ``diffuse_fraction``."""
        if self.diffuse_fraction > 0 and labels is None:
            raise ValueError("diffuse_fraction needs the batch's labels")
        out = []
        for index, patch in enumerate(batch):
            patch = self._diffuse(patch, None if labels is None else int(labels[index]))
            patch = torch.as_tensor(self.spatial(patch)).contiguous()
            if self.noise is not None:
                patch = torch.cat([torch.as_tensor(self.noise(patch[:1])), patch[1:]])
            if self.flair_shift_voxels > 0:
                patch = self._shift_flair(patch)
            out.append(patch)
        return torch.stack(out).float()
