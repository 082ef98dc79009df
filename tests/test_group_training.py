"""Group-level training through the CLI, then participant-level inference with the model it wrote."""

from __future__ import annotations

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
