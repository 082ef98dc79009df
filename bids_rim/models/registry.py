"""One registry of every classifier, selectable by name (``get_model("asym", width=8)``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from bids_rim.models.asym import AsymQsmFlairNet
from bids_rim.models.early_fusion import EarlyFusionResNet18
from bids_rim.models.qsm_only import build_qsm_only
from bids_rim.models.qsmrimnet import QsmRimNetStyle
from bids_rim.models.radiomics import RadiomicsClassifier, RimClassifier
from bids_rim.models.rimnet import RimNetStyle

_NEURAL: dict[str, Callable[..., nn.Module]] = {
    "asym": AsymQsmFlairNet,
    "rimnet": RimNetStyle,
    "qsmrimnet": QsmRimNetStyle,
    "qsm_only": build_qsm_only,
    "early_fusion": EarlyFusionResNet18,
}
_CLASSIC: dict[str, Callable[..., RimClassifier]] = {"radiomics": RadiomicsClassifier}


def available_models() -> list[str]:
    """Every registered name, neural networks first."""
    return [*_NEURAL, *_CLASSIC]


def is_neural(name: str) -> bool:
    """True for torch networks, False for the scikit-learn classifiers (fit/predict_proba)."""
    _check_name(name)
    return name in _NEURAL


def _check_name(name: str) -> None:
    if name not in _NEURAL and name not in _CLASSIC:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(available_models())}")


def get_model(name: str, **cfg: Any) -> nn.Module | RimClassifier:
    """Build the model ``name`` with keyword configuration ``cfg`` (e.g. ``width``, ``conditioning``).

    Torch networks take (B, 3, P, P, P) and return ``{"logit": (B,), "embedding": (B, D)}``.
    """
    _check_name(name)
    factory = _NEURAL.get(name) or _CLASSIC[name]
    try:
        return factory(**cfg)
    except TypeError as error:
        raise ValueError(f"model {name!r}: bad configuration {cfg}: {error}") from None
