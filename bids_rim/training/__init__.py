"""Datasets, augmentation, pretraining, fine-tuning, losses, cross-validation, inference."""
