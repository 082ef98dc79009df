"""Training inputs judged before any work, the model card's provenance lines and the atomic output set
(toy patches from bids_rim.training.toy: seconds each)."""

from __future__ import annotations

import hashlib
import logging
import stat
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from bids_rim.errors import InputError
from bids_rim.training import api
from bids_rim.training.api import check_training_inputs, train_rim_model
from bids_rim.training.checkpoint import load_checkpoint, save_checkpoint
from bids_rim.training.config import TrainConfig
from bids_rim.training.metrics import patient_metrics
from bids_rim.training.report import write_fold_metrics
from bids_rim.training.toy import make_toy_patches

TINY = TrainConfig(width=4, batch_size=16, pretrain_epochs=0, finetune_epochs=1, patience=1, folds=2, patch_size=16,
                   bootstrap_resamples=10)
CPU = torch.device("cpu")


def _labelled(n_patients: int, rim_per_patient: list[int], lesions: int = 8) -> tuple[np.ndarray, pd.DataFrame]:
    """Toy patches whose labels are set by hand: patient i has rim_per_patient[i] rim+ lesions."""
    patches, meta = make_toy_patches(n_patients, lesions, patch_size=16, seed=5)
    position = meta.groupby("participant_id").cumcount().to_numpy()
    patient = meta["participant_id"].str[-3:].astype(int).to_numpy() - 1
    meta["label"] = (position < np.asarray(rim_per_patient)[patient]).astype(float)
    return patches, meta


def test_too_few_annotated_patients_is_refused_with_advice() -> None:
    patches, meta = _labelled(3, [2, 2, 2])
    meta.loc[meta["participant_id"] != "sub-001", "label"] = np.nan  # one annotated patient
    with pytest.raises(InputError, match=r"2-fold cross-validation needs at least 2 patients with annotated lesions, "
                                         r"got 1: use fewer folds \(--folds"):
        check_training_inputs(patches, meta, TINY)


def test_a_test_fold_without_rim_positive_lesions_is_refused() -> None:
    patches, meta = _labelled(6, [1, 0, 0, 0, 0, 0])  # one rim+ of 48, as the audit's 1 of 126
    with pytest.raises(InputError, match=r"no rim\+ lesion.*1 rim\+ lesion\(s\) in 1 patient\(s\)"):
        check_training_inputs(patches, meta, TINY)
    # rim+ in 2 patients: each 2-fold test fold holds one, but no fold's training patients can fit and validate.
    patches, meta = _labelled(6, [3, 3, 0, 0, 0, 0])
    with pytest.raises(InputError, match="fine-tuning needs rim\\+ lesions in at least 2 training patients"):
        check_training_inputs(patches, meta, TINY)


def test_few_rim_positive_lesions_in_a_fold_are_warned_about() -> None:
    patches, meta = _labelled(6, [1, 1, 1, 1, 1, 1])
    warnings = check_training_inputs(patches, meta, TINY)
    assert any(w.startswith("fold 1: its test patients hold only 3 rim+ lesion(s) (fewer than 5)") for w in warnings)
    assert any("inner-validation patients hold only" in w for w in warnings)
    patches, meta = _labelled(6, [6, 6, 6, 6, 6, 6])
    assert not any("test patients" in w for w in check_training_inputs(patches, meta, TINY))


def test_prl_kappa_is_undefined_when_nobody_reaches_four_on_either_side() -> None:
    patients = np.repeat(np.arange(4), 5)
    labels = np.tile([1, 0, 0, 0, 0], 4)
    result = patient_metrics(patients, labels, labels * 0.9, 0.5)
    assert np.isnan(result["prl4_kappa"])
    assert result["count_mean_abs_error"] == 0.0
    # Truth puts every patient at >= 4, the model none: complete disagreement is kappa 0, not n/a.
    labels = np.tile([1, 1, 1, 1, 0], 4)
    disagree = patient_metrics(patients, labels, np.zeros(len(labels)), 0.5)
    assert disagree["prl4_kappa"] == 0.0


def test_fold_metrics_tsv_carries_the_pooled_intervals(tmp_path) -> None:
    folds = pd.DataFrame({"fold": [1, 2], "pr_auc": [0.4, 0.5]})
    path = write_fold_metrics(folds, {"pr_auc": 0.45}, tmp_path / "m.tsv", {"pr_auc": (0.3, 0.6)})
    table = pd.read_csv(path, sep="\t", na_values="n/a").set_index("fold")
    assert table.loc["pooled", "pr_auc_ci_low"] == 0.3 and table.loc["pooled", "pr_auc_ci_high"] == 0.6
    assert table.loc["1", "pr_auc_ci_low"] != table.loc["1", "pr_auc_ci_low"]  # n/a in the fold rows
    assert "lower bound" in path.with_suffix(".json").read_text()


def test_a_model_file_is_0644_and_a_truncated_one_says_so(tmp_path) -> None:
    model = torch.nn.Linear(2, 1)
    path = save_checkpoint(tmp_path / "m.pt", arch="asym", arch_config={}, state_dicts=[model.state_dict()],
                           temperatures=[1.0], biases=[0.0], threshold=0.5, patch_size=16, patch_spacing_mm=1.0,
                           training={})
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:200])
    with pytest.raises(InputError, match=r"truncated\.pt: not a bids_rim model file, or a truncated or corrupt "
                                         r"file \(torch: [^\n]*\)$"):
        load_checkpoint(truncated)


@pytest.fixture(scope="module")
def first_model(tmp_path_factory):
    """One tiny training whose patches say they are 1.2 mm (meta's spacing_mm, as load_training_set writes)."""
    patches, meta = _labelled(6, [3, 2, 3, 2, 3, 2])
    meta = meta.assign(spacing_mm=1.2)
    out = tmp_path_factory.mktemp("models")
    result = train_rim_model(patches, meta, TINY, out, CPU, progress=False)
    return patches, meta, out, result


def test_the_python_route_records_the_patches_spacing(first_model) -> None:
    *_, result = first_model
    assert load_checkpoint(result.model_path)["patch_spacing_mm"] == pytest.approx(1.2)
    assert "16³ voxels at 1.2 mm" in result.model_card_path.read_text()
    assert "- Starting point: trained from scratch" in result.model_card_path.read_text()


def test_fine_tuning_names_its_start_and_warns_before_replacing_a_model(first_model, caplog) -> None:
    patches, meta, out, first = first_model
    start = out / "start.pt"
    start.write_bytes(first.model_path.read_bytes())
    digest = hashlib.sha256(first.model_path.read_bytes()).hexdigest()
    with caplog.at_level(logging.WARNING, logger="bids_rim.train"):
        result = train_rim_model(patches, meta, replace(TINY, init_from=str(start)), out, CPU, progress=False)
    assert any(str(first.model_path) in r.getMessage() and digest in r.getMessage() and "replaces" in r.getMessage()
               for r in caplog.records)
    card = result.model_card_path.read_text()
    assert f"initialised from {start} (sha256 {digest})" in card
    # The same patients trained the starting model: the cross-validation is optimistic, and says so.
    n = meta["participant_id"].nunique()
    overlap = f"{n} of the {n} participants here also trained {start}"
    assert any(overlap in r.getMessage() for r in caplog.records) and overlap in card
    assert load_checkpoint(result.model_path)["training"]["data"]["init_from"]["sha256"] == digest
    for path in out.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_a_failure_while_writing_leaves_the_earlier_set_whole(first_model, monkeypatch) -> None:
    patches, meta, out, _ = first_model
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    def broken_card(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(api, "write_model_card", broken_card)
    with pytest.raises(OSError, match="disk full"):
        train_rim_model(patches, meta, replace(TINY, seed=7), out, CPU, progress=False)
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after == before  # neither the new metrics, plots nor model reached the folder


def test_a_missing_or_misfitting_init_model_is_refused_before_training(first_model, tmp_path) -> None:
    patches, meta, *_ = first_model
    with pytest.raises(InputError, match="nope.pt: model file not found"):
        train_rim_model(patches, meta, replace(TINY, init_from=str(tmp_path / "nope.pt")), tmp_path, CPU)
    with pytest.raises(InputError, match=r"bids_rim_default_model\.pt: model configuration .* differs"):
        train_rim_model(patches, meta, replace(TINY, init_from="bundled"), tmp_path, CPU)
    assert not list(tmp_path.iterdir())
