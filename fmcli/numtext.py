"""Numbers as text: float32 values in the shortest form that reads back.

Shared by the writers of text files, sparse data (:mod:`fmcli.convert`) and
libffm's text model files (:mod:`fmcli.libffm`), so that a value converted
to text and read back is the same float32, written with as few digits as
that takes (``1`` rather than ``1.0``, ``0.1`` rather than ``0.100000001``).
NumPy only: nothing here knows about data files or models.
"""

from __future__ import annotations

import numpy as np

__all__ = ["format_float32"]


def format_float32(values: np.ndarray) -> np.ndarray:
    """Each float32 in the shortest ``%g`` form (6 to 9 significant digits)
    that reads back as the same float32, as a bytes array (dtype S)."""
    v = np.ascontiguousarray(values, np.float32).reshape(-1)
    n = v.size
    if n == 0:
        return np.zeros(0, "S1")
    doubles = v.astype(np.float64).tolist()
    out = np.empty(n, object)
    todo = np.arange(n)
    # Most values need 6 digits; only those that do not read back are
    # formatted again with one more, up to 9 (always enough for float32).
    for digits in (6, 7, 8, 9):
        sub = [doubles[i] for i in todo.tolist()]
        text = (f"%.{digits}g\n" * len(sub)) % tuple(sub)
        strs = np.array(text.encode("ascii").split(b"\n")[:-1], dtype="S")
        back = strs.astype(np.float32)
        good = (back == v[todo]) | (digits == 9)
        out[todo[good]] = strs[good]
        todo = todo[~good]
        if not todo.size:
            break
    return out.astype("S")
