"""Patient-level K-fold cross-validation, with pretraining inside each fold, then a final model.

Folds are drawn over *patients* (no patient in two folds), stratified by site and by the
patient's rim+ count (0, 1–3, ≥ 4). In each fold: pretraining sees only the training patients'
patches (labelled or not; patients with no labels at all are never tested, so they pretrain
in every fold); fine-tuning uses the training patients' labelled lesions, with an inner
validation split also by patient for early stopping, temperature and threshold; the test
fold is predicted once at the end.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import StratifiedGroupKFold

from bids_rim.errors import InputError
from bids_rim.models import get_model, is_neural
from bids_rim.training.calibration import calibrated, choose_threshold
from bids_rim.training.checkpoint import load_checkpoint
from bids_rim.training.config import TrainConfig
from bids_rim.training.distributed import DistContext
from bids_rim.training.finetune import finetune
from bids_rim.training.metrics import all_metrics
from bids_rim.training.prediction import predict_logits
from bids_rim.training.pretrain import pretrain, supports_pretraining

LOGGER = logging.getLogger("bids_rim.crossval")


@dataclass
class FoldModel:
    """One trained member: weights (None for scikit-learn models), calibration and provenance.

    Calibrated probability: ``σ(logit / temperature + bias)`` (Platt scaling on validation patients).
    """

    state_dict: dict[str, torch.Tensor] | None
    temperature: float
    threshold: float
    pretrain_participants: list[str]
    finetune_participants: list[str]
    validation_participants: list[str]
    pretrain_history: list[dict[str, float]] = field(default_factory=list)
    finetune_history: list[dict[str, float]] = field(default_factory=list)
    estimator: object | None = None
    bias: float = 0.0


@dataclass
class CrossValResult:
    """Per-fold models and metrics plus out-of-fold predictions of every labelled lesion."""

    folds: list[FoldModel]
    test_participants: list[list[str]]
    fold_metrics: pd.DataFrame
    predictions: pd.DataFrame  # participant_id, site, label, fold, rim_probability, threshold


def patient_strata(meta: pd.DataFrame) -> pd.Series:
    """One stratum per patient: site and rim+ count bin (0, 1–3, ≥ 4)."""
    rim_count = meta.groupby("participant_id")["label"].apply(lambda s: int((s == 1).sum()))
    bins = pd.cut(rim_count, [-1, 0, 3, np.inf], labels=["0", "1-3", "4+"]).astype(str)
    site = meta.groupby("participant_id")["site"].first().astype(str)
    return site + "|" + bins


def _quiet_splits(splitter: StratifiedGroupKFold, patients: np.ndarray, strata: np.ndarray) -> list:
    """Splits with one row per patient; small strata only cost balance, so their warning is silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        return list(splitter.split(patients, strata, groups=patients))


def patient_folds(meta: pd.DataFrame, n_folds: int, seed: int) -> list[list[str]]:
    """Test patients of each fold, over the patients that have at least one labelled lesion."""
    labelled = meta[meta["label"].notna()]
    patients = np.array(sorted(labelled["participant_id"].unique()))
    if len(patients) < n_folds:
        raise ValueError(f"{n_folds}-fold cross-validation needs at least {n_folds} labelled patients, got {len(patients)}")
    strata = patient_strata(labelled).reindex(patients)
    # Strata too small for the fold count are merged by site, then globally, so that every
    # stratum can be spread over the folds.
    counts = strata.map(strata.value_counts())
    strata = strata.where(counts >= n_folds, strata.str.split("|").str[0])
    counts = strata.map(strata.value_counts())
    strata = strata.where(counts >= n_folds, "any")
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = [sorted(patients[test].tolist()) for _, test in _quiet_splits(splitter, patients, strata.to_numpy())]
    return folds


def inner_split(meta: pd.DataFrame, fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split labelled training patients into fit and validation patients (by patient, stratified).

    Prefers a split where both sides hold a rim+ lesion.
    """
    patients = np.array(sorted(meta["participant_id"].unique()))
    if len(patients) < 2:
        raise InputError(f"fine-tuning needs at least 2 labelled training patients (one for validation), got {len(patients)}")
    n_splits = int(min(max(round(1 / fraction), 2), len(patients)))
    strata = patient_strata(meta).reindex(patients).str.split("|").str[1]
    if strata.value_counts().max() < n_splits:  # too few patients to stratify by rim+ count
        strata[:] = "any"
    strata = strata.to_numpy()
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    has_rim = meta.groupby("participant_id")["label"].apply(lambda s: bool((s == 1).any()))
    first = None
    for fit, val in _quiet_splits(splitter, patients, strata):
        split = (sorted(patients[fit].tolist()), sorted(patients[val].tolist()))
        first = first or split
        if has_rim[split[0]].any() and has_rim[split[1]].any():
            return split
    return first


def initialise_from_model_file(model: torch.nn.Module, config: TrainConfig) -> None:
    """Load the final member of ``config.init_from`` into ``model`` (same architecture and configuration)."""
    payload = load_checkpoint(Path(config.init_from), expected_arch=config.arch)
    if payload["arch_config"] != config.model_kwargs():
        raise InputError(f"{config.init_from}: model configuration {payload['arch_config']} differs from the "
                         f"training configuration {config.model_kwargs()}")
    if payload["patch_size"] != config.patch_size:
        raise InputError(f"{config.init_from}: model patches are {payload['patch_size']}³, training patches {config.patch_size}³")
    model.load_state_dict(payload["state_dicts"][-1])


def train_member(
    patches: np.ndarray,
    meta: pd.DataFrame,
    train_patients: list[str],
    config: TrainConfig,
    device: torch.device,
    *,
    seed: int,
    context: DistContext = DistContext(),
    progress: bool = False,
    name: str = "",
) -> FoldModel:
    """Pretrain and fine-tune one model on ``train_patients`` only (the caller's test patients excluded)."""
    in_train = meta["participant_id"].isin(train_patients).to_numpy()
    labelled = in_train & meta["label"].notna().to_numpy()
    labelled_meta = meta[labelled]
    fit_patients, val_patients = inner_split(labelled_meta, config.inner_val_fraction, seed)
    fit_rows = np.flatnonzero(labelled & meta["participant_id"].isin(fit_patients).to_numpy())
    val_rows = np.flatnonzero(labelled & meta["participant_id"].isin(val_patients).to_numpy())
    labels = meta["label"].to_numpy()

    if not is_neural(config.arch):
        estimator = get_model(config.arch, **config.model_kwargs()).fit(patches[fit_rows], labels[fit_rows])
        val_probabilities = estimator.predict_proba(patches[val_rows])
        return FoldModel(None, 1.0, choose_threshold(val_probabilities, labels[val_rows]), [],
                         fit_patients, val_patients, estimator=estimator)

    torch.manual_seed(seed)
    model = get_model(config.arch, **config.model_kwargs()).to(device)
    if config.init_from:
        initialise_from_model_file(model, config)
    pretrain_rows = np.flatnonzero(in_train)
    pretrain_history: list[dict[str, float]] = []
    pretrain_patients: list[str] = []
    if supports_pretraining(model) and config.pretrain_epochs > 0 and config.pretrain_objectives:
        pretrain_patients = sorted(meta["participant_id"].iloc[pretrain_rows].unique())
        pretrain_history = pretrain(model, patches[pretrain_rows], config, device, seed=seed, context=context,
                                    progress=progress, description=f"pretrain {name}".strip())
    result = finetune(model, patches[fit_rows], labels[fit_rows], patches[val_rows], labels[val_rows], config, device,
                      seed=seed + 1, context=context, progress=progress, description=f"finetune {name}".strip())
    return FoldModel(result.state_dict, result.temperature, result.threshold, pretrain_patients, fit_patients,
                     val_patients, pretrain_history, result.history, bias=result.bias)


def member_probabilities(member: FoldModel, config: TrainConfig, patches: np.ndarray, device: torch.device) -> np.ndarray:
    """Calibrated rim+ probabilities of one member (no test-time augmentation)."""
    if member.estimator is not None:
        return member.estimator.predict_proba(patches)
    model = get_model(config.arch, **config.model_kwargs()).to(device)
    model.load_state_dict(member.state_dict)
    return calibrated(predict_logits(model, patches, device)[0], member.temperature, member.bias)


def cross_validate(
    patches: np.ndarray,
    meta: pd.DataFrame,
    config: TrainConfig,
    device: torch.device,
    *,
    context: DistContext = DistContext(),
    progress: bool = False,
) -> CrossValResult:
    """K-fold patient-level cross-validation; metrics of each test fold at its own validation threshold."""
    meta = meta.reset_index(drop=True)
    folds = patient_folds(meta, config.folds, config.seed)
    all_patients = sorted(meta["participant_id"].unique())
    members, rows, predictions = [], [], []
    for fold, test_patients in enumerate(folds, start=1):
        train_patients = [p for p in all_patients if p not in set(test_patients)]
        member = train_member(patches, meta, train_patients, config, device, seed=config.seed + 100 * fold,
                              context=context, progress=progress, name=f"fold {fold}/{config.folds}")
        test_rows = np.flatnonzero(meta["participant_id"].isin(test_patients).to_numpy() & meta["label"].notna().to_numpy())
        probabilities = member_probabilities(member, config, patches[test_rows], device)
        test_meta = meta.iloc[test_rows]
        metrics = all_metrics(test_meta["participant_id"].to_numpy(), test_meta["label"].to_numpy(), probabilities,
                              member.threshold)
        rows.append({"fold": fold, "threshold": member.threshold, "temperature": member.temperature,
                     "calibration_bias": member.bias, **metrics})
        predictions.append(pd.DataFrame({
            "participant_id": test_meta["participant_id"].to_numpy(), "site": test_meta["site"].to_numpy(),
            "lesion_id": test_meta["lesion_id"].to_numpy(), "label": test_meta["label"].to_numpy().astype(int),
            "fold": fold, "rim_probability": probabilities, "threshold": member.threshold,
        }))
        members.append(member)
        LOGGER.info("fold %d: PR AUC %.3f, ROC AUC %.3f, F1 %.3f", fold, metrics["pr_auc"], metrics["roc_auc"], metrics["f1"])
    return CrossValResult(members, folds, pd.DataFrame(rows), pd.concat(predictions, ignore_index=True))
