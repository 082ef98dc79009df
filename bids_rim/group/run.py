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
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from bids_rim.bidsio.derivatives import atomic_write_tsv
from bids_rim.errors import InputError
from bids_rim.group import sidecars, stats
from bids_rim.group.aggregate import AggregatedTables, ParticipantProblem, aggregate_lesion_tables, find_bids_sessions
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
    if "site" not in table.columns:
        LOGGER.warning("%s has no site column: all participants pooled as one site", path)
        table["site"] = pd.NA
    return table


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
                 site_tests: pd.DataFrame, count_model: stats.CountModelResult) -> dict[str, Path]:
    """Write the group TSVs and their sidecars atomically; returns their paths by name."""
    lesions = aggregated.lesions
    model_sidecar = sidecars.describe_columns(count_model.table, sidecars.COUNT_MODEL_COLUMNS, "")
    model_sidecar["Model"] = {
        "Family": {"negbin": "negative binomial (NB2, alpha by maximum likelihood)", "poisson": "Poisson"}[
            count_model.model],
        "Outcome": "rim_positive_count (rim+ lesions at the model's threshold) per participant",
        "Alpha": count_model.alpha,
        "NParticipants": count_model.n_patients,
        "NExcluded": count_model.n_excluded,
        "Notes": count_model.notes + [sidecars.PATIENT_LEVEL_NOTE],
    }
    sites_sidecar = sidecars.describe_columns(sites, sidecars.SITE_COLUMNS, "")
    sites_sidecar["Notes"] = [sidecars.PATIENT_LEVEL_NOTE]
    outputs = {
        "lesions": (lesions, _lesion_sidecar(aggregated, lesions)),
        "subjects": (subjects, sidecars.describe_columns(subjects, sidecars.SUBJECT_COLUMNS,
                                                         "Column of participants.tsv (see its participants.json)")),
        "sites": (sites, sites_sidecar),
        "sitetests": (site_tests, sidecars.describe_columns(site_tests, sidecars.SITE_TEST_COLUMNS, "")),
        "countmodel": (count_model.table, model_sidecar),
    }
    return {name: atomic_write_tsv(group_dir / f"desc-{name}_table.tsv", table, sidecar)
            for name, (table, sidecar) in outputs.items()}


def run_group_level(bids_dir: Path, output_dir: Path, *, covariates: Sequence[str] | None = None,
                    count_model: str = "negbin", progress: bool = True) -> GroupResult:
    """Statistics across subjects and sites from OUTPUT_DIR's lesion tables and BIDS_DIR's participants.tsv."""
    from bids_rim.reports.group import write_group_report

    bids_dir, output_dir = Path(bids_dir), Path(output_dir)
    participants = read_participants_tsv(bids_dir)
    aggregated = aggregate_lesion_tables(output_dir, participants["participant_id"],
                                         expected_sessions=find_bids_sessions(bids_dir), progress=progress)
    for problem in aggregated.problems:
        LOGGER.warning("%s %s: %s", problem.label, problem.status, problem.reason)
    if not aggregated.sessions:
        raise InputError(f"{output_dir}: no *_desc-lesions_table.tsv found; run the participant level first")
    LOGGER.info("Group level: %d lesion tables, %d lesions", len(aggregated.sessions), len(aggregated.lesions))

    sessions = pd.DataFrame([(t.participant_id, t.session_id or "n/a") for t in aggregated.sessions],
                            columns=["participant_id", "session_id"])
    lesions = aggregated.lesions.assign(session_id=aggregated.lesions["session_id"].fillna("n/a"))
    subjects = stats.subject_table(lesions, sessions, participants)
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
    unlisted = sorted(set(subjects["participant_id"]) - set(participants["participant_id"]))
    if unlisted:
        LOGGER.warning("not in participants.tsv (no site or covariates): %s", ", ".join(unlisted))
    patients = stats.patient_level(subjects)
    encoded = stats.encode_covariates(patients, stats.choose_covariates(participants, covariates),
                                      str(bids_dir / "participants.tsv"))
    model = stats.fit_count_model(patients, encoded, count_model)
    for note in model.notes:
        LOGGER.info("Count model: %s", note)
    sites = stats.site_table(patients, lesions)
    site_tests = stats.site_difference_tests(patients)

    tables = write_tables(output_dir / "group", aggregated, subjects, sites, site_tests, model)
    frequency_maps = write_frequency_maps(output_dir, patients[["participant_id", "session_id"]].itertuples(
        index=False, name=None))
    for item in frequency_maps:
        LOGGER.info("Frequency map (%s, %d patients): %s", item.desc, item.n_patients, item.path)
    report = write_group_report(output_dir, lesions=lesions, subjects=subjects, patients=patients, sites=sites,
                                site_tests=site_tests, count_model=model, problems=problems,
                                tables=tables, frequency_maps=frequency_maps)
    return GroupResult(report=report, tables=tables, subjects=subjects, sites=sites, site_tests=site_tests,
                       count_model=model, problems=problems, frequency_maps=frequency_maps)
