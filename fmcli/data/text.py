"""libffm and libsvm text readers.

Input is read in byte blocks; each block's whole lines are tokenized by the
compiled parser (no Python object per token), and a partial last line is
carried over to the next block together with the line counter, so an error
anywhere names ``FILE:LINE``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from .._core import _parse
from ..errors import DataError, InputNotFoundError
from .batch import Batch

DEFAULT_BLOCK_BYTES = 8 << 20
DEFAULT_MAX_LINE_BYTES = 1 << 24   # 16 MiB: far beyond any real row, bounded memory
MAX_ID = 2**31 - 1
_BOM = b"\xef\xbb\xbf"

# Parser error codes (fmcli/_core/_parse.pyx).
E_TOKEN, E_LONG_LINE, E_CR, E_MIXED_LABELS, E_FEATURE_LIMIT = 3, 9, 10, 11, 12

_MESSAGES = {
    1: "expected a numeric label",
    2: "expected a binary label (0/1 or -1/+1)",
    3: None,  # the format's token shape, filled in by _describe
    4: "expected a non-negative id",
    5: "expected an id below 2^31",
    6: "expected a number as the value",
    7: "expected a finite number within float32 range",
}


def describe_token(token: bytes, limit: int = 40) -> str:
    """The token as a quoted, escaped string safe to print on a terminal."""
    cut = token[:limit]
    text = repr(cut)[1:]  # strip the b prefix, keep quotes and escapes
    if len(token) > limit:
        text = text[:-1] + "..." + text[-1]
    return text


def sniff_format(head: bytes) -> str | None:
    """'libffm' when the first feature token has two colons, 'libsvm' when it
    has one, None when `head` holds no feature token at all."""
    for raw in head.split(b"\n"):
        line = raw.split(b"#", 1)[0].strip()
        tokens = line.split()
        for token in tokens[1:]:
            if token.startswith(b"qid:"):
                continue
            return "libffm" if token.count(b":") >= 2 else "libsvm"
    return None


def open_input(path: str | os.PathLike) -> BinaryIO:
    """Open a path for binary reading, or stdin for '-'."""
    path = os.fspath(path)
    if path == "-":
        return sys.stdin.buffer
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise InputNotFoundError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputNotFoundError(f"{path}: is a directory, expected a data file") from None
    except OSError as exc:
        raise InputNotFoundError(f"{path}: cannot open: {exc.strerror or exc}") from None


_SUFFIX_FORMATS = {".ffm": "libffm", ".libffm": "libffm", ".svm": "libsvm", ".libsvm": "libsvm"}


def format_from_name(path: str | os.PathLike) -> str | None:
    """The format a file's extension names, if any."""
    name = os.fspath(path)
    for suffix, fmt in _SUFFIX_FORMATS.items():
        if name.endswith(suffix):
            return fmt
    return None


def display_name(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    return "<stdin>" if path == "-" else path


@dataclass(frozen=True)
class ReadLimits:
    """What a reader tolerates before it stops with a DataError."""

    max_bad_rows: int = 0              # malformed rows skipped (and counted) before failing
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    max_feature_id: int = MAX_ID


class TextReader:
    """Stream a libffm/libsvm file as CSR batches of whole lines."""

    def __init__(
        self,
        path: str | os.PathLike,
        fmt: str = "auto",
        label_mode: str = "binary",
        block_bytes: int = DEFAULT_BLOCK_BYTES,
        limits: ReadLimits = ReadLimits(),
        track_lines: bool = False,
    ):
        if fmt not in ("auto", "libffm", "libsvm"):
            raise ValueError(f"unknown text format {fmt!r}")
        self.path = path
        self.name = display_name(path)
        if fmt == "auto":
            fmt = format_from_name(path) or "auto"  # else sniffed from the first block
        self.fmt = fmt
        self.label_mode = label_mode
        self.block_bytes = block_bytes
        self.limits = limits
        self.track_lines = track_lines
        self.bytes_read = 0
        self.lines = 0
        self.bad_rows: list[DataError] = []   # rows skipped under max_bad_rows
        self._negative = 0                    # negative label seen so far (parser state)

    def __iter__(self) -> Iterator[Batch]:
        """One Batch per block of whole lines (bounded memory, for streaming)."""
        for buf, cut, line_base in self._blocks():
            cols = _Columns(*_capacity(cut), track_lines=self.track_lines)
            self._parse_into(cols, buf, cut, line_base)
            if cols.rows:
                yield cols.finish()

    def read_all(self) -> Batch:
        """The whole input as one Batch, parsed straight into growing arrays."""
        cols = _Columns(1 << 16, 1 << 20, track_lines=self.track_lines)
        for buf, cut, line_base in self._blocks():
            cols.reserve(*_capacity(cut))
            self._parse_into(cols, buf, cut, line_base)
        return cols.finish()

    def _blocks(self) -> Iterator[tuple[bytes, int, int]]:
        """(buffer, end of its last whole line, number of lines before it)."""
        f = open_input(self.path)
        max_line = self.limits.max_line_bytes
        try:
            carry = b""
            first = True
            dropping = False  # inside an over-long line that is being skipped
            self.lines = 0
            while True:
                try:
                    block = f.read(self.block_bytes)
                except OSError as exc:
                    raise DataError(f"read error: {exc.strerror or exc}", self.name) from None
                self.bytes_read += len(block)
                final = not block
                buf = carry + block if carry else block
                if first:
                    if len(buf) < len(_BOM) and not final:
                        carry = buf  # too short to tell whether it starts with a BOM
                        continue
                    if buf.startswith(_BOM):
                        buf = buf[len(_BOM):]  # a UTF-8 byte-order mark is not data
                    first = False
                if dropping:
                    nl = buf.find(b"\n")
                    if nl < 0:
                        carry = b""
                        if final:
                            return
                        continue
                    buf, dropping = buf[nl + 1 :], False
                    self.lines += 1
                if not buf:
                    if final:
                        return
                    carry = b""
                    continue
                if final:
                    cut = len(buf)
                else:
                    cut = buf.rfind(b"\n") + 1
                    if cut == 0:
                        if max_line and len(buf) > max_line:
                            # A line longer than the limit: fail or skip it
                            # without ever holding more than the limit.
                            self._bad(E_LONG_LINE, self.lines + 1, buf[:40])
                            carry, dropping = b"", True
                            continue
                        carry = buf  # a line longer than one block: keep reading
                        continue
                if self.fmt == "auto":
                    # Undecided until a block holds a feature token; until
                    # then every row is label-only and parses the same way.
                    self.fmt = sniff_format(buf[:cut]) or "auto"
                yield buf, cut, self.lines
                carry = buf[cut:]
                if final:
                    return
        finally:
            if f is not sys.stdin.buffer:
                f.close()

    def _parse_into(self, cols: "_Columns", buf: bytes, cut: int, line_base: int) -> None:
        """Parse buf[:cut]; malformed rows are skipped while max_bad_rows allows."""
        data = np.frombuffer(buf, dtype=np.uint8, count=cut)
        fmt = "libffm" if self.fmt == "auto" else self.fmt
        offset, line0 = 0, line_base  # line0: lines before data[offset]
        while True:
            rows, nnz, lines, err, err_line, start, end, self._negative = _parse.parse_block(
                data[offset:], fmt, self.label_mode, cols.labels[cols.rows :],
                cols.indptr[cols.rows :], cols.fields, cols.features, cols.values,
                None if cols.lines is None else cols.lines[cols.rows :],
                self.limits.max_line_bytes, self.limits.max_feature_id, self._negative,
            )
            if cols.lines is not None:
                cols.lines[cols.rows : cols.rows + rows] += line0 + 1  # 1-based, absolute
            cols.rows += rows
            if not err:
                cols.nnz = nnz
                self.lines = line0 + lines
                return
            cols.nnz = int(cols.indptr[cols.rows])  # drop the unfinished row
            lineno = line0 + err_line + 1
            self._bad(err, lineno, buf[offset + start : offset + end])
            nl = buf.find(b"\n", offset + start, cut)
            if nl < 0:
                self.lines = lineno
                return
            offset, line0 = nl + 1, lineno

    def _bad(self, err: int, line: int, token: bytes) -> None:
        """Count a malformed row, or raise once max_bad_rows is used up."""
        error = DataError(self._describe(err, token), self.name, line)
        if len(self.bad_rows) >= self.limits.max_bad_rows:
            if self.bad_rows:
                error = DataError(
                    f"{error.message} (more than --max-bad-rows {self.limits.max_bad_rows} bad rows)",
                    self.name, line,
                )
            raise error
        self.bad_rows.append(error)

    def _describe(self, err: int, token: bytes) -> str:
        found = f"found {describe_token(token)}"
        if err == E_TOKEN:
            shape = "field:feature:value" if self.fmt in ("libffm", "auto") else "feature:value"
            return f"expected {shape}, {found}"
        if err == E_LONG_LINE:
            return (f"line longer than {self.limits.max_line_bytes} bytes (--max-line-bytes), "
                    f"starting {describe_token(token)}")
        if err == E_CR:
            return ("carriage return inside a line (CR-only line endings?); "
                    "convert with: tr '\\r' '\\n'")
        if err == E_MIXED_LABELS:
            return (f"binary labels use both 0 and -1 for the negative class, {found}; "
                    "use 0/1 or -1/+1 throughout")
        if err == E_FEATURE_LIMIT:
            return f"expected a feature id at most {self.limits.max_feature_id} (--max-feature-id), {found}"
        return f"{_MESSAGES.get(err, 'internal parser error')}, {found}"


def _capacity(nbytes: int) -> tuple[int, int]:
    """Upper bounds on (rows, entries) in nbytes of text.

    A row takes at least two bytes ("1\n") and an entry at least four
    ("1:1 "); capacity beyond what is filled is never touched, so it costs
    address space, not memory."""
    return nbytes // 2 + 1, nbytes // 4 + 1


class _Columns:
    """CSR output arrays that grow in place.

    ``ndarray.resize`` reallocates; for large arrays the C library remaps the
    pages instead of copying them, so growing never holds two copies."""

    def __init__(self, rows_cap: int, nnz_cap: int, track_lines: bool = False):
        self.lines = np.zeros(rows_cap, np.int64) if track_lines else None
        self.labels = np.empty(rows_cap, np.float32)
        self.indptr = np.zeros(rows_cap + 1, np.int64)
        self.fields = np.empty(nnz_cap, np.int32)
        self.features = np.empty(nnz_cap, np.int32)
        self.values = np.empty(nnz_cap, np.float32)
        self.rows = 0
        self.nnz = 0

    def reserve(self, rows: int, nnz: int) -> None:
        if self.rows + rows > self.labels.shape[0]:
            cap = max(self.rows + rows, self.labels.shape[0] * 3 // 2)
            self.labels.resize(cap, refcheck=False)
            self.indptr.resize(cap + 1, refcheck=False)
            if self.lines is not None:
                self.lines.resize(cap, refcheck=False)
        if self.nnz + nnz > self.fields.shape[0]:
            cap = max(self.nnz + nnz, self.fields.shape[0] * 3 // 2)
            for a in (self.fields, self.features, self.values):
                a.resize(cap, refcheck=False)

    def finish(self) -> Batch:
        self.labels.resize(self.rows, refcheck=False)
        self.indptr.resize(self.rows + 1, refcheck=False)
        for a in (self.fields, self.features, self.values):
            a.resize(self.nnz, refcheck=False)
        if self.lines is not None:
            self.lines.resize(self.rows, refcheck=False)
        return Batch(self.labels, self.indptr, self.fields, self.features, self.values, self.lines)


def read_text(
    path: str | os.PathLike,
    fmt: str = "auto",
    label_mode: str = "binary",
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    limits: ReadLimits = ReadLimits(),
) -> tuple[Batch, str]:
    """Read a whole file into one Batch; returns (batch, detected format)."""
    reader = TextReader(path, fmt, label_mode, block_bytes, limits)
    return reader.read_all(), reader.fmt


def binary_labels(labels: np.ndarray) -> np.ndarray:
    """Map 0/1 or -1/+1 labels to -1/+1 float32."""
    return np.where(labels > 0, np.float32(1), np.float32(-1))
