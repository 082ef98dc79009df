"""The participant level's working directory: one run per participant at a time, and cleaning.

Two runs of one participant on one ``-w`` share Nipype's node folders and overwrite each other's
intermediate files; the second then failed with an internal error. Each run holds an exclusive
``fcntl.flock`` on ``WORK_DIR/.bids_rim_locks/sub-X.lock`` for every participant it processes,
until it ends. The system releases a lock when its process ends, however it ends (SIGKILL too), so
a lock is never stale. Runs of different participants may share a working directory (one job per
participant on a cluster). A run that finds a participant's lock held refuses before it writes
anything, naming the participant and the run that holds it. With the locks held, ``--clean-workdir``
removes the run's participants' folders (:func:`remove_folders`) and no other's.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import socket
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO, Iterator

from bids_rim.errors import BusyError, InputError

LOCK_FOLDER = ".bids_rim_locks"
LOGGER = logging.getLogger("bids_rim.participant")


@contextmanager
def participant_locks(work_dir: Path, subjects: list[str], run_id: str) -> Iterator[None]:
    """Hold the working-directory lock of every participant in ``subjects`` (labels without ``sub-``)
    while the block runs; raise :class:`BusyError` if another run holds any of them."""
    folder = work_dir / LOCK_FOLDER
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"{work_dir}: cannot create the working directory ({error.strerror})") from error
    with ExitStack() as held:
        for subject in sorted(set(subjects)):
            held.enter_context(_participant_lock(folder / f"sub-{subject}.lock", subject, work_dir, run_id))
        yield


@contextmanager
def _participant_lock(path: Path, subject: str, work_dir: Path, run_id: str) -> Iterator[None]:
    """Lock ``path`` (created if missing) and write this run's identity into it, for a run that finds it held."""
    with open(path, "a+") as lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BusyError(f"sub-{subject}: another bids_rim run ({_holder(lock_file)}) is processing this "
                            f"participant in the working directory {work_dir}; wait for it to end, or give this "
                            "run a working directory of its own (-w)") from None
        _write_holder(lock_file, run_id)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _write_holder(lock_file: IO[str], run_id: str) -> None:
    lock_file.seek(0)
    lock_file.truncate()
    lock_file.write(f"pid {os.getpid()} on {socket.gethostname()}, run {run_id}\n")
    lock_file.flush()


def _holder(lock_file: IO[str]) -> str:
    lock_file.seek(0)
    return lock_file.read().strip() or "identity not yet written"


def remove_folders(folders: list[Path]) -> None:
    """Remove each of ``folders`` that exists, with one log line each (``--clean-workdir``)."""
    for folder in folders:
        if folder.exists():
            shutil.rmtree(folder)
            LOGGER.info("Removed %s (--clean-workdir): its steps are computed anew", folder)
