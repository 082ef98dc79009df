"""Participant-level run ids name their start in UTC; the local-time ids of earlier builds still read."""

from __future__ import annotations

import os
import time

import pytest

from bids_rim.bidsio.run_ids import new_run_id, run_id_start


@pytest.fixture
def far_time_zone():
    """Run in a time zone 10 hours from UTC, so that a local-time reading of a UTC id would be off."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "Pacific/Honolulu"  # UTC-10, no daylight saving
    time.tzset()
    yield
    if before is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = before
    time.tzset()


def test_a_run_id_is_its_start_in_utc(far_time_zone) -> None:
    start = 1_764_871_505.0  # 2025-12-04 18:05:05 UTC
    assert new_run_id(start) == "20251204-180505Z"
    assert run_id_start(new_run_id(start)) == start


def test_local_time_ids_of_earlier_builds_read_as_local_time(far_time_zone) -> None:
    assert run_id_start("20251204-080505") == 1_764_871_505.0  # 08:05:05 in Honolulu is 18:05:05 UTC


@pytest.mark.parametrize("name", ["crash-x", "20251204", "20251204-180505Zx", "20251304-180505Z"])
def test_other_folder_names_are_not_run_ids(name: str) -> None:
    assert run_id_start(name) is None
