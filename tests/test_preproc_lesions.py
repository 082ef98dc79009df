"""Lesion labelling (ids, minimum size, confluent policy), NAWM and the built-in segmentation."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from bids_rim.preproc.lesions import NAIMS_MIN_VOLUME_MM3, label_lesions, segment_lesions_flair
from bids_rim.preproc.normalise import flair_tissue_classes, nawm_mask, nawm_median
from tests.test_preproc_phantom import FLAIR_LEVELS, Phantom, grid_affine, qsm_grid, world_points


def sphere_mask(shape, affine, spheres):
    points = world_points(affine, shape)
    mask = np.zeros(len(points), bool)
    for centre, radius in spheres:
        mask |= np.linalg.norm(points - centre, axis=1) <= radius
    return nib.Nifti1Image(mask.reshape(shape).astype(np.uint8), affine)


GRID_1MM = ((40, 40, 40), grid_affine((40, 40, 40), 1.0))


def test_ids_follow_world_position_and_table_is_right():
    shape, affine = GRID_1MM
    spheres = [((8.0, 0.0, 0.0), 3.0), ((-8.0, 5.0, 0.0), 4.0), ((0.0, -10.0, 6.0), 2.5)]
    labels, table = label_lesions(sphere_mask(shape, affine, spheres))
    assert list(table["lesion_id"]) == [1, 2, 3]
    # Ordered by centroid x (RAS): -8, 0, 8.
    assert np.allclose(table["centroid_x_mm"], [-8.0, 0.0, 8.0], atol=0.05)
    voxel_counts = [np.asarray(sphere_mask(shape, affine, [s]).dataobj).sum()
                    for s in (spheres[1], spheres[2], spheres[0])]
    assert np.allclose(table["volume_mm3"], voxel_counts)  # 1 mm³ voxels
    data = np.asarray(labels.dataobj)
    assert set(np.unique(data)) == {0, 1, 2, 3}
    assert not table["flag_confluent"].any()


def test_ids_are_stable_under_voxel_noise_and_reruns():
    shape, affine = GRID_1MM
    spheres = [((8.0, 0.0, 0.0), 3.0), ((-8.0, 5.0, 0.0), 4.0), ((0.0, -10.0, 6.0), 2.5)]
    mask = sphere_mask(shape, affine, spheres)
    labels_a, table_a = label_lesions(mask)
    noisy = np.asarray(mask.dataobj).copy()
    edge = np.argwhere(noisy)[::7]  # drop a scattering of lesion voxels
    noisy[tuple(edge.T)] = 0
    labels_b, table_b = label_lesions(nib.Nifti1Image(noisy, affine))
    assert list(table_a["lesion_id"]) == list(table_b["lesion_id"])
    assert np.allclose(table_a["centroid_x_mm"], table_b["centroid_x_mm"], atol=0.5)
    labels_c, _ = label_lesions(mask)
    assert np.array_equal(np.asarray(labels_a.dataobj), np.asarray(labels_c.dataobj))


def test_lesions_below_the_naims_minimum_are_dropped():
    shape, affine = GRID_1MM
    # radius 1.2 mm: 7 voxels of 1 mm³ < 14.1 mm³; radius 3 mm: ~113 mm³.
    mask = sphere_mask(shape, affine, [((0.0, 0.0, 0.0), 1.2), ((10.0, 0.0, 0.0), 3.0)])
    _, table = label_lesions(mask)
    assert len(table) == 1 and table["centroid_x_mm"].iloc[0] == pytest.approx(10.0, abs=0.05)
    assert NAIMS_MIN_VOLUME_MM3 == pytest.approx(4 / 3 * np.pi * 1.5**3, rel=0.01)
    _, with_small = label_lesions(mask, min_volume_mm3=1.0)
    assert len(with_small) == 2


def test_connectivity_counts_diagonal_neighbours_only_at_26():
    data = np.zeros((12, 12, 12), np.uint8)
    data[2:5, 2:5, 2:5] = 1
    data[5:8, 5:8, 5:8] = 1  # touches the first cube only at a corner
    mask = nib.Nifti1Image(data, np.eye(4))
    assert len(label_lesions(mask, min_volume_mm3=1.0, connectivity=26)[1]) == 1
    assert len(label_lesions(mask, min_volume_mm3=1.0, connectivity=6)[1]) == 2


def test_confluent_lesions_split_or_merge_and_are_flagged():
    shape, affine = GRID_1MM
    touching = [((-5.0, 0.0, 0.0), 5.0), ((5.0, 0.0, 0.0), 5.0)]  # two lesions grown into contact
    mask = sphere_mask(shape, affine, touching)
    split_labels, split = label_lesions(mask, confluent_policy="split")
    merged_labels, merged = label_lesions(mask, confluent_policy="merge")
    assert len(split) == 2 and split["flag_confluent"].all()
    assert np.allclose(sorted(split["centroid_x_mm"]), [-5.0, 5.0], atol=1.0)
    assert len(merged) == 1 and merged["flag_confluent"].all()
    # Splitting keeps every voxel.
    assert (np.asarray(split_labels.dataobj) > 0).sum() == (np.asarray(merged_labels.dataobj) > 0).sum()
    # A single sphere, or an elongated (convex) lesion, is not confluent.
    _, single = label_lesions(sphere_mask(shape, affine, [((0.0, 0.0, 0.0), 6.0)]))
    assert len(single) == 1 and not single["flag_confluent"].any()
    points = world_points(affine, shape)
    ellipsoid = (np.sum((points / [12.0, 4.0, 4.0]) ** 2, axis=1) <= 1).reshape(shape).astype(np.uint8)
    _, elongated = label_lesions(nib.Nifti1Image(ellipsoid, affine))
    assert len(elongated) == 1 and not elongated["flag_confluent"].any()
    with pytest.raises(ValueError):
        label_lesions(mask, confluent_policy="guess")


def test_nawm_is_white_matter_away_from_lesions_and_edges():
    phantom = Phantom(noise_sd=0.02, seed=1)
    affine, shape = qsm_grid()
    flair = phantom.flair(affine, shape)
    brain = phantom.brain_mask(affine, shape)
    lesions = phantom.lesion_mask(affine, shape)
    classes = flair_tissue_classes(flair, brain)
    assert (FLAIR_LEVELS["csf"] < classes.csf_wm_boundary < FLAIR_LEVELS["wm"] < classes.wm_gm_boundary
            < FLAIR_LEVELS["gm"])
    assert classes.gm_level == pytest.approx(FLAIR_LEVELS["gm"], abs=0.08)
    nawm = np.asarray(nawm_mask(flair, brain, lesions).dataobj) > 0
    assert nawm.sum() > 1000
    assert not (nawm & (np.asarray(lesions.dataobj) > 0)).any()
    assert nawm_median(flair, nawm_mask(flair, brain, lesions)) == pytest.approx(FLAIR_LEVELS["wm"], abs=0.02)


def test_builtin_segmentation_finds_phantom_lesions():
    phantom = Phantom(noise_sd=0.03, seed=2)
    affine, shape = qsm_grid()
    flair = phantom.flair(affine, shape)
    brain = phantom.brain_mask(affine, shape)
    found = np.asarray(segment_lesions_flair(flair, brain).dataobj) > 0
    truth = np.asarray(phantom.lesion_mask(affine, shape).dataobj) > 0
    dice = 2 * (found & truth).sum() / (found.sum() + truth.sum())
    assert dice > 0.7, dice
    _, table = label_lesions(nib.Nifti1Image(found.astype(np.uint8), affine))
    assert len(table) == len(phantom.lesions)
