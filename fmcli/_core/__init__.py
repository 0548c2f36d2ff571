"""Compiled core: text parsing and the training / scoring kernels."""

import os

# GNU OpenMP reads GOMP_SPINCOUNT once, when the extension loads it.  Its
# default lets a thread that finished a parallel region spin some 300,000
# times for the next one: between two blocks of rows that is a core taken
# from the thread that reads and parses the next block (fm predict on 2 CPUs
# ran 10-15% slower).  A count of 10,000 (well under a millisecond) keeps
# the regions' hand-overs quick.  A value set in the environment is kept.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

from ._kernels import openmp_info  # noqa: E402  (after the setting above)

__all__ = ["openmp_info"]
