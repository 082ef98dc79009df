"""The asymmetric QSM–FLAIR network (ours): FLAIR conditions QSM; only QSM reaches the classifier.

Layout for a patch of P³ voxels (channels ``qsm_ppm, flair_nawm, lesion_mask``)::

    [qsm, mask] ─ QSM stem (P/2, w) ─▶ cond₀ ─ res+SE (P/4, 2w) ─▶ cond₁ ─ res+SE (P/8, 4w)
    [flair, mask] ─ FLAIR stem (P/2, w) ─┘ ─ res (P/4, 2w) ─────────┘  (only when stage 1 is conditioned)
    embedding = [region pool (P/2, 3w), region pool (P/4, 6w), patch mean (P/8, 4w),
                 rim read-out of the QSM input (P, 7 numbers)] ─ MLP ─┐
    rim read-out ─ linear ────────────────────────────────────────────────── + ─ logit
    (the default ``region_pool_stages=(0, 1)``; stage 0 = P/2, 1 = P/4, 2 = P/8)

``cond`` is the conditioning chosen by ``conditioning`` (spatial FiLM by default) at the stages in
``film_stages`` (0 = mid resolution P/2, 1 = P/4). With ``conditioning="none"`` FLAIR is ignored.
``conditioning="input_stack"`` is the symmetric early-fusion ablation: ``[qsm, flair, mask]`` enter
the QSM stem together and nothing is conditioned; the trunk, pools, read-out and heads stay the
same, so that comparing it with the default measures the asymmetry alone.
The lesion mask goes to both stems: it tells each branch where the lesion edge is. The FLAIR
stem is a light one (patchify + depthwise conv): FLAIR only conditions.

The embedding reads the QSM features where a rim can still be seen. A rim is 0.7–2 mm thick; at
P/8 (8 mm per feature voxel for a 32³ patch at 1 mm) a lesion's edge band and core fall into the
same few feature voxels, so pooling them there compares nearly identical averages. The region
pool (whole patch, edge band, core; from the mask channel) is therefore applied to the
conditioned P/2 features (2 mm) and the P/4 features (4 mm), and only the deepest features are
averaged over the whole patch. Pooling at P/8 alone (``region_pool_stages=(2,)``, the layout of
model files written before this option existed) left the network barely able to fit its own
training lesions on the synthetic benchmark (measurements in docs/training.md). Even the P/2
features have passed the stem's 2×2×2 patchify, which mixes a one-voxel rim with the core and
the white matter; the rim read-out (:class:`~bids_rim.models.blocks.RimReadout`, on by default)
hands the head the medians of the lesion's inner edge layer and core at patch resolution.
Together with patches cut at the QSM's own voxel size it lifted the held-out PR AUC by
0.14–0.18 per fold on the 40-patient diagnosis split (docs/training.md).

The read-out also reaches the logit through a linear path of its own (``readout_logit``), and
the MLP's last layer starts at zero: fine-tuning starts that path from a logistic regression on
the training lesions' read-out, and the convolutional features add what they can. Inside the MLP
the read-out's numbers were 5 of 161 inputs; on balanced folds of the 40-patient split the
network then ranked lesions below a logistic regression on the read-out alone (docs/training.md).
The read-out's last two numbers are the edge and ring contrasts over their own noise (the patch's
noise and the regions' voxel counts): a reader's contrast-to-noise ratio, which the raw
differences cannot give a linear path.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from bids_rim.models.blocks import (
    LesionRegionPool,
    PreActResBlock,
    RimReadout,
    light_stem,
    mlp_head,
    scale_inputs,
    stem,
)
from bids_rim.models.conditioning import CONDITIONINGS, make_conditioning

QSM, FLAIR, MASK = 0, 1, 2


@torch.no_grad()
def rim_readout_of_patches(patches: np.ndarray, device: torch.device = torch.device("cpu"),
                           batch_size: int = 64, noise_normalised: bool = True, outlines: int = 1) -> np.ndarray:
    """The rim read-out (N, 7 · outlines; N, 5 · outlines without ``noise_normalised``) of raw
    patches (N, 3, P, P, P).

    The read-out has no parameters, so no network is needed: fine-tuning starts asym's linear
    read-out path from a logistic regression on these numbers, and the benchmark's
    ``readout_logistic`` reference is that regression alone.
    """
    readout = RimReadout(noise_normalised, outlines)
    numbers = []
    for start in range(0, len(patches), batch_size):
        batch = torch.from_numpy(np.array(patches[start : start + batch_size], dtype=np.float32)).to(device)
        numbers.append(readout(scale_inputs(batch)[:, QSM : QSM + 1], batch[:, MASK : MASK + 1]).float().cpu().numpy())
    return np.concatenate(numbers)


class AsymQsmFlairNet(nn.Module):
    """Asymmetric QSM–FLAIR classifier; see the module docstring for the layout.

    Args:
        width: channels of the stems; the trunk uses 2× and 4× this.
        conditioning: one of ``film_spatial``, ``film_channel``, ``gated_xattn``, ``none``, or
            ``input_stack`` (FLAIR stacked with QSM at the input; ``film_stages`` is then ignored).
        film_stages: stages where FLAIR conditions QSM (subset of ``(0, 1)``).
        dropout: dropout before the last layer of the head (also used for MC dropout).
        region_pool_stages: stages whose features are region-pooled (whole patch, edge band, core):
            0 = P/2, 1 = P/4, 2 = P/8. The P/8 features are always in the embedding, as a patch
            mean when stage 2 is not region-pooled.
        rim_readout: append the parameter-free :class:`RimReadout` of the QSM input (at patch
            resolution: edge and core medians, their difference, the outer ring's difference, the
            fraction of the edge above the core) to the embedding.
        readout_cnr: the read-out also gives the edge−core and ring−core differences over their
            noise (contrast-to-noise ratios; seven numbers instead of five).
        readout_logit: add a linear function of the read-out to the logit and start the MLP head's
            last layer at zero (only with ``rim_readout``).
        readout_outlines: 1 reads the lesion mask as given; 3 also reads it eroded and dilated by
            one voxel (three times the numbers; see :class:`RimReadout`).
        head_width: hidden units of the MLP head (default ``4 * width``). A narrower head gives the
            convolutional features less room to add to the read-out what the few rim+ training
            lesions do not support (an ablation of the benchmark).
    """

    def __init__(
        self,
        width: int = 12,
        conditioning: str = "film_spatial",
        film_stages: tuple[int, ...] = (0,),
        dropout: float = 0.2,
        region_pool_stages: tuple[int, ...] = (0, 1),
        rim_readout: bool = True,
        readout_logit: bool = True,
        readout_cnr: bool = True,
        head_width: int | None = None,
        readout_outlines: int = 1,
    ) -> None:
        super().__init__()
        if conditioning not in CONDITIONINGS:
            raise ValueError(f"unknown conditioning {conditioning!r}; choose one of {CONDITIONINGS}")
        self.stacks_flair = conditioning == "input_stack"
        stages = tuple(sorted({int(s) for s in film_stages})) if conditioning not in ("none", "input_stack") else ()
        if any(s not in (0, 1) for s in stages):
            raise ValueError(f"film_stages must be a subset of (0, 1), got {film_stages}")
        pooled = tuple(sorted({int(s) for s in region_pool_stages}))
        if not pooled or any(s not in (0, 1, 2) for s in pooled):
            raise ValueError(f"region_pool_stages must be a non-empty subset of (0, 1, 2), got {region_pool_stages}")
        self.region_pool_stages = pooled
        self.conditioning_kind = conditioning
        self.film_stages = stages
        self.mid_channels = width
        # Three averages (whole patch, edge band, core) per region-pooled stage of 2^s · w channels,
        # plus the P/8 patch mean when stage 2 is not region-pooled, plus the read-out's numbers.
        self.rim_readout = RimReadout(readout_cnr, readout_outlines) if rim_readout else None
        readout_size = self.rim_readout.n_features if self.rim_readout is not None else 0
        self.embedding_dim = sum(3 * width * 2**s for s in pooled) + (0 if 2 in pooled else 4 * width) + readout_size
        self.qsm_stem = stem(3 if self.stacks_flair else 2, width)
        self.qsm_block1 = PreActResBlock(width, 2 * width, stride=2, squeeze_excite=True)
        self.qsm_block2 = PreActResBlock(2 * width, 4 * width, stride=2, squeeze_excite=True)
        self.flair_stem = light_stem(2, width)
        self.flair_block1 = PreActResBlock(width, 2 * width, stride=2) if 1 in stages else None
        self.conditioners = nn.ModuleDict(
            {str(s): make_conditioning(conditioning, width * 2**s) for s in stages}
        )
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.region_pool = LesionRegionPool()
        self.head = mlp_head(self.embedding_dim, head_width or 4 * width, dropout)
        self.readout_logit = nn.Linear(readout_size, 1) if rim_readout and readout_logit else None
        if self.readout_logit is not None:
            for layer in (self.readout_logit, self.head[-1]):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
        # Projects the pooled FLAIR stem features to the embedding size, for cross-modal pretraining.
        self.flair_projection = nn.Linear(2 * width if self.flair_block1 is not None else width, self.embedding_dim)

    def _qsm_input(self, scaled: torch.Tensor, with_flair: bool) -> torch.Tensor:
        """The QSM stem's input: ``[qsm, mask]``, or ``[qsm, flair, mask]`` when FLAIR is stacked.

        Without ``with_flair`` a stacked FLAIR is set to 0, normal white matter in network units:
        the QSM-only embedding that cross-modal pretraining predicts from FLAIR.
        """
        if not self.stacks_flair:
            return torch.cat([scaled[:, QSM : QSM + 1], scaled[:, MASK : MASK + 1]], dim=1)
        flair = scaled[:, FLAIR : FLAIR + 1]
        return torch.cat([scaled[:, QSM : QSM + 1], flair if with_flair else torch.zeros_like(flair),
                          scaled[:, MASK : MASK + 1]], dim=1)

    @staticmethod
    def _flair_input(scaled: torch.Tensor) -> torch.Tensor:
        return scaled[:, FLAIR : MASK + 1]

    def _flair_features(self, scaled: torch.Tensor) -> list[torch.Tensor]:
        """FLAIR features at each conditioned stage, from inputs already in network units."""
        features = [self.flair_stem(self._flair_input(scaled))]
        if self.flair_block1 is not None:
            features.append(self.flair_block1(features[0]))
        return features

    def _mid(self, scaled: torch.Tensor, flair: list[torch.Tensor], condition: bool = True) -> torch.Tensor:
        """QSM stem features at P/2, conditioned by ``flair[0]`` where stage 0 is conditioned (or
        with FLAIR in the stem's input when it is stacked and ``condition``)."""
        mid = self.qsm_stem(self._qsm_input(scaled, with_flair=condition))
        if "0" in self.conditioners and flair:
            mid = self.conditioners["0"](mid, flair[0])
        return mid

    def mid_features(self, x: torch.Tensor) -> torch.Tensor:
        """The conditioned QSM features at P/2 alone (for masked reconstruction in pretraining).

        Stops where ``features`` would go on to the trunk, the pools and the read-out: the
        reconstruction needs none of them, and computing them cost a tenth of a pretraining step.
        """
        scaled = scale_inputs(x)
        flair = [self.flair_stem(self._flair_input(scaled))] if "0" in self.conditioners else []
        return self._mid(scaled, flair)

    def features(self, x: torch.Tensor, condition: bool = True) -> dict[str, torch.Tensor]:
        """Intermediate features: ``mid`` (conditioned QSM at P/2) and ``embedding`` (pooled)."""
        scaled = scale_inputs(x)
        flair = self._flair_features(scaled) if condition and self.film_stages else []
        mid = self._mid(scaled, flair, condition)
        quarter = self.qsm_block1(mid)
        if "1" in self.conditioners and flair:
            quarter = self.conditioners["1"](quarter, flair[1])
        deep = self.qsm_block2(quarter)
        mask = x[:, MASK : MASK + 1]
        stages = (mid, quarter, deep)
        parts = [self.region_pool(stages[s], mask) for s in self.region_pool_stages]
        if 2 not in self.region_pool_stages:
            parts.append(deep.mean((2, 3, 4)))
        if self.rim_readout is not None:
            parts.append(self.rim_readout(scaled[:, QSM : QSM + 1], mask))
        return {"mid": mid, "embedding": torch.cat(parts, dim=1)}

    def logit_from_embedding(self, embedding: torch.Tensor,
                             head: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """Logits (B,) from embeddings: the MLP head (``head`` in its place, e.g. with dropout
        sampled) plus the linear read-out path, which has no dropout."""
        return self._plus_readout_path((head or self.head)(embedding).reshape(-1), embedding)

    def _plus_readout_path(self, head_logit: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        if self.readout_logit is None:
            return head_logit
        # The read-out is the embedding's last numbers.
        return head_logit + self.readout_logit(embedding[:, -self.readout_logit.in_features :]).squeeze(1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``logit`` (B,), ``embedding`` (B, embedding_dim) and ``head_logit`` (B,), the MLP head's
        part of the logit (all of it without the linear read-out path)."""
        embedding = self.features(x)["embedding"]
        head_logit = self.head(embedding).reshape(-1)
        return {"logit": self._plus_readout_path(head_logit, embedding), "embedding": embedding,
                "head_logit": head_logit}

    def encode_qsm(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled QSM embedding without any FLAIR input (B, embedding_dim)."""
        return self.features(x, condition=False)["embedding"]

    def encode_flair(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled FLAIR embedding projected to the QSM embedding size (B, embedding_dim)."""
        last = self._flair_features(scale_inputs(x))[-1]
        return self.flair_projection(self.pool(last).flatten(1))
