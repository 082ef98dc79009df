"""Cross-validation: patients never cross folds, pretraining never sees the test fold, seeds repeat."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score

import bids_rim.training.crossval as crossval
from bids_rim.models import get_model
from bids_rim.models.asym import rim_readout_of_patches
from bids_rim.training.config import TrainConfig
from bids_rim.training.early_stopping import replay
from bids_rim.training.finetune import finetune, start_readout_path_from_logistic_regression, training_prior_bias
from bids_rim.training.metrics import expected_calibration_error
from bids_rim.training.prediction import predict_logits
from bids_rim.training.toy import make_toy_patches

CPU = torch.device("cpu")
TINY = TrainConfig(width=4, batch_size=16, pretrain_epochs=1, finetune_epochs=2, patience=2, folds=3, patch_size=16,
                   bootstrap_resamples=20)


@pytest.fixture(scope="module")
def toy():
    patches, meta = make_toy_patches(12, 6, patch_size=16, seed=5)
    # Two patients without any labels: they may pretrain in every fold but are never tested.
    meta.loc[meta["participant_id"].isin(["sub-011", "sub-012"]), "label"] = np.nan
    return patches, meta


def test_no_patient_in_two_folds_and_every_labelled_patient_tested(toy):
    _, meta = toy
    folds = crossval.patient_folds(meta, 3, seed=0)
    tested = [p for fold in folds for p in fold]
    assert len(tested) == len(set(tested))
    assert set(tested) == set(meta.loc[meta["label"].notna(), "participant_id"])
    assert "sub-011" not in tested
    assert crossval.patient_folds(meta, 3, seed=0) == folds


def _skewed_cohort(seed: int) -> pd.DataFrame:
    """Lesion table of 36 patients at 3 sites whose rim+ counts are skewed as in MS (most 0–2, a few many)."""
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(36):
        n_rim = int(rng.choice([0, 0, 0, 1, 1, 2, 3, 5, 9]))
        n_other = int(rng.integers(8, 30))
        for lesion, label in enumerate([1.0] * n_rim + [0.0] * n_other, start=1):
            rows.append({"participant_id": f"sub-{index:03d}", "site": f"site{index % 3 + 1}", "lesion_id": lesion,
                         "label": label})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_folds_share_rim_lesions_and_sites_evenly(seed):
    """Each fold's test set holds about a third of the rim+ lesions and of each site's patients."""
    meta = _skewed_cohort(seed)
    folds = crossval.patient_folds(meta, 3, seed=seed)
    rim = meta[meta["label"] == 1].groupby("participant_id").size()
    rim_share = np.array([rim.reindex(fold, fill_value=0).sum() for fold in folds]) / rim.sum()
    assert np.all(np.abs(rim_share - 1 / 3) < 0.05), rim_share
    prevalence = [meta.loc[meta["participant_id"].isin(fold), "label"].mean() for fold in folds]
    assert max(prevalence) - min(prevalence) < 0.03, prevalence
    site_of = meta.groupby("participant_id")["site"].first()
    for site in site_of.unique():
        per_fold = [int((site_of[fold] == site).sum()) for fold in folds]
        assert max(per_fold) - min(per_fold) <= 1, (site, per_fold)
    assert crossval.patient_folds(meta, 3, seed=seed + 10) != folds  # the seed decides among equal choices
    few = meta[meta["participant_id"].isin(["sub-000", "sub-001", "sub-002"])]
    assert sorted(len(fold) for fold in crossval.patient_folds(few, 3, seed=seed)) == [1, 1, 1]


def test_inner_split_is_by_patient(toy):
    _, meta = toy
    labelled = meta[meta["label"].notna()]
    fit, val = crossval.inner_split(labelled, 0.25, seed=1)
    assert fit and val and not set(fit) & set(val)
    assert set(fit) | set(val) == set(labelled["participant_id"])  # no labelled patient dropped
    n_patients = labelled["participant_id"].nunique()
    assert abs(len(val) - n_patients / 4) <= 1  # one of four balanced groups
    has_rim = labelled.groupby("participant_id")["label"].max() == 1
    assert has_rim[fit].any() and has_rim[val].any()


def test_pretraining_and_finetuning_never_see_the_test_fold(toy, monkeypatch):
    patches, meta = toy
    seen: list[dict] = []
    real_pretrain, real_finetune = crossval.pretrain, crossval.finetune

    def spy_pretrain(model, given, *args, **kwargs):
        seen.append({"stage": "pretrain", "patches": given.copy()})
        return real_pretrain(model, given, *args, **kwargs)

    def spy_finetune(model, train_patches, train_labels, val_patches, val_labels, *args, **kwargs):
        seen.append({"stage": "finetune", "patches": np.concatenate([train_patches, val_patches])})
        return real_finetune(model, train_patches, train_labels, val_patches, val_labels, *args, **kwargs)

    monkeypatch.setattr(crossval, "pretrain", spy_pretrain)
    monkeypatch.setattr(crossval, "finetune", spy_finetune)
    result = crossval.cross_validate(patches, meta, TINY, CPU)
    assert len(seen) == 2 * TINY.folds
    fingerprints = [patch.tobytes() for patch in patches]
    for fold, test_patients in enumerate(result.test_participants):
        test_prints = {fingerprints[i] for i in np.flatnonzero(meta["participant_id"].isin(test_patients))}
        for record in seen[2 * fold : 2 * fold + 2]:
            used = {patch.tobytes() for patch in record["patches"]}
            assert not used & test_prints, f"{record['stage']} of fold {fold + 1} saw a test patient's patch"
        member = result.folds[fold]
        assert not set(member.pretrain_participants) & set(test_patients)
        assert {"sub-011", "sub-012"} <= set(member.pretrain_participants)
    assert set(result.predictions["participant_id"]) == {p for fold in result.test_participants for p in fold}


def test_same_seed_same_numbers_other_seed_other_numbers(toy):
    patches, meta = toy
    patients = sorted(meta["participant_id"].unique())[:8]

    def run(seed):
        member = crossval.train_member(patches, meta, patients, TINY, CPU, seed=seed)
        return member, crossval.member_probabilities(member, TINY, patches[:10], CPU)

    first, p1 = run(7)
    second, p2 = run(7)
    for key, value in first.state_dict.items():
        torch.testing.assert_close(value, second.state_dict[key], rtol=0, atol=0)
    np.testing.assert_array_equal(p1, p2)
    assert first.pretrain_history == second.pretrain_history
    _, p3 = run(8)
    assert not np.array_equal(p1, p3)


def _rare_rims(patches, meta):
    """Keep every rim- lesion and one rim+ in three: about 8 % prevalence, as in MS cohorts."""
    keep = np.flatnonzero((meta["label"] == 0).to_numpy() | (np.arange(len(meta)) % 3 == 0))
    return patches[keep], meta.iloc[keep].reset_index(drop=True)


def test_tiny_asym_beats_chance_and_is_calibrated_on_unseen_patients():
    patches, meta = _rare_rims(*make_toy_patches(24, 8, patch_size=16, seed=0))
    test_patches, test_meta = _rare_rims(*make_toy_patches(10, 8, patch_size=16, seed=1))
    config = TrainConfig(width=6, batch_size=16, pretrain_epochs=2, finetune_epochs=6, patience=3, patch_size=16)
    member = crossval.train_member(patches, meta, sorted(meta["participant_id"].unique()), config, CPU, seed=0)
    probabilities = crossval.member_probabilities(member, config, test_patches, CPU)
    labels = test_meta["label"].to_numpy()
    prevalence = labels.mean()
    assert 0.05 < prevalence < 0.12
    pr_auc = average_precision_score(labels, probabilities)
    assert pr_auc > prevalence + 0.5, f"PR AUC {pr_auc:.3f} vs prevalence {prevalence:.3f}"
    # Probabilities mean what they say: balanced batches taught the network a 0.5 prior, and the
    # Platt bias fitted on validation patients moves it back (temperature-only scaling left the
    # mean probability at 0.42 and the ECE at 0.34 on this set).
    assert member.bias < -1.0
    assert abs(probabilities.mean() - prevalence) < 0.04, f"mean probability {probabilities.mean():.3f}"
    assert expected_calibration_error(labels.astype(int), probabilities) < 0.08
    assert 0.0 < member.threshold < 1.0 and member.temperature > 0
    assert member.pretrain_history[-1]["qsm_embedding_std"] > 0


def test_radiomics_baseline_runs_in_the_same_harness(toy):
    patches, meta = toy
    config = TrainConfig(arch="radiomics", folds=3, patch_size=16)
    result = crossval.cross_validate(patches, meta, config, CPU)
    assert len(result.fold_metrics) == 3 and result.fold_metrics["pr_auc"].notna().all()
    labels, probabilities = result.predictions["label"].to_numpy(), result.predictions["rim_probability"].to_numpy()
    assert average_precision_score(labels, probabilities) > labels.mean() + 0.3  # it learned the toy's rims


def test_read_out_path_starts_from_a_logistic_regression_on_the_training_lesions():
    patches, meta = make_toy_patches(8, 8, patch_size=16, seed=2)
    labels = meta["label"].to_numpy().astype(int)
    regression = LogisticRegression(max_iter=1000).fit(rim_readout_of_patches(patches), labels)
    for shift in (0.0, 1.5):
        torch.manual_seed(0)
        model = get_model("asym", width=4)
        start_readout_path_from_logistic_regression(model, patches, labels, CPU, taught_prior_shift=shift)
        logits = predict_logits(model, patches, CPU)[0]  # a fresh MLP head adds zero: the logits are the regression's
        # the plain (unweighted) regression, its intercept moved into the prior the batches present
        np.testing.assert_allclose(logits, regression.decision_function(rim_readout_of_patches(patches)) - shift,
                                   atol=1e-3)
    assert average_precision_score(labels, logits) > labels.mean() + 0.3


def _labelled_fit_and_validation(toy):
    """The toy's labelled lesions, three in four to fine-tune on and one in four to validate on."""
    patches, meta = toy
    labelled = meta["label"].notna().to_numpy()
    patches, labels = patches[labelled], meta["label"].to_numpy()[labelled].astype(int)
    val = np.arange(len(labels)) % 4 == 0
    return (patches[~val], labels[~val]), (patches[val], labels[val])


@pytest.mark.parametrize("train_readout_logit", [False, True])
def test_fixed_read_out_path_stays_the_logistic_regression(toy, train_readout_logit):
    (fit_patches, fit_labels), (val_patches, val_labels) = _labelled_fit_and_validation(toy)
    config = TrainConfig(width=4, batch_size=16, finetune_epochs=2, patch_size=16,
                         train_readout_logit=train_readout_logit)
    torch.manual_seed(0)
    model = get_model("asym", **config.model_kwargs())
    regression = get_model("asym", **config.model_kwargs())
    start_readout_path_from_logistic_regression(regression, fit_patches, fit_labels, CPU,
                                                training_prior_bias(config, float(fit_labels.mean())))
    head_before = model.head[0].weight.detach().clone()
    result = finetune(model, fit_patches, fit_labels, val_patches, val_labels, config, CPU, seed=0)
    same_path = all(torch.equal(result.state_dict[f"readout_logit.{name}"], getattr(regression.readout_logit, name))
                    for name in ("weight", "bias"))
    assert same_path is not train_readout_logit
    assert not torch.equal(result.state_dict["head.0.weight"], head_before)  # the network itself trained


@pytest.mark.parametrize("readout_fallback", [False, True])
def test_readout_fallback_keeps_the_regression_unless_an_epoch_beats_it(toy, readout_fallback):
    (fit_patches, fit_labels), (val_patches, val_labels) = _labelled_fit_and_validation(toy)
    # lr 0: every epoch scores exactly what the starting regression scores, so none beats it
    config = TrainConfig(width=4, batch_size=16, finetune_epochs=2, patch_size=16, lr=0.0, supcon_weight=0.0,
                         readout_fallback=readout_fallback)
    torch.manual_seed(0)
    model = get_model("asym", **config.model_kwargs())
    result = finetune(model, fit_patches, fit_labels, val_patches, val_labels, config, CPU, seed=0)
    assert result.best_epoch == (0 if readout_fallback else 2)
    assert np.isfinite(result.best_val_pr_auc)


def test_after_epoch_looks_at_the_start_and_every_epoch_and_changes_nothing(toy):
    (fit_patches, fit_labels), (val_patches, val_labels) = _labelled_fit_and_validation(toy)
    config = TrainConfig(width=4, batch_size=16, finetune_epochs=3, min_finetune_epochs=1, patch_size=16)
    states, seen = [], []

    def look(epoch: int, model: torch.nn.Module) -> None:
        seen.append((epoch, predict_logits(model, val_patches, CPU)[0]))

    for after_epoch in (None, look):
        torch.manual_seed(0)
        model = get_model("asym", **config.model_kwargs())
        states.append(finetune(model, fit_patches, fit_labels, val_patches, val_labels, config, CPU, seed=0,
                               after_epoch=after_epoch).state_dict)
    assert [epoch for epoch, _ in seen] == [0, 1, 2, 3]
    assert all(torch.equal(states[0][name], states[1][name]) for name in states[0])  # looking changed nothing
    # Epoch 0 is the starting point: the logistic regression on the read-out, the head adding nothing.
    regression = get_model("asym", **config.model_kwargs())
    start_readout_path_from_logistic_regression(regression, fit_patches, fit_labels, CPU,
                                                training_prior_bias(config, float(fit_labels.mean())))
    np.testing.assert_allclose(seen[0][1], predict_logits(regression, val_patches, CPU)[0], atol=1e-5)
    assert not np.allclose(seen[1][1], seen[0][1])


@pytest.mark.parametrize("lr", [0.0, 1e-3])
def test_replayed_early_stopping_keeps_what_the_readout_fallback_keeps(toy, lr):
    """What ``readout_fallback`` would keep can be told from a run without it (benchmarks/finetune_trace.py)."""
    (fit_patches, fit_labels), (val_patches, val_labels) = _labelled_fit_and_validation(toy)
    scores = []

    def look(epoch: int, model: torch.nn.Module) -> None:
        scores.append(average_precision_score(val_labels, predict_logits(model, val_patches, CPU)[0]))

    kept = {}
    for fallback in (False, True):
        config = TrainConfig(width=4, batch_size=16, finetune_epochs=5, min_finetune_epochs=2, patience=2,
                             patch_size=16, lr=lr, readout_fallback=fallback)
        torch.manual_seed(0)
        model = get_model("asym", **config.model_kwargs())
        kept[fallback] = finetune(model, fit_patches, fit_labels, val_patches, val_labels, config, CPU, seed=0,
                                  after_epoch=None if fallback else look).best_epoch
    assert replay(scores[1:], first_eligible=2, patience=2) == kept[False]
    assert replay(scores[1:], first_eligible=2, patience=2, start_score=scores[0]) == kept[True]
    if lr == 0.0:
        assert kept[True] == 0  # no epoch beats the start it equals


def _head_logit_rms(model: torch.nn.Module, patches: np.ndarray) -> float:
    model.eval()
    with torch.no_grad():
        return float(model(torch.from_numpy(patches))["head_logit"].square().mean().sqrt())


def test_head_logit_penalty_keeps_the_network_near_the_regression_it_starts_as(toy):
    (fit_patches, fit_labels), (val_patches, val_labels) = _labelled_fit_and_validation(toy)
    rms = {}
    for penalty in (0.0, 0.1):
        config = TrainConfig(width=4, batch_size=16, finetune_epochs=4, min_finetune_epochs=4, patch_size=16,
                             head_logit_penalty=penalty)
        torch.manual_seed(0)
        model = get_model("asym", **config.model_kwargs())
        result = finetune(model, fit_patches, fit_labels, val_patches, val_labels, config, CPU, seed=0)
        assert result.best_epoch == 4
        assert ("head_logit_sq" in result.history[-1]) is (penalty > 0)
        rms[penalty] = _head_logit_rms(model, fit_patches)
    assert rms[0.0] > 0.01  # unpenalised, the head moves the logit (0.03 in 4 toy epochs)
    assert rms[0.1] < 0.25 * rms[0.0]  # penalised, it moves it 8 times less


def test_head_logit_penalty_is_refused_for_networks_without_a_read_out_path(toy):
    (fit_patches, fit_labels), (val_patches, val_labels) = _labelled_fit_and_validation(toy)
    config = TrainConfig(arch="rimnet", width=4, batch_size=16, finetune_epochs=1, patch_size=16,
                         head_logit_penalty=0.1)
    with pytest.raises(ValueError, match="head_logit_penalty"):
        finetune(get_model("rimnet", **config.model_kwargs()), fit_patches, fit_labels, val_patches, val_labels,
                 config, CPU, seed=0)
    with pytest.raises(ValueError, match="at least 0"):
        TrainConfig(head_logit_penalty=-1.0)
