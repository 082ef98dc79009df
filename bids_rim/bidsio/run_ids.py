"""Names of participant-level runs: the ``sub-X/log/<run id>/`` folders of OUTPUT_DIR.

A run id is the moment the run started, ``YYYYmmdd-HHMMSSZ`` in UTC, so that it names the same
moment wherever OUTPUT_DIR is later read: the group level orders a participant's runs by these
starts to tell a stale lesion table from a current one (``bids_rim.group.aggregate``). Earlier
builds wrote ``YYYYmmdd-HHMMSS`` in the local time of the machine that ran them; those folders are
still read, as local time of the machine that reads them.
"""

from __future__ import annotations

import calendar
import time

RUN_ID_FORMAT = "%Y%m%d-%H%M%SZ"
LOCAL_TIME_RUN_ID_FORMAT = "%Y%m%d-%H%M%S"  # earlier builds


def new_run_id(now: float | None = None) -> str:
    """The id of a run starting at ``now`` (seconds since the epoch; the present when None)."""
    return time.strftime(RUN_ID_FORMAT, time.gmtime(now))


def run_id_start(run_id: str) -> float | None:
    """The start of the run named ``run_id`` in seconds since the epoch; None if it is not a run id."""
    try:
        return float(calendar.timegm(time.strptime(run_id, RUN_ID_FORMAT)))
    except ValueError:
        pass
    try:
        return time.mktime(time.strptime(run_id, LOCAL_TIME_RUN_ID_FORMAT))
    except ValueError:
        return None
