"""Template space (--output-spaces) with a small local TemplateFlow folder: nothing is downloaded."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

from .conftest import FAST_OPTIONS

SPACE = "MNI152NLin2009cAsym"


@pytest.fixture(scope="module")
def templateflow_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TemplateFlow folder holding a 3 mm MNI152 T1w and brain mask under their TemplateFlow names."""
    home = tmp_path_factory.mktemp("templateflow")
    folder = home / f"tpl-{SPACE}"
    folder.mkdir()
    (folder / "template_description.json").write_text('{"Name": "test copy of MNI152 (nilearn, 3 mm)"}')
    load_mni152_template(resolution=3).to_filename(folder / f"tpl-{SPACE}_res-02_T1w.nii.gz")
    mask = load_mni152_brain_mask(resolution=3)
    nib.Nifti1Image(np.asarray(mask.dataobj).astype(np.uint8), mask.affine).to_filename(
        folder / f"tpl-{SPACE}_res-02_desc-brain_mask.nii.gz")
    return home


def _run(bids_dir: Path, out: Path, home: Path) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).with_name("bids_rim")), str(bids_dir), str(out), "participant",
               "--participant-label", "001", "-d", str(bids_dir / "derivatives" / "lesion_masks"),
               "-w", str(out.parent / "work"), "--skip-bids-validation", "--no-inference",
               "--output-spaces", SPACE, *FAST_OPTIONS]
    return subprocess.run(command, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "TEMPLATEFLOW_HOME": str(home)})


def test_lesion_maps_in_template_space(small_cohort: Path, templateflow_home: Path, tmp_path: Path) -> None:
    completed = _run(small_cohort, tmp_path / "out", templateflow_home)
    assert completed.returncode == 0, completed.stderr[-2000:]
    anat = tmp_path / "out" / "sub-001" / "ses-01" / "anat"
    lesion_map = nib.load(anat / f"sub-001_ses-01_space-{SPACE}_desc-lesions_mask.nii.gz")
    template_mask = nib.load(templateflow_home / f"tpl-{SPACE}" / f"tpl-{SPACE}_res-02_desc-brain_mask.nii.gz")
    assert lesion_map.shape == template_mask.shape
    lesions = np.asarray(lesion_map.dataobj) > 0
    assert lesions.sum() > 0
    inside = (np.asarray(template_mask.dataobj) > 0)[lesions].mean()
    assert inside > 0.9, f"only {inside:.0%} of lesion voxels fall inside the template brain"


def test_missing_template_gives_a_clear_error(small_cohort: Path, tmp_path: Path) -> None:
    empty_home = tmp_path / "empty_templateflow"
    empty_home.mkdir()
    completed = _run(small_cohort, tmp_path / "out", empty_home)
    assert completed.returncode == 64
    message = [line for line in completed.stderr.splitlines() if line.startswith("bids_rim: error")]
    assert len(message) == 1
    assert f"tpl-{SPACE}_res-02_T1w.nii.gz" in message[0] and "pre-fetch" in message[0]
    assert not (tmp_path / "out" / "sub-001" / "ses-01").exists()
