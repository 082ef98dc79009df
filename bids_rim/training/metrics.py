"""Lesion- and patient-level metrics, with bootstrap confidence intervals over patients.

PR AUC is the headline metric (rim+ is rare; ROC AUC flatters under imbalance). Patient-level
agreement uses rim+ counts per patient (ICC) and the ``>= 4`` PRL decision (Cohen's κ).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
from sklearn import metrics as skm

PRL_PATIENT_THRESHOLD = 4


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray, n_bins: int = 10) -> float:
    """ECE: ``Σ_b (n_b / N) |mean(y)_b - mean(p)_b|`` over equal-width probability bins."""
    labels, probabilities = np.asarray(labels, float), np.asarray(probabilities, float)
    bins = np.minimum((probabilities * n_bins).astype(int), n_bins - 1)
    error = 0.0
    for b in np.unique(bins):
        in_bin = bins == b
        error += in_bin.mean() * abs(labels[in_bin].mean() - probabilities[in_bin].mean())
    return float(error)


def icc_absolute_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """ICC(2,1), two-way random effects, absolute agreement, single rater (Shrout & Fleiss)."""
    data = np.stack([np.asarray(a, float), np.asarray(b, float)], axis=1)
    n, k = data.shape
    if n < 2:
        return float("nan")
    grand = data.mean()
    ss_rows = k * ((data.mean(1) - grand) ** 2).sum()
    ss_cols = n * ((data.mean(0) - grand) ** 2).sum()
    ss_error = ((data - grand) ** 2).sum() - ss_rows - ss_cols
    ms_rows, ms_cols = ss_rows / (n - 1), ss_cols / (k - 1)
    ms_error = ss_error / ((n - 1) * (k - 1))
    denominator = ms_rows + (k - 1) * ms_error + k * (ms_cols - ms_error) / n
    return float((ms_rows - ms_error) / denominator) if denominator > 0 else float("nan")


def lesion_metrics(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> dict[str, float]:
    """Lesion-level metrics of rim+ probabilities against 0/1 labels at a decision threshold."""
    labels = np.asarray(labels).astype(int)
    probabilities = np.asarray(probabilities, float)
    predicted = (probabilities >= threshold).astype(int)
    both_classes = len(np.unique(labels)) == 2
    tn, fp, fn, tp = skm.confusion_matrix(labels, predicted, labels=[0, 1]).ravel()
    nan = float("nan")
    return {
        "n_lesions": float(len(labels)),
        "n_rim_positive": float(labels.sum()),
        "prevalence": float(labels.mean()) if len(labels) else nan,
        "pr_auc": float(skm.average_precision_score(labels, probabilities)) if both_classes else nan,
        "roc_auc": float(skm.roc_auc_score(labels, probabilities)) if both_classes else nan,
        # McClish-standardised partial AUC over FPR in [0, 0.1] (0.5 = chance, 1 = perfect).
        "partial_roc_auc_fpr0.1": float(skm.roc_auc_score(labels, probabilities, max_fpr=0.1)) if both_classes else nan,
        "f1": float(skm.f1_score(labels, predicted, zero_division=0)),
        "sensitivity": float(tp / (tp + fn)) if tp + fn else nan,
        "specificity": float(tn / (tn + fp)) if tn + fp else nan,
        "precision": float(tp / (tp + fp)) if tp + fp else nan,
        "balanced_accuracy": float(skm.balanced_accuracy_score(labels, predicted)) if both_classes else nan,
        "mcc": float(skm.matthews_corrcoef(labels, predicted)) if both_classes else nan,
        "ece": expected_calibration_error(labels, probabilities),
    }


def patient_metrics(
    patients: np.ndarray, labels: np.ndarray, probabilities: np.ndarray, threshold: float
) -> dict[str, float]:
    """Per-patient rim+ counts (truth vs model at ``threshold``): ICC and κ of the ≥ 4 PRL decision."""
    frame = pd.DataFrame({"patient": patients, "true": np.asarray(labels).astype(int),
                          "predicted": (np.asarray(probabilities) >= threshold).astype(int)})
    counts = frame.groupby("patient")[["true", "predicted"]].sum()
    true_decision = counts["true"] >= PRL_PATIENT_THRESHOLD
    predicted_decision = counts["predicted"] >= PRL_PATIENT_THRESHOLD
    # κ is undefined (0/0) when truth and model give every patient one and the same decision, e.g. when
    # nobody reaches 4 PRLs on either side: n/a, not the 1.0 of trivial agreement. (Constant but
    # opposite decisions are a defined κ of 0: observed and chance agreement are both 0.)
    decisions = set(true_decision) | set(predicted_decision)
    kappa = float("nan") if len(decisions) <= 1 else float(skm.cohen_kappa_score(true_decision, predicted_decision))
    return {
        "n_patients": float(len(counts)),
        "count_icc": icc_absolute_agreement(counts["true"].to_numpy(), counts["predicted"].to_numpy()),
        "count_mean_abs_error": float((counts["true"] - counts["predicted"]).abs().mean()),
        "prl4_kappa": kappa,
    }


def all_metrics(patients: np.ndarray, labels: np.ndarray, probabilities: np.ndarray,
                threshold: float) -> dict[str, float]:
    """Lesion-level and patient-level metrics together."""
    return {**lesion_metrics(labels, probabilities, threshold),
            **patient_metrics(patients, labels, probabilities, threshold)}


def bootstrap_ci(
    patients: np.ndarray,
    labels: np.ndarray,
    probabilities: np.ndarray,
    threshold: float | np.ndarray,
    *,
    n_resamples: int = 500,
    seed: int = 0,
    level: float = 0.95,
    metric_fn: Callable[..., dict[str, float]] = all_metrics,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap CIs resampling *patients* with replacement (lesions stay with their patient).

    ``threshold`` may be one value or one per lesion (e.g. each cross-validation fold's own).
    """
    threshold = np.asarray(threshold, float) if np.ndim(threshold) else threshold
    patients = np.asarray(patients)
    labels, probabilities = np.asarray(labels), np.asarray(probabilities)
    unique = np.unique(patients)
    rows_of = {p: np.flatnonzero(patients == p) for p in unique}
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {}
    for _ in range(n_resamples):
        drawn = rng.choice(unique, size=len(unique), replace=True)
        rows = np.concatenate([rows_of[p] for p in drawn])
        # Relabel patients so a patient drawn twice counts as two patients.
        new_ids = np.concatenate([np.full(len(rows_of[p]), i) for i, p in enumerate(drawn)])
        drawn_threshold = threshold[rows] if np.ndim(threshold) else threshold
        for name, value in metric_fn(new_ids, labels[rows], probabilities[rows], drawn_threshold).items():
            samples.setdefault(name, []).append(value)
    tail = (1 - level) / 2 * 100
    return {
        name: (float(np.nanpercentile(values, tail)), float(np.nanpercentile(values, 100 - tail)))
        if np.isfinite(values).any() else (float("nan"), float("nan"))
        for name, values in samples.items()
    }
