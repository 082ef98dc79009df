"""Building blocks shared by the networks: pre-activation residual blocks, squeeze-excitation."""

from __future__ import annotations

import torch
from torch import nn


# Fixed input scaling, part of every network so a model file is self-contained: QSM in units of
# 20 ppb (a typical rim contrast), FLAIR relative to normal-appearing white matter, mask as is.
_INPUT_SCALE = (50.0, 1.0, 1.0)
_INPUT_OFFSET = (0.0, -1.0, 0.0)


def scale_inputs(x: torch.Tensor) -> torch.Tensor:
    """Patches (B, 3, ...) with channels qsm_ppm, flair_nawm, lesion_mask → network units."""
    scale = x.new_tensor(_INPUT_SCALE).view(1, 3, *([1] * (x.dim() - 2)))
    offset = x.new_tensor(_INPUT_OFFSET).view(1, 3, *([1] * (x.dim() - 2)))
    return x * scale + offset


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with at most 8 groups that divide ``channels`` (stable with batches of a few lesions)."""
    groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


class SqueezeExcite(nn.Module):
    """Channel re-weighting from globally pooled features (Hu et al. 2018)."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool3d(1), nn.Conv3d(channels, hidden, 1), nn.GELU(), nn.Conv3d(hidden, channels, 1), nn.Sigmoid()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class PreActResBlock(nn.Module):
    """Pre-activation residual block (norm → GELU → conv, twice), optionally strided and with SE.

    A 1×1×1 strided projection carries the skip path when the shape changes.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, squeeze_excite: bool = False) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.norm2 = group_norm(out_channels)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, padding=1, bias=False)
        self.act = nn.GELU()
        self.squeeze_excite = SqueezeExcite(out_channels) if squeeze_excite else nn.Identity()
        self.skip = (
            nn.Identity()
            if stride == 1 and in_channels == out_channels
            else nn.Conv3d(in_channels, out_channels, 1, stride=stride, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.act(self.norm1(x)))
        out = self.conv2(self.act(self.norm2(out)))
        return self.skip(x) + self.squeeze_excite(out)


def stem(in_channels: int, width: int) -> nn.Sequential:
    """Patchify to half resolution (2×2×2 stride-2 conv), then one residual block.

    Starting at half resolution keeps a 32³ patch cheap on CPU; a 1 mm rim still spans
    the 2×2×2 receptive field of the first layer.
    """
    return nn.Sequential(nn.Conv3d(in_channels, width, 2, stride=2, bias=False), PreActResBlock(width, width))


def mlp_head(in_features: int, hidden: int, dropout: float) -> nn.Sequential:
    """Small classifier head: Linear → GELU → Dropout → Linear to one logit."""
    return nn.Sequential(nn.Linear(in_features, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, 1))
