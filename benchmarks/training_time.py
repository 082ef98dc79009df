"""Benchmark: wall time and peak memory of training one rim model on a paper-sized cohort.

Issue #4 sets the goal: self-supervised pretraining plus fine-tuning on an 88-patient synthetic
cohort (about 1,800 lesions) within 20 minutes on 2 cores. This script measures exactly that:

1. it writes the cohort and runs the product's participant level on it with the classification
   benchmark's own code (``prepare_cohort``; both are reused when ``--work`` already has them);
2. it trains ONE model the way ``bids_rim BIDS OUT group --train`` trains its final model
   (``train_member`` on every patient, the default ``TrainConfig``: asym, its pretraining
   objectives, SupCon, early stopping), in a fresh process so that the peak memory reported is
   the training's own, with ``--threads`` torch threads;
3. it writes the wall time of each stage, the epochs run and the peak memory to ``--out``.

A K-fold cross-validation trains K + 1 such models, each fold model on (K − 1)/K of the lesions.

    OMP_NUM_THREADS=2 python benchmarks/training_time.py --work /tmp/bench88     # the goal's setting
    python benchmarks/training_time.py --subjects 4 --pretrain-epochs 1 --finetune-epochs 2 \\
        --work /tmp/w4 --out /tmp/training_time.md                              # a smoke run
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import multiprocessing
import resource
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import classification  # noqa: E402  (the benchmarks folder is not a package)

GOAL_S = 20 * 60
LOGGER = logging.getLogger("benchmarks.training_time")


def measure_training(output_dir: Path, bids_dir: Path, settings: classification.BenchmarkSettings,
                     epochs: dict[str, int], threads: int, device_name: str) -> dict:
    """Load the patches and train one final model on every patient; runs in its own process."""
    import torch

    from bids_rim.bidsio.training_data import load_training_set
    from bids_rim.training.config import TrainConfig
    from bids_rim.training.crossval import train_member
    from bids_rim.training.inference import resolve_device

    logging.basicConfig(level=logging.INFO, format=classification.LOG_FORMAT, datefmt="%H:%M:%S")
    torch.set_num_threads(threads)
    device = resolve_device(device_name)
    started = time.perf_counter()
    participants = pd.read_csv(bids_dir / "participants.tsv", sep="\t", dtype=str)
    data = load_training_set(output_dir, participants, bids_dir / "derivatives" / "rim_annotations")
    meta = data.meta.reset_index(drop=True)
    load_s = time.perf_counter() - started
    config = replace(TrainConfig(seed=settings.seed, patch_size=settings.patch_size,
                                 patch_spacing_mm=settings.patch_spacing_mm), **epochs)
    cpu_started = time.process_time()
    member = train_member(data.patches, meta, sorted(meta["participant_id"].unique()), config, device,
                          seed=config.seed, progress=True, name="final model")
    labels = meta["label"].dropna()
    return {
        "patients": int(meta["participant_id"].nunique()),
        "lesions": len(meta),
        "labelled": len(labels),
        "rim_positive": int(labels.sum()),
        "fine-tuning lesions": int(meta["participant_id"].isin(member.finetune_participants).sum()),
        "load_s": load_s,
        "stage_s": member.stage_seconds,
        "cpu_s": time.process_time() - cpu_started,
        "pretrain_epochs_run": len(member.pretrain_history),
        "finetune_epochs_run": len(member.finetune_history),
        "config": {key: getattr(config, key) for key in ("arch", "pretrain_epochs", "pretrain_objectives",
                                                           "finetune_epochs", "min_finetune_epochs", "patience",
                                                           "batch_size", "width", "patch_size")},
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,  # KiB on Linux
        "device": str(device),
    }


def goal_verdict(total_s: float, subjects: int, threads: int, device: str, epochs: dict[str, int]) -> str:
    """Met or not met, only for a run in the goal's setting (88 patients, default epochs, 2 CPU threads)."""
    if subjects != 88 or threads != 2 or device != "cpu" or epochs:
        return "no verdict: this run is not in the goal's setting (88 patients, default epochs, 2 threads on CPU)"
    return f"{'met' if total_s <= GOAL_S else '**not met**'} ({total_s / 60:.1f} min)"


def write_markdown(path: Path, command: str, machine: str, summary: dict, result: dict, threads: int,
                   verdict: str) -> None:
    """The results page: cohort, per-stage wall time, epochs, peak memory and the goal's verdict."""
    stages = result["stage_s"]
    total = sum(stages.values())
    pretrain_s, finetune_s = stages.get("pretrain", 0.0), stages["finetune"]
    lines = [
        "# Training time of one rim model (issue #4)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine}  ",
        f"Run: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; {threads} torch thread(s) on {result['device']}",
        "",
        f"Cohort: {summary['n_subjects']} synthetic patients, {summary['n_sites']} sites, `{summary['size']}`, "
        f"`{summary['difficulty']}`, seed {summary['seed']}. Participant level (no inference, "
        f"{summary['participant_level_nprocs']} subjects at once): {summary['participant_level_s']:.0f} s. "
        f"Training data: {result['lesions']} lesions of {result['patients']} patients, {result['labelled']} "
        f"with a rater label ({result['rim_positive']} rim+); {result['fine-tuning lesions']} lesions of the "
        "fine-tuning patients (the rest form the inner validation split).",
        "",
        "One model trained as `group --train` trains its final model (`train_member` on every patient), "
        f"configuration `{result['config']}`.",
        "",
        "| stage | wall time (s) | epochs run | s per epoch |",
        "|---|---|---|---|",
        f"| loading the patches | {result['load_s']:.0f} | | |",
        f"| self-supervised pretraining | {pretrain_s:.0f} | {result['pretrain_epochs_run']} | "
        f"{pretrain_s / max(result['pretrain_epochs_run'], 1):.1f} |",
        f"| fine-tuning (early stopping: patience {result['config']['patience']}) | {finetune_s:.0f} | "
        f"{result['finetune_epochs_run']} | {finetune_s / max(result['finetune_epochs_run'], 1):.1f} |",
        f"| **pretraining + fine-tuning** | **{total:.0f}** ({total / 60:.1f} min) | | |",
        "",
        f"CPU time of the training: {result['cpu_s']:.0f} s. Peak resident memory of the training process: "
        f"{result['peak_rss_gib']:.2f} GiB.",
        "",
        f"Goal (issue #4): pretraining + fine-tuning on the 88-patient cohort within {GOAL_S // 60} min on 2 cores: "
        f"{verdict}. A K-fold cross-validation trains K + 1 models: the final one "
        "measured here and K fold models on (K − 1)/K of the lesions each.",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.part")
    partial.write_text("\n".join(lines))
    partial.replace(path)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--subjects", type=int, default=88, help="patients in the synthetic cohort")
    parser.add_argument("--sites", type=int, default=3, help="scanner sites in the cohort")
    parser.add_argument("--size", choices=("full", "small"), default="small",
                        help="volume size; patches are 32³ at 1 mm either way, so training costs the same per lesion")
    parser.add_argument("--seed", type=int, default=2026, help="cohort and training seed")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the training process")
    parser.add_argument("--nprocs", type=int, default=2, help="subjects the participant level runs at once")
    parser.add_argument("--device", default="cpu", help="training device: cpu, cuda[:N] or auto")
    parser.add_argument("--pretrain-epochs", type=int, help="override TrainConfig.pretrain_epochs (smoke runs)")
    parser.add_argument("--finetune-epochs", type=int, help="override TrainConfig.finetune_epochs (smoke runs)")
    parser.add_argument("--work", type=Path, required=True,
                        help="cohort and participant-level outputs (reused when present; a classification "
                             "benchmark --work folder of the same cohort works)")
    parser.add_argument("--out", type=Path, default=classification.RESULTS_DIR / "training_time.md",
                        help="results page")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # The classification benchmark's handlers: every line once, whatever the participant CLI adds.
    logging.getLogger().addHandler(classification._stream_handler("bids_rim"))
    logging.getLogger().setLevel(logging.INFO)
    LOGGER.addHandler(classification._stream_handler())
    LOGGER.propagate = False
    settings = classification.BenchmarkSettings(
        subjects=args.subjects, sites=args.sites, size=args.size, seed=args.seed, folds=1, patch_size=32,
        patch_spacing_mm=1.0, methods=("asym",), quick=False, bootstrap_resamples=0)
    execution = classification.Execution(jobs=args.nprocs, nprocs=args.nprocs, threads=args.threads, device=args.device)
    args.work.mkdir(parents=True, exist_ok=True)
    machine = classification.machine_description(execution)
    bids_dir, output_dir, summary = classification.prepare_cohort(settings, execution, args.work,
                                                                  classification.StageClock())
    epochs = {key: value for key, value in (("pretrain_epochs", args.pretrain_epochs),
                                            ("finetune_epochs", args.finetune_epochs)) if value is not None}
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        result = pool.apply(measure_training, (output_dir, bids_dir, settings, epochs, args.threads, args.device))
    command = shlex.join(["python", "benchmarks/training_time.py", *(argv if argv is not None else sys.argv[1:])])
    total_s = sum(result["stage_s"].values())
    verdict = goal_verdict(total_s, args.subjects, args.threads, result["device"], epochs)
    write_markdown(args.out, command, machine, summary, result, args.threads, verdict)
    LOGGER.info("pretraining + fine-tuning: %.0f s; goal: %s; results in %s", total_s, verdict, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
