"""The group level's frequency maps pool a session's template-space masks only when the run that wrote the
session's lesion table also wrote them (the run manifests in ``sub-X/log/<run id>/``): a rerun without
``--output-spaces`` leaves the old masks in OUTPUT_DIR, and they must not be mixed with the current tables.
Outputs of versions before the manifests (no manifest at all) keep being pooled as before."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_rim.group.aggregate import current_template_masks
from bids_rim.group.run import run_group_level
from bids_rim.group.simulate import simulate_cohort_tables
from bids_rim.interfaces.derivatives import write_run_manifest

from .test_group_report import write_template_masks
from .test_group_stale_outputs import NOW, age, run_id

SPACE = "MNI152NLin2009cAsym"
PARTICIPANTS = ("sub-001", "sub-002", "sub-003", "sub-004")


def anat_files(output_dir: Path, participant: str) -> dict[str, Path]:
    """The lesion table and the two template-space masks of a participant without sessions."""
    anat = output_dir / participant / "anat"
    return {"table": anat / f"{participant}_desc-lesions_table.tsv",
            f"{SPACE}_lesions": anat / f"{participant}_space-{SPACE}_desc-lesions_mask.nii.gz",
            f"{SPACE}_rim": anat / f"{participant}_space-{SPACE}_desc-rim_mask.nii.gz"}


def record(output_dir: Path, participant: str, age_s: float, roles: tuple[str, ...]) -> None:
    """The manifest a participant-level run started ``age_s`` seconds before ``NOW`` writes, listing ``roles``."""
    files = anat_files(output_dir, participant)
    write_run_manifest(output_dir, participant, run_id(age_s), files["table"],
                       {role: str(files[role]) for role in roles})


@pytest.fixture()
def cohort(tmp_path, monkeypatch):
    """16 simulated participants; four have template-space masks (cubes shifted by one voxel each:
    sub-001 x 5-8, sub-002 x 6-9, sub-003 x 7-10, sub-004 x 8-11; rim masks at x = 5, 6, 7, 8)."""
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(tmp_path / "no-templateflow"))  # no background: never downloads
    cohort = simulate_cohort_tables(tmp_path, n_subjects=16, site_log_rate={"A": 0.0, "B": 1.0}, seed=5)
    write_template_masks(cohort, PARTICIPANTS)
    return cohort


def read_maps(result) -> dict[str, tuple[dict, object]]:
    """``{desc: (sidecar, voxel array)}`` of the frequency maps the group level wrote."""
    maps = {}
    for item in result.frequency_maps:
        sidecar = json.loads(item.path.with_name(item.path.name.replace(".nii.gz", ".json")).read_text())
        assert sidecar["NPatients"] == item.n_patients
        maps[item.desc] = (sidecar, nib.load(item.path).get_fdata())
    return maps


def test_masks_of_an_earlier_run_are_left_out(cohort, caplog):
    """sub-002 ran with --output-spaces two hours ago and again without it an hour ago: its current table has
    no template masks, so the old ones are left out of both maps and named.
    sub-003 was rerun with --output-spaces: its masks are the current run's and stay."""
    out = cohort.output_dir
    every = ("table", f"{SPACE}_lesions", f"{SPACE}_rim")
    for participant in PARTICIPANTS:
        record(out, participant, 7200, every)
    record(out, "sub-002", 3600, ("table",))  # the rerun without --output-spaces
    record(out, "sub-003", 3600, every)  # a rerun that wrote its masks again
    for path in out.glob("sub-*/anat/*"):
        age(path, 3600)  # file times agree with the runs; the manifests decide
    stale = anat_files(out, "sub-002")
    with caplog.at_level(logging.WARNING, logger="bids_rim.group"):
        result = run_group_level(cohort.bids_dir, out, progress=False)

    maps = read_maps(result)
    assert set(maps) == {"lesions", "rim"}
    for desc, (sidecar, _) in maps.items():
        stale_mask = stale[f"{SPACE}_{desc}"].relative_to(out).as_posix()
        assert sidecar["NPatients"] == 3, desc
        assert sidecar["LeftOutEarlierRun"] == [stale_mask] and sidecar["LeftOut"] == []
        assert not any("sub-002" in source for source in sidecar["Sources"])
        assert any("sub-003" in source for source in sidecar["Sources"])
    assert {item.desc: item.earlier_run for item in result.frequency_maps} == {
        desc: (stale[f"{SPACE}_{desc}"].relative_to(out).as_posix(),) for desc in ("lesions", "rim")}
    lesions, rim = maps["lesions"][1], maps["rim"][1]
    assert lesions[6, 7, 7] == pytest.approx(1 / 3)  # sub-001 alone; with sub-002 it would be 2/4
    assert lesions[9, 7, 7] == pytest.approx(2 / 3) and lesions[8, 7, 7] == pytest.approx(1.0)
    assert rim[6, 6, 6] == 0 and rim.sum() == pytest.approx(1.0)  # sub-002's rim voxel is gone

    messages = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    for desc in ("lesions", "rim"):
        named = [message for message in messages if stale[f"{SPACE}_{desc}"].name in message]
        assert len(named) == 1, desc
        assert "written by an earlier run than its session's lesion table" in named[0]
        assert "sub-002/anat/sub-002_desc-lesions_table.tsv" in named[0]
    assert all(path.is_file() for path in stale.values())  # nothing deleted


def test_without_manifests_every_mask_is_pooled_as_before(cohort, caplog):
    """Outputs of a version before run manifests: the runs cannot be told apart, so sub-002's masks count."""
    assert not list(cohort.output_dir.glob("sub-*/log"))
    with caplog.at_level(logging.WARNING, logger="bids_rim.group"):
        result = run_group_level(cohort.bids_dir, cohort.output_dir, progress=False)
    maps = read_maps(result)
    for sidecar, _ in maps.values():
        assert sidecar["NPatients"] == 4 and sidecar["LeftOutEarlierRun"] == []
    assert maps["lesions"][1][6, 7, 7] == pytest.approx(0.5) and maps["rim"][1][6, 6, 6] == pytest.approx(0.25)
    assert not any("earlier run" in record.getMessage() for record in caplog.records)


def test_current_template_masks_follow_the_latest_run_of_the_table(tmp_path):
    """The pure rule: a mask is current when its latest run is the table's latest run."""
    table, lesions, rim = (tmp_path / name for name in ("table.tsv", "lesions.nii.gz", "rim.nii.gz"))
    masks = [lesions, rim]
    assert current_template_masks(table, masks, {}) == (masks, [])  # no manifest: as before
    assert current_template_masks(table, masks, {lesions: NOW}) == (masks, [])  # the table in none: as before
    assert current_template_masks(table, masks, {table: NOW, lesions: NOW, rim: NOW}) == (masks, [])
    # Not listed by any run (a version before manifests wrote it), or last written by an earlier run.
    assert current_template_masks(table, masks, {table: NOW, lesions: NOW - 60}) == ([], masks)
    # Rewritten by a later run that did not write the table (it crashed in between): not the table's either.
    assert current_template_masks(table, masks, {table: NOW, lesions: NOW, rim: NOW + 60}) == ([lesions], [rim])


def test_only_the_masks_of_the_run_whose_table_counts_are_pooled(cohort):
    """Two QSM runs in one session: the group level counts the last run's table, so only that run's masks
    enter the maps (the first run's would count the session's lesions twice)."""
    out = cohort.output_dir
    anat = out / "sub-001" / "anat"
    for run, shift in (("1", 0), ("2", 3)):  # run-2's cube lies 3 voxels further along x than run-1's
        (anat / f"sub-001_run-{run}_desc-lesions_table.tsv").write_text(
            (anat / "sub-001_desc-lesions_table.tsv").read_text())
        for desc in ("lesions", "rim"):
            image = nib.load(anat / f"sub-001_space-{SPACE}_desc-{desc}_mask.nii.gz")
            data = image.get_fdata().astype("uint8")
            nib.save(nib.Nifti1Image(np.roll(data, shift, axis=0), image.affine),
                     anat / f"sub-001_run-{run}_space-{SPACE}_desc-{desc}_mask.nii.gz")
    for path in anat.glob("sub-001_[ds]*"):  # no run-less files: only the two runs
        path.unlink()
    result = run_group_level(cohort.bids_dir, out, progress=False)
    maps = read_maps(result)
    for sidecar, _ in maps.values():
        assert sidecar["NPatients"] == 4
        assert not any("run-1" in source for source in sidecar["Sources"])
    lesions = maps["lesions"][1]
    assert lesions[5, 7, 7] == 0  # run-1's cube (x 5-8) alone has x = 5
    assert lesions[11, 7, 7] == pytest.approx(0.5)  # run-2's cube (x 8-11) and sub-004's
