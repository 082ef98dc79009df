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

A failed rerun writes nothing, so the tables of an earlier successful run stay in OUTPUT_DIR.
A lesion table written by a run that started before the latest failed run that concerns it (a
crash file of that run naming its session, or naming no single session) is *stale*: it is left
out, its session (or, when none of its tables is left, its participant) is *failed*, and a
warning names the crash file. Nothing is deleted. Runs are told apart by their ids, the
``log/<YYYYmmdd-HHMMSSZ>/`` folders (``bids_rim.bidsio.run_ids``) that hold a run's crash files
and the manifest of the tables it wrote, so copying OUTPUT_DIR without its file times changes
nothing; only tables and crash files of versions before run manifests fall back to their
modification times.
"""

from __future__ import annotations

import io
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Iterable, Mapping, Sequence

import pandas as pd

from bids_rim.bidsio.run_ids import run_id_start
from bids_rim.errors import InputError

LOGGER = logging.getLogger("bids_rim.group")

TABLE_PATTERN = re.compile(
    r"^sub-(?P<subject>[A-Za-z0-9]+)(?:_ses-(?P<session>[A-Za-z0-9]+))?_(?:[a-z]+-[A-Za-z0-9]+_)*"
    r"desc-lesions_table\.tsv$"
)
#: Columns added in front of every lesion row of the group table.
ID_COLUMNS = ("participant_id", "session_id")
#: A session named in a crash file: ``ses-Y`` in paths and messages, ``ses_Y`` in Nipype node names.
SESSION_IN_CRASH = re.compile(r"(?<![A-Za-z])ses[-_]([A-Za-z0-9]+)")


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
class CrashFile:
    """One crash file of the participant level under ``sub-X/log/``."""

    participant_id: str
    session_id: str | None  # the one session it names; None: the whole participant
    path: Path
    run_started: float  # seconds since the epoch (see run_start)
    reason: str  # one line, ending with the crash file's path relative to OUTPUT_DIR


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


def crash_session(text: str) -> str | None:
    """``ses-Y`` when a crash file's text names exactly one session, else None (the whole participant).

    A session workflow's node is named ``..._ses_Y_wf`` and its inputs lie under ``ses-Y/``;
    the participant's report node and the pre-flight refusal of a participant name none or all.
    """
    labels = set(SESSION_IN_CRASH.findall(text))
    return f"ses-{labels.pop()}" if len(labels) == 1 else None


def crash_file_paths(output_dir: Path) -> list[Path]:
    """The paths of every ``sub-X/log/[<run>/]crash-*`` of OUTPUT_DIR, sorted (none is opened)."""
    return sorted([*output_dir.glob("sub-*/log/crash-*"), *output_dir.glob("sub-*/log/*/crash-*")])


def participants_with_outputs(output_dir: Path) -> set[str]:
    """The participants (``sub-X``) with a lesion table or a crash file in OUTPUT_DIR: those the group
    level knows of. File names only: nothing is read."""
    return ({table.participant_id for table in find_lesion_tables(output_dir)}
            | {path.relative_to(output_dir).parts[0] for path in crash_file_paths(output_dir)})


def find_crash_files(output_dir: Path) -> list[CrashFile]:
    """Every ``sub-X/log/[<run>/]crash-*`` of OUTPUT_DIR, sorted by path (run folders by start time).

    A Nipype crash file concerns the one session it names (:func:`crash_session`); a pre-flight
    one (``crash-*-preflight.txt``, the participant was not processed at all) the whole participant.
    """
    crashes = []
    for path in crash_file_paths(output_dir):
        relative = path.relative_to(output_dir)
        # A pre-flight refusal stops the whole participant, even when it names one bad session.
        session = None if path.name.endswith("-preflight.txt") else crash_session(path.read_text(errors="replace"))
        crashes.append(CrashFile(relative.parts[0], session, path, run_start(path),
                                 f"{crash_reason(path)} ({relative})"))
    return crashes


def run_start(crash_file: Path) -> float:
    """When the run that wrote ``crash_file`` started: its ``log/<run id>/`` folder, else (a crash file
    of a version before run folders) the file's modification time.

    A table is stale when the failed run started after the run that wrote it; one written by that
    same run (a session's sink before the participant's report node crashed) is not.
    """
    started = run_id_start(crash_file.parent.name)
    return crash_file.stat().st_mtime if started is None else started


def written_by_runs(output_dir: Path, participant_id: str) -> dict[Path, float]:
    """``{file: start of the latest run that wrote it}`` from the participant's run manifests
    (``sub-X/log/<run id>/*_outputs.json``, written by each run's derivatives sink).

    A manifest that cannot be read, or whose folder is not a run id, is passed over: the table
    then falls back to its modification time (:func:`table_run_starts`).
    """
    runs: dict[Path, float] = {}
    for manifest in sorted((output_dir / participant_id / "log").glob("*/*_outputs.json")):
        started = run_id_start(manifest.parent.name)
        try:
            outputs = json.loads(manifest.read_text()).get("Outputs", {})
            paths = [output_dir / relative for relative in outputs.values()]
        except (OSError, ValueError, AttributeError, TypeError):
            continue
        if started is None:
            continue
        for path in paths:
            runs[path] = max(started, runs.get(path, started))
    return runs


def table_run_starts(output_dir: Path, tables: Iterable[SessionTable]) -> dict[Path, float]:
    """When the run that wrote each table started: from the run manifests (:func:`written_by_runs`),
    else (a table of a version before manifests) from the table's modification time.

    A table's run starts no later than it is written, so the fallback keeps the rule of
    :func:`find_stale_tables` for a table of the same run as a crash.
    """
    starts: dict[Path, float] = {}
    manifests: dict[str, dict[Path, float]] = {}
    for table in tables:
        if table.participant_id not in manifests:
            manifests[table.participant_id] = written_by_runs(output_dir, table.participant_id)
        recorded = manifests[table.participant_id].get(table.path)
        starts[table.path] = table.path.stat().st_mtime if recorded is None else recorded
    return starts


def current_template_masks(table: Path, masks: Sequence[Path], written: Mapping[Path, float]
                           ) -> tuple[list[Path], list[Path]]:
    """Split a session's template-space ``masks`` into those of the run that wrote its lesion ``table``
    and those left over from an earlier run, by the participant's run manifests (``written``, from
    :func:`written_by_runs`).

    A rerun without ``--output-spaces`` (or with other lesions) writes a new table but leaves the
    old masks in OUTPUT_DIR; pooled, they would add lesions that no current table has. A mask is
    current when the latest run that wrote the table is also the latest that wrote the mask. When
    no manifest lists the table (outputs of versions before manifests) the runs cannot be told
    apart and every mask is kept, as before.
    """
    run = written.get(table)
    if run is None:
        return list(masks), []
    current = [mask for mask in masks if written.get(mask) == run]
    return current, [mask for mask in masks if written.get(mask) != run]


def latest_crash_reasons(crashes: Iterable[CrashFile]) -> dict[str, str]:
    """``{participant_id: reason}`` of the last crash file (in path order) of each participant."""
    return {crash.participant_id: crash.reason for crash in crashes}


def newest_crash(table: SessionTable, crashes: Iterable[CrashFile]) -> CrashFile | None:
    """The crash of the latest run among ``crashes`` that concerns ``table``: same participant, and its
    session or none named."""
    concerning = [crash for crash in crashes if crash.participant_id == table.participant_id
                  and (crash.session_id is None or table.session_id is None or crash.session_id == table.session_id)]
    return max(concerning, key=lambda crash: crash.run_started, default=None)


def find_stale_tables(tables: Iterable[SessionTable], crashes: Iterable[CrashFile],
                      table_runs: Mapping[Path, float]) -> dict[SessionTable, CrashFile]:
    """The tables whose run started before the newest failed run that concerns them, with its crash file.

    ``table_runs`` gives when each table's run started (:func:`table_run_starts`; only tables of
    crashed participants are looked up). Such a table is left over from an earlier run: the
    participant's latest run failed.
    """
    by_participant: dict[str, list[CrashFile]] = {}
    for crash in crashes:
        by_participant.setdefault(crash.participant_id, []).append(crash)
    stale = {}
    for table in tables:
        crash = newest_crash(table, by_participant.get(table.participant_id, ()))
        if crash is not None and crash.run_started > table_runs[table.path]:
            stale[table] = crash
    return stale


def stale_warnings(stale: Mapping[SessionTable, CrashFile], output_dir: Path) -> list[str]:
    """One warning line per participant and crash file that made some of its tables stale."""
    grouped: dict[tuple[str, Path], list[SessionTable]] = {}
    for table, crash in stale.items():
        grouped.setdefault((table.participant_id, crash.path), []).append(table)
    lines = []
    for (participant, crash_path), tables in sorted(grouped.items()):
        names = ", ".join(sorted(table.path.relative_to(output_dir).as_posix() for table in tables))
        lines.append(f"{participant}: its latest participant-level run failed ({crash_path.relative_to(output_dir)} "
                     "is from a run that started after the run that wrote its lesion tables); its older outputs were "
                     f"left out of the group statistics: {names}")
    return lines


def stale_tables_of(output_dir: Path, tables: Sequence[SessionTable], crashes: Sequence[CrashFile]
                    ) -> dict[SessionTable, CrashFile]:
    """Which of OUTPUT_DIR's ``tables`` are stale (:func:`find_stale_tables`), each logged as a warning
    once: what the group statistics and ``group --train`` leave out."""
    crashed = {crash.participant_id for crash in crashes}
    table_runs = table_run_starts(output_dir, [table for table in tables if table.participant_id in crashed])
    stale = find_stale_tables(tables, crashes, table_runs)
    for line in stale_warnings(stale, output_dir):
        LOGGER.warning("%s", line)
    return stale


RUN_IN_NAME = re.compile(r"_run-([A-Za-z0-9]+)_")


def one_run_per_session(tables: Sequence[SessionTable], output_dir: Path) -> list[SessionTable]:
    """One lesion table per participant and session: of several runs (two QSM runs in one session
    give a table each), the last in natural order, usually the rescan; a warning names the others.

    The group statistics count lesions per session, so two runs of the same brain would count
    every lesion twice. The participant level's per-run tables stay as they are.
    """
    from bids_rim.group.stats import natural_key  # the same ordering as the patient-level session

    by_session: dict[tuple[str, str | None], list[SessionTable]] = {}
    for table in tables:
        by_session.setdefault((table.participant_id, table.session_id), []).append(table)
    kept = []
    for runs in by_session.values():
        runs = sorted(runs, key=lambda table: natural_key(next(iter(RUN_IN_NAME.findall(table.path.name)), "")))
        kept.append(runs[-1])
        if len(runs) > 1:
            LOGGER.warning("%s %s: %d runs have lesion tables; the group statistics use the last, %s, and leave "
                           "out %s", runs[-1].participant_id, runs[-1].session_id or "", len(runs),
                           runs[-1].path.relative_to(output_dir), ", ".join(
                               str(table.path.relative_to(output_dir)) for table in runs[:-1]))
    return kept


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
                      crashed: Mapping[str, str],
                      stale: Mapping[SessionTable, CrashFile] | None = None) -> list[ParticipantProblem]:
    """Sessions of BIDS_DIR (or with a stale table) without a usable lesion table, for participants
    that have at least one usable table; a stale session's reason is the crash that made it stale."""
    found: dict[str, set[str]] = {}
    for table in sessions:
        found.setdefault(table.participant_id, set()).add(table.session_id or "")
    stale_reasons = {(table.participant_id, table.session_id): crash.reason for table, crash in (stale or {}).items()
                     if table.session_id is not None}
    problems = []
    for participant, with_table in sorted(found.items()):
        stale_sessions = {session for owner, session in stale_reasons if owner == participant}
        for session in sorted(set(expected_sessions.get(participant, ())) | stale_sessions):
            if session in with_table:
                continue
            if (participant, session) in stale_reasons:
                problems.append(ParticipantProblem(participant, "failed", stale_reasons[participant, session], session))
            elif participant in crashed:
                problems.append(ParticipantProblem(participant, "failed", crashed[participant], session))
            else:
                problems.append(ParticipantProblem(participant, "missing", "session in BIDS_DIR without a lesion "
                                                   "table and no crash file", session))
    return problems


def aggregate_lesion_tables(output_dir: Path, participant_ids: Iterable[str] = (), *,
                            expected_sessions: Mapping[str, Sequence[str]] | None = None,
                            only: Collection[str] | None = None, progress: bool = False) -> AggregatedTables:
    """Collect OUTPUT_DIR's lesion tables and list the participants (and sessions) without one.

    ``participant_ids`` are those expected (``participants.tsv`` and BIDS_DIR's ``sub-*``
    folders, ``sub-`` prefixed); one of them with neither a table nor a crash file is *missing*.
    ``expected_sessions`` (from :func:`find_bids_sessions`) adds the sessions without a table.
    Stale tables (written before a later failed run, see :func:`find_stale_tables`) are left out,
    with a warning, and their sessions or participants listed as *failed*. ``only`` (``sub-`` prefixed
    ids, ``--participant-label``) keeps those participants' tables and crash files alone, before any
    table is read.
    """
    expected_sessions = expected_sessions or {}
    crashes, tables = find_crash_files(output_dir), find_lesion_tables(output_dir)
    if only is not None:
        crashes = [crash for crash in crashes if crash.participant_id in only]
        tables = [table for table in tables if table.participant_id in only]
    crashed = latest_crash_reasons(crashes)
    stale = stale_tables_of(output_dir, tables, crashes)
    sessions = one_run_per_session([table for table in tables if table not in stale], output_dir)
    lesions = read_lesion_tables(sessions, progress=progress)
    with_table = {table.participant_id for table in sessions}
    # A participant left without any usable table failed for the newest crash that made its tables stale.
    crashed |= {table.participant_id: crash.reason for table, crash in
                sorted(stale.items(), key=lambda item: item[1].run_started) if table.participant_id not in with_table}
    problems = [ParticipantProblem(participant, "failed", reason)
                for participant, reason in sorted(crashed.items()) if participant not in with_table]
    listed = {problem.participant_id for problem in problems} | with_table
    problems += [ParticipantProblem(participant, "missing", "no lesion table and no crash file in the output directory")
                 for participant in sorted(set(participant_ids) | set(expected_sessions)) if participant not in listed]
    problems += _missing_sessions(sessions, expected_sessions, crashed, stale)
    problems.sort(key=lambda problem: (problem.participant_id, problem.session_id or ""))
    return AggregatedTables(lesions=lesions, sessions=sessions, problems=problems)
