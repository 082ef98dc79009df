"""How FLAIR features condition QSM features in the asymmetric network.

Each module takes ``(z_qsm, z_flair)`` of the same shape (B, C, D, H, W) and returns conditioned
QSM features of that shape. All start as the identity on ``z_qsm`` (zero-initialised last
layers), so the conditioned network begins as the QSM-only network and FLAIR earns its way in.
"""

from __future__ import annotations

import torch
from torch import nn

# ``input_stack`` is symmetric early fusion, the ablation of the asymmetry: FLAIR is stacked
# with QSM at the input of the QSM path (the network does it; there is no module for it here).
CONDITIONINGS = ("film_spatial", "film_channel", "gated_xattn", "none", "input_stack")


class SpatialFiLM(nn.Module):
    """Per-voxel scale and shift: ``(1 + γ(f)) · z + β(f)``, then a 1×1×1 fusion convolution.

    γ and β come from a ``kernel_size``³ conv of the FLAIR features (1 by default: the FLAIR
    stem already mixes each voxel's 3×3×3 neighbourhood, and a 3³ conv here cost as much as a
    whole stem); both and the fusion residual are zero-initialised.
    """

    def __init__(self, channels: int, kernel_size: int = 1) -> None:
        super().__init__()
        self.to_scale_shift = nn.Conv3d(channels, 2 * channels, kernel_size, padding=kernel_size // 2)
        self.fuse = nn.Conv3d(channels, channels, 1)
        for layer in (self.to_scale_shift, self.fuse):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, z_qsm: torch.Tensor, z_flair: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.to_scale_shift(z_flair).chunk(2, dim=1)
        modulated = (1 + gamma) * z_qsm + beta
        return modulated + self.fuse(modulated)


class ChannelFiLM(nn.Module):
    """Per-channel scale and shift from globally pooled FLAIR features: ``(1 + γ) · z + β``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.to_scale_shift = nn.Linear(channels, 2 * channels)
        nn.init.zeros_(self.to_scale_shift.weight)
        nn.init.zeros_(self.to_scale_shift.bias)

    def forward(self, z_qsm: torch.Tensor, z_flair: torch.Tensor) -> torch.Tensor:
        pooled = z_flair.mean(dim=(2, 3, 4))
        gamma, beta = self.to_scale_shift(pooled)[:, :, None, None, None].chunk(2, dim=1)
        return (1 + gamma) * z_qsm + beta


class GatedCrossAttention(nn.Module):
    """QSM voxels attend to FLAIR voxels; the result is added through a tanh gate starting at 0.

    ``z + tanh(g) · Attn(q=z_qsm, k=v=z_flair)`` with one learned scalar gate ``g = 0`` at start
    (Flamingo-style gating), so the block begins as the identity. Keys and values are FLAIR
    features average-pooled to at most ``context_size``³ tokens: every QSM voxel sees the
    whole FLAIR context while the cost stays linear in the number of QSM voxels.
    """

    def __init__(self, channels: int, heads: int = 1, context_size: int = 4) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(channels)
        self.norm_kv = nn.LayerNorm(channels)
        self.attention = nn.MultiheadAttention(channels, heads, batch_first=True)
        self.gate = nn.Parameter(torch.zeros(1))
        self.context_size = context_size

    def forward(self, z_qsm: torch.Tensor, z_flair: torch.Tensor) -> torch.Tensor:
        batch, channels, *spatial = z_qsm.shape
        queries = self.norm_q(z_qsm.flatten(2).transpose(1, 2))
        context = nn.functional.adaptive_avg_pool3d(z_flair, [min(self.context_size, n) for n in spatial])
        keys = self.norm_kv(context.flatten(2).transpose(1, 2))
        attended, _ = self.attention(queries, keys, keys, need_weights=False)
        attended = attended.transpose(1, 2).reshape(batch, channels, *spatial)
        return z_qsm + torch.tanh(self.gate) * attended


def make_conditioning(kind: str, channels: int) -> nn.Module:
    """The conditioning module named ``kind`` (one of ``CONDITIONINGS``) for ``channels`` features."""
    if kind == "film_spatial":
        return SpatialFiLM(channels)
    if kind == "film_channel":
        return ChannelFiLM(channels)
    if kind == "gated_xattn":
        return GatedCrossAttention(channels)
    raise ValueError(f"unknown conditioning {kind!r}; choose one of {CONDITIONINGS}")
