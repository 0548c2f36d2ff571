"""Per-row sample weights from a file of their own (``--weights FILE``).

The file holds exactly one number per line, the weight of the data row with
the same index: a finite number >= 0 within float32 range.  Whitespace
around the number and CRLF line endings are fine; blank lines, comments and
anything else are errors reported as ``FILE:LINE``.
"""

from __future__ import annotations

import os
import re
import sys

import numpy as np

from ..errors import DataError
from .text import describe_token, display_name, open_input

_BOM = b"\xef\xbb\xbf"
_CHUNK_BYTES = 8 << 20
# Bytes a clean file is made of; anything else sends a chunk to the line scan.
_CLEAN = b"0123456789+-.eE \t\r\n"
_SPACE = b" \t\r"
_NUMBER = re.compile(rb"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\Z")


def read_weights(path: str | os.PathLike, n_rows: int, data_name: str) -> np.ndarray:
    """The weights in `path` as float32, one per row of the data `data_name`
    (which has `n_rows` rows).  Raises DataError naming FILE:LINE for a bad
    line, and naming both files when the counts differ."""
    name = display_name(path)
    f = open_input(path)
    try:
        data = f.read()
    except OSError as exc:
        raise DataError(f"read error: {exc.strerror or exc}", name) from None
    finally:
        if f is not sys.stdin.buffer:
            f.close()
    if data.startswith(_BOM):
        data = data[len(_BOM):]
    parts = []
    line = 0  # lines before the chunk
    pos = 0
    while pos < len(data):
        end = data.find(b"\n", min(pos + _CHUNK_BYTES, len(data)) - 1)
        end = len(data) if end < 0 else end + 1
        chunk = data[pos:end]
        parts.append(_parse_chunk(chunk, name, line))
        line += chunk.count(b"\n")
        pos = end
    weights = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    if weights.shape[0] != n_rows:
        raise DataError(f"{weights.shape[0]} weights but {data_name} has {n_rows} rows", name)
    return weights


def _parse_chunk(chunk: bytes, name: str, line: int) -> np.ndarray:
    """Weights of whole lines `chunk`, whose first line is line `line` + 1."""
    body = chunk[:-1] if chunk.endswith(b"\n") else chunk
    n_lines = body.count(b"\n") + 1
    if not chunk.translate(None, _CLEAN):
        # One number per line: as many tokens as lines and no blank line.
        squeezed = body.translate(None, _SPACE)
        tokens = body.split()
        if (len(tokens) == n_lines and squeezed and b"\n\n" not in squeezed
                and not squeezed.startswith(b"\n") and not squeezed.endswith(b"\n")):
            try:
                values = np.array(tokens, dtype=np.float64)
            except ValueError:
                values = None
            if values is not None and (values >= 0).all():
                with np.errstate(over="ignore"):
                    weights = values.astype(np.float32)
                if np.isfinite(weights).all():
                    return weights + np.float32(0)  # no -0.0
    return _scan_lines(body, name, line)


def _scan_lines(body: bytes, name: str, line: int) -> np.ndarray:
    """Line by line: the weights, or a DataError at the first bad line."""
    weights = np.empty(body.count(b"\n") + 1, np.float32)
    for i, raw in enumerate(body.split(b"\n")):
        token = raw.strip(_SPACE)
        where = (name, line + i + 1)
        if not token:
            raise DataError("expected one row weight per line, found an empty line", *where)
        if any(c in token for c in (b" ", b"\t", b"\r")):
            raise DataError(f"expected one row weight per line, found {describe_token(token)}", *where)
        if not _NUMBER.match(token):
            raise DataError(f"expected a number as the row weight, found {describe_token(token)}",
                            *where)
        value = float(token)
        if value < 0:
            raise DataError(f"expected a row weight >= 0, found {describe_token(token)}", *where)
        with np.errstate(over="ignore"):
            weight = np.float32(value)
        if not np.isfinite(weight):
            raise DataError("expected a finite row weight within float32 range, "
                            f"found {describe_token(token)}", *where)
        weights[i] = weight + np.float32(0)
    return weights
