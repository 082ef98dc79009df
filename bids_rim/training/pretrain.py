"""Self-supervised multimodal pretraining on every lesion patch, labelled or not.

The paper predicts the pooled QSM embedding from the pooled FLAIR embedding with an MSE whose
both sides train — a constant embedding minimises it. Here the objectives (each switchable, see
:class:`~bids_rim.training.config.TrainConfig`) resist that collapse:

- ``predictor``: a predictor MLP maps the FLAIR embedding onto a stop-gradient QSM embedding
  (negative cosine), as SimSiam/BYOL;
- ``variance``: VICReg variance and covariance terms keep every embedding dimension spread;
- ``infonce``: the QSM and FLAIR embeddings of the same lesion must pick each other out of the batch;
- ``masked``: cubes of the QSM channel are hidden and reconstructed from the FLAIR-conditioned
  mid-resolution features;
- ``mse``: the paper's plain MSE, for the ablation only.

Each epoch logs ``qsm_embedding_std`` (mean per-dimension std of unit-norm QSM embeddings):
near 0 means collapse, about ``1/sqrt(D)`` means spread.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from bids_rim.models.blocks import scale_inputs
from bids_rim.training import losses
from bids_rim.training.augment import PatchAugmenter
from bids_rim.training.batching import shuffled_batches
from bids_rim.training.config import TrainConfig
from bids_rim.training.distributed import DistContext, local_slice, wrap

LOGGER = logging.getLogger("bids_rim.pretrain")
MASK_BLOCK_VOXELS = 4


def supports_pretraining(model: nn.Module) -> bool:
    """True for networks with separate QSM and FLAIR encoders (``encode_qsm``/``encode_flair``)."""
    return all(hasattr(model, name) for name in ("encode_qsm", "encode_flair", "mid_features"))


def random_block_mask(shape: tuple[int, ...], ratio: float, generator: torch.Generator) -> torch.Tensor:
    """A (B, 1, P, P, P) 0/1 mask of ``MASK_BLOCK_VOXELS``-sized cubes, each hidden with probability ``ratio``."""
    batch, size = shape[0], shape[-1]
    coarse = max(size // MASK_BLOCK_VOXELS, 1)
    blocks = (torch.rand((batch, 1, coarse, coarse, coarse), generator=generator) < ratio).float()
    return F.interpolate(blocks, size=(size,) * 3, mode="nearest")


class PretrainObjective(nn.Module):
    """The model plus its pretraining heads; ``forward`` returns the loss terms of one batch."""

    def __init__(self, model: nn.Module, objectives: tuple[str, ...], temperature: float) -> None:
        super().__init__()
        self.model = model
        self.objectives = objectives
        self.temperature = temperature
        dim = model.embedding_dim
        self.predictor = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.decoder = nn.ConvTranspose3d(model.mid_channels, 1, 2, stride=2)
        # Contrastive projection heads (as SimCLR/CLIP): pooled features share a large common
        # component, so the cosine similarities of raw embeddings start nearly equal.
        self.qsm_projector = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.flair_projector = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self, patches: torch.Tensor, block_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        terms: dict[str, torch.Tensor] = {}
        qsm = self.model.encode_qsm(patches)
        flair = self.model.encode_flair(patches)
        if "predictor" in self.objectives:
            terms["predictor"] = losses.predictor_stopgrad_loss(self.predictor(flair), qsm)
        if "mse" in self.objectives:
            terms["mse"] = F.mse_loss(self.predictor(flair), qsm)
        if "variance" in self.objectives:
            terms["variance"] = losses.variance_covariance_loss(qsm) + losses.variance_covariance_loss(flair)
        if "infonce" in self.objectives:
            terms["infonce"] = losses.info_nce_loss(self.qsm_projector(qsm), self.flair_projector(flair),
                                                    self.temperature)
        if "masked" in self.objectives:
            hidden = patches.clone()
            hidden[:, 0:1] = hidden[:, 0:1] * (1 - block_mask)
            reconstruction = self.decoder(self.model.mid_features(hidden))
            target = scale_inputs(patches)[:, 0:1]
            terms["masked"] = losses.masked_reconstruction_loss(reconstruction, target, block_mask)
        terms["qsm_embedding"] = qsm.detach()
        return terms


def pretrain(
    model: nn.Module,
    patches: np.ndarray,
    config: TrainConfig,
    device: torch.device,
    *,
    seed: int,
    context: DistContext = DistContext(),
    progress: bool = False,
    description: str = "pretrain",
) -> list[dict[str, float]]:
    """Pretrain ``model`` in place on ``patches`` (N, 3, P, P, P); returns one log row per epoch.

    Only the patches passed in are seen: the caller decides which patients they come from.
    """
    if not supports_pretraining(model):
        raise ValueError(f"{type(model).__name__} has no separate QSM/FLAIR encoders to pretrain")
    objectives = tuple(o for o in config.pretrain_objectives)
    if not objectives or config.pretrain_epochs <= 0 or len(patches) < 2:
        return []
    objective = PretrainObjective(model, objectives, config.infonce_temperature).to(device)
    trainable = wrap(objective, context, device)
    optimiser = torch.optim.AdamW(objective.parameters(), lr=config.pretrain_lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    augment = PatchAugmenter(seed + 1000 * context.rank, flair_shift_voxels=0,
                             qsm_noise_std_ppm=config.qsm_noise_std_ppm)
    history: list[dict[str, float]] = []
    epochs = tqdm(range(config.pretrain_epochs), desc=description, disable=not (progress and context.is_main),
                  leave=False)
    for epoch in epochs:
        objective.train()
        sums: dict[str, float] = {}
        embeddings = []
        batches = shuffled_batches(len(patches), config.batch_size, generator)
        for batch_indices in batches:
            block_mask = random_block_mask((len(batch_indices), 1, *patches.shape[2:]), config.mask_ratio, generator)
            mine = local_slice(batch_indices, context)
            batch = augment(torch.from_numpy(patches[mine.numpy()])).to(device)
            terms = trainable(batch, block_mask[local_slice(torch.arange(len(batch_indices)), context)].to(device))
            embeddings.append(terms.pop("qsm_embedding"))
            loss = sum(terms.values())
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            for name, value in {"loss": loss, **terms}.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach())
        row = {"epoch": float(epoch + 1), **{k: v / max(len(batches), 1) for k, v in sums.items()}}
        row["qsm_embedding_std"] = losses.embedding_std(torch.cat(embeddings))
        history.append(row)
        epochs.set_postfix(loss=f"{row['loss']:.3f}", emb_std=f"{row['qsm_embedding_std']:.3f}")
        LOGGER.info("%s epoch %d: %s", description, epoch + 1,
                    ", ".join(f"{k}={v:.4f}" for k, v in row.items() if k != "epoch"))
    return history
