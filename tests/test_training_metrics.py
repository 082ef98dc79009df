"""Metrics: known values, patient-level agreement and bootstrap intervals."""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

from bids_rim.training.calibration import (
    calibrated,
    choose_threshold,
    fit_platt,
    prior_shift_bias,
    sigmoid,
)
from bids_rim.training.metrics import (
    all_metrics,
    bootstrap_ci,
    expected_calibration_error,
    icc_absolute_agreement,
    lesion_metrics,
)


def test_perfect_and_inverted_rankings():
    labels = np.array([0, 0, 0, 1, 1, 0, 0, 1])
    scores = labels * 0.8 + 0.1
    perfect = lesion_metrics(labels, scores, 0.5)
    assert perfect["pr_auc"] == perfect["roc_auc"] == perfect["f1"] == perfect["mcc"] == 1.0
    assert perfect["partial_roc_auc_fpr0.1"] == 1.0
    inverted = lesion_metrics(labels, 1 - scores, 0.5)
    assert inverted["roc_auc"] == 0.0 and inverted["sensitivity"] == 0.0 and inverted["specificity"] == 0.0


def test_ece_and_icc_known_values():
    assert expected_calibration_error(np.array([0, 1]), np.array([0.0, 1.0])) == 0.0
    assert abs(expected_calibration_error(np.array([0, 0]), np.array([0.75, 0.75])) - 0.75) < 1e-12
    counts = np.array([0, 2, 5, 7, 1])
    assert abs(icc_absolute_agreement(counts, counts) - 1.0) < 1e-12
    assert icc_absolute_agreement(counts, counts[::-1]) < 0.5


def _lesions_with_counts(true_counts: list[int], predicted_counts: list[int], per_patient: int = 6):
    """Patients with ``per_patient`` lesions each, the first k truly rim+ and the first m scored 0.9 (else 0.1)."""
    patients = np.repeat(np.arange(len(true_counts)), per_patient)
    position = np.tile(np.arange(per_patient), len(true_counts))
    labels = (position < np.repeat(true_counts, per_patient)).astype(int)
    scores = np.where(position < np.repeat(predicted_counts, per_patient), 0.9, 0.1)
    return patients, labels, scores


def test_patient_metrics_use_the_four_prl_decision():
    # Counts 4 vs 3 straddle the >= 4 decision: decisions (T, F, F, T) vs (F, F, F, T), observed
    # agreement 3/4, chance agreement 0.5 * 0.25 + 0.5 * 0.75 = 0.5, so kappa = 0.5 by hand.
    # A decision at >= 3 or >= 5 would agree everywhere (kappa 1).
    result = all_metrics(*_lesions_with_counts([4, 1, 0, 5], [3, 1, 0, 5]), 0.5)
    assert result["prl4_kappa"] == 0.5 and result["n_patients"] == 4.0
    assert result["count_mean_abs_error"] == 0.25 and result["count_icc"] < 1.0
    # Counts that differ on the same side of 4 keep every decision: kappa 1, the ICC sees the miscount.
    same_side = all_metrics(*_lesions_with_counts([4, 3, 0, 5], [5, 3, 0, 4]), 0.5)
    assert same_side["prl4_kappa"] == 1.0 and same_side["count_mean_abs_error"] == 0.5
    assert 0.5 < same_side["count_icc"] < 1.0
    exact = all_metrics(*_lesions_with_counts([4, 1, 0], [4, 1, 0]), 0.5)
    assert exact["prl4_kappa"] == 1.0 and exact["count_icc"] == 1.0


def test_bootstrap_interval_brackets_the_estimate():
    rng = np.random.default_rng(0)
    patients = np.repeat(np.arange(20), 10)
    labels = (rng.random(200) < 0.2).astype(int)
    scores = np.clip(labels * 0.4 + rng.random(200) * 0.6, 0, 1)
    point = all_metrics(patients, labels, scores, 0.5)["pr_auc"]
    low, high = bootstrap_ci(patients, labels, scores, 0.5, n_resamples=100, seed=1)["pr_auc"]
    assert low <= point <= high and high - low > 0.01
    again = bootstrap_ci(patients, labels, scores, 0.5, n_resamples=100, seed=1)["pr_auc"]
    assert again == (low, high)


def _temperature_only(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature of σ(z / T) with the least validation log-loss: what calibration was before Platt."""
    def nll(log_t: float) -> float:
        z = logits * np.exp(-log_t)
        return float(np.sum(np.logaddexp(0.0, z) - labels * z))
    return float(np.exp(minimize_scalar(nll, bounds=(np.log(0.25), np.log(20.0)), method="bounded").x))


def test_temperature_and_threshold_from_validation():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(-1.0, 2.0, 2000)  # calibrated log-odds
    labels = (rng.random(2000) < sigmoid(true_logits)).astype(int)
    overconfident = 4 * true_logits
    temperature, bias = fit_platt(overconfident, labels)
    assert 3.0 < temperature < 5.5 and abs(bias) < 0.3
    probabilities = calibrated(overconfident, temperature, bias)
    assert (expected_calibration_error(labels, probabilities)
            < expected_calibration_error(labels, sigmoid(overconfident)))
    threshold = choose_threshold(probabilities, labels)
    assert lesion_metrics(labels, probabilities, threshold)["f1"] >= lesion_metrics(labels, probabilities, 0.9)["f1"]
    assert (fit_platt(overconfident, np.zeros(2000)) == (1.0, 0.0)
            and choose_threshold(probabilities, np.zeros(2000)) == 0.5)


def test_platt_bias_undoes_a_balanced_training_prior_that_temperature_cannot():
    rng = np.random.default_rng(1)
    true_logits = rng.normal(-3.5, 2.0, 3000)  # calibrated log-odds at about 8 % prevalence
    labels = (rng.random(3000) < sigmoid(true_logits)).astype(int)
    shift = prior_shift_bias(labels.mean())  # what a class-balanced sampler adds: logit(0.5) - logit(pi)
    balanced = true_logits - shift  # the same ranking, centred as if rim+ were half of the lesions
    temperature_only = sigmoid(balanced / _temperature_only(balanced, labels))
    temperature, bias = fit_platt(balanced, labels, shift)
    platt = calibrated(balanced, temperature, bias)
    assert 0.8 < temperature < 1.25 and abs(bias - shift) < 0.3
    assert expected_calibration_error(labels, platt) < 0.03 < expected_calibration_error(labels, temperature_only)
    assert abs(platt.mean() - labels.mean()) < 0.02
    # Two validation lesions of each class: the prior keeps the fit near the analytic correction.
    few_t, few_b = fit_platt(np.array([-1.0, 0.5, 2.0, 3.0]), np.array([0, 0, 1, 1]), shift)
    assert abs(np.log(few_t)) < 1.5 and abs(few_b - shift) < 1.5
    assert fit_platt(balanced, np.zeros(3000), shift) == (1.0, shift)
