"""Two runs of one participant never share a working directory at once; runs of different
participants may (one job per participant on a cluster)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bids_rim.cli.run import main
from bids_rim.cli.work_dir import participant_locks
from bids_rim.errors import BusyError

HOLD_LOCK = """
import sys, time
from pathlib import Path
from bids_rim.cli.work_dir import participant_locks
with participant_locks(Path(sys.argv[1]), ["001"], "20261204-180505Z"):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def other_run_holding_sub_001(tmp_path: Path):
    """Another process, as a second bids_rim run would be, holding sub-001's lock in ``tmp_path/work``."""
    work_dir = tmp_path / "work"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(work_dir)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    yield work_dir, holder.pid
    holder.kill()
    holder.wait()


def test_a_held_participant_is_refused_and_names_the_run_that_holds_it(other_run_holding_sub_001) -> None:
    work_dir, pid = other_run_holding_sub_001
    with pytest.raises(BusyError, match=rf"sub-001: another bids_rim run \(pid {pid} on .*, run 20261204-180505Z\)"):
        with participant_locks(work_dir, ["002", "001"], "20261204-190000Z"):
            pytest.fail("the block must not run")
    with participant_locks(work_dir, ["002"], "20261204-190001Z"):  # the refused run released sub-002
        pass


def test_different_participants_share_a_working_directory(other_run_holding_sub_001) -> None:
    work_dir, _ = other_run_holding_sub_001
    with participant_locks(work_dir, ["002", "003"], "20261204-190000Z"):
        with pytest.raises(BusyError, match="sub-003"):  # but no participant twice, even in one process
            with participant_locks(work_dir, ["003"], "20261204-190001Z"):
                pass


def test_a_killed_run_leaves_no_stale_lock(tmp_path: Path) -> None:
    work_dir = tmp_path / "work"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(work_dir)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    holder.kill()  # SIGKILL: no clean-up code runs
    holder.wait()
    with participant_locks(work_dir, ["001"], "20261204-190000Z"):
        pass


def test_the_cli_refuses_a_participant_another_run_is_processing(small_cohort: Path, tmp_path: Path,
                                                                 other_run_holding_sub_001,
                                                                 capsys: pytest.CaptureFixture) -> None:
    work_dir, pid = other_run_holding_sub_001
    output_dir = tmp_path / "out"
    code = main([str(small_cohort), str(output_dir), "participant", "--participant-label", "001",
                 "--skip-bids-validation", "--no-inference", "-w", str(work_dir)])
    assert code == 75
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("bids_rim: error:")]
    assert len(errors) == 1 and f"pid {pid}" in errors[0] and str(work_dir) in errors[0], errors
    assert not output_dir.exists()  # nothing written, not even an empty folder


def test_clean_workdir_recomputes_the_selected_participant_and_leaves_the_others(small_cohort: Path,
                                                                                 tmp_path: Path) -> None:
    from bids_rim.workflows.participant import participant_work_dir

    work_dir, output_dir = tmp_path / "work", tmp_path / "out"
    left_over = {subject: participant_work_dir(work_dir, subject) / "left_over.txt" for subject in ("001", "002")}
    for path in left_over.values():  # what an earlier run left; 002's may be in use by another run
        path.parent.mkdir(parents=True)
        path.write_text("stale")
    code = main([str(small_cohort), str(output_dir), "participant", "--participant-label", "001", "--clean-workdir",
                 "--skip-bids-validation", "--no-inference", "-w", str(work_dir), "--nprocs", "1"])
    assert code == 0
    assert not left_over["001"].exists() and left_over["002"].read_text() == "stale"
    assert any(participant_work_dir(work_dir, "001").rglob("result_*.pklz"))  # 001's steps ran anew there
    assert list(output_dir.glob("sub-001/ses-*/anat/*_desc-lesions_table.tsv"))
