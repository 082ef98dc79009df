"""The quality check of a normalisation: the share of lesion voxels inside the template brain."""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_rim.interfaces.preproc import TemplateMaps
from bids_rim.preproc.normalisation_qc import (
    MIN_LESION_SHARE_INSIDE_BRAIN,
    lesion_share_inside_brain,
    normalisation_warning,
)


def test_share_counts_lesion_voxels_inside_the_brain() -> None:
    brain = np.zeros((10, 10, 10), bool)
    brain[2:8, 2:8, 2:8] = True
    lesions = np.zeros((10, 10, 10), np.uint8)
    lesions[6:10, 4, 4] = 1  # two voxels inside (x = 6, 7), two outside (x = 8, 9)
    assert lesion_share_inside_brain(lesions, brain) == pytest.approx(0.5)
    lesions[:] = 0
    lesions[3:5, 3, 3] = 1
    assert lesion_share_inside_brain(lesions, brain) == 1.0


def test_share_is_none_without_lesions_and_refuses_other_grids() -> None:
    brain = np.ones((4, 4, 4), bool)
    assert lesion_share_inside_brain(np.zeros((4, 4, 4)), brain) is None
    with pytest.raises(ValueError, match="differ in shape"):
        lesion_share_inside_brain(np.ones((4, 4, 5)), brain)


def test_warning_only_below_the_threshold() -> None:
    assert normalisation_warning("MNI152NLin2009cAsym", None) is None
    assert normalisation_warning("MNI152NLin2009cAsym", MIN_LESION_SHARE_INSIDE_BRAIN) is None
    warning = normalisation_warning("MNI152NLin2009cAsym", 0.42)
    assert warning is not None and "MNI152NLin2009cAsym" in warning and "42%" in warning


def _shift_transform(folder: Path, shift_mm: tuple[float, float, float]) -> str:
    """An antspyx translation file (ITK LPS convention) that displaces the moved mask by ``shift_mm``."""
    import ants

    transform = ants.create_ants_transform(transform_type="AffineTransform", dimension=3,
                                           translation=list(shift_mm))
    path = folder / "shift.mat"
    ants.write_transform(transform, str(path))
    return str(path)


def test_template_maps_flag_a_normalisation_that_moves_lesions_out_of_the_brain(tmp_path, monkeypatch) -> None:
    """The interface measures the share on the moved lesion mask and warns; the registration is
    replaced by a known transform (a 30 mm translation, or none) so the outcome is certain."""
    import bids_rim.preproc.template_space as template_space

    shape, affine = (40, 40, 40), np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = -40.0
    template_brain = np.zeros(shape, np.uint8)
    template_brain[8:32, 8:32, 8:32] = 1
    folder = tmp_path / "tpl"
    folder.mkdir()
    nib.save(nib.Nifti1Image(template_brain.astype(np.float32) * 100, affine), folder / "T1w.nii.gz")
    nib.save(nib.Nifti1Image(template_brain, affine), folder / "mask.nii.gz")
    labels = np.zeros(shape, np.int16)
    labels[18:22, 18:22, 18:22] = 1  # one lesion in the middle of the brain
    inputs = {}
    for name, data in (("flair", template_brain.astype(np.float32)), ("brain", template_brain), ("labels", labels)):
        inputs[name] = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(data, affine), inputs[name])
    table = tmp_path / "table.tsv"
    table.write_text("lesion_id\trim_label\n1\t1\n")
    monkeypatch.setattr(template_space, "resolve_template",
                        lambda space: (folder / "T1w.nii.gz", folder / "mask.nii.gz"))

    def run(shift_mm: tuple[float, float, float], cwd: Path):
        monkeypatch.setattr(template_space, "register_to_template",
                            lambda *args, **kwargs: [_shift_transform(tmp_path, shift_mm)])
        cwd.mkdir()
        node = TemplateMaps(flair_on_qsm=str(inputs["flair"]), brain_mask=str(inputs["brain"]),
                            labels=str(inputs["labels"]), table=str(table), spaces=["TestSpace"])
        monkeypatch.chdir(cwd)
        return node.run().outputs

    good = run((0.0, 0.0, 0.0), tmp_path / "good")
    assert good.warnings == []
    assert {item["desc"] for item in good.maps} == {"lesions", "rim"}
    assert all(item["lesion_share_inside_brain"] == 1.0 for item in good.maps)

    astray = run((30.0, 0.0, 0.0), tmp_path / "astray")
    moved = np.asarray(nib.load(next(i["path"] for i in astray.maps if i["desc"] == "lesions")).dataobj)
    assert moved.sum() > 0  # the lesion is still on the grid, only outside the brain
    assert all(item["lesion_share_inside_brain"] == 0.0 for item in astray.maps)
    assert len(astray.warnings) == 1 and "TestSpace" in astray.warnings[0] \
        and re.search(r"(?<![\d.])0%", astray.warnings[0])
