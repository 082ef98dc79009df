"""The group level: statistics across subjects and sites, or training with ``--train``.

The group level reads only the participant-level derivatives in OUTPUT_DIR and the raw
dataset's ``participants.tsv``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import pandas as pd

from bids_rim.cli.exit_codes import EXIT_INTERNAL, EXIT_USAGE
from bids_rim.config import RunConfig
from bids_rim.errors import InputError

if TYPE_CHECKING:
    from bids_rim.bidsio.training_data import TrainingSet

LOGGER = logging.getLogger("bids_rim.group")


def read_participants(config: RunConfig) -> pd.DataFrame:
    """``participants.tsv`` of the raw dataset (an empty table when there is none)."""
    path = config.bids_dir / "participants.tsv"
    if not path.is_file():
        LOGGER.warning("%s not found: no site or covariates for the group level", path)
        return pd.DataFrame({"participant_id": pd.Series(dtype=str)})
    return pd.read_csv(path, sep="\t", na_values="n/a", dtype={"participant_id": str})


def is_synthetic_dataset(bids_dir: Path) -> bool:
    """True for a cohort written by ``bids_rim-synth`` (the model card then says so plainly)."""
    try:
        description = json.loads((bids_dir / "dataset_description.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return any(entry.get("Name") == "bids_rim-synth" for entry in description.get("GeneratedBy", []))


def participant_of(path: Path) -> str:
    """``sub-X`` of a BIDS file name (an annotation file's), or "" when it names none."""
    return next((part for part in path.name.split("_") if part.startswith("sub-")), "")


def select_training_set(data: TrainingSet, selected: Sequence[str]) -> TrainingSet:
    """``data`` restricted to the ``selected`` participants' patches and annotation files (``--participant-label``).

    Refuses (:class:`InputError`) a selection left without patches, or whose annotated lesions
    hold only one class: cross-validation would fail later, or a model learn one answer.
    """
    keep = data.meta["participant_id"].isin(selected).to_numpy()
    if not keep.any():
        raise InputError(f"--participant-label: none of {', '.join(selected)} has participant-level patches "
                         "(their participant-level runs failed?); nothing to train on")
    meta = data.meta[keep].reset_index(drop=True)
    labels = meta["label"].dropna()
    if data.annotation_matches and labels.nunique() < 2:
        raise InputError(f"--participant-label: training needs both rim+ and rim- annotated lesions; the selected "
                         f"participants' annotations give {len(labels)} labelled lesion(s), "
                         f"{'none' if labels.empty else 'all ' + ('rim+' if (labels == 1).all() else 'rim-')}")
    LOGGER.info("Training set restricted by --participant-label to %d of %d participants: %d of %d lesions, "
                "%d labelled", meta["participant_id"].nunique(), data.meta["participant_id"].nunique(), len(meta),
                len(data.meta), len(labels))
    return dataclasses.replace(
        data, patches=data.patches[keep], meta=meta, spacing_mm=data.spacing_mm[keep],
        annotation_matches=tuple(match for match in data.annotation_matches if participant_of(match.file) in selected),
        annotations_left_out=tuple(path for path in data.annotations_left_out if participant_of(path) in selected))


def run_training(config: RunConfig) -> int:
    """``group --train``: gather patches and annotations, cross-validate, write the model, with
    ``--omp-nthreads`` torch threads. ``--init-from`` (a model file, or ``bundled``: the bundled
    model for the outputs' ``--lesion-outline``) is checked with the other inputs before any training.
    ``--participant-label`` trains on those participants alone (checked before anything is read)."""
    import torch

    from bids_rim.bidsio.training_data import load_training_set
    from bids_rim.group.run import check_participant_selection
    from bids_rim.models.registry import is_neural
    from bids_rim.training.api import train_rim_model
    from bids_rim.training.config import TrainConfig
    from bids_rim.training.inference import resolve_device

    settings = config.training
    if settings.rim_annotations is None:
        raise InputError("--train needs --rim-annotations DIR (a derivative dataset of *_desc-rim_annotations.tsv)")
    selected = check_participant_selection(config.output_dir, config.participant_labels)
    participants = read_participants(config)
    if selected:
        participants = participants[participants["participant_id"].isin(selected)]
    data = load_training_set(config.output_dir, participants, settings.rim_annotations,
                             max_distance_mm=config.lesions.annotation_match_mm)
    if selected:
        data = select_training_set(data, selected)
    train_config = TrainConfig(
        arch=settings.arch,
        folds=settings.folds,
        pretrain_epochs=settings.pretrain_epochs,
        finetune_epochs=settings.finetune_epochs,
        batch_size=settings.batch_size,
        seed=config.execution.seed,
        patch_size=int(data.patches.shape[-1]),
        patch_spacing_mm=data.nominal_spacing_mm,
        init_from=settings.init_from,  # "bundled" is resolved by train_rim_model, for data.lesion_outline
    )
    threads_before = torch.get_num_threads()
    torch.set_num_threads(config.execution.omp_nthreads)  # torch's default, every core of the node, oversubscribes
    try:                                                  # a SLURM or taskset allocation
        result = train_rim_model(data.patches, data.meta, train_config, config.output_dir / "models",
                                 resolve_device(config.execution.device), progress=True,
                                 synthetic=is_synthetic_dataset(config.bids_dir), lesion_outline=data.lesion_outline,
                                 annotations=data.annotation_summary(settings.rim_annotations))
    finally:
        torch.set_num_threads(threads_before)  # main() may run again in this process (tests, the demo)
    if not is_neural(settings.arch):  # its card, metrics and plots go to models/arch-<arch>/, beside the model set
        LOGGER.info("%s is a cross-validated baseline: no model file is written, and %s keeps its model set; "
                    "model card, metrics and plots in %s", settings.arch, config.output_dir / "models",
                    result.model_card_path.parent)
    elif result.model_path is not None:  # None on the other ranks of a torchrun job: rank 0 writes
        LOGGER.info("Model written to %s (model card: %s)", result.model_path, result.model_card_path)
    return 0


def run_group_level(config: RunConfig) -> int:
    """Dispatch the group level; returns the exit code."""
    try:
        if config.training.enabled:
            return run_training(config)
        from bids_rim.group.run import run_group_level as run_statistics

        result = run_statistics(config.bids_dir, config.output_dir, covariates=list(config.covariates) or None,
                                count_model=config.count_model, progress=True,
                                participant_labels=config.participant_labels)
    except InputError as error:
        print(f"bids_rim: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except Exception:  # a bug, not bad input: say so with the traceback, and never exit 1 (= one participant failed)
        LOGGER.exception("internal error at group level; please report it with this log")
        return EXIT_INTERNAL
    LOGGER.info("Group report: %s", result.report)
    return 0
