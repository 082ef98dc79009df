"""A participant whose latest participant-level run failed is failed at group level, even when
an earlier successful run left its lesion tables in OUTPUT_DIR (they are stale: left out, not deleted)."""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bids_rim.bidsio.run_ids import new_run_id
from bids_rim.cli.run import main
from bids_rim.group.aggregate import (
    CrashFile,
    SessionTable,
    aggregate_lesion_tables,
    crash_session,
    find_bids_sessions,
    find_stale_tables,
    table_run_starts,
)
from bids_rim.group.run import run_group_level
from bids_rim.group.simulate import lesion_table_text, simulate_cohort_tables

NOW = time.time()


def write_crash(output_dir: Path, participant: str, text: str, *, age_s: float = 0.0,
                name: str = "crash-20250102-030405-user-n4_flair-0.txt") -> Path:
    """A crash file of a run that started ``age_s`` seconds before ``NOW`` (its ``log/<run id>/`` folder,
    named as the participant level names it), modified then too."""
    path = output_dir / participant / "log" / run_id(age_s) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.utime(path, (NOW - age_s, NOW - age_s))
    return path


def age(path: Path, age_s: float) -> None:
    """Set a file's modification time ``age_s`` seconds before ``NOW``."""
    os.utime(path, (NOW - age_s, NOW - age_s))


def run_id(age_s: float) -> str:
    """The id of a participant-level run that started ``age_s`` seconds before ``NOW``."""
    return new_run_id(NOW - age_s)


def record_run(output_dir: Path, table: Path, age_s: float) -> Path:
    """Record, as the participant level's sink does, that a run started ``age_s`` seconds before ``NOW``
    wrote ``table`` (its manifest in ``sub-X/log/<run id>/``); the table's file time is left alone."""
    relative = table.relative_to(output_dir)
    manifest = output_dir / relative.parts[0] / "log" / run_id(age_s) / table.name.replace(
        "_desc-lesions_table.tsv", "_outputs.json")
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({"ParticipantLevelRun": run_id(age_s), "Outputs": {"table": relative.as_posix()}}))
    return manifest


@pytest.fixture()
def cohort(tmp_path):
    """16 simulated participants with lesion tables written an hour ago."""
    cohort = simulate_cohort_tables(tmp_path, n_subjects=16, site_log_rate={"A": 0.0, "B": 1.0}, seed=7)
    for table in cohort.output_dir.glob("sub-*/anat/*_desc-lesions_table.tsv"):
        age(table, 3600)
    return cohort


def test_a_failed_rerun_leaves_the_old_tables_out(cohort, caplog):
    """sub-001 succeeded an hour ago, then its rerun crashed: its table is stale, it is failed."""
    crash = write_crash(cohort.output_dir, "sub-001", "Node: wf.sub_001_wf.sub_001_wf.n4_flair\n"
                        "RuntimeError: N4 diverged on a truncated FLAIR\n", age_s=60)
    stale_table = cohort.output_dir / "sub-001" / "anat" / "sub-001_desc-lesions_table.tsv"
    with caplog.at_level(logging.WARNING, logger="bids_rim.group"):
        result = run_group_level(cohort.bids_dir, cohort.output_dir, progress=False)

    assert "sub-001" not in set(result.subjects["participant_id"])
    assert len(result.subjects) == 15
    for name in ("subjects", "lesions"):
        written = pd.read_csv(result.tables[name], sep="\t", dtype=str)
        assert "sub-001" not in set(written["participant_id"]), name
    failed = [(p.participant_id, p.session_id, p.status) for p in result.problems if p.status == "failed"]
    assert failed == [("sub-001", None, "failed")]
    reason = next(p.reason for p in result.problems if p.participant_id == "sub-001")
    relative = crash.relative_to(cohort.output_dir).as_posix()
    assert "N4 diverged" in reason and relative in reason
    html = result.report.read_text()
    assert re.search(r"<td>sub-001</td>\s*<td>all</td><td>failed</td>", html)

    stale_warnings = [record for record in caplog.records
                      if record.levelno == logging.WARNING and "left out" in record.getMessage()
                      and relative in record.getMessage()]
    assert len(stale_warnings) == 1
    message = stale_warnings[0].getMessage()
    assert "\n" not in message and message.startswith("sub-001: ") and "older outputs" in message
    assert stale_table.is_file()  # nothing deleted


def test_an_older_crash_does_not_discard_a_later_success(cohort, caplog):
    """sub-001 crashed two hours ago and succeeded an hour ago: its table is used, no warning."""
    write_crash(cohort.output_dir, "sub-001", "RuntimeError: out of memory\n", age_s=7200)
    with caplog.at_level(logging.WARNING, logger="bids_rim.group"):
        result = run_group_level(cohort.bids_dir, cohort.output_dir, progress=False)
    assert "sub-001" in set(result.subjects["participant_id"]) and len(result.subjects) == 16
    assert not [p for p in result.problems if p.status == "failed"]
    assert not any("left out" in record.getMessage() for record in caplog.records)


def test_a_crash_of_the_run_that_wrote_the_tables_does_not_discard_them(cohort, caplog):
    """The report node of the run that wrote sub-001's table an hour ago crashed after it: the run started
    before the table, so the table is that run's own, not stale (the participant is failed, its table kept)."""
    crash = write_crash(cohort.output_dir, "sub-001", "Node: bids_rim_wf.sub_001_wf.report\nOSError: disk full\n",
                        age_s=3700)
    age(crash, 3500)  # written after the table, by the same run
    with caplog.at_level(logging.WARNING, logger="bids_rim.group"):
        result = run_group_level(cohort.bids_dir, cohort.output_dir, progress=False)
    assert "sub-001" in set(result.subjects["participant_id"]) and len(result.subjects) == 16
    assert not any("left out" in record.getMessage() for record in caplog.records)


def test_run_manifests_decide_where_file_times_were_lost(cohort, caplog):
    """OUTPUT_DIR copied without its file times: the run manifests still say that sub-001's table predates
    its failed rerun, and that sub-002's is its failed run's own (the report node crashed after the sink)."""
    out = cohort.output_dir
    tables = {participant: out / participant / "anat" / f"{participant}_desc-lesions_table.tsv"
              for participant in ("sub-001", "sub-002")}
    record_run(out, tables["sub-001"], 3600)
    age(tables["sub-001"], 0)  # file time: just now, after the crash
    write_crash(out, "sub-001", "RuntimeError: N4 diverged\n", age_s=60)
    record_run(out, tables["sub-002"], 60)
    age(tables["sub-002"], 7200)  # file time: long before the crash
    write_crash(out, "sub-002", "Node: bids_rim_wf.sub_002_wf.report\nOSError: disk full\n", age_s=60)
    with caplog.at_level(logging.WARNING, logger="bids_rim.group"):
        result = run_group_level(cohort.bids_dir, out, progress=False)
    analysed = set(result.subjects["participant_id"])
    assert "sub-001" not in analysed and "sub-002" in analysed and len(analysed) == 15
    warnings = [record.getMessage() for record in caplog.records if "left out" in record.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("sub-001: ")


def test_table_run_starts_read_the_latest_manifest_else_the_file_time(tmp_path):
    out = tmp_path / "out"
    tables = [SessionTable("sub-1", None, out / "sub-1" / "anat" / "sub-1_desc-lesions_table.tsv"),
              SessionTable("sub-2", None, out / "sub-2" / "anat" / "sub-2_desc-lesions_table.tsv")]
    for table in tables:
        table.path.parent.mkdir(parents=True)
        table.path.write_text("lesion_id\n")
        age(table.path, 500)
    assert table_run_starts(out, tables) == pytest.approx({t.path: NOW - 500 for t in tables})  # no manifests
    record_run(out, tables[0].path, 7200)
    record_run(out, tables[0].path, 3600)  # a later run wrote it again
    unreadable = record_run(out, tables[1].path, 100)
    unreadable.write_text("[1, 2]")  # not an object: passed over
    (out / "sub-2" / "log" / "not-a-run").mkdir()
    (out / "sub-2" / "log" / "not-a-run" / "x_outputs.json").write_text(json.dumps({"Outputs": {"t": "sub-2/anat/"
                                                                                    "sub-2_desc-lesions_table.tsv"}}))
    starts = table_run_starts(out, tables)
    assert abs(starts[tables[0].path] - (NOW - 3600)) < 1.0  # run ids have whole seconds
    assert starts[tables[1].path] == pytest.approx(NOW - 500)


def write_session_tables(tmp_path: Path, participant: str = "sub-02") -> tuple[Path, Path]:
    """BIDS_DIR with ses-01 and ses-02 folders, OUTPUT_DIR with an hour-old table for each."""
    bids_dir, output_dir = tmp_path / "bids", tmp_path / "out"
    rng = np.random.default_rng(3)
    for session in ("ses-01", "ses-02"):
        (bids_dir / participant / session / "anat").mkdir(parents=True)
        table = output_dir / participant / session / "anat" / f"{participant}_{session}_desc-lesions_table.tsv"
        table.parent.mkdir(parents=True)
        table.write_text(lesion_table_text(rng, 2, 3))
        age(table, 3600)
    return bids_dir, output_dir


def test_a_crash_of_one_session_leaves_only_that_session_out(tmp_path, caplog):
    """A node of ses-02 crashed in the rerun: ses-02 is failed, ses-01's table (its run went on) is kept."""
    bids_dir, output_dir = write_session_tables(tmp_path)
    write_crash(output_dir, "sub-02", "Node: bids_rim_wf.sub_02_wf.sub_02_ses_02_wf.register_flair_to_qsm\n"
                "RuntimeError: registration diverged\n", age_s=60)
    with caplog.at_level(logging.WARNING, logger="bids_rim.group"):
        aggregated = aggregate_lesion_tables(output_dir, ["sub-02"], expected_sessions=find_bids_sessions(bids_dir))
    assert [(t.participant_id, t.session_id) for t in aggregated.sessions] == [("sub-02", "ses-01")]
    assert set(aggregated.lesions["session_id"]) == {"ses-01"}
    assert [(p.participant_id, p.session_id, p.status) for p in aggregated.problems] == [("sub-02", "ses-02", "failed")]
    assert "registration diverged" in aggregated.problems[0].reason
    messages = [record.getMessage() for record in caplog.records if "left out" in record.getMessage()]
    assert len(messages) == 1 and "sub-02_ses-02_desc-lesions_table.tsv" in messages[0]
    assert "ses-01_desc" not in messages[0]


def test_a_preflight_refusal_leaves_every_session_out(tmp_path, caplog):
    """A pre-flight refusal names one bad session but stops the whole participant: all tables are stale."""
    bids_dir, output_dir = write_session_tables(tmp_path)
    write_crash(output_dir, "sub-02", "bids_rim pre-flight check failed\nInputError: sub-02_ses-02: bad FLAIR\n",
                age_s=60, name="crash-20250102-030405-preflight.txt")
    with caplog.at_level(logging.WARNING, logger="bids_rim.group"):
        aggregated = aggregate_lesion_tables(output_dir, ["sub-02"], expected_sessions=find_bids_sessions(bids_dir))
    assert aggregated.sessions == [] and aggregated.lesions.empty
    assert [(p.participant_id, p.session_id, p.status) for p in aggregated.problems] == [("sub-02", None, "failed")]
    assert "bad FLAIR" in aggregated.problems[0].reason
    messages = [record.getMessage() for record in caplog.records if "left out" in record.getMessage()]
    assert len(messages) == 1 and "ses-01" in messages[0] and "ses-02" in messages[0]


def test_crash_session_and_stale_tables_are_pure():
    assert crash_session("Node: wf.sub_1_wf.sub_1_ses_A2_wf.n4\nFile /bids/sub-1/ses-A2/anat/x\n") == "ses-A2"
    assert crash_session("inputs: sub-1/ses-1/... sub-1/ses-2/...") is None  # the report node: all sessions
    assert crash_session("RuntimeError: it uses-nothing") is None
    tables = [SessionTable("sub-1", "ses-1", Path("a")), SessionTable("sub-1", "ses-2", Path("b")),
              SessionTable("sub-2", None, Path("c"))]
    crashes = [CrashFile("sub-1", "ses-2", Path("x"), 10.0, "r"), CrashFile("sub-2", "ses-9", Path("y"), 5.0, "s")]
    stale = find_stale_tables(tables, crashes, {Path("a"): 1.0, Path("b"): 1.0, Path("c"): 5.0})
    assert stale == {tables[1]: crashes[0]}  # ses-1 not concerned; sub-2's table not older than its crash


def test_auditor_repro_through_the_command_line(cohort_copy, tmp_path, capsys):
    """Tables from an earlier run (by their sidecars' run ids), then a real participant-level rerun that
    fails on a truncated FLAIR."""
    output_dir = tmp_path / "out"
    rng = np.random.default_rng(1)
    participants = sorted(path.name for path in cohort_copy.glob("sub-*"))
    for participant in participants:  # what the earlier successful run left behind
        table = output_dir / participant / "ses-01" / "anat" / f"{participant}_ses-01_desc-lesions_table.tsv"
        table.parent.mkdir(parents=True)
        table.write_text(lesion_table_text(rng, 2, 4))
        record_run(output_dir, table, 3600)  # its file time stays new, as after a copy that lost it
    flair = cohort_copy / "sub-001" / "ses-01" / "anat" / "sub-001_ses-01_FLAIR.nii.gz"
    flair.write_bytes(flair.read_bytes()[:1000])
    code = main([str(cohort_copy), str(output_dir), "participant", "--participant-label", "001",
                 "--skip-bids-validation", "--no-inference", "--nprocs", "1", "--omp-nthreads", "1",
                 "-w", str(tmp_path / "work")])
    assert code == 1
    crash = next(output_dir.glob("sub-001/log/*/crash-*"))

    assert main([str(cohort_copy), str(output_dir), "group"]) == 0
    subjects = pd.read_csv(output_dir / "group" / "desc-subjects_table.tsv", sep="\t", dtype=str)
    assert "sub-001" not in set(subjects["participant_id"]) and len(subjects) == len(participants) - 1
    html = (output_dir / "group.html").read_text()
    assert re.search(r"<td>sub-001</td>\s*<td>all</td><td>failed</td>", html)
    assert crash.relative_to(output_dir).as_posix() in html
    assert (output_dir / "sub-001" / "ses-01" / "anat" / "sub-001_ses-01_desc-lesions_table.tsv").is_file()


def test_group_training_leaves_stale_sessions_out(participant_run, tmp_path, caplog):
    """group --train reads patches, not the group tables: a participant whose rerun failed is left out there too."""
    import shutil

    from bids_rim.bidsio.training_data import load_training_set

    output_dir = tmp_path / "out"
    shutil.copytree(participant_run["output"], output_dir)
    for manifest in list(output_dir.glob("sub-*/log/*/*_outputs.json")):  # the copied runs become an hour old
        older = manifest.parent.with_name(run_id(3600)) / manifest.name
        older.parent.mkdir(exist_ok=True)
        manifest.replace(older)
    write_crash(output_dir, "sub-002", "bids_rim pre-flight check failed\nInputError: bad FLAIR\n", age_s=60,
                name="crash-20250102-030405-preflight.txt")
    everyone = sorted(path.name for path in output_dir.glob("sub-*") if path.is_dir())
    participants = pd.DataFrame({"participant_id": everyone})
    with caplog.at_level(logging.WARNING, logger="bids_rim.group"):
        annotations = participant_run["bids"] / "derivatives" / "rim_annotations"
        training = load_training_set(output_dir, participants, annotations)
    assert "sub-002" in everyone and set(training.meta["participant_id"]) == set(everyone) - {"sub-002"}
    assert any(record.getMessage().startswith("sub-002: its latest participant-level run failed")
               for record in caplog.records)


def test_a_session_with_two_runs_counts_its_lesions_once(tmp_path, caplog):
    """Two QSM runs of one session give two tables; the group level uses the last run (run-10 after
    run-2), so that no lesion is counted twice, and says which it left out."""
    output_dir = tmp_path / "out"
    rng = np.random.default_rng(4)
    anat = output_dir / "sub-02" / "ses-01" / "anat"
    anat.mkdir(parents=True)
    for run, n_lesions in (("2", 3), ("10", 5)):
        (anat / f"sub-02_ses-01_run-{run}_desc-lesions_table.tsv").write_text(lesion_table_text(rng, n_lesions, 2))
    with caplog.at_level(logging.WARNING, logger="bids_rim.group"):
        aggregated = aggregate_lesion_tables(output_dir, ["sub-02"])
    assert [table.path.name for table in aggregated.sessions] == ["sub-02_ses-01_run-10_desc-lesions_table.tsv"]
    assert len(aggregated.lesions) == 7  # run-10: 5 rim+ and 2 rim- lesions
    messages = [record.getMessage() for record in caplog.records if "2 runs have lesion tables" in record.getMessage()]
    assert len(messages) == 1 and "run-2_desc" in messages[0] and "\n" not in messages[0]
