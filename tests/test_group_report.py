"""The group report and the group level through the command line, on simulated lesion tables."""

from __future__ import annotations

import json
import logging
import re

import nibabel as nib
import numpy as np
import pytest

from bids_rim.cli.run import main
from bids_rim.errors import InputError
from bids_rim.group.run import run_group_level
from bids_rim.group.simulate import simulate_cohort_tables


@pytest.fixture()
def cohort(tmp_path):
    cohort = simulate_cohort_tables(tmp_path, n_subjects=16, site_log_rate={"A": 0.0, "B": 1.0}, edss_log_rate=0.2,
                                    seed=5)
    for participant in ("sub-001", "sub-002"):  # two participants with their own report
        (cohort.output_dir / f"{participant}.html").write_text("<html></html>")
    crash_dir = cohort.output_dir / "sub-099" / "log" / "run"
    crash_dir.mkdir(parents=True)
    (crash_dir / "crash-run-node.txt").write_text("InputError: sub-099: no QSM image\n")
    return cohort


def test_report_lists_every_participant_and_links_reports(cohort):
    result = run_group_level(cohort.bids_dir, cohort.output_dir, progress=False)
    html = result.report.read_text()
    assert result.report == cohort.output_dir / "group.html"
    for participant in cohort.participants["participant_id"]:
        assert f">{participant}<" in html
    assert '<a href="sub-001.html">sub-001</a>' in html and '<a href="sub-003.html">' not in html
    assert "sub-099" in html and "no QSM image" in html and 'href="sub-099.html"' not in html
    assert re.search(r"<td>sub-099</td>\s*<td>all</td><td>failed</td>", html)
    for figure in re.findall(r'<img src="([^"]+)"', html):
        assert (cohort.output_dir / figure).is_file(), figure
    assert len(re.findall(r'<img src="', html)) == 3  # counts per site, histograms, forest plot


def test_report_is_identical_on_rerun(cohort):
    first = run_group_level(cohort.bids_dir, cohort.output_dir, progress=False)
    snapshot = {path: path.read_bytes() for path in (cohort.output_dir / "group").rglob("*") if path.is_file()}
    snapshot[first.report] = first.report.read_bytes()
    run_group_level(cohort.bids_dir, cohort.output_dir, progress=False)
    assert all(path.read_bytes() == content for path, content in snapshot.items())


def test_group_level_through_the_command_line(cohort, capsys):
    code = main([str(cohort.bids_dir), str(cohort.output_dir), "group", "--count-model", "poisson",
                 "--covariates", "EDSS", "sex"])
    assert code == 0
    for name in ("lesions", "subjects", "sites", "sitetests", "countmodel"):
        assert (cohort.output_dir / "group" / f"desc-{name}_table.tsv").is_file()
        assert (cohort.output_dir / "group" / f"desc-{name}_table.json").is_file()
    assert (cohort.output_dir / "group.html").is_file()
    terms = (cohort.output_dir / "group" / "desc-countmodel_table.tsv").read_text()
    assert "EDSS" in terms and "sex[M vs F]" in terms and "site[B vs A]" in terms and "age" not in terms


def test_bad_covariate_through_the_command_line(cohort, capsys):
    code = main([str(cohort.bids_dir), str(cohort.output_dir), "group", "--covariates", "height"])
    assert code == 64
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("bids_rim: error: ") and "participants.tsv" in error and "'height'" in error


def write_template_masks(cohort, participants, shape=(20, 24, 16), space="MNI152NLin2009cAsym"):
    """Lesion mask: a cube for each participant, shifted per participant; rim mask: its first voxel."""
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-20, -24, -16]
    for offset, participant in enumerate(participants):
        lesions = np.zeros(shape, np.uint8)
        lesions[5 + offset:9 + offset, 6:10, 6:10] = 1
        rim = np.zeros(shape, np.uint8)
        rim[5 + offset, 6, 6] = 1
        anat = cohort.output_dir / participant / "anat"
        for desc, data in (("lesions", lesions), ("rim", rim)):
            nib.save(nib.Nifti1Image(data, affine), anat / f"{participant}_space-{space}_desc-{desc}_mask.nii.gz")
    return affine


def test_frequency_maps_in_template_space(cohort, tmp_path, monkeypatch):
    affine = write_template_masks(cohort, ["sub-001", "sub-002", "sub-003", "sub-004"])
    template_home = tmp_path / "templateflow" / "tpl-MNI152NLin2009cAsym"
    template_home.mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((20, 24, 16)).astype(np.float32), affine),
             template_home / "tpl-MNI152NLin2009cAsym_res-02_T1w.nii.gz")
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(tmp_path / "templateflow"))
    result = run_group_level(cohort.bids_dir, cohort.output_dir, progress=False)
    maps = {item.desc: item for item in result.frequency_maps}
    assert set(maps) == {"lesions", "rim"} and maps["lesions"].n_patients == 4
    lesion_frequency = nib.load(maps["lesions"].path).get_fdata()
    # Cubes shifted by one voxel per participant: x = 8 is in all four, x = 5 only in the first.
    assert lesion_frequency[8, 7, 7] == 1.0 and lesion_frequency[5, 7, 7] == 0.25 and lesion_frequency[4, 7, 7] == 0
    rim_frequency = nib.load(maps["rim"].path).get_fdata()
    assert rim_frequency.sum() == pytest.approx(1.0) and rim_frequency[6, 6, 6] == 0.25
    html = result.report.read_text()
    assert "space-MNI152NLin2009cAsym_desc-frequency_plot.png" in html
    assert (cohort.output_dir / "group" / "figures" / "space-MNI152NLin2009cAsym_desc-frequency_plot.png").is_file()


def test_frequency_maps_leave_out_a_failed_normalisation(cohort, caplog):
    """sub-002's sidecar says its lesions fell outside the template brain: both maps go without it."""
    write_template_masks(cohort, ["sub-001", "sub-002", "sub-003"])
    space = "MNI152NLin2009cAsym"
    for participant, share in (("sub-001", 0.97), ("sub-002", 0.41)):
        sidecar = cohort.output_dir / participant / "anat" / f"{participant}_space-{space}_desc-lesions_mask.json"
        sidecar.write_text(json.dumps({"LesionShareInsideTemplateBrain": share}))
    with caplog.at_level(logging.WARNING, logger="bids_rim.group"):
        result = run_group_level(cohort.bids_dir, cohort.output_dir, progress=False)
    maps = {item.desc: item for item in result.frequency_maps}
    assert maps["lesions"].n_patients == 2 and maps["rim"].n_patients == 2
    lesion_frequency = nib.load(maps["lesions"].path).get_fdata()
    assert lesion_frequency[5, 7, 7] == 0.5 and lesion_frequency[6, 7, 7] == 0.5  # sub-001 and sub-003 alone
    left_out = f"sub-002/anat/sub-002_space-{space}_desc-lesions_mask.nii.gz"
    for item in maps.values():
        sidecar = json.loads(item.path.with_name(item.path.name.replace(".nii.gz", ".json")).read_text())
        assert sidecar["LeftOut"] == [left_out] and not any("sub-002" in source for source in sidecar["Sources"])
    assert left_out in result.report.read_text()
    assert any("sub-002" in record.getMessage() and "0.41" in record.getMessage() for record in caplog.records)


def test_template_masks_on_different_grids_are_refused(cohort):
    write_template_masks(cohort, ["sub-001"])
    write_template_masks(cohort, ["sub-002"], shape=(21, 24, 16))
    with pytest.raises(InputError, match="sub-002_space-MNI152NLin2009cAsym_desc-lesions_mask.nii.gz: template-space "
                                         "mask on another grid"):
        run_group_level(cohort.bids_dir, cohort.output_dir, progress=False)


def write_thresholds(cohort, thresholds: dict[str, float | None]) -> None:
    """Write each lesion table's JSON sidecar with ``ProcessingParameters.DecisionThreshold``, as the participant
    level does (a participant absent from ``thresholds`` gets a sidecar without the key)."""
    for table in cohort.output_dir.glob("sub-*/anat/*_desc-lesions_table.tsv"):
        participant = table.name.split("_")[0]
        parameters = {"Model": "bids_rim_default_model.pt"}
        if participant in thresholds:
            parameters["DecisionThreshold"] = thresholds[participant]
        table.with_suffix(".json").write_text(json.dumps({"ProcessingParameters": parameters}))


@pytest.fixture()
def histogram_axes(monkeypatch):
    """The axes of the rim-probability histograms, captured as the report saves them."""
    from bids_rim.reports import figures

    captured = {}
    save = figures.save_figure_png

    def capture(figure, out_png, **kwargs):
        if "rimprobability" in str(out_png):
            captured["axes"] = [axis for axis in figure.axes if axis.get_visible()]
        return save(figure, out_png, **kwargs)

    monkeypatch.setattr(figures, "save_figure_png", capture)
    return captured


def vertical_lines(axis) -> list[float]:
    return [line.get_xdata()[0] for line in axis.get_lines()]


def test_histograms_mark_the_decision_threshold_the_tables_share(cohort, histogram_axes):
    write_thresholds(cohort, {participant: 0.27 for participant in cohort.participants["participant_id"]})
    html = run_group_level(cohort.bids_dir, cohort.output_dir, progress=False).report.read_text()
    axes = histogram_axes["axes"]
    assert [axis.get_title() for axis in axes] == [f"{site} ({n} lesions)" for site, n in
                                                   (("A", _lesions(cohort, "A")), ("B", _lesions(cohort, "B")))]
    assert all(vertical_lines(axis) == [0.27] for axis in axes)
    assert axes[0].get_legend().get_texts()[0].get_text() == "decision threshold 0.27"
    assert "Dashed line: the model&#39;s decision threshold 0.27" in html


def _lesions(cohort, site: str) -> int:
    """Lesions of a simulated site's patients (one session each)."""
    import pandas as pd

    participants = cohort.participants.loc[cohort.participants["site"] == site, "participant_id"]
    return sum(len(pd.read_csv(cohort.output_dir / p / "anat" / f"{p}_desc-lesions_table.tsv", sep="\t"))
               for p in participants)


def test_no_threshold_line_when_the_tables_disagree_or_do_not_say(cohort, histogram_axes):
    participants = list(cohort.participants["participant_id"])
    write_thresholds(cohort, {participant: 0.27 for participant in participants} | {participants[3]: 0.31})
    html = run_group_level(cohort.bids_dir, cohort.output_dir, progress=False).report.read_text()
    assert all(vertical_lines(axis) == [] for axis in histogram_axes["axes"])
    assert "No threshold line: the lesion tables were scored at different decision thresholds (0.27, 0.31;" in html

    write_thresholds(cohort, {participant: 0.27 for participant in participants[1:]} | {participants[2]: None})
    html = run_group_level(cohort.bids_dir, cohort.output_dir, progress=False).report.read_text()
    assert all(vertical_lines(axis) == [] for axis in histogram_axes["axes"])
    assert ("No threshold line: 2 of 16 scored lesion tables do not record the model&#39;s decision threshold in "
            "their sidecar (ProcessingParameters.DecisionThreshold)") in html
