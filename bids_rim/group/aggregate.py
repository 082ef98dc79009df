"""Gather the participant-level lesion tables of OUTPUT_DIR into one group lesion table.

Only tables are read (never images), so memory grows with the number of lesions, not with
the number of subjects' images. Tables that share a header (all of them, in a normal run)
are joined as text and parsed by pandas once: 10,000 small tables take a few seconds, where
one ``read_csv`` per file would take tens of seconds.

Participants that cannot contribute are listed, never silently dropped:

* *failed*: a crash file under ``sub-X/log/`` and no lesion table;
* *missing*: named in ``participants.tsv`` but with neither a lesion table nor a crash file.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import pandas as pd

from bids_rim.errors import InputError

TABLE_PATTERN = re.compile(
    r"^sub-(?P<subject>[A-Za-z0-9]+)(?:_ses-(?P<session>[A-Za-z0-9]+))?_(?:[a-z]+-[A-Za-z0-9]+_)*"
    r"desc-lesions_table\.tsv$"
)
#: Columns added in front of every lesion row of the group table.
ID_COLUMNS = ("participant_id", "session_id")


@dataclass(frozen=True)
class ParticipantProblem:
    """A participant that has no lesion table, and why (one line)."""

    participant_id: str
    status: str  # "failed" or "missing"
    reason: str


@dataclass(frozen=True)
class SessionTable:
    """One participant-level lesion table found in OUTPUT_DIR."""

    participant_id: str
    session_id: str | None
    path: Path


@dataclass(frozen=True)
class AggregatedTables:
    """The group lesion table, the sessions it came from and the participants left out."""

    lesions: pd.DataFrame
    sessions: list[SessionTable]
    problems: list[ParticipantProblem]

    @property
    def failed(self) -> list[ParticipantProblem]:
        return [problem for problem in self.problems if problem.status == "failed"]

    @property
    def missing(self) -> list[ParticipantProblem]:
        return [problem for problem in self.problems if problem.status == "missing"]


def find_lesion_tables(output_dir: Path) -> list[SessionTable]:
    """Every ``sub-X/[ses-Y/]anat/*_desc-lesions_table.tsv``, sorted by subject and session."""
    found = []
    for pattern in ("sub-*/anat/*_desc-lesions_table.tsv", "sub-*/ses-*/anat/*_desc-lesions_table.tsv"):
        for path in output_dir.glob(pattern):
            match = TABLE_PATTERN.match(path.name)
            if match is None:
                continue
            found.append(SessionTable(f"sub-{match['subject']}",
                                      f"ses-{match['session']}" if match["session"] else None, path))
    return sorted(found, key=lambda table: (table.participant_id, table.session_id or ""))


def crash_reason(crash_file: Path) -> str:
    """The one-line reason of a crash file: its last line naming an error, else its last line."""
    lines = [line.strip() for line in crash_file.read_text(errors="replace").splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error: " in line and not line.startswith("File "):
            return line
    return lines[-1] if lines else f"empty crash file {crash_file.name}"


def find_crashed_participants(output_dir: Path) -> dict[str, str]:
    """``{participant_id: reason}`` for every participant with a crash file (latest run wins)."""
    crashed: dict[str, str] = {}
    for crash_file in sorted(output_dir.glob("sub-*/log/*/crash-*")):
        crashed[crash_file.parts[-4]] = f"{crash_reason(crash_file)} ({crash_file.relative_to(output_dir)})"
    return crashed


def _split_header(text: str, path: Path) -> tuple[str, list[str]]:
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise InputError(f"{path}: empty lesion table (not even a header line)")
    return lines[0], [line for line in lines[1:] if line.strip()]


def read_lesion_tables(tables: Iterable[SessionTable], *, progress: bool = False) -> pd.DataFrame:
    """One DataFrame of all lesion rows with ``participant_id`` and ``session_id`` in front.

    Tables with the same header are concatenated as text and parsed once (``n/a`` = missing).
    """
    tables = list(tables)
    if progress:
        from tqdm import tqdm

        tables = tqdm(tables, desc="Reading lesion tables", unit="table", leave=False)
    rows_by_header: dict[str, list[str]] = {}
    for table in tables:
        header, rows = _split_header(table.path.read_text(), table.path)
        prefix = f"{table.participant_id}\t{table.session_id or 'n/a'}\t"
        rows_by_header.setdefault(header, []).extend(prefix + row for row in rows)
    frames = []
    for header, rows in rows_by_header.items():
        text = "\t".join(ID_COLUMNS) + "\t" + header + "\n" + "\n".join(rows)
        frames.append(pd.read_csv(io.StringIO(text), sep="\t", na_values=["n/a"], keep_default_na=False,
                                  dtype={"participant_id": str, "session_id": str}))
    if not frames:
        return pd.DataFrame({column: pd.Series(dtype=str) for column in ID_COLUMNS})
    return pd.concat(frames, ignore_index=True, sort=False)


def aggregate_lesion_tables(output_dir: Path, participant_ids: Iterable[str] = (), *,
                            progress: bool = False) -> AggregatedTables:
    """Collect OUTPUT_DIR's lesion tables and list the participants without one.

    ``participant_ids`` are those of ``participants.tsv`` (``sub-`` prefixed); one of them with
    neither a table nor a crash file is *missing*.
    """
    sessions = find_lesion_tables(output_dir)
    lesions = read_lesion_tables(sessions, progress=progress)
    with_table = {table.participant_id for table in sessions}
    crashed = find_crashed_participants(output_dir)
    problems = [ParticipantProblem(participant, "failed", reason)
                for participant, reason in sorted(crashed.items()) if participant not in with_table]
    listed = {problem.participant_id for problem in problems} | with_table
    problems += [ParticipantProblem(participant, "missing", "no lesion table and no crash file in the output directory")
                 for participant in sorted(set(participant_ids)) if participant not in listed]
    return AggregatedTables(lesions=lesions, sessions=sessions, problems=problems)
