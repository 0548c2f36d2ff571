"""Parquet input and output.

:class:`ParquetReader` streams a Parquet file as CSR :class:`Batch` chunks;
it is a drop-in for :class:`fmcli.data.text.TextReader` (same label modes,
classes, limits, ``bad_rows`` and ``lines`` contracts).  It reads with
``pyarrow.parquet.ParquetFile.iter_batches`` over the projected columns
only, so memory is bounded by ``batch_rows`` (and the file's row groups),
never by the file.  :func:`write_parquet` writes the sparse layout.

Two layouts are told apart by the file's schema:

**Sparse** (the file has a list column ``features``): one row per example,

* ``label``: the label (see below);
* ``weight`` (optional, or the ``weight_column`` given): the row's weight,
  a number >= 0;
* ``features``: ``list<integer>``, the row's feature ids;
* ``fields`` (optional): ``list<integer>``, the field of each feature; when
  absent every entry is in field 0, as in libsvm;
* ``values`` (optional): ``list<number>``, the value of each feature; when
  absent every value is 1.0.

The lists of a row must have equal lengths.  A null list is an empty one.
Other columns are not read.

**Wide** (no ``features`` list column): besides the label and weight, each
column of ``columns`` (default: all others, in file order) is a field, its
position in that list being the field index.  Per row and column:

* null (or NaN in a floating-point column): no entry;
* a string, integer or boolean column: a categorical feature with value 1.0
  and id ``feature_hash(column, text)``, ``text`` being the value as a
  string: the string itself, ``str(int)`` for integers, ``"1"``/``"0"`` for
  booleans (so equal values hash equally whatever the column's type);
* a floating-point column: one feature per column, id
  ``feature_hash(column)``, with the number as its value; or, with
  ``float_columns="bucket"``, a categorical feature per bucket, the bucket
  being ``floor(ln(x)^2)`` for x > 2 and ``floor(x)`` otherwise (the
  log-binning of the winning Criteo solution), hashed as the text
  ``"b<bucket>"``.

``feature_hash(column, text)`` is 64-bit FNV-1a of the bytes ``data =
column.encode() + b"\\0" + text.encode()`` (``data = column.encode()`` for a
floating-point column), passed through MurmurHash3's 64-bit finaliser
(which spreads every input bit into the low bits FNV-1a leaves weak) and
taken modulo ``2**hash_bits``::

    h = 0xcbf29ce484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001b3) % 2**64
    h ^= h >> 33; h = (h * 0xff51afd7ed558ccd) % 2**64
    h ^= h >> 33; h = (h * 0xc4ceb93fe53be185) % 2**64
    h ^= h >> 33
    feature_id = h % 2**hash_bits

It depends on nothing but its inputs, so ids are the same in every run and
on every machine.  Each distinct value of a batch is hashed once (the column
is dictionary-encoded first), by numpy over all of them at a time; rows
only index the result.

Labels follow the label modes of the text reader: ``"binary"`` takes a
numeric or boolean column of 0/1 or -1/+1 (not both 0 and -1), ``"real"``
any finite number (within float32 range), ``"class"`` strings, integers
(as ``str(int)``), booleans (``"1"``/``"0"``) or floats (integral ones as
integers, others in shortest form) as class names, which obey the text
reader's rule (no empty name, ``:``, whitespace or control characters).
A null label is an error.

Errors in a row are located as ``FILE:ROW`` (1-based row number within the
file, as in ``Batch.lines``) and name the column; schema problems name the
file and the column.  Like the text reader, up to ``limits.max_bad_rows``
bad rows are skipped (and kept in ``bad_rows``) before one is an error.

Arrays of batches from iterating may be read-only views of Arrow memory
(no copy where the file's types already are the batch's); those of
:meth:`ParquetReader.read_all` are writable.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..atomic import atomic_output
from ..errors import ConfigError, DataError, InputNotFoundError
from .batch import Batch
from .remote import is_url, open_url
from .text import (MAX_ID, ReadLimits, _show_classes, check_label_mode, describe_token, open_input,
                   renumber_classes)

try:  # an optional dependency: only Parquet input and output need it
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
except ImportError:  # pragma: no cover - depends on the environment
    pa = pc = pq = None

__all__ = ["ParquetReader", "TableReader", "write_parquet", "feature_hash", "DEFAULT_BATCH_ROWS",
           "DEFAULT_ROW_GROUP_ROWS"]

DEFAULT_BATCH_ROWS = 65536
DEFAULT_ROW_GROUP_ROWS = 65536
DEFAULT_HASH_BITS = 22

_READ_BUFFER = 8 << 20          # buffered column-chunk reads: bounded memory per column
_VECTOR_BYTES = 256             # bytes of a value hashed by numpy (the rest: in Python)
_MAX_LIST_ENTRIES = 2**31 - 1   # entries of one written row group (int32 list offsets)
_SHOWN_CLASSES = 10

# A class name as the text reader takes it: no ':', separator or control byte.
_BAD_CLASS_CHAR = re.compile(r"[\x00-\x20\x7f:]")

# Check priorities: which of a bad row's problems is reported.
_P_LABEL, _P_MIXED, _P_WEIGHT, _P_LENGTH, _P_ENTRY = 0, 1, 2, 3, 4


def _need_pyarrow() -> None:
    if pa is None:
        raise ConfigError("Parquet input and output need pyarrow: pip install pyarrow")


_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MIX1, _MIX2 = 0xFF51AFD7ED558CCD, 0xC4CEB93FE53BE185
_MASK64 = (1 << 64) - 1


def _fnv1a(data: bytes, h: int = _FNV_OFFSET) -> int:
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & _MASK64
    return h


def _fmix(h: int) -> int:
    h ^= h >> 33
    h = (h * _MIX1) & _MASK64
    h ^= h >> 33
    h = (h * _MIX2) & _MASK64
    return h ^ (h >> 33)


def feature_hash(column: str, value: str | None = None, hash_bits: int = DEFAULT_HASH_BITS) -> int:
    """The feature id of a wide column's value (``value`` None: of a
    floating-point column); see the module docstring."""
    data = column.encode("utf-8")
    if value is not None:
        data += b"\0" + value.encode("utf-8")
    return _fmix(_fnv1a(data)) & ((1 << hash_bits) - 1)


def hash_strings64(column: str, strings) -> np.ndarray:
    """The full 64-bit hash (feature_hash before the modulo) of column and
    each string of an Arrow string or binary array, as uint64, vectorised
    over the strings (one numpy step per byte position)."""
    strings = strings.cast(pa.large_binary())     # the UTF-8 bytes (raw bytes of a binary array)
    n = len(strings)
    if n == 0:
        return np.zeros(0, np.uint64)
    _, offsets_buf, data_buf = strings.buffers()
    offsets = np.frombuffer(offsets_buf, np.int64, count=n + 1, offset=strings.offset * 8)
    data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    lengths = np.diff(offsets)
    order = np.argsort(-lengths, kind="stable")     # longest first: active strings are a prefix
    starts, lengths = offsets[:-1][order], lengths[order]
    h = np.full(n, _fnv1a(column.encode("utf-8") + b"\0"), np.uint64)
    steps = min(int(lengths[0]), _VECTOR_BYTES)
    active = np.searchsorted(-lengths, -np.arange(steps), side="left")  # how many are longer than p
    prime = np.uint64(_FNV_PRIME)
    for p in range(steps):
        m = int(active[p])
        part = h[:m]
        part ^= data[starts[:m] + p]
        part *= prime
    for i in np.flatnonzero(lengths > _VECTOR_BYTES).tolist():  # the rest of long values
        s = int(starts[i])
        h[i] = _fnv1a(data[s + _VECTOR_BYTES : s + int(lengths[i])].tobytes(), int(h[i]))
    out = np.empty(n, np.uint64)
    out[order] = fmix64(h)
    return out


def fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser of every element of a uint64 array (in place)."""
    for shift_mul in (_MIX1, _MIX2, None):
        h ^= h >> np.uint64(33)
        if shift_mul is not None:
            h *= np.uint64(shift_mul)
    return h


def _hash_strings(column: str, strings, hash_bits: int) -> np.ndarray:
    """feature_hash(column, s, hash_bits) of each string of an Arrow string array."""
    return (hash_strings64(column, strings) & np.uint64((1 << hash_bits) - 1)).astype(np.int32)


# ---------------------------------------------------------------------------
# Arrow type helpers


def _is_list(t) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _is_string(t) -> bool:
    return (pa.types.is_string(t) or pa.types.is_large_string(t)
            or getattr(pa.types, "is_string_view", lambda _: False)(t))


def _is_number(t) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t)


def _value_type(t):
    """The type of the values (a dictionary column's value type)."""
    return t.value_type if pa.types.is_dictionary(t) else t


def _type_name(t) -> str:
    """A type as users know it: list<string> rather than list<item: string>."""
    if pa.types.is_fixed_size_list(t):
        return f"fixed_size_list<{_type_name(t.value_type)}>[{t.list_size}]"
    if pa.types.is_large_list(t):
        return f"large_list<{_type_name(t.value_type)}>"
    if pa.types.is_list(t):
        return f"list<{_type_name(t.value_type)}>"
    if pa.types.is_dictionary(t):
        return f"dictionary<{_type_name(t.value_type)}>"
    return str(t)


def _decode(arr):
    """A dictionary-encoded array as a plain one."""
    if pa.types.is_dictionary(arr.type):
        return arr.dictionary_decode()
    return arr


def _valid(arr) -> np.ndarray | None:
    """Row mask of non-null values, or None when there is no null."""
    if arr.null_count == 0:
        return None
    return arr.is_valid().to_numpy(zero_copy_only=False)


def _numbers(arr, dtype=np.float64) -> tuple[np.ndarray, np.ndarray | None]:
    """A numeric or boolean array as numpy `dtype` (nulls as 0) and its
    valid mask (None: no null)."""
    arr = _decode(arr)
    valid = _valid(arr)
    if valid is not None:
        arr = pc.fill_null(arr, pa.scalar(False if pa.types.is_boolean(arr.type) else 0, arr.type))
    if pa.types.is_boolean(arr.type):
        return arr.to_numpy(zero_copy_only=False).astype(dtype), valid
    return arr.to_numpy(zero_copy_only=False).astype(dtype, copy=False), valid


def _encode(arr) -> tuple[np.ndarray, object, np.ndarray | None]:
    """(dictionary index of each row (0 for nulls), the dictionary, valid mask)."""
    if not pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_encode()
    valid = _valid(arr)
    indices = arr.indices
    if valid is not None:
        indices = pc.fill_null(indices, pa.scalar(0, indices.type))
    indices = indices.to_numpy(zero_copy_only=False).astype(np.intp, copy=False)
    dictionary = arr.dictionary
    if dictionary.null_count:  # a valid index to a null value: a null
        present = dictionary.is_valid().to_numpy(zero_copy_only=False)[indices]
        valid = present if valid is None else valid & present
    return indices, dictionary, valid


def _tokens(dictionary) -> list:
    """A dictionary's values as text (None where a number is not finite)."""
    t = dictionary.type
    if _is_string(t):
        return dictionary.to_pylist()
    if pa.types.is_boolean(t):
        return ["1" if v else "0" for v in dictionary.to_pylist()]
    if pa.types.is_integer(t):
        return [str(v) for v in dictionary.to_pylist()]
    out = []
    for v in dictionary.to_numpy(zero_copy_only=False):  # floats: numpy scalars print shortest
        if not math.isfinite(v):
            out.append(None)
        elif float(v).is_integer():
            out.append(str(int(v)))
        else:
            out.append(str(v))
    return out


def _list_parts(arr) -> tuple[np.ndarray, object]:
    """A list array as (row offsets into the flat values, int64 starting at
    0, the flat values); a null list is an empty one."""
    if pa.types.is_fixed_size_list(arr.type):
        arr = arr.cast(pa.list_(arr.type.value_field))
    if arr.null_count == 0:
        offsets = arr.offsets.to_numpy()  # the slice's own n + 1 offsets
        start, end = int(offsets[0]), int(offsets[-1])
        flat = arr.values.slice(start, end - start)
        return offsets.astype(np.int64) - start, flat
    lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False)
    indptr = np.zeros(len(arr) + 1, np.int64)
    np.cumsum(lengths, out=indptr[1:])
    return indptr, arr.flatten()  # flatten skips null lists' segments


def _rows_of(indptr: np.ndarray, entries: np.ndarray) -> np.ndarray:
    """The row of each entry index."""
    return np.searchsorted(indptr, entries, side="right") - 1


def _writable(a: np.ndarray | None) -> np.ndarray | None:
    if a is None or a.flags.writeable:
        return a
    return a.copy()


# ---------------------------------------------------------------------------
# Reading


@dataclass
class _Plan:
    """What to read from a file and how, decided from its schema."""

    kind: str                               # "sparse" or "wide"
    columns: list[str]                      # projected columns, in read order
    label: str
    weight: str | None
    fields: str | None = None               # sparse: optional list columns
    values: str | None = None
    wide: list[tuple[str, str]] = field(default_factory=list)  # (column, "cat"/"num"/"null")


class _Checks:
    """Row-level problems of one record batch, found vectorised; messages
    are only built for the rows reported."""

    def __init__(self, n: int):
        self.n = n
        self.items: list[tuple[int, np.ndarray, Callable[[int], str]]] = []

    def add(self, priority: int, mask: np.ndarray, describe: Callable[[int], str]) -> None:
        if mask.any():
            self.items.append((priority, mask, describe))
            self.items.sort(key=lambda item: item[0])

    def entries(self, priority: int, indptr: np.ndarray, bad: np.ndarray,
                describe: Callable[[int], str]) -> None:
        """Rows holding a bad entry; describe(entry) for the row's first one."""
        where = np.flatnonzero(bad)
        if not where.size:
            return
        rows = np.zeros(self.n, bool)
        rows[_rows_of(indptr, where)] = True

        def row_message(r: int) -> str:
            first = np.flatnonzero(bad[indptr[r] : indptr[r + 1]])[0]
            return describe(int(indptr[r] + first))

        self.add(priority, rows, row_message)

    def bad(self) -> np.ndarray | None:
        if not self.items:
            return None
        mask = self.items[0][1].copy()
        for _, m, _ in self.items[1:]:
            mask |= m
        return mask

    def message(self, r: int) -> str:
        for _, mask, describe in self.items:
            if mask[r]:
                return describe(r)
        raise AssertionError("no problem in a bad row")


class ParquetReader:
    """Stream a Parquet file as CSR batches: the Parquet counterpart of
    :class:`fmcli.data.text.TextReader` (see the module docstring for the
    layouts).

    label_mode is "binary", "real" or "class" as for the text reader.  In
    the class mode labels hold indices into :attr:`classes` as float32:
    with ``classes`` given, a label outside it is a DataError; without, the
    classes are those found, in canonical order after :meth:`read_all` and
    in order of first appearance while iterating.

    ``batch_rows`` bounds the rows of each batch; ``weight_column`` names
    the weight column (default: ``weight`` when the file has one);
    ``columns`` selects and orders the fields of a wide file; ``hash_bits``
    sizes a wide file's feature id space (2**hash_bits ids).

    ``match``: a column map (:meth:`input_map` of the file a model was
    trained on, see fmcli.data.inputmap) to read a wide file by: its
    ``columns`` are found by name and become fields in the map's order,
    whatever the file's order.  A map column the file lacks, a column of
    another kind (categorical or numeric), or, when the map took every
    column, a column the map does not have, is a DataError naming them
    (``map_owner`` names the map's source in it, and ``mismatch_hint`` is
    appended to it); with ``lenient`` it is
    reported to ``on_warning`` instead, and a missing or retyped column
    gives no entries while an extra one is not read.  A sparse file
    ignores ``match``.
    """

    classes: list[str] | None
    """The class names labels index (class mode), else None."""

    def __init__(
        self,
        path: str | os.PathLike,
        label_mode: str = "binary",
        classes: Sequence[str] | None = None,
        limits: ReadLimits = ReadLimits(),
        track_lines: bool = False,
        batch_rows: int = DEFAULT_BATCH_ROWS,
        label_column: str = "label",
        weight_column: str | None = None,
        columns: Sequence[str] | None = None,
        hash_bits: int = DEFAULT_HASH_BITS,
        float_columns: str = "value",
        match: dict | None = None,
        lenient: bool = False,
        on_warning: Callable[[str], None] | None = None,
        mismatch_hint: str = "",
        map_owner: str = "the model",
    ):
        _need_pyarrow()
        classes = check_label_mode(label_mode, classes)
        if batch_rows < 1:
            raise ValueError("batch_rows must be at least 1")
        if not 1 <= hash_bits <= 31:
            raise ConfigError(f"hash bits must be between 1 and 31, got {hash_bits}")
        if weight_column is not None and weight_column == label_column:
            raise ConfigError(f"column '{label_column}' cannot be both the label and the weight")
        if columns is not None:
            columns = [str(c) for c in columns]
            dup = sorted({c for c in columns if columns.count(c) > 1})
            if dup:
                raise ConfigError(f"column '{dup[0]}' is selected more than once")
            for c in (label_column, weight_column):
                if c is not None and c in columns:
                    role = "label" if c == label_column else "weight"
                    raise ConfigError(f"column '{c}' is the {role} column and cannot be "
                                      "a feature column too")
        self.path = path
        self.name = os.fspath(path)
        self.fmt = "parquet"
        self.kind: str | None = None     # "sparse" or "wide", once the file has been opened
        self.label_mode = label_mode
        self.limits = limits
        self.track_lines = track_lines
        self.batch_rows = int(batch_rows)
        self.label_column = label_column
        self.weight_column = weight_column
        self.columns = columns
        self.hash_bits = int(hash_bits)
        if float_columns not in ("value", "bucket"):
            raise ValueError(f"float_columns must be 'value' or 'bucket', got {float_columns!r}")
        self.float_columns = float_columns
        self.bytes_read = 0
        self.lines = 0                   # rows read so far
        self.bad_rows: list[DataError] = []
        self._negative = 0               # binary: negative label in use (1: "0", 2: "-1")
        self._fixed_classes = classes is not None
        self.classes = classes if classes is not None else ([] if label_mode == "class" else None)
        self._codes: dict[str, int] = {c: i for i, c in enumerate(classes or ())}
        # A wide file's columns matched by name against a column map (see
        # _matched); input_map: the map of the file last opened, once known.
        self.match = match
        self.lenient = lenient
        self.on_warning = on_warning
        self.mismatch_hint = mismatch_hint
        self.map_owner = map_owner
        self.input_map: dict | None = None

    # -- public --------------------------------------------------------------

    def __iter__(self) -> Iterator[Batch]:
        """One Batch per record batch of at most batch_rows rows."""
        self._start()
        yield from self._batches()

    def read_all(self) -> Batch:
        """The whole file as one Batch."""
        self._start()
        parts = list(self._batches())
        batch = Batch.concat(parts)
        if len(parts) == 1:
            for name in ("labels", "indptr", "fields", "features", "values", "weights"):
                setattr(batch, name, _writable(getattr(batch, name)))
        if self.track_lines:
            batch.lines = (np.concatenate([p.lines for p in parts]) if parts
                           else np.zeros(0, np.int64))
        if self.label_mode == "class" and not self._fixed_classes:
            self._renumber_classes(batch.labels)
        return batch

    # -- reading -------------------------------------------------------------

    def _start(self) -> None:
        self.bytes_read = 0
        self.lines = 0
        self.bad_rows = []
        self._negative = 0
        if self.label_mode == "class" and not self._fixed_classes:
            self.classes, self._codes = [], {}

    def _open(self):
        """The ParquetFile, and the file's size."""
        from .source import reads_once

        if self.name == "-":
            raise ConfigError("Parquet input cannot be read from standard input; give a file")
        if reads_once(self.name):   # Parquet is read from its end: a pipe cannot be
            raise ConfigError(f"{self.name}: Parquet input cannot be read from a pipe or FIFO; give a file")
        with open_input(self.path):  # the text reader's errors for missing paths
            pass
        try:
            if is_url(self.name):
                source = pa.PythonFile(open_url(self.name), mode="r")
            else:
                source = pa.OSFile(self.name, "r")
        except OSError as exc:
            raise InputNotFoundError(f"{self.name}: cannot open: {exc}") from None
        try:
            pf = pq.ParquetFile(source, buffer_size=_READ_BUFFER, pre_buffer=False)
        except (pa.ArrowException, OSError) as exc:
            source.close()
            raise DataError(f"not a Parquet file ({_reason(exc)})", self.name) from None
        return pf, source

    def describe(self) -> dict:
        """The file's column map (:attr:`input_map`), from its schema alone:
        ``{"layout": "ids"}`` for a sparse file; for a wide one its columns
        as this reader takes them, their kinds and the hash settings."""
        pf, source = self._open()
        try:
            self._plan(pf.schema_arrow)
        finally:
            source.close()
        return self.input_map

    def layout(self) -> str:
        """"ids" (a sparse file, whose rows carry feature ids) or "wide",
        from the schema alone and without matching any column."""
        pf, source = self._open()
        try:
            schema = pf.schema_arrow
        finally:
            source.close()
        return self._layout(schema)

    def _layout(self, schema) -> str:
        names = schema.names
        weight = self.weight_column
        if weight is None and "weight" in names and self.label_column != "weight":
            weight = "weight"
        features = schema.field("features").type if names.count("features") == 1 else None
        sparse = (features is not None and _is_list(features)
                  and "features" not in (self.label_column, weight))
        return "ids" if sparse else "wide"

    def _batches(self) -> Iterator[Batch]:
        pf, source = self._open()
        try:
            plan = self._plan(pf.schema_arrow)
            self.kind = plan.kind
            total = max(pf.metadata.num_rows, 1)
            size = source.size()
            batches = pf.iter_batches(batch_size=self.batch_rows, columns=plan.columns,
                                      use_threads=True)
            row0 = 0
            while True:
                try:
                    rb = next(batches)
                except StopIteration:
                    break
                except (pa.ArrowException, OSError) as exc:
                    raise DataError(f"cannot read Parquet data ({_reason(exc)})",
                                    self.name) from None
                n = rb.num_rows
                if not n:
                    continue
                batch = self._convert(plan, rb, row0)
                row0 += n
                self.lines = row0
                self.bytes_read = min(size, size * row0 // total)
                if batch.n_rows:
                    yield batch
            self.bytes_read = size
        finally:
            source.close()

    def _plan(self, schema) -> _Plan:
        names = schema.names

        def column(name: str, what: str):
            count = names.count(name)
            if count == 0:
                return None
            if count > 1:
                raise DataError(f"column '{name}' ({what}) appears {count} times", self.name)
            return schema.field(name).type

        label_type = column(self.label_column, "the label")
        if label_type is None:
            raise DataError(f"no label column '{self.label_column}' "
                            f"(columns: {_show_classes(names, 12)})", self.name)
        self._check_label_type(label_type)

        weight = self.weight_column
        if weight is None and "weight" in names and self.label_column != "weight":
            weight = "weight"
        if weight is not None:
            weight_type = column(weight, "the weight")
            if weight_type is None:
                raise DataError(f"no weight column '{weight}'", self.name)
            if not _is_number(_value_type(weight_type)):
                raise DataError(f"column '{weight}' must be numeric (row weights), "
                                f"found {_type_name(weight_type)}", self.name)
        head = [self.label_column] + ([weight] if weight else [])

        features_type = column("features", "feature ids")
        if features_type is not None and _is_list(features_type) and "features" not in head:
            if self.columns is not None:
                raise ConfigError(f"{self.name}: selecting columns is for wide Parquet files; "
                                  "this one has a 'features' list column")
            self._check_list("features", features_type, pa.types.is_integer, "integers")
            plan = _Plan("sparse", head + ["features"], self.label_column, weight)
            fields_type = column("fields", "field ids")
            if fields_type is not None and "fields" not in head:
                self._check_list("fields", fields_type, pa.types.is_integer, "integers")
                plan.fields = "fields"
                plan.columns.append("fields")
            values_type = column("values", "feature values")
            if values_type is not None and "values" not in head:
                self._check_list("values", values_type, _is_number, "numbers")
                plan.values = "values"
                plan.columns.append("values")
            self.input_map = {"layout": "ids"}
            return plan

        absent: set[str] = set()
        if self.match is not None:
            chosen, absent = self._matched(names, head, column)
        elif self.columns is not None:
            for name in self.columns:
                if name not in names:
                    raise DataError(f"no column '{name}' (columns: {_show_classes(names, 12)})",
                                    self.name)
            chosen = list(self.columns)
        else:
            chosen = [n for n in names if n not in head]
            dup = sorted({n for n in chosen if chosen.count(n) > 1})
            if dup:
                raise DataError(f"column '{dup[0]}' appears {chosen.count(dup[0])} times",
                                self.name)
        wide = [(name, "absent" if name in absent else self._kind(name, column(name, "a feature column")))
                for name in chosen]
        self.input_map = {
            "layout": "wide",
            "columns": chosen,
            "kinds": [_KIND_NAMES.get(kind, kind) for _, kind in wide],
            # the fields are every column but the label and weight (no column
            # selection): a column added to a later file is then an extra one
            "all_columns": (bool(self.match.get("all_columns")) if self.match is not None
                            else self.columns is None),
            "hash_bits": self.hash_bits,
            "float_columns": self.float_columns,
            "label_column": self.label_column,
            "weight_column": weight,
        }
        read = head + [name for name in chosen if name not in absent]
        return _Plan("wide", read, self.label_column, weight, wide=wide)

    def _kind(self, name: str, t) -> str:
        """How a wide column's values become entries: "cat", "num" or "null"."""
        v = _value_type(t)
        if _is_string(v) or pa.types.is_integer(v) or pa.types.is_boolean(v):
            return "cat"
        if pa.types.is_floating(v):
            return "num"
        if pa.types.is_null(v):
            return "null"
        hint = (" (a sparse file needs a 'features' list column)"
                if _is_list(t) and name in ("fields", "values") else "")
        raise DataError(f"column '{name}' must be a string, integer, boolean or "
                        f"floating-point column, found {_type_name(t)}{hint}", self.name)

    def _matched(self, names: list[str], head: list[str],
                 column: Callable) -> tuple[list[str], set[str]]:
        """The fields of a wide file read by the column map ``match``: its
        columns, in its order, found by name; and those of them to leave
        without entries (lenient: missing, or of another kind)."""
        want = [str(c) for c in self.match["columns"]]
        kinds = dict(zip(want, self.match.get("kinds") or []))
        missing = [c for c in want if c not in names]
        extra = []
        if self.match.get("all_columns"):
            extra = [n for n in names if n not in head and n not in want]
        retyped: dict[str, str] = {}     # column: what changed
        for name in want:
            if name in missing:
                continue
            t = column(name, "a feature column")
            was, now = kinds.get(name), _KIND_NAMES[self._kind(name, t)]
            if was in ("categorical", "numeric") and now in ("categorical", "numeric") and was != now:
                retyped[name] = (f"column '{name}' is {_type_name(t)} ({now}) here but {was} in "
                                 f"{self.map_owner}")
        problems = []
        if missing:
            problems.append(f"lacks {_plural('column', missing)} {_quoted(missing)} of "
                            f"{self.map_owner}")
        if extra:
            problems.append(f"has {_plural('column', extra)} {_quoted(extra)} not in {self.map_owner}")
        problems += retyped.values()
        if problems and not self.lenient:
            raise DataError("; ".join(problems) + f" (columns of {self.map_owner}: {_quoted(want, 12)})"
                            + self.mismatch_hint, self.name)
        if problems and self.on_warning is not None:
            self.on_warning(f"{self.name}: " + "; ".join(problems) + " (missing and retyped columns "
                            "are scored as absent, extra ones ignored)")
        return want, set(missing) | set(retyped)

    def _check_label_type(self, t) -> None:
        v = _value_type(t)
        if self.label_mode == "class":
            if _is_string(v) or _is_number(v) or pa.types.is_boolean(v):
                return
            want = "strings, integers or numbers (class labels)"
        else:
            if _is_number(v) or pa.types.is_boolean(v):
                return
            want = f"numeric or boolean ({self.label_mode} labels)"
        raise DataError(f"column '{self.label_column}' must be {want}, found {_type_name(t)}",
                        self.name)

    def _check_list(self, name: str, t, ok: Callable, what: str) -> None:
        if not (_is_list(t) and ok(t.value_type)):
            raise DataError(f"column '{name}' must be a list of {what}, found {_type_name(t)}",
                            self.name)

    # -- one record batch ----------------------------------------------------

    def _convert(self, plan: _Plan, rb, row0: int) -> Batch:
        n = rb.num_rows
        checks = _Checks(n)
        label = self._labels(rb.column(plan.label), checks)
        weights = None
        if plan.weight is not None:
            weights = self._weights(rb.column(plan.weight), plan.weight, checks)
        if plan.kind == "sparse":
            entries = self._sparse(plan, rb, checks)
        else:
            entries = self._wide(plan, rb, checks)
        if self.label_mode == "binary":
            state = self._mixed(label, checks)
        bad = checks.bad()
        keep = None
        if bad is not None:
            for r in np.flatnonzero(bad).tolist():
                self._bad(checks.message(r), row0 + r + 1)
            keep = ~bad
        if self.label_mode == "binary" and state and not self._negative:
            lab = label[0] if keep is None else label[0][keep]
            if ((lab == 0) | (lab == -1)).any():
                self._negative = state
        labels = self._label_values(label, keep)
        indptr, fields, features, values = entries(keep)
        lines = None
        if self.track_lines:
            lines = np.arange(row0 + 1, row0 + n + 1, dtype=np.int64)
            if keep is not None:
                lines = lines[keep]
        if weights is not None:
            if keep is not None:
                weights = weights[keep]
            if (weights == 1).all():
                weights = None
        return Batch(labels, indptr, fields, features, values, lines, weights)

    # labels

    def _labels(self, arr, checks: _Checks):
        """The label column's values, checked; finished by _label_values."""
        name = self.label_column
        if self.label_mode == "class":
            return self._class_labels(arr, checks)
        lab, valid = _numbers(arr)
        if valid is not None:
            checks.add(_P_LABEL, ~valid, lambda r: f"column '{name}': expected a label, found null")
        else:
            valid = np.ones(len(lab), bool)
        with np.errstate(over="ignore", invalid="ignore"):
            f32 = lab.astype(np.float32)
        found = lambda r: f"found {_show_value(arr, r)}"  # noqa: E731
        if self.label_mode == "binary":
            bad = valid & ~((lab == 0) | (lab == 1) | (lab == -1))
            checks.add(_P_LABEL, bad, lambda r: f"column '{name}': expected a binary label "
                                                f"(0/1 or -1/+1), {found(r)}")
        else:
            bad = valid & ~np.isfinite(f32)
            checks.add(_P_LABEL, bad, lambda r: f"column '{name}': expected a finite number "
                                                f"within float32 range, {found(r)}")
        return f32, valid, arr

    def _mixed(self, label, checks: _Checks) -> int:
        """Binary labels: rows whose negative label is not the one in use
        (the first good row's decides).  Returns the negative label in use."""
        f32, valid, arr = label
        zero, minus = valid & (f32 == 0), valid & (f32 == -1)
        state = self._negative
        if not state:
            bad = checks.bad()
            candidates = np.flatnonzero((zero | minus) if bad is None else (zero | minus) & ~bad)
            if not candidates.size:
                return 0
            state = 1 if f32[candidates[0]] == 0 else 2
        other = minus if state == 1 else zero
        name = self.label_column
        checks.add(_P_MIXED, other, lambda r: (
            f"column '{name}': binary labels use both 0 and -1 for the negative class, found "
            f"{_show_value(arr, r)}; use 0/1 or -1/+1 throughout"))
        return state

    def _class_labels(self, arr, checks: _Checks):
        name = self.label_column
        indices, dictionary, valid = _encode(arr)
        tokens = _tokens(dictionary)
        # per dictionary entry (and one more for null rows of an empty dictionary):
        status = np.zeros(len(tokens) + 1, np.int8)   # 0 ok, 1 no class name, 2 no known class
        codes = np.full(len(tokens) + 1, -1, np.int64)  # -1: a new class
        for d, token in enumerate(tokens):
            if token is None or not token or _BAD_CLASS_CHAR.search(token):
                status[d] = 1
            elif token in self._codes:
                codes[d] = self._codes[token]
            elif self._fixed_classes:
                status[d] = 2
        if valid is None:
            valid = np.ones(len(indices), bool)
        else:
            checks.add(_P_LABEL, ~valid, lambda r: f"column '{name}': expected a label, found null")
        row_status = status[indices]

        def invalid(r: int) -> str:
            token = tokens[indices[r]]
            if token is None:
                return f"column '{name}': expected a finite number as the class label, " \
                       f"found {_show_value(arr, r)}"
            return (f"column '{name}': expected a class label (text without ':', whitespace or "
                    f"control characters), found {describe_token(token.encode('utf-8'))}")

        def unknown(r: int) -> str:
            token = tokens[indices[r]].encode("utf-8")
            return (f"column '{name}': label {describe_token(token)} is not one of the model's "
                    f"classes ({_show_classes(self.classes, _SHOWN_CLASSES)})")

        checks.add(_P_LABEL, valid & (row_status == 1), invalid)
        checks.add(_P_LABEL, valid & (row_status == 2), unknown)
        return indices, codes, tokens

    def _label_values(self, label, keep: np.ndarray | None) -> np.ndarray:
        if self.label_mode != "class":
            f32 = label[0]
            return f32 if keep is None else f32[keep]
        indices, codes, tokens = label
        if keep is not None:
            indices = indices[keep]
        new = codes[indices] < 0
        if new.any():  # classes found in this batch's good rows, in order of first appearance
            uniq, first = np.unique(indices[new], return_index=True)
            for d in uniq[np.argsort(first, kind="stable")].tolist():
                token = tokens[d]
                code = self._codes.get(token)
                if code is None:
                    code = len(self.classes)
                    self.classes.append(token)
                    self._codes[token] = code
                codes[d] = code
        return codes[indices].astype(np.float32)

    def _renumber_classes(self, labels: np.ndarray) -> None:
        """Put the classes found into canonical order, relabelling rows."""
        self.classes = renumber_classes(self.classes, labels)
        self._codes = {c: i for i, c in enumerate(self.classes)}

    # weights

    def _weights(self, arr, name: str, checks: _Checks) -> np.ndarray:
        w, valid = _numbers(arr)
        if valid is not None:
            checks.add(_P_WEIGHT, ~valid,
                       lambda r: f"column '{name}': expected a row weight, found null")
        with np.errstate(over="ignore", invalid="ignore"):
            wf = w.astype(np.float32)
        negative = w < 0
        checks.add(_P_WEIGHT, negative, lambda r: f"column '{name}': expected a row weight >= 0, "
                                                  f"found {_show_value(arr, r)}")
        checks.add(_P_WEIGHT, ~negative & ~np.isfinite(wf), lambda r: (
            f"column '{name}': expected a finite row weight within float32 range, "
            f"found {_show_value(arr, r)}"))
        wf[wf == 0] = 0  # no -0.0
        return wf

    # sparse rows

    def _sparse(self, plan: _Plan, rb, checks: _Checks):
        n = rb.num_rows
        indptr, features = self._ids(rb.column("features"), "features", checks, feature=True)
        lengths = np.diff(indptr)
        fields = values = None
        f_indptr = v_indptr = indptr
        if plan.fields is not None:
            f_indptr, fields = self._ids(rb.column("fields"), "fields", checks, feature=False)
            self._lengths(checks, "fields", np.diff(f_indptr), lengths)
        if plan.values is not None:
            v_indptr, values = self._values(rb.column("values"), "values", checks)
            self._lengths(checks, "values", np.diff(v_indptr), lengths)

        def finish(keep: np.ndarray | None):
            nonlocal indptr, fields, features, values
            if keep is not None:
                features = features[np.repeat(keep, lengths)]
                if fields is not None:
                    fields = fields[np.repeat(keep, np.diff(f_indptr))]
                if values is not None:
                    values = values[np.repeat(keep, np.diff(v_indptr))]
                indptr = np.zeros(int(keep.sum()) + 1, np.int64)
                np.cumsum(lengths[keep], out=indptr[1:])
            nnz = features.shape[0]
            if fields is None:
                fields = np.zeros(nnz, np.int32)
            if values is None:
                values = np.ones(nnz, np.float32)
            return indptr, fields, features, values

        assert len(indptr) == n + 1
        return finish

    def _lengths(self, checks: _Checks, name: str, lengths: np.ndarray,
                 expected: np.ndarray) -> None:
        bad = lengths != expected
        checks.add(_P_LENGTH, bad, lambda r: (
            f"column '{name}' has {int(lengths[r])} entries in this row, "
            f"column 'features' has {int(expected[r])}"))

    def _ids(self, arr, name: str, checks: _Checks, feature: bool) -> tuple[np.ndarray, np.ndarray]:
        indptr, flat = _list_parts(arr)
        ids = self._flat(flat, name, indptr, checks)
        shown = lambda e: f"found {ids[e]}"  # noqa: E731
        if ids.dtype.kind == "i":
            checks.entries(_P_ENTRY, indptr, ids < 0,
                           lambda e: f"column '{name}': expected a non-negative id, {shown(e)}")
        big = ids > MAX_ID
        checks.entries(_P_ENTRY, indptr, big,
                       lambda e: f"column '{name}': expected an id below 2^31, {shown(e)}")
        limit = self.limits.max_feature_id
        if feature and limit < MAX_ID:
            checks.entries(_P_ENTRY, indptr, ~big & (ids > limit), lambda e: (
                f"column '{name}': expected a feature id at most {limit} (--max-feature-id), "
                f"{shown(e)}"))
        with np.errstate(over="ignore"):
            return indptr, ids.astype(np.int32, copy=False)

    def _values(self, arr, name: str, checks: _Checks) -> tuple[np.ndarray, np.ndarray]:
        indptr, flat = _list_parts(arr)
        raw = self._flat(flat, name, indptr, checks)
        with np.errstate(over="ignore", invalid="ignore"):
            values = raw.astype(np.float32, copy=False)
        if raw.dtype.kind == "f":
            checks.entries(_P_ENTRY, indptr, ~np.isfinite(values), lambda e: (
                f"column '{name}': expected a finite number within float32 range, found {raw[e]}"))
        return indptr, values

    def _flat(self, flat, name: str, indptr: np.ndarray, checks: _Checks) -> np.ndarray:
        """A list column's flat values as numpy (nulls are bad entries)."""
        if flat.null_count:
            nulls = flat.is_null().to_numpy(zero_copy_only=False)
            checks.entries(_P_ENTRY, indptr, nulls,
                           lambda e: f"column '{name}': expected a number, found null")
            flat = pc.fill_null(flat, pa.scalar(0, flat.type))
        return flat.to_numpy(zero_copy_only=False)

    # wide rows

    def _wide(self, plan: _Plan, rb, checks: _Checks):
        n, k = rb.num_rows, len(plan.wide)
        # column-major (one row per column): filled column by column, read row by row
        ids = np.zeros((k, n), np.int32)
        values = np.ones((k, n), np.float32)
        present = np.zeros((k, n), bool)
        limit = self.limits.max_feature_id
        for j, (name, kind) in enumerate(plan.wide):
            if kind == "absent":        # a map column left without entries (lenient match)
                continue
            arr = rb.column(name)
            if kind == "cat":
                indices, dictionary, valid = _encode(arr)
                hashes = self._hash_values(name, dictionary)
                np.take(hashes, indices, out=ids[j])
                present[j] = True if valid is None else valid
            elif kind == "num" and self.float_columns == "bucket":
                # a categorical token per bucket: floor(ln(x)^2) above 2, else floor(x)
                x, valid = _numbers(arr)
                ok = ~np.isnan(x) if valid is None else valid & ~np.isnan(x)
                checks.add(_P_ENTRY, ok & ~np.isfinite(x), lambda r, name=name, arr=arr: (
                    f"column '{name}': expected a finite number, found {_show_value(arr, r)}"))
                with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
                    b = np.where(x > 2, np.floor(np.log(np.where(x > 2, x, 3)) ** 2), np.floor(x))
                b = np.where(ok & np.isfinite(b), b, 0).astype(np.int64)
                uniq, inverse = np.unique(b, return_inverse=True)
                hashes = self._hash_values(name, pa.array([f"b{u}" for u in uniq.tolist()]))
                ids[j] = hashes[inverse.reshape(-1)]
                present[j] = ok
            elif kind == "num":
                x, valid = _numbers(arr)
                with np.errstate(over="ignore", invalid="ignore"):
                    values[j] = x
                ok = ~np.isnan(x) if valid is None else valid & ~np.isnan(x)
                checks.add(_P_ENTRY, ok & ~np.isfinite(values[j]), lambda r, name=name, arr=arr: (
                    f"column '{name}': expected a finite number within float32 range, "
                    f"found {_show_value(arr, r)}"))
                ids[j] = feature_hash(name, None, self.hash_bits)
                present[j] = ok
            if kind != "null" and limit < (1 << self.hash_bits) - 1:
                over = present[j] & (ids[j] > limit)
                checks.add(_P_ENTRY, over, lambda r, name=name, j=j: (
                    f"column '{name}': feature id {int(ids[j, r])} (hashed) is above "
                    f"{limit} (--max-feature-id)"))

        def finish(keep: np.ndarray | None):
            nonlocal ids, values, present
            if keep is not None:
                ids, values, present = ids[:, keep], values[:, keep], present[:, keep]
            mask = present.T                      # (rows, columns): entries in row order
            indptr = np.zeros(mask.shape[0] + 1, np.int64)
            np.cumsum(mask.sum(axis=1), out=indptr[1:])
            fields = np.broadcast_to(np.arange(k, dtype=np.int32), mask.shape)[mask]
            return indptr, fields, ids.T[mask], values.T[mask]

        return finish

    def _hash_values(self, name: str, dictionary) -> np.ndarray:
        """The feature id of each value of a dictionary, and one more entry
        (0) for null rows to index."""
        t = dictionary.type
        if pa.types.is_boolean(t):
            dictionary = dictionary.cast(pa.int8())  # "1" / "0"
        if not _is_string(dictionary.type):
            dictionary = dictionary.cast(pa.string())  # integers: as str(int)
        return np.append(_hash_strings(name, dictionary, self.hash_bits), np.int32(0))

    def _bad(self, message: str, row: int) -> None:
        """Count a bad row, or raise once max_bad_rows is used up."""
        error = DataError(message, self.name, row)
        if len(self.bad_rows) >= self.limits.max_bad_rows:
            if self.bad_rows:
                error = DataError(
                    f"{error.message} "
                    f"(more than --max-bad-rows {self.limits.max_bad_rows} bad rows)",
                    self.name, row,
                )
            raise error
        self.bad_rows.append(error)


class TableReader(ParquetReader):
    """A :class:`ParquetReader` over an in-memory ``pyarrow.Table`` instead
    of a file: the same layouts, checks, column matching and encoding, so
    a table gives exactly the batches a Parquet file holding it would.
    ``name`` stands for the file in messages (``NAME:ROW: ...``); the other
    arguments are ParquetReader's."""

    def __init__(self, table, name: str = "<table>", **options):
        super().__init__(name, **options)
        self.table = table
        self.fmt = "table"

    def _open(self):
        raise ConfigError(f"{self.name}: an in-memory table has no file to open")

    def describe(self) -> dict:
        self._plan(self.table.schema)
        return self.input_map

    def layout(self) -> str:
        return self._layout(self.table.schema)

    def _batches(self) -> Iterator[Batch]:
        plan = self._plan(self.table.schema)
        self.kind = plan.kind
        row0 = 0
        for rb in self.table.select(plan.columns).to_batches(max_chunksize=self.batch_rows):
            n = rb.num_rows
            if not n:
                continue
            batch = self._convert(plan, rb, row0)
            row0 += n
            self.lines = row0
            if batch.n_rows:
                yield batch


_KIND_NAMES = {"cat": "categorical", "num": "numeric", "null": "null"}


def _plural(word: str, items: Sequence) -> str:
    return word if len(items) == 1 else word + "s"


def _quoted(names: Sequence[str], limit: int = 8) -> str:
    """'a', 'b', 'c' (at most `limit`, then how many more)."""
    shown = ", ".join(f"'{n}'" for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _show_value(arr, r: int) -> str:
    v = arr[r].as_py()
    if isinstance(v, str):
        return describe_token(v.encode("utf-8"))
    return "null" if v is None else str(v)


def _reason(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


# ---------------------------------------------------------------------------
# Writing


def _slice(batch: Batch, r0: int, r1: int) -> Batch:
    e0, e1 = int(batch.indptr[r0]), int(batch.indptr[r1])
    return Batch(
        labels=batch.labels[r0:r1],
        indptr=batch.indptr[r0 : r1 + 1] - e0,
        fields=batch.fields[e0:e1],
        features=batch.features[e0:e1],
        values=batch.values[e0:e1],
        weights=None if batch.weights is None else batch.weights[r0:r1],
    )


def _schema(weighted: bool, classes: Sequence[str] | None):
    label = pa.string() if classes is not None else pa.float32()
    columns = [pa.field("label", label, nullable=False)]
    if weighted:
        columns.append(pa.field("weight", pa.float32(), nullable=False))
    columns += [
        pa.field("fields", pa.list_(pa.int32()), nullable=False),
        pa.field("features", pa.list_(pa.int32()), nullable=False),
        pa.field("values", pa.list_(pa.float32()), nullable=False),
    ]
    return pa.schema(columns)


def _table(batch: Batch, schema, classes: Sequence[str] | None):
    """One batch (with fewer than 2^31 entries) as a table of `schema`."""
    offsets = pa.array(batch.indptr.astype(np.int32), pa.int32())
    if classes is not None:
        codes = batch.labels.astype(np.int64)
        if batch.n_rows and (not np.array_equal(codes, batch.labels) or codes.min() < 0
                             or codes.max() >= len(classes)):
            raise ValueError("class labels must be indices into classes")
        label = pa.array(np.asarray(classes, dtype=object)[codes], pa.string())
    else:
        label = pa.array(np.asarray(batch.labels, np.float32), pa.float32())
    arrays = [label]
    if "weight" in schema.names:
        w = np.ones(batch.n_rows, np.float32) if batch.weights is None else batch.weights
        arrays.append(pa.array(np.asarray(w, np.float32), pa.float32()))
    for values, dtype, t in ((batch.fields, np.int32, pa.int32()),
                             (batch.features, np.int32, pa.int32()),
                             (batch.values, np.float32, pa.float32())):
        arrays.append(pa.ListArray.from_arrays(offsets, pa.array(np.asarray(values, dtype), t)))
    return pa.Table.from_arrays(arrays, schema=schema)


def write_parquet(
    batches: Batch | Iterable[Batch],
    path: str | os.PathLike,
    row_group_rows: int = DEFAULT_ROW_GROUP_ROWS,
    *,
    classes: Sequence[str] | None = None,
    weights: bool | None = None,
    compression: str = "zstd",
) -> int:
    """Write batches as a sparse-layout Parquet file; returns the rows written.

    Columns: ``label`` (float32; with ``classes``, labels are indices into
    it and the column holds the class names as strings), ``weight``
    (float32, see below), and the list columns ``fields`` and ``features``
    (``list<int32>``) and ``values`` (``list<float32>``).  Rows are written
    in row groups of ``row_group_rows`` (the last one may be smaller).

    ``weights``: True or False to write the weight column or not; None
    (default) writes it when some batch has weights, which for an iterator
    (not a Batch, list or tuple) cannot be known in advance: then it is
    always written (all-1 weights cost next to nothing and read back as no
    weights).  The file replaces ``path`` atomically once complete.
    """
    _need_pyarrow()
    if row_group_rows < 1:
        raise ValueError("row_group_rows must be at least 1")
    if isinstance(batches, Batch):
        batches = [batches]
    if weights is None:
        if isinstance(batches, (list, tuple)):
            weights = any(b.weights is not None for b in batches)
        else:
            weights = True
    if classes is not None:
        classes = [str(c) for c in classes]
    schema = _schema(bool(weights), classes)
    rows = 0
    with atomic_output(path, "wb") as sink:
        writer = pq.ParquetWriter(sink, schema, compression=compression)
        try:
            pending: list[Batch] = []
            pending_rows = 0

            def flush(final: bool) -> None:
                nonlocal pending, pending_rows, rows
                if not pending:
                    return
                batch = Batch.concat(pending)
                pending, pending_rows = [], 0
                r0 = 0
                while r0 < batch.n_rows:
                    r1 = min(r0 + row_group_rows, batch.n_rows)
                    if r1 - r0 < row_group_rows and not final:
                        pending, pending_rows = [_slice(batch, r0, batch.n_rows)], batch.n_rows - r0
                        return
                    # keep a row group's entries addressable by int32 offsets
                    r1 = max(r0 + 1, min(r1, int(np.searchsorted(
                        batch.indptr, batch.indptr[r0] + _MAX_LIST_ENTRIES, side="right")) - 1))
                    table = _table(_slice(batch, r0, r1), schema, classes)
                    writer.write_table(table, row_group_size=row_group_rows)
                    rows += r1 - r0
                    r0 = r1

            for batch in batches:
                if not batch.n_rows:
                    continue
                if batch.weights is not None and not weights:
                    raise ValueError("a batch has weights but weights=False")
                pending.append(batch)
                pending_rows += batch.n_rows
                if pending_rows >= row_group_rows:
                    flush(final=False)
            flush(final=True)
        except BaseException:
            try:
                writer.close()
            except Exception:
                pass
            raise
        writer.close()
    return rows
