"""Lesion borders redrawn at half the FLAIR contrast: rater-independent outlines, same ids."""
from __future__ import annotations

import nibabel as nib
import numpy as np
from scipy import ndimage

from bids_rim.preproc.outline import refine_lesion_outlines

SHAPE = (48, 48, 48)
AFFINE = np.diag([1.2, 1.2, 1.2, 1.0])  # a QSM grid of 1.2 mm voxels
WHITE_MATTER, LESION = 300.0, 520.0


def _img(data: np.ndarray) -> nib.Nifti1Image:
    return nib.Nifti1Image(data, AFFINE)


def _partial_volume(centres_vox: list[tuple[float, float, float]], radius_vox: float) -> np.ndarray:
    """Fraction of each voxel inside one of the spheres (supersampled 4× per axis)."""
    fine = 4
    axes = [(np.arange(n * fine) + 0.5) / fine - 0.5 for n in SHAPE]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"))
    inside = np.zeros(grid.shape[1:], dtype=bool)
    for centre in centres_vox:
        inside |= np.sum((grid - np.reshape(centre, (3, 1, 1, 1))) ** 2, axis=0) <= radius_vox ** 2
    return inside.reshape(SHAPE[0], fine, SHAPE[1], fine, SHAPE[2], fine).mean(axis=(1, 3, 5))


def _flair(fraction: np.ndarray, noise_sd: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (WHITE_MATTER + fraction * (LESION - WHITE_MATTER)
            + rng.normal(0.0, noise_sd, SHAPE)).astype(np.float32)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.sum(a & b) / (a.sum() + b.sum())


def _refine(labels: np.ndarray, flair: np.ndarray) -> np.ndarray:
    brain = np.ones(SHAPE, dtype=np.uint8)
    refined = refine_lesion_outlines(_img(labels.astype(np.int32)), _img(flair), _img(brain), min_volume_mm3=14.1)
    assert np.allclose(refined.affine, AFFINE)
    return np.asarray(refined.dataobj)


def test_generous_and_tight_raters_meet_at_the_half_contrast_border():
    fraction = _partial_volume([(24.0, 24.0, 24.0)], radius_vox=5.3)
    truth = fraction > 0.5
    flair = _flair(fraction, noise_sd=12.0)
    generous, tight = (fraction > 0.15).astype(np.int32), (fraction > 0.85).astype(np.int32)
    for given in (generous, tight):
        refined = _refine(given, flair) > 0
        assert _dice(refined, truth) > _dice(given > 0, truth) + 0.05
        assert _dice(refined, truth) > 0.9
    # The two raters draw outlines a voxel layer apart; the redrawn ones nearly coincide.
    assert _dice(generous > 0, tight > 0) < 0.8
    assert _dice(_refine(generous, flair) > 0, _refine(tight, flair) > 0) > 0.93


def test_neighbours_keep_their_ids_and_do_not_merge():
    # Two lesions 4.6 voxels apart between their borders; the rater drew both generously.
    fraction = np.maximum(_partial_volume([(16.0, 24.0, 24.0)], 4.2), _partial_volume([(29.0, 24.0, 24.0)], 4.2))
    flair = _flair(fraction, noise_sd=10.0)
    labels, count = ndimage.label(fraction > 0.2)
    assert count == 2
    refined = _refine(labels, flair)
    assert set(np.unique(refined)) == {0, 1, 2}
    for lesion_id in (1, 2):
        inside = refined == lesion_id
        assert ndimage.label(inside, structure=np.ones((3, 3, 3)))[1] == 1
        assert np.all(labels[inside] == lesion_id) or np.sum(labels[inside] == 3 - lesion_id) == 0
    touching = ndimage.binary_dilation(refined == 1, structure=np.ones((3, 3, 3))) & (refined == 2)
    assert not touching.any()


def test_a_lesion_flair_does_not_show_keeps_its_given_outline():
    fraction = _partial_volume([(24.0, 24.0, 24.0)], radius_vox=4.0)
    flat = _flair(np.zeros(SHAPE), noise_sd=10.0)  # e.g. a mask drawn on another contrast
    # The lesion's upper quartile lies 0.67 noise SD above the ring's median: no contrast.
    given = (fraction > 0.5).astype(np.int32)
    refined = _refine(given, flat)
    assert set(np.unique(refined)) == {0, 1}
    assert np.array_equal(refined > 0, given > 0)
