"""Classification benchmark: our model, its ablations, the baselines and the oracle, side by side.

    python benchmarks/classification.py                       # the paper-sized run (88 patients, 5 folds), by hand
    python benchmarks/classification.py --subjects 24 --size small --folds 3 --methods asym,radiomics,oracle
    python benchmarks/classification.py --quick --out /tmp/bench   # tiny, for CI (never overwrites results/)

What it does, once for all methods:
1. writes a synthetic cohort (``bids_rim.synth.generate_cohort``, ``realistic`` difficulty) and
   runs the product's own participant level on it (``bids_rim.cli.run.main``, no inference);
2. gathers the patches with the rater's annotations as labels (``load_training_set``): this is
   what a user would train on, rater errors included;
3. matches every pipeline lesion to its true lesion (the truth centroid inside the lesion label
   map, else the nearest pipeline centroid within 4 mm) to get its TRUE class and the oracle's
   decision variable;
4. draws ONE patient-level K-fold split (``patient_folds``, fixed seed) and cross-validates
   every method on it (``cross_validate`` trains on the rater's labels of the training
   patients); every lesion of the test patients that has a true lesion is then predicted and
   scored against its TRUE class;
5. the two observers (the oracle on ``observed_rim_cnr`` and the plain image-contrast observer on
   ``observed_cnr``) get a logistic calibration and a max-F1 threshold fitted on the same
   training patients (with true labels: they are ceilings, not products);
6. metrics from ``bids_rim.training.metrics`` with patient bootstrap 95 % CIs, written as
   ``classification.md``, ``classification.tsv``, per-lesion predictions and ROC/PR plots.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

RESULTS_DIR = Path(__file__).resolve().parent / "results"
STEM = "classification"
MATCH_DISTANCE_MM = 4.0
HEADLINE_METRICS = ("pr_auc", "roc_auc", "partial_roc_auc_fpr0.1", "f1", "sensitivity", "specificity",
                    "balanced_accuracy", "mcc", "ece", "count_icc", "prl4_kappa")
OBSERVERS = {  # name -> (truth column it ranks by, description)
    "oracle": ("observed_rim_cnr", "ideal observer on each lesion's true rim CNR (synthetic truth; the ceiling)"),
    "contrast_observer": ("observed_cnr", "plain shell-minus-core contrast of the noisy QSM over its noise "
                                          "(synthetic truth; fooled by veins and bright neighbours)"),
}
METHOD_DESCRIPTIONS = {
    "asym": "ours: asym QSM net with FLAIR FiLM, self-supervised pretraining and SupCon (default TrainConfig)",
    "asym_no_pretrain": "ablation: asym without pretraining (pretrain_epochs=0)",
    "asym_no_supcon": "ablation: asym without the contrastive term (supcon_weight=0, fixed)",
    "asym_no_flair": "ablation: no FLAIR (arch qsm_only: the asym QSM path, FLAIR ignored)",
    "early_fusion": "ablation: symmetric early fusion (MONAI ResNet-18 on stacked channels)",
    "rimnet": "baseline: RimNet-style two-branch CNN",
    "qsmrimnet": "baseline: QSMRim-Net-style CNN with radiomic rim features",
    "radiomics": "baseline: hand-crafted rim features + random forest",
    **{name: description for name, (_, description) in OBSERVERS.items()},
}
ALL_METHODS = tuple(METHOD_DESCRIPTIONS)
LOGGER = logging.getLogger("bids_rim.benchmark")


@dataclass(frozen=True)
class BenchmarkSettings:
    """Everything that shapes one benchmark run (written into the results)."""

    subjects: int
    sites: int
    size: str
    seed: int
    folds: int
    patch_size: int
    patch_spacing_mm: float
    methods: tuple[str, ...]
    quick: bool
    bootstrap_resamples: int
    threads: int


# ----------------------------------------------------------------------------- cohort


def prepare_cohort(settings: BenchmarkSettings, work: Path) -> tuple[Path, Path, dict]:
    """Write the cohort and run the participant level once (both reused when ``work`` already has them)."""
    from bids_rim.cli.run import main as bids_rim_main
    from bids_rim.synth import generate_cohort

    bids_dir, output_dir = work / "bids", work / "derivatives"
    summary_path = work / "cohort_summary.json"
    if not summary_path.exists():
        started = time.perf_counter()
        summary = asdict(generate_cohort(bids_dir, n_subjects=settings.subjects, n_sites=settings.sites,
                                         difficulty="realistic", size=settings.size, seed=settings.seed,
                                         progress=False))
        summary["generation_s"] = time.perf_counter() - started
        summary_path.write_text(json.dumps(summary, indent=1, default=str))
    summary = json.loads(summary_path.read_text())
    record_path = work / "participant_level.json"
    if not record_path.exists():
        started = time.perf_counter()
        code = bids_rim_main([str(bids_dir), str(output_dir), "participant",
                              "-d", str(bids_dir / "derivatives" / "lesion_masks"), "--work-dir", str(work / "work"),
                              "--no-inference", "--nprocs", "2", "--omp-nthreads", "1",
                              "--patch-size", str(settings.patch_size),
                              "--patch-spacing", str(settings.patch_spacing_mm)])
        expected = sorted(p.name for p in bids_dir.glob("sub-*") if p.is_dir())
        done = {p.name for p in output_dir.glob("sub-*") if any(p.rglob("*_desc-lesions_patches.npz"))}
        record = {"seconds": time.perf_counter() - started, "exit_code": code or 0,
                  "failed": [s for s in expected if s not in done]}
        if not done:
            raise RuntimeError(f"{bids_dir}: the participant level produced no patches (exit code {code})")
        record_path.write_text(json.dumps(record))
    record = json.loads(record_path.read_text())
    summary["participant_level_s"] = record["seconds"]
    summary["participant_level_failed"] = record["failed"]
    return bids_dir, output_dir, summary


def truth_of_lesions(output_dir: Path, bids_dir: Path, meta: pd.DataFrame) -> pd.DataFrame:
    """True class and observer scores of every pipeline lesion (rows aligned with ``meta``).

    A pipeline lesion receives the true lesions whose centroid lies in its label map (else the
    nearest pipeline centroid within 4 mm), with the product's own annotation matcher; a lesion
    holding several true lesions is rim+ when any of them is, and its observer scores are their
    maximum. Lesions with no true lesion keep NaN and are not evaluated.
    """
    import nibabel as nib

    from bids_rim.bidsio.training_data import match_annotations

    truth_dir = bids_dir / "sourcedata" / "synth_truth"
    columns = ["true_label", *(column for column, _ in OBSERVERS.values())]
    result = pd.DataFrame(np.nan, index=meta.index, columns=columns)
    for (participant, session), rows in meta.groupby(["participant_id", "session_id"]):
        prefix = participant if session == "n/a" else f"{participant}_{session}"
        anat = output_dir / participant / ("" if session == "n/a" else session) / "anat"
        table = pd.read_csv(anat / f"{prefix}_desc-lesions_table.tsv", sep="\t", na_values="n/a")
        label_map = nib.load(anat / f"{prefix}_space-QSM_desc-lesions_dseg.nii.gz")
        truth_path = truth_dir / f"{prefix}_truth.tsv"
        if not truth_path.exists():
            raise FileNotFoundError(f"{truth_path}: no synthetic truth for this session")
        truth = pd.read_csv(truth_path, sep="\t", na_values="n/a")
        truth["rim_positive"] = (truth["class"] == "rim+").astype(float)
        row_of_lesion = pd.Series(rows.index, index=rows["lesion_id"].to_numpy())
        for column, source in [("true_label", "rim_positive"), *((c, c) for c, _ in OBSERVERS.values())]:
            matched = match_annotations(table, label_map, truth[["x_mm", "y_mm", "z_mm"]].assign(rim=truth[source]),
                                        max_distance_mm=MATCH_DISTANCE_MM)
            result.loc[row_of_lesion.loc[table["lesion_id"]].to_numpy(), column] = matched.to_numpy()
    return result


def lesion_map_dice(output_dir: Path, bids_dir: Path, meta: pd.DataFrame) -> pd.Series:
    """Dice of the pipeline's QSM-space lesion map with the true lesion map, per session.

    A check on the participant level itself: if its lesions do not lie on the true lesions
    (e.g. a failed FLAIR-to-QSM registration), no classifier can be judged fairly.
    """
    import nibabel as nib

    dice = {}
    for participant, session in meta[["participant_id", "session_id"]].drop_duplicates().itertuples(index=False):
        prefix = participant if session == "n/a" else f"{participant}_{session}"
        anat = output_dir / participant / ("" if session == "n/a" else session) / "anat"
        pipeline = np.asarray(nib.load(anat / f"{prefix}_space-QSM_desc-lesions_dseg.nii.gz").dataobj) > 0
        truth_path = bids_dir / "sourcedata" / "synth_truth" / f"{prefix}_desc-truth_lesions.nii.gz"
        truth = np.asarray(nib.load(truth_path).dataobj) > 0
        if truth.shape != pipeline.shape:
            raise ValueError(f"{truth_path}: grid {truth.shape} differs from the pipeline's QSM grid {pipeline.shape}")
        total = pipeline.sum() + truth.sum()
        dice[prefix] = float(2 * (pipeline & truth).sum() / total) if total else float("nan")
    return pd.Series(dice, name="dice")


# ----------------------------------------------------------------------------- methods


def method_config(method: str, settings: BenchmarkSettings):
    """The TrainConfig of a learned method (``None`` for the observers)."""
    from bids_rim.training.config import TrainConfig

    if method in OBSERVERS:
        return None
    base = TrainConfig(folds=settings.folds, seed=settings.seed, patch_size=settings.patch_size,
                       patch_spacing_mm=settings.patch_spacing_mm, train_final_model=False,
                       bootstrap_resamples=settings.bootstrap_resamples)
    if settings.quick:  # tiny models and epochs: CI checks that the code runs, not how well
        base = replace(base, width=4, pretrain_epochs=1, finetune_epochs=2, batch_size=16,
                       early_fusion_widen_factor=0.125, patience=2)
    variants = {
        "asym": {},
        "asym_no_pretrain": {"pretrain_epochs": 0},
        "asym_no_supcon": {"supcon_weight": 0.0, "learn_supcon_weight": False},
        "asym_no_flair": {"arch": "qsm_only"},
        "early_fusion": {"arch": "early_fusion"},
        "rimnet": {"arch": "rimnet"},
        "qsmrimnet": {"arch": "qsmrimnet"},
        "radiomics": {"arch": "radiomics"},
    }
    return replace(base, **variants[method])


def evaluate_learned(config, patches: np.ndarray, meta: pd.DataFrame, folds: list[list[str]],
                     evaluable: np.ndarray, device) -> pd.DataFrame:
    """Cross-validate on the rater's labels; predict every evaluable lesion of each test fold."""
    from bids_rim.training.crossval import cross_validate, member_probabilities

    cv = cross_validate(patches, meta, config, device, progress=False)
    if [sorted(f) for f in cv.test_participants] != [sorted(f) for f in folds]:
        raise RuntimeError(f"{config.arch}: cross_validate drew a different split from the benchmark's")
    parts = []
    for fold, (member, test_patients) in enumerate(zip(cv.folds, folds), start=1):
        rows = np.flatnonzero(meta["participant_id"].isin(test_patients).to_numpy() & evaluable)
        probabilities = member_probabilities(member, config, patches[rows], device)
        parts.append(pd.DataFrame({"row": rows, "fold": fold, "rim_probability": probabilities,
                                   "threshold": member.threshold}))
    return pd.concat(parts, ignore_index=True)


def evaluate_observer(scores: np.ndarray, true_labels: np.ndarray, meta: pd.DataFrame, folds: list[list[str]],
                      evaluable: np.ndarray) -> pd.DataFrame:
    """An observer's score turned into a probability by a logistic fit on the training patients.

    The fit and the max-F1 threshold use the training patients' TRUE labels: the observers are
    ceilings (they know the truth), so nothing about them is learned from the rater.
    """
    from sklearn.linear_model import LogisticRegression

    from bids_rim.training.calibration import choose_threshold

    patients = meta["participant_id"].to_numpy()
    usable = evaluable & np.isfinite(scores)
    parts = []
    for fold, test_patients in enumerate(folds, start=1):
        in_test = np.isin(patients, test_patients)
        train, test = np.flatnonzero(usable & ~in_test), np.flatnonzero(usable & in_test)
        model = LogisticRegression().fit(scores[train, None], true_labels[train].astype(int))
        threshold = choose_threshold(model.predict_proba(scores[train, None])[:, 1], true_labels[train])
        parts.append(pd.DataFrame({"row": test, "fold": fold,
                                   "rim_probability": model.predict_proba(scores[test, None])[:, 1],
                                   "threshold": threshold}))
    return pd.concat(parts, ignore_index=True)


# ----------------------------------------------------------------------------- metrics and output


def summarise(predictions: pd.DataFrame, settings: BenchmarkSettings) -> pd.DataFrame:
    """One row per method and metric: pooled out-of-fold estimate and patient-bootstrap 95 % CI."""
    from bids_rim.training.metrics import all_metrics, bootstrap_ci

    rows = []
    for method, part in predictions.groupby("method", sort=False):
        arrays = (part["participant_id"].to_numpy(), part["true_label"].to_numpy().astype(int),
                  part["rim_probability"].to_numpy(), part["threshold"].to_numpy())
        estimate = all_metrics(*arrays)
        intervals = bootstrap_ci(*arrays, n_resamples=settings.bootstrap_resamples, seed=settings.seed)
        for metric, value in estimate.items():
            low, high = intervals.get(metric, (np.nan, np.nan))
            rows.append({"method": method, "metric": metric, "estimate": value, "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows)


def plot_curves(predictions: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Pooled out-of-fold ROC and PR curves of every method on one figure each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve, roc_curve

    paths = []
    for kind in ("roc", "pr"):
        figure, axis = plt.subplots(figsize=(6, 5), dpi=110)
        for method, part in predictions.groupby("method", sort=False):
            labels, scores = part["true_label"].astype(int), part["rim_probability"]
            style = {"color": "k", "lw": 2} if method == "oracle" else {"lw": 1.2}
            if kind == "roc":
                x, y, _ = roc_curve(labels, scores)
            else:
                precision, recall, _ = precision_recall_curve(labels, scores)
                x, y = recall, precision
            axis.plot(x, y, label=method, drawstyle="steps-post" if kind == "pr" else "default", **style)
        prevalence = float(predictions.drop_duplicates("row")["true_label"].mean())
        if kind == "roc":
            axis.plot([0, 1], [0, 1], ls=":", color="grey")
            axis.axvline(0.1, ls="--", color="grey", lw=0.8)
            axis.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (true labels, out of fold)")
        else:
            axis.axhline(prevalence, ls=":", color="grey", label=f"chance ({prevalence:.2f})")
            axis.set(xlabel="recall", ylabel="precision", title="Precision-recall (true labels, out of fold)")
        axis.legend(fontsize=7, loc="lower right" if kind == "roc" else "upper right")
        figure.tight_layout()
        path = out_dir / f"{STEM}_{kind}.png"
        figure.savefig(path)
        plt.close(figure)
        paths.append(path)
    return paths


def machine_description() -> str:
    """CPU, cores, OS, Python, torch and git commit of this run."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        model_lines = [line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")]
        cpu = model_lines[0].split(":", 1)[1].strip() if model_lines else cpu
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, check=False).stdout.strip() or "unknown"
    except OSError:
        commit = "unknown"
    return (f"{cpu}; {os.cpu_count()} logical CPUs visible (shared with other work); {platform.system()} "
            f"{platform.release()}; Python {platform.python_version()}; torch {torch.__version__}; "
            f"bids_rim git {commit}")


def _cell(table: pd.DataFrame, method: str, metric: str) -> str:
    row = table[(table["method"] == method) & (table["metric"] == metric)]
    if row.empty or not np.isfinite(row["estimate"].iloc[0]):
        return "n/a"
    estimate, low, high = row[["estimate", "ci_low", "ci_high"]].iloc[0]
    return f"{estimate:.3f} [{low:.3f}, {high:.3f}]"


def _value(table: pd.DataFrame, method: str, metric: str, column: str = "estimate") -> float:
    row = table[(table["method"] == method) & (table["metric"] == metric)]
    return float(row[column].iloc[0]) if not row.empty else float("nan")


def interpretation(table: pd.DataFrame) -> str:
    """Plain sentences of what the PR AUCs say, against the issue's goals; nothing softened."""
    methods = list(dict.fromkeys(table["method"]))
    sentences = []
    baselines = [m for m in ("rimnet", "qsmrimnet", "radiomics", "early_fusion") if m in methods]
    if "asym" in methods:
        ours = _value(table, "asym", "pr_auc")
        if baselines:
            best = max(baselines, key=lambda m: _value(table, m, "pr_auc"))
            margin = ours - _value(table, best, "pr_auc")
            separated = _value(table, "asym", "pr_auc", "ci_low") > _value(table, best, "pr_auc", "ci_high")
            goal = margin >= 0.05 and separated
            sentences.append(
                f"asym reaches a PR AUC of {ours:.3f}; the best baseline is {best} at "
                f"{_value(table, best, 'pr_auc'):.3f} (difference {margin:+.3f}); the intervals "
                f"{'do not overlap' if separated else 'overlap'}. The goal (asym ahead by ≥ 0.05 with "
                f"non-overlapping intervals) is {'met' if goal else 'NOT met'}.")
        if "oracle" in methods:
            gap = _value(table, "oracle", "pr_auc") - ours
            sentences.append(f"The oracle reaches {_value(table, 'oracle', 'pr_auc'):.3f}, {gap:.3f} above asym; the "
                             f"goal (within 0.05 of the oracle) is {'met' if gap <= 0.05 else 'NOT met'}.")
        for ablation in ("asym_no_pretrain", "asym_no_supcon", "asym_no_flair", "early_fusion"):
            if ablation in methods:
                delta = ours - _value(table, ablation, "pr_auc")
                sentences.append(f"Against {ablation} the full model differs by {delta:+.3f} PR AUC"
                                 f"{' (the ablated variant is better)' if delta < 0 else ''}.")
    if "oracle" in methods and "contrast_observer" in methods:
        sentences.append(f"The plain image-contrast observer reaches {_value(table, 'contrast_observer', 'pr_auc'):.3f}: "
                         f"the gap to the oracle is what veins, blooming and bright neighbours cost a naive reader.")
    prevalence = _value(table, methods[0], "prevalence") if methods else float("nan")
    at_chance = [m for m in methods if m not in OBSERVERS and _value(table, m, "pr_auc", "ci_low") <= prevalence]
    if at_chance:
        sentences.append(f"The PR AUC interval of {', '.join(at_chance)} reaches down to chance: on this cohort "
                         f"{'it has' if len(at_chance) == 1 else 'they have'} not shown that {'it' if len(at_chance) == 1 else 'they'} "
                         f"learned the rim.")
    sentences.append(f"Chance PR AUC is the prevalence, {prevalence:.3f}. With this many patients the "
                     f"bootstrap intervals are wide; differences inside them are not evidence.")
    return " ".join(sentences)


def write_markdown(path: Path, table: pd.DataFrame, settings: BenchmarkSettings, summary: dict, command: str,
                   timings: dict[str, float], label_report: dict, plots: list[Path],
                   failures: dict[str, str], pending: list[str]) -> None:
    """The results page: setup, labels, cohort, table with CIs, timings and what the numbers say."""
    methods = list(dict.fromkeys(table["method"]))
    header = "| method | " + " | ".join(HEADLINE_METRICS) + " | time (s) |"
    paper_sized = (settings.subjects, settings.sites, settings.size, settings.folds, settings.patch_size,
                   set(settings.methods)) == (88, 3, "full", 5, 32, set(ALL_METHODS))
    lines = [
        f"# Classification benchmark{' (QUICK: CI smoke run, numbers meaningless)' if settings.quick else ''}",
        "",
        *([] if paper_sized or settings.quick else
          ["**This is NOT the paper-sized run** (88 patients, 3 sites, full size, 5 folds, every method): it is a "
           "smaller configuration that fits the time available; read its intervals accordingly.", ""]),
        f"- Command: `{command}`",
        f"- Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; seed {settings.seed}",
        f"- Machine: {machine_description()}",
        f"- Settings: {settings.subjects} subjects, {settings.sites} sites, size `{settings.size}`, "
        f"{settings.folds}-fold patient-level cross-validation (one split for every method), patches "
        f"{settings.patch_size}³ at {settings.patch_spacing_mm} mm, {settings.bootstrap_resamples} bootstrap "
        f"resamples over patients.",
        "",
        "## Labels",
        "",
        "Every model is **trained on the rater's annotations** (`derivatives/rim_annotations`, rater errors "
        "included), as a user would train on their own annotations. Every method, the oracle included, is "
        "**evaluated against the TRUE class** from the synthetic truth (`sourcedata/synth_truth`), so the "
        "numbers measure what is real, not agreement with the rater.",
        f"Evaluated lesions: {label_report['evaluated']} of {label_report['pipeline_lesions']} pipeline lesions "
        f"({label_report['true_rim_positive']} truly rim+) in {label_report['evaluated_patients']} patients; "
        f"{label_report['no_truth']} pipeline lesions had no true lesion within {MATCH_DISTANCE_MM:g} mm and "
        f"{label_report['outside_folds']} lesions belong to patients without any rater label (never tested). "
        f"{label_report['annotated_matched']} pipeline lesions received a rater label. "
        f"Rater vs truth on the evaluated lesions: {label_report['rater_unlabelled']} not annotated, rater "
        f"sensitivity {label_report['rater_sensitivity']:.3f}, specificity {label_report['rater_specificity']:.3f}.",
        "",
        "## Cohort",
        "",
        f"`realistic` difficulty: {summary['n_lesions']} true lesions, {summary['n_rim_positive']} rim+ "
        f"(prevalence {summary['lesion_prevalence']:.3f}); the generator's own **oracle PR AUC over the whole "
        f"cohort is {summary['oracle_pr_auc']:.3f}** (image-contrast observer "
        f"{summary['image_contrast_pr_auc']:.3f}). Generation took {summary.get('generation_s', float('nan')):.0f} s, "
        f"the participant level {summary['participant_level_s']:.0f} s. "
        + (f"**The participant level failed for {len(summary['participant_level_failed'])} subject(s) "
           f"({', '.join(summary['participant_level_failed'])}); they are left out of everything below.**"
           if summary["participant_level_failed"] else "It succeeded for every subject."),
        "",
        f"Participant-level lesions vs the true lesions (Dice of the QSM-space label maps, per session): median "
        f"{summary['lesion_map_dice']['median']:.2f} (range {summary['lesion_map_dice']['min']:.2f}-"
        f"{summary['lesion_map_dice']['max']:.2f}); "
        + (f"**{len(summary['lesion_map_dice']['below_0.5'])} session(s) below 0.5** "
           f"({', '.join(summary['lesion_map_dice']['below_0.5'])}): there the pipeline's lesions do not lie on the "
           f"true ones (the rater's masks are drawn on FLAIR, so this points at the FLAIR-to-QSM alignment) and "
           f"those lesions mostly drop out of the evaluation for lack of a true match."
           if summary["lesion_map_dice"]["below_0.5"] else "no session below 0.5."),
        "",
        "## Results (pooled out-of-fold, estimate [95 % CI])",
        "",
        header,
        "|" + "---|" * (len(HEADLINE_METRICS) + 2),
        *(f"| {m} | " + " | ".join(_cell(table, m, k) for k in HEADLINE_METRICS) + f" | {timings.get(m, 0):.0f} |"
          for m in methods),
        "",
        *([f"- **Not finished (run still going or cut short): {', '.join(pending)}**"] if pending else []),
        *(f"- **{m} FAILED** and is missing from the table: {reason}" for m, reason in failures.items()),
        "",
        "Methods: " + "; ".join(f"**{m}** {METHOD_DESCRIPTIONS[m]}" for m in methods) + ".",
        "Threshold-based metrics use each fold's own threshold (validation patients for models, training "
        "patients for the observers). count_icc and prl4_kappa compare per-patient rim+ counts with the truth.",
        "",
        "## What the numbers say",
        "",
        interpretation(table),
        "",
        *(f"![{p.stem}]({p.name})" for p in plots),
        "",
    ]
    path.write_text("\n".join(lines))


def label_report(meta: pd.DataFrame, truth: pd.DataFrame, evaluable: np.ndarray, in_folds: np.ndarray) -> dict:
    """Counts of what was evaluated and how the rater's labels compare with the truth."""
    evaluated = evaluable & in_folds
    rater, true = meta["label"].to_numpy()[evaluated], truth["true_label"].to_numpy()[evaluated]
    annotated = ~np.isnan(rater)
    positives, negatives = annotated & (true == 1), annotated & (true == 0)
    return {
        "pipeline_lesions": int(len(meta)), "evaluated": int(evaluated.sum()),
        "annotated_matched": int(meta["label"].notna().sum()),
        "evaluated_patients": int(meta.loc[evaluated, "participant_id"].nunique()),
        "true_rim_positive": int((true == 1).sum()), "no_truth": int((~evaluable).sum()),
        "outside_folds": int((evaluable & ~in_folds).sum()), "rater_unlabelled": int((~annotated).sum()),
        "rater_sensitivity": float((rater[positives] == 1).mean()) if positives.any() else float("nan"),
        "rater_specificity": float((rater[negatives] == 0).mean()) if negatives.any() else float("nan"),
    }


# ----------------------------------------------------------------------------- driver


def write_outputs(out_dir: Path, predictions: pd.DataFrame, table: pd.DataFrame, settings: BenchmarkSettings,
                  summary: dict, command: str, timings: dict[str, float], labels: dict,
                  failures: dict[str, str]) -> None:
    """Metrics TSV, per-lesion predictions, ROC/PR plots and the results page."""
    table.to_csv(out_dir / f"{STEM}.tsv", sep="\t", index=False, float_format="%.4f")
    predictions.drop(columns="row").to_csv(out_dir / f"{STEM}_predictions.tsv", sep="\t", index=False,
                                           float_format="%.5f")
    plots = plot_curves(predictions, out_dir)
    pending = [m for m in settings.methods if m not in timings and m not in failures]
    write_markdown(out_dir / f"{STEM}.md", table, settings, summary, command, timings, labels, plots, failures,
                   pending)


def run_benchmark(settings: BenchmarkSettings, out_dir: Path, work: Path, command: str) -> pd.DataFrame:
    """The whole benchmark; returns the long metrics table (also written to ``out_dir``)."""
    import torch

    from bids_rim.bidsio.training_data import load_training_set
    from bids_rim.training.crossval import patient_folds

    torch.set_num_threads(settings.threads)
    device = torch.device("cpu")
    bids_dir, output_dir, summary = prepare_cohort(settings, work)
    participants = pd.read_csv(bids_dir / "participants.tsv", sep="\t", dtype=str)
    data = load_training_set(output_dir, participants, bids_dir / "derivatives" / "rim_annotations")
    meta = data.meta.reset_index(drop=True)
    truth = truth_of_lesions(output_dir, bids_dir, meta)
    dice = lesion_map_dice(output_dir, bids_dir, meta)
    summary["lesion_map_dice"] = {"median": float(dice.median()), "min": float(dice.min()), "max": float(dice.max()),
                                  "below_0.5": [name for name, value in dice.items() if value < 0.5]}
    evaluable = truth["true_label"].notna().to_numpy()
    folds = patient_folds(meta, settings.folds, settings.seed)
    in_folds = meta["participant_id"].isin([p for fold in folds for p in fold]).to_numpy()
    LOGGER.info("%d lesions, %d evaluable; folds %s", len(meta), int((evaluable & in_folds).sum()), folds)

    out_dir.mkdir(parents=True, exist_ok=True)
    labels = label_report(meta, truth, evaluable, in_folds)
    predictions, tables, timings, failures = [], [], {}, {}
    for method in settings.methods:
        started = time.perf_counter()
        LOGGER.info("method %s", method)
        try:
            if method in OBSERVERS:
                scores = truth[OBSERVERS[method][0]].to_numpy()
                part = evaluate_observer(scores, truth["true_label"].to_numpy(), meta, folds, evaluable)
            else:
                part = evaluate_learned(method_config(method, settings), data.patches, meta, folds, evaluable, device)
        except Exception as error:  # noqa: BLE001 -- one method crashing must not lose the others' hours
            LOGGER.error("method %s failed: %s", method, error)
            failures[method] = f"{type(error).__name__}: {error}"
            continue
        timings[method] = time.perf_counter() - started
        part.insert(0, "method", method)
        rows = part["row"].to_numpy()
        part["participant_id"] = meta["participant_id"].to_numpy()[rows]
        part["lesion_id"] = meta["lesion_id"].to_numpy()[rows]
        part["rater_label"] = meta["label"].to_numpy()[rows]
        part["true_label"] = truth["true_label"].to_numpy()[rows].astype(int)
        predictions.append(part)
        tables.append(summarise(part, settings))
        # Written after every method, so that a long run cut short still leaves what it finished.
        write_outputs(out_dir, pd.concat(predictions, ignore_index=True), pd.concat(tables, ignore_index=True),
                      settings, summary, command, timings, labels, failures)
    if not predictions:
        raise RuntimeError(f"every method failed: {failures}")
    table = pd.concat(tables, ignore_index=True)
    write_outputs(out_dir, pd.concat(predictions, ignore_index=True), table, settings, summary, command, timings,
                  labels, failures)
    if failures:
        raise RuntimeError(f"method(s) failed (results written without them): {failures}")
    return table


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=88)
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--size", choices=("full", "small"), default="full")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--patch-size", type=int, default=32)
    parser.add_argument("--patch-spacing", type=float, default=1.0)
    parser.add_argument("--methods", default=",".join(ALL_METHODS),
                        help=f"comma-separated subset of: {', '.join(ALL_METHODS)}")
    parser.add_argument("--bootstrap", type=int, default=500, help="bootstrap resamples over patients")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    parser.add_argument("--quick", action="store_true",
                        help="tiny cohort and models for CI (8 small subjects, 2 folds, 16³ patches at 2 mm); "
                             "requires --out")
    parser.add_argument("--out", type=Path, help=f"results folder (default {RESULTS_DIR})")
    parser.add_argument("--work", type=Path, help="cohort and participant-level outputs (reused when present; "
                                                  "default a temporary folder)")
    args = parser.parse_args(argv)
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    unknown = [m for m in methods if m not in ALL_METHODS]
    if unknown:
        parser.error(f"unknown method(s) {unknown}; choose from {', '.join(ALL_METHODS)}")
    if args.quick and args.out is None:
        parser.error("--quick needs --out (quick results must not overwrite benchmarks/results)")
    if args.quick:
        args.subjects, args.sites, args.size, args.folds = 8, 2, "small", 2
        args.patch_size, args.patch_spacing, args.bootstrap = 16, 2.0, min(args.bootstrap, 100)
    args.methods = methods
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(name)s | %(message)s", datefmt="%H:%M:%S")
    settings = BenchmarkSettings(args.subjects, args.sites, args.size, args.seed, args.folds, args.patch_size,
                                 args.patch_spacing, args.methods, args.quick, args.bootstrap, args.threads)
    command = "python benchmarks/classification.py " + " ".join(sys.argv[1:] if argv is None else argv)
    out_dir = args.out or RESULTS_DIR
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
        run_benchmark(settings, out_dir, args.work, command)
    else:
        with tempfile.TemporaryDirectory(prefix="bids_rim_bench_") as work:
            run_benchmark(settings, out_dir, Path(work), command)
    print(out_dir / f"{STEM}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
