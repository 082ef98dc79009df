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

from bids_rim.cli.interruption import Interruption, plugin_args_with_callback, stop_on_signals

from .conftest import FAST_OPTIONS


def test_a_signal_is_remembered_and_raised_again_between_nodes(tmp_path: Path) -> None:
    interruption = Interruption([tmp_path])
    interruption.status_callback(None, "start")  # no signal yet: nothing happens
    before = tmp_path / "crash-before.pklz"
    before.write_text("")  # a real failure before the signal
    with pytest.raises(KeyboardInterrupt):
        interruption.handle(signal.SIGTERM, None)
    with pytest.raises(KeyboardInterrupt):  # where Nipype swallowed the first one
        interruption.status_callback(None, "end")
    assert interruption.signal == signal.SIGTERM and interruption.exit_code == 143
    caused = tmp_path / "crash-caused.pklz"
    caused.write_text("")  # the interrupted node's crash file
    assert interruption.remove_crash_files_of_the_stop() == [caused]
    assert before.exists() and not caused.exists()
    args = plugin_args_with_callback("MultiProc", {"n_procs": 2}, interruption)
    assert args["n_procs"] == 2 and args["status_callback"] == interruption.status_callback
    assert "status_callback" not in plugin_args_with_callback("SLURMGraph", {}, interruption)


def test_the_handlers_are_restored_after_the_run(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGINT)
    with stop_on_signals([tmp_path]) as interruption:
        assert signal.getsignal(signal.SIGINT) == interruption.handle
    assert signal.getsignal(signal.SIGINT) == before
    assert signal.set_wakeup_fd(-1) == -1  # the watchdog's pipe is no longer the wake-up fd


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


WATCHDOG_SCRIPT = """
import sys, numpy as np
from pathlib import Path
import bids_rim.cli.interruption as interruption
interruption.GRACE_S = 1.0
matrix = np.random.default_rng(0).random((3000, 3000))
with interruption.stop_on_signals([Path(sys.argv[1])]):
    print("inside", flush=True)
    np.linalg.eigvals(matrix)  # one long call in C: Python's own handler waits for its end
print("the clean stop was not expected here", flush=True)
"""


def test_a_signal_during_a_long_step_in_c_ends_the_process_after_the_grace(tmp_path: Path) -> None:
    """While the main thread is inside C++ (ANTs), Python's handler cannot run; the watchdog ends the
    process after the grace period, with the signal's exit code and one line."""
    single = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    run = subprocess.Popen([sys.executable, "-c", WATCHDOG_SCRIPT, str(tmp_path)], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env={**os.environ, **single})
    assert run.stdout.readline().strip() == "inside"
    time.sleep(0.5)
    started = time.monotonic()
    run.send_signal(signal.SIGTERM)
    out, err = run.communicate(timeout=120)
    assert run.returncode == 143, err
    assert "stopped by SIGTERM while inside a processing step" in err and "not expected" not in out
    assert time.monotonic() - started < 10  # the grace (1 s here), not the end of the computation
