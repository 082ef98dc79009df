"""Ctrl-C (SIGINT) and a scheduler's SIGTERM stop the participant level at once, without false crash files.

Nipype runs each node's interface inside a context that records *any* exception, even
``KeyboardInterrupt``, as that node's failure, then goes on to the next node and participant: an
interrupted run went on and blamed the participant it was in. While the workflow runs, the
signals are therefore remembered here and raised again between nodes, from Nipype's status
callback, where no context swallows them; the crash files written after the signal are removed,
as they are artefacts of the stop, not failures of the participant. Outputs already written stay
complete (every write is atomic), and a rerun with the same ``-w`` resumes from Nipype's cache.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bids_rim.cli.exit_codes import EXIT_INTERRUPTED, EXIT_TERMINATED

#: The signals that stop a run: Ctrl-C, and the SIGTERM that SLURM and other schedulers send first.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: Plugins that hand the whole graph to a scheduler and take no status callback.
PLUGINS_WITHOUT_CALLBACK = ("CondorDAGMan", "PBSGraph", "SGEGraph", "SLURMGraph")


class Interruption:
    """The first stop signal received while the workflow runs, and when."""

    def __init__(self) -> None:
        self.signal: signal.Signals | None = None
        self.time: float | None = None

    def handle(self, signum: int, _frame: Any) -> None:
        """Signal handler: remember the signal, then stop what runs now."""
        if self.signal is None:
            self.signal, self.time = signal.Signals(signum), time.time()
        raise KeyboardInterrupt

    def status_callback(self, _node: Any, _status: str) -> None:
        """Nipype calls this around every node: the place to stop once a signal came."""
        if self.signal is not None:
            raise KeyboardInterrupt

    @property
    def exit_code(self) -> int:
        """128 + the signal's number, as a shell reports a process a signal ended."""
        return EXIT_TERMINATED if self.signal == signal.SIGTERM else EXIT_INTERRUPTED


@contextmanager
def stop_on_signals() -> Iterator[Interruption]:
    """Handle SIGINT and SIGTERM with an :class:`Interruption` inside the block, then restore."""
    interruption = Interruption()
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield interruption
        return
    previous = {number: signal.signal(number, interruption.handle) for number in STOP_SIGNALS}
    try:
        yield interruption
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def plugin_args_with_callback(plugin: str, plugin_args: dict, interruption: Interruption) -> dict:
    """The plugin's arguments with the interruption's status callback, where the plugin takes one."""
    if plugin in PLUGINS_WITHOUT_CALLBACK:
        return dict(plugin_args)
    return {**plugin_args, "status_callback": interruption.status_callback}


def remove_crash_files_since(log_dirs: list[Path], since: float) -> list[Path]:
    """Delete the crash files in ``log_dirs`` written at or after ``since`` (seconds since the epoch)."""
    removed = []
    for folder in log_dirs:
        for crash in sorted(folder.glob("crash-*")) if folder.is_dir() else []:
            if crash.stat().st_mtime >= since:
                crash.unlink()
                removed.append(crash)
    return removed
