"""What a training leaves in OUTPUT_DIR/models/ besides its model set: staging folders of killed trainings,
a baseline's outputs beside the model set, and the warning when a fine-tuned model's spacing differs
(toy patches from bids_rim.training.toy: seconds each)."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from dataclasses import replace

import numpy as np
import pytest
import torch

from bids_rim.training.api import STAGING_PREFIX, check_training_inputs, this_host, train_rim_model
from bids_rim.training.config import TrainConfig
from bids_rim.training.toy import make_toy_patches

TINY_KWARGS = {"width": 4, "batch_size": 16, "pretrain_epochs": 0, "finetune_epochs": 1, "patience": 1, "folds": 2,
               "patch_size": 16, "bootstrap_resamples": 10}
TINY = TrainConfig(**TINY_KWARGS)
CPU = torch.device("cpu")

#: A training killed outright (SIGKILL) just before it publishes: its staging folder is full and stays.
KILLED_TRAINING = textwrap.dedent(f"""
    import os, signal, sys
    from pathlib import Path

    import numpy as np
    import pandas as pd
    import torch

    from bids_rim.training import api
    from bids_rim.training.config import TrainConfig

    api.publish_outputs = lambda *_args, **_kwargs: os.kill(os.getpid(), signal.SIGKILL)
    data = Path(sys.argv[1])
    api.train_rim_model(np.load(data / "patches.npy"), pd.read_pickle(data / "meta.pkl"),
                        TrainConfig(**{TINY_KWARGS!r}), Path(sys.argv[2]), torch.device("cpu"), progress=False)
""")


@pytest.fixture(scope="module")
def first_model(tmp_path_factory):
    """One tiny training on patches that say they are 1.2 mm; its models/ folder, to be copied by each test."""
    patches, meta = make_toy_patches(6, 8, patch_size=16, seed=5)
    position = meta.groupby("participant_id").cumcount().to_numpy()
    patient = meta["participant_id"].str[-3:].astype(int).to_numpy() - 1
    meta["label"] = (position < np.asarray([3, 2, 3, 2, 3, 2])[patient]).astype(float)
    meta = meta.assign(spacing_mm=1.2)
    out = tmp_path_factory.mktemp("first") / "models"
    result = train_rim_model(patches, meta, TINY, out, CPU, progress=False)
    return patches, meta, out, result


def _finished_pid() -> int:
    """The pid of a process that has ended (and been reaped): no process of this host has it now."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_killed_trainings_staging_folder_is_removed_by_the_next_training_on_its_host(
        first_model, tmp_path, caplog) -> None:
    patches, meta, first_out, _ = first_model
    out = tmp_path / "models"
    shutil.copytree(first_out, out)
    np.save(tmp_path / "patches.npy", patches)
    meta.to_pickle(tmp_path / "meta.pkl")
    script = tmp_path / "killed_training.py"
    script.write_text(KILLED_TRAINING)
    killed = subprocess.Popen([sys.executable, str(script), str(tmp_path), str(out)], stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    _, stderr = killed.communicate(timeout=300)
    assert killed.returncode == -signal.SIGKILL, stderr[-3000:]
    [left] = [path for path in out.iterdir() if path.name.startswith(STAGING_PREFIX)]
    assert left.name.startswith(f"{STAGING_PREFIX}{this_host()}-{killed.pid}-")  # its owner: this host and ...
    assert (left / "desc-rim_model.pt").is_file()  # a whole set was written, never published
    # ... its pid, which is gone now: stale. These are not: another host's (its pid means nothing here), a live
    # process's of this host (the parent of this test), and one whose name says neither (an older bids_rim's).
    others = [out / f"{STAGING_PREFIX}node-7.cluster-{_finished_pid()}-abc_1234",
              out / f"{STAGING_PREFIX}{this_host()}-{os.getppid()}-abc_1234",
              out / f"{STAGING_PREFIX}abc_1234"]
    for folder in others:
        folder.mkdir()
    with caplog.at_level(logging.INFO, logger="bids_rim.train"):
        result = train_rim_model(patches, meta, replace(TINY, seed=4), out, CPU, progress=False)
    assert not left.exists() and all(folder.is_dir() for folder in others)
    removed = [r for r in caplog.records if r.levelno == logging.INFO and r.getMessage().startswith("Removed")]
    assert [r.getMessage().split(",")[0] for r in removed] == [f"Removed {left}"]
    warned = [r.getMessage().split(" is left alone")[0] for r in caplog.records
              if r.levelno == logging.WARNING and "is left alone" in r.getMessage()]
    assert sorted(warned) == sorted(str(folder) for folder in others)
    assert result.model_path == out / "desc-rim_model.pt"  # and the new set was published as ever


def test_a_baseline_writes_beside_the_model_set_and_leaves_it_as_it_was(first_model, tmp_path) -> None:
    patches, meta, first_out, first = first_model
    out = tmp_path / "models"
    shutil.copytree(first_out, out)
    model_set = {path.name: path.read_bytes() for path in out.iterdir()}
    result = train_rim_model(patches, meta, replace(TINY, arch="radiomics"), out, CPU, progress=False)
    assert {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()} == model_set
    assert f"Model file: `{first.model_path.name}`" in (out / "desc-rim_modelcard.md").read_text()
    baseline = out / "arch-radiomics"
    assert result.model_path is None
    assert (result.model_card_path, result.fold_metrics_path) == (baseline / "desc-rim_modelcard.md",
                                                                  baseline / "desc-rim_foldmetrics.tsv")
    assert {path.parent for path in result.plots.values()} == {baseline}
    assert sorted(path.name for path in baseline.iterdir()) == sorted(
        ["desc-rim_modelcard.md", "desc-rim_foldmetrics.tsv", "desc-rim_foldmetrics.json",
         *(path.name for path in result.plots.values())])
    card = result.model_card_path.read_text()
    assert "radiomics" in card and "Model file: `none (a scikit-learn baseline is not saved)`" in card


def test_fine_tuning_a_model_of_another_spacing_is_warned_about(first_model, tmp_path, caplog) -> None:
    patches, meta, first_out, first = first_model
    start = tmp_path / "start.pt"
    shutil.copy(first.model_path, start)
    same = check_training_inputs(patches, meta, replace(TINY, init_from=str(start), patch_spacing_mm=1.2))
    assert not [warning for warning in same if "voxel size" in warning]
    with caplog.at_level(logging.WARNING, logger="bids_rim.train"):
        result = train_rim_model(patches, meta.assign(spacing_mm=0.6), replace(TINY, init_from=str(start)),
                                 tmp_path / "models", CPU, progress=False)
    expected = (f"{start} was trained on patches at 1.2 mm (16³ voxels, 19.2 mm across), these patches are at 0.6 mm "
                "(9.6 mm across): its pretrained filters were learned at another voxel size, so a lesion spans 2 "
                "times as many voxels across here")
    assert any(r.getMessage().startswith(expected) for r in caplog.records)
    assert expected in result.model_card_path.read_text()


def test_the_command_line_names_the_baselines_folder(participant_run, tmp_path, caplog) -> None:
    from bids_rim.cli.run import main

    output_dir = tmp_path / "out"
    shutil.copytree(participant_run["output"], output_dir)
    bids_dir = participant_run["bids"]
    with caplog.at_level(logging.INFO, logger="bids_rim.group"):
        code = main([str(bids_dir), str(output_dir), "group", "--train", "--arch", "radiomics", "--folds", "2",
                     "--seed", "3", "--rim-annotations", str(bids_dir / "derivatives" / "rim_annotations"),
                     "--device", "cpu"])
    assert code == 0
    models = output_dir / "models"
    assert [path.name for path in models.iterdir()] == ["arch-radiomics"]
    assert any(r.getMessage().endswith(f"model card, metrics and plots in {models / 'arch-radiomics'}")
               for r in caplog.records)
