"""Sessions with several runs: each QSM run gets its own GRE magnitude, and a rater's mask picks its FLAIR."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from bids_rim.bidsio.inputs import collect_sessions, index_dataset


def _image(path: Path, shape: tuple[int, int, int], zoom: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.ones(shape, np.float32), np.diag([zoom, zoom, zoom, 1.0])), path)


def _dataset(root: Path, qsm_runs: tuple[str, ...], flair_runs: tuple[str, ...], mask_run: str) -> tuple[Path, Path]:
    """Raw data with FLAIR runs on different grids (run-2 at 1 mm, others at 1.2 mm), QSM and magnitude
    runs, and a lesion-mask derivative drawn on the run-``mask_run`` FLAIR (its name carries no run)."""
    raw, masks = root / "raw", root / "masks"
    for folder, kind in ((raw, "raw"), (masks, "derivative")):
        folder.mkdir(parents=True)
        description = {"Name": kind, "BIDSVersion": "1.10.0"}
        if kind == "derivative":
            description |= {"DatasetType": "derivative", "GeneratedBy": [{"Name": "rater"}]}
        (folder / "dataset_description.json").write_text(json.dumps(description))
    anat = raw / "sub-01" / "ses-1" / "anat"
    for run in flair_runs:
        _image(anat / f"sub-01_ses-1_run-{run}_FLAIR.nii.gz", (10, 10, 8), 1.0 if run == "2" else 1.2)
    for run in qsm_runs:
        prefix = f"sub-01_ses-1_run-{run}" if len(qsm_runs) > 1 else "sub-01_ses-1"
        _image(anat / f"{prefix}_Chimap.nii.gz", (8, 8, 8), 1.5)
        _image(anat / f"{prefix}_part-mag_T2starw.nii.gz", (8, 8, 8), 1.5)
    _image(masks / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_space-FLAIR_label-lesion_mask.nii.gz", (10, 10, 8),
           1.0 if mask_run == "2" else 1.2)
    return raw, masks


def test_each_qsm_run_is_registered_with_its_own_magnitude(tmp_path):
    raw, masks = _dataset(tmp_path, qsm_runs=("1", "2"), flair_runs=("1", "2"), mask_run="2")
    units, unusable = collect_sessions(index_dataset(raw, (masks,)))
    assert not unusable and [unit.run for unit in units] == [1, 2]
    for unit in units:
        assert f"run-{unit.run}_part-mag" in unit.magnitude.name and f"run-{unit.run}_Chimap" in unit.qsm.name
        assert f"run-{unit.run}_FLAIR" in unit.flair.name  # the same run's FLAIR comes first


def test_with_one_qsm_the_flair_on_the_masks_grid_is_chosen(tmp_path):
    """Two FLAIR runs, one QSM: the rater drew on run-2, so run-2 is the FLAIR (not the first in name order)."""
    raw, masks = _dataset(tmp_path, qsm_runs=("1",), flair_runs=("1", "2"), mask_run="2")
    (unit,), _ = collect_sessions(index_dataset(raw, (masks,)))
    assert unit.flair.name == "sub-01_ses-1_run-2_FLAIR.nii.gz" and unit.lesion_mask is not None
    assert unit.choices == ()  # the mask decided: nothing to warn about
    (unit,), _ = collect_sessions(index_dataset(raw))  # without the mask: the first, and a warning that says so
    assert unit.flair.name == "sub-01_ses-1_run-1_FLAIR.nii.gz"
    assert unit.choices == ("sub-01 ses-1: 2 FLAIR images and no matching run; using sub-01_ses-1_run-1_FLAIR.nii.gz "
                            "(choose another with --bids-filter-file)",)


def test_a_session_without_qsm_stops_its_participant_and_names_the_sessions_that_could_run(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "dataset_description.json").write_text(json.dumps({"Name": "raw", "BIDSVersion": "1.10.0"}))
    for session in ("1", "2", "3"):
        anat = raw / "sub-01" / f"ses-{session}" / "anat"
        _image(anat / f"sub-01_ses-{session}_FLAIR.nii.gz", (10, 10, 8), 1.0)
        if session != "2":
            _image(anat / f"sub-01_ses-{session}_Chimap.nii.gz", (8, 8, 8), 1.5)
    layout = index_dataset(raw)
    units, failures = collect_sessions(layout)
    assert units == [] and "ses-2 has no QSM map" in failures["01"]
    assert failures["01"].endswith("its other session(s) can run alone with --session-label 1 3")
    units, failures = collect_sessions(layout, session_labels=("1", "3"))
    assert not failures and [unit.session for unit in units] == ["1", "3"]
