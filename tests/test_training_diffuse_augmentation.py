"""Simulated diffusely paramagnetic rim− lesions: what the augmentation changes, and where it is used."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.linear_model import LogisticRegression

from bids_rim.models import get_model
from bids_rim.models.asym import rim_readout_of_patches
from bids_rim.training.augment import (
    DIFFUSE_EDGE_BLUR_VOXELS,
    DIFFUSE_OFFSET_PPM,
    PatchAugmenter,
    add_diffuse_paramagnetism,
)
from bids_rim.training.config import TrainConfig
from bids_rim.training.finetune import finetune, with_simulated_diffuse
from bids_rim.training.toy import make_toy_patches

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def toy():
    patches, meta = make_toy_patches(8, 8, patch_size=16, seed=3)
    return patches, meta["label"].to_numpy().astype(int)


def test_diffuse_paramagnetism_brightens_the_lesion_throughout_and_nothing_else(toy):
    patch = toy[0][0]
    before = patch.copy()
    out = add_diffuse_paramagnetism(patch, 0.03)
    lesion = patch[2] > 0.5
    deep = ndimage.binary_erosion(lesion, iterations=2)
    far = ~ndimage.binary_dilation(lesion, iterations=4)
    added = out[0] - patch[0]
    assert deep.any() and far.any()
    assert np.all(np.abs(added[deep] - 0.03) < 0.001)  # uniform inside: no rim, no gradient
    assert np.all(np.abs(added[far]) < 1e-4)
    assert 0.0 < added[lesion & ~ndimage.binary_erosion(lesion)].mean() < 0.03  # a blurred edge
    np.testing.assert_array_equal(out[1:], patch[1:])  # FLAIR and the mask untouched
    np.testing.assert_array_equal(patch, before)  # a copy, not in place


def test_augmenter_makes_only_rim_negative_patches_diffuse(toy):
    patches, labels = toy
    batch = torch.from_numpy(patches[:24])
    batch_labels = labels[:24]
    assert 0 < batch_labels.sum() < len(batch_labels)
    plain = PatchAugmenter(seed=4, flair_shift_voxels=0, qsm_noise_std_ppm=0.0)(batch)
    diffuse = PatchAugmenter(seed=4, flair_shift_voxels=0, qsm_noise_std_ppm=0.0, diffuse_fraction=1.0)(
        batch, batch_labels)
    for index, label in enumerate(batch_labels):
        difference = (diffuse[index] - plain[index]).numpy()
        np.testing.assert_array_equal(difference[1:], 0.0)
        if label == 1:
            np.testing.assert_array_equal(difference[0], 0.0)
        else:  # flips and rotations keep the sum: it is the offset times the blurred mask's sum
            blurred_sum = ndimage.gaussian_filter(patches[index, 2], DIFFUSE_EDGE_BLUR_VOXELS).sum()
            offset = difference[0].sum() / blurred_sum
            assert DIFFUSE_OFFSET_PPM[0] - 1e-4 <= offset <= DIFFUSE_OFFSET_PPM[1] + 1e-4
    with pytest.raises(ValueError, match="labels"):
        PatchAugmenter(seed=4, diffuse_fraction=0.5)(batch)


def test_simulated_diffuse_copies_are_rim_negative_and_reproducible(toy):
    patches, labels = toy
    n_negative = int((labels == 0).sum())
    more_patches, more_labels = with_simulated_diffuse(patches, labels, 0.5, seed=1)
    count = int(round(0.5 * n_negative))
    assert len(more_patches) == len(more_labels) == len(patches) + count
    np.testing.assert_array_equal(more_patches[: len(patches)], patches)
    np.testing.assert_array_equal(more_labels, np.concatenate([labels, np.zeros(count, dtype=int)]))
    negative_masks = {patches[row, 2].tobytes() for row in np.flatnonzero(labels == 0)}
    assert all(copy[2].tobytes() in negative_masks for copy in more_patches[len(patches):])
    again, _ = with_simulated_diffuse(patches, labels, 0.5, seed=1)
    np.testing.assert_array_equal(again, more_patches)
    unchanged = with_simulated_diffuse(patches, labels, 0.0, seed=1)
    assert unchanged[0] is patches and unchanged[1] is labels


def test_fine_tuning_starts_its_read_out_path_from_a_regression_that_saw_the_copies(toy):
    patches, labels = toy
    fit, val = np.arange(len(labels)) % 4 != 0, np.arange(len(labels)) % 4 == 0
    # lr 0: the read-out path stays what fine-tuning started it as
    config = TrainConfig(width=4, batch_size=16, finetune_epochs=1, min_finetune_epochs=1, patch_size=16, lr=0.0,
                         supcon_weight=0.0, simulated_diffuse_fraction=0.5)
    torch.manual_seed(0)
    model = get_model("asym", **config.model_kwargs())
    result = finetune(model, patches[fit], labels[fit], patches[val], labels[val], config, CPU, seed=7)
    weights = result.state_dict["readout_logit.weight"].numpy()[0]
    for fraction, same in ((0.5, True), (0.0, False)):
        start_patches, start_labels = with_simulated_diffuse(patches[fit], labels[fit], fraction, seed=7)
        regression = LogisticRegression(max_iter=1000).fit(rim_readout_of_patches(start_patches), start_labels)
        assert np.allclose(weights, regression.coef_[0], atol=1e-4) is same


def test_simulated_diffuse_fraction_must_be_a_probability():
    with pytest.raises(ValueError, match="simulated_diffuse_fraction"):
        TrainConfig(simulated_diffuse_fraction=1.5)
