"""nibabel↔ANTs conversion, ITK transform files, rigid registration and resampling."""

from __future__ import annotations

import ants
import nibabel as nib
import numpy as np
import pytest

from bids_rim.preproc.antsio import RAS_TO_LPS, from_ants, to_ants
from bids_rim.preproc.registration import register_rigid
from bids_rim.preproc.resample import resample_mask_to_reference, resample_to_reference
from bids_rim.preproc.transforms import (
    read_itk_rigid,
    rigid_matrix,
    rotation_angle_deg,
    translation_mm,
    write_itk_rigid,
)
from tests.test_preproc_phantom import Phantom, grid_affine, qsm_grid

OBLIQUE = rigid_matrix((12.0, -5.0, 20.0), (0, 0, 0))[:3, :3]
TRUE_QSM_TO_FLAIR = rigid_matrix((4.0, -3.0, 5.0), (3.0, -2.0, 4.0))


def test_ants_round_trip_keeps_voxels_and_world_position():
    affine = grid_affine((10, 12, 8), (1.2, 0.9, 3.0), OBLIQUE, centre_mm=(5.0, -3.0, 12.0))
    data = np.random.default_rng(0).normal(size=(10, 12, 8)).astype(np.float32)
    img = nib.Nifti1Image(data, affine)
    ants_img = to_ants(img)
    index = (3, 7, 2)
    lps = np.asarray(ants.transform_index_to_physical_point(ants_img, index))
    assert np.allclose(RAS_TO_LPS @ lps, nib.affines.apply_affine(affine, index), atol=1e-4)
    back = from_ants(ants_img)
    assert np.allclose(back.affine, affine, atol=1e-5)
    assert np.array_equal(np.asarray(back.dataobj), data)


def test_itk_transform_round_trip_and_agrees_with_ants(tmp_path):
    matrix = rigid_matrix((7.0, -2.0, 11.0), (4.5, -8.0, 2.5))
    path = write_itk_rigid(matrix, tmp_path / "from-FLAIR_to-QSM_mode-image_xfm.txt")
    assert np.allclose(read_itk_rigid(path), matrix, atol=1e-12)
    # ANTs reads the same file and maps an LPS point exactly as the RAS matrix does.
    point_ras = np.array([10.0, -20.0, 30.0])
    mapped_lps = ants.read_transform(str(path)).apply_to_point(tuple(RAS_TO_LPS @ point_ras))
    assert np.allclose(RAS_TO_LPS @ np.asarray(mapped_lps), nib.affines.apply_affine(matrix, point_ras), atol=1e-6)


def test_read_itk_honours_a_centre_of_rotation(tmp_path):
    path = tmp_path / "centred.txt"
    # 90° about z around LPS centre (10, 0, 0): LPS point (10, 0, 0) stays put.
    path.write_text(
        "#Insight Transform File V1.0\n#Transform 0\nTransform: AffineTransform_double_3_3\n"
        "Parameters: 0 -1 0 1 0 0 0 0 1 0 0 0\nFixedParameters: 10 0 0\n"
    )
    matrix = read_itk_rigid(path)
    assert np.allclose(nib.affines.apply_affine(matrix, [-10.0, 0.0, 0.0]), [-10.0, 0.0, 0.0])
    assert rotation_angle_deg(matrix) == pytest.approx(90.0)


def test_rotation_and_translation_helpers():
    matrix = rigid_matrix((0.0, 0.0, 30.0), (3.0, 4.0, 0.0))
    assert rotation_angle_deg(matrix) == pytest.approx(30.0)
    assert translation_mm(matrix) == pytest.approx(5.0)


@pytest.fixture(scope="module")
def registration_pair():
    """GRE magnitude on the QSM grid (the fixed image when present) and an oblique, displaced,
    thick-slice FLAIR of the same anatomy."""
    phantom = Phantom(noise_sd=0.02, seed=3)
    affine, shape = qsm_grid()
    fixed = phantom.magnitude(affine, shape)
    brain = phantom.brain_mask(affine, shape)
    flair_shape = (52, 56, 30)
    flair_affine = grid_affine(flair_shape, (1.8, 1.8, 3.0), OBLIQUE, centre_mm=(4.0, -6.0, 2.0))
    moving = phantom.flair(flair_affine, flair_shape, TRUE_QSM_TO_FLAIR)
    return moving, fixed, brain


def test_rigid_registration_recovers_known_offset(registration_pair):
    moving, fixed, brain = registration_pair
    estimate = register_rigid(moving, fixed, seed=7)
    error = np.linalg.inv(TRUE_QSM_TO_FLAIR) @ estimate
    assert rotation_angle_deg(error) < 1.0
    # Error in mm at points across the brain, not only at the origin.
    points = np.array([[x, y, z] for x in (-30, 30) for y in (-30, 30) for z in (-25, 25)], float)
    displacement = nib.affines.apply_affine(error, points) - points
    assert np.linalg.norm(displacement, axis=1).max() < 1.0


def test_rigid_registration_is_deterministic(registration_pair):
    # Holds with single-threaded ITK, the package default (bids_rim/preproc/__init__.py).
    moving, fixed, brain = registration_pair
    first = register_rigid(moving, fixed, seed=11)
    second = register_rigid(moving, fixed, seed=11)
    assert np.array_equal(first, second)


def test_resample_puts_flair_anatomy_on_the_qsm_grid():
    phantom = Phantom()
    affine, shape = qsm_grid()
    flair_shape = (60, 64, 40)
    flair_affine = grid_affine(flair_shape, (1.5, 1.5, 2.0), OBLIQUE)
    flair_mask = phantom.lesion_mask(flair_affine, flair_shape, TRUE_QSM_TO_FLAIR)
    on_qsm = resample_mask_to_reference(flair_mask, nib.Nifti1Image(np.zeros(shape), affine), TRUE_QSM_TO_FLAIR)
    truth = np.asarray(phantom.lesion_mask(affine, shape).dataobj) > 0
    got = np.asarray(on_qsm.dataobj) > 0
    dice = 2 * (truth & got).sum() / (truth.sum() + got.sum())
    assert dice > 0.8
    assert on_qsm.shape == shape and np.allclose(on_qsm.affine, affine)


def test_resample_identity_on_same_grid_and_nearest_keeps_labels():
    phantom = Phantom()
    affine, shape = qsm_grid()
    labels = phantom.labels(affine, shape)
    same = resample_to_reference(labels, labels, np.eye(4), interpolation="nearest")
    assert np.array_equal(np.asarray(same.dataobj), np.asarray(labels.dataobj))
    shifted = resample_to_reference(labels, labels, rigid_matrix((0, 0, 0), (4.0, 0, 0)), interpolation="nearest")
    # Pulling from 4 mm (2 voxels) further along x moves the anatomy 2 voxels down i.
    assert np.array_equal(np.asarray(shifted.dataobj)[:-2], np.asarray(labels.dataobj)[2:])
    assert set(np.unique(np.asarray(shifted.dataobj))) <= set(np.unique(np.asarray(labels.dataobj)))
    with pytest.raises(ValueError):
        resample_to_reference(labels, labels, interpolation="cubic")
