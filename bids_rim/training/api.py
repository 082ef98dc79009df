"""What the group-level CLI calls: ``train_rim_model`` cross-validates, trains and writes the model.

Outputs in ``out_dir`` (``OUTPUT_DIR/models/``): ``desc-rim_model.pt`` (the model file),
``desc-rim_modelcard.md``, ``desc-rim_foldmetrics.tsv`` (+ ``.json``) and ROC / PR /
reliability PNGs. Under ``torchrun`` every rank trains its share and only rank 0 writes.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bids_rim import __version__
from bids_rim.errors import InputError
from bids_rim.models import is_neural
from bids_rim.training.calibration import choose_threshold
from bids_rim.training.checkpoint import save_checkpoint
from bids_rim.training.config import TrainConfig
from bids_rim.training.crossval import CrossValResult, cross_validate, train_member
from bids_rim.training.distributed import init_distributed, rank_device
from bids_rim.training.metrics import all_metrics, bootstrap_ci
from bids_rim.training.report import plot_curves, write_fold_metrics, write_model_card

__all__ = ["TrainConfig", "TrainResult", "train_rim_model"]

LOGGER = logging.getLogger("bids_rim.train")
STEM = "desc-rim"
META_COLUMNS = ("participant_id", "session_id", "site", "lesion_id", "label")


@dataclass
class TrainResult:
    """Where the outputs went and the headline numbers."""

    model_path: Path | None
    model_card_path: Path
    fold_metrics_path: Path
    pooled_metrics: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    fold_metrics: pd.DataFrame
    plots: dict[str, Path] = field(default_factory=dict)
    crossval: CrossValResult | None = None


def check_training_inputs(patches: np.ndarray, meta: pd.DataFrame, config: TrainConfig) -> None:
    """Refuse inputs that cannot train a model, with one clear line."""
    if patches.ndim != 5 or patches.shape[1] != 3 or len(set(patches.shape[2:])) != 1:
        raise InputError(f"training patches have shape {patches.shape}; expected (N, 3, P, P, P)")
    if patches.shape[-1] != config.patch_size:
        raise InputError(f"training patches are {patches.shape[-1]}³ but TrainConfig.patch_size is {config.patch_size}")
    if len(meta) != len(patches):
        raise InputError(f"{len(patches)} patches but {len(meta)} metadata rows")
    missing = [c for c in META_COLUMNS if c not in meta.columns]
    if missing:
        raise InputError(f"training metadata lacks column(s) {missing}")
    labels = meta["label"].dropna()
    if not labels.isin([0, 1]).all():
        raise InputError("training labels must be 1 (rim+), 0 (rim-) or empty (unlabelled)")
    if labels.nunique() < 2:
        raise InputError("training needs both rim+ and rim- annotated lesions")


def _data_summary(meta: pd.DataFrame) -> dict:
    labelled = meta[meta["label"].notna()]
    return {
        "n_lesions": int(len(meta)), "n_labelled": int(len(labelled)), "n_rim_positive": int((labelled["label"] == 1).sum()),
        "prevalence": float(labelled["label"].mean()), "n_patients": int(meta["participant_id"].nunique()),
        "n_labelled_patients": int(labelled["participant_id"].nunique()),
        "sites": {str(k): int(v) for k, v in meta["site"].value_counts().sort_index().items()},
    }


def train_rim_model(
    patches: np.ndarray,
    meta: pd.DataFrame,
    config: TrainConfig,
    out_dir: Path,
    device: torch.device,
    progress: bool = True,
    synthetic: bool = False,
    lesion_outline: str = "given",
) -> TrainResult:
    """Cross-validate ``config.arch`` on ``patches``/``meta``, train the final ensemble, write everything.

    ``meta`` has one row per patch: participant_id, session_id, site, lesion_id, label (1, 0, NaN).
    ``synthetic=True`` makes the model card say the data were simulated. ``lesion_outline`` is the
    participant level's ``--lesion-outline`` of the patches; the model file records it, so that
    inference can warn when lesions are outlined otherwise than in training.
    """
    patches = np.asarray(patches, dtype=np.float32)
    meta = meta.reset_index(drop=True)
    check_training_inputs(patches, meta, config)
    torch.use_deterministic_algorithms(True, warn_only=True)
    device = rank_device(device)
    context = init_distributed(device)

    cv = cross_validate(patches, meta, config, device, context=context, progress=progress)
    oof = cv.predictions
    per_lesion_threshold = oof["threshold"].to_numpy()
    pooled = all_metrics(oof["participant_id"].to_numpy(), oof["label"].to_numpy(), oof["rim_probability"].to_numpy(),
                         per_lesion_threshold)
    intervals = bootstrap_ci(oof["participant_id"].to_numpy(), oof["label"].to_numpy(), oof["rim_probability"].to_numpy(),
                             per_lesion_threshold, n_resamples=config.bootstrap_resamples, seed=config.seed)
    members = list(cv.folds)
    if config.train_final_model:
        final = train_member(patches, meta, sorted(meta["participant_id"].unique()), config, device, seed=config.seed,
                             context=context, progress=progress, name="final")
        members.append(final)
    deployed_threshold = choose_threshold(oof["rim_probability"].to_numpy(), oof["label"].to_numpy())

    out_dir = Path(out_dir)
    summary = {**_data_summary(meta), "lesion_outline": lesion_outline}
    if not context.is_main:
        return TrainResult(None, out_dir / f"{STEM}_modelcard.md", out_dir / f"{STEM}_foldmetrics.tsv", pooled, intervals,
                           cv.fold_metrics, crossval=cv)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = write_fold_metrics(cv.fold_metrics, pooled, out_dir / f"{STEM}_foldmetrics.tsv")
    plots = plot_curves(oof, out_dir, STEM)
    model_path = None
    if is_neural(config.arch):
        training_meta = {
            "bids_rim_version": __version__, "torch_version": str(torch.__version__), "synthetic_data": bool(synthetic),
            "config": json.loads(json.dumps(config.as_dict())), "data": summary,
            "pooled_metrics": {k: float(v) for k, v in pooled.items()},
            "members": [f"fold {i + 1}" for i in range(len(cv.folds))] + (["final"] if config.train_final_model else []),
            "pretrain_final_qsm_embedding_std": [m.pretrain_history[-1]["qsm_embedding_std"] if m.pretrain_history
                                                 else float("nan") for m in members],
        }
        model_path = save_checkpoint(
            out_dir / f"{STEM}_model.pt", arch=config.arch, arch_config=config.model_kwargs(),
            state_dicts=[m.state_dict for m in members], temperatures=[m.temperature for m in members],
            biases=[m.bias for m in members],
            threshold=deployed_threshold, patch_size=config.patch_size, patch_spacing_mm=config.patch_spacing_mm,
            training=training_meta)
    card = write_model_card(out_dir / f"{STEM}_modelcard.md", config=config.as_dict(), data_summary=summary,
                            pooled=pooled, intervals=intervals, fold_metrics=cv.fold_metrics, synthetic=synthetic,
                            model_file=model_path.name if model_path else "none (a scikit-learn baseline is not saved)",
                            plots=plots, threshold=deployed_threshold,
                            pretrain_embedding_std=[m.pretrain_history[-1]["qsm_embedding_std"]
                                                    for m in members if m.pretrain_history])
    LOGGER.info("Cross-validated PR AUC %.3f (95%% CI %.3f-%.3f), prevalence %.3f", pooled["pr_auc"],
                *intervals["pr_auc"], pooled["prevalence"])
    return TrainResult(model_path, card, metrics_path, pooled, intervals, cv.fold_metrics, plots, cv)
