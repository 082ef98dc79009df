"""The runtime benchmark runs end to end on a small subject, so that its code never rots.

It runs as a user would (a subprocess) on a `--size small` subject and checks that the page
reports every workflow step it timed, a whole-command time no shorter than its steps (the
workflow runs them one after another), the machine and libraries, and that the goals, set for
a full-size subject, are not judged on this one. The times themselves are not judged.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

from .conftest import load_benchmark_script

REPO = Path(__file__).resolve().parents[1]


def test_runtime_page_reports_the_steps_that_ran(tmp_path: Path) -> None:
    out = tmp_path / "runtime.md"
    environment = {**os.environ, "MPLBACKEND": "Agg"}
    completed = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "runtime.py"), "--size", "small", "--lesions", "8",
         "--out", str(out)],
        capture_output=True, text=True, env=environment, cwd=REPO, timeout=600, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]

    page = out.read_text()
    steps = dict(re.findall(r"^\| (\w+) \| (\d+\.\d\d) \|$", page, flags=re.MULTILINE))
    for node in ("n4_flair", "register_flair_to_qsm", "brain_mask", "label_lesions", "lesion_table",
                 "rim_inference", "report", "sink"):
        assert node in steps, page
    whole = re.search(r"\| \*\*whole command\*\* \(incl\. start-up, BIDS indexing\) \| \*\*(\d+\.\d)\*\* \|", page)
    assert whole, page
    assert sum(map(float, steps.values())) <= float(whole.group(1)) + 0.05
    assert f"numpy {importlib.metadata.version('numpy')}" in page and "bids_rim git " in page
    assert "not judged on this `--size small` subject" in page
    registration = re.search(r"- rigid registration \(s\): (\d+\.\d\d)", page)
    assert registration and float(registration.group(1)) > 0
    assert re.search(r"Rim inference throughput \(bundled model, 2 flip views, CPU\): \*\*\d+ lesions/s\*\*", page)


def test_goals_judged_only_on_a_full_size_subject_with_about_30_lesions() -> None:
    sentence = load_benchmark_script("runtime").goal_sentence
    assert "goal ≤ 3 GB: met; goal ≤ 60 s: met" in sentence("full", 27, 31.0, 1.2)
    assert "goal ≤ 3 GB: NOT met; goal ≤ 60 s: NOT met" in sentence("full", 33, 61.0, 3.5)
    for size, lesions in (("small", 30), ("full", 12), ("full", 48)):
        judged = sentence(size, lesions, 10.0, 0.5)
        assert "not judged" in judged and "met" not in judged
