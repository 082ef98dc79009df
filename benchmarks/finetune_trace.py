"""How does fine-tuning move a network's ranking of the test lesions, epoch by epoch?

A diagnostic retrain of chosen folds of one benchmark run.

    python benchmarks/finetune_trace.py RESULTS_DIR --work WORK --folds 1 4 [--method asym]
        [--jobs 2] [--out finetune_trace.md]

RESULTS_DIR is the ``--out`` of one ``classification.py`` run that holds ``--method`` and WORK its
``--work`` folder. Each chosen fold is trained again exactly as the run trained it (the run's
split, training seed, configuration and fold seed, through ``train_member``), keeping a copy of
the weights after each fine-tuning epoch (``finetune(after_epoch=...)``); each copy is then looked
at on the fold's test lesions: their PR AUC
against the TRUE class for the whole logit, for asym's linear read-out path alone and for its MLP
head alone, and the inner-validation PR AUC (rater labels) that early stopping judged by. Epoch 0 is
the starting point: after pretraining, with the read-out path set to the
logistic regression on the fit patients' read-out and the head's last layer at zero.

Each fold also says which epoch ``readout_fallback`` (the start weighed against every eligible
epoch on the inner validation) would have kept: the rule replayed on the traced scores.

The look never feeds back: early stopping still sees only the inner-validation patients, and the
final member's test probabilities must equal the run's to 1e-4 (checked; else the page says so
and the script exits with 1, as the trace would then not be of the run's training). The test
PR AUC of one epoch is for understanding only; choosing an epoch by it would be test-set tuning.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from seed_spread import cpu_comparison, load_labelled_run, write_page  # the sibling script (benchmarks/)
from sklearn.metrics import average_precision_score

REPRODUCTION_TOLERANCE = 1e-4
QUICK_TITLE = "(QUICK:"  # how classification.py titles the page of a --quick run (tiny models and epochs)
TRACE_COLUMNS = {"test_pr_auc": "logit", "test_pr_auc_readout_path": "read-out path",
                 "test_pr_auc_head": "MLP head"}


def logits_and_heads(model, patches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The whole logit and the MLP head's part of it (all of it for networks without a read-out path)."""
    import torch

    model.eval()
    device = next(model.parameters()).device
    logits, heads = [], []
    with torch.inference_mode():
        for start in range(0, len(patches), 64):
            out = model(torch.as_tensor(np.ascontiguousarray(patches[start : start + 64]), dtype=torch.float32,
                                        device=device))
            logits.append(out["logit"].float().cpu().numpy())
            heads.append(out.get("head_logit", out["logit"]).float().cpu().numpy())
    return np.concatenate(logits), np.concatenate(heads)


def look_at(model, test_patches: np.ndarray, test_labels: np.ndarray, val_patches: np.ndarray,
            val_labels: np.ndarray) -> dict[str, float]:
    """Inner-validation PR AUC (rater labels) and the test PR AUCs (true class) of one epoch's weights."""
    logit, head = logits_and_heads(model, test_patches)
    return {"val_pr_auc": average_precision_score(val_labels, logits_and_heads(model, val_patches)[0]),
            "test_pr_auc": average_precision_score(test_labels, logit),
            "test_pr_auc_readout_path": average_precision_score(test_labels, logit - head),
            "test_pr_auc_head": average_precision_score(test_labels, head)}


@dataclass
class RetrainedFold:
    """One fold of a run trained again exactly as the run trained it, with its test lesions."""

    member: Any  # bids_rim.training.crossval.FoldModel
    key: pd.MultiIndex  # (participant_id, lesion_id) of the test lesions, in row order
    test_patches: np.ndarray
    test_labels: np.ndarray  # the TRUE class
    val_patches: np.ndarray  # the inner-validation patients' labelled lesions
    val_labels: np.ndarray  # their rater labels
    device: Any


def retrain_fold(fold: int, test_patients: list[str], config, data_folder: Path, true_labels: pd.Series,
                 threads: int, after_finetune_epoch=None) -> RetrainedFold:
    """Retrain one fold as ``classification.run_fold_task`` does: same threads, determinism, training
    patients, configuration and fold seed (``config.seed + 100 * fold``)."""
    from classification import _worker_setup  # the sibling script: same threads and determinism

    from bids_rim.training.crossval import train_member
    from bids_rim.training.inference import resolve_device

    _worker_setup(threads)
    device = resolve_device("cpu")
    patches = np.load(data_folder / "patches.npy", mmap_mode="r")
    meta = pd.read_pickle(data_folder / "meta.pkl")
    patients = meta["participant_id"].to_numpy()
    rows = np.flatnonzero(np.isin(patients, test_patients) & meta["evaluable"].to_numpy())
    key = pd.MultiIndex.from_frame(meta.iloc[rows][["participant_id", "lesion_id"]])
    labels = true_labels.reindex(key).to_numpy(dtype=float)
    if np.isnan(labels).any():
        raise ValueError(f"fold {fold}: {int(np.isnan(labels).sum())} test lesion(s) have no prediction in the run")
    member = train_member(patches, meta.drop(columns="evaluable"), sorted(set(patients) - set(test_patients)), config,
                          device, seed=config.seed + 100 * fold, name=f"retrained fold {fold}",
                          after_finetune_epoch=after_finetune_epoch)
    val_rows = np.flatnonzero(np.isin(patients, member.validation_participants) & meta["label"].notna().to_numpy())
    return RetrainedFold(member, key, np.asarray(patches[rows]), labels.astype(int), np.asarray(patches[val_rows]),
                         meta["label"].to_numpy()[val_rows].astype(int), device)


@dataclass
class RunToRetrain:
    """What retraining chosen folds of a finished ``classification.py`` run needs: its seeds, the
    method's configuration as the run built it, its patient split and its lesions' true classes."""

    split_seed: int
    training_seed: int
    n_folds: int
    folds: list[int]  # the chosen folds, 1-based
    config: Any  # bids_rim.training.config.TrainConfig
    test_patients: list[list[str]]  # per fold of the run, 1-based fold k at index k - 1
    data_folder: Path
    true_labels: pd.Series  # indexed by (participant_id, lesion_id)
    run: pd.DataFrame  # the run's per-lesion predictions

    def tasks(self, threads: int = 1) -> list[tuple]:
        """Arguments of :func:`retrain_fold` (and its wrappers), one tuple per chosen fold."""
        return [(fold, self.test_patients[fold - 1], self.config, self.data_folder, self.true_labels, threads)
                for fold in self.folds]


def load_run_to_retrain(parser: argparse.ArgumentParser, results: Path, work: Path, method: str,
                        folds: list[int] | None) -> RunToRetrain:
    """Read a run's page, predictions and work folder for retraining ``folds`` (default: all) of ``method``;
    a run this cannot retrain exactly is a usage error (``parser.error``)."""
    from classification import BenchmarkSettings, method_config

    from bids_rim.training.crossval import patient_folds

    split_seed, training_seed, run = load_labelled_run(parser, results, method)
    n_folds = int(run["fold"].max())
    chosen = folds or list(range(1, n_folds + 1))
    if not set(chosen) <= set(range(1, n_folds + 1)):
        parser.error(f"--folds must lie within 1..{n_folds}, got {chosen}")
    recorded = json.loads((work / "benchmark_work.json").read_text())
    quick = QUICK_TITLE in (results / "classification.md").read_text().split("\n", 1)[0]
    settings = BenchmarkSettings(subjects=recorded["subjects"], sites=recorded["sites"], size=recorded["size"],
                                 seed=split_seed, folds=n_folds, patch_size=recorded["patch_size"],
                                 patch_spacing_mm=recorded["patch_spacing_mm"], methods=(method,), quick=quick,
                                 bootstrap_resamples=0, training_seed=training_seed)
    data_folder = work / "training_data"
    meta = pd.read_pickle(data_folder / "meta.pkl")
    return RunToRetrain(split_seed, training_seed, n_folds, chosen, method_config(method, settings),
                        patient_folds(meta.drop(columns="evaluable"), n_folds, split_seed), data_folder,
                        run[run["method"] == method].set_index(["participant_id", "lesion_id"])["true_label"], run)


def map_folds(function, tasks: list[tuple], jobs: int) -> list:
    """``function(*task)`` for every task, on ``jobs`` spawned processes (one torch thread each) or here."""
    if jobs <= 1:
        return [function(*task) for task in tasks]
    with multiprocessing.get_context("spawn").Pool(min(jobs, len(tasks))) as pool:
        return pool.starmap(function, tasks)


def trace_fold(fold: int, test_patients: list[str], config, data_folder: Path, true_labels: pd.Series,
               threads: int) -> dict:
    """Retrain one fold (:func:`retrain_fold`), keeping the weights of every epoch, then look at each:
    its inner-validation and test PR AUCs.

    The weights are copied during training and looked at afterwards, so training runs exactly as
    in the benchmark; the inner-validation PR AUC recomputed from them must equal the one training
    recorded (checked), which also checks that the copies are the weights training judged.
    """
    import copy

    from bids_rim.models import get_model
    from bids_rim.training.crossval import member_probabilities

    states: list[dict] = []
    fold_data = retrain_fold(fold, test_patients, config, data_folder, true_labels, threads,
                             after_finetune_epoch=lambda epoch, model: states.append(copy.deepcopy(model.state_dict())))
    member = fold_data.member
    model = get_model(config.arch, **config.model_kwargs()).to(fold_data.device)
    looks = []
    for epoch, state in enumerate(states):
        model.load_state_dict(state)
        looks.append({"fold": fold, "epoch": epoch, **look_at(model, fold_data.test_patches, fold_data.test_labels,
                                                               fold_data.val_patches, fold_data.val_labels)})
    trace = pd.DataFrame(looks)
    history = pd.DataFrame(member.finetune_history)
    recorded = history["val_pr_auc"].to_numpy()
    if not np.allclose(trace["val_pr_auc"].to_numpy()[1:], recorded, atol=1e-6):
        raise RuntimeError(f"fold {fold}: the inner-validation PR AUC of the copied weights differs from training's")
    trace["loss"] = np.concatenate([[np.nan], history["loss"].to_numpy()])
    probabilities = member_probabilities(member, config, fold_data.test_patches, fold_data.device)
    key = fold_data.key
    return {"fold": fold, "trace": trace, "best_epoch": member.best_epoch,
            "predictions": pd.DataFrame({"participant_id": key.get_level_values(0),
                                         "lesion_id": key.get_level_values(1), "traced_probability": probabilities})}


def reproduction_gap(result: dict, run: pd.DataFrame, method: str) -> float:
    """Largest difference between the retrained member's test probabilities and the run's."""
    ran = run[(run["method"] == method) & (run["fold"] == result["fold"])]
    joined = result["predictions"].merge(ran, on=["participant_id", "lesion_id"], validate="one_to_one")
    if len(joined) != len(ran):
        return float("inf")
    return float(np.abs(joined["traced_probability"] - joined["rim_probability"]).max())


def fallback_epoch(result: dict, config) -> int:
    """The epoch ``readout_fallback`` would have kept, replayed on the traced inner-validation scores.

    With the fall-back the start (epoch 0) enters early stopping with its own score; nothing else
    changes (scoring the start draws no random numbers), so training follows the same epochs and
    stops no later (its best score is never below the run's). The replay of the rule without the
    start must give the run's own kept epoch (checked).
    """
    from bids_rim.training.early_stopping import replay

    scores = result["trace"]["val_pr_auc"].to_numpy()
    first_eligible = min(config.min_finetune_epochs, config.finetune_epochs)
    if replay(scores[1:], first_eligible, config.patience) != result["best_epoch"] and not config.readout_fallback:
        raise RuntimeError(f"fold {result['fold']}: the replayed rule does not keep the run's epoch "
                           f"{result['best_epoch']}")
    return replay(scores[1:], first_eligible, config.patience, start_score=float(scores[0]))


def reproduction_words(gap: float, results_dir: Path) -> str:
    """Whether the retrained member is the run's, and if not, the two CPUs (a lead on why)."""
    if gap <= REPRODUCTION_TOLERANCE:
        return "reproduced"
    return f"NOT reproduced: this is not the run training; {cpu_comparison(results_dir)}"


def fold_section(result: dict, gap: float, config, results_dir: Path) -> list[str]:
    """Markdown for one fold: the epochs, the kept one marked, what the fall-back to the start would
    have kept, and whether the run (``results_dir``) was reproduced."""
    trace, best = result["trace"], result["best_epoch"]
    start, kept = trace.iloc[0], trace[trace["epoch"] == best].iloc[0]
    peak = trace.loc[trace["test_pr_auc"].idxmax()]
    fallback = fallback_epoch(result, config)
    lines = [f"## Fold {result['fold']}", "",
             f"Kept epoch {best} (inner validation); test PR AUC {start['test_pr_auc']:.3f} at the start, "
             f"{kept['test_pr_auc']:.3f} at the kept epoch, highest {peak['test_pr_auc']:.3f} at epoch "
             f"{int(peak['epoch'])}. With `readout_fallback` (replayed) epoch {fallback} would be kept: test PR AUC "
             f"{trace.loc[trace['epoch'] == fallback, 'test_pr_auc'].iloc[0]:.3f}. Retrained member against the run: "
             f"largest probability difference {gap:.1e} "
             f"({reproduction_words(gap, results_dir)}).",
             "", "| epoch | train loss | inner-val PR AUC (rater) | " + " | ".join(
                 f"test PR AUC, {name}" for name in TRACE_COLUMNS.values()) + " |",
             "|---|---|---|" + "---|" * len(TRACE_COLUMNS)]
    for row in trace.itertuples(index=False):
        marker = " (kept)" if row.epoch == best else ""
        train = "" if np.isnan(row.loss) else f"{row.loss:.4f}"
        lines.append(f"| {row.epoch}{marker} | {train} | {row.val_pr_auc:.3f} | " + " | ".join(
            f"{getattr(row, column):.3f}" for column in TRACE_COLUMNS) + " |")
    return [*lines, ""]


def plot(results: list[dict], path: Path) -> None:
    """Inner-validation and test PR AUC against the epoch, one panel per fold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(1, len(results), figsize=(4.5 * len(results), 3.6), squeeze=False, sharey=True)
    for axis, result in zip(axes[0], results, strict=True):
        trace = result["trace"]
        axis.plot(trace["epoch"], trace["val_pr_auc"], "o-", ms=3, label="inner validation (rater labels)")
        for column, name in TRACE_COLUMNS.items():
            axis.plot(trace["epoch"], trace[column], "-", label=f"test, {name} (true class)")
        axis.axvline(result["best_epoch"], color="grey", ls=":", label="kept epoch")
        axis.set(title=f"fold {result['fold']}", xlabel="fine-tuning epoch (0 = start)")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    axes[0][0].set_ylabel("PR AUC")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a classification.py --out folder holding --method")
    parser.add_argument("--work", type=Path, required=True, help="that run's --work folder")
    parser.add_argument("--folds", type=int, nargs="+", required=True, help="the run's folds (1-based) to retrain")
    parser.add_argument("--method", default="asym", help="a network method of the run (default asym)")
    parser.add_argument("--jobs", type=int, default=1, help="folds retrained at once, one torch thread each")
    parser.add_argument("--out", type=Path, help="markdown file to write (default: print); the plot goes beside it")
    args = parser.parse_args(argv)

    chosen = load_run_to_retrain(parser, args.results, args.work, args.method, args.folds)
    results = map_folds(trace_fold, chosen.tasks(), args.jobs)

    gaps = [reproduction_gap(result, chosen.run, args.method) for result in results]
    command = "python benchmarks/finetune_trace.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [f"# Fine-tuning traced epoch by epoch: {args.method}", "", f"Command: `{command}`", "",
             f"Run: `{args.results}` (split seed {chosen.split_seed}, training seed {chosen.training_seed}, "
             f"{chosen.n_folds} folds). "
             "Test PR AUC is per fold, on the fold's evaluable test lesions against their true class, from "
             "raw logits (calibration does not change a fold's ranking). It is a diagnostic: nothing in "
             "training saw it.", ""]
    for result, gap in zip(results, gaps, strict=True):
        lines += fold_section(result, gap, chosen.config, args.results)
    if args.out is not None:
        plot(results, args.out.with_suffix(".png"))
        lines.append(f"![PR AUC by epoch]({args.out.with_suffix('.png').name})")
    write_page("\n".join(lines) + "\n", args.out)
    return 0 if max(gaps) <= REPRODUCTION_TOLERANCE else 1


if __name__ == "__main__":
    raise SystemExit(main())
