"""Thin Nipype interfaces over the pure functions of :mod:`bids_rim.preproc`."""
