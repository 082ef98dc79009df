"""Networks: the asymmetric QSM-FLAIR model and the baselines, behind one registry."""

from bids_rim.models.registry import available_models, get_model, is_neural

__all__ = ["available_models", "get_model", "is_neural"]
