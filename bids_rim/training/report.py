"""What a training run writes beside the model file: metrics tables, plots and the model card."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.calibration import calibration_curve  # noqa: E402
from sklearn.metrics import precision_recall_curve, roc_curve  # noqa: E402

METRIC_DESCRIPTIONS = {
    "fold": "cross-validation fold (1..K); 'pooled' rows pool all out-of-fold predictions",
    "threshold": ("decision threshold on the calibrated rim probability, chosen (max F1) on the fold's "
                  "inner validation patients"),
    "temperature": "temperature T of the Platt scaling sigma(logit / T + b) fitted on the inner validation patients",
    "calibration_bias": ("bias b of the Platt scaling sigma(logit / T + b): the shift from the balanced training "
                         "prior to the real one"),
    "n_lesions": "labelled test lesions", "n_rim_positive": "rim+ test lesions",
    "prevalence": "fraction of rim+ test lesions",
    "pr_auc": "area under the precision-recall curve (average precision); chance = prevalence",
    "roc_auc": "area under the ROC curve; chance = 0.5",
    "partial_roc_auc_fpr0.1": "McClish-standardised ROC AUC over false-positive rate 0-0.1; chance = 0.5",
    "f1": "F1 at the threshold", "sensitivity": "recall of rim+ at the threshold",
    "specificity": "recall of rim- at the threshold", "precision": "positive predictive value at the threshold",
    "balanced_accuracy": "mean of sensitivity and specificity", "mcc": "Matthews correlation coefficient",
    "ece": "expected calibration error (10 equal-width bins)", "n_patients": "test patients",
    "count_icc": "ICC(2,1) between true and predicted rim+ counts per patient",
    "count_mean_abs_error": "mean absolute error of the per-patient rim+ count",
    "prl4_kappa": "Cohen's kappa of the per-patient decision '4 or more rim+ lesions'; n/a when truth and model "
                  "give every patient one and the same decision (kappa is 0/0 then)",
}


def write_fold_metrics(fold_metrics: pd.DataFrame, pooled: dict[str, float], path: Path,
                       intervals: dict[str, tuple[float, float]] | None = None) -> Path:
    """Per-fold metrics TSV (+ pooled row) with a JSON sidecar describing each column.

    ``intervals`` (the bootstrap over patients of the pooled predictions) become ``<metric>_ci_low``
    and ``<metric>_ci_high`` columns, filled in the pooled row only (n/a in the fold rows: a fold's
    handful of test patients has no interval of its own here).
    """
    pooled_row = {"fold": "pooled", **pooled}
    for name, (low, high) in (intervals or {}).items():
        pooled_row[f"{name}_ci_low"], pooled_row[f"{name}_ci_high"] = low, high
    table = pd.concat([fold_metrics, pd.DataFrame([pooled_row])], ignore_index=True)
    table.to_csv(path, sep="\t", index=False, na_rep="n/a", float_format="%.6g", lineterminator="\n")
    sidecar = {column: {"Description": _column_description(column)} for column in table.columns}
    path.with_suffix(".json").write_text(json.dumps(sidecar, indent=2) + "\n")
    return path


def _column_description(column: str) -> str:
    for suffix, bound in (("_ci_low", "lower"), ("_ci_high", "upper")):
        if column.endswith(suffix):
            metric = column.removesuffix(suffix)
            return (f"{bound} bound of the 95 % bootstrap interval (over patients) of {metric}, pooled row only: "
                    + METRIC_DESCRIPTIONS.get(metric, metric))
    return METRIC_DESCRIPTIONS.get(column, column)


def plot_curves(predictions: pd.DataFrame, out_dir: Path, stem: str) -> dict[str, Path]:
    """ROC, precision-recall and reliability plots of the out-of-fold predictions (PNG)."""
    labels, probabilities = predictions["label"].to_numpy(), predictions["rim_probability"].to_numpy()
    paths: dict[str, Path] = {}
    if len(np.unique(labels)) < 2:
        return paths
    figure, axis = plt.subplots(figsize=(4, 4), dpi=100)
    for fold, part in predictions.groupby("fold"):
        if part["label"].nunique() == 2:
            fpr, tpr, _ = roc_curve(part["label"], part["rim_probability"])
            axis.plot(fpr, tpr, lw=0.8, alpha=0.5, label=f"fold {fold}")
    fpr, tpr, _ = roc_curve(labels, probabilities)
    axis.plot(fpr, tpr, color="k", lw=2, label="pooled")
    axis.plot([0, 1], [0, 1], ls=":", color="grey")
    axis.axvline(0.1, ls="--", color="grey", lw=0.8)
    axis.set(xlabel="false positive rate", ylabel="sensitivity", title="ROC (out-of-fold)")
    axis.legend(fontsize=7)
    paths["roc"] = _save(figure, out_dir / f"{stem}_roc.png")

    figure, axis = plt.subplots(figsize=(4, 4), dpi=100)
    precision, recall, _ = precision_recall_curve(labels, probabilities)
    axis.plot(recall, precision, color="k", lw=2, label="pooled")
    axis.axhline(labels.mean(), ls=":", color="grey", label=f"chance ({labels.mean():.2f})")
    axis.set(xlabel="recall (sensitivity)", ylabel="precision", title="Precision-recall (out-of-fold)", ylim=(0, 1.02))
    axis.legend(fontsize=7)
    paths["pr"] = _save(figure, out_dir / f"{stem}_pr.png")

    figure, axis = plt.subplots(figsize=(4, 4), dpi=100)
    observed, predicted = calibration_curve(labels, probabilities, n_bins=10, strategy="uniform")
    axis.plot(predicted, observed, marker="o", color="k")
    axis.plot([0, 1], [0, 1], ls=":", color="grey")
    axis.set(xlabel="predicted rim probability", ylabel="observed rim+ fraction", title="Reliability (out-of-fold)")
    paths["reliability"] = _save(figure, out_dir / f"{stem}_reliability.png")
    return paths


def _save(figure: plt.Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, metadata={"Software": None})
    plt.close(figure)
    return path


def _fmt(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _annotation_lines(annotations: dict[str, Any] | None) -> list[str]:
    """The model card's line on how many rim annotations matched a lesion, and which files lost some."""
    if not annotations:
        return []
    lines = [(f"- Annotations: {annotations['matched']} of {annotations['rows']} rows in {annotations['files']} "
              f"file(s) matched a lesion, {annotations['unmatched']} unmatched (matched: inside the lesion or within "
              f"{annotations['max_distance_mm']:.3g} mm of its centroid)")]
    lines += [f"  - `{name}`: {unmatched} of {rows} unmatched"
              for name, (unmatched, rows) in annotations.get("files_with_unmatched_rows", {}).items()]
    left_out = annotations.get("files_left_out", [])
    if left_out:
        lines.append("  - not used (their participant-level run failed): " + ", ".join(f"`{n}`" for n in left_out))
    return lines


def _init_lines(init_from: dict[str, str] | None) -> list[str]:
    """The model card's line naming the model file training started from."""
    if not init_from:
        return ["- Starting point: trained from scratch"]
    return [f"- Starting point: initialised from {init_from['path']} (sha256 {init_from['sha256']})"]


def _warning_lines(warnings: list[str]) -> list[str]:
    """The training's warnings (few rim+ lesions in a fold), where the card's reader meets the numbers."""
    if not warnings:
        return []
    return ["## Warnings", "", *[f"- {warning}" for warning in warnings], ""]


def write_model_card(path: Path, *, config: dict[str, Any], data_summary: dict[str, Any], pooled: dict[str, float],
                     intervals: dict[str, tuple[float, float]], fold_metrics: pd.DataFrame, synthetic: bool,
                     model_file: str, plots: dict[str, Path], threshold: float,
                     pretrain_embedding_std: list[float] | None = None) -> Path:
    """A markdown model card: data, sites, counts, metrics with 95 % CIs, calibration, use and limits."""
    headline = ["pr_auc", "roc_auc", "partial_roc_auc_fpr0.1", "f1", "sensitivity", "specificity", "precision",
                "balanced_accuracy", "mcc", "ece", "count_icc", "prl4_kappa"]
    lines = [f"# Model card: bids_rim rim classifier (`{config['arch']}`)", ""]
    if synthetic:
        lines += ["> **Trained on synthetic data.** This model has only seen lesions simulated by `bids_rim.synth`.",
                  "> It must be fine-tuned on annotated local data before any research use, "
                  "and it is never for clinical use.", ""]
    lines += ["## Data", "", f"- Lesions: {data_summary['n_lesions']} ({data_summary['n_labelled']} labelled, "
              f"{data_summary['n_rim_positive']} rim+, prevalence {_fmt(data_summary['prevalence'])})",
              f"- Patients: {data_summary['n_patients']} ({data_summary['n_labelled_patients']} with labels)",
              "- Sites: " + ", ".join(f"{site} ({n} lesions)" for site, n in data_summary["sites"].items()),
              f"- Lesion outlines: {data_summary.get('lesion_outline', 'given')} (the participant level's "
              "`--lesion-outline`; use the same setting with this model)",
              f"- Patches: {config['patch_size']}³ voxels at {float(config['patch_spacing_mm']):.3g} mm",
              *_annotation_lines(data_summary.get("annotations")),
              *_init_lines(data_summary.get("init_from")), "",
              *_warning_lines(data_summary.get("warnings", [])),
              "## Evaluation", "",
              f"{config['folds']}-fold cross-validation by patient "
              "(folds balanced in rim+ lesions, rim− lesions and sites). "
              "Pretraining in each fold saw only that fold's training patients. Each fold's threshold and "
              "calibration (temperature and bias) were chosen on inner-validation patients; "
              "the numbers below pool the out-of-fold "
              "predictions, with 95 % bootstrap intervals over patients.", "",
              "| metric | pooled | 95 % CI | per-fold mean ± sd |", "|---|---|---|---|"]
    for name in headline:
        low, high = intervals.get(name, (float("nan"), float("nan")))
        column = fold_metrics[name] if name in fold_metrics else pd.Series(dtype=float)
        lines.append(f"| {name} | {_fmt(pooled.get(name))} | {_fmt(low)}–{_fmt(high)} | "
                     f"{_fmt(float(column.mean()))} ± {_fmt(float(column.std()))} |")
    lines += ["", f"Chance level for PR AUC is the prevalence ({_fmt(pooled.get('prevalence'))}).", "",
              "| fold | lesions | rim+ | PR AUC | ROC AUC | F1 | threshold |", "|---|---|---|---|---|---|---|"]
    for _, row in fold_metrics.iterrows():
        lines.append(f"| {int(row['fold'])} | {int(row['n_lesions'])} | {int(row['n_rim_positive'])} | "
                     f"{_fmt(row['pr_auc'])} | "
                     f"{_fmt(row['roc_auc'])} | {_fmt(row['f1'])} | {_fmt(row['threshold'])} |")
    lines.append("")
    if pretrain_embedding_std:
        lines += ["Self-supervised pretraining, last-epoch embedding spread (mean per-dimension std of unit-norm QSM "
                  "embeddings; near 0 would mean collapse) per model: "
                  + ", ".join(_fmt(v) for v in pretrain_embedding_std) + ".", ""]
    lines += ["## Calibration and decision", "",
              f"Probabilities are Platt-scaled per ensemble member (a temperature and a bias that undoes the "
              f"balanced training prior, fitted on inner-validation patients); the expected calibration error of the "
              f"pooled out-of-fold predictions is {_fmt(pooled.get('ece'))}. The model file's decision threshold "
              f"({threshold:.3f}) maximises F1 on the out-of-fold predictions. At inference the final model scores "
              "each lesion and its flip; `rim_uncertainty` is the spread over those views and Monte Carlo dropout "
              "samples of the head (every fold model joins with `ensemble=True`).", ""]
    if plots:
        lines += ["## Plots", ""] + [f"- {kind}: `{p.name}`" for kind, p in plots.items()] + [""]
    lines += ["## Intended use and limits", "",
              "- Research tool: ranks MS lesions by the probability of a paramagnetic rim on QSM, "
              "conditioned on FLAIR.",
              "- Not a medical device; a rater should review every rim+ call "
              "(veins along the lesion edge are the usual mimic).",
              "- Input must follow bids_rim's patch contract "
              "(QSM minus NAWM median in ppm, FLAIR / NAWM median, lesion mask).",
              "- Performance on a new site, scanner or QSM pipeline is unknown until measured there: "
              "fine-tune and re-validate.",
              "", "## Training configuration", "", f"Model file: `{model_file}`", "", "```json",
              json.dumps(config, indent=2, sort_keys=True), "```", ""]
    path.write_text("\n".join(lines))
    return path
