"""QSMRim-Net-style baseline (after Zhang et al. 2022): a QSM+FLAIR residual CNN fused with radiomics.

Two residual branches (QSM with mask, FLAIR with mask) are concatenated after their stems and
go through a shared residual trunk; the pooled image features are concatenated with the
lesion's hand-crafted rim features (:mod:`bids_rim.models.rim_features`, each standardised
across lesions by a BatchNorm) before the MLP head. The original's learned minority
oversampling is replaced by the harness's class-balanced sampler (``requires_oversampling``
tells the harness to keep it on).
"""

from __future__ import annotations

import torch
from torch import nn

from bids_rim.models.blocks import PreActResBlock, mlp_head, scale_inputs, stem
from bids_rim.models.rim_features import FEATURE_NAMES, rim_features


class QsmRimNetStyle(nn.Module):
    """Residual QSM+FLAIR CNN with a radiomic feature branch."""

    requires_oversampling = True

    def __init__(self, width: int = 8, dropout: float = 0.2) -> None:
        super().__init__()
        self.qsm_stem, self.flair_stem = stem(2, width), stem(2, width)
        self.trunk = nn.Sequential(
            PreActResBlock(2 * width, 2 * width, stride=2), PreActResBlock(2 * width, 4 * width, stride=2)
        )
        self.pool = nn.AdaptiveAvgPool3d(1)
        n_features = len(FEATURE_NAMES)
        # eps far below the variances of the ppm features (3e-4 to 1e-3 ppm² on the 40-patient
        # benchmark cohort, less on faint data), which the default 1e-5 would damp
        self.radiomics_norm = nn.BatchNorm1d(n_features, eps=1e-9)
        self.radiomics_projection = nn.Sequential(nn.Linear(n_features, 2 * width), nn.GELU())
        self.embedding_dim = 6 * width
        self.head = mlp_head(self.embedding_dim, 4 * width, dropout)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        scaled = scale_inputs(x)
        image = torch.cat([self.qsm_stem(scaled[:, [0, 2]]), self.flair_stem(scaled[:, [1, 2]])], dim=1)
        image_embedding = self.pool(self.trunk(image)).flatten(1)
        # Each feature is standardised over the lesions (batch statistics in training, running
        # ones at inference): the volume (hundreds of voxels) and the QSM means (hundredths of a
        # ppm) differ by four orders of magnitude. A LayerNorm across one lesion's features, used
        # until 2026-12-02, left the ppm features varying by ~0.02 around a value set by the volume,
        # so the branch read little but the volume (docs/training.md).
        radiomic = self.radiomics_projection(self.radiomics_norm(rim_features(x)))
        embedding = torch.cat([image_embedding, radiomic], dim=1)
        return {"logit": self.head(embedding).squeeze(1), "embedding": embedding}
