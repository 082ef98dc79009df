"""Inference: the model file as a :class:`RimModel` that scores lesion patches.

Probability = mean over ensemble members (fold models and final model) and flip views of the
member-calibrated ``σ(z / T_m)``; uncertainty = their standard deviation; label = probability
at or above the model's own threshold.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from bids_rim.errors import InputError
from bids_rim.models import get_model
from bids_rim.training.calibration import sigmoid
from bids_rim.training.checkpoint import load_checkpoint
from bids_rim.training.prediction import TTA_FLIPS, predict_logits

PREDICTION_COLUMNS = ("rim_probability", "rim_uncertainty", "rim_label")


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
    """A loaded rim classifier (an ensemble of members with their temperatures)."""

    def __init__(self, members: list[nn.Module], temperatures: list[float], threshold: float, patch_size: int,
                 device: torch.device, metadata: dict, tta_flips: tuple[tuple[int, ...], ...] = TTA_FLIPS) -> None:
        self.members = members
        self.temperatures = temperatures
        self.threshold = threshold
        self.patch_size = patch_size
        self.device = device
        self.metadata = metadata
        self.tta_flips = tta_flips

    def predict(self, patches: np.ndarray, batch_size: int = 64, tta: bool = True, ensemble: bool = True,
                mc_dropout_samples: int = 0) -> pd.DataFrame:
        """Rim probability, uncertainty and label per patch of ``patches`` (N, 3, P, P, P).

        ``tta`` adds the flip views; ``ensemble=False`` uses only the last member (the final
        model trained on all data): about ``len(members)`` times faster, with an uncertainty
        from the flip views alone. ``mc_dropout_samples > 0`` adds that many Monte Carlo dropout
        passes per member and view (seeded, so repeated calls give the same numbers).
        """
        patches = np.asarray(patches)
        expected = (3, self.patch_size, self.patch_size, self.patch_size)
        if patches.ndim != 5 or patches.shape[1:] != expected:
            raise InputError(f"patches of shape {patches.shape} do not fit this model (expected (N, {', '.join(map(str, expected))}))")
        if len(patches) == 0:
            return pd.DataFrame({"rim_probability": pd.Series(dtype=float), "rim_uncertainty": pd.Series(dtype=float),
                                 "rim_label": pd.Series(dtype=int)})
        flips = self.tta_flips if tta else ((),)
        chosen = list(zip(self.members, self.temperatures)) if ensemble else [(self.members[-1], self.temperatures[-1])]
        views = []
        for member, temperature in chosen:
            views.append(sigmoid(predict_logits(member, patches, self.device, batch_size, flips) / temperature))
            if mc_dropout_samples > 0:
                torch.manual_seed(0)
                for _ in range(mc_dropout_samples):
                    logits = predict_logits(member, patches, self.device, batch_size, flips, mc_dropout=True)
                    views.append(sigmoid(logits / temperature))
                member.eval()
        probabilities = np.concatenate(views)  # (members × samples × views, N)
        probability = probabilities.mean(0)
        return pd.DataFrame({
            "rim_probability": probability,
            "rim_uncertainty": probabilities.std(0),
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
                    device, dict(payload["training"]))
