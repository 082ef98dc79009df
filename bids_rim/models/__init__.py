"""Networks: the asymmetric QSM-FLAIR model and the baselines, behind one registry."""
