"""``fm convert``: between sparse formats, from raw click logs, and between
model files.

* :func:`convert_data`: libffm, libsvm and sparse Parquet into each other,
  streamed block by block (bounded memory), compressed by the output's name.
* :func:`convert_raw`: Criteo/Avazu/CSV logs into libffm, libsvm or Parquet
  through a :class:`~fmcli.data.criteo.Spec` (two passes when rare values
  are to be collapsed), with an optional train/validation split by row hash.
* :func:`convert_model`: an fmcli model to a smaller one (float16 or int8
  parameters, no optimizer state) or to libffm's model file, and libffm's
  model files into fmcli's.

Numbers are written in the shortest form that reads back to the same
float32 (``1`` rather than ``1.0``, ``0.1`` rather than ``0.100000001``), so
that converting and converting back gives the same bytes for files written
that way.  Nothing here prints; progress goes through callbacks.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from .atomic import atomic_output
from .data.batch import Batch
from .data.source import STDIN, compression_from_name, display_name, expand_inputs, \
    format_from_name, reads_once, spooled, strip_compression_suffix
from .data.text import ReadLimits
from .errors import ConfigError, DataError, InputNotFoundError
from .numtext import format_float32

__all__ = ["convert_data", "convert_raw", "convert_model", "format_float32", "render_text",
           "output_format", "valid_sibling", "read_field_map", "ConvertStats", "DATA_FORMATS",
           "MODEL_FORMATS", "MODEL_DTYPES"]

DATA_FORMATS = ("libffm", "libsvm", "parquet")
MODEL_FORMATS = ("fm", "libffm-model", "libffm-bin-model", "onnx", "inference")
MODEL_DTYPES = ("float32", "float16", "int8")
PARQUET_SUFFIXES = (".parquet", ".pq")

_SLICE_ROWS = 1 << 14          # rows rendered at a time
_ROW_GROUP_ROWS = 1 << 16


@dataclass
class ConvertStats:
    """What a conversion did."""

    rows: int = 0
    valid_rows: int = 0            # rows written to the validation file (--split)
    bad_rows: int = 0
    first_bad: str | None = None
    outputs: list[str] = field(default_factory=list)
    spec_path: str | None = None
    distinct: dict = field(default_factory=dict)   # categorical column -> (distinct, kept)
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0
    passes: int = 1
    notes: list = field(default_factory=list)


# ---------------------------------------------------------------------------
# numbers as text (format_float32 itself lives in fmcli.numtext, shared with
# libffm's model files; it stays importable from here)


def _tokens(values: np.ndarray) -> np.ndarray:
    """format_float32 of each value, formatting each distinct value once."""
    values = np.asarray(values, np.float32)
    if values.size and (values == 1).all():
        return np.full(values.size, b"1", "S1")
    uniq, inverse = np.unique(values, return_inverse=True)
    return format_float32(uniq)[inverse.reshape(-1)]


def _triples(lead: bool) -> np.ndarray:
    """0..999 as three ASCII digits and a NUL, as little-endian uint32 words;
    with `lead`, leading zeros are NULs too (but 0 is "0")."""
    out = np.zeros(1000, "<u4")
    for d in range(1000):
        text = str(d).encode().rjust(3, b"\0") if lead else b"%03d" % d
        out[d] = int.from_bytes(text + b"\0", "little")
    return out


_FULL, _LEAD = _triples(False), _triples(True)


def _digits(a: np.ndarray) -> np.ndarray:
    """Non-negative integers below 2^32 as ASCII digits: an (n, w) uint8
    matrix, three digits and a NUL per group of a thousand, leading zeros
    NUL (the NULs are dropped when the text is assembled)."""
    x = np.asarray(a).reshape(-1).astype(np.uint32)
    n = x.size
    top = int(x.max()) if n else 0
    groups = max(1, -(-len(str(top)) // 3))
    words = np.empty((n, groups), "<u4")
    for g in range(groups - 1, -1, -1):       # the last column is the lowest group
        q, r = np.divmod(x, np.uint32(1000))
        if g == groups - 1:
            words[:, g] = np.where(q > 0, _FULL[r], _LEAD[r])
        else:
            words[:, g] = np.where(q > 0, _FULL[r], np.where(x > 0, _LEAD[r], 0))
        x = q
    return words.view(np.uint8).reshape(n, groups * 4)


def _bytes_matrix(strings: np.ndarray) -> np.ndarray:
    """A bytes array (dtype S) as an (n, itemsize) uint8 matrix, NUL-padded."""
    strings = np.ascontiguousarray(strings)
    w = max(strings.dtype.itemsize, 1)
    if strings.dtype.itemsize == 0:
        return np.zeros((strings.size, 1), np.uint8)
    return strings.view(np.uint8).reshape(strings.size, w)


def render_text(labels: np.ndarray, indptr: np.ndarray, fields: np.ndarray | None,
                features: np.ndarray, values: np.ndarray | None) -> bytes:
    """Rows as libffm (with fields) or libsvm (fields None) text.

    labels: the label tokens (dtype S, e.g. b"1" or b"1:0.5"); values: the
    value tokens (dtype S), or None for all 1.  The output is assembled in
    numpy: every piece is a NUL-padded fixed-width row of one byte matrix,
    and the NULs are dropped at the end."""
    n = labels.size
    nnz = int(features.size)
    lab = _bytes_matrix(labels)
    parts: list = [ord(" ")]
    if fields is not None:
        parts += [_digits(fields), ord(":")]
    parts += [_digits(features), ord(":")]
    parts.append(ord("1") if values is None else _bytes_matrix(values))
    entry_width = sum(1 if isinstance(p, int) else p.shape[1] for p in parts)
    width = max(lab.shape[1], entry_width)
    lengths = np.diff(indptr)
    if n and nnz and (lengths == lengths[0]).all():
        # every row has k entries: row r is segments r*(k+2) .. r*(k+2)+k+1
        k = int(lengths[0])
        seg = np.zeros((n, k + 2, width), np.uint8)
        seg[:, 0, : lab.shape[1]] = lab
        at = 0
        for p in parts:
            if isinstance(p, int):
                seg[:, 1 : k + 1, at] = p
                at += 1
            else:
                seg[:, 1 : k + 1, at : at + p.shape[1]] = p.reshape(n, k, p.shape[1])
                at += p.shape[1]
        seg[:, k + 1, 0] = ord("\n")
        return seg[seg != 0].tobytes()
    entries = np.zeros((nnz, entry_width), np.uint8)
    at = 0
    for p in parts:
        if isinstance(p, int):
            entries[:, at] = p
            at += 1
        else:
            entries[:, at : at + p.shape[1]] = p
            at += p.shape[1]
    seg = np.zeros((2 * n + nnz, width), np.uint8)
    rows = np.arange(n, dtype=np.int64)
    seg[2 * rows + indptr[:-1], : lab.shape[1]] = lab
    if nnz:
        row_of = np.repeat(rows, lengths)
        seg[np.arange(nnz, dtype=np.int64) + 2 * row_of + 1, : entries.shape[1]] = entries
    seg[2 * rows + indptr[1:] + 1, 0] = ord("\n")
    return seg[seg != 0].tobytes()


def label_tokens(labels: np.ndarray, weights: np.ndarray | None = None,
                 classes: Sequence[str] | None = None) -> np.ndarray:
    """Label tokens of rows: the number (or class name), with ``:WEIGHT``
    where a row's weight is not 1."""
    if classes is not None:
        names = np.array([c.encode("utf-8") for c in classes] or [b"0"], dtype="S")
        out = names[np.asarray(labels, np.int64)]
    else:
        out = _tokens(labels)
    if weights is not None:
        weighted = weights != 1
        if weighted.any():
            out = out.astype(object)
            wt = _tokens(weights[weighted])
            out[weighted] = [a + b":" + b for a, b in zip(out[weighted].tolist(), wt.tolist())]
            out = out.astype("S")
    return out


# ---------------------------------------------------------------------------
# outputs


def output_format(path: str, to: str | None) -> str:
    """The data format of an output: --to, else from its name."""
    if to is not None:
        return to
    name = strip_compression_suffix(path).lower()
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    fmt = format_from_name(path)
    if fmt is None and name.endswith((".onnx", ".fmi")):
        raise ConfigError(f"{display_name(path)!r} names a model format (ONNX or the C scorer's): its input "
                          "must be an fmcli model file, and this input is read as data")
    if fmt is None:
        raise ConfigError(f"cannot tell the output format from the name {display_name(path)!r}: "
                          "give --to libffm, libsvm or parquet (or name it .ffm, .svm, .parquet)")
    return fmt


def valid_sibling(path: str) -> str:
    """The validation file next to an output: 'tr.ffm.gz' -> 'tr.valid.ffm.gz'."""
    directory, base = os.path.split(path)
    stem = strip_compression_suffix(base)
    compressed = base[len(stem):]
    dot = stem.rfind(".")
    if dot <= 0:
        return os.path.join(directory, stem + ".valid" + compressed)
    return os.path.join(directory, stem[:dot] + ".valid" + stem[dot:] + compressed)


class _Unclosable:
    """stdout's binary stream, which closing leaves open."""

    def __init__(self, base):
        self._base = base
        self.closed = False

    def write(self, data) -> int:
        return self._base.write(data)

    def flush(self) -> None:
        self._base.flush()

    def close(self) -> None:
        self.closed = True
        self._base.flush()

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        raise OSError("stdout is not seekable")


class _Compressed:
    """Writes compressed data: gzip at level 6 (gzip's own default; no name
    or time in the header, so the bytes depend on the data only) with zlib,
    the other codecs through a pyarrow CompressedOutputStream (zstd and lz4
    at their fast defaults, bz2 at level 9 as bzip2)."""

    def __init__(self, raw, codec: str):
        if codec == "gzip":
            import gzip

            self._stream = gzip.GzipFile(filename="", mode="wb", compresslevel=6, fileobj=raw, mtime=0)
            self._raw = raw
            return
        import pyarrow as pa

        if not pa.Codec.is_available(codec):
            raise ConfigError(f"this pyarrow build cannot write {codec} data")
        self._raw = None
        self._stream = pa.CompressedOutputStream(pa.PythonFile(raw, mode="w"), codec)

    def write(self, data) -> int:
        self._stream.write(data)
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self._stream.close()    # GzipFile leaves `raw` open; pyarrow closes it


@contextlib.contextmanager
def open_output(path: str) -> Iterator:
    """A binary stream that writes `path` ('-': stdout) atomically,
    compressed when its name ends in .gz, .bz2, .zst or .lz4."""
    codec = None if path == STDIN else compression_from_name(path)
    if path == STDIN:
        raw = _Unclosable(sys.stdout.buffer)
        stream = _Compressed(raw, codec) if codec else raw
        yield stream
        stream.close() if codec else raw.flush()
        return
    with atomic_output(path, "wb") as f:
        if codec is None:
            yield f
            return
        stream = _Compressed(f, codec)
        yield stream
        stream.close()   # writes the codec's trailer (and closes f, which atomic_output allows)


class TextSink:
    """libffm or libsvm rows to a binary stream."""

    def __init__(self, stream, fmt: str):
        self.stream = stream
        self.fmt = fmt
        self.bytes = 0

    def write(self, batch: Batch, labels: np.ndarray | None = None,
              classes: Sequence[str] | None = None) -> None:
        """Write a batch; `labels`: label tokens (dtype S) to use as they are."""
        if labels is None:
            labels = label_tokens(batch.labels, batch.weights, classes)
        values = None if (batch.values == 1).all() else _tokens(batch.values)
        for r0 in range(0, batch.n_rows, _SLICE_ROWS):
            r1 = min(r0 + _SLICE_ROWS, batch.n_rows)
            e0, e1 = int(batch.indptr[r0]), int(batch.indptr[r1])
            text = render_text(labels[r0:r1], batch.indptr[r0 : r1 + 1] - e0,
                               batch.fields[e0:e1] if self.fmt == "libffm" else None,
                               batch.features[e0:e1], None if values is None else values[e0:e1])
            self.stream.write(text)
            self.bytes += len(text)

    def close(self) -> None:
        pass


class ParquetSink:
    """Rows in the sparse Parquet layout (fmcli.data.parquet) to a stream.

    The weight column is always written (all 1 when the rows have no
    weights, which reads back as no weights); labels are float32, or
    strings with class labels."""

    def __init__(self, stream, class_labels: bool = False, weights: bool = True):
        import pyarrow.parquet as pq

        from .data import parquet as pqmod

        self._pq = pqmod
        self.class_labels = class_labels
        self.schema = pqmod._schema(weights, [] if class_labels else None)
        self.writer = pq.ParquetWriter(stream, self.schema, compression="zstd")
        self.pending: list[Batch] = []
        self.pending_rows = 0
        self.classes: list[str] | None = None
        self.bytes = 0

    def write(self, batch: Batch, labels=None, classes: Sequence[str] | None = None) -> None:
        if self.class_labels:
            self.classes = list(classes or [])
        self.pending.append(batch)
        self.pending_rows += batch.n_rows
        if self.pending_rows >= _ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        if not self.pending:
            return
        batch = Batch.concat(self.pending)
        self.pending, self.pending_rows = [], 0
        table = self._pq._table(batch, self.schema, self.classes if self.class_labels else None)
        self.writer.write_table(table, row_group_size=_ROW_GROUP_ROWS)

    def close(self) -> None:
        self._flush()
        self.writer.close()


def _sink(stream, fmt: str, class_labels: bool = False):
    if fmt == "parquet":
        return ParquetSink(stream, class_labels)
    return TextSink(stream, fmt)


def _check_output(path: str, fmt: str) -> None:
    if fmt == "parquet" and path != STDIN and compression_from_name(path):
        raise ConfigError(f"{path}: Parquet files are compressed inside (zstd); drop the "
                          f"{path[path.rfind('.'):]} suffix")


# ---------------------------------------------------------------------------
# field maps (libsvm -> libffm)


def read_field_map(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A --fields file: lines 'FEATURE FIELD' or 'LO-HI FIELD' (inclusive
    ranges), '#' comments.  Returns sorted (lo, hi, field) arrays."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise InputNotFoundError(f"{path}: no such field map file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputNotFoundError(f"{path}: cannot read: {exc}") from None
    lo, hi, fld = [], [], []
    for i, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        parts = text.split()
        try:
            if len(parts) != 2:
                raise ValueError
            a, _, b = parts[0].partition("-")
            start, end, f = int(a), int(b) if b else int(a), int(parts[1])
            if not (0 <= start <= end < 2**31 and 0 <= f < 2**31) or (b and not a):
                raise ValueError
        except ValueError:
            raise DataError(f"expected 'FEATURE FIELD' or 'LO-HI FIELD' (non-negative integers), "
                            f"found {text!r}", path, i) from None
        lo.append(start)
        hi.append(end)
        fld.append(f)
    if not lo:
        raise DataError("the field map is empty", path)
    order = np.argsort(lo, kind="stable")
    lo_a, hi_a, f_a = (np.array(x, np.int64)[order] for x in (lo, hi, fld))
    overlap = np.flatnonzero(lo_a[1:] <= hi_a[:-1])
    if overlap.size:
        i = int(overlap[0])
        raise DataError(f"features {lo_a[i + 1]}-{hi_a[i + 1]} overlap {lo_a[i]}-{hi_a[i]}", path)
    return lo_a, hi_a, f_a


def _map_fields(batch: Batch, fmap, map_name: str, name: str) -> Batch:
    lo, hi, fld = fmap
    at = np.searchsorted(lo, batch.features, side="right") - 1
    ok = (at >= 0) & (batch.features <= hi[np.maximum(at, 0)])
    if not ok.all():
        e = int(np.flatnonzero(~ok)[0])
        r = int(np.searchsorted(batch.indptr, e, side="right") - 1)
        line = int(batch.lines[r]) if batch.lines is not None else None
        raise DataError(f"feature {int(batch.features[e])} has no field in --fields {map_name}",
                        name, line)
    return Batch(batch.labels, batch.indptr, fld[at].astype(np.int32), batch.features,
                 batch.values, batch.lines, batch.weights)


# ---------------------------------------------------------------------------
# spooling inputs that can be read only once


def _renamed(items, names: dict[str, str]):
    """`items`, with errors naming a spooled input by its own name ('<stdin>', the pipe's path)."""
    try:
        yield from items
    except DataError as exc:
        if exc.path in names:
            raise DataError(exc.message, names[exc.path], exc.line) from None
        raise


def _total_bytes(paths: Sequence[str]) -> int | None:
    """Bytes the inputs decompress to, when known without reading them."""
    total = 0
    for p in paths:
        if reads_once(p) or compression_from_name(p):
            return None
        try:
            total += os.path.getsize(p)
        except OSError:
            return None
    return total


# ---------------------------------------------------------------------------
# between sparse formats


def convert_data(inputs: Sequence[str], output: str, *, src: str = "auto", to: str | None = None,
                 fields: str | None = None, class_labels: bool = False,
                 limits: ReadLimits = ReadLimits(),
                 on_progress: Callable[[str, int, int | None, int], None] | None = None) -> ConvertStats:
    """Convert libffm/libsvm/Parquet inputs (read one after another) into one
    output of format `to` (default: from the output's name).
    on_progress(stage, bytes read, bytes in all or None, rows so far)."""
    from .data.dataset import make_reader

    t0 = time.monotonic()
    dst = output_format(output, to)
    _check_output(output, dst)
    paths = expand_inputs(list(inputs))
    fmap = read_field_map(fields) if fields is not None else None
    stats = ConvertStats(outputs=[output])
    parquet_in = src == "parquet" or (src == "auto" and any(
        p.lower().endswith(PARQUET_SUFFIXES) for p in paths))
    with spooled(paths, parquet_in) as (paths, names), open_output(output) as stream:
        sink = _sink(stream, dst, class_labels)
        total = _total_bytes(paths)
        done = 0
        for path in paths:
            reader = make_reader(path, src if src != "auto" else "auto",
                                 "class" if class_labels else "real", limits, track_lines=True)
            name = names.get(path, display_name(path))
            if path in names and getattr(reader, "fmt", None) != "parquet":
                reader.name = name       # (a Parquet reader opens its name)
            before = 0
            for batch in _renamed(reader, names):
                if fmap is not None:
                    batch = _map_fields(batch, fmap, fields, name)
                sink.write(batch, classes=reader.classes)
                stats.rows += batch.n_rows
                if on_progress is not None:
                    read = int(getattr(reader, "bytes_read", 0))
                    done += read - before
                    before = read
                    on_progress("converting", done, total, stats.rows)
            if fmap is None and dst == "libffm" and getattr(reader, "fmt", None) == "libsvm" \
                    and not stats.notes:
                stats.notes.append(f"{name} is libsvm: every feature is written in field 0 "
                                   "(--fields FILE assigns fields)")
            stats.bad_rows += len(reader.bad_rows)
            if reader.bad_rows and stats.first_bad is None:
                stats.first_bad = str(reader.bad_rows[0])
        sink.close()
        stats.bytes_out = getattr(sink, "bytes", 0)
    stats.seconds = time.monotonic() - t0
    return stats


# ---------------------------------------------------------------------------
# raw logs


def convert_raw(kind: str, inputs: Sequence[str], output: str, *, to: str | None = None,
                min_count: int = 10, hash_space: int = 10**6, numeric_rule: str = "log-square",
                split: float | None = None, spec_out: str | None = None, has_label: bool = True,
                label: str | None = None, categorical: Sequence[str] = (), numeric: Sequence[str] = (),
                delimiter: str = ",", limits: ReadLimits = ReadLimits(), spec=None,
                on_progress: Callable[[str, int, int | None, int], None] | None = None) -> ConvertStats:
    """Convert raw Criteo/Avazu/CSV logs; see the module docstring of
    fmcli.data.criteo for the transform.  With `split`, rows whose hash falls
    below it go to `output`, the others to :func:`valid_sibling` (output);
    rare values are counted on the former only.

    spec: apply this :class:`~fmcli.data.criteo.Spec` (of an earlier
    conversion, e.g. of the training rows) instead of making one: no
    counting pass, and no spec file unless `spec_out` is given."""
    from ._version import __version__
    from .data.criteo import RawReader, VocabularyCounter, split_fraction

    t0 = time.monotonic()
    dst = output_format(output, to)
    _check_output(output, dst)
    if split is not None:
        if not 0.0 < split < 1.0:
            raise ConfigError(f"--split must be between 0 and 1 (the training share), got {split}")
        if output == STDIN:
            raise ConfigError("--split writes two files; give -o FILE, not '-'")
    given = spec
    if spec_out is None and output != STDIN and given is None:
        spec_out = output + ".spec.json"
    paths = expand_inputs(list(inputs))
    options = dict(min_count=min_count, hash_space=hash_space, numeric_rule=numeric_rule,
                   created_by=f"fmcli {__version__}")
    stats = ConvertStats()
    # stdin is read twice (rare values are counted first) or its header is
    # read ahead: spool it
    twice = given is None and (kind != "criteo" or min_count > 1)
    with spooled(paths, twice) as (paths, names):
        if given is None:
            spec = _make_spec(kind, paths, names, options, has_label, label, categorical, numeric,
                              delimiter)
        elif kind != spec.kind:
            raise ConfigError(f"the spec is for {spec.kind} logs, not {kind}")
        spec.validate()
        total = _total_bytes(paths)
        cat = [c for c in spec.columns if c.type == "categorical"]

        def reader(stage: str) -> RawReader:
            done = [0]
            made: list[RawReader] = []

            def on_bytes(n: int) -> None:
                done[0] += n
                if on_progress is not None:
                    on_progress(stage, done[0], total, made[0].rows if made else 0)

            made.append(RawReader(spec, paths, limits=limits, has_label=has_label, names=names,
                                  on_bytes=on_bytes))
            return made[0]

        if cat and min_count > 1 and given is None:
            stats.passes = 2
            counter = VocabularyCounter([c.name for c in cat])
            r = reader("counting")
            counted = 0
            for block in r.blocks():
                if split is not None:
                    block = block.take(np.flatnonzero(split_fraction(block.row_hash) < split))
                counted += block.n_rows
                for c in cat:
                    counter.add(c.name, block.hashes[:, c.field])
            for c in cat:
                h, counts = counter.counts(c.name)
                c.kept = h[counts >= min_count]
                stats.distinct[c.name] = (int(h.size), int(c.kept.size))
            spec.rows = {"counted": counted}
        outputs = [output] + ([valid_sibling(output)] if split is not None else [])
        with contextlib.ExitStack() as stack:
            sinks = [_sink(stack.enter_context(open_output(p)), dst) for p in outputs]
            r = reader("converting")
            for block in r.blocks():
                if split is None:
                    parts = [(0, block)]
                else:
                    train = split_fraction(block.row_hash) < split
                    parts = [(0, block.take(np.flatnonzero(train))),
                             (1, block.take(np.flatnonzero(~train)))]
                for i, part in parts:
                    if not part.n_rows:
                        continue
                    batch = r.batch(part)
                    sinks[i].write(batch, labels=part.label_text if dst != "parquet" else None)
                    if i == 0:
                        stats.rows += part.n_rows
                    else:
                        stats.valid_rows += part.n_rows
            for s in sinks:
                s.close()
            stats.bad_rows = len(r.bad_rows)
            stats.first_bad = str(r.bad_rows[0]) if r.bad_rows else None
            if given is None:
                spec.rows = {**spec.rows, "train": stats.rows, "valid": stats.valid_rows,
                             "bad": stats.bad_rows, "labelled": bool(r.labelled)}
            if spec_out is not None:
                with atomic_output(spec_out, "w") as f:
                    f.write(spec.dumps())
        stats.outputs = outputs
        stats.spec_path = spec_out
    stats.seconds = time.monotonic() - t0
    return stats


def _make_spec(kind: str, paths: list[str], names: dict, options: dict, has_label: bool,
               label: str | None, categorical: Sequence[str], numeric: Sequence[str], delimiter: str):
    from .data.criteo import KINDS, Spec

    if kind not in KINDS:
        raise ConfigError(f"unknown raw kind {kind!r} (expected {', '.join(KINDS)})")
    if kind == "criteo":
        if label is not None or categorical or numeric:
            raise ConfigError("--label, --categorical and --numeric are for 'fm convert csv'")
        return Spec.criteo(**options)
    header = _read_header(paths[0], names, "," if kind == "avazu" else delimiter)
    if kind == "avazu":
        if label is not None or categorical or numeric:
            raise ConfigError("--label, --categorical and --numeric are for 'fm convert csv'")
        if options["numeric_rule"] != "log-square":
            raise ConfigError("--numeric-rule does not apply to Avazu (no numeric column)")
        return Spec.avazu(header, **options)
    if label is None and has_label:
        raise ConfigError("fm convert csv needs --label COLUMN (or --no-label)")
    return Spec.csv(header, label if has_label else None, categorical, numeric, delimiter, **options)


def _read_header(path: str, names: dict, delimiter: str) -> list[str]:
    """The column names on the first non-blank line of an input."""
    import csv

    from .data.source import open_input

    name = names.get(path, display_name(path))
    with open_input(path) as f:
        head = b""
        while True:
            chunk = f.read(1 << 16)
            head += chunk
            text = head.lstrip(b"\r\n")
            if not chunk or b"\n" in text:
                break
    line = head.lstrip(b"\r\n").split(b"\n", 1)[0].rstrip(b"\r")
    if line.startswith(b"\xef\xbb\xbf"):
        line = line[3:]
    if not line:
        raise DataError("empty input: expected a header line naming the columns", name)
    try:
        return [c.strip() for c in next(csv.reader([line.decode("utf-8")], delimiter=delimiter))]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read the header ({exc})", name, 1) from None


# ---------------------------------------------------------------------------
# models


def convert_model(source: str, output: str, *, src: str = "fm", to: str = "fm",
                  dtype: str | None = None, strip_state: bool = False) -> ConvertStats:
    """Convert a model file: fmcli to fmcli (``dtype``: float32, float16 or
    int8 parameters; ``strip_state``: no optimizer state), libffm's model
    files to fmcli (`src` "libffm-model"), fmcli FFM models to libffm's
    (`to` "libffm-model": text, "libffm-bin-model": binary), any model to
    an ONNX graph (`to` "onnx", fmcli.onnx_export: needs the onnx extra) and
    any model to the C scorer's inference file (`to` "inference",
    fmcli.inference; ``dtype``: its storage)."""
    from . import libffm
    from .model import load_model

    t0 = time.monotonic()
    if output == STDIN:
        raise ConfigError("model files are written to a file; give -o FILE")
    if src not in ("fm", "libffm-model"):
        raise ConfigError(f"unknown model format {src!r}")
    try:
        stats = ConvertStats(bytes_in=os.path.getsize(source), outputs=[output])
    except OSError:
        raise InputNotFoundError(f"{source}: no such model file") from None
    model = libffm.read_model(source) if src == "libffm-model" else load_model(source)
    if to == "fm":
        try:
            model.save(output, include_state=not strip_state, dtype=dtype or model.stored_dtype)
        except ValueError as exc:   # a weight beyond float16's range
            raise ConfigError(f"{source} cannot be stored as {dtype}: {exc}") from None
    elif to in ("libffm-model", "libffm-bin-model"):
        if dtype not in (None, "float32"):
            raise ConfigError("--dtype applies to fmcli model files; libffm's hold float32")
        libffm.write_model(model, output, binary=to == "libffm-bin-model",
                           include_state=not strip_state)
    elif to == "onnx":
        if dtype not in (None, "float32"):
            raise ConfigError("--dtype applies to fmcli model files; an ONNX graph holds float32")
        from .onnx_export import export_onnx

        exported = export_onnx(model, output, source=source)
        stats.outputs = exported.outputs
        stats.bytes_out = exported.bytes_out
        stats.seconds = time.monotonic() - t0
        return stats
    elif to == "inference":
        # the C scorer's file (fmcli.inference, fmcli/include/fmscore.h)
        from .inference import default_storage, source_checksum, write_inference

        try:
            write_inference(model, output, storage=dtype or default_storage(model),
                            source_crc=source_checksum(source) if src == "fm" else 0)
        except ValueError as exc:   # a weight beyond float16's range
            raise ConfigError(f"{source} cannot be stored as {dtype}: {exc}") from None
    else:
        raise ConfigError(f"cannot write a model as {to!r} (expected {', '.join(MODEL_FORMATS)})")
    stats.bytes_out = os.path.getsize(output)
    stats.seconds = time.monotonic() - t0
    return stats
