"""How a participant-level run was invoked: ``OUTPUT_DIR/sub-X/log/<run id>/bids_rim.json``.

fMRIPrep users find the configuration of every run in ``sub-X/log/<run>/fmriprep.toml``; bids_rim
writes the same for each participant a run processes: the command line as typed, the ``--config-file``
it read, the resolved configuration (absolute paths: every ``-d`` dataset, the filter file's content,
the working directory), the versions and the host. A participant refused by the pre-flight checks gets
only its crash file, so that the record says "this run processed this participant".

The name ``bids_rim.json`` matches neither ``crash-*`` nor ``*_outputs.json``, the two patterns the
group level reads in these folders (:mod:`bids_rim.group.aggregate`); ``sub-*/log`` is in
OUTPUT_DIR's ``.bidsignore`` (:mod:`bids_rim.bidsio.derivatives`), so the BIDS validator passes it over.
"""

from __future__ import annotations

import json
import platform
import socket
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bids_rim import __version__
from bids_rim.bidsio.derivatives import atomic_write_text, container_entry
from bids_rim.bidsio.run_ids import run_id_start
from bids_rim.config import RunConfig

#: The record's file name in each processed participant's ``log/<run id>/`` folder.
RUN_RECORD_NAME = "bids_rim.json"


@dataclass(frozen=True)
class Invocation:
    """What bids_rim was called with: the command line, ``argv[0]`` being the program name, and the
    ``--config-file`` it read (None without one). Built by :func:`bids_rim.cli.run.main` from the argv
    it parsed, so that a call of ``main([...])`` in-process records its own arguments, not the process's."""

    command_line: tuple[str, ...]
    config_file: Path | None = None


def absolute_config(config: RunConfig) -> RunConfig:
    """``config`` with every path made absolute (as the command-line parser does: ``..`` kept), so that a
    record read elsewhere, or after a ``cd``, still names the folders and files the run used."""

    def absolute(path: Path | None) -> Path | None:
        return None if path is None else Path(path).absolute()

    return replace(
        config,
        bids_dir=absolute(config.bids_dir),
        output_dir=absolute(config.output_dir),
        derivatives=tuple(absolute(path) for path in config.derivatives),
        model_path=absolute(config.model_path),
        execution=replace(config.execution, work_dir=absolute(config.execution.work_dir)),
        training=replace(config.training, rim_annotations=absolute(config.training.rim_annotations)),
    )


def iso_utc(run_id: str) -> str | None:
    """The start of the run named ``run_id`` as ISO 8601 in UTC (``2024-05-01T12:00:00Z``); None if
    ``run_id`` is no run id. Taken from the id itself, so that the two never disagree."""
    started = run_id_start(run_id)
    if started is None:
        return None
    return datetime.fromtimestamp(started, tz=timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def run_record(config: RunConfig, run_id: str, *, subject: str, sessions: list[str],
               invocation: Invocation | None, model: dict[str, Any] | None = None) -> dict[str, Any]:
    """The record of participant ``subject`` in run ``run_id``: JSON-ready, in the order a reader wants.

    ``sessions`` are the units this run processes for the participant (``sub-X_ses-Y``); ``model``
    the model's provenance (``bids_rim.workflows.participant.model_provenance``). Without an
    ``invocation`` (the participant level called from Python, not from :func:`bids_rim.cli.run.main`)
    ``CommandLine`` is null rather than the process's argv, which would name some other program.
    """
    return {
        "ParticipantLevelRun": run_id,
        "Participant": f"sub-{subject}",
        "Sessions": list(sessions),
        "Started": iso_utc(run_id),
        "CommandLine": list(invocation.command_line) if invocation else None,
        "ConfigFile": str(Path(invocation.config_file).absolute()) if invocation and invocation.config_file else None,
        "BidsRimVersion": __version__,
        "Python": platform.python_version(),
        "Host": socket.gethostname(),
        "Container": container_entry(),
        "Model": model,
        "Configuration": absolute_config(config).as_report_dict(),
    }


def run_record_path(output_dir: Path, subject: str, run_id: str) -> Path:
    """Where run ``run_id`` records participant ``subject``: ``OUTPUT_DIR/sub-X/log/<run id>/bids_rim.json``."""
    return Path(output_dir) / f"sub-{subject}" / "log" / run_id / RUN_RECORD_NAME


def write_run_record(output_dir: Path, record: dict[str, Any]) -> Path:
    """Write ``record`` (from :func:`run_record`) into its participant's run folder, atomically."""
    subject = record["Participant"].removeprefix("sub-")
    path = run_record_path(output_dir, subject, record["ParticipantLevelRun"])
    return atomic_write_text(path, json.dumps(record, indent=2, default=str) + "\n")
