"""The synthetic MS cohort (QSM + FLAIR BIDS datasets with ground truth)."""
