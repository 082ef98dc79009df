"""The participant level end to end, on tiny synthetic subjects, through the CLI."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_rim.bidsio.validator import validate_dataset
from bids_rim.cli.run import main
from bids_rim.preproc.transforms import read_itk_rigid, rotation_angle_deg

from .conftest import FAST_OPTIONS


def _session_files(output_dir: Path, subject: str) -> dict[str, Path]:
    anat = output_dir / f"sub-{subject}" / "ses-01" / "anat"
    stem = f"sub-{subject}_ses-01"
    return {
        "flair": anat / f"{stem}_space-QSM_desc-preproc_FLAIR.nii.gz",
        "brain": anat / f"{stem}_space-QSM_desc-brain_mask.nii.gz",
        "dseg": anat / f"{stem}_space-QSM_desc-lesions_dseg.nii.gz",
        "xfm": anat / f"{stem}_from-FLAIR_to-QSM_mode-image_xfm.txt",
        "table": anat / f"{stem}_desc-lesions_table.tsv",
        "table_json": anat / f"{stem}_desc-lesions_table.json",
        "patches": anat / f"{stem}_desc-lesions_patches.npz",
    }


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and "log" not in path.relative_to(folder).parts[:2]
    }


def test_outputs_exist_with_bids_names(participant_run: dict[str, Path]) -> None:
    output_dir = participant_run["output"]
    description = json.loads((output_dir / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "bids_rim"
    assert description["SourceDatasets"]
    for subject in ("001", "002", "003"):
        for role, path in _session_files(output_dir, subject).items():
            assert path.is_file(), f"{role} missing: {path}"
            if path.name.endswith(".nii.gz"):
                assert nib.load(path).header.get_xyzt_units()[0] == "mm", path
        assert (output_dir / f"sub-{subject}.html").is_file()


def test_each_run_records_the_tables_it_wrote(participant_run: dict[str, Path]) -> None:
    """The group level tells an earlier run's table from a failed rerun's by these manifests, not by file times."""
    output_dir = participant_run["output"]
    for subject in ("001", "002", "003"):
        manifests = sorted(output_dir.glob(f"sub-{subject}/log/*/sub-{subject}_ses-01_outputs.json"))
        assert manifests, subject
        manifest = json.loads(manifests[-1].read_text())
        assert manifest["ParticipantLevelRun"] == manifests[-1].parent.name
        assert re.fullmatch(r"\d{8}-\d{6}Z", manifest["ParticipantLevelRun"])  # UTC
        written = {role: output_dir / path for role, path in manifest["Outputs"].items()}
        assert written["table"] == _session_files(output_dir, subject)["table"]
        assert all(path.is_file() for path in written.values())


def test_every_source_resolves_through_the_dataset_links(participant_run: dict[str, Path]) -> None:
    """Each sidecar's Sources are BIDS URIs whose dataset name DatasetLinks resolves to the input file:
    the lesion mask names the lesion-mask dataset it was read from, not the raw one."""
    output_dir = participant_run["output"]
    links = json.loads((output_dir / "dataset_description.json").read_text())["DatasetLinks"]
    roots = {name: Path(unquote(urlparse(uri).path)) for name, uri in links.items()}
    sidecars = sorted(output_dir.glob("sub-001/ses-01/anat/*.json"))
    sources = {source for sidecar in sidecars for source in json.loads(sidecar.read_text()).get("Sources", [])}
    assert any(source.startswith("bids:lesion_masks:") for source in sources), sources
    for source in sources:
        _, name, relative = source.split(":", 2)
        assert (roots[name] / relative).is_file(), source


def test_each_output_cites_the_inputs_it_was_made_from(participant_run: dict[str, Path]) -> None:
    """The GRE magnitude (the registration's fixed image) is cited by what the registration shaped; the
    QSM-support brain mask cites the QSM alone; the lesion table cites every input."""
    files = _session_files(participant_run["output"], "001")

    def cited(role: str) -> set[str]:
        sidecar = files[role].with_name(files[role].name.replace(".nii.gz", ".json").replace(".tsv", ".json"))
        return {Path(source).name for source in json.loads(sidecar.read_text())["Sources"]}

    flair, qsm, magnitude = "sub-001_ses-01_FLAIR.nii.gz", "sub-001_ses-01_Chimap.nii.gz", \
        "sub-001_ses-01_part-mag_T2starw.nii.gz"
    assert json.loads(files["brain"].with_name(files["brain"].name.replace(".nii.gz", ".json")).read_text())[
        "Description"].endswith("(qsm-support)")
    assert cited("brain") == {qsm}
    assert cited("flair") == {flair, qsm, magnitude}
    table_sources = cited("table")
    assert {flair, qsm, magnitude} < table_sources and any("lesion" in name for name in table_sources)
    assert cited("dseg") == table_sources


def test_lesion_table_columns_are_documented(participant_run: dict[str, Path]) -> None:
    tables = sorted(participant_run["output"].glob("sub-*/ses-*/anat/*_desc-lesions_table.tsv"))
    assert len(tables) == 6
    for path in tables:
        table = pd.read_csv(path, sep="\t", na_values="n/a")
        sidecar = json.loads(path.with_suffix(".json").read_text())
        for column in table.columns:
            assert "Description" in sidecar[column], column
        assert table["lesion_id"].is_unique
        assert (table["volume_mm3"] > 0).all()
        # one row per label of the session's lesion map, and every synthetic session has lesions
        dseg = next(path.parent.glob("*_desc-lesions_dseg.nii.gz"))
        labels = np.asarray(nib.load(dseg).dataobj)
        assert sorted(table["lesion_id"]) == sorted(np.unique(labels[labels > 0]).tolist()) and len(table) > 0


def test_output_dataset_passes_bids_validator(participant_run: dict[str, Path]) -> None:
    result = validate_dataset(participant_run["output"])
    assert result.errors == [], [str(issue) for issue in result.errors]


def test_registration_recovers_the_synthetic_offset(participant_run: dict[str, Path]) -> None:
    """Every subject, both sites (3D FLAIR and 2D FLAIR with 3 mm slices), within 1° and 1 mm."""
    bids_dir, output_dir = participant_run["bids"], participant_run["output"]
    for subject in ("001", "002", "003", "004", "005", "006"):
        truth = json.loads((bids_dir / "sourcedata" / "synth_truth" /
                            f"sub-{subject}_ses-01_registration.json").read_text())
        true_matrix = np.asarray(truth["qsm_to_flair_ras"])
        estimated = read_itk_rigid(_session_files(output_dir, subject)["xfm"])
        residual = np.linalg.inv(true_matrix) @ estimated
        qsm = nib.load(next((bids_dir / f"sub-{subject}" / "ses-01" / "anat").glob("*_Chimap.nii*")))
        brain_centre = nib.affines.apply_affine(qsm.affine, np.argwhere(np.asarray(qsm.dataobj) != 0).mean(axis=0))
        shift_mm = np.linalg.norm(nib.affines.apply_affine(residual, brain_centre) - brain_centre)
        assert rotation_angle_deg(residual) < 1.0, f"sub-{subject}: {rotation_angle_deg(residual):.2f} deg"
        assert shift_mm < 1.0, f"sub-{subject}: {shift_mm:.2f} mm at the brain centre"


def test_given_mask_finds_nearly_all_true_lesions(participant_run: dict[str, Path]) -> None:
    """Of the true lesions the rater delineated and that reach the minimum volume, >= 95 % are found."""
    bids_dir, output_dir = participant_run["bids"], participant_run["output"]
    truth_dir = bids_dir / "sourcedata" / "synth_truth"
    found = total = 0
    for subject in ("001", "002", "003", "004", "005", "006"):
        truth_table = pd.read_csv(truth_dir / f"sub-{subject}_ses-01_truth.tsv", sep="\t")
        delineated = truth_table[(truth_table["rater_missed"] == 0) & (truth_table["volume_mm3"] >= 14.1)]
        truth_data = np.asarray(nib.load(truth_dir / f"sub-{subject}_ses-01_desc-truth_lesions.nii.gz").dataobj)
        labels = np.asarray(nib.load(_session_files(output_dir, subject)["dseg"]).dataobj)
        for lesion_id in delineated["lesion_id"]:
            if not np.any(truth_data == lesion_id):
                continue  # a lesion too small to occupy a voxel of the small grid
            total += 1
            found += bool(np.any(labels[truth_data == lesion_id] > 0))
    assert total > 20
    assert found / total >= 0.95, f"found {found} of {total} delineated true lesions"


def test_patches_match_the_table(participant_run: dict[str, Path]) -> None:
    for subject in ("001", "002", "003", "004", "005", "006"):
        files = _session_files(participant_run["output"], subject)
        with np.load(files["patches"]) as archive:
            patches, lesion_ids = archive["patches"], archive["lesion_id"]
        table = pd.read_csv(files["table"], sep="\t", na_values="n/a")
        assert patches.shape == (len(table), 3, 16, 16, 16)
        assert list(lesion_ids) == list(table["lesion_id"])
        assert np.isfinite(patches).all()
        assert len(table) > 0  # every synthetic session has lesions; the lesion-mask channel marks each one
        assert patches[:, 2].reshape(len(table), -1).max(axis=1).min() == 1


def test_rerun_is_cached_and_byte_identical(participant_run: dict[str, Path]) -> None:
    bids_dir, output_dir, work_dir = participant_run["bids"], participant_run["output"], participant_run["work"]
    before = _digest(output_dir)
    # The sink and the report always run (cheap, and they restore deleted outputs); nothing else may.
    always_run = {"sink", "report"}
    results_before = {p: p.stat().st_mtime_ns for p in work_dir.rglob("result_*.pklz")
                      if p.parent.name not in always_run}
    assert len(results_before) >= 6 * 8
    code = main([str(bids_dir), str(output_dir), "participant", "-d", str(bids_dir / "derivatives" / "lesion_masks"),
                 "--work-dir", str(work_dir), "--no-inference", *FAST_OPTIONS])  # the fixture's very options
    assert code == 0
    assert _digest(output_dir) == before
    results_after = {p: p.stat().st_mtime_ns for p in results_before}
    assert results_after == results_before, "a cached node was recomputed"


def test_fresh_work_folder_and_more_processes_give_identical_derivatives(
        participant_run: dict[str, Path], tmp_path: Path) -> None:
    """The participant level is deterministic: recomputed from nothing (new work folder), with two
    processes instead of one, a subject's derivatives are byte-identical. A benchmark that
    reuses a cohort's participant level relies on this to pair its runs lesion by lesion."""
    output_dir = tmp_path / "out"
    code = main([str(participant_run["bids"]), str(output_dir), "participant", "--participant-label", "sub-003",
                 "-d", str(participant_run["bids"] / "derivatives" / "lesion_masks"),
                 "--work-dir", str(tmp_path / "work"), "--no-inference", *FAST_OPTIONS, "--nprocs", "2"])
    assert code == 0
    fresh, cached = _digest(output_dir / "sub-003"), _digest(participant_run["output"] / "sub-003")
    assert len(fresh) >= len(_session_files(output_dir, "003"))
    assert fresh == cached


@pytest.mark.slow
def test_cli_as_a_user_types_it(small_cohort: Path, participant_run: dict[str, Path], tmp_path: Path) -> None:
    """One subject with redrawn lesion borders: closer to the true outlines than the rater's."""
    executable = Path(sys.executable).with_name("bids_rim")
    completed = subprocess.run(
        [str(executable), str(small_cohort), str(tmp_path / "out"), "participant", "--participant-label", "sub-002",
         "-d", str(small_cohort / "derivatives" / "lesion_masks"), "-w", str(tmp_path / "work"),
         "--lesion-outline", "refined", "--no-inference", *FAST_OPTIONS],
        capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert (tmp_path / "out" / "sub-002.html").is_file()
    assert not (tmp_path / "out" / "sub-001").exists()
    refined, given = _session_files(tmp_path / "out", "002"), _session_files(participant_run["output"], "002")
    assert json.loads(refined["dseg"].with_suffix("").with_suffix(".json").read_text())["LesionOutline"] == "refined"
    assert json.loads(given["dseg"].with_suffix("").with_suffix(".json").read_text())["LesionOutline"] == "given"
    truth = np.asarray(nib.load(small_cohort / "sourcedata" / "synth_truth"
                                / "sub-002_ses-01_desc-truth_lesions.nii.gz").dataobj) > 0
    dice = {}
    for name, files in (("refined", refined), ("given", given)):
        lesions = np.asarray(nib.load(files["dseg"]).dataobj) > 0
        dice[name] = 2 * np.sum(lesions & truth) / (lesions.sum() + truth.sum())
    assert dice["refined"] > dice["given"], dice
    help_text = subprocess.run([str(executable), "--help"], capture_output=True, text=True).stdout
    assert "--participant-label" in help_text and "--use-plugin" in help_text
