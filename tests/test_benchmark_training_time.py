"""The training-time benchmark runs end to end on a tiny cohort, so that its code never rots.

It runs as a user would (a subprocess), with one epoch of pretraining and one of fine-tuning,
and checks that the page reports the stages that ran, the epochs the model's own history
records, and a total that is the sum of the stages. The times themselves are not judged.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from .conftest import load_benchmark_script

REPO = Path(__file__).resolve().parents[1]


def test_training_time_page_reports_the_stages_that_ran(tmp_path: Path) -> None:
    out = tmp_path / "training_time.md"
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    completed = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "training_time.py"), "--subjects", "4", "--sites", "2",
         "--threads", "1", "--nprocs", "2", "--pretrain-epochs", "1", "--finetune-epochs", "2",
         "--work", str(tmp_path / "work"), "--out", str(out)],
        capture_output=True, text=True, env=environment, cwd=REPO, timeout=600, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]

    page = out.read_text()
    pretrain = re.search(r"\| self-supervised pretraining \| (\d+) \| (\d+) \|", page)
    finetune = re.search(r"\| fine-tuning \(early stopping: patience \d+\) \| (\d+) \| (\d+) \|", page)
    total = re.search(r"\| \*\*pretraining \+ fine-tuning\*\* \| \*\*(\d+)\*\*", page)
    assert pretrain and finetune and total, page
    assert int(pretrain.group(2)) == 1 and int(finetune.group(2)) == 2
    # whole seconds of each stage, rounded separately: the total is their sum within rounding
    assert abs(int(total.group(1)) - int(pretrain.group(1)) - int(finetune.group(1))) <= 1
    assert "4 synthetic patients, 2 sites" in page
    assert "Goal (issue #4)" in page and "no verdict: this run is not in the goal's setting" in page
    assert re.search(r"Peak resident memory of the training process: \d+\.\d\d GiB", page)


def test_goal_verdict_only_in_the_goals_setting() -> None:
    verdict = load_benchmark_script("training_time").goal_verdict
    assert verdict(1199.0, 88, 2, "cpu", {}) == "met (20.0 min)"
    assert verdict(1260.0, 88, 2, "cpu", {}) == "**not met** (21.0 min)"
    for other_setting in ((40, 2, "cpu", {}), (88, 1, "cpu", {}), (88, 2, "cuda:0", {}),
                          (88, 2, "cpu", {"pretrain_epochs": 1})):
        assert verdict(60.0, *other_setting).startswith("no verdict")
