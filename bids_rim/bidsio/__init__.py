"""BIDS input queries (pybids) and the one writer of BIDS derivatives."""
