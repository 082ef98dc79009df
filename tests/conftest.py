"""Shared fixtures: tiny synthetic BIDS cohorts and one participant-level run, built once.

Everything is made by :mod:`bids_rim.synth` at ``size="small"`` (2 mm, about a second per
subject) and processed by the real pipeline through the CLI, as a user types it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

#: Options that keep the participant level small and fast in tests.
FAST_OPTIONS = ["--nprocs", "1", "--omp-nthreads", "1", "--patch-size", "16", "--patch-spacing", "2"]
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark_script(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` as ``<name>_benchmark``. The folder is not a package and its
    scripts import their siblings (``import classification``), so it goes on ``sys.path``."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six participants at two sites, one session each, with masks and annotations."""
    from bids_rim.synth import generate_cohort

    root = tmp_path_factory.mktemp("cohort") / "bids"
    generate_cohort(root, n_subjects=6, n_sites=2, n_sessions=1, difficulty="realistic", size="small",
                    seed=11, progress=False)
    return root


@pytest.fixture(scope="session")
def participant_run(small_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One participant-level run on ``small_cohort`` (no inference: the model tests own that)."""
    from bids_rim.cli.run import main

    base = tmp_path_factory.mktemp("participant")
    output_dir, work_dir = base / "out", base / "work"
    code = main([str(small_cohort), str(output_dir), "participant",
                 "-d", str(small_cohort / "derivatives" / "lesion_masks"),
                 "--work-dir", str(work_dir), "--no-inference", *FAST_OPTIONS])
    assert code == 0, f"participant level failed with exit code {code}"
    return {"bids": small_cohort, "output": output_dir, "work": work_dir}


@pytest.fixture()
def cohort_copy(small_cohort: Path, tmp_path: Path) -> Path:
    """A private copy of the small cohort that a test may damage."""
    target = tmp_path / "bids"
    shutil.copytree(small_cohort, target)
    return target
