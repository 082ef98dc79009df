"""``--participant-label`` at group level: only the named participants enter the statistics, maps,
report and ``group --train``, and the outputs say a selection was applied.

Simulated lesion tables (:func:`simulate_cohort_tables`) through the command line, as a user types it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from bids_rim.cli.run import main
from bids_rim.group.run import run_group_level
from bids_rim.group.simulate import SimulatedCohort, simulate_cohort_tables

from .test_group_report import write_template_masks

SELECTED = ["sub-001", "sub-002", "sub-003", "sub-004", "sub-005", "sub-006", "sub-007", "sub-008"]
TABLES = ("lesions", "subjects", "sites", "sitetests", "countmodel")


@pytest.fixture()
def cohort(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SimulatedCohort:
    """16 participants' lesion tables at two sites, template masks for four of them, and sub-099 that crashed."""
    cohort = simulate_cohort_tables(tmp_path, n_subjects=16, site_log_rate={"A": 0.0, "B": 1.0}, edss_log_rate=0.2,
                                    seed=5)
    crash_dir = cohort.output_dir / "sub-099" / "log" / "run"
    crash_dir.mkdir(parents=True)
    (crash_dir / "crash-run-node.txt").write_text("InputError: sub-099: no QSM image\n")
    write_template_masks(cohort, ["sub-001", "sub-002", "sub-010", "sub-011"])
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(tmp_path / "templateflow"))  # no template: the plot goes without
    return cohort


def group_table(cohort: SimulatedCohort, name: str) -> pd.DataFrame:
    return pd.read_csv(cohort.output_dir / "group" / f"desc-{name}_table.tsv", sep="\t", na_values="n/a",
                       keep_default_na=False)


def sidecar(path: Path) -> dict:
    return json.loads(path.with_name(path.name.replace(".tsv", ".json").replace(".nii.gz", ".json")).read_text())


def test_a_subset_gives_the_tables_counts_maps_and_report_of_those_participants_alone(
        cohort: SimulatedCohort, caplog: pytest.LogCaptureFixture) -> None:
    labels = [label.removeprefix("sub-") for label in SELECTED[:4]] + SELECTED[4:] + ["099"]  # both spellings
    with caplog.at_level(logging.WARNING):
        code = main([str(cohort.bids_dir), str(cohort.output_dir), "group", "--participant-label", *labels,
                     "--count-model", "poisson"])
    assert code == 0
    assert not [record for record in caplog.records if "has no effect" in record.getMessage()]

    subjects = group_table(cohort, "subjects")
    assert subjects["participant_id"].tolist() == SELECTED  # sub-099 has no table: listed as failed, not counted
    lesions = group_table(cohort, "lesions")
    expected_lesions = sum(len(pd.read_csv(cohort.output_dir / p / "anat" / f"{p}_desc-lesions_table.tsv", sep="\t"))
                           for p in SELECTED)
    assert sorted(lesions["participant_id"].unique()) == SELECTED and len(lesions) == expected_lesions
    planted = cohort.participants.set_index("participant_id").loc[SELECTED, "planted_rim_positive_count"]
    assert subjects.set_index("participant_id")["rim_positive_count"].tolist() == planted.tolist()
    sites = group_table(cohort, "sites")
    assert sites["n_patients"].sum() == len(SELECTED)
    model = sidecar(cohort.output_dir / "group" / "desc-countmodel_table.tsv")["Model"]
    assert model["NParticipants"] + model["NExcluded"] == len(SELECTED)

    selection = {"Option": "--participant-label", "Participants": [*SELECTED, "sub-099"], "NSelected": 9,
                 "NWithParticipantLevelOutputs": 17}  # 16 with tables and sub-099 with a crash file
    for name in TABLES:
        recorded = sidecar(cohort.output_dir / "group" / f"desc-{name}_table.tsv")["ParticipantSelection"]
        assert {key: recorded[key] for key in selection} == selection, name

    maps = {path.name: path for path in (cohort.output_dir / "group").glob("space-*_map.nii.gz")}
    assert maps  # the masks of sub-001 and sub-002 alone (sub-010 and sub-011 are not selected)
    for path in maps.values():
        assert sidecar(path)["NPatients"] == 2 and sidecar(path)["ParticipantSelection"]["NSelected"] == 9
        assert all("sub-010" not in source and "sub-011" not in source for source in sidecar(path)["Sources"])

    html = (cohort.output_dir / "group.html").read_text()
    assert "Participant selection (--participant-label): 9 of the 17 participants" in html
    assert ", ".join([*SELECTED, "sub-099"]) in html
    assert ">sub-008<" in html and ">sub-009<" not in html and ">sub-016<" not in html
    assert "no QSM image" in html  # the selected participant that failed is still listed, never dropped


def test_without_the_option_every_participant_is_analysed_and_no_selection_is_claimed(
        cohort: SimulatedCohort) -> None:
    assert main([str(cohort.bids_dir), str(cohort.output_dir), "group", "--participant-label", "001", "002",
                 "003", "004"]) == 0
    # Rerun without it in the same folder: everything is back, and nothing says a selection was applied.
    result = run_group_level(cohort.bids_dir, cohort.output_dir, progress=False)
    assert result.selection is None
    assert group_table(cohort, "subjects")["participant_id"].tolist() == cohort.participants["participant_id"].tolist()
    assert sorted(group_table(cohort, "lesions")["participant_id"].unique()) == cohort.participants[
        "participant_id"].tolist()
    for name in TABLES:
        assert "ParticipantSelection" not in sidecar(cohort.output_dir / "group" / f"desc-{name}_table.tsv"), name
    for path in (cohort.output_dir / "group").glob("space-*_map.nii.gz"):
        assert sidecar(path)["NPatients"] == 4 and "ParticipantSelection" not in sidecar(path)
    html = result.report.read_text()
    assert "Participant selection" not in html and ">sub-016<" in html and "no QSM image" in html


@pytest.mark.parametrize("extra", [[], ["--train", "--rim-annotations", "ANNOTATIONS", "--device", "cpu"]])
def test_a_named_participant_without_outputs_is_refused_with_one_line_before_any_work(
        cohort: SimulatedCohort, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path, extra: list[str]) -> None:
    import bids_rim.bidsio.training_data

    def must_not_run(*_args, **_kwargs):
        raise AssertionError("the training set was read before the selection was checked")

    monkeypatch.setattr(bids_rim.bidsio.training_data, "load_training_set", must_not_run)
    (tmp_path / "annotations").mkdir()
    extra = [str(tmp_path / "annotations") if item == "ANNOTATIONS" else item for item in extra]
    capsys.readouterr()
    code = main([str(cohort.bids_dir), str(cohort.output_dir), "group", "--participant-label", "001", "sub-042",
                 "043", *extra])
    assert code == 64
    error = capsys.readouterr().err.strip().splitlines()
    assert len([line for line in error if "sub-042" in line]) == 1
    assert error[-1].startswith("bids_rim: error: --participant-label: no participant-level outputs")
    assert "sub-042, sub-043" in error[-1] and "sub-001" not in error[-1]
    assert not (cohort.output_dir / "group").exists() and not (cohort.output_dir / "group.html").exists()
    assert not (cohort.output_dir / "models").exists()


def test_group_train_trains_on_the_named_participants_alone(
        cohort: SimulatedCohort, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The training set the loader returns is cut to the selection: patches, metadata and annotation counts."""
    import bids_rim.bidsio.training_data
    import bids_rim.training.api
    from bids_rim.bidsio.training_data import AnnotationMatch, TrainingSet

    participants = ["sub-001", "sub-002", "sub-003"]
    meta = pd.DataFrame({"participant_id": np.repeat(participants, 4), "session_id": "n/a", "site": "A",
                         "lesion_id": np.tile(np.arange(1, 5), 3), "label": np.tile([1.0, 0.0, np.nan, 0.0], 3)})
    patches = np.arange(12, dtype=np.float32)[:, None, None, None, None] * np.ones((12, 3, 4, 4, 4), np.float32)
    matches = tuple(AnnotationMatch(tmp_path / f"{p}_desc-rim_annotations.tsv", 3, 3) for p in participants)
    loaded = TrainingSet(patches, meta.assign(spacing_mm=1.0), np.ones(12), annotation_matches=matches)
    seen: dict = {}

    def load_training_set(_output_dir, participants_table, _annotations, **_kwargs):
        seen["participants"] = sorted(participants_table["participant_id"])
        return loaded

    def train_rim_model(patches, meta, *_args, **kwargs):
        seen.update(patches=patches, meta=meta, annotations=kwargs["annotations"])
        return SimpleNamespace(model_path=tmp_path / "model.pt", model_card_path=tmp_path / "card.md")

    monkeypatch.setattr(bids_rim.bidsio.training_data, "load_training_set", load_training_set)
    monkeypatch.setattr(bids_rim.training.api, "train_rim_model", train_rim_model)
    (tmp_path / "annotations").mkdir()
    code = main([str(cohort.bids_dir), str(cohort.output_dir), "group", "--train", "--rim-annotations",
                 str(tmp_path / "annotations"), "--participant-label", "001", "003", "--device", "cpu"])
    assert code == 0
    assert seen["participants"] == ["sub-001", "sub-003"]  # participants.tsv rows of the selection alone
    assert sorted(seen["meta"]["participant_id"].unique()) == ["sub-001", "sub-003"] and len(seen["meta"]) == 8
    assert seen["patches"][:, 0, 0, 0, 0].tolist() == [0, 1, 2, 3, 8, 9, 10, 11]  # rows stay with their metadata
    assert seen["annotations"]["files"] == 2 and seen["annotations"]["rows"] == 6


def test_the_tables_of_participants_left_out_are_never_read(cohort: SimulatedCohort,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the selected participants' tables are opened: one left out (say, for a broken table) costs nothing."""
    import bids_rim.group.aggregate as aggregate

    opened: list[str] = []
    read_lesion_tables = aggregate.read_lesion_tables

    def spy(sessions, **kwargs):
        opened.extend(table.participant_id for table in sessions)
        return read_lesion_tables(sessions, **kwargs)

    monkeypatch.setattr(aggregate, "read_lesion_tables", spy)
    code = main([str(cohort.bids_dir), str(cohort.output_dir), "group", "--participant-label", *SELECTED,
                 "--count-model", "poisson"])
    assert code == 0
    assert sorted(set(opened)) == SELECTED
    assert group_table(cohort, "subjects")["participant_id"].tolist() == SELECTED
    assert sidecar(cohort.output_dir / "group" / "desc-subjects_table.tsv")["ParticipantSelection"][
        "NWithParticipantLevelOutputs"] == 17  # the 16 with tables and sub-099 with its crash file
