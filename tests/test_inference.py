"""The model file and inference: round trip, clear refusals, predictions with uncertainty."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bids_rim.errors import InputError
from bids_rim.models import get_model
from bids_rim.training.calibration import sigmoid
from bids_rim.training.checkpoint import (
    FORMAT_VERSION,
    load_checkpoint,
    save_checkpoint,
)
from bids_rim.training.inference import (
    PREDICTION_COLUMNS,
    load_rim_model,
    resolve_device,
)
from bids_rim.training.prediction import predict_logits
from bids_rim.training.toy import make_toy_patches

ARCH_CONFIG = {"width": 4, "conditioning": "film_spatial", "film_stages": [0], "dropout": 0.1,
               "region_pool_stages": [0, 1], "rim_readout": True, "readout_logit": True, "readout_cnr": True}


def _as_if_trained(network: torch.nn.Module) -> torch.nn.Module:
    """Random weights where a fresh asym starts at zero (the head's last layer, the read-out path)."""
    for layer in (network.head[-1], getattr(network, "readout_logit", None)):
        if layer is not None:
            torch.nn.init.normal_(layer.weight, std=0.5)
    return network


def _save(path, seeds=(0, 1), arch="asym", arch_config=ARCH_CONFIG, threshold=0.4):
    state_dicts = []
    for seed in seeds:
        torch.manual_seed(seed)
        state_dicts.append(_as_if_trained(get_model(arch, **arch_config)).state_dict())
    return save_checkpoint(path, arch=arch, arch_config=arch_config, state_dicts=state_dicts,
                           temperatures=[1.5] * len(seeds), biases=[-1.0] * len(seeds), threshold=threshold,
                           patch_size=16, patch_spacing_mm=1.0,
                           training={"synthetic_data": True, "note": "test"})


def test_round_trip_restores_every_member_exactly(tmp_path):
    path = _save(tmp_path / "model.pt")
    payload = torch.load(path, weights_only=True)
    assert payload["format_version"] == FORMAT_VERSION and payload["arch"] == "asym"
    model = load_rim_model(path, "cpu")
    assert len(model.members) == 2 and model.threshold == pytest.approx(0.4) and model.patch_size == 16
    torch.manual_seed(1)
    reference = _as_if_trained(get_model("asym", **ARCH_CONFIG)).state_dict()
    for key, value in model.members[1].state_dict().items():
        torch.testing.assert_close(value, reference[key], rtol=0, atol=0)
    assert model.metadata["synthetic_data"] is True


def test_predict_gives_probability_uncertainty_and_label(tmp_path):
    model = load_rim_model(_save(tmp_path / "model.pt"), "cpu")
    assert model.biases == [-1.0, -1.0] and model.temperatures == [1.5, 1.5]
    patches, _ = make_toy_patches(2, 5, patch_size=16, seed=0)
    table = model.predict(patches, batch_size=4, ensemble=True)
    assert list(table.columns) == list(PREDICTION_COLUMNS) and len(table) == 10
    assert table["rim_probability"].between(0, 1).all() and (table["rim_uncertainty"] >= 0).all()
    assert (table["rim_uncertainty"] > 0).any()  # two different members disagree
    np.testing.assert_array_equal(table["rim_label"], (table["rim_probability"] >= 0.4).astype(int))
    # Batching does not change the numbers; the empty case keeps the columns.
    np.testing.assert_allclose(model.predict(patches, batch_size=3, ensemble=True)["rim_probability"],
                               table["rim_probability"], rtol=1e-5)
    assert list(model.predict(patches[:0]).columns) == list(PREDICTION_COLUMNS)
    # The final model alone, one deterministic view: Platt-calibrated sigma(logit / T + b), no spread.
    single = model.predict(patches, tta=False, mc_dropout_samples=0)
    logits = predict_logits(model.members[-1], patches, torch.device("cpu"))[0]
    np.testing.assert_allclose(single["rim_probability"], sigmoid(logits / 1.5 - 1.0), rtol=1e-5)
    assert (single["rim_uncertainty"] == 0).all()
    assert not np.allclose(single["rim_probability"], table["rim_probability"])
    # Monte Carlo dropout spreads the views reproducibly, without moving the probability.
    mc = model.predict(patches, tta=False, mc_dropout_samples=4)
    assert (mc["rim_uncertainty"] > 0).all()
    np.testing.assert_array_equal(mc, model.predict(patches, tta=False, mc_dropout_samples=4))
    np.testing.assert_allclose(mc["rim_probability"], single["rim_probability"], rtol=1e-6)
    assert not model.members[-1].head[2].training  # dropout stays in eval mode
    # The default: the final model's flip views with MC dropout samples of its head.
    default = model.predict(patches)
    assert (default["rim_uncertainty"] > 0).all()
    with pytest.raises(InputError, match="do not fit this model"):
        model.predict(patches[:, :, :8, :8, :8])


def test_head_only_mc_dropout_matches_whole_network_dropout():
    """Sampling only the head gives the same distribution as dropout on in the whole network."""
    torch.manual_seed(0)
    network = _as_if_trained(get_model("asym", **{**ARCH_CONFIG, "dropout": 0.5}))
    patches, _ = make_toy_patches(1, 3, patch_size=16, seed=0)
    generator = torch.Generator().manual_seed(0)
    head_samples = predict_logits(network, patches, torch.device("cpu"), mc_dropout_samples=400,
                                  generator=generator)[1:]
    network.train()
    torch.manual_seed(1)
    with torch.no_grad():
        whole = np.stack([network(torch.as_tensor(patches))["logit"].numpy() for _ in range(400)])
    np.testing.assert_allclose(head_samples.mean(0), whole.mean(0), atol=0.15 * whole.std(0).max() + 1e-3)
    np.testing.assert_allclose(head_samples.std(0), whole.std(0), rtol=0.2)


def test_mc_dropout_keeps_the_read_out_path():
    """With the MLP head silenced, every MC sample is the linear read-out path's logit (no dropout)."""
    torch.manual_seed(0)
    network = _as_if_trained(get_model("asym", **{**ARCH_CONFIG, "dropout": 0.5}))
    torch.nn.init.zeros_(network.head[-1].weight)
    torch.nn.init.zeros_(network.head[-1].bias)
    patches, _ = make_toy_patches(1, 3, patch_size=16, seed=0)
    logits = predict_logits(network, patches, torch.device("cpu"), mc_dropout_samples=5)
    assert np.abs(logits[0]).min() > 1e-3
    np.testing.assert_allclose(logits[1:], np.broadcast_to(logits[0], logits[1:].shape), rtol=1e-5, atol=1e-6)


def test_file_with_read_out_but_no_read_out_path_loads_as_written(tmp_path):
    # Files written after rim_readout and before readout_logit existed pass the read-out through the MLP only,
    # and their read-out has five numbers (no contrast-to-noise ratios).
    former = {key: value for key, value in ARCH_CONFIG.items() if key not in ("readout_logit", "readout_cnr")}
    weights = get_model("asym", **former, readout_logit=False, readout_cnr=False).state_dict()
    path = save_checkpoint(tmp_path / "former.pt", arch="asym", arch_config=former, state_dicts=[weights],
                           temperatures=[1.0], biases=[0.0], threshold=0.5, patch_size=16, patch_spacing_mm=1.0,
                           training={})
    member = load_rim_model(path, "cpu").members[0]
    assert member.rim_readout is not None and member.readout_logit is None and member.rim_readout.n_features == 5


def test_asym_file_without_region_pool_stages_loads_with_the_former_layout(tmp_path):
    # Files written before the options existed pooled at P/8 only and had no rim read-out.
    former = {key: value for key, value in ARCH_CONFIG.items()
              if key not in ("region_pool_stages", "rim_readout", "readout_logit", "readout_cnr")}
    torch.manual_seed(0)
    weights = get_model("asym", **former, region_pool_stages=(2,), rim_readout=False, readout_logit=False).state_dict()
    path = save_checkpoint(tmp_path / "former.pt", arch="asym", arch_config=former, state_dicts=[weights],
                           temperatures=[1.0], biases=[0.0], threshold=0.5, patch_size=16, patch_spacing_mm=1.0,
                           training={})
    member = load_rim_model(path, "cpu").members[0]
    assert member.region_pool_stages == (2,) and member.rim_readout is None
    for key, value in member.state_dict().items():
        torch.testing.assert_close(value, weights[key], rtol=0, atol=0)


def test_other_architecture_or_version_fails_with_one_line(tmp_path):
    path = _save(tmp_path / "rimnet.pt", arch="rimnet", arch_config={"width": 4})
    assert load_rim_model(path, "cpu").members
    with pytest.raises(InputError, match="holds architecture 'rimnet', expected 'asym'") as info:
        load_rim_model(path, "cpu", expected_arch="asym")
    assert "\n" not in str(info.value)

    payload = torch.load(path, weights_only=True)
    payload["format_version"] = 99
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(InputError, match="format_version 99 is not supported") as info:
        load_checkpoint(tmp_path / "future.pt")
    assert "\n" not in str(info.value)
    payload["format_version"] = 1  # the temperature-only files of the previous asym network
    torch.save(payload, tmp_path / "old.pt")
    with pytest.raises(InputError, match="format_version 1 comes from an older bids_rim.*retrain") as info:
        load_checkpoint(tmp_path / "old.pt")
    assert "\n" not in str(info.value)

    payload["format_version"] = FORMAT_VERSION
    payload["arch"] = "transformer9000"
    torch.save(payload, tmp_path / "alien.pt")
    with pytest.raises(InputError, match="unknown architecture 'transformer9000'"):
        load_rim_model(tmp_path / "alien.pt", "cpu")

    payload["arch"] = "asym"  # asym label on rimnet weights
    torch.save(payload, tmp_path / "mislabelled.pt")
    with pytest.raises(InputError, match="weights do not match architecture 'asym'") as info:
        load_rim_model(tmp_path / "mislabelled.pt", "cpu")
    assert "\n" not in str(info.value)


def test_files_that_are_not_model_files_fail_clearly(tmp_path):
    with pytest.raises(InputError, match="model file not found"):
        load_rim_model(tmp_path / "missing.pt", "cpu")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(InputError, match="text.pt: not a bids_rim model file") as info:
        load_rim_model(tmp_path / "text.pt", "cpu")
    assert "weights_only" not in str(info.value) and "\n" not in str(info.value)  # no advice meant for torch users
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="no format_version"):
        load_rim_model(tmp_path / "other.pt", "cpu")


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(InputError, match="not a device"):
        resolve_device("quantum")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            resolve_device("cuda:0")
