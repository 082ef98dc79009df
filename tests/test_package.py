"""The package imports and reports a version (the smallest thing a user relies on)."""

import bids_rim


def test_version_is_set() -> None:
    assert bids_rim.__version__ != "0+unknown"
    assert bids_rim.__version__.count(".") >= 2
