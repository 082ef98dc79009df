"""The model file: a plain ``torch.save`` dict, loadable with ``torch.load(weights_only=True)``.

Keys: ``format_version``, ``arch``, ``arch_config`` (kwargs of ``get_model``), ``state_dicts``
(the ensemble: fold models and the final model), ``temperatures`` and ``biases`` (one Platt
scaling ``σ(z / T + b)`` per member), ``temperature`` (their median, for display), ``threshold``
(decision threshold on the ensemble probability), ``patch_size``, ``patch_spacing_mm``,
``training`` (metadata: config, counts, metrics, synthetic or not).

Versions: 2 added ``biases`` and came with a new ``asym`` network (light FLAIR stem, lesion
region pooling). Version 1 files are refused with a message saying to retrain: their asym weights
no longer fit, and their temperature-only calibration gave probabilities near 0.5.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bids_rim.bidsio.derivatives import atomic_write_with
from bids_rim.errors import InputError
from bids_rim.models import available_models, is_neural

FORMAT_VERSION = 2
# Version-2 files written before ``region_pool_stages`` existed pooled the asym features at P/8 only;
# files written before ``rim_readout`` existed have no read-out, and those written before
# ``readout_logit`` existed pass it through the MLP only, and those written before ``readout_cnr``
# existed read out five numbers without the contrast-to-noise ratios.
LEGACY_ASYM_CONFIG = {"region_pool_stages": [2], "rim_readout": False, "readout_logit": False, "readout_cnr": False}
REQUIRED_KEYS = ("format_version", "arch", "arch_config", "state_dicts", "temperatures", "biases", "threshold",
                 "patch_size", "patch_spacing_mm", "training")


def save_checkpoint(
    path: Path,
    *,
    arch: str,
    arch_config: dict[str, Any],
    state_dicts: list[dict[str, torch.Tensor]],
    temperatures: list[float],
    biases: list[float],
    threshold: float,
    patch_size: int,
    patch_spacing_mm: float,
    training: dict[str, Any],
) -> Path:
    """Write the model file atomically (temporary file, then rename)."""
    if not is_neural(arch):
        raise ValueError(f"{arch!r} is not a torch network; only networks are saved as model files")
    if len(state_dicts) != len(temperatures) or len(state_dicts) != len(biases) or not state_dicts:
        raise ValueError("need one temperature and one bias per state dict, and at least one state dict")
    payload = {
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "arch_config": dict(arch_config),
        "state_dicts": [{k: v.detach().cpu() for k, v in sd.items()} for sd in state_dicts],
        "temperatures": [float(t) for t in temperatures],
        "biases": [float(b) for b in biases],
        "temperature": float(np.median(temperatures)),
        "threshold": float(threshold),
        "patch_size": int(patch_size),
        "patch_spacing_mm": float(patch_spacing_mm),
        "training": training,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The one atomic writer of the derivatives: mode 0644 like every other output (mkstemp gave 0600).
    return atomic_write_with(path, lambda temporary: torch.save(payload, temporary))


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes: how participant-level sidecars and model cards name a model file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_checkpoint(path: Path, expected_arch: str | None = None) -> dict[str, Any]:
    """Read and check a model file; any problem is an :class:`InputError` with a one-line message."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: model file not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's message here is advice on weights_only, not about the file
        raise InputError(f"{path}: not a bids_rim model file (not written by torch.save, or it holds objects "
                         "other than tensors and plain values, which are never loaded)") from None
    except Exception as error:  # torch raises many types (OSError, RuntimeError, EOFError) for a damaged file
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = next((line for line in lines if "error" in line.lower()), lines[0] if lines else type(error).__name__)
        reason = reason.split(". ")[0].rstrip(".")  # torch's first sentence; the rest is advice
        raise InputError(f"{path}: not a bids_rim model file, or a truncated or corrupt file "
                         f"(torch: {reason})") from None
    if not isinstance(payload, dict) or "format_version" not in payload:
        raise InputError(f"{path}: not a bids_rim model file (no format_version)")
    if payload["format_version"] == 1:
        raise InputError(f"{path}: model file format_version 1 comes from an older bids_rim (its asym network and "
                         f"temperature-only calibration were replaced); retrain it with this version")
    if payload["format_version"] != FORMAT_VERSION:
        raise InputError(
            f"{path}: model file format_version {payload['format_version']!r} is not supported "
            f"(this bids_rim reads version {FORMAT_VERSION})"
        )
    missing = [key for key in REQUIRED_KEYS if key not in payload]
    if missing:
        raise InputError(f"{path}: model file lacks {missing}")
    arch = payload["arch"]
    if arch not in available_models() or not is_neural(arch):
        raise InputError(f"{path}: unknown architecture {arch!r} (known: {', '.join(available_models())})")
    if expected_arch is not None and arch != expected_arch:
        raise InputError(f"{path}: model file holds architecture {arch!r}, expected {expected_arch!r}")
    if arch in ("asym", "qsm_only"):
        payload["arch_config"] = {**LEGACY_ASYM_CONFIG, **payload["arch_config"]}
    return payload
