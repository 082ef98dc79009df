"""The exit codes of ``bids_rim``, in one place for the command line, the README and ``boutiques.json``.

They follow ``sysexits.h`` where one fits; 1–63 count the participants that failed at
participant level (capped at 63), so that a batch system can tell "some subjects failed" from
"the command was wrong".
"""

from __future__ import annotations

EXIT_COMMAND_LINE = 2  # argparse's own: it prints the usage and the problem
MAX_FAILURE_EXIT = 63
EXIT_USAGE = 64  # EX_USAGE
EXIT_INVALID_BIDS = 65  # EX_DATAERR
EXIT_INTERNAL = 70  # EX_SOFTWARE
EXIT_CANT_CREATE = 73  # EX_CANTCREAT

#: What each non-zero code other than 1–63 means, as the README says it.
DESCRIPTIONS = {
    EXIT_COMMAND_LINE: "a malformed command line: an unknown option, a value of the wrong type or out of range, "
    "a missing argument (the usage is printed)",
    EXIT_USAGE: "a bad option or input found once the command line is parsed, before any participant is "
    "processed: an unknown participant, nothing to process, a device this machine lacks, an unreadable model or "
    "plugin file (the message names the file and the problem)",
    EXIT_INVALID_BIDS: "the input dataset is not valid BIDS, or the BIDS validator could not run "
    "(see --skip-bids-validation)",
    EXIT_INTERNAL: "an internal error, a bug at either level (the log holds the traceback; please report it)",
    EXIT_CANT_CREATE: "the output directory cannot be created or written, or lies inside the input dataset",
}


def failed_participants_description(code: int) -> str:
    """What exit code ``code`` (1 to ``MAX_FAILURE_EXIT``) says: how many participants failed."""
    if not 1 <= code <= MAX_FAILURE_EXIT:
        raise ValueError(f"exit code {code} does not count failed participants (1-{MAX_FAILURE_EXIT} do)")
    count = f"{code} or more participants" if code == MAX_FAILURE_EXIT else f"{code} participant(s)"
    return (f"{count} failed at participant level; the others' outputs are complete "
            "(the log names each failure and its crash files)")


def all_descriptions() -> dict[int, str]:
    """Every non-zero exit code and its meaning, in order (``boutiques.json``'s error-codes)."""
    counts = {code: failed_participants_description(code) for code in range(1, MAX_FAILURE_EXIT + 1)}
    return dict(sorted({**counts, **DESCRIPTIONS}.items()))
