"""libffm and libsvm text readers.

Input is read in byte blocks, decompressed where it is compressed
(:mod:`fmcli.data.source`); each block's whole lines are tokenized by the
compiled parser (no Python object per token), and a partial last line is
carried over to the next block together with the line counter, so an error
anywhere names ``FILE:LINE``.

A label token may carry a row weight, ``LABEL:WEIGHT`` (a number >= 0).  In
the ``"class"`` label mode labels are class names (any token without ``:``),
mapped to indices into :attr:`TextReader.classes`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from .._core import _parse
from ..errors import ConfigError, DataError
from .batch import Batch
from .source import display_name, format_from_name, line_blocks, open_input

DEFAULT_BLOCK_BYTES = 8 << 20
DEFAULT_MAX_LINE_BYTES = 1 << 24   # 16 MiB: far beyond any real row, bounded memory
MAX_ID = 2**31 - 1

LABEL_MODES = ("binary", "real", "class")

# Parser error codes (fmcli/_core/_parse.pyx).
E_TOKEN, E_CAPACITY, E_LONG_LINE, E_CR, E_MIXED_LABELS, E_FEATURE_LIMIT = 3, 8, 9, 10, 11, 12

_MESSAGES = {
    1: "expected a numeric label",
    2: "expected a binary label (0/1 or -1/+1)",
    3: None,  # the format's token shape, filled in by _describe
    4: "expected a non-negative id",
    5: "expected an id below 2^31",
    6: "expected a number as the value",
    7: "expected a finite number within float32 range",
    13: "expected a number as the row weight after 'LABEL:'",
    14: "expected a row weight >= 0 after 'LABEL:'",
    15: "expected a finite row weight within float32 range after 'LABEL:'",
    16: "expected a class label (text without ':' or control characters)",
}

# Class labels of at most this many bytes are mapped with numpy (fixed-width
# keys), longer ones row by row; rows go to numpy in chunks of _CLASS_CHUNK.
_CLASS_KEY_BYTES = 16
_CLASS_CHUNK = 1 << 16
_SHOWN_CLASSES = 10


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


@dataclass(frozen=True)
class ReadLimits:
    """What a reader tolerates before it stops with a DataError."""

    max_bad_rows: int = 0              # malformed rows skipped (and counted) before failing
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    max_feature_id: int = MAX_ID


def check_label_mode(label_mode: str, classes: Sequence[str] | None) -> list[str] | None:
    """Validate a reader's label mode and fixed classes; the classes as strings."""
    if label_mode not in LABEL_MODES:
        raise ValueError(f"unknown label mode {label_mode!r}")
    if classes is None:
        return None
    if label_mode != "class":
        raise ValueError("classes are for the class label mode")
    classes = [str(c) for c in classes]
    if len(set(classes)) != len(classes):
        raise ValueError("classes must be distinct")
    return classes


class TextReader:
    """Stream a libffm/libsvm file as CSR batches of whole lines.

    label_mode is "binary" (0/1 or -1/+1), "real" (any finite number) or
    "class" (class names).  In the class mode, labels hold indices into
    :attr:`classes` as float32:

    * with ``classes`` given (e.g. a trained model's), a label outside it is
      a DataError;
    * without, the classes are those found in the data.  After
      :meth:`read_all` they are in canonical order (:func:`sort_classes`);
      batches from iterating index them in order of first appearance.

    Batch.weights holds the rows' weights (``LABEL:WEIGHT``), or is None
    when every row's weight is 1.
    """

    classes: list[str] | None
    """The class names labels index (class mode), else None."""

    def __init__(
        self,
        path: str | os.PathLike,
        fmt: str = "auto",
        label_mode: str = "binary",
        block_bytes: int = DEFAULT_BLOCK_BYTES,
        limits: ReadLimits = ReadLimits(),
        track_lines: bool = False,
        classes: Sequence[str] | None = None,
    ):
        if fmt not in ("auto", "libffm", "libsvm"):
            raise ValueError(f"unknown text format {fmt!r}")
        classes = check_label_mode(label_mode, classes)
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
        # threads that parse blocks side by side when iterating (not in the
        # class label mode); the batches, bad rows and errors are the same
        self.workers = 1
        self._fixed_classes = classes is not None
        self.classes = classes if classes is not None else ([] if label_mode == "class" else None)
        self._codes: dict[bytes, int] = {}    # class label bytes -> index into classes
        self._words: tuple[np.ndarray, np.ndarray] | None = None  # see _word_table
        if classes is not None:
            self._codes = {c.encode("utf-8"): i for i, c in enumerate(classes)}

    def __iter__(self) -> Iterator[Batch]:
        """One Batch per block of whole lines (bounded memory, for streaming)."""
        self._start()
        if self.workers > 1 and self.label_mode != "class":
            yield from self._iter_parallel()
            return
        density = None   # the most (rows, entries) per byte of the blocks so far
        for buf, cut, line_base in self._blocks():
            cols = _Columns(*_block_capacity(cut, density), track_lines=self.track_lines,
                            spans=self.label_mode == "class")
            self._parse_into(cols, buf, cut, line_base)
            if cut:
                rows, nnz = cols.rows / cut, cols.nnz / cut
                density = (rows, nnz) if density is None else (max(density[0], rows), max(density[1], nnz))
            if cols.rows:
                yield cols.finish()

    def _iter_parallel(self) -> Iterator[Batch]:
        """__iter__ with `workers` blocks parsed at once, in threads (the
        parser releases the GIL), and handed out in file order.

        A block is parsed on its own, from no negative label and to its
        first error.  Taken in order, a block without an error whose
        negative label agrees with the blocks before it is used as parsed;
        any other block is parsed again here, in order, as __iter__ does, so
        that bad rows are counted and errors raised exactly as there.  Lines
        too long for a block, met while reading ahead, are counted in order
        too: before the rows of the block that follows them."""
        from concurrent.futures import ThreadPoolExecutor

        depth = self.workers
        met: list[tuple[int, bytes]] = []      # long lines met while reading the next block

        def settle(long_lines: list[tuple[int, bytes]]) -> None:
            for line, head in long_lines:
                self._bad(self._describe(E_LONG_LINE, head), line)

        density = None
        pending: list[tuple] = []
        blocks = self._blocks(met, ahead=depth)
        try:
            with ThreadPoolExecutor(depth, thread_name_prefix="fmcli-parse") as pool:

                def take(job) -> Iterator[Batch]:
                    nonlocal density
                    future, buf, cut, line_base, long_lines, fmt_then = job
                    settle(long_lines)
                    cols, lines, negative, clean = future.result()
                    if not clean or (negative and self._negative and negative != self._negative):
                        # in order, with the format as it stood at this block
                        # (later blocks may have settled an undecided one since)
                        cols = _Columns(*_block_capacity(cut, density), track_lines=self.track_lines)
                        fmt_now, self.fmt = self.fmt, fmt_then
                        try:
                            self._parse_into(cols, buf, cut, line_base)
                        finally:
                            self.fmt = fmt_now
                    else:
                        self._negative = negative or self._negative
                        self.lines = lines
                    if cut:
                        rows, nnz = cols.rows / cut, cols.nnz / cut
                        density = (rows, nnz) if density is None else (max(density[0], rows),
                                                                       max(density[1], nnz))
                    if cols.rows:
                        yield cols.finish()

                for buf, cut, line_base in blocks:
                    long_lines, met[:] = met[:], []
                    fmt = "libffm" if self.fmt == "auto" else self.fmt
                    capacity = _block_capacity(cut, density)
                    pending.append((pool.submit(self._parse_alone, buf, cut, line_base, fmt, capacity),
                                    buf, cut, line_base, long_lines, self.fmt))
                    del buf
                    if len(pending) >= depth:
                        yield from take(pending.pop(0))
                while pending:
                    yield from take(pending.pop(0))
                settle(met)
        finally:
            for job in pending:
                job[0].cancel()
            blocks.close()

    def _parse_alone(self, buf, cut: int, line_base: int, fmt: str,
                     capacity: tuple[int, int]) -> tuple["_Columns", int, int, bool]:
        """Parse buf[:cut] on its own (a worker of _iter_parallel): (columns,
        lines through the block, the block's negative label, whether it
        parsed to its end without an error).  Touches no reader state."""
        cols = _Columns(*capacity, track_lines=self.track_lines)
        data = np.frombuffer(buf, dtype=np.uint8, count=cut)
        offset, line0, negative = 0, line_base, 0
        while True:
            r0 = cols.rows
            rows, nnz, lines, err, err_line, start, _, negative = self._parse_run(cols, data, offset, fmt, negative)
            cols.took(r0, rows, line0)
            if not err:
                cols.nnz = nnz
                return cols, line0 + lines, negative, True
            cols.nnz = int(cols.indptr[cols.rows])
            if err != E_CAPACITY:
                return cols, line0, negative, False
            offset, line0 = cols.regrow(buf, offset, start, line0, err_line)

    def _parse_run(self, cols: "_Columns", data: np.ndarray, offset: int, fmt: str,
                   negative: int) -> tuple[int, int, int, int, int, int, int, int]:
        """One parser call, data[offset:] into the room `cols` has left:
        (rows, nnz, lines, error, err_line, err_start, err_end, negative) as
        _parse.parse_block gives them; the rows are not counted in yet."""
        r0 = cols.rows
        rows, nnz, lines, err, err_line, start, end, negative, weighted = _parse.parse_block(
            data[offset:], fmt, self.label_mode, cols.labels[r0:],
            cols.indptr[r0:], cols.fields, cols.features, cols.values,
            None if cols.lines is None else cols.lines[r0:],
            self.limits.max_line_bytes, self.limits.max_feature_id, negative,
            cols.weights[r0:], None if cols.spans is None else cols.spans[2 * r0 :],
        )
        cols.weighted = cols.weighted or weighted
        return rows, nnz, lines, err, err_line, start, end, negative

    def read_all(self) -> Batch:
        """The whole input as one Batch, parsed straight into growing arrays."""
        self._start()
        cols = _Columns(*_FIRST_CAPACITY, track_lines=self.track_lines, spans=self.label_mode == "class")
        parsed = 0   # bytes parsed so far: they tell how many rows and entries a block holds
        for buf, cut, line_base in self._blocks():
            if parsed:
                more = cut / parsed * 1.1
                cols.reserve(int(cols.rows * more) + 64, int(cols.nnz * more) + 1024)
            self._parse_into(cols, buf, cut, line_base)
            parsed += cut
        batch = cols.finish()
        if self.label_mode == "class" and not self._fixed_classes:
            self._renumber_classes(batch.labels)
        return batch

    def _start(self) -> None:
        if self.label_mode == "class" and not self._fixed_classes:
            self.classes, self._codes, self._words = [], {}, None

    def _renumber_classes(self, labels: np.ndarray) -> None:
        """Put the classes found into canonical order, relabelling rows."""
        assert self.classes is not None
        self.classes = renumber_classes(self.classes, labels)
        self._codes = {c.encode("utf-8"): i for i, c in enumerate(self.classes)}
        self._words = None

    def _blocks(self, met: list[tuple[int, bytes]] | None = None,
                ahead: int = 0) -> Iterator[tuple[bytes, int, int]]:
        """(buffer, end of its last whole line, number of lines before it).
        The buffer may be a bytearray that the next block overwrites
        (line_blocks' reuse): each block is parsed before the next is read,
        or with `ahead`, before the `ahead` + 1st block after it is read.
        Lines too long for a block count as bad rows at once, or with `met`
        are appended to it as (line number, first bytes) instead."""
        f = open_input(self.path)

        def long_line(line: int, head: bytes) -> None:
            # fail, or skip the line, without ever holding more than the limit
            if met is not None:
                met.append((line, head))
            else:
                self._bad(self._describe(E_LONG_LINE, head), line)

        def count(n: int) -> None:
            self.bytes_read += n

        try:
            self.lines = 0
            # _parse_into leaves self.lines at the lines through the block;
            # blocks parsed ahead are counted by line_blocks itself
            for buf, cut, lines in line_blocks(f, self.name, self.block_bytes,
                                               self.limits.max_line_bytes, long_line, count,
                                               None if ahead else (lambda: self.lines),
                                               reuse=ahead + 1):
                self.lines = lines
                if self.fmt == "auto":
                    # Undecided until a block holds a feature token; until
                    # then every row is label-only and parses the same way.
                    self.fmt = sniff_format(buf[:cut]) or "auto"
                yield buf, cut, lines
        finally:
            f.close()  # never closes stdin itself (see source.open_input)

    def _parse_into(self, cols: "_Columns", buf: bytes, cut: int, line_base: int) -> None:
        """Parse buf[:cut]; malformed rows are skipped while max_bad_rows allows."""
        data = np.frombuffer(buf, dtype=np.uint8, count=cut)
        fmt = "libffm" if self.fmt == "auto" else self.fmt
        offset, line0 = 0, line_base  # line0: lines before data[offset]
        while True:
            r0 = cols.rows
            rows, nnz, lines, err, err_line, start, end, self._negative = self._parse_run(
                cols, data, offset, fmt, self._negative)
            message = None
            if cols.spans is not None and rows:
                failed = self._map_classes(buf, data, offset, cols, rows)
                if failed is not None:  # a label that is no class: the row is bad
                    rows, start, end, message = failed
            cols.took(r0, rows, line0)
            if message is None and not err:
                cols.nnz = nnz
                self.lines = line0 + lines
                return
            cols.nnz = int(cols.indptr[cols.rows])  # drop the unfinished row
            if message is None and err == E_CAPACITY:
                offset, line0 = cols.regrow(buf, offset, start, line0, err_line)
                continue
            if message is None:
                lineno = line0 + err_line + 1
                message = self._describe(err, bytes(buf[offset + start : offset + end]))
            else:
                lineno = line0 + buf.count(b"\n", offset, offset + start) + 1
            self._bad(message, lineno)
            nl = buf.find(b"\n", offset + start, cut)
            if nl < 0:
                self.lines = lineno
                return
            offset, line0 = nl + 1, lineno

    def _map_classes(self, buf: bytes, data: np.ndarray, offset: int, cols: "_Columns",
                     rows: int) -> tuple[int, int, int, str] | None:
        """Set the labels of the `rows` rows just parsed to their class indices.

        Returns None, or for the first row whose label is no class (not one
        of fixed classes, or not UTF-8): (rows before it, its label's span
        relative to `offset`, the error message)."""
        r0 = cols.rows
        spans = cols.spans[2 * r0 : 2 * (r0 + rows)]
        starts = spans[0::2] + offset
        lens = spans[1::2]
        out = cols.labels[r0 : r0 + rows]
        vectorized = int(lens.max()) <= _CLASS_KEY_BYTES
        for c0 in range(0, rows, _CLASS_CHUNK):
            c1 = min(c0 + _CLASS_CHUNK, rows)
            if vectorized and self._map_chunk(data, starts[c0:c1], lens[c0:c1], out[c0:c1]):
                continue
            bad = self._map_rows(buf, starts[c0:c1], lens[c0:c1], out[c0:c1])
            if bad is not None:
                s = int(starts[c0 + bad])
                token = bytes(buf[s : s + int(lens[c0 + bad])])
                return c0 + bad, s - offset, s + len(token) - offset, self._class_error(token)
        return None

    def _map_chunk(self, data: np.ndarray, starts: np.ndarray, lens: np.ndarray,
                   out: np.ndarray) -> bool:
        """_map_rows with numpy, for short labels: False (and nothing done)
        when some label is no class."""
        width = max(int(lens.max()), 8)
        pos = np.arange(width)
        idx = starts[:, None] + pos
        np.minimum(idx, data.shape[0] - 1, out=idx)
        chars = data[idx]
        chars[pos >= lens[:, None]] = 0       # labels hold no NUL byte: the padding
        if width == 8:
            return self._map_words(chars.view(np.uint64).ravel(), out)
        keys = chars.view(f"S{width}").ravel()
        uniq, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        tokens = [bytes(u) for u in uniq]
        new = [k for k in np.argsort(first, kind="stable") if tokens[k] not in self._codes]
        if new and (self._fixed_classes or not all(_utf8(tokens[k]) for k in new)):
            return False
        for k in new:  # in order of first appearance
            self._add_class(tokens[k])
        codes = np.array([self._codes[t] for t in tokens], np.float32)
        out[:] = codes[inverse.ravel()]
        return True

    def _map_words(self, keys: np.ndarray, out: np.ndarray) -> bool:
        """_map_chunk for labels of at most 8 bytes, NUL-padded into uint64
        keys: a binary search among the known classes' keys."""
        for _ in range(2):
            table, codes = self._word_table()
            if table.size:
                at = np.searchsorted(table, keys)
                np.minimum(at, table.size - 1, out=at)
                hit = table[at] == keys
                if hit.all():
                    out[:] = codes[at]
                    return True
                missed = keys[~hit]
            else:
                missed = keys
            uniq, first = np.unique(missed, return_index=True)
            tokens = [u.tobytes().rstrip(b"\0") for u in uniq[np.argsort(first, kind="stable")]]
            if self._fixed_classes or not all(_utf8(t) for t in tokens):
                return False
            for token in tokens:  # in order of first appearance
                self._add_class(token)
        raise AssertionError("class labels missing after adding them")

    def _word_table(self) -> tuple[np.ndarray, np.ndarray]:
        """The known classes of at most 8 bytes as sorted uint64 keys (see
        _map_words), and their indices."""
        if self._words is None:
            items = [(t, c) for t, c in self._codes.items() if len(t) <= 8 and b"\0" not in t]
            keys = np.frombuffer(b"".join(t.ljust(8, b"\0") for t, _ in items), np.uint64)
            codes = np.array([c for _, c in items], np.float32)
            order = np.argsort(keys)
            self._words = keys[order], codes[order]
        return self._words

    def _map_rows(self, buf: bytes, starts: np.ndarray, lens: np.ndarray,
                  out: np.ndarray) -> int | None:
        """Class index of each row's label into `out`; returns the index of
        the first row whose label is no class, else None."""
        codes = self._codes
        for r, (s, n) in enumerate(zip(starts.tolist(), lens.tolist())):
            token = bytes(buf[s : s + n])     # (buf may be a bytearray: see _blocks)
            code = codes.get(token)
            if code is None:
                if self._fixed_classes or not _utf8(token):
                    return r
                code = self._add_class(token)
            out[r] = code
        return None

    def _add_class(self, token: bytes) -> int:
        assert self.classes is not None
        code = len(self.classes)
        self.classes.append(token.decode("utf-8"))
        self._codes[token] = code
        self._words = None
        return code

    def _class_error(self, token: bytes) -> str:
        if self._fixed_classes:
            assert self.classes is not None
            return (f"label {describe_token(token)} is not one of the model's classes "
                    f"({_show_classes(self.classes, _SHOWN_CLASSES)})")
        return f"expected a UTF-8 class label, found {describe_token(token)}"

    def _bad(self, message: str, line: int) -> None:
        """Count a malformed row, or raise once max_bad_rows is used up."""
        error = DataError(message, self.name, line)
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


# read_all's first (rows, entries): the first block grows them as it needs
# (parsing stops where they are full, they grow, and it resumes at that line);
# later blocks reserve what the bytes parsed so far predict.
_FIRST_CAPACITY = (1 << 16, 1 << 20)


def _capacity(nbytes: int) -> tuple[int, int]:
    """Upper bounds on (rows, entries) in nbytes of text.

    A row takes at least two bytes ("1\n") and an entry at least four
    ("1:1 "); capacity beyond what is filled is never touched, so it costs
    address space, not memory."""
    return nbytes // 2 + 1, nbytes // 4 + 1


def _block_capacity(nbytes: int, density: tuple[float, float] | None) -> tuple[int, int]:
    """The (rows, entries) to make room for in a block of nbytes, given the
    most rows and entries per byte of the blocks before (None: none yet).

    The bounds of _capacity cost only address space, but large arrays are
    backed by huge pages, which the kernel zero-fills whole when first
    touched: room for a quarter more than the densest block so far (or
    _FIRST_CAPACITY in the first) is cheaper, and a block that needs more
    grows its arrays as read_all does."""
    worst_rows, worst_nnz = _capacity(nbytes)
    if density is None:
        rows, nnz = _FIRST_CAPACITY
    else:
        rows = int(density[0] * nbytes * 1.25) + 1024
        nnz = int(density[1] * nbytes * 1.25) + (1 << 16)
    return min(rows, worst_rows), min(nnz, worst_nnz)


class _Columns:
    """CSR output arrays that grow in place.

    ``ndarray.resize`` reallocates; for large arrays the C library remaps the
    pages instead of copying them, so growing never holds two copies.  It
    also zero-fills what it adds, so capacity added is memory touched: small
    arrays grow by half (their reallocation may copy), large ones by what is
    asked and a sixteenth."""

    def __init__(self, rows_cap: int, nnz_cap: int, track_lines: bool = False, spans: bool = False):
        self.lines = np.zeros(rows_cap, np.int64) if track_lines else None
        self.labels = np.empty(rows_cap, np.float32)
        self.weights = np.empty(rows_cap, np.float32)
        self.weighted = False  # some label token carried a weight
        self.spans = np.empty(2 * rows_cap, np.int64) if spans else None  # class labels' bytes
        self.indptr = np.zeros(rows_cap + 1, np.int64)
        self.fields = np.empty(nnz_cap, np.int32)
        self.features = np.empty(nnz_cap, np.int32)
        self.values = np.empty(nnz_cap, np.float32)
        self.rows = 0
        self.nnz = 0

    @staticmethod
    def _grown(cap: int, need: int) -> int:
        return max(need, cap + (cap // 2 if cap < 1 << 23 else cap // 16))

    def reserve(self, rows: int, nnz: int) -> None:
        """Room for `rows` more rows and `nnz` more entries."""
        if self.rows + rows > self.labels.shape[0]:
            cap = self._grown(self.labels.shape[0], self.rows + rows)
            self.labels.resize(cap, refcheck=False)
            self.weights.resize(cap, refcheck=False)
            self.indptr.resize(cap + 1, refcheck=False)
            if self.lines is not None:
                self.lines.resize(cap, refcheck=False)
            if self.spans is not None:
                self.spans.resize(2 * cap, refcheck=False)
        if self.nnz + nnz > self.fields.shape[0]:
            cap = self._grown(self.fields.shape[0], self.nnz + nnz)
            for a in (self.fields, self.features, self.values):
                a.resize(cap, refcheck=False)

    def took(self, r0: int, rows: int, line0: int) -> None:
        """Count in the `rows` rows a parser call put at r0, from a part of
        the text with `line0` lines before it (their numbers: 1-based,
        absolute)."""
        if self.lines is not None:
            self.lines[r0 : r0 + rows] += line0 + 1
        self.rows += rows

    def regrow(self, buf, offset: int, start: int, line0: int, err_line: int) -> tuple[int, int]:
        """The arrays are full: grow them, and give the (offset, lines
        before it) of the line that did not fit, to parse again from."""
        self.reserve(max(1024, self.rows // 8), max(1 << 16, self.nnz // 8))
        return buf.rfind(b"\n", offset, offset + start) + 1 or offset, line0 + err_line

    def finish(self) -> Batch:
        self.labels.resize(self.rows, refcheck=False)
        self.indptr.resize(self.rows + 1, refcheck=False)
        for a in (self.fields, self.features, self.values):
            a.resize(self.nnz, refcheck=False)
        if self.lines is not None:
            self.lines.resize(self.rows, refcheck=False)
        self.spans = None
        weights = None
        if self.weighted:
            self.weights.resize(self.rows, refcheck=False)
            if not (self.weights == 1).all():
                weights = self.weights
        return Batch(self.labels, self.indptr, self.fields, self.features, self.values, self.lines,
                     weights)


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


# Label tokens as the parser reads numbers (no nan, inf or hex).
_INTEGER = re.compile(r"[+-]?[0-9]+\Z")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\Z")


def renumber_classes(classes: Sequence[str], labels: np.ndarray) -> list[str]:
    """Relabel `labels` (indices into `classes`, in place) for the classes in
    canonical order (:func:`sort_classes`); returns that order."""
    order = sort_classes(classes)
    new = {c: i for i, c in enumerate(order)}
    perm = np.array([new[c] for c in classes], np.float32)
    if labels.size:
        labels[:] = perm[labels.astype(np.intp)]
    return order


def sort_classes(classes: Sequence[str]) -> list[str]:
    """Class names in canonical order: by value when every one is an
    integer (``-1, 0, 2, 10``), else by code point."""
    if classes and all(_INTEGER.match(c) for c in classes):
        return sorted(classes, key=lambda c: (int(c), c))
    return sorted(classes)


def detect_task(classes: Sequence[str]) -> str:
    """The task a file's distinct label tokens call for (``--task auto``).

    "binary" when every label is a number and their values are a subset of
    {0, 1} or of {-1, 1} ('1', '+1' and '1.0' are all 1); "regression" when
    every label is a number and some value is not an integer; "multiclass"
    when some label is not a number.  Raises ConfigError for other integer
    labels (e.g. 0, 1, 2: multiclass or regression?) and for a single label
    value."""
    tokens = list(dict.fromkeys(classes))
    if not tokens:
        raise ConfigError("no labels to tell the task from; pass --task")
    values = {float(t) for t in tokens if _NUMBER.match(t)}
    numeric = all(_NUMBER.match(t) for t in tokens)
    if len(tokens) == 1 or (numeric and len(values) == 1):
        shown = _show_classes(sort_classes(tokens), 3)
        raise ConfigError(f"every label has the same value ({shown}): the task cannot be told "
                          "from one label value; pass --task")
    if not numeric:
        return "multiclass"
    if values <= {0.0, 1.0} or values <= {-1.0, 1.0}:
        return "binary"
    if not all(v.is_integer() for v in values):
        return "regression"
    raise ConfigError(f"labels {_show_classes(sort_classes(tokens), 5)} are integers but not "
                      "0/1 or -1/+1: pass --task multiclass or --task regression")


def _show_classes(classes: Sequence[str], limit: int) -> str:
    """Up to `limit` class names, comma-separated, escaped where not printable ASCII."""
    shown = [c if c.isascii() and c.isprintable() else ascii(c)[1:-1] for c in classes[:limit]]
    if len(classes) > limit:
        shown.append("...")
    return ", ".join(shown)


def _utf8(token: bytes) -> bool:
    try:
        token.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
