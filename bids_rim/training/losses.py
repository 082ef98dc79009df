"""Losses for fine-tuning and self-supervised pretraining; each docstring states its formula."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, gamma: float = 2.0, alpha: float = 0.5) -> torch.Tensor:
    """Binary focal loss (Lin et al. 2017), mean over the batch.

    ``FL = -α_t (1 - p_t)^γ log p_t`` with ``p_t = p`` for rim+ (``α_t = α``) and ``1 - p`` for
    rim- (``α_t = 1 - α``); γ = 0 and α = 0.5 give half the binary cross-entropy.
    """
    targets = targets.float()
    log_p_t = -F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = log_p_t.exp()
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return (-alpha_t * (1 - p_t) ** gamma * log_p_t).mean()


def weighted_bce(logits: torch.Tensor, targets: torch.Tensor, positive_weight: float) -> torch.Tensor:
    """Class-weighted binary cross-entropy, mean over the batch.

    ``L = -[w₊ y log σ(z) + (1 - y) log(1 - σ(z))]`` with ``w₊`` usually ``n_rim- / n_rim+``.
    """
    weight = torch.as_tensor(positive_weight, dtype=logits.dtype, device=logits.device)
    return F.binary_cross_entropy_with_logits(logits, targets.float(), pos_weight=weight)


def supcon_loss(embeddings: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, the "L_out" form), mean over anchors.

    With unit-norm embeddings ``z``, for each anchor ``i`` with positives ``P(i)`` (same label,
    not ``i``) and all others ``A(i)``:
    ``L_i = -1/|P(i)| Σ_{p∈P(i)} log( exp(z_i·z_p/τ) / Σ_{a∈A(i)} exp(z_i·z_a/τ) )``.
    Anchors without a positive in the batch are skipped; the loss is 0 when none has one.
    """
    z = F.normalize(embeddings, dim=1)
    n = z.shape[0]
    logits = z @ z.T / temperature
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    n_positives = positives.sum(1)
    has_positive = n_positives > 0
    if not has_positive.any():
        return embeddings.sum() * 0.0
    mean_log_prob = log_prob.masked_fill(~positives, 0.0).sum(1)[has_positive] / n_positives[has_positive]
    return -mean_log_prob.mean()


def info_nce_loss(queries: torch.Tensor, keys: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Symmetric cross-modal InfoNCE (CLIP-style): the same lesion's two views are the positive pair.

    With unit-norm ``q_i`` (QSM) and ``k_j`` (FLAIR), ``s_ij = q_i·k_j / τ``:
    ``L = ½ [ CE(softmax_j s_ij, j=i) + CE(softmax_i s_ij, i=j) ]``.
    """
    q, k = F.normalize(queries, dim=1), F.normalize(keys, dim=1)
    logits = q @ k.T / temperature
    target = torch.arange(len(q), device=q.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def predictor_stopgrad_loss(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-modal prediction with a stop-gradient (SimSiam/BYOL-style), negative cosine similarity.

    ``L = 1 - cos(h(f), sg(q))``: the predictor ``h`` maps the FLAIR embedding ``f`` onto the QSM
    embedding ``q``; the stop-gradient on ``q`` removes the trivial constant solution's gradient path.
    """
    return 1 - F.cosine_similarity(predicted, target.detach(), dim=1).mean()


def variance_covariance_loss(embeddings: torch.Tensor, target_std: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """VICReg's anti-collapse terms (Bardes et al. 2022) for one branch of embeddings (B, D).

    ``v = mean_d max(0, γ - sqrt(Var(z_d) + ε))`` keeps every dimension spread out;
    ``c = Σ_{d≠e} Cov(z)_{de}² / D`` decorrelates dimensions. Returns ``v + c / 25`` (VICReg's
    25 : 1 ratio of variance to covariance weights).
    """
    centred = embeddings - embeddings.mean(0)
    std = torch.sqrt(centred.var(0) + eps)
    variance = F.relu(target_std - std).mean()
    n, d = embeddings.shape
    cov = centred.T @ centred / max(n - 1, 1)
    off_diagonal = cov - torch.diag(torch.diag(cov))
    covariance = (off_diagonal**2).sum() / d
    return variance + covariance / 25.0


def masked_reconstruction_loss(reconstruction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the masked voxels only: ``Σ m (x̂ - x)² / Σ m``."""
    mask = mask.float()
    return ((reconstruction - target) ** 2 * mask).sum() / mask.sum().clamp_min(1.0)


def embedding_std(embeddings: torch.Tensor) -> float:
    """Collapse statistic: mean over dimensions of the per-dimension std of unit-norm embeddings.

    About ``1/sqrt(D)`` for embeddings spread over the sphere, 0 for a collapsed (constant) one.
    """
    return float(F.normalize(embeddings.detach(), dim=1).std(0).mean())
