"""What the group-level CLI calls: ``train_rim_model`` cross-validates, trains and writes the model.

Outputs in ``out_dir`` (``OUTPUT_DIR/models/``): ``desc-rim_model.pt`` (the model file),
``desc-rim_modelcard.md``, ``desc-rim_foldmetrics.tsv`` (+ ``.json``) and ROC / PR /
reliability PNGs. An architecture that is not a network (``radiomics``) writes no model file, so its
card, metrics and plots go to ``out_dir/arch-<arch>/`` and leave the model set in ``out_dir`` as it
was. Under ``torchrun`` every rank trains its share and only rank 0 writes.
The set is written into a hidden staging folder in ``out_dir`` and moved into place when whole
(:func:`publish_outputs`), so that a failure part-way leaves the previous set as it was; the
staging folders of trainings killed outright are removed by the next one (:func:`remove_stale_staging`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bids_rim import __version__
from bids_rim.errors import InputError
from bids_rim.models import is_neural
from bids_rim.training.calibration import choose_threshold
from bids_rim.training.checkpoint import file_sha256, save_checkpoint
from bids_rim.training.config import TrainConfig
from bids_rim.training.crossval import (
    CrossValResult,
    cross_validate,
    load_init_model,
    patient_folds,
    train_member,
    training_plan,
)
from bids_rim.training.distributed import init_distributed, rank_device
from bids_rim.training.metrics import all_metrics, bootstrap_ci
from bids_rim.training.report import plot_curves, write_fold_metrics, write_model_card

__all__ = ["TrainConfig", "TrainResult", "train_rim_model"]

LOGGER = logging.getLogger("bids_rim.train")
STEM = "desc-rim"
META_COLUMNS = ("participant_id", "session_id", "site", "lesion_id", "label")
#: Below this many rim+ lesions a test fold's or an inner validation's PR AUC, F1 and threshold
#: rest on a handful of lesions (one lesion moves PR AUC by 0.1 or more): warned, not refused.
FEW_RIM_LESIONS = 5
STAGING_PREFIX = f".{STEM}_staging-"
#: ``<prefix><host>-<pid>-<mkdtemp's random letters>``: the host and pid say whose staging folder it is.
STAGING_NAME = re.compile(rf"{re.escape(STAGING_PREFIX)}(?P<host>.+)-(?P<pid>[1-9][0-9]{{0,8}})-[a-z0-9_]+")


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


def check_training_inputs(patches: np.ndarray, meta: pd.DataFrame, config: TrainConfig) -> list[str]:
    """Refuse inputs that cannot train a model, with one clear line, before any work; return warnings.

    Besides shapes and labels, the cross-validation is drawn (:func:`training_plan`, no training)
    and refused when a member could not be trained or tested: fewer patients with annotations than
    folds, a test fold without a rim+ lesion (its PR AUC and ROC AUC are undefined), or training
    patients whose rim+ lesions cannot give both the fitted and the inner-validation patients one
    (fitting would see no rim+, or early stopping, calibration and threshold would read an undefined
    PR AUC). As lesions stay with their patient, the practical minimum is rim+ lesions in at least
    K + 1 patients for K folds. Fewer than :data:`FEW_RIM_LESIONS` rim+ lesions in a test fold or
    an inner validation are only warned about: the numbers are defined, just noisy.
    """
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
    warnings = []
    if config.init_from:
        init_model = load_init_model(config)  # a missing, damaged or misfitting model file stops the run now
        overlap = init_overlap_warning(init_model, meta, config.init_from)
        spacing = init_spacing_warning(init_model, config)
        warnings += [warning for warning in (overlap, spacing) if warning]
    return warnings + check_fold_contents(meta, config)


def check_fold_contents(meta: pd.DataFrame, config: TrainConfig) -> list[str]:
    """The refusals and warnings of :func:`check_training_inputs` that concern the folds' rim+ lesions."""
    labelled = meta[meta["label"].notna()]
    rim_patients = labelled.loc[labelled["label"] == 1, "participant_id"].nunique()
    advice = (f"use fewer folds (--folds, at least 2) or annotate rim+ lesions in more patients (now "
              f"{int((labelled['label'] == 1).sum())} rim+ lesion(s) in {rim_patients} patient(s))")
    rim_count = labelled[labelled["label"] == 1]["participant_id"].value_counts()

    def rim_lesions(patients: list[str]) -> int:
        return int(rim_count.reindex(patients).fillna(0).sum())

    patient_folds(meta, config.folds, config.seed)  # fewer annotated patients than folds: its own advice
    try:
        plan = training_plan(meta, config)
    except InputError as error:  # a fold's training patients are fewer than an inner split needs
        raise InputError(f"{error}; {advice}") from None
    warnings = []
    for member in plan:
        if member.test_patients and rim_lesions(member.test_patients) == 0:
            raise InputError(f"{config.folds}-fold cross-validation: {member.name}'s test patients hold no rim+ "
                             f"lesion, so its PR AUC and ROC AUC are undefined; {advice}")
        if rim_lesions(member.fit_patients) == 0 or rim_lesions(member.validation_patients) == 0:
            where = "fitted" if rim_lesions(member.fit_patients) == 0 else "inner-validation"
            raise InputError(f"{member.name}: its {where} patients hold no rim+ lesion (fine-tuning needs rim+ lesions "
                             f"in at least 2 training patients: one to fit, one to validate); {advice}")
        for what, patients in (("test patients", member.test_patients),
                               ("inner-validation patients", member.validation_patients)):
            count = rim_lesions(patients)
            if patients and count < FEW_RIM_LESIONS:
                reads = "its metrics" if what.startswith("test") else "its early stopping, calibration and threshold"
                warnings.append(f"{member.name}: its {what} hold only {count} rim+ lesion(s) (fewer than "
                                f"{FEW_RIM_LESIONS}): {reads} rest on very few lesions")
    return warnings


def resolve_init_from(init_from: str | None, lesion_outline: str) -> str | None:
    """``init_from`` as a model file path: ``"bundled"`` is the bundled model for ``lesion_outline``."""
    if init_from != "bundled":
        return init_from
    from bids_rim.workflows.participant import bundled_model_path  # the package's own model files

    return str(bundled_model_path(lesion_outline))


def nominal_spacing_mm(spacing_mm: np.ndarray) -> float:
    """The spacing most patches have (larger ones belong to rescaled big lesions)."""
    values, counts = np.unique(np.round(np.asarray(spacing_mm, float), 3), return_counts=True)
    return float(values[np.argmax(counts)])


def with_patch_spacing(config: TrainConfig, meta: pd.DataFrame) -> TrainConfig:
    """``config`` with the patches' own nominal spacing when ``meta`` has a ``spacing_mm`` column
    (:func:`bids_rim.bidsio.training_data.load_training_set` writes one), so that the model file and
    card record the spacing the patches have, whichever route trained them."""
    if "spacing_mm" not in meta.columns or meta["spacing_mm"].isna().all():
        return config
    spacing = nominal_spacing_mm(meta["spacing_mm"].dropna().to_numpy())
    if not np.isclose(spacing, config.patch_spacing_mm):
        LOGGER.info("Patch spacing %.3g mm (from the patches; TrainConfig.patch_spacing_mm said %.3g)", spacing,
                    config.patch_spacing_mm)
    return replace(config, patch_spacing_mm=spacing)


def _data_summary(meta: pd.DataFrame) -> dict:
    labelled = meta[meta["label"].notna()]
    return {
        "n_lesions": int(len(meta)), "n_labelled": int(len(labelled)),
        "n_rim_positive": int((labelled["label"] == 1).sum()),
        "prevalence": float(labelled["label"].mean()), "n_patients": int(meta["participant_id"].nunique()),
        "n_labelled_patients": int(labelled["participant_id"].nunique()),
        "sites": {str(k): int(v) for k, v in meta["site"].value_counts().sort_index().items()},
        "participant_sha256": participant_hashes(meta["participant_id"]),
    }


def participant_hashes(participant_ids: pd.Series) -> list[str]:
    """Sorted SHA-256 digests of the training participants' ids: enough to tell, when the model later
    starts another training (``--init-from``), which of that training's patients it has seen,
    without writing the ids into a file that may be shared."""
    return sorted(hashlib.sha256(str(pid).encode()).hexdigest() for pid in pd.unique(participant_ids))


def init_overlap_warning(init_model: dict, meta: pd.DataFrame, init_from: str) -> str | None:
    """A warning when patients of this training also trained the ``--init-from`` model: their
    cross-validation folds start from weights that have seen their test patients, so the
    metrics are optimistic. Model files from before the record (the bundled ones) say nothing."""
    seen = set(init_model.get("training", {}).get("data", {}).get("participant_sha256", []))
    overlap = seen & set(participant_hashes(meta["participant_id"]))
    if not overlap:
        return None
    return (f"{len(overlap)} of the {meta['participant_id'].nunique()} participants here also trained {init_from}: "
            "their test folds start from weights that have seen them, so the cross-validated metrics are "
            "optimistic (start from a model trained on other patients, or from scratch, to measure)")


def init_spacing_warning(init_model: dict, config: TrainConfig) -> str | None:
    """A warning when the ``--init-from`` model was trained on patches of another spacing than
    ``config.patch_spacing_mm`` (the patches' own, :func:`with_patch_spacing`). Its patch size must
    match (:func:`load_init_model` refuses another), but at another voxel size the same patch covers
    another field of view and a lesion spans another number of voxels: the pretrained filters were
    learned at scales these patches do not have, so fine-tuning starts further from a good model."""
    model_mm, patches_mm = float(init_model["patch_spacing_mm"]), float(config.patch_spacing_mm)
    if np.isclose(model_mm, patches_mm, rtol=0, atol=1e-3):
        return None
    size = config.patch_size
    return (f"{config.init_from} was trained on patches at {model_mm:.3g} mm ({size}³ voxels, {size * model_mm:.3g} "
            f"mm across), these patches are at {patches_mm:.3g} mm ({size * patches_mm:.3g} mm across): its pretrained "
            f"filters were learned at another voxel size, so a lesion spans {model_mm / patches_mm:.2g} times as many "
            "voxels across here as one of its size did in their training (cut the patches at "
            f"{model_mm:.3g} mm with the participant level's --patch-spacing to fine-tune at the model's scale)")


def this_host() -> str:
    """This machine's name as a staging folder's name holds it (anything but letters, digits, ``.`` and
    ``-`` made ``_``, so that it cannot make a path), with the process-id namespace where the system has
    one: containers on one host may share its name but not its process ids."""
    try:
        namespace = f".ns{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        namespace = ""
    return (re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname()) or "unknown") + namespace


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (signal 0 checks it and sends nothing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        pass
    return True


def stale_staging_folders(out_dir: Path) -> tuple[list[Path], list[Path]]:
    """The staging folders that trainings left in ``out_dir``, as (stale, kept).

    A training removes its staging folder when it ends, even on an error, but not when it is killed
    outright (SIGKILL, the out-of-memory killer). The folder's name says whose it was
    (:data:`STAGING_NAME`): stale are those of this host whose process is gone. Kept are those that may
    still be written into: of another host (a training elsewhere on a shared file system, whose pid
    means nothing here), of a live process (a concurrent training, or a reused pid), or whose name says
    neither (an older bids_rim's).
    """
    stale, kept, host = [], [], this_host()
    for folder in sorted(path for path in Path(out_dir).glob(f"{STAGING_PREFIX}*") if path.is_dir()):
        match = STAGING_NAME.fullmatch(folder.name)
        dead = match is not None and match["host"] == host and not pid_alive(int(match["pid"]))
        (stale if dead else kept).append(folder)
    return stale, kept


def remove_stale_staging(out_dir: Path) -> None:
    """Remove the stale staging folders of :func:`stale_staging_folders`, one log line each, and warn
    about the kept ones, which a person may remove once no training writes into them."""
    stale, kept = stale_staging_folders(out_dir)
    for folder in stale:
        try:
            shutil.rmtree(folder)
        except OSError as error:
            LOGGER.warning("%s, left by a killed training, could not be removed: %s", folder, error)
        else:
            LOGGER.info("Removed %s, left by a training killed on this host (its process is gone)", folder)
    for folder in kept:
        LOGGER.warning("%s is left alone: a staging folder of a training on another host, of one still running "
                       "here, or of an older bids_rim; remove it once no training writes into it", folder)


def train_rim_model(
    patches: np.ndarray,
    meta: pd.DataFrame,
    config: TrainConfig,
    out_dir: Path,
    device: torch.device,
    progress: bool = True,
    synthetic: bool = False,
    lesion_outline: str = "given",
    annotations: dict | None = None,
) -> TrainResult:
    """Cross-validate ``config.arch`` on ``patches``/``meta``, train the final ensemble, write everything.

    ``meta`` has one row per patch: participant_id, session_id, site, lesion_id, label (1, 0, NaN),
    and optionally spacing_mm (the patch's voxel size: the model file then records the patches'
    nominal spacing instead of ``config.patch_spacing_mm``). A non-network ``config.arch`` writes its
    card, metrics and plots to ``out_dir/arch-<arch>/``: it has no model file, and the model set in
    ``out_dir`` stays as it was. ``synthetic=True`` makes the model card
    say the data were simulated. ``lesion_outline`` is the participant level's ``--lesion-outline``
    of the patches; the model file records it, so that inference can warn when lesions are outlined
    otherwise than in training, and ``config.init_from="bundled"`` picks the bundled model for it.
    ``annotations`` (:meth:`TrainingSet.annotation_summary`) puts the matched and unmatched
    annotation counts into the model card and file.
    """
    patches = np.asarray(patches, dtype=np.float32)
    meta = meta.reset_index(drop=True)
    config = with_patch_spacing(replace(config, init_from=resolve_init_from(config.init_from, lesion_outline)), meta)
    warnings = check_training_inputs(patches, meta, config)
    for warning in warnings:
        LOGGER.warning("%s", warning)
    torch.use_deterministic_algorithms(True, warn_only=True)
    device = rank_device(device)
    context = init_distributed(device)
    out_dir = Path(out_dir) if is_neural(config.arch) else Path(out_dir) / f"arch-{config.arch}"
    model_file = out_dir / f"{STEM}_model.pt"
    if context.is_main and is_neural(config.arch) and model_file.is_file():
        # Participant-level tables made with it name it by this sha256 (ModelSHA256 in their sidecars).
        LOGGER.warning("%s exists (sha256 %s): this training replaces it when it finishes", model_file,
                       file_sha256(model_file))

    cv = cross_validate(patches, meta, config, device, context=context, progress=progress)
    oof = cv.predictions
    per_lesion_threshold = oof["threshold"].to_numpy()
    pooled = all_metrics(oof["participant_id"].to_numpy(), oof["label"].to_numpy(), oof["rim_probability"].to_numpy(),
                         per_lesion_threshold)
    intervals = bootstrap_ci(oof["participant_id"].to_numpy(), oof["label"].to_numpy(),
                             oof["rim_probability"].to_numpy(),
                             per_lesion_threshold, n_resamples=config.bootstrap_resamples, seed=config.seed)
    members = list(cv.folds)
    if config.train_final_model:
        final = train_member(patches, meta, sorted(meta["participant_id"].unique()), config, device, seed=config.seed,
                             context=context, progress=progress, name="final")
        members.append(final)
    deployed_threshold = choose_threshold(oof["rim_probability"].to_numpy(), oof["label"].to_numpy())

    summary = {**_data_summary(meta), "lesion_outline": lesion_outline, "warnings": warnings}
    if annotations is not None:
        summary["annotations"] = annotations
    if config.init_from:
        summary["init_from"] = {"path": str(config.init_from), "sha256": file_sha256(Path(config.init_from))}
    if not context.is_main:
        return TrainResult(None, out_dir / f"{STEM}_modelcard.md", out_dir / f"{STEM}_foldmetrics.tsv", pooled,
                           intervals, cv.fold_metrics, crossval=cv)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir, prefix=f"{STAGING_PREFIX}{this_host()}-{os.getpid()}-"))
    try:
        metrics_path = write_fold_metrics(cv.fold_metrics, pooled, staging / f"{STEM}_foldmetrics.tsv", intervals)
        plots = plot_curves(oof, staging, STEM)
        model_path = None
        if is_neural(config.arch):
            training_meta = {
                "bids_rim_version": __version__, "torch_version": str(torch.__version__),
                "synthetic_data": bool(synthetic),
                "config": json.loads(json.dumps(config.as_dict())), "data": summary,
                "pooled_metrics": {k: float(v) for k, v in pooled.items()},
                "members": ([f"fold {i + 1}" for i in range(len(cv.folds))]
                            + (["final"] if config.train_final_model else [])),
                "pretrain_final_qsm_embedding_std": [m.pretrain_history[-1]["qsm_embedding_std"] if m.pretrain_history
                                                     else float("nan") for m in members],
            }
            model_path = save_checkpoint(
                staging / model_file.name, arch=config.arch, arch_config=config.model_kwargs(),
                state_dicts=[m.state_dict for m in members], temperatures=[m.temperature for m in members],
                biases=[m.bias for m in members],
                threshold=deployed_threshold, patch_size=config.patch_size, patch_spacing_mm=config.patch_spacing_mm,
                training=training_meta)
        card = write_model_card(staging / f"{STEM}_modelcard.md", config=config.as_dict(), data_summary=summary,
                                pooled=pooled, intervals=intervals, fold_metrics=cv.fold_metrics, synthetic=synthetic,
                                model_file=(model_path.name if model_path
                                            else "none (a scikit-learn baseline is not saved)"),
                                plots=plots, threshold=deployed_threshold,
                                pretrain_embedding_std=[m.pretrain_history[-1]["qsm_embedding_std"]
                                                        for m in members if m.pretrain_history])
        publish_outputs(staging, out_dir, last=[p.name for p in (model_path, card) if p is not None])
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    remove_stale_staging(out_dir)
    LOGGER.info("Cross-validated PR AUC %.3f (95%% CI %.3f-%.3f), prevalence %.3f", pooled["pr_auc"],
                *intervals["pr_auc"], pooled["prevalence"])
    return TrainResult(out_dir / model_path.name if model_path else None, out_dir / card.name,
                       out_dir / metrics_path.name, pooled, intervals, cv.fold_metrics,
                       {kind: out_dir / path.name for kind, path in plots.items()}, cv)


def publish_outputs(staging: Path, out_dir: Path, last: list[str]) -> list[Path]:
    """Move every file of ``staging`` into ``out_dir`` (mode 0644, ``os.replace``), ``last`` at the end
    in its order; remove plots an earlier run left that this set lacks.

    Everything was written before the first move, so a failure while writing leaves the earlier set
    untouched. The moves are renames within one folder, each atomic; the model file goes
    last-but-one and the model card, which describes the set, last: a set with the new card is
    whole, and at worst (a kill between two renames) a new model sits beside the old card.
    """
    names = sorted(path.name for path in staging.iterdir() if path.name not in last) + list(last)
    moved = []
    for name in names:
        source = staging / name
        os.chmod(source, 0o644)
        os.replace(source, out_dir / name)
        moved.append(out_dir / name)
    for old_plot in out_dir.glob(f"{STEM}_*.png"):  # e.g. no plots this time: one class in the test folds
        if old_plot.name not in names:
            old_plot.unlink()
    return moved
