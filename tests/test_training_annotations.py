"""Rim annotations that match no lesion, annotation files without outputs, and --init-from through the CLI
(on the shared participant-level run of tests/conftest.py)."""

from __future__ import annotations

import logging
import shutil
import types
from pathlib import Path

import pandas as pd
import pytest

from bids_rim.bidsio.training_data import load_training_set
from bids_rim.errors import InputError

ANNOTATIONS = Path("derivatives") / "rim_annotations"


def _participants(output_dir: Path) -> pd.DataFrame:
    return pd.DataFrame({"participant_id": sorted(p.name for p in output_dir.glob("sub-*") if p.is_dir())})


def _copy_annotations(participant_run: dict[str, Path], tmp_path: Path) -> tuple[Path, list[Path]]:
    target = tmp_path / "annotations"
    shutil.copytree(participant_run["bids"] / ANNOTATIONS, target)
    return target, sorted(target.rglob("*_desc-rim_annotations.tsv"))


def _shift(path: Path, mm: float) -> int:
    table = pd.read_csv(path, sep="\t")
    table["x_mm"] += mm
    table.to_csv(path, sep="\t", index=False)
    return len(table)


def test_unmatched_annotations_are_counted_and_warned_about(participant_run, tmp_path, caplog) -> None:
    folder, files = _copy_annotations(participant_run, tmp_path)
    participants = _participants(participant_run["output"])
    # The synthetic rater also marks lesions the participant level drops (below --min-lesion-volume).
    before = load_training_set(participant_run["output"], participants, folder).annotation_summary(folder)
    rows = _shift(files[0], 500.0)  # outside the image: no lesion can take these
    with caplog.at_level(logging.WARNING, logger="bids_rim.training_data"):
        data = load_training_set(participant_run["output"], participants, folder)
    warning = next(r.getMessage() for r in caplog.records if str(files[0]) in r.getMessage())
    assert f"{rows} of {rows} rim annotation(s) matched no lesion" in warning and "4 mm" in warning
    summary = data.annotation_summary(folder)
    assert summary["files_with_unmatched_rows"] == {**before["files_with_unmatched_rows"], files[0].name: [rows, rows]}
    assert summary["rows"] == before["rows"] and summary["matched"] > 0
    assert summary["unmatched"] == before["unmatched"] - before["files_with_unmatched_rows"].get(
        files[0].name, [0])[0] + rows
    assert summary["matched"] + summary["unmatched"] == summary["rows"]
    warned = {path for path in files for r in caplog.records if str(path) in r.getMessage()}
    assert {path.name for path in warned} == set(summary["files_with_unmatched_rows"])


def test_annotations_of_which_none_match_are_refused_naming_the_folder(participant_run, tmp_path) -> None:
    folder, files = _copy_annotations(participant_run, tmp_path)
    for path in files:
        _shift(path, 500.0)
    with pytest.raises(InputError, match=rf"^{folder}: none of the \d+ rim annotation\(s\) in {len(files)} file\(s\) "
                                         r"matched a lesion .*training needs both rim\+ and rim- annotated lesions"):
        load_training_set(participant_run["output"], _participants(participant_run["output"]), folder)


def test_annotations_of_only_one_class_are_refused_naming_the_folder(participant_run, tmp_path) -> None:
    folder, files = _copy_annotations(participant_run, tmp_path)
    for path in files:
        table = pd.read_csv(path, sep="\t")
        table.assign(rim=0).to_csv(path, sep="\t", index=False)
    with pytest.raises(InputError, match=rf"^{folder}: training needs both rim\+ and rim- annotated lesions; the "
                                         r"\d+ matched annotation\(s\) give only rim-"):
        load_training_set(participant_run["output"], _participants(participant_run["output"]), folder)


def test_an_annotation_file_of_an_unprocessed_participant_is_refused(participant_run, tmp_path) -> None:
    folder, files = _copy_annotations(participant_run, tmp_path)
    stray = folder / "sub-099" / "ses-01" / "anat" / "sub-099_ses-01_desc-rim_annotations.tsv"
    stray.parent.mkdir(parents=True)
    shutil.copy(files[0], stray)
    with pytest.raises(InputError, match=rf"^{folder}: 1 annotation file\(s\) belong to sessions without "
                                         r"participant-level outputs: sub-099_ses-01_desc-rim_annotations.tsv; run"):
        load_training_set(participant_run["output"], _participants(participant_run["output"]), folder)


def _train_args(participant_run: dict[str, Path], output_dir: Path, *extra: str) -> list[str]:
    bids_dir = participant_run["bids"]
    return [str(bids_dir), str(output_dir), "group", "--train", "--rim-annotations", str(bids_dir / ANNOTATIONS),
            "--device", "cpu", "--folds", "2", *extra]


def test_init_from_reaches_training_from_the_command_line_and_the_config_file(
        participant_run, tmp_path, monkeypatch) -> None:
    import bids_rim.training.api
    from bids_rim.cli.run import main

    seen: list[tuple[str | None, float, dict]] = []

    def record(_patches, _meta, config, *_args, **kwargs):
        seen.append((config.init_from, config.patch_spacing_mm, kwargs["annotations"]))
        return types.SimpleNamespace(model_path=None)

    monkeypatch.setattr(bids_rim.training.api, "train_rim_model", record)
    output_dir = tmp_path / "out"
    shutil.copytree(participant_run["output"], output_dir)
    assert main(_train_args(participant_run, output_dir, "--init-from", "bundled")) == 0
    config_file = tmp_path / "config.toml"
    config_file.write_text('init_from = "/models/site.pt"\n')
    assert main(_train_args(participant_run, output_dir, "--config-file", str(config_file))) == 0
    assert [init for init, *_ in seen] == ["bundled", "/models/site.pt"]
    assert seen[0][1] == 2.0  # the patches' spacing (FAST_OPTIONS: --patch-spacing 2)
    assert seen[0][2]["matched"] > 0 and seen[0][2]["folder"] == str(participant_run["bids"] / ANNOTATIONS)


def test_bad_init_from_is_one_line_and_exit_64(participant_run, tmp_path, capsys) -> None:
    from bids_rim.cli.run import main
    from bids_rim.workflows.participant import bundled_model_path

    output_dir = tmp_path / "out"
    shutil.copytree(participant_run["output"], output_dir)
    assert main(_train_args(participant_run, output_dir, "--init-from", str(tmp_path / "nope.pt"))) == 64
    assert capsys.readouterr().err.strip().endswith(f"\nbids_rim: error: {tmp_path / 'nope.pt'}: model file not found")
    # The bundled model cuts 32³ patches; this run's are 16³: refused before any training, naming the file.
    assert main(_train_args(participant_run, output_dir, "--init-from", "bundled")) == 64
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"bids_rim: error: {bundled_model_path('given')}: model patches are 32³")
    assert not (output_dir / "models").exists()


def test_too_few_annotated_patients_exit_64_not_a_traceback(participant_run, tmp_path, capsys) -> None:
    from bids_rim.cli.run import main

    output_dir = tmp_path / "out"
    shutil.copytree(participant_run["output"], output_dir)
    folder, files = _copy_annotations(participant_run, tmp_path)
    keep = next(path for path in files if pd.read_csv(path, sep="\t")["rim"].nunique() == 2)
    for path in files:
        if path != keep:
            path.write_text("x_mm\ty_mm\tz_mm\trim\n")  # a table, but no lesion rated
    args = _train_args(participant_run, output_dir)
    args[args.index("--rim-annotations") + 1] = str(folder)
    assert main(args) == 64
    error = capsys.readouterr().err
    assert "2-fold cross-validation needs at least 2 patients with annotated lesions, got 1" in error
    assert "Traceback" not in error


def test_annotation_files_are_keyed_by_run_and_a_second_copy_is_refused(tmp_path):
    from bids_rim.bidsio.training_data import find_annotation_files

    folder = tmp_path / "annotations"
    for name in ("sub-01/ses-1/anat/sub-01_ses-1_run-1_desc-rim_annotations.tsv",
                 "sub-01/ses-1/anat/sub-01_ses-1_run-2_desc-rim_annotations.tsv",
                 "sub-02/anat/sub-02_desc-rim_annotations.tsv"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("x_mm\ty_mm\tz_mm\trim\n")
    assert sorted(find_annotation_files(folder), key=str) == sorted(
        [("01", "1", "1"), ("01", "1", "2"), ("02", None, None)], key=str)
    copy = folder / "old" / "sub-02_desc-rim_annotations.tsv"
    copy.parent.mkdir()
    copy.write_text("x_mm\ty_mm\tz_mm\trim\n")
    with pytest.raises(InputError, match="two annotation files for the same session: old/sub-02"):
        find_annotation_files(folder)
