"""Group-level training through the CLI, then participant-level inference with the model it wrote."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bids_rim.cli.run import main

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
    fold_metrics = pd.read_csv(next(models.glob("*_foldmetrics.tsv")), sep="\t")
    assert "pr_auc" in " ".join(fold_metrics.columns).lower()


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
    probabilities = table["rim_probability"].to_numpy()
    assert np.all((probabilities >= 0) & (probabilities <= 1))
    assert np.all(table["rim_uncertainty"] >= 0)
    assert set(table["rim_label"].unique()) <= {0, 1}
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
