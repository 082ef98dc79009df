"""The group level's entry point: read the tables, compute the statistics, write tables and report.

Outputs under OUTPUT_DIR::

    group/desc-lesions_table.tsv (+.json)     every lesion of every subject-session
    group/desc-subjects_table.tsv (+.json)    one row per subject-session
    group/desc-sites_table.tsv (+.json)       one row per site
    group/desc-sitetests_table.tsv (+.json)   tests of site differences
    group/desc-countmodel_table.tsv (+.json)  rate ratios of the PRL count regression
    group/space-S_desc-{lesionfreq,prlfreq}_map.nii.gz (+.json)   with --output-spaces S at participant level
    group/figures/*.png                       the report's figures
    group.html                                the group report

With ``--participant-label`` only the named participants' outputs and ``participants.tsv`` rows
enter these, and the report and every sidecar say so (``ParticipantSelection``).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from bids_rim.bidsio.derivatives import atomic_write_json, atomic_write_tsv
from bids_rim.bidsio.sidecars import DECIMALS_BY_SUFFIX, tidy_lesion_table
from bids_rim.errors import InputError
from bids_rim.group import sidecars, stats
from bids_rim.group.aggregate import (
    AggregatedTables,
    ParticipantProblem,
    SessionTable,
    aggregate_lesion_tables,
    find_bids_sessions,
    participants_with_outputs,
)
from bids_rim.group.frequency import FrequencyMap, write_frequency_maps

LOGGER = logging.getLogger("bids_rim.group")


@dataclass(frozen=True)
class GroupResult:
    """What the group level wrote, and the participants it could not use."""

    report: Path
    tables: dict[str, Path]
    subjects: pd.DataFrame
    sites: pd.DataFrame
    site_tests: pd.DataFrame
    count_model: stats.CountModelResult
    problems: list[ParticipantProblem]
    frequency_maps: list[FrequencyMap]
    selection: dict | None = None  # the --participant-label selection (see selection_record); None: everyone


#: At most this many selected participants are named in the report's note (all of them in the sidecars).
NAMED_IN_NOTE = 20


def normalise_participant_ids(labels: Iterable[str]) -> list[str]:
    """``sub-`` prefixed participant ids, in the order given, each once (``--participant-label`` gives bare labels)."""
    return list(dict.fromkeys(label if label.startswith("sub-") else f"sub-{label}" for label in labels))


def check_participant_selection(output_dir: Path, labels: Iterable[str]) -> list[str]:
    """The ``sub-`` prefixed ids of ``--participant-label``; refuses (:class:`InputError`, one line) a named
    participant without participant-level outputs.

    Checked before any table is read: a typo, or a participant the participant level never ran
    for, would otherwise leave the group statistics silently one participant short, as the
    participant level refuses an unknown participant before processing anyone.
    """
    selected = normalise_participant_ids(labels)
    known = participants_with_outputs(Path(output_dir)) if selected else set()
    absent = [participant for participant in selected if participant not in known]
    if absent:
        them = "it" if len(absent) == 1 else "them"
        raise InputError(f"--participant-label: no participant-level outputs (lesion table or crash file) in "
                         f"{output_dir} for {', '.join(absent)}; run the participant level for {them} first, "
                         f"or leave {them} out")
    return selected


def selection_record(selected: Sequence[str], n_with_outputs: int) -> dict:
    """The ``ParticipantSelection`` entry of the group sidecars: who was analysed, out of how many."""
    return {
        "Description": ("The group level ran with --participant-label: only these participants' lesion tables, "
                        "template-space masks, crash files and participants.tsv rows entered the group tables, "
                        "statistics and maps; the others' participant-level outputs were not used."),
        "Option": "--participant-label",
        "Participants": sorted(selected),
        "NSelected": len(selected),
        "NWithParticipantLevelOutputs": n_with_outputs,
    }


def selection_note(selection: dict) -> str:
    """One sentence for the report: the statistics are of a subset (which participants, of how many)."""
    names = selection["Participants"]
    shown = ", ".join(names[:NAMED_IN_NOTE])
    if len(names) > NAMED_IN_NOTE:
        shown += f" and {len(names) - NAMED_IN_NOTE} more (listed in the tables' sidecars, ParticipantSelection)"
    return (f"Participant selection (--participant-label): {selection['NSelected']} of the "
            f"{selection['NWithParticipantLevelOutputs']} participants with participant-level outputs ({shown}); "
            "every count, statistic, map and table of this report is of them alone.")


def mark_frequency_maps(frequency_maps: Sequence[FrequencyMap], selection: dict) -> None:
    """Add ``ParticipantSelection`` to the frequency maps' sidecars, whose NPatients count only the selection."""
    for item in frequency_maps:
        sidecar = item.path.with_name(item.path.name.replace(".nii.gz", ".json"))
        content = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
        atomic_write_json(sidecar, {**content, "ParticipantSelection": selection})


def read_participants_tsv(bids_dir: Path) -> pd.DataFrame:
    """``participants.tsv`` with ``sub-`` prefixed ids (empty, with a warning, when absent)."""
    path = bids_dir / "participants.tsv"
    if not path.is_file():
        LOGGER.warning("%s not found: no site or covariates for the group level", path)
        return pd.DataFrame({"participant_id": pd.Series(dtype=str), "site": pd.Series(dtype=object)})
    try:
        table = pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False, dtype={"participant_id": str})
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: not a readable TSV ({error})") from error
    if "participant_id" not in table.columns:
        raise InputError(f"{path}: no participant_id column")
    ids = table["participant_id"].astype(str).str.strip()
    table["participant_id"] = ids.where(ids.str.startswith("sub-"), "sub-" + ids)
    duplicated = table["participant_id"][table["participant_id"].duplicated()]
    if len(duplicated):
        # Two rows for one participant could give it two sites or two ages: which one is right is the user's call.
        raise InputError(f"{path}: participant_id {duplicated.iloc[0]!r} is listed more than once")
    if "site" not in table.columns:
        LOGGER.warning("%s has no site column: all participants pooled as one site", path)
        table["site"] = pd.NA
    return table


def read_acquisition_times(bids_dir: Path, participant_ids: Iterable[str]) -> dict[tuple[str, str], pd.Timestamp]:
    """``acq_time`` of each session from ``BIDS_DIR/sub-X/sub-X_sessions.tsv``, where present and parseable.

    Keys are ``(participant_id, session_id)``; sessions without a usable time are absent, so
    that their participant falls back to natural label order.
    """
    times: dict[tuple[str, str], pd.Timestamp] = {}
    for participant in sorted(set(participant_ids)):
        path = bids_dir / participant / f"{participant}_sessions.tsv"
        if not path.is_file():
            continue
        try:
            table = pd.read_csv(path, sep="\t", dtype=str, na_values=["n/a"], keep_default_na=False)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
            LOGGER.warning("%s: not a readable TSV (%s); its sessions are ordered by label", path, error)
            continue
        if not {"session_id", "acq_time"} <= set(table.columns):
            continue
        sessions = table["session_id"].astype(str).str.strip()
        sessions = sessions.where(sessions.str.startswith("ses-"), "ses-" + sessions)
        parsed = pd.to_datetime(table["acq_time"].str.strip(), errors="coerce", utc=True, format="ISO8601")
        times.update({(participant, session): time for session, time in zip(sessions, parsed) if pd.notna(time)})
    return times


def decision_threshold(tables: Sequence[SessionTable]) -> tuple[float | None, str]:
    """The decision threshold the scored lesion tables share (their sidecars' ``ProcessingParameters``), and a caption.

    None, with the caption saying why, when there is no scored table, when a sidecar does not
    record it or when the tables disagree: a line drawn at one model's threshold over lesions
    scored by another would mislead.
    """
    if not tables:
        return None, "No threshold line: no lesion has a rim probability."
    found: dict[Path, float | None] = {}
    for table in tables:
        value = None
        try:
            parameters = json.loads(table.path.with_suffix(".json").read_text()).get("ProcessingParameters") or {}
            value = parameters.get("DecisionThreshold") if isinstance(parameters, dict) else None
        except (OSError, json.JSONDecodeError):
            pass
        found[table.path] = float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None
    absent = [path for path, value in found.items() if value is None]
    if absent:
        return None, (f"No threshold line: {len(absent)} of {len(found)} scored lesion tables do not record the "
                      f"model's decision threshold in their sidecar (ProcessingParameters.DecisionThreshold), "
                      f"e.g. {absent[0].name}.")
    values = sorted({round(value, 6) for value in found.values()})
    if len(values) > 1:
        return None, (f"No threshold line: the lesion tables were scored at different decision thresholds "
                      f"({', '.join(f'{value:.3g}' for value in values)}; models of different runs?).")
    return values[0], (f"Dashed line: the model's decision threshold {values[0]:.3g} (ProcessingParameters."
                       "DecisionThreshold of every scored lesion table); lesions at or above it are rim+.")


#: Significant digits of statistics whose magnitude varies (p-values, ratios, coefficients):
#: a fixed number of decimals would round a p-value of 1e-6 to 0.
SIGNIFICANT_DIGITS = 4
SIGNIFICANT_PREFIXES = ("p_", "statistic", "coefficient", "std_error", "rate_ratio")


def round_significant(value: float, digits: int = SIGNIFICANT_DIGITS) -> float:
    """``value`` to ``digits`` significant digits (NaN and inf unchanged)."""
    return float(f"{value:.{digits}g}") if np.isfinite(value) else value


def tidy_group_table(table: pd.DataFrame) -> pd.DataFrame:
    """Floats rounded to meaningful precision for the TSV: sums like 6796.419999999999 become 6796.42.

    The participant tables' rule (:data:`DECIMALS_BY_SUFFIX`: mm³ to 0.01, mm to 0.001, ppb to
    0.01, else 4 decimals), except for p-values, probabilities, test statistics and rate
    ratios, which keep 4 significant digits.
    """
    tidy = table.copy()
    for column in tidy.columns:
        values = tidy[column]
        if not pd.api.types.is_float_dtype(values):
            continue
        decimals = next((d for key, d in DECIMALS_BY_SUFFIX if key in column), None)
        if decimals is None and column.startswith(SIGNIFICANT_PREFIXES):
            tidy[column] = values.map(round_significant)
        else:
            tidy[column] = values.round(4 if decimals is None else decimals)
    return tidy


def _lesion_sidecar(aggregated: AggregatedTables, lesions: pd.DataFrame) -> dict:
    """Participant-level column descriptions (from the first table's sidecar) plus the id columns."""
    described: dict = {}
    for table in aggregated.sessions[:1]:
        sidecar = table.path.with_suffix(".json")
        if sidecar.is_file():
            try:
                described = {k: v for k, v in json.loads(sidecar.read_text()).items() if isinstance(v, dict)}
            except json.JSONDecodeError:
                LOGGER.warning("%s: not valid JSON; group lesion columns described generically", sidecar)
    return sidecars.describe_columns(lesions, {**sidecars.LESION_ID_COLUMNS, **described},
                                     "Column of the participant-level lesion table")


def write_tables(group_dir: Path, aggregated: AggregatedTables, subjects: pd.DataFrame, sites: pd.DataFrame,
                 site_tests: pd.DataFrame, count_model: stats.CountModelResult,
                 session_note: str = sidecars.PATIENT_LEVEL_NOTE, selection: dict | None = None) -> dict[str, Path]:
    """Write the group TSVs (floats rounded, missing values n/a) and their sidecars atomically; returns their paths.

    ``selection`` (:func:`selection_record`), when ``--participant-label`` chose a subset, goes into
    every sidecar as ``ParticipantSelection``, so that a table read on its own says whose it is.
    """
    lesions = aggregated.lesions
    model_sidecar = sidecars.describe_columns(count_model.table, sidecars.COUNT_MODEL_COLUMNS, "")
    model_sidecar["Model"] = {
        "Family": {"negbin": "negative binomial (NB2, alpha by maximum likelihood)", "poisson": "Poisson"}[
            count_model.model],
        "Outcome": "rim_positive_count (rim+ lesions at the model's threshold) per participant",
        "Alpha": count_model.alpha,
        "NParticipants": count_model.n_patients,
        "NExcluded": count_model.n_excluded,
        "SiteLikelihoodRatioTest": count_model.site_lr_test and {
            key: round_significant(value) if key != "DF" else value for key, value in count_model.site_lr_test.items()},
        "Notes": count_model.notes + [session_note],
    }
    if count_model.alpha is not None:
        model_sidecar["Model"]["Alpha"] = round_significant(count_model.alpha)
    sites_sidecar = sidecars.describe_columns(sites, sidecars.SITE_COLUMNS, "")
    sites_sidecar["Notes"] = [session_note]
    subjects_sidecar = sidecars.describe_columns(subjects, sidecars.SUBJECT_COLUMNS,
                                                 "Column of participants.tsv (see its participants.json)")
    subjects_sidecar["Notes"] = [session_note]
    outputs = {
        "lesions": (tidy_lesion_table(lesions), _lesion_sidecar(aggregated, lesions)),
        "subjects": (tidy_group_table(subjects), subjects_sidecar),
        "sites": (tidy_group_table(sites), sites_sidecar),
        "sitetests": (tidy_group_table(site_tests),
                      sidecars.describe_columns(site_tests, sidecars.SITE_TEST_COLUMNS, "")),
        "countmodel": (tidy_group_table(count_model.table), model_sidecar),
    }
    return {name: atomic_write_tsv(group_dir / f"desc-{name}_table.tsv", table,
                                   sidecar if selection is None else {**sidecar, "ParticipantSelection": selection})
            for name, (table, sidecar) in outputs.items()}


def run_group_level(bids_dir: Path, output_dir: Path, *, covariates: Sequence[str] | None = None,
                    count_model: str = "negbin", progress: bool = True,
                    participant_labels: Sequence[str] = ()) -> GroupResult:
    """Statistics across subjects and sites from OUTPUT_DIR's lesion tables and BIDS_DIR's participants.tsv.

    ``participant_labels`` (``--participant-label``, with or without ``sub-``) restricts everything
    to those participants, e.g. to leave QC-failed ones out without deleting their outputs: their
    tables, masks, crash files and ``participants.tsv`` rows alone are used, and the report and
    sidecars say so. A named participant without participant-level outputs is refused first.
    """
    from bids_rim.reports.group import write_group_report

    bids_dir, output_dir = Path(bids_dir), Path(output_dir)
    selected = check_participant_selection(output_dir, participant_labels)
    participants = read_participants_tsv(bids_dir)
    expected_sessions = find_bids_sessions(bids_dir)
    if selected:
        participants = participants[participants["participant_id"].isin(selected)].reset_index(drop=True)
        expected_sessions = {key: value for key, value in expected_sessions.items() if key in selected}
    aggregated = aggregate_lesion_tables(output_dir, participants["participant_id"],
                                         expected_sessions=expected_sessions, only=set(selected) if selected else None,
                                         progress=progress)
    selection = None
    if selected:
        selection = selection_record(selected, len(participants_with_outputs(output_dir)))
        LOGGER.info("Group level restricted by --participant-label to %d of %d participants with outputs: %s",
                    selection["NSelected"], selection["NWithParticipantLevelOutputs"], ", ".join(selected))
    for problem in aggregated.problems:
        LOGGER.warning("%s %s: %s", problem.label, problem.status, problem.reason)
    if not aggregated.sessions:
        raise InputError(f"{output_dir}: no *_desc-lesions_table.tsv found; run the participant level first")
    LOGGER.info("Group level: %d lesion tables, %d lesions", len(aggregated.sessions), len(aggregated.lesions))

    sessions = pd.DataFrame([(t.participant_id, t.session_id or "n/a") for t in aggregated.sessions],
                            columns=["participant_id", "session_id"])
    lesions = aggregated.lesions.assign(session_id=aggregated.lesions["session_id"].fillna("n/a"))
    subjects = stats.subject_table(lesions, sessions, participants)
    if not subjects.empty:
        subjects = stats.natural_session_order(subjects)
    unscored = stats.unscored_sessions(subjects)
    unscored_problems = [
        ParticipantProblem(participant, "unscored", "lesion table without rim probabilities (participant level run "
                           "without a model); left out of the statistics", None if session == "n/a" else session)
        for participant, session in subjects.loc[unscored, ["participant_id", "session_id"]].itertuples(index=False)]
    for problem in unscored_problems:
        LOGGER.warning("%s %s: %s", problem.label, problem.status, problem.reason)
    problems = sorted(aggregated.problems + unscored_problems,
                      key=lambda problem: (problem.participant_id, problem.session_id or ""))
    subjects = subjects[~unscored].reset_index(drop=True)
    if subjects.empty:
        raise InputError("no lesion table has rim probabilities: the participant level ran without a model "
                         "(--no-inference?); the group statistics need rim probabilities")
    unlisted = sorted(set(subjects["participant_id"]) - set(participants["participant_id"]))
    if unlisted:
        LOGGER.warning("not in participants.tsv (no site or covariates): %s", ", ".join(unlisted))
    times = read_acquisition_times(bids_dir, subjects["participant_id"])
    acquisition_times = pd.Series([times.get(key, pd.NaT) for key in subjects[["participant_id", "session_id"]]
                                   .itertuples(index=False, name=None)], index=subjects.index, dtype=object)
    chosen, session_note = stats.patient_sessions(subjects, acquisition_times if times else None)
    subjects = subjects.assign(patient_level_session=subjects.index.isin(chosen).astype(int))
    patients = subjects.loc[chosen].sort_values("participant_id", kind="stable").reset_index(drop=True)
    # Default covariates were not asked for: one that cannot be encoded is left out with a note, not fatal.
    encoded = stats.encode_covariates(patients, stats.choose_covariates(participants, covariates),
                                      str(bids_dir / "participants.tsv"), drop_unusable=not covariates)
    model = stats.fit_count_model(patients, encoded, count_model)
    for note in model.notes:
        LOGGER.info("Count model: %s", note)
    sites = stats.site_table(patients, lesions)
    site_tests = stats.site_difference_tests(patients)

    tables = write_tables(output_dir / "group", aggregated, subjects, sites, site_tests, model, session_note,
                          selection)
    scored = subjects.loc[subjects["n_lesions"] > subjects["n_lesions_without_probability"],
                          ["participant_id", "session_id"]].itertuples(index=False, name=None)
    by_session = {(table.participant_id, table.session_id or "n/a"): table for table in aggregated.sessions}
    threshold, threshold_caption = decision_threshold([by_session[key] for key in scored if key in by_session])
    frequency_maps = write_frequency_maps(output_dir, [by_session[key] for key in patients[
        ["participant_id", "session_id"]].itertuples(index=False, name=None)])
    for item in frequency_maps:
        LOGGER.info("Frequency map (%s, %d patients): %s", item.desc, item.n_patients, item.path)
    report_note = session_note
    if selection is not None:
        mark_frequency_maps(frequency_maps, selection)
        report_note = f"{selection_note(selection)} {session_note}"  # the report's summary note shows it first
    report = write_group_report(output_dir, lesions=lesions, subjects=subjects, patients=patients, sites=sites,
                                site_tests=site_tests, count_model=model, problems=problems,
                                tables=tables, frequency_maps=frequency_maps, session_note=report_note,
                                decision_threshold=threshold, threshold_caption=threshold_caption)
    return GroupResult(report=report, tables=tables, subjects=subjects, sites=sites, site_tests=site_tests,
                       count_model=model, problems=problems, frequency_maps=frequency_maps, selection=selection)
