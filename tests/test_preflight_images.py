"""Pre-flight checks of a session's image contents: constant images, empty lesion masks, ppb QSM.

The unit tests write tiny NIfTI files (the phantom on its 48³ grid) and call
:func:`check_session_inputs` as the CLI does; the CLI tests run the real participant level on a
copy of the small synthetic cohort.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_rim.bidsio.inputs import SessionInputs
from bids_rim.bidsio.preflight import check_session_inputs
from bids_rim.cli.run import main
from bids_rim.errors import InputError

from .conftest import FAST_OPTIONS
from .test_preproc_phantom import Phantom, qsm_grid

EMPTY_MASK_WARNING = "no lesion in this mask (no voxel is 1): the session will have 0 lesions"


@pytest.fixture
def session(tmp_path: Path) -> SessionInputs:
    """A valid session on disk: FLAIR, QSM (ppm), GRE magnitude and a rater's mask on the QSM grid."""
    affine, shape = qsm_grid()
    phantom = Phantom(noise_sd=0.05, seed=0)
    images = {"flair": phantom.flair(affine, shape), "qsm": phantom.qsm(affine, shape),
              "magnitude": phantom.magnitude(affine, shape), "lesion_mask": phantom.lesion_mask(affine, shape)}
    suffixes = {"flair": "FLAIR", "qsm": "Chimap", "magnitude": "T2starw", "lesion_mask": "label-lesion_mask"}
    paths = {}
    for key, image in images.items():
        paths[key] = tmp_path / f"sub-01_{suffixes[key]}.nii.gz"
        nib.save(image, paths[key])
    return SessionInputs(subject="01", session=None, run=None, **paths)


def _overwrite(path: Path, data: np.ndarray) -> None:
    image = nib.load(path)
    nib.Nifti1Image(data, image.affine).to_filename(path)


def _shape(path: Path) -> tuple[int, ...]:
    return nib.load(path).shape


def _refusal(session: SessionInputs) -> str:
    """The one-line message with which the pre-flight checks refuse ``session``."""
    with pytest.raises(InputError) as error:
        check_session_inputs(session)
    return str(error.value)


def test_valid_session_passes_without_mask_warning(session: SessionInputs) -> None:
    warnings = check_session_inputs(session)
    assert not any(EMPTY_MASK_WARNING in warning for warning in warnings)


@pytest.mark.parametrize("value, dtype", [(0, np.float32), (100, np.float32), (0, np.int16), (100, np.uint16)])
def test_constant_flair_fails_preflight_naming_the_file(session: SessionInputs, value: int, dtype) -> None:
    _overwrite(session.flair, np.full(_shape(session.flair), value, dtype))
    assert _refusal(session) == (f"{session.flair}: the FLAIR image is constant (every voxel {value}); "
                                 "nothing to register")


def test_constant_gre_magnitude_fails_preflight_naming_the_file(session: SessionInputs) -> None:
    _overwrite(session.magnitude, np.zeros(_shape(session.magnitude), np.float32))
    assert _refusal(session) == (f"{session.magnitude}: the GRE magnitude image is constant (every voxel 0); "
                                 "nothing to register")


def test_qsm_all_zero_or_constant(session: SessionInputs) -> None:
    _overwrite(session.qsm, np.zeros(_shape(session.qsm), np.float32))
    assert _refusal(session) == f"{session.qsm}: QSM map is all zero"  # the existing message is kept
    _overwrite(session.qsm, np.full(_shape(session.qsm), 0.1, np.float32))
    assert _refusal(session) == f"{session.qsm}: the QSM image is constant (every voxel 0.1); nothing to register"


def test_qsm_in_ppb_gets_the_ppb_hint(session: SessionInputs) -> None:
    _overwrite(session.qsm, np.asarray(nib.load(session.qsm).dataobj) * 1000.0)
    message = _refusal(session)
    assert "\n" not in message and message.startswith(f"{session.qsm}: QSM values span ")
    assert message.endswith("is it in ppb (then divide it by 1000), Hz or radians?")


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_empty_lesion_mask_is_a_warning(session: SessionInputs, dtype) -> None:
    _overwrite(session.lesion_mask, np.zeros(_shape(session.lesion_mask), dtype))
    warnings = check_session_inputs(session)
    assert f"{session.lesion_mask}: {EMPTY_MASK_WARNING}" in warnings


def test_empty_lesion_mask_on_a_wrong_grid_still_fails(session: SessionInputs) -> None:
    _overwrite(session.lesion_mask, np.zeros((48, 48, 40), np.uint8))
    with pytest.raises(InputError, match="does not match"):
        check_session_inputs(session)


# --- through the CLI, on the small synthetic cohort ---

SUBJECT = "001"


def _anat(bids: Path) -> Path:
    return bids / f"sub-{SUBJECT}" / "ses-01" / "anat"


def _mask(bids: Path) -> Path:
    return next((bids / "derivatives" / "lesion_masks" / f"sub-{SUBJECT}" / "ses-01" / "anat").glob("*_mask.nii*"))


def _rewrite(path: Path, data: np.ndarray) -> None:
    image = nib.load(path)
    header = image.header.copy()
    header.set_data_dtype(data.dtype)
    nib.Nifti1Image(data, image.affine, header).to_filename(path)


def _run(bids: Path, output_dir: Path) -> int:
    return main([str(bids), str(output_dir), "participant", "--participant-label", SUBJECT,
                 "-d", str(bids / "derivatives" / "lesion_masks"), "--work-dir", str(output_dir.parent / "work"),
                 "--skip-bids-validation", "--no-inference", *FAST_OPTIONS])


@pytest.mark.parametrize("value", [0, 100])
def test_constant_flair_fails_the_participant_with_one_line(cohort_copy: Path, tmp_path: Path, value: int,
                                                            capsys: pytest.CaptureFixture) -> None:
    flair = next(_anat(cohort_copy).glob("*_FLAIR.nii*"))
    _rewrite(flair, np.full(nib.load(flair).shape, value, np.float32))
    output_dir = tmp_path / "out"
    assert _run(cohort_copy, output_dir) == 1
    error_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("bids_rim:")]
    assert len(error_lines) == 1, error_lines
    assert f"sub-{SUBJECT} failed" in error_lines[0]
    assert f"{flair}: the FLAIR image is constant (every voxel {value}); nothing to register" in error_lines[0]
    assert not (output_dir / f"sub-{SUBJECT}" / "ses-01").exists()


def test_empty_lesion_mask_gives_zero_lesions_and_a_warning(cohort_copy: Path, tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """A control subject (rater's mask with no lesion): exit 0, an empty lesion table, the warning logged."""
    mask = _mask(cohort_copy)
    _rewrite(mask, np.zeros(nib.load(mask).shape, np.uint8))
    output_dir = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        assert _run(cohort_copy, output_dir) == 0
    expected = f"{mask}: {EMPTY_MASK_WARNING}"
    assert any(record.getMessage() == expected for record in caplog.records)
    anat = output_dir / f"sub-{SUBJECT}" / "ses-01" / "anat"
    table = pd.read_csv(anat / f"sub-{SUBJECT}_ses-01_desc-lesions_table.tsv", sep="\t", na_values="n/a")
    assert len(table) == 0 and "lesion_id" in table.columns
    sidecar = json.loads((anat / f"sub-{SUBJECT}_ses-01_desc-lesions_table.json").read_text())
    assert expected in sidecar["Warnings"]
    labels = nib.load(next(anat.glob("*_desc-lesions_dseg.nii.gz")))
    assert not np.asarray(labels.dataobj).any()
    with np.load(anat / f"sub-{SUBJECT}_ses-01_desc-lesions_patches.npz") as patches:
        assert patches["patches"].shape[0] == 0 and patches["lesion_id"].size == 0


def test_a_mask_on_a_flair_grid_of_the_qsm_matrix_size_is_judged_by_its_affine(session: SessionInputs) -> None:
    """FLAIR and QSM with the same matrix size but other voxel sizes: the rater's mask drawn on FLAIR is on
    FLAIR's grid (shape alone would take it for the QSM's and refuse its affine)."""
    affine, shape = qsm_grid()
    flair_affine = affine.copy()
    flair_affine[:3, :3] *= 0.9
    phantom = Phantom(noise_sd=0.05, seed=0)
    nib.save(phantom.flair(flair_affine, shape), session.flair)
    nib.save(phantom.lesion_mask(flair_affine, shape), session.lesion_mask)
    assert _shape(session.flair) == _shape(session.qsm)
    check_session_inputs(session)  # raises InputError if the mask were checked against the QSM
    flair_affine[:3, 3] += 5.0  # a mask on neither grid is still refused, naming the mask
    nib.save(phantom.lesion_mask(flair_affine, shape), session.lesion_mask)
    with pytest.raises(InputError, match="lesion mask affine differs"):
        check_session_inputs(session)
