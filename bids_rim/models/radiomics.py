"""Radiomics baseline: hand-crafted rim features with a scikit-learn ensemble of trees.

Not a neural network: it follows the :class:`RimClassifier` protocol (``fit`` / ``predict_proba``
on patch arrays) that the cross-validation harness uses for every model kind.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier

from bids_rim.models.rim_features import rim_features


class RimClassifier(Protocol):
    """What the harness needs from a non-neural classifier."""

    def fit(self, patches: np.ndarray, labels: np.ndarray) -> RimClassifier: ...

    def predict_proba(self, patches: np.ndarray) -> np.ndarray:
        """Rim+ probability (N,) per patch."""
        ...


def patch_features(patches: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Rim features (N, F) of patches (N, 3, P, P, P), computed in batches."""
    rows = [
        rim_features(torch.from_numpy(np.ascontiguousarray(patches[start : start + batch_size], dtype=np.float32)))
        for start in range(0, len(patches), batch_size)
    ]
    return torch.cat(rows).numpy() if rows else np.zeros((0, 0), dtype=np.float32)


class RadiomicsClassifier:
    """Random forest (``estimator="random_forest"``) or gradient boosting on rim features.

    Class imbalance: balanced class weights (forest) or balanced sample weights (boosting).
    """

    def __init__(self, estimator: str = "random_forest", n_estimators: int = 300, seed: int = 0) -> None:
        if estimator == "random_forest":
            self.model = RandomForestClassifier(
                n_estimators=n_estimators, class_weight="balanced", min_samples_leaf=2, random_state=seed, n_jobs=1
            )
        elif estimator == "gradient_boosting":
            self.model = HistGradientBoostingClassifier(class_weight="balanced", random_state=seed)
        else:
            raise ValueError(f"unknown estimator {estimator!r}; choose random_forest or gradient_boosting")
        self.estimator = estimator

    def fit(self, patches: np.ndarray, labels: np.ndarray) -> RadiomicsClassifier:
        labels = np.asarray(labels).astype(int)
        if len(np.unique(labels)) < 2:
            raise ValueError("the radiomics classifier needs both rim+ and rim- lesions to fit")
        self.model.fit(patch_features(patches), labels)
        return self

    def predict_proba(self, patches: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(patch_features(patches))[:, 1]
