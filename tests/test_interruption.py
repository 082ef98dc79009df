"""Ctrl-C and SIGTERM stop the participant level at once: exit 130/143, no crash file blaming a
participant, no participant started after the signal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bids_rim.cli.interruption import (
    Interruption,
    plugin_args_with_callback,
    remove_crash_files_since,
    stop_on_signals,
)

from .conftest import FAST_OPTIONS


def test_a_signal_is_remembered_and_raised_again_between_nodes() -> None:
    interruption = Interruption()
    interruption.status_callback(None, "start")  # no signal yet: nothing happens
    with pytest.raises(KeyboardInterrupt):
        interruption.handle(signal.SIGTERM, None)
    with pytest.raises(KeyboardInterrupt):  # where Nipype swallowed the first one
        interruption.status_callback(None, "end")
    assert interruption.signal == signal.SIGTERM and interruption.exit_code == 143
    args = plugin_args_with_callback("MultiProc", {"n_procs": 2}, interruption)
    assert args["n_procs"] == 2 and args["status_callback"] == interruption.status_callback
    assert "status_callback" not in plugin_args_with_callback("SLURMGraph", {}, interruption)


def test_the_handlers_are_restored_after_the_run() -> None:
    before = signal.getsignal(signal.SIGINT)
    with stop_on_signals() as interruption:
        assert signal.getsignal(signal.SIGINT) == interruption.handle
    assert signal.getsignal(signal.SIGINT) == before


def test_only_crash_files_written_since_the_signal_are_removed(tmp_path: Path) -> None:
    old, new = tmp_path / "crash-old.pklz", tmp_path / "crash-new.pklz"
    old.write_text("")
    os.utime(old, (time.time() - 60, time.time() - 60))
    new.write_text("")
    assert remove_crash_files_since([tmp_path, tmp_path / "absent"], time.time() - 30) == [new]
    assert old.exists() and not new.exists()


def test_ctrl_c_stops_the_whole_run(small_cohort: Path, tmp_path: Path) -> None:
    output_dir = tmp_path / "out"
    command = [str(Path(sys.executable).with_name("bids_rim")), str(small_cohort), str(output_dir), "participant",
               "--participant-label", "001", "002", "-d", str(small_cohort / "derivatives" / "lesion_masks"),
               "-w", str(tmp_path / "work"), "--skip-bids-validation", "--no-inference", "--nprocs", "1",
               *FAST_OPTIONS]
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    seen = []
    for line in run.stdout:  # wait until the workflow starts, then give it time to be inside a node
        seen.append(line)
        if "Processing 2 session(s)" in line:
            break
    time.sleep(5)
    assert run.poll() is None, "the run ended before the signal"
    run.send_signal(signal.SIGINT)
    rest, _ = run.communicate(timeout=300)
    log = "".join(seen) + rest
    assert run.returncode == 130, log[-3000:]
    assert "stopped by SIGINT" in log
    assert not list(output_dir.glob("sub-*/log/*/crash-*")), "a crash file blames a participant for the stop"
    assert not list(output_dir.glob("sub-*/ses-*/anat/*_desc-lesions_table.tsv"))  # nothing ran after the signal
    assert "bids_rim: sub-" not in rest  # no participant reported as failed
