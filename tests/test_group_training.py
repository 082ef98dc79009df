"""Group-level training through the CLI, then participant-level inference with the model it wrote."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_rim.cli.run import main
from bids_rim.preproc.patches import load_patches
from bids_rim.training.inference import load_rim_model

from .conftest import FAST_OPTIONS


@pytest.fixture(scope="module")
def trained(participant_run: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny model trained on the participant run's patches (the run's outputs are copied first)."""
    output_dir = tmp_path_factory.mktemp("training") / "out"
    shutil.copytree(participant_run["output"], output_dir)
    bids_dir = participant_run["bids"]
    code = main([str(bids_dir), str(output_dir), "group", "--train",
                 "--rim-annotations", str(bids_dir / "derivatives" / "rim_annotations"),
                 "--folds", "2", "--pretrain-epochs", "1", "--finetune-epochs", "2", "--batch-size", "16",
                 "--device", "cpu", "--seed", "3"])
    assert code == 0
    return {"bids": bids_dir, "output": output_dir}


def test_training_writes_model_card_and_metrics(trained: dict[str, Path]) -> None:
    models = trained["output"] / "models"
    model_files = list(models.glob("*_model.pt"))
    assert len(model_files) == 1
    card = next(models.glob("*_modelcard.md")).read_text()
    assert "synthetic" in card.lower()
    assert "- Lesion outlines: given" in card
    fold_metrics = pd.read_csv(next(models.glob("*_foldmetrics.tsv")), sep="\t", na_values="n/a")
    assert fold_metrics["fold"].astype(str).tolist() == ["1", "2", "pooled"]  # --folds 2, then the pooled row
    pooled = fold_metrics.set_index(fold_metrics["fold"].astype(str)).loc["pooled"]
    assert 0.0 <= pooled["pr_auc"] <= 1.0 and 0.0 <= pooled["roc_auc"] <= 1.0


def test_inference_with_the_trained_model(trained: dict[str, Path], tmp_path: Path) -> None:
    bids_dir = trained["bids"]
    model = next((trained["output"] / "models").glob("*_model.pt"))
    output_dir = tmp_path / "out"
    code = main([str(bids_dir), str(output_dir), "participant", "--participant-label", "003",
                 "-d", str(bids_dir / "derivatives" / "lesion_masks"), "--work-dir", str(tmp_path / "work"),
                 "--skip-bids-validation", "--model", str(model), "--device", "cpu", *FAST_OPTIONS])
    assert code == 0
    table = pd.read_csv(output_dir / "sub-003" / "ses-01" / "anat" / "sub-003_ses-01_desc-lesions_table.tsv",
                        sep="\t", na_values="n/a")
    anat = output_dir / "sub-003" / "ses-01" / "anat"
    labels = np.asarray(nib.load(next(anat.glob("*_desc-lesions_dseg.nii.gz"))).dataobj)
    assert len(table) == len(np.unique(labels[labels > 0])) > 0
    # The probabilities are this model's (not the bundled one's) on the session's own patches.
    patches, lesion_ids = load_patches(next(anat.glob("*_desc-lesions_patches.npz")))
    expected = load_rim_model(model, "cpu").predict(patches)
    assert lesion_ids.tolist() == table["lesion_id"].tolist()
    # the table keeps 4 decimals
    np.testing.assert_allclose(table["rim_probability"], expected["rim_probability"], atol=5.1e-5)
    np.testing.assert_allclose(table["rim_uncertainty"], expected["rim_uncertainty"], atol=5.1e-5)
    threshold = load_rim_model(model, "cpu").threshold
    assert table["rim_label"].tolist() == (expected["rim_probability"] >= threshold).astype(int).tolist()
    report = (output_dir / "sub-003.html").read_text()
    assert "P(rim+)" in report


def test_a_model_warns_when_lesions_are_outlined_otherwise(trained: dict[str, Path], tmp_path: Path) -> None:
    from bids_rim.cli.parser import build_parser
    from bids_rim.cli.participant import model_outline_warning
    from bids_rim.cli.run import build_config, parse_arguments

    model = next((trained["output"] / "models").glob("*_model.pt"))
    base = [str(trained["bids"]), str(tmp_path / "out"), "participant", "--model", str(model)]
    same = build_config(parse_arguments(build_parser(), base))
    assert model_outline_warning(same) is None
    other = build_config(parse_arguments(build_parser(), [*base, "--lesion-outline", "refined"]))
    warning = model_outline_warning(other)
    assert warning is not None and "--lesion-outline given" in warning and "refined" in warning


def test_training_refuses_sessions_outlined_two_ways(trained: dict[str, Path], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    output_dir = tmp_path / "out"
    shutil.copytree(trained["output"], output_dir, ignore=shutil.ignore_patterns("models"))
    sidecar = next(output_dir.glob("sub-002/ses-01/anat/*_desc-lesions_table.json"))
    metadata = json.loads(sidecar.read_text())
    metadata["ProcessingParameters"]["LesionOutline"] = "refined"
    sidecar.write_text(json.dumps(metadata))
    bids_dir = trained["bids"]
    code = main([str(bids_dir), str(output_dir), "group", "--train",
                 "--rim-annotations", str(bids_dir / "derivatives" / "rim_annotations"), "--device", "cpu"])
    assert code != 0
    error = capsys.readouterr().err
    assert "different --lesion-outline settings" in error and "refined: sub-002_ses-01" in error
    assert not (output_dir / "models").exists()


def test_group_training_runs_torch_on_omp_nthreads_threads(
        participant_run: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--omp-nthreads sets torch's threads for training (torch's own default, every core of the node,
    oversubscribes a SLURM allocation); the process's setting is restored afterwards."""
    import types

    import torch

    import bids_rim.training.api

    seen: list[int] = []

    def record_threads(*_args, **_kwargs):
        seen.append(torch.get_num_threads())
        return types.SimpleNamespace(model_path=None)  # as on a non-writing torchrun rank

    monkeypatch.setattr(bids_rim.training.api, "train_rim_model", record_threads)
    before = torch.get_num_threads()
    wanted = 2 if before == 1 else 1
    output_dir = tmp_path / "out"
    shutil.copytree(participant_run["output"], output_dir)
    bids_dir = participant_run["bids"]
    code = main([str(bids_dir), str(output_dir), "group", "--train", "--omp-nthreads", str(wanted),
                 "--rim-annotations", str(bids_dir / "derivatives" / "rim_annotations"), "--device", "cpu"])
    assert code == 0
    assert seen == [wanted]
    assert torch.get_num_threads() == before
