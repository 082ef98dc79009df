"""The per-subject HTML report on a small phantom: contents, order, images, determinism, errors."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib.image
import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_rim.errors import InputError
from bids_rim.reports import figures
from bids_rim.reports.participant import (
    SessionReportInputs,
    format_value,
    order_lesions,
    session_summary,
    write_participant_report,
)

SIZE = 40
#: (lesion_id, centre voxel, radius voxels, rim) — lesion 3 has a bright paramagnetic rim.
LESIONS = ((1, (14, 20, 20), 3, False), (2, (26, 14, 20), 2, False), (3, (26, 26, 22), 4, True))
PARAMETERS = {"bids_rim_version": "0.1.0", "run": {"seed": 7, "nprocs": 2}, "model": "none"}


def _phantom() -> dict[str, nib.Nifti1Image]:
    """40³ at 1 mm: a spherical brain, a ventricle, three spherical lesions (one with a rim)."""
    affine = np.eye(4)
    affine[:3, 3] = -SIZE / 2
    grid = np.stack(np.meshgrid(*(np.arange(SIZE),) * 3, indexing="ij"))
    radius = np.sqrt(((grid - SIZE / 2) ** 2).sum(axis=0))
    brain = radius < 18
    rng = np.random.default_rng(0)
    qsm = np.where(brain, -0.02 + 0.005 * rng.standard_normal(brain.shape), 0.0)
    flair = np.where(brain, 1.0 + 0.05 * rng.standard_normal(brain.shape), 0.0)
    ventricle = radius < 4
    flair[ventricle] = 0.3
    labels = np.zeros(brain.shape, dtype=np.int16)
    for lesion_id, centre, lesion_radius, rim in LESIONS:
        distance = np.sqrt(((grid - np.reshape(centre, (3, 1, 1, 1))) ** 2).sum(axis=0))
        inside = distance <= lesion_radius
        labels[inside] = lesion_id
        flair[inside] = 1.8
        if rim:
            qsm[(distance > lesion_radius - 1.5) & (distance <= lesion_radius + 0.5)] = 0.08
    make = lambda data, dtype: nib.Nifti1Image(data.astype(dtype), affine)  # noqa: E731
    return {"qsm": make(qsm * brain, np.float32), "flair_on_qsm": make(flair, np.float32),
            "brain_mask": make(brain, np.uint8), "lesion_labels": make(labels, np.int16)}


def _table(with_model: bool) -> pd.DataFrame:
    rows = []
    for lesion_id, centre, radius, rim in LESIONS:
        row = {"lesion_id": lesion_id, "centroid_i": centre[0], "centroid_j": centre[1], "centroid_k": centre[2],
               "volume_mm3": 4 / 3 * np.pi * radius**3, "qsm_shell_minus_core_ppb": 90.0 if rim else 2.0,
               "flag_confluent": False}
        if with_model:
            row |= {"rim_probability": 0.93 if rim else 0.1 * lesion_id, "rim_uncertainty": 0.03,
                    "rim_label": int(rim)}
        rows.append(row)
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def phantom() -> dict[str, nib.Nifti1Image]:
    return _phantom()


def _write(output_dir: Path, phantom: dict[str, nib.Nifti1Image], table: pd.DataFrame, **extra) -> Path:
    session = SessionReportInputs(session_label="01", lesion_table=table, **phantom, **extra)
    return write_participant_report(output_dir, "sub-001", [session], PARAMETERS)


def test_report_lists_every_lesion_rim_positive_first(tmp_path: Path, phantom) -> None:
    html_path = _write(tmp_path, phantom, _table(with_model=True))
    assert html_path == tmp_path / "sub-001.html"
    html = html_path.read_text()
    mosaics = re.findall(r'<img src="(sub-001/figures/sub-001_ses-01_desc-lesion(\d{3})_mosaic\.png)"', html)
    assert [lesion_id for _, lesion_id in mosaics] == ["003", "002", "001"]  # rim+ first, then by probability
    for source, lesion_id in mosaics:
        assert (tmp_path / source).is_file()
        assert f'id="ses-01-lesion-{lesion_id}"' in html
    assert "sub-001/figures/sub-001_ses-01_desc-reg_flair.png" in html
    assert "Volume (mm³)" in html and "QSM edge shell − core (ppb)" in html and "P(rim+)" in html
    assert "Centroid i, j, k (QSM voxel)</td><td>26, 26, 22" in html
    width, height = re.search(r'lesion003_mosaic\.png" alt="[^"]*" width="(\d+)" height="(\d+)"', html).groups()
    assert matplotlib.image.imread(tmp_path / mosaics[0][0]).shape[:2] == (int(height), int(width))
    assert "run.seed" in html and "0.1.0" in html  # processing parameters, flattened
    # summary: 3 lesions, 415 mm³ (radii 3, 2, 4), 1 rim+, expected rim+ = 0.1 + 0.2 + 0.93
    summary_row = re.search(r"<td>ses-01</td>(.*?)</tr>", html, re.S).group(1)
    assert re.findall(r'<td class="num">([^<]*)</td>', summary_row) == ["3", "415", "1", "1.2"]
    assert "no rim model ran" not in html


def test_report_images_are_nontrivial_pngs(tmp_path: Path, phantom) -> None:
    _write(tmp_path, phantom, _table(with_model=True))
    pngs = sorted((tmp_path / "sub-001" / "figures").glob("*.png"))
    assert len(pngs) == 4
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        pixels = matplotlib.image.imread(png)
        assert pixels.shape[0] > 200 and pixels.shape[1] > 300
        assert pixels[..., :3].var() > 1e-3, f"{png.name} is blank"


def test_mosaic_shows_the_rim_on_qsm(tmp_path: Path, phantom) -> None:
    """The QSM axial panel of the rim lesion is brighter than the same panel of a rim− lesion."""
    table = _table(with_model=True).set_index("lesion_id")
    brightness = {}
    for lesion_id in (1, 3):
        out = figures.lesion_mosaic(phantom["qsm"], phantom["flair_on_qsm"], phantom["lesion_labels"],
                                    table.loc[lesion_id].to_dict() | {"lesion_id": lesion_id},
                                    tmp_path / f"{lesion_id}.png")
        pixels = matplotlib.image.imread(out)[..., :3]
        height, width = pixels.shape[:2]
        qsm_axial = pixels[int(0.2 * height):int(0.55 * height), int(0.06 * width):int(0.31 * width)]
        brightness[lesion_id] = qsm_axial.mean()
    assert brightness[3] > brightness[1] + 0.02


def test_rerun_is_byte_identical(tmp_path: Path, phantom) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    _write(first, phantom, _table(with_model=True))
    _write(second, phantom, _table(with_model=True))
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    for relative in files:
        assert (first / relative).read_bytes() == (second / relative).read_bytes(), relative
    assert not list(first.rglob("*.tmp"))


def test_report_without_model_says_so_and_keeps_id_order(tmp_path: Path, phantom) -> None:
    html = _write(tmp_path, phantom, _table(with_model=False), warnings=("FLAIR has 5 mm slices",)).read_text()
    assert "No rim model ran" in html and "no rim model ran" in html
    ids = re.findall(r"desc-lesion(\d{3})_mosaic\.png", html)
    assert ids == ["001", "002", "003"]
    assert "FLAIR has 5 mm slices" in html


def test_stale_mosaics_are_removed_on_rerun(tmp_path: Path, phantom) -> None:
    _write(tmp_path, phantom, _table(with_model=True))
    _write(tmp_path, phantom, _table(with_model=True).query("lesion_id != 2"))
    names = sorted(p.name for p in (tmp_path / "sub-001" / "figures").iterdir())
    assert names == ["sub-001_ses-01_desc-lesion001_mosaic.png", "sub-001_ses-01_desc-lesion003_mosaic.png",
                     "sub-001_ses-01_desc-reg_flair.png"]


def test_bad_inputs_give_one_line_errors(tmp_path: Path, phantom) -> None:
    with pytest.raises(InputError, match="only letters and digits"):
        write_participant_report(tmp_path, "../x", [], PARAMETERS)
    wrong_grid = dict(phantom, brain_mask=nib.Nifti1Image(np.ones((10, 10, 10), np.uint8), np.eye(4)))
    with pytest.raises(InputError, match="brain mask: not on the QSM grid"):
        _write(tmp_path, wrong_grid, _table(with_model=True))
    with pytest.raises(InputError, match="missing column"):
        _write(tmp_path, phantom, _table(with_model=True).drop(columns="centroid_k"))
    truncated = tmp_path / "qsm.nii.gz"
    truncated.write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(InputError, match=re.escape(str(truncated))):
        _write(tmp_path, dict(phantom, qsm=truncated), _table(with_model=True))
    assert not (tmp_path / "sub-001.html").exists()


def test_order_and_formatting_helpers() -> None:
    table = pd.DataFrame({"lesion_id": [1, 2, 3, 4], "rim_probability": [0.2, np.nan, 0.9, 0.6],
                          "rim_uncertainty": [0.1] * 4, "rim_label": [0, 0, 1, 1], "volume_mm3": [10.0] * 4})
    assert order_lesions(table)["lesion_id"].tolist() == [3, 4, 1, 2]
    summary = session_summary(table)
    assert summary["n_rim_positive"] == 2 and summary["expected_rim_positive"] == pytest.approx(1.7)
    assert summary["meets_prl_threshold"] is False
    assert format_value("rim_label", 1) == "rim+" and format_value("volume_mm3", np.nan) == "n/a"
    assert format_value("flag_confluent", True) == "yes"


def test_a_qsm_saved_with_a_singleton_fourth_axis_is_reported(tmp_path: Path, phantom) -> None:
    """X×Y×Z×1 passes the pre-flight checks, so the report must read it too (it used to fail the participant)."""
    qsm = phantom["qsm"]
    as_4d = nib.Nifti1Image(np.asarray(qsm.dataobj)[..., None], qsm.affine)
    path = tmp_path / "sub-001_Chimap.nii.gz"
    nib.save(as_4d, path)
    html = _write(tmp_path / "out", {**phantom, "qsm": path}, _table(with_model=True)).read_text()
    assert html.count("_mosaic.png") >= len(LESIONS)
