"""The group report and the group level through the command line, on simulated lesion tables."""

from __future__ import annotations

import re

import pytest

from bids_rim.cli.run import main
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
