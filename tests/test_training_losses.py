"""Losses: known values and the directions that make them useful."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bids_rim.training import losses


def test_focal_loss_reduces_to_half_bce_and_down_weights_easy_examples():
    logits = torch.tensor([2.0, -1.0, 0.3, -3.0])
    targets = torch.tensor([1, 0, 0, 1])
    bce = F.binary_cross_entropy_with_logits(logits, targets.float())
    torch.testing.assert_close(losses.focal_loss(logits, targets, gamma=0.0, alpha=0.5), 0.5 * bce)
    # Per example, gamma = 2 scales the cross-entropy by (1 - p_t)^2: an easy example (p_t = sigma(3))
    # keeps 0.2 % of it, a hard one (p_t = sigma(-3)) 91 %; a uniform down-scaling would keep equal shares.
    easy, hard = torch.tensor([3.0]), torch.tensor([-3.0])
    positive = torch.tensor([1])
    share = {name: float(losses.focal_loss(z, positive, gamma=2.0) / losses.focal_loss(z, positive, gamma=0.0))
             for name, z in (("easy", easy), ("hard", hard))}
    assert share["easy"] == pytest.approx((1 - torch.sigmoid(easy).item()) ** 2, rel=1e-5)
    assert share["hard"] == pytest.approx((1 - torch.sigmoid(hard).item()) ** 2, rel=1e-5)
    assert share["easy"] < 0.01 * share["hard"]


def test_weighted_bce_weights_positives_only():
    logits, targets = torch.tensor([-1.0, -1.0]), torch.tensor([1, 0])
    # mean of 5 * softplus(1) (the rim+ lesion) and softplus(-1) (the rim- one), by hand
    expected = (5 * F.softplus(torch.tensor(1.0)) + F.softplus(torch.tensor(-1.0))) / 2
    torch.testing.assert_close(losses.weighted_bce(logits, targets, 5.0), expected)
    negatives = torch.tensor([0, 0])
    torch.testing.assert_close(losses.weighted_bce(logits, negatives, 5.0), losses.weighted_bce(logits, negatives, 1.0))


def test_supcon_prefers_class_clusters():
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    clustered = (torch.tensor([[1.0, 0.0]] * 3 + [[0.0, 1.0]] * 3)
                 + 0.01 * torch.randn(6, 2, generator=torch.Generator().manual_seed(0)))
    mixed = clustered[[0, 3, 1, 4, 2, 5]]
    assert losses.supcon_loss(clustered, labels, 0.1) < losses.supcon_loss(mixed, labels, 0.1)
    lonely = losses.supcon_loss(torch.randn(2, 4, requires_grad=True), torch.tensor([0, 1]))
    assert float(lonely.detach()) == 0.0


def test_info_nce_prefers_aligned_pairs():
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(8, 16, generator=generator)
    aligned = losses.info_nce_loss(q, q + 0.01 * torch.randn(8, 16, generator=generator))
    shuffled = losses.info_nce_loss(q, q[torch.randperm(8, generator=generator)])
    assert aligned < shuffled


def test_variance_term_penalises_collapse_and_embedding_std_detects_it():
    generator = torch.Generator().manual_seed(0)
    spread = torch.randn(64, 8, generator=generator)
    collapsed = torch.ones(64, 8) + 1e-3 * torch.randn(64, 8, generator=generator)
    assert losses.variance_covariance_loss(collapsed) > losses.variance_covariance_loss(spread) + 0.5
    assert losses.embedding_std(collapsed) < 0.01 < 0.2 < losses.embedding_std(spread)


def test_predictor_loss_has_no_gradient_through_target():
    target = torch.randn(4, 3, requires_grad=True)
    predicted = torch.randn(4, 3, requires_grad=True)
    losses.predictor_stopgrad_loss(predicted, target).backward()
    assert target.grad is None and predicted.grad is not None


def test_masked_reconstruction_counts_only_masked_voxels():
    target = torch.zeros(1, 1, 2, 2, 2)
    reconstruction = torch.ones(1, 1, 2, 2, 2)
    mask = torch.zeros(1, 1, 2, 2, 2)
    mask[..., 0, 0, 0] = 1
    reconstruction[..., 1, 1, 1] = 100.0  # unmasked: ignored
    assert float(losses.masked_reconstruction_loss(reconstruction, target, mask)) == 1.0
