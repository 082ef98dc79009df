"""Every registry model: forward and backward on a batch; conditioning starts as the identity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bids_rim.models import available_models, get_model, is_neural
from bids_rim.models.rim_features import FEATURE_NAMES, rim_features
from bids_rim.training.toy import make_toy_patches

TINY = {
    "asym": {"width": 4},
    "rimnet": {"width": 4},
    "qsmrimnet": {"width": 4},
    "qsm_only": {"width": 4},
    "early_fusion": {"widen_factor": 0.125},
}


@pytest.fixture(scope="module")
def toy():
    return make_toy_patches(6, 6, patch_size=16, seed=3)


@pytest.mark.parametrize("name", [n for n in available_models() if is_neural(n)])
def test_every_network_runs_forward_and_backward(name, toy):
    torch.manual_seed(0)
    model = get_model(name, **TINY[name])
    batch = torch.from_numpy(toy[0][:4])
    out = model(batch)
    assert out["logit"].shape == (4,)
    assert out["embedding"].ndim == 2 and out["embedding"].shape[0] == 4
    out["logit"].sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("conditioning", ["film_spatial", "film_channel", "gated_xattn", "none"])
def test_asym_conditionings_start_as_identity(conditioning, toy):
    torch.manual_seed(0)
    model = get_model("asym", width=4, conditioning=conditioning, film_stages=(0, 1)).eval()
    batch = torch.from_numpy(toy[0][:3])
    conditioned = model.features(batch)["embedding"]
    unconditioned = model.encode_qsm(batch)
    torch.testing.assert_close(conditioned, unconditioned)
    assert model.encode_flair(batch).shape == unconditioned.shape


def test_asym_flair_matters_once_film_is_not_zero(toy):
    torch.manual_seed(0)
    model = get_model("asym", width=4).eval()
    torch.nn.init.normal_(model.conditioners["0"].to_scale_shift.weight, std=0.1)
    batch = torch.from_numpy(toy[0][:3])
    changed_flair = batch.clone()
    changed_flair[:, 1] *= 2
    assert not torch.allclose(model(batch)["logit"], model(changed_flair)["logit"])


def test_qsm_only_ignores_flair(toy):
    model = get_model("qsm_only", width=4).eval()
    batch = torch.from_numpy(toy[0][:3])
    changed_flair = batch.clone()
    changed_flair[:, 1] = 5.0
    torch.testing.assert_close(model(batch)["logit"], model(changed_flair)["logit"])


def test_default_asym_is_small():
    n_parameters = sum(p.numel() for p in get_model("asym").parameters())
    assert 50_000 < n_parameters < 1_000_000


def test_unknown_model_and_bad_config_fail_clearly():
    with pytest.raises(ValueError, match="unknown model 'nope'; available: asym"):
        get_model("nope")
    with pytest.raises(ValueError, match="model 'asym': bad configuration"):
        get_model("asym", colour="red")
    with pytest.raises(ValueError, match="unknown conditioning"):
        get_model("asym", conditioning="concat")


def test_rim_features_separate_rims_from_mimics(toy):
    patches, meta = toy
    features = rim_features(torch.from_numpy(patches)).numpy()
    assert features.shape == (len(patches), len(FEATURE_NAMES))
    coverage = features[:, FEATURE_NAMES.index("shell_octant_coverage")]
    rim = meta["label"].to_numpy() == 1
    assert rim.any() and (~rim).any()
    assert coverage[rim].mean() > coverage[~rim].mean() + 0.3


def test_radiomics_classifier_fits_and_ranks(toy):
    patches, meta = toy
    test_patches, test_meta = make_toy_patches(4, 6, patch_size=16, seed=4)
    model = get_model("radiomics", n_estimators=50, seed=0).fit(patches, meta["label"].to_numpy())
    probabilities = model.predict_proba(test_patches)
    assert probabilities.shape == (len(test_patches),)
    rim = test_meta["label"].to_numpy() == 1
    assert probabilities[rim].mean() > probabilities[~rim].mean()
    with pytest.raises(ValueError, match="both rim"):
        get_model("radiomics").fit(patches, np.zeros(len(patches)))


def test_edge_band_and_core_are_distinct_only_where_asym_region_pools():
    # A lesion of 4 mm radius in a 32³ patch at 1 mm. On the P/8 grid (8 mm cells) the edge band
    # and the core fall into the same central cells, so pooling them there compares nearly the
    # same average (the former layout, which did not learn the rim): cosine 1.00. The default
    # layout pools at P/2, where they are disjoint (0.00), and at P/4 (0.67).
    from bids_rim.models.blocks import LesionRegionPool

    axis = torch.arange(32) - 15.5
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"))
    mask = ((grid**2).sum(0) <= 16).float()[None, None]
    regions = LesionRegionPool().regions(mask)

    def overlap(size: int) -> float:
        edge, core = torch.nn.functional.adaptive_avg_pool3d(regions, size)[0].flatten(1)
        return float(torch.nn.functional.cosine_similarity(edge, core, dim=0))

    assert overlap(4) > 0.99
    assert overlap(16) < 0.01 and overlap(8) < 0.8
    assert get_model("asym").region_pool_stages == (0, 1)
