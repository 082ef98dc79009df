"""Every registry model: forward and backward on a batch; conditioning starts as the identity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from bids_rim.models import available_models, get_model, is_neural
from bids_rim.models.rim_features import FEATURE_NAMES, rim_features
from bids_rim.training.config import TrainConfig
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
    torch.nn.init.normal_(model.head[-1].weight, std=0.5)  # a fresh head's last layer is zero
    batch = torch.from_numpy(toy[0][:3])
    changed_flair = batch.clone()
    changed_flair[:, 1] *= 2
    assert not torch.allclose(model(batch)["logit"], model(changed_flair)["logit"])


@pytest.mark.parametrize("film_stages", [(0,), (0, 1), (1,)])
def test_asym_mid_features_are_those_of_the_full_pass(film_stages, toy):
    """Pretraining's masked reconstruction stops at P/2: the features must be the full pass's."""
    torch.manual_seed(0)
    model = get_model("asym", width=4, film_stages=film_stages).eval()
    for conditioner in model.conditioners.values():  # a fresh FiLM is the identity
        torch.nn.init.normal_(conditioner.to_scale_shift.weight, std=0.1)
    batch = torch.from_numpy(toy[0][:3])
    changed_flair = batch.clone()
    changed_flair[:, 1] *= 2
    for patches in (batch, changed_flair):
        torch.testing.assert_close(model.mid_features(patches), model.features(patches)["mid"])
    conditioned_at_mid = 0 in film_stages
    assert conditioned_at_mid != torch.allclose(model.mid_features(batch), model.mid_features(changed_flair))


def test_asym_input_stack_is_early_fusion_in_the_same_trunk(toy):
    """The symmetric early-fusion ablation: FLAIR enters the QSM stem as a channel, nothing is
    conditioned, and everything after the stem is asym's; encode_qsm sees FLAIR as normal white
    matter (0 in network units), so cross-modal pretraining still predicts a FLAIR-free target."""
    torch.manual_seed(0)
    stacked = get_model("asym", width=4, conditioning="input_stack", film_stages=(0, 1)).eval()
    default = get_model("asym", width=4)
    assert stacked.qsm_stem[0].in_channels == 3 and default.qsm_stem[0].in_channels == 2
    assert len(stacked.conditioners) == 0 and stacked.film_stages == ()
    assert stacked.embedding_dim == default.embedding_dim
    stacked_shapes = {n: p.shape for n, p in stacked.named_parameters()
                      if not n.startswith(("qsm_stem.0", "conditioners"))}
    default_shapes = {n: p.shape for n, p in default.named_parameters()
                      if not n.startswith(("qsm_stem.0", "conditioners"))}
    assert stacked_shapes == default_shapes
    batch = torch.from_numpy(toy[0][:3])
    changed_flair = batch.clone()
    changed_flair[:, 1] *= 2
    assert not torch.allclose(stacked.features(batch)["embedding"], stacked.features(changed_flair)["embedding"])
    torch.testing.assert_close(stacked.encode_qsm(batch), stacked.encode_qsm(changed_flair))
    normal_white_matter = batch.clone()
    normal_white_matter[:, 1] = 1.0  # FLAIR in NAWM units
    torch.testing.assert_close(stacked.encode_qsm(batch), stacked.features(normal_white_matter)["embedding"])
    torch.testing.assert_close(stacked.mid_features(changed_flair), stacked.features(changed_flair)["mid"])


def test_qsm_only_ignores_flair(toy):
    model = get_model("qsm_only", width=4).eval()
    torch.nn.init.normal_(model.head[-1].weight, std=0.5)  # a fresh head's last layer is zero
    batch = torch.from_numpy(toy[0][:3])
    changed_flair = batch.clone()
    changed_flair[:, 1] = 5.0
    assert model(batch)["logit"].abs().min() > 1e-4
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


def test_qsmrimnet_standardises_each_rim_feature_across_lesions(toy):
    # The volume (hundreds of voxels) and the QSM means (hundredths of a ppm) must reach the head
    # on one scale, feature by feature. A norm across one lesion's features (the former
    # LayerNorm) left every ppm feature varying by ~0.02 around a value set by the volume.
    model = get_model("qsmrimnet", width=4).train()
    features = rim_features(torch.from_numpy(toy[0]))
    normalised = model.radiomics_norm(features).detach()
    varying = features.std(0) > 0
    assert varying[FEATURE_NAMES.index("qsm_shell_minus_core_ppm")]
    torch.testing.assert_close(normalised[:, varying].std(0, unbiased=False),
                               torch.ones(int(varying.sum())), atol=1e-2, rtol=0)
    shell_contrast = FEATURE_NAMES.index("qsm_shell_minus_core_ppm")
    assert torch.equal(normalised[:, shell_contrast].argsort(), features[:, shell_contrast].argsort())


def test_radiomics_classifier_fits_and_ranks(toy):
    patches, meta = toy
    test_patches, test_meta = make_toy_patches(4, 6, patch_size=16, seed=4)
    model = get_model("radiomics", n_estimators=50, seed=0).fit(patches, meta["label"].to_numpy())
    probabilities = model.predict_proba(test_patches)
    assert probabilities.shape == (len(test_patches),)
    rim = test_meta["label"].to_numpy() == 1
    assert probabilities[rim].mean() > probabilities[~rim].mean()
    assert roc_auc_score(rim, probabilities) > 0.8  # it ranks held-out toy lesions, not just their means
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


def test_rim_readout_reads_a_one_voxel_rim_and_ignores_a_crossing_vein():
    # A lesion of 4 mm radius whose one-voxel edge layer is +30 ppb, core +5 ppb, NAWM around 0,
    # and a vein (+300 ppb) crossing the lesion: the read-out's medians see the rim, not the vein.
    from bids_rim.models.blocks import RimReadout, scale_inputs

    axis = torch.arange(32) - 15.5
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"))
    mask = ((grid**2).sum(0) <= 16).float()
    edge = (mask - _cross_core(mask)).clamp(0, 1)
    vein = ((grid[0].abs() < 1) & (grid[1].abs() < 1)).float()

    def readout(rim_ppm: float, with_vein: bool = True) -> list[float]:
        qsm = 0.005 * mask + (rim_ppm - 0.005) * edge + (0.3 * vein if with_vein else 0)
        patch = torch.stack([qsm, torch.ones_like(qsm), mask])[None]
        return RimReadout()(scale_inputs(patch)[:, :1], mask[None, None])[0].tolist()

    difference, edge_median, core_median, ring_difference, fraction = readout(0.03)[:5]
    assert readout(0.03) == pytest.approx(readout(0.03, with_vein=False), abs=1e-6)
    def units(ppb: float) -> float:  # network units: 20 ppb, softly limited at ±100 ppb
        return 5.0 * np.tanh(ppb / 20.0 / 5.0)

    assert edge_median == pytest.approx(units(30), abs=1e-4) and core_median == pytest.approx(units(5), abs=1e-4)
    assert difference == pytest.approx(units(30) - units(5), abs=1e-4)
    assert ring_difference == pytest.approx(-units(5), abs=1e-4)
    # A 10 ppb rim is 5 ppb above the core: only the vein's few edge voxels count as above.
    assert fraction > 0.95 and 0 < readout(0.01)[4] < 0.1 and readout(0.01, with_vein=False)[4] == 0
    assert readout(0.02)[0] < difference < readout(0.04)[0]


def _cross_core(mask: torch.Tensor) -> torch.Tensor:
    from scipy import ndimage

    return torch.from_numpy(ndimage.binary_erosion(mask.numpy().astype(bool)).astype(np.float32))


def test_rim_readout_of_a_lesion_does_not_depend_on_its_batch():
    # The read-out crops to the batch's lesions: a small lesion must read the same next to one
    # that touches the patch border as alone.
    from bids_rim.models.blocks import RimReadout

    generator = torch.Generator().manual_seed(0)
    qsm = torch.randn(2, 1, 24, 24, 24, generator=generator)
    axis = torch.arange(24) - 11.5
    radius = (torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij")) ** 2).sum(0).sqrt()
    masks = torch.stack([(radius <= 3).float(), (radius <= 14).float()])[:, None]
    together = RimReadout()(qsm, masks)
    alone = torch.cat([RimReadout()(qsm[i : i + 1], masks[i : i + 1]) for i in range(2)])
    assert torch.allclose(together, alone)
    model = get_model("asym", width=4, rim_readout=True)
    assert model(torch.cat([qsm, torch.ones_like(qsm), masks], 1)[:, :, :16, :16, :16])["embedding"].shape[1] == \
        model.embedding_dim == get_model("asym", width=4, rim_readout=False).embedding_dim + 7 == \
        get_model("asym", width=4, readout_cnr=False).embedding_dim + 2


def test_rim_readout_of_three_outlines_finds_a_rim_just_outside_an_undersegmented_mask():
    # A 1-voxel +30 ppb rim around a +5 ppb lesion of 4 mm radius, segmented one voxel too small:
    # on the mask as given the rim falls in the outer ring, on the dilated mask in the edge layer.
    from scipy import ndimage

    from bids_rim.models.blocks import RimReadout, scale_inputs

    axis = torch.arange(24) - 11.5
    radius = (torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij")) ** 2).sum(0).sqrt()
    lesion = (radius <= 4).float()
    rim = lesion - _cross_core(lesion)
    qsm_ppm = 0.005 * (lesion - rim) + 0.030 * rim
    undersegmented = _cross_core(lesion)
    dot = torch.zeros_like(lesion)
    dot[12, 12, 12] = 1  # a one-voxel lesion: its erosion would leave nothing, so it keeps the mask
    masks = torch.stack([undersegmented, dot])[:, None]
    qsm = scale_inputs(torch.stack([qsm_ppm, torch.ones_like(qsm_ppm), lesion])[None])[:, :1].expand(2, -1, -1, -1, -1)

    three = RimReadout(outlines=3)(qsm, masks)
    assert three.shape == (2, 21) and RimReadout(outlines=3).n_features == 21
    torch.testing.assert_close(three[:, :7], RimReadout()(qsm, masks))
    cross = ndimage.generate_binary_structure(3, 1)
    for block, operation in ((1, ndimage.binary_erosion), (2, ndimage.binary_dilation)):
        shifted = torch.from_numpy(operation(undersegmented.numpy() > 0, cross).astype(np.float32))
        alone = RimReadout(noise_normalised=False)(qsm[:1], shifted[None, None])[0]
        torch.testing.assert_close(three[0, 7 * block : 7 * block + 5], alone)
    torch.testing.assert_close(three[1, 7:14], three[1, :7])
    as_given_edge_minus_core, dilated_edge_minus_core = three[0, 0].item(), three[0, 14].item()
    assert abs(as_given_edge_minus_core) < 0.01 and three[0, 3].item() > 1.0  # the rim sits in the ring
    # 30 − 5 ppb in network units (20 ppb, softly limited at ±100 ppb)
    assert dilated_edge_minus_core == pytest.approx(5 * np.tanh(0.3) - 5 * np.tanh(0.05), abs=1e-4)
    with pytest.raises(ValueError, match="outlines"):
        RimReadout(outlines=2)
    assert get_model("asym", width=4, readout_outlines=3).embedding_dim == get_model("asym", width=4).embedding_dim + 14
    # Model files written before readout_outlines existed (the bundled one) read one outline.
    assert "readout_outlines" not in TrainConfig().model_kwargs()
    assert TrainConfig(readout_outlines=3).model_kwargs()["readout_outlines"] == 3


def test_rim_readout_contrast_to_noise_ratios_follow_the_noise():
    # White noise of 10 ppb around lesions of 4 mm radius. Without a rim, the edge−core and
    # ring−core ratios must spread like a standard normal (they are differences over their own
    # noise); with a +30 ppb edge over a +5 ppb core, the ratio is the contrast over that noise.
    from bids_rim.models.blocks import RimReadout, scale_inputs

    size, sigma_ppm, realisations = 24, 0.010, 256
    axis = torch.arange(size) - (size - 1) / 2
    mask = ((torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij")) ** 2).sum(0) <= 16).float()
    edge = (mask - _cross_core(mask)).clamp(0, 1)
    generator = torch.Generator().manual_seed(3)
    noise = sigma_ppm * torch.randn(realisations, size, size, size, generator=generator)
    masks = mask.expand(realisations, 1, size, size, size)

    def network_qsm(qsm_ppm: torch.Tensor) -> torch.Tensor:
        return scale_inputs(torch.cat([qsm_ppm[:, None], torch.ones_like(masks), masks], dim=1))[:, :1]

    def read(qsm_ppm: torch.Tensor, lesions: torch.Tensor = masks) -> torch.Tensor:
        return RimReadout()(network_qsm(qsm_ppm), lesions)

    without_rim = read(noise)
    sigma_units = RimReadout.noise_sd(network_qsm(noise), masks)
    assert sigma_units.median().item() == pytest.approx(sigma_ppm * 50, rel=0.05)
    for column in (5, 6):
        assert without_rim[:, column].std().item() == pytest.approx(1.0, abs=0.2)
        assert abs(without_rim[:, column].mean().item()) < 0.25
    with_rim = read(noise + 0.005 * mask + 0.025 * edge)
    edge_count, core_count = edge.sum().item(), (mask - edge).sum().item()
    expected = (0.025 * 50) / (1.2533 * sigma_ppm * 50 * np.sqrt(1 / edge_count + 1 / core_count))
    assert with_rim[:, 5].median().item() == pytest.approx(expected, rel=0.15)
    # Twice the noise, half the ratio; a lesion with no core is compared with one voxel's worth.
    assert read(2 * noise + 0.005 * mask + 0.025 * edge)[:, 5].median().item() == pytest.approx(expected / 2, rel=0.15)
    dot = torch.zeros_like(mask)
    dot[11:13, 11:13, 11:13] = 1  # eight voxels, all edge
    coreless = read(noise + 0.025 * dot, dot.expand(realisations, 1, size, size, size))[:, 5]
    expected_dot = (0.025 * 50) / (1.2533 * sigma_ppm * 50 * np.sqrt(1 / 8 + 1))
    assert coreless.median().item() == pytest.approx(expected_dot, rel=0.2)


def test_fresh_asym_is_a_logistic_regression_on_its_read_out(toy):
    """The MLP head's last layer starts at zero, so the first logits come from the read-out path alone."""
    from bids_rim.models.blocks import RimReadout, scale_inputs

    torch.manual_seed(0)
    model = get_model("asym", width=4).eval()
    batch = torch.from_numpy(toy[0][:4])
    assert torch.count_nonzero(model(batch)["logit"]) == 0
    torch.nn.init.normal_(model.readout_logit.weight)
    readout = RimReadout()(scale_inputs(batch)[:, :1], batch[:, 2:3])
    torch.testing.assert_close(model(batch)["logit"],
                               readout @ model.readout_logit.weight[0] + model.readout_logit.bias)
    assert get_model("asym", width=4, readout_logit=False).readout_logit is None


def test_asym_head_width_sets_the_hidden_units_and_is_recorded_only_when_set():
    assert get_model("asym", width=4, head_width=3).head[0].out_features == 3
    assert get_model("asym", width=4).head[0].out_features == 16
    # Model files written before head_width existed (the bundled one) must still match the default.
    assert "head_width" not in TrainConfig().model_kwargs()
    assert TrainConfig(head_width=8).model_kwargs()["head_width"] == 8
    assert TrainConfig(arch="qsm_only", head_width=8).model_kwargs()["head_width"] == 8
