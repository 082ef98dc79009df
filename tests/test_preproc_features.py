"""Per-lesion table and patches on the analytic phantom (rims known by construction)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from bids_rim.preproc.features import LESION_TABLE_COLUMNS, lesion_table, ventricle_mask
from bids_rim.preproc.lesions import label_lesions
from bids_rim.preproc.normalise import nawm_mask, nawm_median
from bids_rim.preproc.patches import CHANNELS, extract_patches, load_patch_spacing_mm, load_patches, save_patches
from tests.test_preproc_phantom import (
    FLAIR_LEVELS,
    QSM_LEVELS,
    QSM_SPACING_MM,
    Lesion,
    Phantom,
    grid_affine,
    qsm_grid,
)


@pytest.fixture(scope="module")
def phantom_session():
    phantom = Phantom(noise_sd=0.02, seed=5)
    affine, shape = qsm_grid()
    qsm = phantom.qsm(affine, shape)
    flair = phantom.flair(affine, shape)
    brain = phantom.brain_mask(affine, shape)
    labels, label_info = label_lesions(phantom.lesion_mask(affine, shape))
    return phantom, qsm, flair, brain, labels, label_info


def test_table_has_the_contract_columns_and_one_row_per_lesion(phantom_session):
    phantom, qsm, flair, brain, labels, label_info = phantom_session
    table = lesion_table(qsm, flair, labels, brain, label_table=label_info)
    assert list(table.columns) == LESION_TABLE_COLUMNS
    assert len(table) == len(phantom.lesions)
    assert np.allclose(table[["centroid_x_mm", "centroid_y_mm", "centroid_z_mm"]],
                       label_info[["centroid_x_mm", "centroid_y_mm", "centroid_z_mm"]])
    ijk = table[["centroid_i", "centroid_j", "centroid_k"]].to_numpy()
    assert np.allclose(nib.affines.apply_affine(qsm.affine, ijk),
                       table[["centroid_x_mm", "centroid_y_mm", "centroid_z_mm"]])


def _row_of(table, lesion):
    distances = np.linalg.norm(table[["centroid_x_mm", "centroid_y_mm", "centroid_z_mm"]].to_numpy() - lesion.centre_mm,
                               axis=1)
    return table.iloc[int(np.argmin(distances))]


def test_rim_lesions_have_a_bright_shell_and_others_do_not(phantom_session):
    phantom, qsm, flair, brain, labels, label_info = phantom_session
    # FLAIR in scanner units (x 700): a ratio to NAWM does not depend on them.
    flair_scanner_units = nib.Nifti1Image(np.asarray(flair.dataobj) * 700.0, flair.affine)
    table = lesion_table(qsm, flair_scanner_units, labels, brain, label_table=label_info)
    # The same phantom without noise: the FLAIR each lesion's voxels would have, partial volume included.
    affine, shape = qsm_grid()
    noise_free_flair = np.asarray(Phantom(lesions=phantom.lesions).flair(affine, shape).dataobj)
    label_data = np.asarray(labels.dataobj)
    for lesion in phantom.lesions:
        row = _row_of(table, lesion)
        if lesion.rim:
            assert row["qsm_shell_minus_core_ppb"] > 30.0
        else:
            # Shell straddles core (0 ppm) and white matter (−0.02 ppm): slightly negative.
            assert row["qsm_shell_minus_core_ppb"] < 0.0
        # Core is 0 ppm, NAWM −0.02 ppm: +20 ppb.
        assert row["qsm_core_ppb"] == pytest.approx((QSM_LEVELS["lesion_core"] - QSM_LEVELS["wm"]) * 1000, abs=6.0)
        # FLAIR contrast = lesion mean / NAWM median: the noise-free mean over the lesion's own
        # voxels (partial volume at 2 mm pulls it to 1.56-1.85 of WM here) over the WM level.
        # Measured within 0.003 of it. A median over the lesion misses by 0.04-0.18, an unnormalised
        # mean by a factor 700. (A whole-brain median reference would pass: WM dominates this
        # phantom's brain, so it differs from the NAWM median by under 0.01.)
        expected = noise_free_flair[label_data == row["lesion_id"]].mean() / FLAIR_LEVELS["wm"]
        assert row["flair_contrast"] == pytest.approx(expected, abs=0.02)
        assert not row["flag_touches_brain_edge"]
        assert not row["flag_confluent"]


def test_distance_to_ventricles(phantom_session):
    phantom, qsm, flair, brain, labels, label_info = phantom_session
    ventricles = np.asarray(ventricle_mask(flair, brain).dataobj) > 0
    truth = phantom.ventricles(np.array([[-7.0, 0.0, 0.0], [7.0, 0.0, 0.0]]))
    assert truth.all()
    centre_ijk = np.round(nib.affines.apply_affine(np.linalg.inv(qsm.affine),
                                                   [[-7.0, 0.0, 0.0], [7.0, 0.0, 0.0]])).astype(int)
    assert ventricles[tuple(centre_ijk.T)].all()
    table = lesion_table(qsm, flair, labels, brain, label_table=label_info)
    # Lesion at (20, -12, 4) r 4.5; right ventricle centre (7, 0, 0), semi-axes (4, 14, 6): the
    # ellipsoid's surface is 10.83 mm from the lesion centre (numerically), so 6.33 mm from its edge.
    # Between voxel centres on the 2 mm grid the distance is at least that gap, and at most the gap
    # plus a voxel's half-diagonal on each side (2 x 1.73 mm). A distance from the lesion centroid
    # (>= 10.8 mm) would fail this.
    row = _row_of(table, phantom.lesions[1])
    gap_mm, half_diagonal_mm = 6.33, np.sqrt(3) * QSM_SPACING_MM / 2
    assert gap_mm - 0.2 <= row["distance_to_ventricles_mm"] <= gap_mm + 2 * half_diagonal_mm


def test_touching_brain_edge_and_confluent_flags():
    lesions = (Lesion((0.0, 0.0, 31.0), 5.0, False), Lesion((-5.0, 20.0, 0.0), 5.0, False),
               Lesion((5.0, 20.0, 0.0), 5.0, False))
    phantom = Phantom(lesions=lesions)
    shape = (64, 72, 72)
    affine = grid_affine(shape, 1.0, centre_mm=(0.0, 8.0, 0.0))
    labels, info = label_lesions(phantom.lesion_mask(affine, shape))
    table = lesion_table(phantom.qsm(affine, shape), phantom.flair(affine, shape), labels,
                         phantom.brain_mask(affine, shape), label_table=info)
    top = _row_of(table, lesions[0])
    assert top["flag_touches_brain_edge"]
    pair = table[table["centroid_z_mm"].abs() < 2]
    assert len(pair) == 2 and pair["flag_confluent"].all()
    # Without the label table, touching lesions are still flagged.
    fallback = lesion_table(phantom.qsm(affine, shape), phantom.flair(affine, shape), labels,
                            phantom.brain_mask(affine, shape))
    assert fallback.loc[pair.index, "flag_confluent"].all()


def _patches_for(qsm, flair, brain, labels, **kwargs):
    nawm = nawm_mask(flair, brain, labels)
    return extract_patches(
        qsm, flair, labels, qsm_reference_ppm=nawm_median(qsm, nawm), flair_reference=nawm_median(flair, nawm), **kwargs
    )


def test_patches_are_centred_normalised_and_hold_only_their_lesion(phantom_session):
    phantom, qsm, flair, brain, labels, label_info = phantom_session
    patches, meta = _patches_for(qsm, flair, brain, labels, patch_size=16, spacing_mm=2.0)
    assert patches.shape == (len(phantom.lesions), 3, 16, 16, 16) and patches.dtype == np.float32
    assert list(meta["lesion_id"]) == list(label_info["lesion_id"])
    assert not meta["flag_patch_rescaled"].any()
    centre = (slice(7, 9),) * 3
    for n in range(len(patches)):
        assert set(np.unique(patches[n, 2])) <= {0.0, 1.0}
        assert patches[n, 2][centre].all()  # lesion at the centre
        assert patches[n, 1][centre].mean() == pytest.approx(FLAIR_LEVELS["lesion"] / FLAIR_LEVELS["wm"], rel=0.1)
        # QSM in ppm relative to NAWM: the lesion core (0 ppm) reads +0.02.
        assert patches[n, 0][centre].mean() == pytest.approx(0.02, abs=0.01)
    # The patch lesion channel holds this lesion's volume (2 mm spacing on a 2 mm grid: exact).
    volumes = [patches[n, 2].sum() * 8.0 for n in range(len(patches))]
    assert np.allclose(volumes, label_info["volume_mm3"])


def test_large_lesion_is_sampled_coarser_and_flagged_not_cut():
    lesions = (Lesion((0.0, 0.0, 10.0), 14.0, True), Lesion((20.0, -12.0, -10.0), 2.5, False))
    phantom = Phantom(lesions=lesions)
    affine, shape = qsm_grid()
    labels, info = label_lesions(phantom.lesion_mask(affine, shape))
    qsm, flair, brain = phantom.qsm(affine, shape), phantom.flair(affine, shape), phantom.brain_mask(affine, shape)
    patches, meta = _patches_for(qsm, flair, brain, labels, patch_size=16, spacing_mm=1.0, margin_mm=3.0)
    big = int(np.argmax(info["volume_mm3"]))
    assert meta["flag_patch_rescaled"].iloc[big] and not meta["flag_patch_rescaled"].iloc[1 - big]
    spacing = meta["patch_spacing_mm"].iloc[big]
    assert spacing >= (14.0 + 3.0) / 8.0
    mask = patches[big, 2]
    # Whole lesion inside with a margin: the outer two layers of the patch hold no lesion voxel.
    assert mask.sum() > 0 and mask[:2].sum() == mask[-2:].sum() == mask[:, :2].sum() == mask[:, :, -2:].sum() == 0
    assert mask.sum() * spacing**3 == pytest.approx(info["volume_mm3"].iloc[big], rel=0.2)


def test_patches_work_on_oblique_grids():
    rotation = np.linalg.qr(np.random.default_rng(1).normal(size=(3, 3)))[0]
    rotation *= np.sign(np.linalg.det(rotation))
    phantom = Phantom()
    shape = (44, 44, 44)
    affine = grid_affine(shape, 2.0, rotation)
    labels, info = label_lesions(phantom.lesion_mask(affine, shape))
    qsm, flair, brain = phantom.qsm(affine, shape), phantom.flair(affine, shape), phantom.brain_mask(affine, shape)
    patches, meta = _patches_for(qsm, flair, brain, labels, patch_size=15, spacing_mm=2.0)
    assert len(patches) == len(phantom.lesions)
    for n, lesion in enumerate(phantom.lesions):
        row = _row_of(info, lesion)
        assert np.linalg.norm(row[["centroid_x_mm", "centroid_y_mm", "centroid_z_mm"]].to_numpy(float)
                              - lesion.centre_mm) < 1.0
    assert all(patches[n, 2][7, 7, 7] == 1 for n in range(len(patches)))


def test_patch_file_round_trip_without_pickles(tmp_path, phantom_session):
    phantom, qsm, flair, brain, labels, label_info = phantom_session
    patches, meta = _patches_for(qsm, flair, brain, labels, patch_size=8, spacing_mm=2.0)
    path = save_patches(tmp_path / "sub-01_desc-lesions_patches.npz", patches, meta)
    with np.load(path, allow_pickle=False) as data:
        assert set(data.files) == {"patches", "lesion_id", "spacing_mm", "channels"}
        assert tuple(data["channels"]) == CHANNELS
        assert data["lesion_id"].dtype == np.int32 and data["spacing_mm"].dtype == np.float32
    loaded, ids = load_patches(path)
    assert np.array_equal(loaded, patches) and list(ids) == list(meta["lesion_id"])
    assert np.allclose(load_patch_spacing_mm(path), meta["patch_spacing_mm"])


def test_patches_of_a_coarser_qsm_read_its_voxels_instead_of_upsampling_them():
    # A 1.25 mm QSM with the default 1 mm spacing: the patches are cut at 1.25 mm on the voxel
    # grid, so every QSM sample is a voxel value minus the NAWM reference, not an interpolation.
    phantom = Phantom(noise_sd=0.02, seed=5)
    shape = (72, 72, 72)
    affine = grid_affine(shape, 1.25)
    qsm, flair, brain = phantom.qsm(affine, shape), phantom.flair(affine, shape), phantom.brain_mask(affine, shape)
    labels, _ = label_lesions(phantom.lesion_mask(affine, shape))
    nawm = nawm_mask(flair, brain, labels)
    reference = nawm_median(qsm, nawm)
    patches, meta = extract_patches(qsm, flair, labels, qsm_reference_ppm=reference,
                                    flair_reference=nawm_median(flair, nawm), patch_size=16, spacing_mm=1.0)
    small = ~meta["flag_patch_rescaled"].to_numpy()
    assert small.any() and np.allclose(meta["patch_spacing_mm"][small], 1.25)
    voxel_values = np.unique(np.round(np.asarray(qsm.dataobj, dtype=np.float32) - np.float32(reference), 5))
    samples = np.unique(np.round(patches[small, 0], 5))
    assert np.isin(samples, voxel_values).all()
    # A finer QSM keeps the requested spacing.
    fine = grid_affine((90, 90, 90), 1.0)
    fine_qsm, fine_flair = phantom.qsm(fine, (90, 90, 90)), phantom.flair(fine, (90, 90, 90))
    fine_labels, _ = label_lesions(phantom.lesion_mask(fine, (90, 90, 90)))
    _, fine_meta = extract_patches(fine_qsm, fine_flair, fine_labels, qsm_reference_ppm=0.0, flair_reference=1.0,
                                   patch_size=16, spacing_mm=2.0)
    assert (fine_meta["patch_spacing_mm"] >= 2.0).all() and (fine_meta["patch_spacing_mm"] == 2.0).any()
