"""Synthetic MS cohort (QSM + FLAIR, BIDS) with ground truth: see docs/synth.md."""
from .cohort import CohortSummary, generate_cohort
from .params import SynthParams, get_params

__all__ = ["CohortSummary", "SynthParams", "generate_cohort", "get_params"]
