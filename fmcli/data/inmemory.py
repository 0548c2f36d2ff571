"""In-memory data as Batches: numpy arrays, scipy sparse matrices and
pandas or polars DataFrames, for the Python API (no temporary files).

:func:`as_batch` turns ``X`` (and optional labels and row weights) into
one :class:`~fmcli.data.batch.Batch`:

* a 2-D numpy array (or anything ``np.asarray`` makes one, such as a list
  of lists) or a scipy sparse matrix or array of any format: entry
  ``(r, j)`` is feature ``j`` of row ``r`` with value ``X[r, j]``; exact
  zeros are not entries (sparse semantics, so a dense array and its CSR
  form give the same Batch).  Column ``j`` is field ``j``, or
  ``fields[j]`` when an integer array ``fields`` of one field per column
  is given (one-hot data: every column of a categorical variable in that
  variable's field).  A CSR matrix already holding float32 values and
  int32 indices, sorted, without duplicates or stored zeros, is used as
  is: the Batch's ``features`` and ``values`` are its arrays (no copy).
* a pandas or polars DataFrame (or a pyarrow Table): encoded exactly as
  a wide Parquet file of the same columns is by
  :class:`fmcli.data.parquet.ParquetReader` (one field per column; string,
  categorical, integer and boolean values hashed into ``2**hash_bits``
  ids per column, floating-point columns as values or buckets, nulls and
  NaN as no entry), so a model fitted on a frame scores a Parquet file of
  the same columns identically.  The returned :class:`FrameSchema` says
  how the frame was read; given back as ``schema``, a later frame is read
  the same way, its columns matched by name.

Bad input is a ``ValueError`` (or ``TypeError`` for values that are not
numbers) with a one-line message, as scikit-learn's own checks expect.
The arrays of a Batch may share memory with ``X`` and with each other
(``fields`` may be ``features`` itself): treat them as read-only.

pandas, polars and scipy are never imported here: an object is recognised
by the module of its type, and converted by its own methods.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..config import Config
from ..errors import ConfigError, DataError
from .batch import Batch
from .text import MAX_ID

__all__ = ["as_batch", "FrameSchema"]

_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class FrameSchema:
    """How a DataFrame was read: the wide-column input map that
    fmcli.data.parquet produces for the same table (``layout``,
    ``columns`` (the fields, in field order), ``kinds``, ``all_columns``,
    ``hash_bits``, ``float_columns``, ``label_column``, ``weight_column``),
    and every column name of the frame in its order (scikit-learn's
    ``feature_names_in_``)."""

    input_map: dict
    feature_names: tuple[str, ...] = field(default=())

    @property
    def columns(self) -> list[str]:
        """The columns read as fields, in field order."""
        return list(self.input_map["columns"])

    def to_map(self) -> dict:
        """The input map to store in a model header (``meta["input"]``):
        the wide map with ``feature_names`` added."""
        return {**self.input_map, "feature_names": list(self.feature_names)}

    @classmethod
    def from_map(cls, m: Mapping) -> "FrameSchema":
        """The schema stored by :meth:`to_map` (or a wide Parquet model's
        input map, whose feature names are then its columns)."""
        if not isinstance(m, Mapping) or m.get("layout") != "wide":
            raise ValueError("not a wide-column input map (a model fitted on a DataFrame or on "
                             "wide Parquet has one)")
        d = dict(m)
        names = d.pop("feature_names", None)
        if names is None:
            names = d["columns"]
        return cls(d, tuple(str(n) for n in names))


# ---------------------------------------------------------------------------
# the entry point


def as_batch(X, y=None, *, sample_weight=None, fields=None, schema: FrameSchema | None = None,
             hash_bits: int | None = None, float_columns: str | None = None
             ) -> tuple[Batch, FrameSchema | None]:
    """``X`` (rows), labels ``y`` and row weights ``sample_weight`` as one
    Batch, and the FrameSchema of a DataFrame (None for arrays); see the
    module docstring.

    y: None (labels all 0) or numbers, one per row, kept as float32
    labels.  sample_weight: None or finite numbers >= 0, one per row.
    fields: for arrays None (column j is field j) or one non-negative
    integer per column; for frames None (every column, in the frame's
    order), a list of column names (those, in that order) or a dict
    ``{column: field}`` numbering the chosen columns 0..k-1.  schema: the
    FrameSchema of the frame a model was fitted on, to read a later frame
    (or an array, its columns taken by position) the same way.
    hash_bits, float_columns: how a frame's values become feature ids, at
    fit time (default: Config's); with ``schema`` they come from it.
    """
    kind = _kind_of(X)
    if kind == "frame":
        table = _to_table(X)
        n = table.num_rows
    elif schema is not None:
        table = _array_table(X, schema)
        kind, n = "frame", table.num_rows
    elif kind == "sparse":
        X = _as_csr(X)
        n = X.shape[0]
    else:
        X = _as_dense(X)
        n = X.shape[0]
    labels = _labels(y, n)
    weights = _weights(sample_weight, n)
    if kind == "frame":
        batch, out = _from_table(table, labels, fields, schema, hash_bits, float_columns)
    elif kind == "sparse":
        batch, out = _from_csr(X, labels, fields), None
    else:
        batch, out = _from_dense(X, labels, fields), None
    batch.weights = weights
    return batch, out


def _kind_of(X) -> str:
    """"frame", "sparse" or "array", from the module of X's type (pandas,
    polars, pyarrow and scipy are never imported to find out)."""
    module = type(X).__module__ or ""
    root = module.split(".")[0]
    name = type(X).__name__
    if root in ("pandas", "polars"):
        if name == "DataFrame":
            return "frame"
        raise ValueError(f"X must be 2-D (a DataFrame, an array or a sparse matrix), got a "
                         f"{root} {name}")
    if root == "pyarrow" and name == "Table":
        return "frame"
    if module.startswith("scipy.sparse"):
        return "sparse"
    return "array"


# ---------------------------------------------------------------------------
# labels and weights


def _numeric_1d(a, what: str, n: int) -> np.ndarray:
    """A 1-D array of finite numbers that fit float32, one per row, as float32."""
    a = np.asarray(a)
    if a.ndim != 1:
        raise ValueError(f"{what} must be 1-D (one value per row), got shape {a.shape}")
    if a.shape[0] != n:
        raise ValueError(f"{what} has {a.shape[0]} values but X has {n} rows")
    if a.dtype.kind == "O":
        a = a.astype(np.float64)
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{what} must be numeric, got dtype {a.dtype}")
    if a.dtype.kind == "f":
        _check_finite(a, what)
    return a.astype(np.float32)


def _labels(y, n: int) -> np.ndarray:
    if y is None:
        return np.zeros(n, np.float32)
    return _numeric_1d(y, "y", n)


def _weights(w, n: int) -> np.ndarray | None:
    if w is None:
        return None
    w = _numeric_1d(w, "sample_weight", n)
    if (w < 0).any():
        raise ValueError(f"sample_weight must be >= 0, found {float(w[w < 0][0])}")
    w[w == 0] = 0     # no -0.0
    return w


def _check_finite(a: np.ndarray, what: str) -> None:
    """NaN, infinity and values beyond float32 are refused, in words that
    scikit-learn's check_array uses."""
    if a.size == 0 or (np.isfinite(a).all() and a.dtype.itemsize <= 4):
        return          # the common case: one pass
    if np.isnan(a).any():
        raise ValueError(f"Input {what} contains NaN.")
    if np.isinf(a).any():
        raise ValueError(f"Input {what} contains infinity or a value too large for dtype('float32').")
    if a.dtype.itemsize > 4 and (np.abs(a) > _FLOAT32_MAX).any():
        big = a[np.abs(a) > _FLOAT32_MAX][0]
        raise ValueError(f"Input {what} contains a value too large for dtype('float32'): {float(big)!r}")


# ---------------------------------------------------------------------------
# arrays


def _as_dense(X) -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 2:
        hint = ("; reshape a single feature with X.reshape(-1, 1) or a single row with "
                "X.reshape(1, -1)") if X.ndim < 2 else ""
        raise ValueError(f"X must be 2-D (rows by columns), got an array of shape {X.shape}{hint}")
    if X.dtype.kind in "USV":
        raise ValueError(f"X must be numeric, got an array of dtype {X.dtype}; encode strings as "
                         "numbers or pass a DataFrame")
    if X.dtype.kind == "O":
        X = X.astype(np.float64)     # float()'s TypeError names a value that is not a number
    if X.dtype.kind not in "biuf":
        raise ValueError(f"X must be numeric, got an array of dtype {X.dtype}")
    _check_columns(X.shape[1])
    if X.dtype.kind == "f":
        _check_finite(X, "X")
    return X


def _check_columns(n_columns: int) -> None:
    if n_columns > MAX_ID + 1:
        raise ValueError(f"X has {n_columns} columns; feature ids must stay below 2^31")


def _field_of_column(fields, n_columns: int) -> np.ndarray | None:
    """fields: None, or the field of each column as int32 (checked)."""
    if fields is None:
        return None
    f = np.asarray(fields)
    if f.ndim != 1 or f.shape[0] != n_columns:
        raise ValueError(f"fields must give one field per column of X ({n_columns}), "
                         f"got shape {f.shape}")
    if f.dtype.kind not in "iu":
        if f.dtype.kind == "f" and np.all(np.isfinite(f)) and np.all(f == np.round(f)):
            f = f.astype(np.int64)
        else:
            raise ValueError(f"fields must be integers (a field index per column), got dtype {f.dtype}")
    if f.size and f.min() < 0:
        raise ValueError(f"fields must be >= 0, found {int(f.min())}")
    if f.size and f.max() > MAX_ID:
        raise ValueError(f"fields must be below 2^31, found {int(f.max())}")
    return f.astype(np.int32)


def _from_dense(X: np.ndarray, labels: np.ndarray, fields) -> Batch:
    field_of = _field_of_column(fields, X.shape[1])
    mask = X != 0
    indptr = np.zeros(X.shape[0] + 1, np.int64)
    np.cumsum(mask.sum(axis=1), out=indptr[1:])
    _, cols = np.nonzero(mask)               # row-major: entries in row order, columns ascending
    features = cols.astype(np.int32)
    values = X[mask].astype(np.float32)
    fields_ = features if field_of is None else field_of[features]
    return Batch(labels, indptr, fields_, features, values)


def _as_csr(X):
    """X in canonical CSR form (sorted indices, no duplicates, no stored
    zeros): X itself when it already is, otherwise a converted copy."""
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D, got a sparse array of shape {X.shape}")
    _check_columns(X.shape[1])
    if X.dtype.kind not in "biuf":
        raise ValueError(f"X must be numeric, got a sparse matrix of dtype {X.dtype}")
    csr = X.tocsr()             # the same object when X already is CSR
    if not csr.has_canonical_format:
        csr = csr.copy() if csr is X else csr
        csr.sum_duplicates()    # sorts indices too
    if csr.dtype.kind == "f":
        _check_finite(csr.data, "X")
    if csr.nnz and not csr.data.all():   # stored zeros are not entries
        csr = csr.copy() if csr is X else csr
        csr.eliminate_zeros()
    return csr


def _from_csr(X, labels: np.ndarray, fields) -> Batch:
    field_of = _field_of_column(fields, X.shape[1])
    n = X.shape[0]
    indptr = np.asarray(X.indptr, dtype=np.int64)
    if indptr.shape[0] != n + 1:      # scipy keeps n + 1 offsets; be safe
        raise ValueError("X has a malformed CSR index pointer")
    features = np.asarray(X.indices, dtype=np.int32)    # no copy when int32 already
    nnz = int(indptr[-1])
    if features.shape[0] != nnz:      # only the used part of oversized arrays
        features = features[:nnz]
    values = X.data[:nnz]
    if values.dtype != np.float32:
        values = values.astype(np.float32)
    fields_ = features if field_of is None else field_of[features]
    return Batch(labels, indptr, fields_, features, values)


# ---------------------------------------------------------------------------
# DataFrames: the wide Parquet encoder on an Arrow table


def _to_table(X):
    """A pandas or polars DataFrame (or a pyarrow Table) as a pyarrow Table
    with string column names."""
    from .parquet import _need_pyarrow

    _need_pyarrow()
    import pyarrow as pa

    root = type(X).__module__.split(".")[0]
    if root == "pandas":
        bad = [c for c in X.columns if not isinstance(c, str)]
        if bad:
            raise ValueError(f"DataFrame column names must be strings, found {bad[0]!r} "
                             f"({type(bad[0]).__name__}); rename the columns or pass X.to_numpy()")
        try:
            table = pa.Table.from_pandas(X, preserve_index=False)
        except (pa.ArrowException, TypeError, ValueError) as exc:
            raise ValueError(f"cannot convert the DataFrame: {_first_line(exc)}") from None
    elif root == "polars":
        try:
            table = X.to_arrow()
        except Exception as exc:    # polars raises its own errors for columns Arrow cannot hold
            raise ValueError(f"cannot convert the DataFrame: {_first_line(exc)}") from None
    else:
        table = X
    names = table.column_names
    if not names:
        raise ValueError(f"X is a DataFrame without columns (0 feature(s), "
                         f"shape={getattr(X, 'shape', None)})")
    dup = sorted({c for c in names if names.count(c) > 1})
    if dup:
        raise ValueError(f"DataFrame column '{dup[0]}' appears {names.count(dup[0])} times")
    return table


def _array_table(X, schema: FrameSchema):
    """An array read by the schema of a frame: its columns, by position,
    named after the frame's (integers as categorical values, floats as
    numbers), so that a model fitted on a frame scores the array's rows."""
    import pyarrow as pa

    if _kind_of(X) == "sparse":
        raise ValueError("X is a sparse matrix but the model was fitted on a DataFrame; "
                         "pass a DataFrame with its columns")
    X = _as_dense(X)
    names = list(schema.feature_names) or schema.columns
    if X.shape[1] != len(names):
        raise ValueError(f"X has {X.shape[1]} columns but the model was fitted on a DataFrame "
                         f"with {len(names)}")
    kinds = dict(zip(schema.input_map["columns"], schema.input_map.get("kinds") or []))
    arrays = []
    for j, name in enumerate(names):
        col = X[:, j]
        if kinds.get(name) == "categorical":
            if col.dtype.kind == "f":
                if not np.all(col == np.round(col)):
                    raise ValueError(f"column {j} ('{name}') was categorical in the fitted "
                                     "DataFrame but holds non-integral numbers here")
                col = col.astype(np.int64)
            elif col.dtype.kind == "b":
                col = col.astype(np.int8)
        elif col.dtype.kind != "f":
            col = col.astype(np.float64)
        arrays.append(pa.array(col))
    return pa.table(arrays, names=names)


def _unique_name(base: str, taken: Sequence[str]) -> str:
    name = base
    while name in taken:
        name += "_"
    return name


def _frame_columns(fields, names: list[str]) -> list[str] | None:
    """The columns a frame's ``fields`` chooses, in field order (None: all)."""
    if fields is None:
        return None
    if isinstance(fields, Mapping):
        chosen = sorted(fields, key=lambda c: fields[c])
        numbers = [fields[c] for c in chosen]
        if any(isinstance(i, bool) or not isinstance(i, (int, np.integer)) for i in numbers) \
                or numbers != list(range(len(numbers))):
            raise ValueError("a dict of fields must number the chosen columns 0, 1, ... in some "
                             f"order, each once; got {dict(fields)!r}")
    elif isinstance(fields, str):
        raise ValueError("fields for a DataFrame must be a list of column names or a dict "
                         "{column: field}, not a string")
    else:
        chosen = list(fields)
    bad = [c for c in chosen if not isinstance(c, str)]
    if bad:
        raise ValueError(f"fields for a DataFrame must name its columns; got {bad[0]!r}")
    if not chosen:
        raise ValueError("fields chooses no column of the DataFrame")
    dup = sorted({c for c in chosen if chosen.count(c) > 1})
    if dup:
        raise ValueError(f"fields names column '{dup[0]}' more than once")
    missing = [c for c in chosen if c not in names]
    if missing:
        raise ValueError(f"fields names column '{missing[0]}', which X does not have "
                         f"(columns: {', '.join(names[:12])}{' ...' if len(names) > 12 else ''})")
    return chosen


def _from_table(table, labels: np.ndarray, fields, schema: FrameSchema | None,
                hash_bits: int | None, float_columns: str | None) -> tuple[Batch, FrameSchema]:
    import pyarrow as pa

    from .parquet import TableReader

    names = list(table.column_names)
    defaults = Config()
    if schema is not None:
        m = schema.input_map
        options = dict(hash_bits=int(m["hash_bits"]), float_columns=m["float_columns"],
                       match=m, map_owner="the fitted DataFrame")
        label_column = m.get("label_column") or defaults.label_column
        if label_column in names:
            label_column = _unique_name(label_column, names + list(m["columns"]))
    else:
        columns = _frame_columns(fields, names)
        options = dict(columns=columns,
                       hash_bits=defaults.hash_bits if hash_bits is None else int(hash_bits),
                       float_columns=defaults.float_columns if float_columns is None else float_columns)
        label_column = _unique_name(defaults.label_column, names)
    # the label is a column of the table (as in a Parquet file); the
    # weights are set on the Batch afterwards, so a column of ones with an
    # unused name stops a feature column called "weight" from being taken
    # for the weights
    table = table.append_column(label_column, pa.array(labels, pa.float32()))
    weight_column = None
    if "weight" in names:
        weight_column = _unique_name("weight", names + [label_column])
        table = table.append_column(weight_column, pa.array(np.ones(len(labels), np.float32)))
    try:
        reader = TableReader(table, name="X", label_mode="real", label_column=label_column,
                             weight_column=weight_column, **options)
        batch = reader.read_all()
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    except DataError as exc:
        raise ValueError(str(exc)) from None
    if reader.input_map.get("layout") != "wide":
        raise ValueError("X has a list column 'features': a DataFrame is read one column per "
                         "field; rename the column")
    if batch.n_rows != len(labels):   # no row is skipped (ReadLimits: no bad row allowed)
        raise AssertionError("a DataFrame row was lost in reading")
    batch.labels = labels          # as given (the table's copy was checked by the reader)
    batch.lines = None
    m = dict(reader.input_map)
    m["weight_column"] = None
    if schema is not None:
        return batch, schema
    return batch, FrameSchema(m, tuple(names))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
