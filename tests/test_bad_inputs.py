"""Every bad input gets one clear line naming the file, a non-zero exit, and no partial derivative."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_rim.cli.run import main

from .conftest import FAST_OPTIONS

SUBJECT = "001"


def _anat(bids_dir: Path) -> Path:
    return bids_dir / f"sub-{SUBJECT}" / "ses-01" / "anat"


def _qsm(bids_dir: Path) -> Path:
    return next(_anat(bids_dir).glob("*_Chimap.nii*"))


def _flair(bids_dir: Path) -> Path:
    return next(_anat(bids_dir).glob("*_FLAIR.nii*"))


def _mask(bids_dir: Path) -> Path:
    folder = bids_dir / "derivatives" / "lesion_masks" / f"sub-{SUBJECT}" / "ses-01" / "anat"
    return next(folder.glob("*_mask.nii*"))


def _rewrite(path: Path, change: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]) -> None:
    image = nib.load(path)
    data, affine = change(np.asanyarray(image.dataobj).copy(), image.affine.copy())
    header = image.header.copy()
    header.set_data_dtype(data.dtype)
    nib.Nifti1Image(data, affine, header).to_filename(path)


def _run(bids_dir: Path, output_dir: Path, *extra: str) -> int:
    return main([str(bids_dir), str(output_dir), "participant", "--participant-label", SUBJECT,
                 "-d", str(bids_dir / "derivatives" / "lesion_masks"), "--work-dir", str(output_dir.parent / "work"),
                 "--skip-bids-validation", "--no-inference", *FAST_OPTIONS, *extra])


def _no_derivatives(output_dir: Path) -> bool:
    return not (output_dir / f"sub-{SUBJECT}" / "ses-01").exists() and not (output_dir / f"sub-{SUBJECT}.html").exists()


def _qsm_in_hz(bids: Path) -> Path:
    _rewrite(_qsm(bids), lambda d, a: (d * 128.0, a))  # 1 ppm ~ 128 Hz at 3 T
    return _qsm(bids)


def _nan_voxels(bids: Path) -> Path:
    def change(data: np.ndarray, affine: np.ndarray):
        data = data.astype(np.float32)
        data[tuple(s // 2 for s in data.shape)] = np.nan
        return data, affine
    _rewrite(_flair(bids), change)
    return _flair(bids)


def _four_d(bids: Path) -> Path:
    _rewrite(_flair(bids), lambda d, a: (np.stack([d, d], axis=-1), a))
    return _flair(bids)


def _no_overlap(bids: Path) -> Path:
    def change(data: np.ndarray, affine: np.ndarray):
        affine[:3, 3] += 400.0
        return data, affine
    _rewrite(_flair(bids), change)
    return _flair(bids)


def _non_binary_mask(bids: Path) -> Path:
    _rewrite(_mask(bids), lambda d, a: ((d > 0) * 3.5, a))
    return _mask(bids)


def _wrongly_shaped_mask(bids: Path) -> Path:
    _rewrite(_mask(bids), lambda d, a: (d[:-3, :-2, :], a))
    return _mask(bids)


def _truncated(bids: Path) -> Path:
    path = _qsm(bids)
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    return path


def _zero_bytes(bids: Path) -> Path:
    path = _flair(bids)
    path.write_bytes(b"")
    return path


def _missing_qsm(bids: Path) -> Path:
    path = _qsm(bids)
    path.unlink()
    path.with_name(path.name.split(".")[0] + ".json").unlink(missing_ok=True)
    return bids  # the message names the dataset and the session


BREAKERS = {
    "qsm_in_hz": (_qsm_in_hz, "Hz or radians"),
    "nan_voxels": (_nan_voxels, "NaN or Inf"),
    "four_d": (_four_d, "4D"),
    "no_overlap": (_no_overlap, "do not overlap"),
    "non_binary_mask": (_non_binary_mask, "not binary"),
    "wrongly_shaped_mask": (_wrongly_shaped_mask, "does not match"),
    "truncated_gzip": (_truncated, "truncated or corrupt"),
    "zero_bytes": (_zero_bytes, "empty (0 bytes)"),
    "missing_qsm": (_missing_qsm, "no QSM map"),
}


@pytest.mark.parametrize("case", sorted(BREAKERS))
def test_bad_input_fails_with_one_line_naming_the_file(case: str, cohort_copy: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    breaker, expected = BREAKERS[case]
    broken = breaker(cohort_copy)
    output_dir = tmp_path / "out"
    code = _run(cohort_copy, output_dir)
    error_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("bids_rim:")]
    assert code == 1
    assert len(error_lines) == 1, error_lines
    message = error_lines[0]
    assert f"sub-{SUBJECT} failed" in message
    assert expected in message
    assert str(broken) in message, f"the message does not name {broken}"
    assert _no_derivatives(output_dir)
    assert list((output_dir / f"sub-{SUBJECT}" / "log").rglob("crash-*")), "no crash file was written"


def test_a_failing_subject_does_not_stop_the_others(cohort_copy: Path, tmp_path: Path) -> None:
    _qsm_in_hz(cohort_copy)
    output_dir = tmp_path / "out"
    code = main([str(cohort_copy), str(output_dir), "participant", "--participant-label", "001", "002",
                 "-d", str(cohort_copy / "derivatives" / "lesion_masks"), "--work-dir", str(tmp_path / "work"),
                 "--skip-bids-validation", "--no-inference", *FAST_OPTIONS])
    assert code == 1  # some participants failed, the others finished
    assert _no_derivatives(output_dir)
    assert (output_dir / "sub-002" / "ses-01" / "anat" / "sub-002_ses-01_desc-lesions_table.tsv").is_file()


def test_two_failed_participants_exit_1_not_the_command_line_code(cohort_copy: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    """Two participants without a QSM map: exit 1 (some failed), never argparse's 2 (a malformed command)."""
    for subject in ("001", "002"):
        for qsm in (cohort_copy / f"sub-{subject}" / "ses-01" / "anat").glob("*_Chimap.*"):
            qsm.unlink()
    code = main([str(cohort_copy), str(tmp_path / "out"), "participant", "--participant-label", "001", "002",
                 "--work-dir", str(tmp_path / "work"), "--skip-bids-validation", "--no-inference", *FAST_OPTIONS])
    assert code == 1
    failures = [line for line in capsys.readouterr().err.splitlines() if line.startswith("bids_rim: sub-")]
    assert len(failures) == 2 and all("no QSM map" in line for line in failures), failures


def test_unknown_participant_label(cohort_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main([str(cohort_copy), str(tmp_path / "out"), "participant", "--participant-label", "999",
                 "--skip-bids-validation"])
    assert code == 64
    assert "sub-999" in capsys.readouterr().err


def test_invalid_bids_input_is_refused_before_processing(cohort_copy: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    (cohort_copy / "dataset_description.json").unlink()
    (cohort_copy / "dataset_description.json").write_text("{not json")
    code = main([str(cohort_copy), str(tmp_path / "out"), "participant", "--participant-label", SUBJECT])
    assert code == 65
    assert "is not valid BIDS" in capsys.readouterr().err
    assert not (tmp_path / "out" / f"sub-{SUBJECT}").exists()


def test_thick_slice_2d_flair_works_with_a_warning(cohort_copy: Path, tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    def thick_slices(reduce: Callable[..., np.ndarray]):
        def change(data: np.ndarray, affine: np.ndarray):
            step = max(1, int(round(5.0 / np.linalg.norm(affine[:3, 2]))))
            usable = data.shape[2] // step * step
            thick = reduce(data[:, :, :usable].reshape(data.shape[0], data.shape[1], -1, step), axis=3)
            affine = affine.copy()
            affine[:3, 3] += affine[:3, 2] * (step - 1) / 2
            affine[:3, 2] *= step
            return thick.astype(data.dtype), affine
        return change
    # A 2D acquisition with 5 mm slices, and the rater's mask drawn on it.
    _rewrite(_flair(cohort_copy), thick_slices(np.mean))
    _rewrite(_mask(cohort_copy), thick_slices(np.max))
    output_dir = tmp_path / "out"
    with caplog.at_level("WARNING"):
        code = _run(cohort_copy, output_dir)
    assert code == 0
    assert any("slices" in record.getMessage() for record in caplog.records)
    table = output_dir / f"sub-{SUBJECT}" / "ses-01" / "anat" / f"sub-{SUBJECT}_ses-01_desc-lesions_table.json"
    assert "slices" in table.read_text()


def test_oblique_affines_work(cohort_copy: Path, tmp_path: Path, participant_run: dict[str, Path]) -> None:
    angle = np.deg2rad(20.0)
    rotation = np.eye(4)
    rotation[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    # Rotate the whole scene (QSM, FLAIR, mask, magnitude) in world space: anatomy still agrees.
    for path in [_qsm(cohort_copy), _flair(cohort_copy), _mask(cohort_copy), *_anat(cohort_copy).glob("*T2starw.nii*")]:
        _rewrite(path, lambda d, a: (d, rotation @ a))
    output_dir = tmp_path / "out"
    assert _run(cohort_copy, output_dir) == 0
    table_name = Path(f"sub-{SUBJECT}") / "ses-01" / "anat" / f"sub-{SUBJECT}_ses-01_desc-lesions_table.tsv"
    oblique = pd.read_csv(output_dir / table_name, sep="\t", na_values="n/a")
    upright = pd.read_csv(participant_run["output"] / table_name, sep="\t", na_values="n/a")
    # The same lesions, where the rotation takes them: every upright lesion has an oblique one
    # within 1 mm of its rotated centroid (measured: at most 0.43 mm), with about its volume. The
    # FLAIR-space lesion mask is resampled through a freshly estimated registration, so a lesion
    # near the minimum volume may split or join (measured: one more lesion, total volume +0.1 %).
    centroids = ["centroid_x_mm", "centroid_y_mm", "centroid_z_mm"]
    rotated = nib.affines.apply_affine(rotation, upright[centroids].to_numpy())
    distance_mm = np.linalg.norm(rotated[:, None] - oblique[centroids].to_numpy()[None], axis=2)
    nearest = distance_mm.argmin(axis=1)
    assert len(upright) > 10 and abs(len(oblique) - len(upright)) <= 2
    assert distance_mm.min(axis=1).max() < 1.0
    volume_ratio = oblique["volume_mm3"].to_numpy()[nearest] / upright["volume_mm3"].to_numpy()
    assert np.median(np.abs(volume_ratio - 1)) < 0.02 and np.all(np.abs(volume_ratio - 1) < 0.25)
    assert oblique["volume_mm3"].sum() == pytest.approx(upright["volume_mm3"].sum(), rel=0.02)
