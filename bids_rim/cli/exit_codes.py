"""The exit codes of ``bids_rim``, in one place for the command line, the README and ``boutiques.json``.

They follow ``sysexits.h`` where one fits. 1 says that some participants failed and the others
finished, as fMRIPrep's 1 does; it is a code of its own, apart from argparse's 2 for a malformed
command line, so that a batch system can tell "some subjects failed" from "the command was wrong"
(a count of the failures in the exit code would reach 2). The log and the final summary count them.
"""

from __future__ import annotations

EXIT_PARTICIPANTS_FAILED = 1
EXIT_COMMAND_LINE = 2  # argparse's own: it prints the usage and the problem
EXIT_USAGE = 64  # EX_USAGE
EXIT_INVALID_BIDS = 65  # EX_DATAERR
EXIT_INTERNAL = 70  # EX_SOFTWARE
EXIT_CANT_CREATE = 73  # EX_CANTCREAT
EXIT_BUSY = 75  # EX_TEMPFAIL: try again later
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports it
EXIT_TERMINATED = 143  # 128 + SIGTERM

#: What each non-zero code means, as the README says it.
DESCRIPTIONS = {
    EXIT_PARTICIPANTS_FAILED: "one or more participants failed at participant level; the others' outputs are "
    "complete (the log names each failure, how many there were, and their crash files)",
    EXIT_COMMAND_LINE: "a malformed command line: an unknown option, a value of the wrong type or out of range, "
    "a missing argument (the usage is printed)",
    EXIT_USAGE: "a bad option or input found once the command line is parsed, before any participant is "
    "processed: an unknown participant, nothing to process, a filter entity pybids does not know, a device this "
    "machine lacks, an unreadable model or plugin file or an unknown plugin, a working directory inside the input "
    "dataset (the message names the file and the problem)",
    EXIT_INVALID_BIDS: "the input dataset is not valid BIDS, or the BIDS validator could not run "
    "(see --skip-bids-validation)",
    EXIT_INTERNAL: "an internal error, a bug at either level (the log holds the traceback; please report it)",
    EXIT_INTERRUPTED: "stopped by Ctrl-C (SIGINT): the outputs written so far are complete; rerun with the same "
    "working directory to resume",
    EXIT_TERMINATED: "stopped by SIGTERM (a scheduler's time limit): the outputs written so far are complete; rerun "
    "with the same working directory to resume",
    EXIT_BUSY: "another bids_rim run is processing one of the participants in the same working directory; "
    "nothing was written: run again when it has ended, or with a working directory of its own (-w)",
    EXIT_CANT_CREATE: "the output directory cannot be created or written, lies inside the input dataset, or is "
    "another dataset (a -d input, or another pipeline's derivatives)",
}


def all_descriptions() -> dict[int, str]:
    """Every non-zero exit code and its meaning, in order (``boutiques.json``'s error-codes)."""
    return dict(sorted(DESCRIPTIONS.items()))
