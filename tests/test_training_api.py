"""The training API end to end on toy patches, and the data-parallel path (2 CPU processes, gloo)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from bids_rim.errors import InputError
from bids_rim.models import get_model
from bids_rim.training.api import TrainConfig, train_rim_model
from bids_rim.training.crossval import initialise_from_model_file
from bids_rim.training.inference import load_rim_model
from bids_rim.training.toy import make_toy_patches

TINY = TrainConfig(width=4, batch_size=16, pretrain_epochs=1, finetune_epochs=2, patience=2, folds=3, patch_size=16,
                   bootstrap_resamples=20)


@pytest.fixture(scope="module")
def toy():
    return make_toy_patches(9, 6, patch_size=16, seed=2)


@pytest.fixture(scope="module")
def trained(toy, tmp_path_factory):
    patches, meta = toy
    out = tmp_path_factory.mktemp("train")
    return out, train_rim_model(patches, meta, TINY, out / "models", torch.device("cpu"), progress=False,
                                synthetic=True)


def test_train_rim_model_writes_model_card_metrics_and_plots(toy, trained):
    patches, _ = toy
    tmp_path, result = trained
    names = {p.name for p in (tmp_path / "models").iterdir()}
    assert {"desc-rim_model.pt", "desc-rim_modelcard.md", "desc-rim_foldmetrics.tsv", "desc-rim_foldmetrics.json",
            "desc-rim_roc.png", "desc-rim_pr.png", "desc-rim_reliability.png"} <= names
    table = pd.read_csv(result.fold_metrics_path, sep="\t")
    assert list(table["fold"].astype(str)) == ["1", "2", "3", "pooled"]
    sidecar = json.loads(result.fold_metrics_path.with_suffix(".json").read_text())
    assert "pr_auc" in sidecar and "Description" in sidecar["pr_auc"]
    card = result.model_card_path.read_text()
    assert "Trained on synthetic data" in card and "95 % CI" in card and "site-1" in card
    low, high = result.intervals["pr_auc"]
    assert low <= high
    model = load_rim_model(result.model_path, "cpu", expected_arch="asym")
    assert len(model.members) == TINY.folds + 1  # fold models and the final model
    assert model.metadata["config"]["folds"] == 3
    predictions = model.predict(patches[:5])
    assert predictions["rim_probability"].between(0, 1).all()


def test_fine_tuning_starts_from_the_model_files_final_member(trained):
    _, result = trained
    config = replace(TINY, init_from=str(result.model_path))
    model = get_model("asym", **config.model_kwargs())
    initialise_from_model_file(model, config)
    final = torch.load(result.model_path, weights_only=True)["state_dicts"][-1]
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, final[key], rtol=0, atol=0)
    with pytest.raises(InputError, match="differs from the training configuration"):
        initialise_from_model_file(get_model("asym", width=6), replace(config, width=6))
    with pytest.raises(InputError, match="holds architecture 'asym', expected 'rimnet'"):
        initialise_from_model_file(get_model("rimnet", width=4), replace(config, arch="rimnet"))


def test_bad_training_inputs_fail_clearly(toy, tmp_path):
    patches, meta = toy
    with pytest.raises(InputError, match="patch_size is 32"):
        train_rim_model(patches, meta, TrainConfig(), tmp_path, torch.device("cpu"))
    with pytest.raises(InputError, match="metadata rows"):
        train_rim_model(patches[:3], meta, TINY, tmp_path, torch.device("cpu"))
    no_rims = meta.assign(label=0.0)
    with pytest.raises(InputError, match="both rim"):
        train_rim_model(patches, no_rims, TINY, tmp_path, torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown pretraining objective"):
        TrainConfig(pretrain_objectives=("magic",))


def test_each_torchrun_process_takes_the_gpu_of_its_local_rank() -> None:
    """Pure device choice (no GPU needed): ranks spread over the GPUs, one GPU per rank."""
    from bids_rim.training.distributed import rank_device

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert rank_device(cuda, {}, gpu_count=2) == cuda  # not under torchrun: as asked
    assert rank_device(cpu, {"WORLD_SIZE": "2", "LOCAL_RANK": "1"}, gpu_count=2) == cpu  # gloo on CPU
    assert rank_device(cuda, {"WORLD_SIZE": "4", "LOCAL_RANK": "1"}, gpu_count=2) == torch.device("cuda", 1)
    with pytest.raises(InputError, match="each process takes the GPU of its LOCAL_RANK"):
        rank_device(torch.device("cuda", 0), {"WORLD_SIZE": "2", "LOCAL_RANK": "1"}, gpu_count=2)
    with pytest.raises(InputError, match="process 2 has no GPU: 2 visible"):
        rank_device(cuda, {"WORLD_SIZE": "3", "LOCAL_RANK": "2"}, gpu_count=2)


DDP_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    torch.set_num_threads(1)
    from bids_rim.training.config import TrainConfig
    from bids_rim.training.crossval import train_member
    from bids_rim.training.distributed import init_distributed
    from bids_rim.training.toy import make_toy_patches

    patches, meta = make_toy_patches(8, 6, patch_size=16, seed=4)
    config = TrainConfig(width=4, batch_size=16, pretrain_epochs=1, finetune_epochs=2, patience=2, patch_size=16)
    context = init_distributed(torch.device("cpu"))
    member = train_member(patches, meta, sorted(meta["participant_id"].unique()), config, torch.device("cpu"),
                          seed=3, context=context)
    torch.save({"rank": context.rank, "world_size": context.world_size, "state_dict": member.state_dict},
               f"{sys.argv[1]}/rank{context.rank}.pt")
    torch.distributed.destroy_process_group()
    """
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_distributed_data_parallel_keeps_ranks_identical(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    # torchrun makes a torchelastic_* folder under TMPDIR and leaves it behind: keep it in tmp_path.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), str(script), str(tmp_path)]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert completed.returncode == 0, completed.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["rank"] for r in ranks] == [0, 1]
    for key, value in ranks[0]["state_dict"].items():
        torch.testing.assert_close(value, ranks[1]["state_dict"][key], rtol=0, atol=0)
    # Training moved the weights away from their initialisation (the ranks agree on a trained model).
    torch.manual_seed(3)
    initial = get_model("asym", width=4, dropout=0.2).state_dict()
    assert any(not torch.equal(initial[k], v) for k, v in ranks[0]["state_dict"].items())
    assert np.isfinite(ranks[0]["state_dict"]["head.3.weight"].numpy()).all()
