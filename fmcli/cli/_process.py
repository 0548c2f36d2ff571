"""What the entry points (fm, ffm-train, ffm-predict) set up for the process.

A module of its own so that every entry point imports it from here, not
from the package that holds another entry point.
"""

from __future__ import annotations

import sys

__all__ = ["map_large_blocks"]


def map_large_blocks(threshold: int = 4 << 20) -> None:
    """Have glibc's malloc map every block of `threshold` bytes or more on its
    own, so that freeing one returns its memory to the system.

    By default glibc raises that threshold (up to 32 MiB) each time a mapped
    block is freed, after which the parser's and the loader's chunk-sized
    arrays come from the heap and their memory stays with the process when
    they are freed: tens of MiB of peak RSS for nothing.  Elsewhere (or
    without mallopt) this does nothing."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    M_MMAP_THRESHOLD = -3
    mallopt(M_MMAP_THRESHOLD, threshold)
