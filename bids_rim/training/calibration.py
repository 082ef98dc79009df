"""Temperature scaling and the decision threshold, both chosen on validation data only."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import precision_recall_curve

_TEMPERATURES = np.exp(np.linspace(np.log(0.25), np.log(20.0), 400))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Temperature ``T`` minimising the validation negative log-likelihood of ``σ(z / T)``.

    A deterministic search over 400 log-spaced values in [0.25, 20] (the lower bound keeps
    separable validation data from pushing probabilities to exactly 0 or 1); 1.0 when the labels hold
    only one class (nothing to calibrate against).
    """
    logits, labels = np.asarray(logits, float), np.asarray(labels, float)
    if len(np.unique(labels)) < 2:
        return 1.0
    eps = 1e-7
    probabilities = sigmoid(logits[None, :] / _TEMPERATURES[:, None]).clip(eps, 1 - eps)
    nll = -(labels * np.log(probabilities) + (1 - labels) * np.log(1 - probabilities)).mean(1)
    return float(_TEMPERATURES[int(np.argmin(nll))])


def choose_threshold(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The probability threshold that maximises F1 on validation data (0.5 without both classes)."""
    labels = np.asarray(labels).astype(int)
    if len(np.unique(labels)) < 2:
        return 0.5
    precision, recall, thresholds = precision_recall_curve(labels, probabilities)
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
    return float(thresholds[int(np.argmax(f1))])
