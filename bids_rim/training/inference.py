"""Inference: the model file as a :class:`RimModel` that scores lesion patches.

Probability = mean over the chosen members (by default the final model only; optionally every
fold model too) and flip views of the member-calibrated ``σ(z / T_m + b_m)`` (Platt scaling);
uncertainty = standard deviation over those views and Monte Carlo dropout samples; label =
probability at or above the model's own threshold.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from bids_rim.errors import InputError
from bids_rim.models import get_model
from bids_rim.training.calibration import calibrated
from bids_rim.training.checkpoint import load_checkpoint
from bids_rim.training.prediction import TTA_FLIPS, predict_logits

PREDICTION_COLUMNS = ("rim_probability", "rim_uncertainty", "rim_label")
# Monte Carlo dropout samples of the head per view in the default prediction: nearly free (the
# head is a small MLP on the pooled embedding) and it gives the final model alone an uncertainty.
DEFAULT_MC_DROPOUT_SAMPLES = 8


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → CUDA when available else CPU; ``cpu``, ``cuda``, ``cuda:N`` as asked (checked)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"--device {name!r}: not a device (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device {name!r}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"--device {name!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    elif device.type != "cpu":
        raise InputError(f"--device {name!r}: unsupported device type (use auto, cpu, cuda or cuda:N)")
    return device


class RimModel:
    """A loaded rim classifier (an ensemble of members with their Platt temperatures and biases)."""

    def __init__(self, members: list[nn.Module], temperatures: list[float], threshold: float, patch_size: int,
                 device: torch.device, metadata: dict, tta_flips: tuple[tuple[int, ...], ...] = TTA_FLIPS,
                 biases: list[float] | None = None) -> None:
        self.members = members
        self.temperatures = temperatures
        self.biases = list(biases) if biases is not None else [0.0] * len(members)
        self.threshold = threshold
        self.patch_size = patch_size
        self.device = device
        self.metadata = metadata
        self.tta_flips = tta_flips

    def predict(self, patches: np.ndarray, batch_size: int = 64, tta: bool = True, ensemble: bool = False,
                mc_dropout_samples: int = DEFAULT_MC_DROPOUT_SAMPLES) -> pd.DataFrame:
        """Rim probability, uncertainty and label per patch of ``patches`` (N, 3, P, P, P).

        Default (fast, about two forward passes per lesion): the final model (trained on all
        data) with its flip views, plus ``mc_dropout_samples`` Monte Carlo dropout samples of its
        head per view. ``ensemble=True`` adds every fold model (about ``len(members)`` times
        slower). ``rim_probability`` is the mean of the deterministic (dropout-off) calibrated
        views, which is what the calibration was fitted on; ``rim_uncertainty`` is the standard
        deviation over all views, MC dropout samples included (seeded: repeated calls agree).
        """
        patches = np.asarray(patches)
        expected = (3, self.patch_size, self.patch_size, self.patch_size)
        if patches.ndim != 5 or patches.shape[1:] != expected:
            raise InputError(f"patches of shape {patches.shape} do not fit this model "
                             f"(expected (N, {', '.join(map(str, expected))}))")
        if len(patches) == 0:
            return pd.DataFrame({"rim_probability": pd.Series(dtype=float), "rim_uncertainty": pd.Series(dtype=float),
                                 "rim_label": pd.Series(dtype=int)})
        flips = self.tta_flips if tta else ((),)
        calibrations = list(zip(self.members, self.temperatures, self.biases))
        chosen = calibrations if ensemble else calibrations[-1:]
        generator = torch.Generator().manual_seed(0)
        deterministic, sampled = [], []
        for member, temperature, bias in chosen:
            logits = predict_logits(member, patches, self.device, batch_size, flips, mc_dropout_samples, generator)
            probabilities = calibrated(logits, temperature, bias)
            deterministic.append(probabilities[: len(flips)])
            sampled.append(probabilities[len(flips):])
        probability = np.concatenate(deterministic).mean(0)
        return pd.DataFrame({
            "rim_probability": probability,
            "rim_uncertainty": np.concatenate(deterministic + sampled).std(0),
            "rim_label": (probability >= self.threshold).astype(int),
        })


def load_rim_model(path: Path, device: torch.device | str = "cpu", expected_arch: str | None = None) -> RimModel:
    """Load a model file (see :mod:`bids_rim.training.checkpoint`) onto ``device``."""
    device = resolve_device(device) if isinstance(device, str) else device
    payload = load_checkpoint(Path(path), expected_arch)
    members = []
    for state_dict in payload["state_dicts"]:
        model = get_model(payload["arch"], **payload["arch_config"])
        try:
            model.load_state_dict(state_dict)
        except RuntimeError as error:
            raise InputError(f"{path}: weights do not match architecture {payload['arch']!r} "
                             f"({str(error).splitlines()[0]})") from None
        members.append(model.to(device).eval())
    return RimModel(members, list(payload["temperatures"]), float(payload["threshold"]), int(payload["patch_size"]),
                    device, dict(payload["training"]), biases=list(payload["biases"]))
