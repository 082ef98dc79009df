"""The last-resort brain mask: an unmasked QSM map and no GRE magnitude image.

The session then gets the brain mask of a TemplateFlow template registered to FLAIR (affine,
mutual information) and carried onto the QSM grid through the FLAIR→QSM transform. The
template is a small local TemplateFlow folder (nilearn's 3 mm MNI152 under the TemplateFlow
names), so nothing is downloaded. On the small synthetic crop the brain fills about 95 % of the
QSM field of view, so the test checks both sides: the mask covers the brain and leaves out
most of what is outside it (a mask of the whole field of view leaves out nothing).
Measured (cohort seed 11, sub-001): 99.6 % of the brain covered and 82 % of the outside left
out with the synthetic cohort of 29 Nov 2026 22:30; only 27 % left out after the synthetic
cohort changed later that day (same code path). The floor (20 %) still fails a mask of the whole
field of view; the template mask is coarse on this tightly cropped FOV (README, Limitations).
Measured on 3 Dec 2026: the mask reaches up to 10 mm beyond the brain (median 2.6 mm), and of
the voxels more than 7 mm outside the brain (up to 12.6 mm here) it leaves out 73 % (floor 50 %);
a mask of the whole field of view leaves out none of them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nilearn.datasets import load_mni152_brain_mask, load_mni152_template
from scipy import ndimage

from bids_rim.preproc.brainmask import BRAIN_MASK_TEMPLATE

from .conftest import FAST_OPTIONS

SUBJECT = "001"


@pytest.fixture()
def templateflow_home(tmp_path: Path) -> Path:
    """A TemplateFlow folder holding a 3 mm MNI152 T1w and brain mask under their TemplateFlow names."""
    folder = tmp_path / "templateflow" / f"tpl-{BRAIN_MASK_TEMPLATE}"
    folder.mkdir(parents=True)
    (folder / "template_description.json").write_text('{"Name": "test copy of MNI152 (nilearn, 3 mm)"}')
    load_mni152_template(resolution=3).to_filename(folder / f"tpl-{BRAIN_MASK_TEMPLATE}_res-02_T1w.nii.gz")
    mask = load_mni152_brain_mask(resolution=3)
    nib.Nifti1Image(np.asarray(mask.dataobj).astype(np.uint8), mask.affine).to_filename(
        folder / f"tpl-{BRAIN_MASK_TEMPLATE}_res-02_desc-brain_mask.nii.gz")
    return folder.parent


def _unmask_qsm_and_drop_magnitude(bids_dir: Path) -> np.ndarray:
    """Fill the zero background of sub-001's QSM with noise (0.05 ppm SD) and delete its GRE
    magnitude; return the true brain (the original non-zero support) on the QSM grid."""
    anat = bids_dir / f"sub-{SUBJECT}" / "ses-01" / "anat"
    qsm_path = next(anat.glob("*_Chimap.nii*"))
    qsm = nib.load(qsm_path)
    data = np.asarray(qsm.dataobj, dtype=np.float32)
    brain = data != 0
    noise = np.random.default_rng(0).normal(0.0, 0.05, data.shape).astype(np.float32)
    nib.Nifti1Image(np.where(brain, data, noise), qsm.affine, qsm.header).to_filename(qsm_path)
    for path in anat.glob("*_part-mag_T2starw.*"):
        path.unlink()
    return brain


def test_unmasked_qsm_without_magnitude_gets_a_template_brain_mask(cohort_copy: Path, templateflow_home: Path,
                                                                  tmp_path: Path) -> None:
    brain = _unmask_qsm_and_drop_magnitude(cohort_copy)
    out = tmp_path / "out"
    command = [str(Path(sys.executable).with_name("bids_rim")), str(cohort_copy), str(out), "participant",
               "--participant-label", SUBJECT, "-d", str(cohort_copy / "derivatives" / "lesion_masks"),
               "-w", str(tmp_path / "work"), "--skip-bids-validation", "--no-inference", *FAST_OPTIONS]
    completed = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600,
                               env={**os.environ, "TEMPLATEFLOW_HOME": str(templateflow_home)})
    assert completed.returncode == 0, completed.stderr[-2000:]

    mask_path = out / f"sub-{SUBJECT}" / "ses-01" / "anat" / f"sub-{SUBJECT}_ses-01_space-QSM_desc-brain_mask.nii.gz"
    sidecar = json.loads(Path(str(mask_path).replace(".nii.gz", ".json")).read_text())
    assert f"template {BRAIN_MASK_TEMPLATE}" in json.dumps(sidecar)
    mask = np.asarray(nib.load(mask_path).dataobj) > 0
    assert mask.shape == brain.shape
    covered = (mask & brain).sum() / brain.sum()
    left_out = (~mask & ~brain).sum() / (~brain).sum()
    assert covered > 0.95, f"the template mask covers only {covered:.1%} of the brain"
    assert left_out > 0.2, f"the template mask leaves out only {left_out:.1%} of the non-brain voxels"
    zooms_mm = nib.load(mask_path).header.get_zooms()[:3]
    far_outside = ndimage.distance_transform_edt(~brain, sampling=zooms_mm) > 7.0
    far_left_out = (~mask & far_outside).sum() / far_outside.sum()
    assert far_outside.sum() > 100 and far_left_out > 0.5, (
        f"the template mask leaves out only {far_left_out:.1%} of the voxels more than 7 mm outside the brain")
