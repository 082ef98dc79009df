"""Mistakes a user makes on the command line, refused before any participant is processed, with one line
naming the file or folder and what is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bids_rim.bidsio.inputs import collect_sessions, index_dataset
from bids_rim.cli.run import main


def _participant(bids_dir: Path, output_dir: Path, *extra: str) -> int:
    return main([str(bids_dir), str(output_dir), "participant", "--participant-label", "001",
                 "--skip-bids-validation", "--no-inference", *extra])


def _error_line(capsys: pytest.CaptureFixture) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("bids_rim: error:")]
    assert len(lines) == 1, lines
    return lines[0]


def test_the_input_lesion_masks_are_never_the_output(small_cohort: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    masks = small_cohort / "derivatives" / "lesion_masks"
    before = (masks / "dataset_description.json").read_text()
    assert _participant(small_cohort, masks, "-d", str(masks), "-w", str(tmp_path / "work")) == 73
    assert "input derivative dataset" in _error_line(capsys)
    assert (masks / "dataset_description.json").read_text() == before


def test_another_pipelines_derivatives_are_never_written_into(small_cohort: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    other = tmp_path / "fmriprep"
    other.mkdir()
    (other / "dataset_description.json").write_text(json.dumps({"Name": "x", "GeneratedBy": [{"Name": "fMRIPrep"}]}))
    assert _participant(small_cohort, other, "-w", str(tmp_path / "work")) == 73
    assert "GeneratedBy fMRIPrep" in _error_line(capsys)
    assert sorted(path.name for path in other.iterdir()) == ["dataset_description.json"]


def test_a_work_dir_inside_the_input_dataset_is_refused(cohort_copy: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    assert _participant(cohort_copy, tmp_path / "out", "-w", str(cohort_copy / "work")) == 64
    assert "must not lie inside the input dataset" in _error_line(capsys)
    assert not (cohort_copy / "work").exists()


def test_a_misspelled_filter_entity_is_refused_with_a_suggestion(small_cohort: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    filter_file = tmp_path / "filter.json"
    filter_file.write_text(json.dumps({"flair": {"acqusition": "3D"}}))
    assert _participant(small_cohort, tmp_path / "out", "--bids-filter-file", str(filter_file),
                        "-w", str(tmp_path / "work")) == 64
    line = _error_line(capsys)
    assert "acqusition" in line and "did you mean acquisition?" in line


def test_a_filter_that_matches_nothing_is_a_usage_error(small_cohort: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    filter_file = tmp_path / "filter.json"
    filter_file.write_text(json.dumps({"flair": {"acquisition": "none"}}))
    code = main([str(small_cohort), str(tmp_path / "out"), "participant", "--bids-filter-file", str(filter_file),
                 "--skip-bids-validation", "--no-inference", "-w", str(tmp_path / "work")])
    assert code == 64
    assert "nothing to process" in _error_line(capsys)
    assert not list((tmp_path / "out").glob("sub-*"))


def test_a_participant_named_twice_runs_once(small_cohort: Path) -> None:
    units, failures = collect_sessions(index_dataset(small_cohort), participant_labels=("001", "002", "001"))
    assert [unit.subject for unit in units] == ["001", "002"] and not failures


def test_a_refused_run_leaves_no_empty_output_folder(small_cohort: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    output_dir = tmp_path / "derivatives" / "bids_rim"
    code = main([str(small_cohort), str(output_dir), "participant", "--participant-label", "999",
                 "--skip-bids-validation", "-w", str(tmp_path / "work")])
    assert code == 64 and "sub-999" in _error_line(capsys)
    assert not (tmp_path / "derivatives").exists()  # nor the parent it made
    existing = tmp_path / "kept"
    existing.mkdir()
    assert main([str(small_cohort), str(existing), "participant", "--participant-label", "999",
                 "--skip-bids-validation", "-w", str(tmp_path / "work")]) == 64
    assert existing.is_dir()  # a folder the user made stays


@pytest.mark.parametrize(("filters", "expected"), [
    ({"flair": {"suffix": "FLAIR", "datatype": "anat"}}, "are chosen by bids_rim"),
    ({"qsm": {"session": "01"}}, "are chosen by bids_rim"),
    ({"flair": "3D"}, "is not an object of entities"),
    ({"flair": None}, "is not an object of entities"),
])
def test_filters_bids_rim_cannot_take_are_refused(small_cohort: Path, tmp_path: Path, filters: dict,
                                                  expected: str, capsys: pytest.CaptureFixture) -> None:
    filter_file = tmp_path / "filter.json"
    filter_file.write_text(json.dumps(filters))
    assert _participant(small_cohort, tmp_path / "out", "--bids-filter-file", str(filter_file),
                        "-w", str(tmp_path / "work")) == 64
    assert expected in _error_line(capsys)


def test_a_malformed_description_in_the_output_is_another_dataset(small_cohort: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    for index, content in enumerate((b'{"GeneratedBy": {"Name": "fMRIPrep"}}', b"\xff\xfe not text")):
        other = tmp_path / f"other{index}"
        other.mkdir()
        (other / "dataset_description.json").write_bytes(content)
        assert _participant(small_cohort, other, "-w", str(tmp_path / "work")) == 73
        assert "holds another dataset" in _error_line(capsys)


def test_a_filter_is_not_blamed_for_a_dataset_without_qsm(cohort_copy: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    for qsm in (cohort_copy / "sub-001" / "ses-01" / "anat").glob("*_Chimap.*"):
        qsm.unlink()
    filter_file = tmp_path / "filter.json"
    filter_file.write_text(json.dumps({"flair": {"extension": ".nii.gz"}}))
    assert _participant(cohort_copy, tmp_path / "out", "--bids-filter-file", str(filter_file),
                        "-w", str(tmp_path / "work")) == 1  # the participant failed: no QSM map, filter or not
    assert "no QSM map" in capsys.readouterr().err


@pytest.mark.parametrize(("content", "expected"), [
    ("plugin: Foo\n", ["unknown Nipype plugin 'Foo'", "MultiProc"]),
    ("plugin: [MultiProc\nplugin_args: {\n", ["at line 2, column"]),  # YAML's report, in one line
])
def test_a_bad_plugin_file_is_refused_in_one_line_naming_it(small_cohort: Path, tmp_path: Path, content: str,
                                                            expected: list[str],
                                                            capsys: pytest.CaptureFixture) -> None:
    plugin_file = tmp_path / "plugin.yml"
    plugin_file.write_text(content)
    assert _participant(small_cohort, tmp_path / "out", "--use-plugin", str(plugin_file),
                        "-w", str(tmp_path / "work")) == 64
    line = _error_line(capsys)
    assert str(plugin_file) in line and all(text in line for text in expected)


def test_help_lists_every_exit_code(capsys: pytest.CaptureFixture) -> None:
    from bids_rim.cli.exit_codes import all_descriptions

    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "exit codes: 0 success;" in help_text
    for code, text in all_descriptions().items():
        assert f"{code} {' '.join(text.split()[:3])}" in help_text
