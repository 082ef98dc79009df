"""Patch augmentations (MONAI): flips, 90° rotations about the z axis, QSM noise, and a simulated FLAIR mis-registration.

Rotations stay in the axial plane: QSM's dipole streaks and blooming have a preferred axis (B0,
about z), so a rotation that tips z into x or y makes artefacts that real data do not have. On the
40-patient benchmark rotations in all three planes gave held-out PR AUC 0.307 and 0.173 on two
folds where in-plane rotations gave 0.428 and 0.150 (one run each; docs/training.md).

One :class:`PatchAugmenter` holds seeded MONAI transforms so that a run is reproducible.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.transforms import Compose, RandAxisFlip, RandGaussianNoise, RandRotate90

QSM_NOISE_STD_PPM = 0.003


class PatchAugmenter:
    """Augments batches (B, 3, P, P, P) of patches, one random draw per patch.

    Args:
        seed: seeds every random draw.
        flair_shift_voxels: largest shift of the FLAIR channel relative to QSM (0 disables it);
            mimics a residual FLAIR→QSM registration error of 1–2 mm.
        qsm_noise_std_ppm: std of added Gaussian noise on the QSM channel (0 disables it).
    """

    def __init__(self, seed: int, flair_shift_voxels: int = 0, qsm_noise_std_ppm: float = QSM_NOISE_STD_PPM) -> None:
        self.spatial = Compose([RandAxisFlip(prob=0.5), RandRotate90(prob=0.5, spatial_axes=(0, 1))])
        self.spatial.set_random_state(seed)
        self.noise = RandGaussianNoise(prob=0.5, std=qsm_noise_std_ppm) if qsm_noise_std_ppm > 0 else None
        if self.noise is not None:
            self.noise.set_random_state(seed + 1)
        self.flair_shift_voxels = flair_shift_voxels
        self.rng = np.random.default_rng(seed + 2)

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

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        out = []
        for patch in batch:
            patch = torch.as_tensor(self.spatial(patch)).contiguous()
            if self.noise is not None:
                patch = torch.cat([torch.as_tensor(self.noise(patch[:1])), patch[1:]])
            if self.flair_shift_voxels > 0:
                patch = self._shift_flair(patch)
            out.append(patch)
        return torch.stack(out).float()
