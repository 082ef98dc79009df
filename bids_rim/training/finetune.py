"""Supervised fine-tuning: imbalance-aware loss + SupCon regulariser, early stopping, calibration.

Loss per batch: ``L = L_cls + softplus(w) · SupCon(embedding, labels; τ) + λ · mean(h²)`` where
``L_cls`` is the focal loss or the class-weighted BCE, ``w`` is either learned (starting at
``softplus(w) = supcon_weight``, as the paper) or fixed, and ``h`` is the MLP head's part of asym's
logit, which the linear read-out path does not include (``λ = head_logit_penalty``, 0 by default:
with λ > 0 the network stays near the logistic regression it starts as unless the training
lesions pay for the move). Batches are class-balanced draws; the
augmentations include a shift of FLAIR by up to ``flair_shift_voxels`` relative to QSM.
Early stopping keeps the epoch with the best inner-validation PR AUC, among the epochs from
``min_finetune_epochs`` on (with 20–30 validation rim+ the PR AUC of one epoch is noisy, and a
peak in the first epochs ended training before the head had learned anything; the rule is
``bids_rim.training.early_stopping``); Platt scaling (a temperature
and a bias, centred on the analytic correction from the training batches' class prior to the real
one) and the max-F1 threshold are then fitted on that same validation set (never on test data).
With ``loss="weighted_bce"`` the class weight replaces oversampling: batches are plain shuffles.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score
from torch import nn
from tqdm.auto import tqdm

from bids_rim.errors import InputError
from bids_rim.models.asym import rim_readout_of_patches
from bids_rim.training import losses
from bids_rim.training.augment import DIFFUSE_OFFSET_PPM, PatchAugmenter, add_diffuse_paramagnetism
from bids_rim.training.batching import balanced_batches, shuffled_batches
from bids_rim.training.calibration import (
    calibrated,
    choose_threshold,
    fit_platt,
    logit,
    prior_shift_bias,
)
from bids_rim.training.config import TrainConfig
from bids_rim.training.distributed import (
    DistContext,
    all_ranks_agree,
    local_slice,
    wrap,
)
from bids_rim.training.early_stopping import EarlyStopping
from bids_rim.training.prediction import predict_logits

LOGGER = logging.getLogger("bids_rim.finetune")


@dataclass
class FinetuneResult:
    """The best epoch's weights with the calibration fitted on the validation set."""

    state_dict: dict[str, torch.Tensor]
    temperature: float
    bias: float
    threshold: float
    best_epoch: int
    best_val_pr_auc: float
    history: list[dict[str, float]] = field(default_factory=list)


def _inverse_softplus(value: float) -> float:
    return math.log(math.expm1(value))


def with_simulated_diffuse(patches: np.ndarray, labels: np.ndarray, fraction: float, seed: int
                           ) -> tuple[np.ndarray, np.ndarray]:
    """``patches`` and ``labels`` plus diffusely paramagnetic copies of ``fraction`` of the rim−
    lesions (drawn without replacement, offsets from ``DIFFUSE_OFFSET_PPM``), labelled rim−."""
    negatives = np.flatnonzero(labels == 0)
    count = int(round(fraction * len(negatives)))
    if count == 0:
        return patches, labels
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(negatives, size=count, replace=False))
    copies = np.stack([add_diffuse_paramagnetism(patches[row], rng.uniform(*DIFFUSE_OFFSET_PPM)) for row in chosen])
    return (np.concatenate([np.asarray(patches, dtype=np.float32), copies]),
            np.concatenate([labels, np.zeros(count, dtype=labels.dtype)]))


@torch.inference_mode()
def start_readout_path_from_logistic_regression(model: nn.Module, patches: np.ndarray, labels: np.ndarray,
                                                device: torch.device, taught_prior_shift: float = 0.0,
                                                simulated_diffuse_fraction: float = 0.0, seed: int = 0) -> None:
    """Set asym's linear read-out path to a logistic regression fitted on the training lesions.

    With Adam's steps of about ``lr`` per update, read-out weights that start at zero need thousands
    of steps to reach the magnitudes a logistic regression finds (1–3 per unit), while the MLP
    on 161 inputs fits the training lesions within a few epochs; on balanced 40-patient folds the
    network then ranked lesions below that logistic regression alone (docs/training.md).

    The regression is the plain maximum-likelihood one, without class weights: on both 40-patient
    benchmark cohorts, with one and with three outlines, class-balanced weights cost its pooled
    held-out PR AUC 0.03–0.08 (``benchmarks/readout_start.py``, docs/training.md). Only its
    intercept moves, by
    ``−taught_prior_shift`` (:func:`training_prior_bias`), into the class prior that the loss and
    batches present to the network. With ``simulated_diffuse_fraction`` the regression also sees
    that share of the rim− lesions made diffusely paramagnetic (:func:`with_simulated_diffuse`,
    seeded by ``seed``). No-op for other networks.
    """
    if getattr(model, "readout_logit", None) is None or len(np.unique(labels)) < 2:
        return
    patches, labels = with_simulated_diffuse(patches, labels, simulated_diffuse_fraction, seed)
    features = rim_readout_of_patches(patches, device, noise_normalised=model.rim_readout.noise_normalised,
                                      outlines=model.rim_readout.outlines)
    regression = LogisticRegression(C=1.0, max_iter=1000).fit(features, labels)
    model.readout_logit.weight.copy_(torch.as_tensor(regression.coef_, dtype=model.readout_logit.weight.dtype))
    model.readout_logit.bias.copy_(torch.as_tensor(regression.intercept_ - taught_prior_shift,
                                                   dtype=model.readout_logit.bias.dtype))


def training_prior_bias(config: TrainConfig, train_prevalence: float) -> float:
    """Log-odds shift from what the loss and batches taught the network to the real class prior.

    Balanced batches (focal loss) present rim+ at prior 0.5 and focal ``α`` weighs it by
    ``α / (1 − α)``; weighted BCE on natural batches weighs rim+ by ``(1 − π) / π``, which also
    amounts to a prior of 0.5. The fitted Platt bias starts from (and is pulled towards) this value.
    """
    if config.loss == "focal":
        taught_log_odds = math.log(config.focal_alpha / (1 - config.focal_alpha))
    else:
        taught_log_odds = logit(0.5)
    return prior_shift_bias(train_prevalence) - taught_log_odds


class FinetuneObjective(nn.Module):
    """The model plus the SupCon weight; ``forward`` returns the loss terms of one batch."""

    def __init__(self, model: nn.Module, config: TrainConfig, positive_weight: float) -> None:
        super().__init__()
        if config.head_logit_penalty > 0 and getattr(model, "readout_logit", None) is None:
            raise ValueError(f"head_logit_penalty needs a network with a linear read-out path (asym, qsm_only); "
                             f"{config.arch} has none")
        self.model = model
        self.config = config
        self.positive_weight = positive_weight
        raw = torch.tensor(_inverse_softplus(config.supcon_weight)) if config.supcon_weight > 0 else None
        if raw is not None and config.learn_supcon_weight:
            self.supcon_raw_weight = nn.Parameter(raw)
        else:
            self.register_buffer("supcon_raw_weight", raw if raw is not None else torch.tensor(float("-inf")))

    def supcon_weight(self) -> torch.Tensor:
        return F.softplus(self.supcon_raw_weight)

    def forward(self, patches: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.model(patches)
        if self.config.loss == "focal":
            classification = losses.focal_loss(out["logit"], labels, self.config.focal_gamma, self.config.focal_alpha)
        else:
            classification = losses.weighted_bce(out["logit"], labels, self.positive_weight)
        terms = {"classification": classification}
        if self.config.supcon_weight > 0:
            terms["supcon"] = losses.supcon_loss(out["embedding"], labels, self.config.supcon_temperature)
        if self.config.head_logit_penalty > 0:
            terms["head_logit_sq"] = out["head_logit"].square().mean()
        return terms

    def total_loss(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss that is minimised: classification + weighted SupCon + head-logit penalty."""
        loss = terms["classification"]
        if "supcon" in terms:
            loss = loss + self.supcon_weight() * terms["supcon"]
        if "head_logit_sq" in terms:
            loss = loss + self.config.head_logit_penalty * terms["head_logit_sq"]
        return loss


def finetune(
    model: nn.Module,
    train_patches: np.ndarray,
    train_labels: np.ndarray,
    val_patches: np.ndarray,
    val_labels: np.ndarray,
    config: TrainConfig,
    device: torch.device,
    *,
    seed: int,
    context: DistContext = DistContext(),
    progress: bool = False,
    description: str = "finetune",
    after_epoch: Callable[[int, nn.Module], None] | None = None,
) -> FinetuneResult:
    """Fine-tune ``model`` in place (it ends with the best epoch's weights) and calibrate it.

    ``after_epoch(epoch, model)``, if given, is called with the starting point (epoch 0) and after
    each epoch's validation, before early stopping decides: a diagnostic look (``benchmarks/
    finetune_trace.py`` copies every epoch's weights to score them later) that must leave the
    model and the random streams as it found them.
    """
    train_labels = np.asarray(train_labels).astype(int)
    val_labels = np.asarray(val_labels).astype(int)
    if len(train_labels) < 2:
        raise InputError(f"{description}: the fine-tuning set has {len(train_labels)} labelled lesion(s); "
                         "at least two are needed to form a batch")
    if not config.init_from:  # a model given to fine-tune keeps its own read-out path
        start_readout_path_from_logistic_regression(model, train_patches, train_labels, device,
                                                    training_prior_bias(config, float(train_labels.mean())),
                                                    config.simulated_diffuse_fraction, seed)
    if getattr(model, "readout_logit", None) is not None:
        model.readout_logit.requires_grad_(config.train_readout_logit)
    n_positive = max(int(train_labels.sum()), 1)
    objective = FinetuneObjective(model, config, (len(train_labels) - n_positive) / n_positive).to(device)
    trainable = wrap(objective, context, device)
    optimiser = torch.optim.AdamW(objective.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    augment = PatchAugmenter(seed + 1000 * context.rank, config.flair_shift_voxels, config.qsm_noise_std_ppm,
                             config.simulated_diffuse_fraction)
    val_has_both = len(np.unique(val_labels)) == 2

    stopping = EarlyStopping(min(config.min_finetune_epochs, config.finetune_epochs), config.patience)
    best_state = copy.deepcopy(model.state_dict())
    if config.readout_fallback and getattr(model, "readout_logit", None) is not None and val_has_both:
        start_logits = predict_logits(model, val_patches, device)[0]
        stopping.best_score = all_ranks_agree(float(average_precision_score(val_labels, start_logits)), context)
    if after_epoch is not None:
        after_epoch(0, model)
    history: list[dict[str, float]] = []
    epochs = tqdm(range(config.finetune_epochs), desc=description, disable=not (progress and context.is_main),
                  leave=False)
    for epoch in epochs:
        objective.train()
        sums: dict[str, float] = {}
        if config.loss == "focal":
            batches = balanced_batches(train_labels, config.batch_size, generator)
        else:
            batches = shuffled_batches(len(train_labels), config.batch_size, generator)
        for batch_indices in batches:
            mine = local_slice(batch_indices, context).numpy()
            batch = augment(torch.from_numpy(train_patches[mine]), train_labels[mine]).to(device)
            labels = torch.as_tensor(train_labels[mine], device=device)
            terms = trainable(batch, labels)
            loss = objective.total_loss(terms)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            for name, value in {"loss": loss, **terms}.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach())
        row = {"epoch": float(epoch + 1), **{k: v / max(len(batches), 1) for k, v in sums.items()}}
        row["supcon_weight"] = float(objective.supcon_weight().detach())
        val_logits = predict_logits(model, val_patches, device)[0]
        val_loss = float(F.binary_cross_entropy_with_logits(torch.as_tensor(val_logits),
                                                            torch.as_tensor(val_labels).float()))
        row["val_loss"] = val_loss
        row["val_pr_auc"] = float(average_precision_score(val_labels, val_logits)) if val_has_both else float("nan")
        # Without both classes in validation, early stopping falls back on the validation loss.
        score = all_ranks_agree(row["val_pr_auc"] if val_has_both else -val_loss, context)
        history.append(row)
        if after_epoch is not None:
            after_epoch(epoch + 1, model)
        if stopping.record(epoch + 1, score):
            best_state = copy.deepcopy(model.state_dict())
        epochs.set_postfix(loss=f"{row['loss']:.3f}", val_pr_auc=f"{row['val_pr_auc']:.3f}")
        LOGGER.info("%s epoch %d: %s", description, epoch + 1,
                    ", ".join(f"{k}={v:.4f}" for k, v in row.items() if k != "epoch"))
        if stopping.should_stop:
            break

    model.load_state_dict(best_state)
    val_logits = predict_logits(model, val_patches, device)[0]
    temperature, bias = fit_platt(val_logits, val_labels, training_prior_bias(config, float(train_labels.mean())))
    threshold = choose_threshold(calibrated(val_logits, temperature, bias), val_labels)
    return FinetuneResult(
        state_dict={k: v.detach().cpu().clone() for k, v in best_state.items()},
        temperature=temperature,
        bias=bias,
        threshold=threshold,
        best_epoch=stopping.best_epoch,
        best_val_pr_auc=float(stopping.best_score) if val_has_both else float("nan"),
        history=history,
    )
