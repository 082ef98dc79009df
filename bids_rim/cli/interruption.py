"""Ctrl-C (SIGINT) and a scheduler's SIGTERM stop the participant level, without false crash files.

Nipype runs each node's interface inside a context that records *any* exception, even
``KeyboardInterrupt``, as that node's failure, then goes on to the next node and participant: an
interrupted run went on and blamed the participant it was in. While the workflow runs, the
signals are therefore remembered here and raised again between nodes, from Nipype's status
callback, where no context swallows them; the crash files that appeared after the signal are
removed, as they are artefacts of the stop, not failures of a participant. Outputs already
written stay complete (every write is atomic), and a rerun with the same ``-w`` resumes from
Nipype's cache.

Python runs a signal handler only when the interpreter regains control, and ANTs steps run for
minutes inside C++: a watchdog thread, woken by the signal itself (``signal.set_wakeup_fd``), ends
the process after :data:`GRACE_S` when the clean stop has not happened by then, as a scheduler
would soon do with SIGKILL anyway.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bids_rim.cli.exit_codes import EXIT_INTERRUPTED, EXIT_TERMINATED

#: The signals that stop a run: Ctrl-C, and the SIGTERM that SLURM and other schedulers send first.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: Plugins that hand the whole graph to a scheduler and take no status callback.
PLUGINS_WITHOUT_CALLBACK = ("CondorDAGMan", "PBSGraph", "SGEGraph", "SLURMGraph", "SomaFlow")
#: Seconds the clean stop may take before the watchdog ends the process (SLURM waits 30 s by default).
GRACE_S = 15.0


def exit_code_of(signum: int) -> int:
    """128 + the signal's number, as a shell reports a process that signal ended."""
    return EXIT_TERMINATED if signum == signal.SIGTERM else EXIT_INTERRUPTED


class Interruption:
    """The first stop signal received while the workflow runs, and the crash files that existed then."""

    def __init__(self, log_dirs: list[Path]) -> None:
        self.log_dirs = log_dirs
        self.signal: signal.Signals | None = None
        self.crash_files_before: set[Path] = set()

    def handle(self, signum: int, _frame: Any) -> None:
        """Signal handler: remember the signal and the crash files so far, then stop what runs now."""
        if self.signal is None:
            self.signal = signal.Signals(signum)
            self.crash_files_before = set(crash_files(self.log_dirs))
        raise KeyboardInterrupt

    def status_callback(self, _node: Any, _status: str) -> None:
        """Nipype calls this around every node: the place to stop once a signal came."""
        if self.signal is not None:
            raise KeyboardInterrupt

    @property
    def exit_code(self) -> int:
        return exit_code_of(self.signal or signal.SIGINT)

    def remove_crash_files_of_the_stop(self) -> list[Path]:
        """Delete the crash files that appeared after the signal (the interrupted node's)."""
        new = sorted(set(crash_files(self.log_dirs)) - self.crash_files_before)
        for path in new:
            path.unlink()
        return new


def crash_files(log_dirs: list[Path]) -> list[Path]:
    """The crash files in ``log_dirs`` (missing folders hold none)."""
    return [path for folder in log_dirs if folder.is_dir() for path in folder.glob("crash-*")]


def _watchdog(read_fd: int, finished: threading.Event) -> None:
    """Wait for a stop signal's number, written by the C-level handler; end the process if the clean stop
    takes longer than :data:`GRACE_S`."""
    try:
        while (data := os.read(read_fd, 1)) and data[0] not in STOP_SIGNALS:
            pass  # another signal with a Python handler: not ours
    except OSError:
        data = b""
    finally:
        os.close(read_fd)
    if not data or finished.wait(GRACE_S):
        return
    print(f"bids_rim: stopped by {signal.Signals(data[0]).name} while inside a processing step; the outputs written "
          "so far are complete (every write is atomic); rerun with the same -w to resume", file=sys.stderr, flush=True)
    os._exit(exit_code_of(data[0]))


@contextmanager
def stop_on_signals(log_dirs: list[Path]) -> Iterator[Interruption]:
    """Handle SIGINT and SIGTERM with an :class:`Interruption` inside the block, then restore."""
    interruption = Interruption(log_dirs)
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield interruption
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    finished = threading.Event()
    previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    threading.Thread(target=_watchdog, args=(read_fd, finished), daemon=True, name="bids_rim-stop").start()
    previous = {number: signal.signal(number, interruption.handle) for number in STOP_SIGNALS}
    try:
        yield interruption
    finally:
        for number, handler in previous.items():
            if handler is not None:  # None: a handler installed from C, which Python cannot reinstate
                signal.signal(number, handler)
        signal.set_wakeup_fd(previous_fd)
        finished.set()
        os.close(write_fd)  # the watchdog's read returns empty and it ends, closing read_fd


def plugin_args_with_callback(plugin: str, plugin_args: dict, interruption: Interruption) -> dict:
    """The plugin's arguments with the interruption's status callback, where the plugin takes one."""
    if plugin in PLUGINS_WITHOUT_CALLBACK:
        return dict(plugin_args)
    return {**plugin_args, "status_callback": interruption.status_callback}
