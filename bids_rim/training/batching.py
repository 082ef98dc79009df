"""Seeded batch orders: shuffled epochs for pretraining and class-balanced draws for fine-tuning."""

from __future__ import annotations

import numpy as np
import torch


def shuffled_batches(n_items: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """One epoch of index batches in a seeded random order; a last batch of one item is dropped
    (contrastive and normalisation statistics need at least two)."""
    order = torch.randperm(n_items, generator=generator)
    batches = list(order.split(batch_size))
    return [b for b in batches if len(b) > 1] or batches


def balanced_batches(labels: np.ndarray, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """One epoch (as many draws as items) sampled with replacement, each class drawn equally often.

    Inverse-frequency weights make rim+ and rim- equally likely per draw, the oversampling of
    the rare class that RimNet, QSMRim-Net and the paper all use in some form.
    """
    labels = np.asarray(labels).astype(int)
    counts = np.bincount(labels, minlength=2).astype(float)
    weights = torch.as_tensor(1.0 / np.maximum(counts[labels], 1.0), dtype=torch.double)
    draws = torch.multinomial(weights, len(labels), replacement=True, generator=generator)
    return [b for b in draws.split(batch_size) if len(b) > 1]
