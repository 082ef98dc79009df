"""Early stopping of fine-tuning: which epoch to keep and when to stop (a pure rule, no tensors).

The kept epoch is the one with the best inner-validation score among the epochs from
``first_eligible`` on; warm-up epochs are neither kept nor counted towards the patience, and
training stops after ``patience`` eligible epochs in a row that do not beat the best. With
``TrainConfig.readout_fallback`` the starting point enters as epoch 0 with its own score, so an
epoch replaces it only by beating it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass
class EarlyStopping:
    """The running state of the rule; epochs are 1-based, 0 is the starting point."""

    first_eligible: int
    patience: int
    best_score: float = -math.inf
    best_epoch: int = 0
    stale: int = 0

    def record(self, epoch: int, score: float) -> bool:
        """Take ``epoch``'s validation score; True when it becomes the kept epoch."""
        if epoch < self.first_eligible:
            return False
        if score > self.best_score:
            self.best_score, self.best_epoch, self.stale = score, epoch, 0
            return True
        self.stale += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.stale >= self.patience


def replay(scores: Iterable[float], first_eligible: int, patience: int, start_score: float = -math.inf) -> int:
    """The epoch the rule keeps for validation ``scores`` of epochs 1, 2, …, and the start's score.

    Used to ask what another setting of the rule would have kept from one recorded run.
    """
    rule = EarlyStopping(first_eligible, patience, best_score=start_score)
    for epoch, score in enumerate(scores, start=1):
        rule.record(epoch, score)
        if rule.should_stop:
            break
    return rule.best_epoch
