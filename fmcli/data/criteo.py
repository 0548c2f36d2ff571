"""Raw click logs (Criteo, Avazu, generic CSV) to sparse rows, and the spec
that makes the transform repeatable.

A :class:`Spec` says how one raw row becomes one libffm row: which column is
the label, which columns are features (each its own field, in the order of
:attr:`Spec.columns`), how each is turned into a *token*, which categorical
tokens are frequent enough to keep, and how a token becomes a feature id.
``fm convert`` writes the spec as JSON next to its output, ``fm train
--spec`` stores it in the model, and ``fm predict`` applies it to raw input,
so that training and serving run the very same code on the very same rules.

Tokens of a feature column (``""`` is the missing token: an empty value)::

    categorical   the value itself; a value seen fewer than min_count times
                  in the training rows becomes the column's rare token "<rare>"
    numeric       log-square rule: x > 2 -> "b" + floor(ln(x)^2),
                  x <= 2 -> "v" + floor(x) (so 0 -> "v0", -2 -> "v-2"),
                  missing -> "";  value rule: one feature per column,
                  token "<value>", the number as the value, missing -> no entry
    hour          Avazu's YYMMDDHH -> the hour of the day, "00".."23"

A token's feature id is ``H(column, token) mod hash_space`` where ``H`` is
64-bit FNV-1a over ``column (UTF-8) + b"\\0" + token (UTF-8)`` followed by
MurmurHash3's 64-bit finaliser (:func:`token_hash`; for a power-of-two space
this is :func:`fmcli.data.parquet.feature_hash`).  Every entry has value 1
(the value rule aside) and field = the column's position in the spec.

The kept vocabulary of a categorical column is stored as the sorted 64-bit
``H`` of its kept values; a value is kept exactly when its ``H`` is in that
set, in ``fm convert`` as in ``fm predict``.

Reading is by blocks of whole lines (bounded memory): each block is checked
with numpy (column counts, line numbers), parsed into string columns by
pyarrow's CSV reader, and transformed one distinct value at a time (a
column is dictionary-encoded first), never one Python call per row.
"""

from __future__ import annotations

import base64
import csv
import json
import math
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError, DataError, InputNotFoundError
from .batch import Batch
from .parquet import _FNV_OFFSET, _FNV_PRIME, _fmix, _fnv1a, fmix64, hash_strings64   # the same hash
from .source import BOM as _BOM, display_name, line_blocks, open_input
from .text import ReadLimits, describe_token

try:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pcsv
except ImportError:  # pragma: no cover - pyarrow is a dependency
    pa = pc = pcsv = None

__all__ = ["Spec", "ColumnSpec", "RawReader", "RawBlock", "VocabularyCounter", "token_hash",
           "hash_tokens", "load_spec", "attach_spec", "model_spec", "looks_raw", "KINDS", "SPEC_VERSION", "CRITEO_COLUMNS", "MISSING", "RARE",
           "numeric_token"]

SPEC_VERSION = 1
KINDS = ("criteo", "avazu", "csv")
NUMERIC_RULES = ("log-square", "value")
DEFAULT_MIN_COUNT = 10
DEFAULT_HASH_SPACE = 10**6
MISSING = ""
RARE = "<rare>"
VALUE_TOKEN = "<value>"

CRITEO_INTEGERS = [f"I{i}" for i in range(1, 14)]
CRITEO_CATEGORICAL = [f"C{i}" for i in range(1, 27)]
CRITEO_COLUMNS = ["label"] + CRITEO_INTEGERS + CRITEO_CATEGORICAL

BLOCK_BYTES = 16 << 20

_VECTOR_BYTES = 256

_INTEGER = re.compile(r"[+-]?[0-9]+\Z")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\Z")
_HOUR = re.compile(r"[0-9]{6}([01][0-9]|2[0-3])\Z")


def _need_pyarrow() -> None:
    if pa is None:
        raise ConfigError("converting raw logs needs pyarrow: pip install pyarrow")


# ---------------------------------------------------------------------------
# hashing


def token_hash(column: str, token: str) -> int:
    """H(column, token): the 64-bit hash of a column's token (module docstring)."""
    return _fmix(_fnv1a(column.encode("utf-8") + b"\0" + token.encode("utf-8")))


def hash_tokens(column: str, strings) -> np.ndarray:
    """H(column, s) of every string of a pyarrow string or binary array (or
    a list of str), as uint64, vectorised over the strings (one numpy step
    per byte position)."""
    _need_pyarrow()
    if not isinstance(strings, (pa.Array, pa.ChunkedArray)):
        strings = pa.array(list(strings), pa.string())
    if isinstance(strings, pa.ChunkedArray):
        strings = strings.combine_chunks()
    return hash_strings64(column, strings)


def _mix_rows(h: np.ndarray, column_hashes: np.ndarray) -> np.ndarray:
    """Fold one column's per-row hashes into the rows' running hashes."""
    h ^= column_hashes
    h *= np.uint64(_FNV_PRIME)
    return h


def _finish_rows(h: np.ndarray) -> np.ndarray:
    return fmix64(h.copy())


def split_fraction(row_hashes: np.ndarray) -> np.ndarray:
    """Where each row falls in [0, 1): the top 53 bits of its row hash."""
    return (row_hashes >> np.uint64(11)).astype(np.float64) * 2.0**-53


def numeric_token(x: float) -> str:
    """The log-square rule's token of a number (module docstring)."""
    if x > 2:
        return f"b{math.floor(math.log(x) ** 2)}"
    return f"v{math.floor(x)}"


# ---------------------------------------------------------------------------
# the spec


@dataclass
class ColumnSpec:
    """One feature column: its name, field and kind of transform."""

    name: str
    field: int
    type: str                            # "numeric", "categorical" or "hour"
    kept: np.ndarray | None = None       # categorical: sorted uint64 H of kept values (None: keep all)


@dataclass
class Spec:
    """How raw rows become sparse rows; see the module docstring."""

    kind: str
    columns: list[ColumnSpec]
    label: str | None                   # the label column's name
    delimiter: str = "\t"
    header: bool = False                # the first line of each input names the columns
    layout: list[str] | None = None     # headerless input: the columns' names, in order
    drop: list[str] = field(default_factory=list)
    numeric_rule: str = "log-square"
    min_count: int = DEFAULT_MIN_COUNT
    hash_space: int = DEFAULT_HASH_SPACE
    rows: dict = field(default_factory=dict)   # what the counting pass saw (informational)
    created_by: str | None = None

    # -- construction ----------------------------------------------------------
    @classmethod
    def criteo(cls, **options) -> "Spec":
        columns = [ColumnSpec(n, i, "numeric") for i, n in enumerate(CRITEO_INTEGERS)]
        columns += [ColumnSpec(n, 13 + i, "categorical") for i, n in enumerate(CRITEO_CATEGORICAL)]
        return cls("criteo", columns, "label", delimiter="\t", header=False, layout=list(CRITEO_COLUMNS),
                   **options)

    @classmethod
    def avazu(cls, header: Sequence[str], **options) -> "Spec":
        """Avazu's train/test CSV: drop id, click is the label, hour -> hour of day."""
        names = list(header)
        columns = []
        for name in names:
            if name in ("id", "click"):
                continue
            columns.append(ColumnSpec(name, len(columns), "hour" if name == "hour" else "categorical"))
        if not columns:
            raise ConfigError("the Avazu header names no feature column")
        return cls("avazu", columns, "click", delimiter=",", header=True, drop=["id"], **options)

    @classmethod
    def csv(cls, header: Sequence[str], label: str | None, categorical: Sequence[str],
            numeric: Sequence[str], delimiter: str = ",", **options) -> "Spec":
        """A CSV file with a header: the named columns, in the header's order."""
        names = list(header)
        wanted = {c: "categorical" for c in categorical}
        for c in numeric:
            if c in wanted:
                raise ConfigError(f"column '{c}' is given as both categorical and numeric")
            wanted[c] = "numeric"
        if label is not None and label in wanted:
            raise ConfigError(f"column '{label}' is the label and cannot be a feature too")
        if not wanted:
            raise ConfigError("name the feature columns with --categorical and/or --numeric")
        missing = [c for c in list(wanted) + ([label] if label else []) if c not in names]
        if missing:
            raise ConfigError(f"no column '{missing[0]}' in the header (columns: {_show(names)})")
        columns = [ColumnSpec(n, 0, wanted[n]) for n in names if n in wanted]
        for i, c in enumerate(columns):
            c.field = i
        return cls("csv", columns, label, delimiter=delimiter, header=True, **options)

    def validate(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"unknown spec kind {self.kind!r} (expected {', '.join(KINDS)})")
        if self.numeric_rule not in NUMERIC_RULES:
            raise ConfigError(f"unknown numeric rule {self.numeric_rule!r}")
        if not 1 <= self.hash_space <= 2**31:
            raise ConfigError(f"the hash space must be 1..2^31, got {self.hash_space}")
        if self.min_count < 1:
            raise ConfigError(f"the minimum count must be at least 1, got {self.min_count}")
        if len(self.delimiter) != 1 or self.delimiter in "\r\n\"":
            raise ConfigError(f"the delimiter must be one character other than a quote or a line "
                              f"break, got {self.delimiter!r}")
        names = [c.name for c in self.columns]
        if len(set(names)) != len(names) or not names:
            raise ConfigError("the spec's feature columns must be distinct and at least one")
        for i, c in enumerate(self.columns):
            if c.field != i or c.type not in ("numeric", "categorical", "hour"):
                raise ConfigError(f"spec column {c.name!r}: bad field or type")
        if not self.header and not self.layout:
            raise ConfigError("a spec for headerless input needs its column layout")

    # -- JSON --------------------------------------------------------------------
    def _base_dict(self) -> dict:
        return {
            "fmcli_spec": SPEC_VERSION,
            "kind": self.kind,
            "input": {"delimiter": self.delimiter, "header": self.header, "layout": self.layout,
                      "label": self.label, "drop": list(self.drop),
                      "quoting": self.kind != "criteo",
                      "ragged": self.kind == "criteo"},
            "columns": [{"name": c.name, "field": c.field, "type": c.type}
                        | ({"kept": int(c.kept.size)} if c.kept is not None else {})
                        for c in self.columns],
            "numeric_rule": self.numeric_rule,
            "min_count": self.min_count,
            "tokens": {"missing": MISSING, "rare": RARE, "value": VALUE_TOKEN,
                       "numeric": "x > 2: 'b' + floor(ln(x)^2); x <= 2: 'v' + floor(x)",
                       "hour": "YYMMDDHH -> HH"},
            "hash": {"function": "fnv1a64-fmix64", "input": "column UTF-8, byte 0, token UTF-8",
                     "space": self.hash_space, "feature_id": "hash mod space"},
            "rows": dict(self.rows),
            "created_by": self.created_by,
        }

    def to_json(self) -> dict:
        """The spec as a JSON object (the vocabularies base64-encoded)."""
        out = self._base_dict()
        vocab = {c.name: base64.b64encode(np.asarray(c.kept, "<u8").tobytes()).decode("ascii")
                 for c in self.columns if c.kept is not None}
        out["vocabulary"] = {"encoding": "base64 of sorted little-endian uint64 hashes",
                             "columns": vocab}
        return out

    def dumps(self) -> str:
        """The JSON text: one line per top-level key and per column."""
        data = self.to_json()
        parts = []
        for key, value in data.items():
            if key == "columns":
                inner = ",\n".join("  " + json.dumps(c, ensure_ascii=False) for c in value)
                parts.append(f' "columns": [\n{inner}\n ]')
            elif key == "vocabulary":
                cols = ",\n".join(f"  {json.dumps(k, ensure_ascii=False)}: {json.dumps(v)}"
                                   for k, v in value["columns"].items())
                parts.append(f' "vocabulary": {{"encoding": {json.dumps(value["encoding"])}, '
                             f'"columns": {{\n{cols}\n }}}}' if cols else
                             f' "vocabulary": {json.dumps(value)}')
            else:
                parts.append(f" {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}")
        return "{\n" + ",\n".join(parts) + "\n}\n"

    def to_header(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(header object, arrays) for a model file: the vocabularies go into
        one int64 array, ``spec_vocabulary``, not into the JSON header."""
        out = self._base_dict()
        parts, where, offset = [], {}, 0
        for c in self.columns:
            if c.kept is not None:
                parts.append(np.asarray(c.kept, np.uint64))
                where[c.name] = [offset, int(c.kept.size)]
                offset += int(c.kept.size)
        out["vocabulary"] = {"encoding": "array", "array": "spec_vocabulary", "columns": where}
        arrays = {}
        if parts:
            arrays["spec_vocabulary"] = np.concatenate(parts).view(np.int64)
        return out, arrays

    @classmethod
    def from_json(cls, data: dict, arrays: dict[str, np.ndarray] | None = None,
                  where: str = "spec") -> "Spec":
        """A spec from :meth:`to_json`'s object, or :meth:`to_header`'s with its arrays."""
        try:
            if not isinstance(data, dict):
                raise TypeError("not a JSON object")
            version = data.get("fmcli_spec")
            if version != SPEC_VERSION:
                raise ConfigError(f"{where}: spec version {version!r} is not supported "
                                  f"(this fmcli reads version {SPEC_VERSION})")
            inp = data["input"]
            vocab = data.get("vocabulary") or {"columns": {}}
            columns = []
            for c in data["columns"]:
                kept = None
                name = str(c["name"])
                if name in vocab["columns"]:
                    entry = vocab["columns"][name]
                    if vocab.get("encoding") == "array":
                        if arrays is None or vocab["array"] not in arrays:
                            raise ValueError(f"the vocabulary array {vocab['array']!r} is missing")
                        off, count = int(entry[0]), int(entry[1])
                        kept = np.asarray(arrays[vocab["array"]][off : off + count]).view(np.uint64)
                        if kept.size != count:
                            raise ValueError("the vocabulary array is too short")
                    else:
                        kept = np.frombuffer(base64.b64decode(entry, validate=True), "<u8").astype(np.uint64)
                    if kept.size > 1 and not (kept[1:] > kept[:-1]).all():
                        raise ValueError(f"column {name!r}: vocabulary hashes are not sorted")
                columns.append(ColumnSpec(name, int(c["field"]), str(c["type"]), kept))
            spec = cls(
                kind=str(data["kind"]), columns=columns,
                label=None if inp.get("label") is None else str(inp["label"]),
                delimiter=str(inp["delimiter"]), header=bool(inp["header"]),
                layout=None if inp.get("layout") is None else [str(x) for x in inp["layout"]],
                drop=[str(x) for x in inp.get("drop") or []],
                numeric_rule=str(data["numeric_rule"]), min_count=int(data["min_count"]),
                hash_space=int(data["hash"]["space"]), rows=dict(data.get("rows") or {}),
                created_by=data.get("created_by"),
            )
            if data["hash"].get("function") != "fnv1a64-fmix64":
                raise ValueError(f"unknown hash function {data['hash'].get('function')!r}")
        except ConfigError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise ConfigError(f"{where}: not a valid preprocessing spec ({type(exc).__name__}: {exc})") \
                from None
        try:
            spec.validate()
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        return spec

    # -- the transform -------------------------------------------------------------
    @property
    def n_fields(self) -> int:
        return len(self.columns)

    def column_names_for(self, header: Sequence[str] | None, has_label: bool) -> list[str]:
        """The names of an input's columns: its header, or the spec's layout
        (without the label column when the input has none)."""
        if header is not None:
            return list(header)
        assert self.layout is not None
        if has_label:
            return list(self.layout)
        return [n for n in self.layout if n != self.label]

    def special_hashes(self) -> dict[str, tuple[int, int]]:
        """(H(column, rare), H(column, value)) of every column."""
        return {c.name: (token_hash(c.name, RARE), token_hash(c.name, VALUE_TOKEN)) for c in self.columns}


def attach_spec(model, spec: Spec) -> None:
    """Store a spec in a model (header key ``spec``, vocabularies in the
    ``spec_vocabulary`` array), after checking that it can describe the
    model's data: feature ids below its hash space, no more fields than it
    has columns."""
    s = model.spec
    ids = model.id_map()      # a model of compact ids: its slots' original ids
    space = s.n_features if ids is None else ids.space
    if space > spec.hash_space:
        raise ConfigError(f"the spec hashes into {spec.hash_space:,} ids but the training data have "
                          f"feature ids up to {space - 1:,}: they were not made with this spec")
    if s.n_fields > spec.n_fields:
        raise ConfigError(f"the spec has {spec.n_fields} fields but the training data have "
                          f"{s.n_fields}: they were not made with this spec")
    header, arrays = spec.to_header()
    model.meta["spec"] = header
    model.extras = {k: v for k, v in model.extras.items() if not k.startswith("spec_")}
    model.extras.update(arrays)


def model_spec(model, where: str = "model") -> Spec | None:
    """The spec a model carries (fm train --spec), or None."""
    data = model.meta.get("spec")
    if not data:
        return None
    return Spec.from_json(data, model.extras, where=f"{where}: spec")


def looks_raw(path: str, spec: Spec) -> bool:
    """Whether an input holds raw rows for `spec` rather than libffm/libsvm
    text or Parquet: by its name (.ffm, .svm, .parquet, ... are never raw),
    else by its first lines (one that is not a libffm/libsvm row, or a CSV
    header).  Compressed stdin cannot be told: it is taken as sparse, and so
    is a pipe or FIFO (it cannot be peeked at; --raw says it is raw)."""
    import sys

    from .source import STDIN, format_from_name, reads_once, sniff_compression, strip_compression_suffix

    name = strip_compression_suffix(path).lower()
    if format_from_name(path) is not None or name.endswith((".parquet", ".pq")):
        return False
    if path == STDIN:
        peek = getattr(sys.stdin.buffer, "peek", None)
        head = peek(1 << 16) if peek is not None else b""
        if not head or sniff_compression(head[:10]):
            return False
    elif reads_once(path):
        return False
    else:
        try:
            with open_input(path) as f:
                head = f.read(1 << 16)
        except (DataError, InputNotFoundError):
            return False
    lines = [ln for ln in head.split(b"\n")[:-1] or head.split(b"\n") if ln.strip()][:5]
    if not lines:
        return False
    delim = spec.delimiter.encode("utf-8")
    if delim.isspace():   # libffm/libsvm rows may be tab-separated too
        return any(delim in ln and not _SPARSE_ROW.match(ln.strip()) for ln in lines)
    return any(delim in ln.split(b"#", 1)[0] for ln in lines)


_SPARSE_ROW = re.compile(rb"\S+(?:[ \t]+(?:[0-9]+:){1,2}[^\s:]+)*(?:[ \t]*#.*)?\Z")


def load_spec(path: str | os.PathLike) -> Spec:
    """Read a spec file written by ``fm convert``."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise InputNotFoundError(f"{path}: no such spec file") from None
    except OSError as exc:
        raise InputNotFoundError(f"{path}: cannot open: {exc.strerror or exc}") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{path}: not a JSON spec file ({exc})") from None
    return Spec.from_json(data, where=path)


def _show(names: Sequence[str], limit: int = 12) -> str:
    shown = [n if n.isprintable() else ascii(n) for n in list(names)[:limit]]
    return ", ".join(shown) + (", ..." if len(names) > limit else "")


# ---------------------------------------------------------------------------
# reading raw rows


@dataclass
class RawBlock:
    """Rows of one block, transformed up to (not including) rare collapsing."""

    lines: np.ndarray                  # int64 (n,): 1-based line of each row in its file
    name: str                          # the file's name in messages
    labels: np.ndarray                 # float32 (n,)
    label_text: np.ndarray             # bytes dtype S (n,): the label as written ("0" without a label)
    hashes: np.ndarray                 # uint64 (n, n_fields): H(column, token) before rare collapsing
    present: np.ndarray | None         # bool (n, n_fields), None: every entry present
    values: np.ndarray | None          # float32 (n, n_fields) for the value rule, None: all 1
    row_hash: np.ndarray               # uint64 (n,): hash of the row's label and tokens

    @property
    def n_rows(self) -> int:
        return int(self.labels.shape[0])

    def take(self, rows: np.ndarray) -> "RawBlock":
        return RawBlock(self.lines[rows], self.name, self.labels[rows], self.label_text[rows],
                        self.hashes[rows], None if self.present is None else self.present[rows],
                        None if self.values is None else self.values[rows], self.row_hash[rows])


class RawReader:
    """Read raw rows of one or more inputs through a spec, block by block.

    Iterating yields :class:`Batch` objects (labels, fields, feature ids,
    values, lines): a drop-in for the text reader in ``fm predict``.
    :meth:`blocks` yields :class:`RawBlock` objects for ``fm convert`` (label
    text, hashes before rare collapsing, row hashes for the split) and
    :meth:`batch` turns one into a Batch.

    has_label: the inputs have the label column (for headerless input; for
    input with a header, a missing label column means no labels).  Rows
    without labels get label 0.
    """

    def __init__(self, spec: Spec, paths: Sequence[str], *, limits: ReadLimits = ReadLimits(),
                 has_label: bool = True, block_bytes: int = BLOCK_BYTES,
                 names: dict[str, str] | None = None,
                 on_bytes: Callable[[int], None] | None = None):
        _need_pyarrow()
        spec.validate()
        self.spec = spec
        self.paths = list(paths)
        self.limits = limits
        self.has_label = has_label
        self.block_bytes = block_bytes
        self.names = names or {}           # path -> name in messages (a spooled stdin)
        self.on_bytes = on_bytes
        self.bad_rows: list[DataError] = []
        self.rows = 0
        self.labelled = None               # whether the inputs had labels (after reading)
        self.lines = 0
        self.name = ", ".join(self._name(p) for p in self.paths)
        self.fmt = "raw"
        self._special = spec.special_hashes()
        self._kept_rare = {c.name: (c.kept, self._special[c.name][0]) for c in spec.columns
                           if c.type == "categorical" and c.kept is not None}

    def _name(self, path: str) -> str:
        return self.names.get(path, display_name(path))

    # -- public -------------------------------------------------------------------
    def __iter__(self) -> Iterator[Batch]:
        for block in self.blocks():
            yield self.batch(block)

    def blocks(self) -> Iterator[RawBlock]:
        self.bad_rows = []
        self.rows = 0
        for path in self.paths:
            yield from self._file_blocks(path)

    def batch(self, block: RawBlock) -> Batch:
        """The sparse rows of a block: rare values collapsed, ids hashed."""
        spec = self.spec
        n, m = block.n_rows, spec.n_fields
        h = block.hashes
        if self._kept_rare:
            h = h.copy()
            for c in spec.columns:
                if c.name in self._kept_rare:
                    kept, rare = self._kept_rare[c.name]
                    col = h[:, c.field]
                    if kept.size:
                        at = np.minimum(np.searchsorted(kept, col), kept.size - 1)
                        known = kept[at] == col
                    else:
                        known = np.zeros(n, bool)
                    col[~known] = np.uint64(rare)
        ids = (h % np.uint64(spec.hash_space)).astype(np.int32)
        fields = np.broadcast_to(np.arange(m, dtype=np.int32), (n, m))
        values = block.values
        if block.present is None:
            indptr = np.arange(0, n * m + 1, m, dtype=np.int64)
            feats = ids.reshape(-1)
            flds = np.ascontiguousarray(fields).reshape(-1)
            vals = np.ones(n * m, np.float32) if values is None else values.reshape(-1)
        else:
            mask = block.present
            indptr = np.zeros(n + 1, np.int64)
            np.cumsum(mask.sum(axis=1), out=indptr[1:])
            feats, flds = ids[mask], fields[mask]
            vals = np.ones(feats.size, np.float32) if values is None else values[mask]
        return Batch(block.labels, indptr, flds, feats, np.ascontiguousarray(vals, np.float32),
                     block.lines)

    # -- one file ---------------------------------------------------------------------
    def _file_blocks(self, path: str) -> Iterator[RawBlock]:
        name = self._name(path)
        names: list[str] | None = None
        layout = None
        for buf, line0 in self._line_blocks(path, name):
            if self.spec.header and names is None:
                # the first non-blank line is the header
                buf, line0, names = self._take_header(buf, line0, name)
                if names is None:
                    continue
                layout = self._layout(names, name)
            elif layout is None:
                names = self.spec.column_names_for(None, self.has_label)
                layout = self._layout(names, name)
            if not buf:
                continue
            block = self._block(buf, line0, name, names, layout)
            if block is not None and block.n_rows:
                self.rows += block.n_rows
                yield block

    def _layout(self, names: list[str], name: str) -> dict:
        """Where the label and each feature column are among an input's columns."""
        spec = self.spec
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise DataError(f"column '{dup[0]}' appears {names.count(dup[0])} times in the header", name)
        pos = {n: i for i, n in enumerate(names)}
        missing = [c.name for c in spec.columns if c.name not in pos]
        if missing:
            raise DataError(f"no column '{missing[0]}' in the header (columns: {_show(names)})", name)
        label = pos.get(spec.label) if spec.label is not None else None
        if spec.header:
            has_label = label is not None
        else:
            has_label = self.has_label and label is not None
        if self.labelled is None:
            self.labelled = has_label
        elif self.labelled != has_label:
            raise DataError("some inputs have a label column and some do not", name)
        return {"label": label if has_label else None, "n": len(names),
                "cols": {c.name: pos[c.name] for c in spec.columns}}

    def _take_header(self, buf: bytes, line0: int, name: str):
        pos = 0
        while pos < len(buf):
            nl = buf.find(b"\n", pos)
            line = buf[pos:nl]
            line0 += 1
            pos = nl + 1
            if line.strip(b"\r"):
                text = line.rstrip(b"\r")
                if text.startswith(_BOM):
                    text = text[len(_BOM):]
                try:
                    decoded = text.decode("utf-8")
                except UnicodeDecodeError:
                    raise DataError("the header is not UTF-8 text", name, line0) from None
                names = next(csv.reader([decoded], delimiter=self.spec.delimiter))
                return buf[pos:], line0, [n.strip() for n in names]
        return b"", line0, None

    def _line_blocks(self, path: str, name: str) -> Iterator[tuple[bytes, int]]:
        """(buffer of whole lines, each ending in a newline; lines before it)."""
        max_line = self.limits.max_line_bytes

        def long_line(line: int, head: bytes) -> None:
            self._report([(line, f"line longer than {max_line} bytes (--max-line-bytes), "
                                 f"starting {describe_token(head)}")], name)

        f = open_input(path)
        try:
            for buf, cut, lines in line_blocks(f, name, self.block_bytes, max_line, long_line, self.on_bytes):
                chunk = buf[:cut]
                yield (chunk if chunk.endswith(b"\n") else chunk + b"\n"), lines
        finally:
            f.close()

    # -- one block ------------------------------------------------------------------
    def _block(self, buf: bytes, line0: int, name: str, names: list[str], layout: dict) -> RawBlock | None:
        spec = self.spec
        n_cols = layout["n"]
        a = np.frombuffer(buf, np.uint8)
        nl = np.flatnonzero(a == 10)
        starts = np.empty_like(nl)
        starts[0] = 0
        starts[1:] = nl[:-1] + 1
        ends = nl.copy()
        # CRLF: the CR is not part of the line
        has_cr = np.zeros(nl.size, bool)
        crs = np.flatnonzero(a == 13)
        if crs.size:
            crlf = np.zeros(nl.size, bool)
            nonempty = ends > starts
            crlf[nonempty] = a[ends[nonempty] - 1] == 13
            ends = ends - crlf
            line_of_cr = np.searchsorted(nl, crs)
            inner = np.ones(crs.size, bool)
            inner[crs == ends[line_of_cr]] = False       # the CR of a CRLF
            has_cr[line_of_cr[inner]] = True
        lengths = ends - starts
        line_numbers = line0 + 1 + np.arange(nl.size, dtype=np.int64)
        blank = lengths == 0
        # delimiters per line
        delim = ord(spec.delimiter)
        dpos = np.flatnonzero(a == delim)
        per_line = np.diff(np.searchsorted(dpos, nl), prepend=0)
        bad: list[tuple[int, str]] = []
        bad_mask = has_cr & ~blank
        for i in np.flatnonzero(bad_mask).tolist():
            bad.append((int(line_numbers[i]), "carriage return inside a line (CR-only line endings?)"))
        expected = n_cols - 1
        quoted = np.zeros(nl.size, bool)
        if spec.kind != "criteo":
            qpos = np.flatnonzero(a == ord('"'))
            if qpos.size:
                quoted = np.diff(np.searchsorted(qpos, nl), prepend=0) > 0
        counts = per_line + 1
        for i in np.flatnonzero(quoted & ~blank & ~bad_mask).tolist():
            text = bytes(a[starts[i]:ends[i]]).decode("utf-8", "replace")
            try:
                counts[i] = len(next(csv.reader([text], delimiter=spec.delimiter, strict=True)))
            except csv.Error as exc:
                counts[i] = -1
                bad_mask[i] = True
                bad.append((int(line_numbers[i]), f"malformed quoting ({exc})"))
        ok = ~blank & ~bad_mask
        if spec.kind == "criteo":
            wrong = ok & (counts > n_cols)        # fewer: trailing empty columns were stripped
        else:
            wrong = ok & (counts != n_cols)
        for i in np.flatnonzero(wrong).tolist():
            bad.append((int(line_numbers[i]), f"expected {n_cols} columns, found {int(counts[i])}"))
        keep_line = ok & ~wrong
        need = np.where(keep_line, np.maximum(expected - per_line, 0), 0) if spec.kind == "criteo" else None
        kept_lines = np.flatnonzero(keep_line)
        rows_lines = line_numbers[kept_lines]
        table = None
        if kept_lines.size:
            keep_bytes = np.repeat(keep_line, (nl - starts) + 1)
            data = a[keep_bytes]
            if crs.size:
                # drop the CR of CRLF line ends
                drop = np.zeros(a.size, bool)
                crlf_at = ends[keep_line & (ends < nl)]
                drop[crlf_at] = True
                data = a[keep_bytes & ~drop]
            if need is not None and need[kept_lines].any():
                lens = (ends - starts)[kept_lines] + 1
                nlpos = np.cumsum(lens) - 1
                counts_needed = need[kept_lines]
                data = np.insert(data, np.repeat(nlpos, counts_needed), np.uint8(delim))
            table = self._parse(data.tobytes(), names, name, rows_lines)
        good, block_bad = (None, []) if table is None else self._transform(table, layout, name, rows_lines)
        bad += block_bad
        if bad:
            bad.sort()
            self._report(bad, name)
        self.lines = int(line_numbers[-1]) if line_numbers.size else line0
        return good

    def _report(self, bad: list[tuple[int, str]], name: str) -> None:
        for line, message in bad:
            error = DataError(message, name, line)
            if len(self.bad_rows) >= self.limits.max_bad_rows:
                if self.bad_rows:
                    error = DataError(f"{message} (more than --max-bad-rows {self.limits.max_bad_rows} "
                                      "bad rows)", name, line)
                raise error
            self.bad_rows.append(error)

    def _parse(self, data: bytes, names: list[str], name: str, lines: np.ndarray):
        spec = self.spec
        read = pcsv.ReadOptions(column_names=[f"c{i}" for i in range(len(names))],
                                block_size=max(1 << 20, len(data) + 1), use_threads=True)
        parse = pcsv.ParseOptions(delimiter=spec.delimiter,
                                  quote_char=False if spec.kind == "criteo" else '"',
                                  escape_char=False, newlines_in_values=False, ignore_empty_lines=False)
        # binary, not string: values are hashed as the bytes they are, and a
        # value that is not UTF-8 is no reason to reject a block
        convert = pcsv.ConvertOptions(column_types={f"c{i}": pa.binary() for i in range(len(names))},
                                      strings_can_be_null=False, quoted_strings_can_be_null=False)
        try:
            table = pcsv.read_csv(pa.BufferReader(data), read_options=read, parse_options=parse,
                                  convert_options=convert)
        except pa.ArrowInvalid as exc:
            raise DataError(f"cannot parse rows at lines {int(lines[0])}-{int(lines[-1])} "
                            f"({str(exc).splitlines()[0]})", name) from None
        if table.num_rows != lines.size:
            raise DataError(f"cannot parse rows at lines {int(lines[0])}-{int(lines[-1])} "
                            f"(found {table.num_rows} rows in {lines.size} lines)", name)
        return table

    def transform_texts(self, table, name: str):
        """The rows of an Arrow table of raw texts, one column per spec column in
        the spec's order and no label (e.g. values of a DataFrame): (the block
        before rare values are collapsed, see batch(); [(row from 1, problem)])."""
        layout = {"label": None, "n": table.num_columns,
                  "cols": {c.name: j for j, c in enumerate(self.spec.columns)}}
        return self._transform(table, layout, name, np.arange(1, table.num_rows + 1, dtype=np.int64))

    def _transform(self, table, layout: dict, name: str, lines: np.ndarray):
        spec = self.spec
        n, m = table.num_rows, spec.n_fields
        hashes = np.empty((n, m), np.uint64)
        present = None
        values = None
        problems: dict[int, str] = {}   # row -> first problem (by column order)

        def flag(rows: np.ndarray, message: Callable[[int], str]) -> None:
            for r in rows.tolist():
                if r not in problems:
                    problems[r] = message(r)

        # the label
        lab_idx = layout["label"]
        if lab_idx is not None:
            arr = table.column(lab_idx).combine_chunks()
            enc = arr.dictionary_encode()
            idx = enc.indices.to_numpy(zero_copy_only=False).astype(np.intp, copy=False)
            raw = enc.dictionary.to_pylist()
            texts = [t.decode("utf-8", "replace") for t in raw]
            ok = np.array([bool(_NUMBER.match(t)) for t in texts], bool)
            nums = np.array([float(t) if o else 0.0 for t, o in zip(texts, ok)], np.float64)
            with np.errstate(over="ignore"):
                f32 = nums.astype(np.float32)
            ok &= np.isfinite(f32)
            row_ok = ok[idx]
            if not row_ok.all():
                lname = spec.label
                flag(np.flatnonzero(~row_ok), lambda r: f"column '{lname}': expected a numeric label, "
                                                        f"found {describe_token(raw[idx[r]])}")
            labels = f32[idx]
            encoded = np.array(raw or [b"0"], dtype="S")
            label_text = encoded[idx]
            label_hash = hash_tokens(spec.label, enc.dictionary)[idx]
        else:
            labels = np.zeros(n, np.float32)
            label_text = np.full(n, b"0", dtype="S1")
            label_hash = np.zeros(n, np.uint64)
        row_hash = np.full(n, _FNV_OFFSET, np.uint64)
        _mix_rows(row_hash, label_hash)
        for c in spec.columns:
            arr = table.column(layout["cols"][c.name]).combine_chunks()
            enc = arr.dictionary_encode()
            idx = enc.indices.to_numpy(zero_copy_only=False).astype(np.intp, copy=False)
            dictionary = enc.dictionary
            if c.type == "categorical":
                h = hash_tokens(c.name, dictionary)
                hashes[:, c.field] = h[idx]
            elif c.type == "hour":
                texts = [t.decode("utf-8", "replace") for t in dictionary.to_pylist()]
                ok = np.array([bool(_HOUR.match(t)) for t in texts], bool)
                tokens = [t[-2:] if o else MISSING for t, o in zip(texts, ok)]
                h = hash_tokens(c.name, tokens)
                hashes[:, c.field] = h[idx]
                if not ok.all():
                    row_bad = ~ok[idx]
                    cname = c.name
                    flag(np.flatnonzero(row_bad), lambda r, cname=cname, texts=texts, idx=idx: (
                        f"column '{cname}': expected an hour YYMMDDHH, found "
                        f"{describe_token(texts[idx[r]].encode())}"))
            else:
                texts = [t.decode("utf-8", "replace") for t in dictionary.to_pylist()]
                parsed, ok = self._numbers(texts, integers=spec.kind == "criteo")
                if spec.numeric_rule == "value":
                    if present is None:
                        present = np.ones((n, m), bool)
                        values = np.ones((n, m), np.float32)
                    miss = np.array([t == "" for t in texts], bool)
                    with np.errstate(over="ignore"):
                        v32 = parsed.astype(np.float32)
                    ok &= miss | np.isfinite(v32)
                    present[:, c.field] = ~miss[idx]
                    values[:, c.field] = np.where(miss, 1.0, v32)[idx]
                    hashes[:, c.field] = np.uint64(self._special[c.name][1])
                    row_tok = np.where(miss, np.uint64(token_hash(c.name, MISSING)),
                                       hash_tokens(c.name, [t.strip() for t in texts]))[idx]
                else:
                    tokens = [MISSING if t == "" else (numeric_token(x) if o else MISSING)
                              for t, x, o in zip(texts, parsed.tolist(), ok.tolist())]
                    uniq = sorted(set(tokens))
                    uh = hash_tokens(c.name, uniq)
                    lookup = dict(zip(uniq, uh.tolist()))
                    h = np.array([lookup[t] for t in tokens], np.uint64)
                    hashes[:, c.field] = h[idx]
                    row_tok = None
                if not ok.all():
                    kind = "an integer" if spec.kind == "criteo" else "a number"
                    cname = c.name
                    flag(np.flatnonzero(~ok[idx]), lambda r, cname=cname, texts=texts, idx=idx, kind=kind: (
                        f"column '{cname}': expected {kind} or nothing, found "
                        f"{describe_token(texts[idx[r]].encode())}"))
                if spec.numeric_rule == "value":
                    _mix_rows(row_hash, row_tok)
                    continue
            _mix_rows(row_hash, hashes[:, c.field])
        bad = []
        keep = None
        if problems:
            rows = np.array(sorted(problems), np.intp)
            bad = [(int(lines[r]), problems[r]) for r in rows.tolist()]
            keep = np.ones(n, bool)
            keep[rows] = False
        block = RawBlock(lines, name, labels, label_text, hashes, present, values, _finish_rows(row_hash))
        if keep is not None:
            block = block.take(np.flatnonzero(keep))
        return block, bad


    @staticmethod
    def _numbers(texts: list[str], integers: bool) -> tuple[np.ndarray, np.ndarray]:
        """Each distinct text as a number; ok is False for a bad one (the
        empty text, missing, is ok and 0)."""
        out = np.zeros(len(texts), np.float64)
        ok = np.ones(len(texts), bool)
        pattern = _INTEGER if integers else _NUMBER
        for i, t in enumerate(texts):
            if t == "":
                continue
            s = t.strip() if not integers else t
            if pattern.match(s):
                try:
                    v = float(int(s)) if integers else float(s)
                except OverflowError:
                    v = math.inf
                if math.isfinite(v):
                    out[i] = v
                    continue
            ok[i] = False
        return out, ok


class VocabularyCounter:
    """Occurrences of each H(column, token) per column, in bounded pieces:
    a block's distinct hashes and counts are queued and merged into the
    column's sorted table once the queue outgrows it (16 bytes per distinct
    value in the end, never a Python object per value)."""

    def __init__(self, columns: Sequence[str]):
        self._main = {c: (np.zeros(0, np.uint64), np.zeros(0, np.int64)) for c in columns}
        self._pending: dict[str, list] = {c: [] for c in columns}
        self._pending_size = dict.fromkeys(columns, 0)

    def add(self, column: str, hashes: np.ndarray) -> None:
        if not hashes.size:
            return
        u, cnt = np.unique(hashes, return_counts=True)
        self._pending[column].append((u, cnt.astype(np.int64)))
        self._pending_size[column] += u.size
        if self._pending_size[column] > max(self._main[column][0].size, 1 << 20):
            self._merge(column)

    def _merge(self, column: str) -> None:
        parts = [self._main[column]] + self._pending[column]
        self._pending[column], self._pending_size[column] = [], 0
        h = np.concatenate([p[0] for p in parts])
        c = np.concatenate([p[1] for p in parts])
        u, inv = np.unique(h, return_inverse=True)
        counts = np.bincount(inv.reshape(-1), weights=c, minlength=u.size).astype(np.int64)
        self._main[column] = (u, counts)

    def counts(self, column: str) -> tuple[np.ndarray, np.ndarray]:
        """(sorted distinct hashes, their counts)."""
        if self._pending[column]:
            self._merge(column)
        return self._main[column]

    def kept(self, column: str, min_count: int) -> np.ndarray:
        h, c = self.counts(column)
        return h[c >= min_count]
