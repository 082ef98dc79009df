"""Every participant a participant-level run processes records how the run was invoked, as fMRIPrep's
``sub-X/log/<run>/fmriprep.toml`` does: ``OUTPUT_DIR/sub-X/log/<run id>/bids_rim.json``."""

from __future__ import annotations

import fnmatch
import json
import platform
import re
from datetime import datetime, timezone
from pathlib import Path

import nibabel as nib
import numpy as np

import bids_rim
from bids_rim.bidsio.derivatives import BIDSIGNORE
from bids_rim.bidsio.run_ids import run_id_start
from bids_rim.bidsio.run_record import RUN_RECORD_NAME, Invocation, run_record
from bids_rim.bidsio.validator import find_validator, validate_dataset
from bids_rim.cli.run import main
from bids_rim.config import ExecutionSettings, RunConfig
from bids_rim.group.aggregate import find_crash_files, written_by_runs

from .conftest import FAST_OPTIONS


def _qsm_in_hz(bids_dir: Path, subject: str) -> None:
    """Make ``subject``'s QSM map look like Hz, which the pre-flight check refuses."""
    path = next((bids_dir / f"sub-{subject}" / "ses-01" / "anat").glob("*_Chimap.nii*"))
    image = nib.load(path)
    data = np.asanyarray(image.dataobj).astype(np.float32) * 128.0  # 1 ppm ~ 128 Hz at 3 T
    header = image.header.copy()
    header.set_data_dtype(np.float32)
    nib.Nifti1Image(data, image.affine, header).to_filename(path)


def _without_qsm(bids_dir: Path, subject: str) -> None:
    """Remove ``subject``'s QSM map: the participant is unusable before any pre-flight check of images."""
    for path in (bids_dir / f"sub-{subject}" / "ses-01" / "anat").glob("*_Chimap.*"):
        path.unlink()


def test_a_processed_participant_records_the_run_and_a_refused_one_does_not(cohort_copy: Path,
                                                                           tmp_path: Path) -> None:
    """One real run: sub-001 is processed, sub-002 (QSM in Hz) and sub-003 (no QSM) are refused before it.

    The record of sub-001 says what was asked (labels, -d, the filter file's content, the working directory,
    the config file's options) with absolute paths, and is named so that neither the group level nor the
    BIDS validator reads it.
    """
    _qsm_in_hz(cohort_copy, "002")
    _without_qsm(cohort_copy, "003")
    output_dir, work_dir = tmp_path / "out", tmp_path / "work"
    masks = cohort_copy / "derivatives" / "lesion_masks"
    bids_filter = {"flair": {"extension": ".nii.gz"}}
    filter_file = tmp_path / "filter.json"
    filter_file.write_text(json.dumps(bids_filter))
    config_file = tmp_path / "bids_rim.toml"
    config_file.write_text("no-inference = true\nskip-bids-validation = true\n")
    argv = [str(cohort_copy), str(output_dir), "participant", "--participant-label", "001", "sub-002", "003",
            "-d", str(masks), "--bids-filter-file", str(filter_file), "-w", str(work_dir),
            "--config-file", str(config_file), *FAST_OPTIONS]

    assert main(argv) == 1  # sub-002 and sub-003 failed, sub-001 finished
    assert (output_dir / "sub-001" / "ses-01" / "anat" / "sub-001_ses-01_desc-lesions_table.tsv").is_file()

    records = sorted(output_dir.glob(f"sub-*/log/*/{RUN_RECORD_NAME}"))
    assert [path.relative_to(output_dir).parts[0] for path in records] == ["sub-001"]
    record = json.loads(records[0].read_text())
    run_id = records[0].parent.name
    assert record["ParticipantLevelRun"] == run_id and re.fullmatch(r"\d{8}-\d{6}Z", run_id)
    started = datetime.fromisoformat(record["Started"])
    assert started.utcoffset() == timezone.utc.utcoffset(None)
    assert started.timestamp() == run_id_start(run_id)
    assert record["CommandLine"] == ["bids_rim", *argv]
    assert record["ConfigFile"] == str(config_file)
    assert record["Participant"] == "sub-001" and record["Sessions"] == ["sub-001_ses-01"]
    assert record["BidsRimVersion"] == bids_rim.__version__
    assert record["Python"] == platform.python_version() and record["Host"]
    assert record["Model"] == {"Model": None, "ModelSHA256": None, "DecisionThreshold": None}  # --no-inference

    configuration = record["Configuration"]
    assert configuration["analysis_level"] == "participant"
    assert configuration["participant_labels"] == ["001", "002", "003"]
    assert configuration["bids_dir"] == str(cohort_copy) and configuration["output_dir"] == str(output_dir)
    assert configuration["derivatives"] == [str(masks)]
    assert configuration["bids_filters"] == bids_filter
    assert configuration["execution"]["work_dir"] == str(work_dir)
    assert configuration["run_inference"] is False and configuration["skip_bids_validation"] is True  # from the file
    assert configuration["lesions"]["patch_size"] == 16

    # The refused participants keep only their pre-flight crash file, in a folder of the same run.
    for subject in ("002", "003"):
        log = output_dir / f"sub-{subject}" / "log"
        assert [path.name for path in log.rglob("*")] == [run_id, f"crash-{run_id}-preflight.txt"], subject

    # Nothing else reads the record by accident: not a crash file, not a run manifest, not BIDS.
    assert not fnmatch.fnmatch(RUN_RECORD_NAME, "crash-*") and not fnmatch.fnmatch(RUN_RECORD_NAME, "*_outputs.json")
    assert {crash.path.parent.parent.parent.name for crash in find_crash_files(output_dir)} == {"sub-002", "sub-003"}
    assert all(path.name != RUN_RECORD_NAME for path in written_by_runs(output_dir, "sub-001"))
    assert "sub-*/log" in BIDSIGNORE.splitlines()
    assert (output_dir / ".bidsignore").read_text() == BIDSIGNORE
    if find_validator() is not None:
        result = validate_dataset(output_dir)
        assert result.errors == [], [str(issue) for issue in result.errors]


def test_boilerplate_only_records_no_run(small_cohort: Path, tmp_path: Path) -> None:
    """``--boilerplate-only`` processes nobody, so no participant gets a run record."""
    output_dir = tmp_path / "out"
    assert main([str(small_cohort), str(output_dir), "participant", "--boilerplate-only", "--no-inference",
                 "-w", str(tmp_path / "work")]) == 0
    assert (output_dir / "logs" / "CITATION.md").is_file()
    assert not list(output_dir.glob("sub-*"))


def test_the_record_names_absolute_paths_and_no_foreign_command_line(tmp_path: Path, monkeypatch) -> None:
    """A configuration built in Python with relative paths is recorded with absolute ones; without an
    invocation (not called through ``main``) the command line is null, not pytest's argv."""
    monkeypatch.chdir(tmp_path)
    config = RunConfig(bids_dir=Path("bids"), output_dir=Path("out"), analysis_level="participant",
                       derivatives=(Path("masks"),), execution=ExecutionSettings(work_dir=Path("work"), nprocs=1))
    record = run_record(config, "20240501-120000Z", subject="01", sessions=["sub-01"], invocation=None)
    assert record["CommandLine"] is None and record["ConfigFile"] is None
    assert record["Started"] == "2024-05-01T12:00:00Z"
    configuration = record["Configuration"]
    assert configuration["bids_dir"] == str(tmp_path / "bids") and configuration["output_dir"] == str(tmp_path / "out")
    assert configuration["derivatives"] == [str(tmp_path / "masks")]
    assert configuration["execution"]["work_dir"] == str(tmp_path / "work")

    invoked = run_record(config, "20240501-120000Z", subject="01", sessions=["sub-01"],
                         invocation=Invocation(("bids_rim", "bids", "out", "participant"), Path("run.toml")))
    assert invoked["CommandLine"] == ["bids_rim", "bids", "out", "participant"]
    assert invoked["ConfigFile"] == str(tmp_path / "run.toml")
