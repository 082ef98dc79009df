"""Pure functions on images: bias correction, masks, registration, lesions, patches.

ITK (inside antspyx) reads its thread count once per process; single-threaded ITK makes
registration bit-reproducible (see :mod:`bids_rim.preproc.antsio`), so it is the default here,
set before any module of this package imports ants. An explicit environment setting wins.
"""

import os

os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")
