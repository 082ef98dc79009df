"""A lesion mask under ``BIDS_DIR/derivatives/`` that no ``-d`` names: still not read, but warned of.

Masks are read only from the ``-d`` datasets (as fMRIPrep reads only the derivatives it is given).
A user who forgets ``-d BIDS_DIR/derivatives/lesion_masks`` would otherwise get the built-in FLAIR
segmentation silently instead of the rater's lesions. The participant level is run for real, in
process, as a user types it; the finer cases go through :func:`collect_sessions` and the pre-flight check.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from bids_rim.bidsio.inputs import SessionInputs, collect_sessions, index_dataset
from bids_rim.bidsio.preflight import check_session_inputs, unlisted_mask_warning
from bids_rim.cli.run import main

from .conftest import FAST_OPTIONS

SUBJECT = "001"
WARNING = "no lesion mask among the -d datasets"


def _run(bids_dir: Path, tmp_path: Path, *extra: str) -> tuple[int, Path]:
    output_dir = tmp_path / "out"
    code = main([str(bids_dir), str(output_dir), "participant", "--participant-label", SUBJECT,
                 "--no-inference", "--skip-bids-validation", "-w", str(tmp_path / "work"), *FAST_OPTIONS, *extra])
    return code, output_dir


def _table_sidecar(output_dir: Path) -> dict:
    anat = output_dir / f"sub-{SUBJECT}" / "ses-01" / "anat"
    return json.loads((anat / f"sub-{SUBJECT}_ses-01_desc-lesions_table.json").read_text())


def _unit(bids_dir: Path, *derivatives: Path) -> SessionInputs:
    units, failures = collect_sessions(index_dataset(bids_dir, derivatives), participant_labels=(SUBJECT,))
    assert not failures and len(units) == 1
    return units[0]


def test_forgotten_d_warns_in_log_and_sidecar(cohort_copy: Path, tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    masks = cohort_copy / "derivatives" / "lesion_masks"
    with caplog.at_level(logging.WARNING):
        code, output_dir = _run(cohort_copy, tmp_path)
    assert code == 0
    logged = [record.getMessage() for record in caplog.records if WARNING in record.getMessage()]
    assert len(logged) == 1, caplog.text
    assert logged[0].startswith(f"sub-{SUBJECT} ses-01: ")
    assert f"add -d {masks}" in logged[0] and "built-in FLAIR segmentation is used" in logged[0]
    assert f"holds one (sub-{SUBJECT}/ses-01/anat/sub-{SUBJECT}_ses-01_" in logged[0]  # the file itself is named
    sidecar = _table_sidecar(output_dir)
    assert sidecar["LesionSource"] == "builtin"  # the rule stays: nothing outside -d is read
    assert logged[0] in sidecar["Warnings"]


def test_given_d_reads_the_mask_without_warning(cohort_copy: Path, tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        code, output_dir = _run(cohort_copy, tmp_path, "-d", str(cohort_copy / "derivatives" / "lesion_masks"))
    assert code == 0
    assert WARNING not in caplog.text
    sidecar = _table_sidecar(output_dir)
    assert sidecar["LesionSource"] == "mask"
    assert not any(WARNING in warning for warning in sidecar["Warnings"])


def test_only_auto_warns(cohort_copy: Path) -> None:
    unit = _unit(cohort_copy)
    assert unit.lesion_mask is None and unit.unlisted_lesion_mask is not None
    assert any(WARNING in warning for warning in check_session_inputs(unit))
    assert not any(WARNING in warning for warning in check_session_inputs(unit, lesion_source="builtin"))
    assert unlisted_mask_warning(unit, "mask") is None  # --lesion-source mask refuses the session instead
    found = _unit(cohort_copy, cohort_copy / "derivatives" / "lesion_masks")
    assert found.lesion_mask is not None and found.unlisted_lesion_mask is None
    assert unlisted_mask_warning(found) is None


def test_nested_dataset_and_missing_description(cohort_copy: Path) -> None:
    nested = cohort_copy / "derivatives" / "raters" / "rater1"
    nested.parent.mkdir()
    shutil.move(cohort_copy / "derivatives" / "lesion_masks", nested)
    (nested / "dataset_description.json").unlink()
    warning = unlisted_mask_warning(_unit(cohort_copy))
    assert warning is not None
    assert f"add -d {nested} (it first needs a dataset_description.json" in warning


def test_other_names_and_bids_rim_outputs_are_not_masks(cohort_copy: Path) -> None:
    derivatives = cohort_copy / "derivatives"
    anat = Path(f"sub-{SUBJECT}") / "ses-01" / "anat"
    source = shutil.move(next((derivatives / "lesion_masks" / anat).glob("*_label-lesion_mask.nii.gz")),
                         cohort_copy / "a_mask.nii.gz")
    shutil.rmtree(derivatives / "lesion_masks")
    # An earlier bids_rim run written into BIDS_DIR/derivatives: its template-space lesion masks are no rater's.
    outputs = derivatives / "bids_rim"
    (outputs / anat).mkdir(parents=True)
    (outputs / "dataset_description.json").write_text(json.dumps({"Name": "x", "BIDSVersion": "1.10.0",
                                                                  "GeneratedBy": [{"Name": "bids_rim"}]}))
    shutil.copy(source, outputs / anat / f"sub-{SUBJECT}_ses-01_space-MNI152NLin2009cAsym_desc-lesions_mask.nii.gz")
    # A brain mask and another session's lesion mask are no lesion mask of this session.
    other = derivatives / "other"
    (other / anat).mkdir(parents=True)
    shutil.copy(source, other / anat / f"sub-{SUBJECT}_ses-01_desc-brain_mask.nii.gz")
    (other / f"sub-{SUBJECT}" / "ses-02" / "anat").mkdir(parents=True)
    shutil.copy(source, other / f"sub-{SUBJECT}" / "ses-02" / "anat" / f"sub-{SUBJECT}_ses-02_label-lesion_mask.nii.gz")
    unit = _unit(cohort_copy)
    assert unit.unlisted_lesion_mask is None
    assert unlisted_mask_warning(unit) is None


def test_the_command_line_warns_only_for_auto_and_names_the_folder_when_a_mask_is_required(
        cohort_copy: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture) -> None:
    masks = cohort_copy / "derivatives" / "lesion_masks"
    with caplog.at_level(logging.WARNING):
        code, _ = _run(cohort_copy, tmp_path / "builtin", "--lesion-source", "builtin")
    assert code == 0 and WARNING not in caplog.text  # the built-in segmentation was asked for
    code, _ = _run(cohort_copy, tmp_path / "mask", "--lesion-source", "mask")
    assert code == 1  # the participant is refused, naming the mask it could have used
    error = [line for line in capsys.readouterr().err.splitlines() if "--lesion-source mask" in line]
    assert len(error) == 1 and f"{masks} holds one" in error[0] and f"add -d {masks}" in error[0]
