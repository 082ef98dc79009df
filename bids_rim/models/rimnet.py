"""RimNet-style baseline (after Barquero et al. 2020): two symmetric branches, fused early and late.

Each modality (with the lesion mask) has its own branch. After the first block the two are
concatenated into a joint path (early fusion); each branch also continues on its own, and the
joint and per-branch pooled features meet at the fully connected layers (late fusion).
"""

from __future__ import annotations

import torch
from torch import nn

from bids_rim.models.blocks import PreActResBlock, mlp_head, scale_inputs, stem


class RimNetStyle(nn.Module):
    """Symmetric two-branch network; ``width`` sets the channels of the first blocks."""

    def __init__(self, width: int = 8, dropout: float = 0.2) -> None:
        super().__init__()
        self.qsm_stem, self.flair_stem = stem(2, width), stem(2, width)
        self.qsm_late = PreActResBlock(width, 2 * width, stride=2)
        self.flair_late = PreActResBlock(width, 2 * width, stride=2)
        self.joint = nn.Sequential(
            PreActResBlock(2 * width, 2 * width, stride=2), PreActResBlock(2 * width, 4 * width, stride=2)
        )
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.embedding_dim = 8 * width
        self.head = mlp_head(self.embedding_dim, 4 * width, dropout)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        scaled = scale_inputs(x)
        z_qsm = self.qsm_stem(scaled[:, [0, 2]])
        z_flair = self.flair_stem(scaled[:, [1, 2]])
        joint = self.pool(self.joint(torch.cat([z_qsm, z_flair], dim=1))).flatten(1)
        late_qsm = self.pool(self.qsm_late(z_qsm)).flatten(1)
        late_flair = self.pool(self.flair_late(z_flair)).flatten(1)
        embedding = torch.cat([joint, late_qsm, late_flair], dim=1)
        return {"logit": self.head(embedding).squeeze(1), "embedding": embedding}
