"""Gather the participant-level lesion tables of OUTPUT_DIR into one group lesion table.

Only tables are read (never images), so memory grows with the number of lesions, not with
the number of subjects' images. Tables that share a header (all of them, in a normal run)
are joined as text and parsed by pandas once: 10,000 small tables take a few seconds, where
one ``read_csv`` per file would take tens of seconds.

Participants that cannot contribute are listed, never silently dropped:

* *failed*: a crash file under ``sub-X/log/`` and no lesion table;
* *missing*: named in ``participants.tsv`` (or with a ``sub-X`` folder in BIDS_DIR) but with
  neither a lesion table nor a crash file.

A participant with some lesion tables is checked session by session against its ``ses-*``
folders in BIDS_DIR: a session without a table is listed too (*failed* when the participant
has a crash file, else *missing*), so that a participant whose second visit crashed is not
silently analysed on its first one.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

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
    """A participant (or one of its sessions) that has no lesion table, and why (one line)."""

    participant_id: str
    status: str  # "failed", "missing" or (set by the group level) "unscored"
    reason: str
    session_id: str | None = None  # None: the whole participant

    @property
    def label(self) -> str:
        """``sub-X`` or ``sub-X ses-Y``, as shown in the report and the log."""
        return self.participant_id if self.session_id is None else f"{self.participant_id} {self.session_id}"


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
    crash_files = [*output_dir.glob("sub-*/log/crash-*"), *output_dir.glob("sub-*/log/*/crash-*")]
    crashed: dict[str, str] = {}
    # Run folders are named by start time, so sorting by path puts the latest run last.
    for crash_file in sorted(crash_files):
        participant = crash_file.relative_to(output_dir).parts[0]
        crashed[participant] = f"{crash_reason(crash_file)} ({crash_file.relative_to(output_dir)})"
    return crashed


def find_bids_sessions(bids_dir: Path) -> dict[str, list[str]]:
    """``{participant_id: [session_id, ...]}`` from the ``sub-*/ses-*`` folders of a raw BIDS dataset.

    Only folder names are listed (no file is opened); a participant without sessions maps to ``[]``.
    """
    return {subject.name: sorted(session.name for session in subject.glob("ses-*") if session.is_dir())
            for subject in sorted(Path(bids_dir).glob("sub-*")) if subject.is_dir()}


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


def _missing_sessions(sessions: Sequence[SessionTable], expected_sessions: Mapping[str, Sequence[str]],
                      crashed: Mapping[str, str]) -> list[ParticipantProblem]:
    """Sessions of BIDS_DIR without a lesion table, for participants that have at least one table."""
    found: dict[str, set[str]] = {}
    for table in sessions:
        found.setdefault(table.participant_id, set()).add(table.session_id or "")
    problems = []
    for participant, with_table in sorted(found.items()):
        for session in expected_sessions.get(participant, ()):
            if session in with_table:
                continue
            if participant in crashed:
                problems.append(ParticipantProblem(participant, "failed", crashed[participant], session))
            else:
                problems.append(ParticipantProblem(participant, "missing", "session in BIDS_DIR without a lesion "
                                                   "table and no crash file", session))
    return problems


def aggregate_lesion_tables(output_dir: Path, participant_ids: Iterable[str] = (), *,
                            expected_sessions: Mapping[str, Sequence[str]] | None = None,
                            progress: bool = False) -> AggregatedTables:
    """Collect OUTPUT_DIR's lesion tables and list the participants (and sessions) without one.

    ``participant_ids`` are those expected (``participants.tsv`` and BIDS_DIR's ``sub-*``
    folders, ``sub-`` prefixed); one of them with neither a table nor a crash file is *missing*.
    ``expected_sessions`` (from :func:`find_bids_sessions`) adds the sessions without a table.
    """
    expected_sessions = expected_sessions or {}
    sessions = find_lesion_tables(output_dir)
    lesions = read_lesion_tables(sessions, progress=progress)
    with_table = {table.participant_id for table in sessions}
    crashed = find_crashed_participants(output_dir)
    problems = [ParticipantProblem(participant, "failed", reason)
                for participant, reason in sorted(crashed.items()) if participant not in with_table]
    listed = {problem.participant_id for problem in problems} | with_table
    problems += [ParticipantProblem(participant, "missing", "no lesion table and no crash file in the output directory")
                 for participant in sorted(set(participant_ids) | set(expected_sessions)) if participant not in listed]
    problems += _missing_sessions(sessions, expected_sessions, crashed)
    problems.sort(key=lambda problem: (problem.participant_id, problem.session_id or ""))
    return AggregatedTables(lesions=lesions, sessions=sessions, problems=problems)
