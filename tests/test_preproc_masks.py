"""Brain masks (QSM support, GRE magnitude, registered template) and N4 bias correction."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from bids_rim.preproc.bias import n4_bias_correct
from bids_rim.preproc.brainmask import mask_from_magnitude, mask_from_template, otsu_threshold, qsm_support_mask
from bids_rim.preproc.transforms import rigid_matrix
from tests.test_preproc_phantom import Phantom, grid_affine, qsm_grid


def dice(a, b):
    a, b = np.asarray(a.dataobj) > 0, np.asarray(b.dataobj) > 0
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_qsm_support_mask_is_the_brain_and_none_when_unmasked():
    phantom = Phantom(noise_sd=0.05, seed=0)
    affine, shape = qsm_grid()
    qsm = phantom.qsm(affine, shape)
    data = np.asarray(qsm.dataobj).copy()
    data[24, 24, 24] = 0.0  # an exact zero inside the brain is a hole, not background
    mask = qsm_support_mask(nib.Nifti1Image(data, affine))
    assert np.array_equal(np.asarray(mask.dataobj) > 0, np.asarray(phantom.brain_mask(affine, shape).dataobj) > 0)
    assert qsm_support_mask(phantom.qsm(affine, shape, masked=False)) is None


def test_otsu_separates_two_classes():
    low = np.random.default_rng(0).normal(0.1, 0.02, 5000)
    high = np.random.default_rng(1).normal(1.0, 0.05, 3000)
    threshold = otsu_threshold(np.concatenate([low, high]))
    assert (low < threshold).mean() > 0.99 and (high > threshold).all()


def test_mask_from_magnitude_finds_the_brain_inside_the_skull():
    phantom = Phantom(noise_sd=0.03, seed=1)
    affine, shape = qsm_grid()
    mask = mask_from_magnitude(phantom.magnitude(affine, shape))
    brain = np.asarray(phantom.brain_mask(affine, shape).dataobj) > 0
    got = np.asarray(mask.dataobj) > 0
    assert dice(mask, phantom.brain_mask(affine, shape)) > 0.95
    # The scalp, outside the dark skull, is left out.
    assert (got & ~brain).sum() < 0.05 * got.sum()


def test_mask_from_template_registers_the_template():
    phantom = Phantom(noise_sd=0.02, seed=2)
    shape = (48, 48, 48)
    subject_affine = grid_affine(shape, 2.0)
    # The "template" is the same anatomy seen displaced and rotated, on its own grid.
    template_shape = (44, 46, 40)
    template_affine = grid_affine(template_shape, 2.2)
    subject_to_template = rigid_matrix((3.0, -4.0, 6.0), (6.0, -5.0, 4.0))
    template = phantom.flair(template_affine, template_shape, subject_to_template)
    template_brain = nib.Nifti1Image(
        (Phantom.brain_radius(Phantom._to_anatomy(template_affine, template_shape, subject_to_template)) <= 1.0)
        .reshape(template_shape).astype(np.uint8),
        template_affine,
    )
    image = phantom.flair(subject_affine, shape)
    mask = mask_from_template(image, template, template_brain, seed=0)
    assert dice(mask, phantom.brain_mask(subject_affine, shape)) > 0.95


def test_n4_removes_a_smooth_bias_field():
    phantom = Phantom(noise_sd=0.01, seed=3)
    affine, shape = qsm_grid()

    def bias(points):
        return 1.0 + 0.3 * points[:, 0] / 40.0 + 0.15 * points[:, 2] / 34.0

    biased = phantom.flair(affine, shape, bias=bias)
    brain = phantom.brain_mask(affine, shape)
    corrected = n4_bias_correct(biased, brain)
    assert np.allclose(corrected.affine, biased.affine)
    nawm = (np.asarray(brain.dataobj) > 0) & (np.abs(np.asarray(phantom.flair(affine, shape).dataobj) - 1.0) < 0.05)
    nawm &= phantom.depth_mm(np.stack(np.meshgrid(*[np.arange(48)] * 3, indexing="ij"), -1).reshape(-1, 3)
                             @ affine[:3, :3].T + affine[:3, 3]).reshape(shape) > 8
    before = np.asarray(biased.dataobj)[nawm]
    after = np.asarray(corrected.dataobj)[nawm]
    cv_before = before.std() / before.mean()
    cv_after = after.std() / after.mean()
    assert cv_after < 0.5 * cv_before, (cv_before, cv_after)
