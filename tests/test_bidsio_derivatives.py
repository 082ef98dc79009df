"""The derivative dataset's links: every Sources entry a BIDS URI that names the dataset holding the file."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from bids_rim.bidsio.derivatives import bids_uri, dataset_roots, write_dataset_description


def test_a_file_is_named_by_the_innermost_dataset_that_holds_it(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    masks, other = raw / "derivatives" / "lesion_masks", tmp_path / "qsmxt" / "lesion_masks"
    roots = dataset_roots(raw, (masks, other))
    assert list(roots) == ["raw", "lesion_masks", "lesion_masks2"]  # two folders of one name stay apart
    flair = raw / "sub-01" / "anat" / "sub-01_FLAIR.nii.gz"
    assert bids_uri(flair, roots) == "bids:raw:sub-01/anat/sub-01_FLAIR.nii.gz"
    mask = masks / "sub-01" / "anat" / "sub-01_label-lesion_mask.nii.gz"
    assert bids_uri(mask, roots) == "bids:lesion_masks:sub-01/anat/sub-01_label-lesion_mask.nii.gz"
    assert bids_uri(other / "sub-01" / "x.nii.gz", roots) == "bids:lesion_masks2:sub-01/x.nii.gz"
    outside = tmp_path / "elsewhere" / "qsm.nii.gz"
    assert bids_uri(outside, roots) == outside.resolve().as_uri()


def test_dataset_links_name_every_source_dataset(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    roots = dataset_roots(raw, (raw / "derivatives" / "lesion_masks",))
    description = json.loads(write_dataset_description(tmp_path / "out", roots).read_text())
    links = description["DatasetLinks"]
    assert {name: unquote(urlparse(uri).path) for name, uri in links.items()} == roots
    assert sorted(source["URL"] for source in description["SourceDatasets"]) == sorted(links.values())


def test_a_symlinked_input_keeps_its_own_path(tmp_path: Path) -> None:
    """DataLad datasets hold every image as a link into .git/annex: the source is the link's BIDS path."""
    raw = tmp_path / "raw"
    annexed = raw / ".git" / "annex" / "objects" / "KEY.nii.gz"
    annexed.parent.mkdir(parents=True)
    annexed.write_bytes(b"")
    link = raw / "sub-01" / "anat" / "sub-01_FLAIR.nii.gz"
    link.parent.mkdir(parents=True)
    link.symlink_to(annexed)
    assert bids_uri(link, dataset_roots(raw)) == "bids:raw:sub-01/anat/sub-01_FLAIR.nii.gz"


def test_names_of_an_earlier_run_stay_when_other_datasets_are_given(tmp_path: Path) -> None:
    """Run 1 links two lesion-mask datasets of one folder name; run 2, given only the second, must not
    rename it, or run 1's sidecars would point into the wrong dataset."""
    raw, out = tmp_path / "raw", tmp_path / "out"
    first, second = tmp_path / "a" / "lesion_masks", tmp_path / "b" / "lesion_masks"
    write_dataset_description(out, dataset_roots(raw, (first, second), out))
    again = dataset_roots(raw, (second,), out)
    assert again["lesion_masks2"] == str(second.resolve()) and again["lesion_masks"] == str(first.resolve())
    third = tmp_path / "c" / "lesion_masks"
    assert dataset_roots(raw, (third,), out)["lesion_masks3"] == str(third.resolve())


def test_each_output_names_the_inputs_it_was_made_from():
    from bids_rim.interfaces.derivatives import input_roles_of

    with_magnitude = {"flair": "f", "qsm": "q", "magnitude": "m", "lesion_mask": "l"}
    without = {"flair": "f", "qsm": "q"}
    assert input_roles_of("flair_on_qsm", with_magnitude, "qsm-support") == ["flair", "qsm", "magnitude"]
    assert input_roles_of("flair_on_qsm", without, "qsm-support") == ["flair", "qsm"]
    assert input_roles_of("brain_mask", with_magnitude, "qsm-support") == ["qsm"]
    assert input_roles_of("brain_mask", with_magnitude, "magnitude") == ["magnitude"]
    assert input_roles_of("brain_mask", without, "template MNI152NLin2009cAsym") == ["flair", "qsm"]
    assert input_roles_of("lesion_labels", with_magnitude, "magnitude") == list(with_magnitude)
    assert input_roles_of("table", without, "qsm-support") == ["flair", "qsm"]


@pytest.mark.parametrize(("environment", "expected"), [
    ({}, None),  # pip-installed, even inside some other Docker container (/.dockerenv)
    ({"BIDS_RIM_DOCKER": "1"}, "docker"),
    ({"BIDS_RIM_DOCKER": "1", "APPTAINER_CONTAINER": "/x/bids_rim.sif"}, "singularity"),
    ({"SINGULARITY_CONTAINER": "/x/other.sif"}, None),  # another image
])
def test_container_entry_names_only_the_bids_rim_image(monkeypatch, environment, expected):
    from bids_rim.bidsio.derivatives import container_entry

    for name in ("BIDS_RIM_DOCKER", "APPTAINER_CONTAINER", "SINGULARITY_CONTAINER"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    entry = container_entry()
    assert (entry and entry["Type"]) == expected
