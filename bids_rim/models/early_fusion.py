"""Early-fusion baseline: the three channels stacked into a symmetric 3D ResNet-18 (MONAI)."""

from __future__ import annotations

import torch
from monai.networks.nets import resnet18
from torch import nn

from bids_rim.models.blocks import scale_inputs


class EarlyFusionResNet18(nn.Module):
    """MONAI's 3D ResNet-18 on ``[qsm, flair, mask]``; ``widen_factor`` scales every stage.

    ``widen_factor=1`` is the standard network (64…512 channels, about 33 M parameters);
    smaller factors give the same topology at a size that trains on CPU.
    """

    def __init__(self, widen_factor: float = 0.25, dropout: float = 0.2) -> None:
        super().__init__()
        self.backbone = resnet18(
            spatial_dims=3, n_input_channels=3, num_classes=1, feed_forward=False, widen_factor=widen_factor
        )
        self.embedding_dim = int(512 * widen_factor)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.embedding_dim, 1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        embedding = self.backbone(scale_inputs(x))
        return {"logit": self.head(embedding).squeeze(1), "embedding": embedding}
