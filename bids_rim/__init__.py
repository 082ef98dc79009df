"""bids_rim: a BIDS App that finds paramagnetic rim lesions (PRL) of multiple sclerosis.

QSM is the primary signal; FLAIR conditions it. See README.md for the data flow.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("bids_rim")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
