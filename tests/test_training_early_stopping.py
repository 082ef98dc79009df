"""The early-stopping rule of fine-tuning, alone and replayed on recorded scores."""

from __future__ import annotations

import pytest

from bids_rim.training.early_stopping import EarlyStopping, replay


def test_warm_up_epochs_are_never_kept_even_when_best():
    assert replay([0.9, 0.5, 0.6, 0.55], first_eligible=2, patience=5) == 3


def test_training_stops_after_patience_epochs_without_a_better_one():
    rule = EarlyStopping(first_eligible=1, patience=2)
    kept = [rule.record(epoch, score) for epoch, score in enumerate([0.5, 0.7, 0.6, 0.65], start=1)]
    assert kept == [True, True, False, False] and rule.should_stop and rule.best_epoch == 2
    # The later best (0.8) is never reached: the rule stopped at epoch 4.
    assert replay([0.5, 0.7, 0.6, 0.65, 0.8], first_eligible=1, patience=2) == 2


@pytest.mark.parametrize(("start_score", "kept"), [(0.6, 3), (0.7, 0), (0.65, 0)])
def test_a_start_score_is_replaced_only_by_an_epoch_that_beats_it(start_score, kept):
    assert replay([0.9, 0.5, 0.65, 0.6, 0.6], first_eligible=2, patience=3, start_score=start_score) == kept


def test_a_tie_keeps_the_earlier_epoch():
    assert replay([0.6, 0.6, 0.6], first_eligible=1, patience=5) == 1
