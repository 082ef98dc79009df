"""Forward passes over many patches in batches, with flip test-time augmentation."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

# Flip views used at test time (a rim has no handedness): identity and the left-right flip by
# default; ALL_FLIPS adds the other two axes at twice the cost.
TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (2,))
ALL_FLIPS: tuple[tuple[int, ...], ...] = ((), (2,), (3,), (4,))


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    patches: np.ndarray,
    device: torch.device,
    batch_size: int = 64,
    flips: tuple[tuple[int, ...], ...] = ((),),
    mc_dropout: bool = False,
) -> np.ndarray:
    """Logits (V, N) of ``model`` for every flip view V and patch N.

    The model is put in eval mode; with ``mc_dropout`` its dropout layers stay stochastic
    (Monte Carlo dropout), so repeated calls sample the predictive distribution.
    """
    model.eval()
    if mc_dropout:
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.train()
    views: list[list[np.ndarray]] = [[] for _ in flips]
    for start in range(0, len(patches), batch_size):
        batch = torch.as_tensor(np.ascontiguousarray(patches[start : start + batch_size]), dtype=torch.float32).to(device)
        for view, dims in enumerate(flips):
            flipped = torch.flip(batch, dims) if dims else batch
            views[view].append(model(flipped)["logit"].float().cpu().numpy())
    return np.stack([np.concatenate(v) if v else np.zeros(0, np.float32) for v in views])
