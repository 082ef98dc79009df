"""Forward passes over many patches in batches, with flip test-time augmentation and MC dropout."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

# Flip views used at test time (a rim has no handedness): identity and the left-right flip by
# default; ALL_FLIPS adds the other two axes at twice the cost.
TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (2,))
ALL_FLIPS: tuple[tuple[int, ...], ...] = ((), (2,), (3,), (4,))


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    patches: np.ndarray,
    device: torch.device,
    batch_size: int = 64,
    flips: tuple[tuple[int, ...], ...] = ((),),
    mc_dropout_samples: int = 0,
    generator: torch.Generator | None = None,
) -> np.ndarray:
    """Logits (V · (1 + S), N) of ``model`` for every flip view V and patch N.

    The first V rows are the deterministic (eval-mode) logits, one per flip view. With
    ``mc_dropout_samples = S`` each view adds S Monte Carlo dropout samples (rows V.., view-major).
    Every network here keeps its dropout in the classifier head (``logit = head(embedding)``; asym
    adds a linear read-out path without dropout, see ``logit_from_embedding``), so a sample
    re-runs only the head on the view's embedding: the same distribution as re-running the whole
    network with dropout on, at a negligible cost. ``generator`` seeds the dropout masks.
    """
    model.eval()
    rows: list[list[np.ndarray]] = [[] for _ in range(len(flips) * (1 + mc_dropout_samples))]
    for start in range(0, len(patches), batch_size):
        batch = torch.as_tensor(np.ascontiguousarray(patches[start : start + batch_size]),
                                dtype=torch.float32).to(device)
        for view, dims in enumerate(flips):
            out = model(torch.flip(batch, dims) if dims else batch)
            rows[view].append(out["logit"].float().cpu().numpy())
            for sample in range(mc_dropout_samples):
                rows[len(flips) + view * mc_dropout_samples + sample].append(
                    _sampled_logit(model, out["embedding"], generator).float().cpu().numpy())
    return np.stack([np.concatenate(r) if r else np.zeros(0, np.float32) for r in rows])


def _sampled_logit(model: nn.Module, embedding: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One MC dropout sample of the logits: every dropout layer of ``model.head`` draws a mask from
    ``generator`` (other layers as in eval)."""

    def dropout_head(x: torch.Tensor) -> torch.Tensor:
        for layer in model.head:
            if isinstance(layer, nn.Dropout) and layer.p > 0:
                keep = torch.rand(x.shape, generator=generator, device="cpu").to(x.device) >= layer.p
                x = x * keep / (1 - layer.p)
            else:
                x = layer(x)
        return x.reshape(-1)

    if hasattr(model, "logit_from_embedding"):
        return model.logit_from_embedding(embedding, head=dropout_head)
    return dropout_head(embedding)
