"""Errors a user can act on. Their message is one line naming the file and the problem."""


class InputError(ValueError):
    """An input file or option that bids_rim cannot use (printed as one line, exit non-zero)."""


class OutputError(OSError):
    """The output directory cannot be used (not writable, or inside the input dataset)."""


class BusyError(RuntimeError):
    """Another bids_rim run is using what this run needs (its working directory): retry when it ends."""
