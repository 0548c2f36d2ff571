"""What a model file or a data file holds, for `fm inspect` (pure data: no printing).

Model files
-----------
:func:`summarize` reads a model file's header only (never its arrays) and
derives the figures shown: sizes, memory, hyperparameters, optimizer,
training provenance, the per-epoch history and the preprocessing spec.

The weights are read (memory-mapped) only for the analyses:

* :func:`top_interactions`: the N strongest learned pairwise interactions.
  The strength of a pair is the magnitude of the weight the model gives to
  the product x_i x_j of the two features' values:

  - FM: ``|<v_i, v_j>|``;
  - FwFM: ``|r_ab <v_i, v_j>|`` for feature i in field a and j in field b;
  - FmFM: ``|v_i^T M_ab v_j|`` for feature i in field a and j in field b,
    the lower field first (for a > b it is ``|v_j^T M_ba v_i|``; within
    one field the symmetric part ``(M_aa + M_aa^T) / 2`` acts);
  - FFM: ``|<w_{i,b}, w_{j,a}>|`` (w_{i,b}: feature i's vector for field b).

  A multiclass model's strength is the largest over its classes (or that
  of one class).  The search is exact: every candidate pair is scored,
  block by block (a block of features against chunks of the others, by
  matrix products), with a running top N, so memory stays at a few blocks.
  Candidates are visited in order of decreasing vector norm, and since
  ``|<x, y>| <= |x| |y|`` (Cauchy-Schwarz), a block whose bound cannot beat
  the N-th best strength found so far is skipped without changing the
  result (FmFM: ``|x^T M y| <= ||M||_2 |x| |y|``, with the matrix's
  spectral norm).  FwFM, FmFM and FFM pairs are pairs of (feature, field) occurrences:
  their fields come from sample data (:func:`read_sample`) or from the
  preprocessing spec's feature-to-field map.  Two features of one field
  are a candidate only when the data shows rows with several features in
  that field (they never meet in one-hot fields).

* :func:`field_pairs`: a field x field matrix of interaction strengths:
  FwFM's learned ``|r_ab|``; for FFM, FmFM (and FM) the mean strength over
  the feature pairs that co-occur in rows of sample data, or, without data:
  FmFM's ``||M_ab||_F / sqrt(k)`` (the size of the learned matrix, ``|r|``
  for ``M = r I``: FwFM's figure), and for FFM and FM, with a spec's
  feature-to-field map, the mean over all feature pairs of the two fields.

Which kind has which parameters (factors per feature or per feature and
field, a scalar or a matrix per field pair) is read from the model registry
(fmcli.registry), never from the kind's name.

* :func:`top_features`: features by ``score = |linear weight| + norm of its
  factor vector`` (FFM: the norm of all its field blocks together; a
  multiclass model: over all classes together).

When the model file keeps optimizer state, a feature whose state is still at
its initial value was never updated in training (its weights are the random
start): such features are left out of every analysis.

Data files
----------
:func:`scan_data` streams libffm/libsvm text (plain or compressed) and
Parquet inputs through the same readers as training, in bounded memory, and
counts rows, entries per row, distinct fields and features (exactly, in a
bitmap, while ids stay below 2^28; by a HyperLogLog estimate beyond), the
largest ids, labels, row weights and bad rows.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .model import Model, inspect_header
from .modelfile import MAGIC
from .registry import ModelKind, kind as model_kind

SCHEMA_MODEL = "fmcli.inspect/1"
SCHEMA_DATA = "fmcli.inspect.data/1"

# initial value of each optimizer's squared-gradient accumulator (see fmcli.train)
_ACCUMULATOR = {"adagrad": ("G", 1.0), "adam": ("v", 0.0), "ftrl": ("n", 0.0), "rowwise-adagrad": ("G", 1.0)}

_ROW_BLOCK = 256          # features per block of the pair search
_COL_BLOCK = 4096         # features per chunk they are multiplied with
_PAIR_CHUNK = 1 << 19     # co-occurring pairs scored at a time
_BLOCK_ROW_PAIRS = 1 << 14   # rows with up to 128 entries have their pairs scored by rows ...
_BLOCK_FLOATS = 1 << 23      # ... with at most this many gathered weights at a time,
_LAYOUTS = 8                 # ... for the commonest sequences of fields
_FIELD_SAMPLE = 2048      # features of a field that field strengths without data average over, at most
_SLACK = 1 + 1e-4         # float32 products against float64 bounds


# --------------------------------------------------------------------------
# Model files: the header
# --------------------------------------------------------------------------


def is_model_file(path: str | os.PathLike) -> bool:
    """A model file (by its magic bytes, or a name ending in .fm) rather than data.

    '-', pipes and paths that cannot be opened (globs, missing files) count
    as data: the data readers read or report them."""
    path = os.fspath(path)
    if path == "-":
        return False
    if path.lower().endswith(".fm"):
        return True
    if not os.path.isfile(path):     # a pipe or device is read once, as data
        return False
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def summarize(path: str | os.PathLike) -> dict[str, Any]:
    """The model file's header plus derived figures (arrays are not read)."""
    header = inspect_header(path)
    arrays = header.get("arrays", [])
    role = {a.get("name"): _role(str(a.get("name", ""))) for a in arrays}
    params = [a for a in arrays if role[a.get("name")] == "parameter"]
    state = [a for a in arrays if role[a.get("name")] == "state"]
    m = header.get("model") or {}
    hp = header.get("hyperparameters") or {}
    opt = header.get("optimizer") or {}
    t = header.get("training") or {}
    n_parameters = sum(_count(a["shape"]) for a in params)
    param_bytes = sum(int(a.get("nbytes", 0)) for a in arrays if role[a.get("name")] in ("parameter", "scale"))
    slots = list(opt.get("slots") or [])
    stored = sum(int(a.get("nbytes", 0)) for a in state)
    spec = header.get("spec")
    return {
        "schema": SCHEMA_MODEL,
        "type": "model",
        "path": os.fspath(path),
        "file_bytes": os.path.getsize(path),
        "header": header,
        "n_parameters": n_parameters,
        "has_optimizer_state": bool(state),
        "model": {key: m.get(key) for key in ("kind", "task", "k", "n_features", "n_fields", "n_classes",
                                             "classes", "use_bias", "use_linear", "normalize")},
        # the id space and the ids training used (format 1.3; None before):
        # with id_map true, n_features counts slots and "feature_ids" maps them to ids
        "features": header.get("features") if isinstance(header.get("features"), dict) else None,
        "memory": {
            "parameter_bytes": param_bytes,
            # the optimizer's state (float32): as stored, or what it takes in training
            "optimizer_state_bytes": stored if state else 4 * n_parameters * len(slots),
            "optimizer_state_slots": slots,
            "optimizer_state_in_file": bool(state),
            "spec_bytes": sum(int(a.get("nbytes", 0)) for a in arrays if role[a.get("name")] == "spec"),
            "file_bytes": os.path.getsize(path),
        },
        "hyperparameters": hp,
        "optimizer": {"name": opt.get("name", hp.get("optimizer")), "slots": slots,
                      "steps": opt.get("steps"), "state_in_file": bool(state)} if (opt or hp) else None,
        "training": {
            "created_at": header.get("created_at"),
            "fmcli_version": header.get("fmcli_version"),
            "train_file": t.get("train_file"),
            "train_rows": t.get("train_rows"),
            "valid_file": t.get("valid_file"),
            "valid_rows": t.get("valid_rows"),
            "skipped_rows": t.get("skipped_rows"),
            "device": t.get("device"),
            "epochs_run": t.get("epochs_run"),
            "model_epoch": t.get("model_epoch"),
            "best_epoch": t.get("best_epoch"),
            "early_stopping_metric": t.get("early_stopping_metric"),
            "seconds": t.get("seconds"),
            "parent": header.get("parent"),
        } if t else None,
        "history": list(t.get("history") or []),
        "spec": spec if isinstance(spec, dict) else None,
        # how the training rows were read (fmcli.inputmap; None before format 1.2)
        "input": header.get("input") if isinstance(header.get("input"), dict) else None,
    }


def _role(name: str) -> str:
    """What an array of a model file is: a parameter, optimizer state, the
    scale of a quantized parameter, or part of the preprocessing spec."""
    if name.endswith("_state"):
        return "state"
    if name.startswith("spec_"):
        return "spec"
    if name.endswith("_scale"):
        return "scale"
    return "parameter"


def _count(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


# --------------------------------------------------------------------------
# Names: ids -> column names and values, from a preprocessing spec
# --------------------------------------------------------------------------


class Names:
    """Field and feature names, and the feature-to-field map, from the model's
    preprocessing spec (``fm convert``'s, see fmcli.data.criteo) when it has one.

    The spec names the fields (its columns, by field).  Its feature ids are
    hashes of (column, token): the ids of the tokens it can enumerate (the
    missing and rare tokens, numeric buckets, hours) are named
    ``column=token``; a kept categorical value is known by its hash only, so
    it is shown as ``column:id``.  The feature-to-field map (every id each
    field can produce) is complete when every categorical column has a kept
    vocabulary.  Simpler specs may name fields with ``columns`` or
    ``fields`` (a list of names, or of objects with ``name`` and ``field``)
    and give ``feature_names`` and ``feature_fields`` ({id: name or field}).
    Anything else, or no spec, leaves ids as numbers; a wide Parquet run's
    ``columns`` hyperparameter still names its fields."""

    NUMERIC_BUCKETS = range(0, 1001)        # log-square tokens b0..b1000 (x up to e^31.6)
    NUMERIC_SMALL = range(-100, 3)          # and v-100..v2

    def __init__(self, spec: dict | None = None, hyperparameters: dict | None = None,
                 arrays: dict[str, np.ndarray] | None = None, input_map: dict | None = None):
        self.fields: dict[int, str] = {}
        self.features: dict[int, str] = {}
        self.unit_names: dict[tuple[int, int], str] = {}
        self.map_feature: np.ndarray | None = None    # the feature-to-field map, as (feature, field) units
        self.map_field: np.ndarray | None = None
        self.map_note: str | None = None              # why there is no map
        spec = spec if isinstance(spec, dict) else {}
        try:
            self._columns(spec)
            if "fmcli_spec" in spec:
                self._hashed(spec, arrays or {})
            else:
                self._tables(spec)
        except (ImportError, AttributeError, KeyError, IndexError, TypeError, ValueError) as exc:
            self.features, self.unit_names = {}, {}
            self.map_feature = self.map_field = None
            self.map_note = f"the spec could not be read ({type(exc).__name__}: {exc})"
        if not self.fields and isinstance(input_map, dict) and input_map.get("layout") == "wide":
            self.fields = {i: str(c) for i, c in enumerate(input_map.get("columns") or [])}
        if not self.fields and hyperparameters:
            cols = hyperparameters.get("columns")
            if isinstance(cols, str):
                cols = [c.strip() for c in cols.split(",") if c.strip()]
            if isinstance(cols, list) and all(isinstance(c, str) for c in cols):
                self.fields = dict(enumerate(cols))

    def _columns(self, spec: dict) -> None:
        cols = spec.get("columns", spec.get("fields"))
        if not isinstance(cols, list):
            return
        for pos, c in enumerate(cols):
            if isinstance(c, str):
                self.fields[pos] = c
            elif isinstance(c, dict) and c.get("name") is not None:
                f = c.get("field", pos)
                self.fields[int(f) if isinstance(f, int) and not isinstance(f, bool) else pos] = str(c["name"])

    def _tables(self, spec: dict) -> None:
        names, fields = spec.get("feature_names"), spec.get("feature_fields")
        for table, target, conv in ((names, self.features, str), (fields, None, int)):
            items = enumerate(table) if isinstance(table, list) else table.items() if isinstance(table, dict) else ()
            pairs = [(int(i), conv(v)) for i, v in items if v is not None]
            if target is not None:
                target.update(pairs)
            elif pairs:
                self.map_feature = np.array([i for i, _ in pairs], np.int64)
                self.map_field = np.array([f for _, f in pairs], np.int64)

    def _hashed(self, spec: dict, arrays: dict[str, np.ndarray]) -> None:
        import base64

        from .data import criteo

        space = np.uint64(int(spec["hash"]["space"]))
        vocab = spec.get("vocabulary") or {}
        where = vocab.get("columns") or {}
        packed = arrays.get(vocab.get("array")) if vocab.get("encoding") == "array" else None
        missing, rare = getattr(criteo, "MISSING", ""), getattr(criteo, "RARE", "<rare>")
        feats, flds, open_columns = [], [], []
        for col in spec["columns"]:
            name, f, kind = str(col["name"]), int(col["field"]), col.get("type")
            tokens: list[str] = []
            if kind == "categorical":
                tokens = [missing, rare]
                entry = where.get(name)
                if entry is None:
                    open_columns.append(name)
                else:
                    if packed is not None:
                        kept = np.asarray(packed[int(entry[0]): int(entry[0]) + int(entry[1])]).view(np.uint64)
                    else:
                        kept = np.frombuffer(base64.b64decode(entry), "<u8").astype(np.uint64)
                    feats.append((kept % space).astype(np.int64))
                    flds.append(np.full(kept.size, f, np.int64))
            elif kind == "numeric":
                if spec.get("numeric_rule") == "value":
                    tokens = [getattr(criteo, "VALUE_TOKEN", "<value>")]
                else:
                    tokens = [missing] + [f"b{i}" for i in self.NUMERIC_BUCKETS] + [f"v{i}" for i in self.NUMERIC_SMALL]
            elif kind == "hour":
                tokens = [missing] + [f"{h:02d}" for h in range(24)]
            if tokens:
                ids = (criteo.hash_tokens(name, tokens) % space).astype(np.int64)
                for i, t in zip(ids.tolist(), tokens):
                    self.unit_names[(i, f)] = f"{name}={t if t else '<missing>'}"
                feats.append(ids)
                flds.append(np.full(ids.size, f, np.int64))
        if open_columns:
            self.map_note = (f"column {open_columns[0]} keeps every value, so the spec cannot list its "
                             "feature ids")
        elif feats:
            key = np.unique((np.concatenate(flds) << 31) | np.concatenate(feats))
            self.map_feature, self.map_field = key & ((1 << 31) - 1), key >> 31
        # an id named in one field only can be named without its field
        by_id: dict[int, str | None] = {}
        for (i, _), label in self.unit_names.items():
            by_id[i] = label if i not in by_id else None
        self.features.update({i: label for i, label in by_id.items() if label is not None})

    @property
    def has_field_map(self) -> bool:
        return self.map_feature is not None

    def field(self, a: int | None) -> str | None:
        if a is None or a < 0:
            return None
        return self.fields.get(int(a), str(int(a)))

    def feature(self, i: int, a: int | None = None) -> str:
        """A feature's name: ``column=token`` from the spec, else ``field:id`` or ``id``."""
        if a is not None and a >= 0:
            name = self.unit_names.get((int(i), int(a)))
            if name is not None:
                return name
            return f"{self.field(a)}:{int(i)}"
        return self.features.get(int(i), str(int(i)))


# --------------------------------------------------------------------------
# The weights, with a leading class dimension always
# --------------------------------------------------------------------------


@dataclass
class _Weights:
    kind: str
    C: int                       # classes used (1, or the model's classes)
    class_names: list[str] | None
    linear: np.ndarray | None    # (C, n)
    factors: np.ndarray | None   # (C, n, k) or FFM (C, n, m, k)
    pairs: np.ndarray | None     # field-pair parameters: FwFM (C, m, m), FmFM (C, m, m, k, k)
    n_features: int
    n_fields: int
    trained: np.ndarray | None   # (n,) bool: the optimizer updated the feature; None: unknown
    id_map: Any = None           # fmcli.data.idmap.IdMap of a model of compact ids: arrays are by slot
    _acting: np.ndarray | None = field(default=None, repr=False)

    @property
    def mk(self) -> ModelKind:
        """The model kind's registry entry."""
        return model_kind(self.kind)

    def pair_matrix(self, c: int, a: int, b: int) -> np.ndarray:
        """FmFM, class c: the float64 matrix P with phi = v_i^T P v_j for
        feature i in field a and j in field b: M_ab (a < b), M_ba^T (a > b),
        (M_aa + M_aa^T) / 2 (a = b).  Only the upper triangle of the stored
        matrices is read: it is what training learns."""
        if a > b:
            return self.pair_matrix(c, b, a).T
        P = np.asarray(self.pairs[c, a, b], np.float64)
        return (P + P.T) / 2 if a == b else P

    def acting(self) -> np.ndarray:
        """FmFM: pair_matrix of every class and field pair, (C, m, m, k, k)
        float32, built once."""
        if self._acting is None:
            M = np.asarray(self.pairs, np.float32)
            mirrored = np.swapaxes(np.swapaxes(M, 1, 2), -1, -2)      # [c, a, b] = M[c, b, a]^T
            lower = np.tril(np.ones((self.n_fields, self.n_fields), bool), -1)[None, :, :, None, None]
            E = np.where(lower, mirrored, M)
            d = np.arange(self.n_fields)
            E[:, d, d] = (M[:, d, d] + np.swapaxes(M[:, d, d], -1, -2)) / np.float32(2)
            self._acting = E
        return self._acting

    def slots(self, ids: np.ndarray) -> np.ndarray:
        """Slots of original feature ids (n_features for ids without one)."""
        ids = np.asarray(ids, np.int64)
        return ids if self.id_map is None else self.id_map.lookup(ids).astype(np.int64)

    def original(self, slot: int) -> int:
        """The original id of a slot (what the user's data calls the feature)."""
        return int(slot) if self.id_map is None else int(self.id_map.ids[int(slot)])


def _weights(model: Model, class_index: int | None = None) -> _Weights:
    s = model.spec
    multi = s.task == "multiclass"

    def lead(a: np.ndarray | None) -> np.ndarray | None:
        if a is None:
            return None
        a = a if multi else a[None]
        return a if class_index is None else a[class_index: class_index + 1]

    names = list(s.classes) if multi else None
    if multi and class_index is not None:
        names = [names[class_index]]
    C = s.n_classes if multi and class_index is None else 1
    pair_param = model_kind(s.kind).pair_param
    return _Weights(s.kind, C, names, lead(model.params.get("linear")), lead(model.params.get("factors")),
                    lead(model.params.get(pair_param)) if pair_param else None, s.n_features, s.n_fields,
                    _trained(model), model.id_map())


def _trained(model: Model) -> np.ndarray | None:
    """Per feature: whether training ever updated it, from the optimizer
    state (None without state, or for SGD, which has none)."""
    opt = model.meta.get("optimizer") or {}
    name = opt.get("name") or (model.meta.get("hyperparameters") or {}).get("optimizer")
    if name not in _ACCUMULATOR or not model.state:
        return None
    slot_name, start = _ACCUMULATOR[name]
    slots = list(opt.get("slots") or [])
    if slot_name not in slots:
        return None
    slot = slots.index(slot_name)
    multi = model.spec.task == "multiclass"
    n = model.spec.n_features
    out = np.zeros(n, bool)
    for pname in ("linear", "factors"):
        st = model.state.get(pname)
        if st is None:
            continue
        if len(slots) > 1:
            st = st[slot]
        if not multi:
            st = st[None]
        per_feature = st.shape[0] * int(np.prod(st.shape[2:], dtype=np.int64))
        step = max(1, (1 << 22) // max(1, per_feature))
        for lo in range(0, n, step):
            block = np.asarray(st[:, lo: lo + step])
            changed = (block != np.float32(start)).reshape(block.shape[0], block.shape[1], -1)
            out[lo: lo + block.shape[1]] |= changed.any(axis=(0, 2))
    return out


# --------------------------------------------------------------------------
# Sample data: which feature occurs in which field, and co-occurring pairs
# --------------------------------------------------------------------------


@dataclass
class Sample:
    """What sample data (``--data``) tells about a model's features."""

    files: list[str]
    rows: int
    unit_feature: np.ndarray      # distinct (field, feature) occurrences: feature ids ...
    unit_field: np.ndarray        # ... their fields
    unit_count: np.ndarray        # ... and how often each occurs
    multi_fields: np.ndarray      # fields that hold several features in some row
    pair_sum: np.ndarray | None = None     # (C, m, m): sums of |interaction| of co-occurring pairs
    pair_count: np.ndarray | None = None   # (m, m): co-occurring pairs (lower field first)
    ignored: int = 0              # entries with ids the model has no weights for
    truncated: bool = False       # stopped at max_rows

    def feature_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """Distinct features and their occurrences (over all their fields)."""
        feats, inv = np.unique(self.unit_feature, return_inverse=True)
        return feats, np.bincount(inv.reshape(-1), weights=self.unit_count, minlength=feats.size).astype(np.int64)


def read_sample(model: Model, specs: str | Sequence[str], *, fmt: str = "auto", limits=None,
                max_rows: int | None = None, pairs: bool = False, class_index: int | None = None) -> Sample:
    """Stream sample data for a model: its (field, feature) occurrences and,
    with `pairs`, the mean interaction strength of co-occurring feature pairs
    by field pair (see :func:`field_pairs_from_data`)."""
    from .data.dataset import make_reader
    from .data.source import expand_inputs
    from .data.text import ReadLimits
    from .inputmap import scoring_options

    from .predict import with_slots

    limits = limits or ReadLimits()
    s = model.spec
    id_map = model.id_map()
    parquet = scoring_options(model)    # wide Parquet: columns matched by name
    fielded = model_kind(s.kind).needs_fields
    w = _weights(model, class_index) if pairs else None
    acc = _PairStats(w) if pairs and field_pairs_from_data(s.kind) else None
    keys = np.zeros(0, np.int64)
    counts = np.zeros(0, np.int64)
    multi = np.zeros(0, np.int64)
    rows = ignored = 0
    files = []
    paths = expand_inputs([specs] if isinstance(specs, (str, os.PathLike)) else list(specs))
    for path in paths:
        if max_rows is not None and rows >= max_rows:
            break
        reader = make_reader(path, fmt, "class" if s.task == "multiclass" else "real", limits,
                             track_lines=False, parquet=parquet)
        files.append(reader.name)
        for batch in reader:
            if max_rows is not None and rows + batch.n_rows > max_rows:
                batch = batch.rows(0, max_rows - rows)
            if id_map is not None:         # the sample in the model's slots
                batch = with_slots(batch, id_map)
            rows += batch.n_rows
            ok = batch.features < s.n_features
            if fielded:
                ok &= batch.fields < s.n_fields
            ignored += int(ok.size - np.count_nonzero(ok))
            f = batch.fields.astype(np.int64)
            j = batch.features.astype(np.int64)
            u, c = np.unique((f[ok] << 31) | j[ok], return_counts=True)
            keys, inv = np.unique(np.concatenate([keys, u]), return_inverse=True)
            counts = np.bincount(inv.reshape(-1), weights=np.concatenate([counts, c]),
                                 minlength=keys.size).astype(np.int64)
            if batch.nnz:
                row_of = np.repeat(np.arange(batch.n_rows, dtype=np.int64), np.diff(batch.indptr))
                width = int(f.max()) + 1
                rf, rc = np.unique(row_of * width + f, return_counts=True)
                multi = np.union1d(multi, rf[rc > 1] % width)
            if acc is not None:
                acc.add(batch, ok)
            if max_rows is not None and rows >= max_rows:
                break
        if max_rows is not None and rows >= max_rows:
            break
    out = Sample(files, rows, keys & ((1 << 31) - 1), keys >> 31, counts, multi, ignored=ignored,
                 truncated=max_rows is not None and rows >= max_rows)
    if acc is not None:
        out.pair_sum, out.pair_count = acc.sums, acc.counts
    return out


def field_pairs_from_data(kind: str) -> bool:
    """Whether :func:`field_pairs` of a model of this kind reads the
    strengths of co-occurring pairs in sample data (every kind with factors
    but FwFM, whose scalar field-pair weights are the figure)."""
    mk = model_kind(kind)
    return bool(mk.factors) and mk.pairs != "scalar"


def _bilinear(A: np.ndarray, B: np.ndarray, E: np.ndarray, fa: np.ndarray, fb: np.ndarray) -> np.ndarray:
    """FmFM: A[p]^T E[fa[p], fb[p]] B[p] for every pair p (E: (m, m, k, k),
    one class), a group of pairs per field pair."""
    out = np.empty(A.shape[0], np.float64)
    m = E.shape[0]
    key = fa * m + fb
    order = np.argsort(key, kind="stable")
    ks = key[order]
    starts = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]]) if ks.size else np.zeros(0, np.int64)
    for s, e in zip(starts.tolist(), np.r_[starts[1:], ks.size].tolist()):
        g = order[s:e]
        a, b = divmod(int(ks[s]), m)
        out[g] = np.einsum("pk,pk->p", A[g] @ E[a, b], B[g])
    return out


class _PairStats:
    """Sums of |interaction| of co-occurring entry pairs, by (lower, higher) field."""

    def __init__(self, w: _Weights):
        self.w = w
        self.matrix = w.mk.pairs == "matrix"
        self.acting = w.acting() if self.matrix else None
        m = w.n_fields if w.mk.needs_fields else 1
        self.sums = np.zeros((w.C, m, m))
        self.counts = np.zeros((m, m), np.int64)
        k = w.factors.shape[-1]
        self.tables = [w.factors[c].reshape(-1, k) for c in range(w.C)]   # one vector per row

    def _grow(self, m: int) -> None:
        if m > self.counts.shape[0]:
            old = self.counts.shape[0]
            sums = np.zeros((self.w.C, m, m))
            sums[:, :old, :old] = self.sums
            counts = np.zeros((m, m), np.int64)
            counts[:old, :old] = self.counts
            self.sums, self.counts = sums, counts

    def add(self, batch, ok: np.ndarray) -> None:
        if not batch.nnz:
            return
        self._grow(int(batch.fields.max()) + 1)
        lengths = np.diff(batch.indptr)
        rest = np.zeros(batch.n_rows, bool)
        for length in np.unique(lengths).tolist():
            rows = np.flatnonzero(lengths == length)
            if length < 2:
                continue
            if length * length > _BLOCK_ROW_PAIRS or not self._add_layouts(batch, ok, rows, length):
                rest[rows] = True
        if rest.any():
            self._add_pairs(batch, ok, np.flatnonzero(rest))

    def _add_layouts(self, batch, ok: np.ndarray, rows: np.ndarray, length: int) -> bool:
        """Rows of one length, grouped by their sequence of fields; each
        group's pairs at once, by rows.  False when there are too many
        distinct sequences for that to pay."""
        w = self.w
        pos = batch.indptr[rows][:, None] + np.arange(length)
        fields2d = batch.fields[pos]
        inverse = np.full(rows.size, -1, np.int64)
        layouts = []
        left = np.arange(rows.size)
        while left.size and len(layouts) < _LAYOUTS:      # the commonest layouts, one at a time
            same = (fields2d[left] == fields2d[left[0]]).all(axis=1)
            inverse[left[same]] = len(layouts)
            layouts.append(fields2d[left[0]])
            left = left[~same]
        if left.size > rows.size // 4:
            return False
        if left.size:                           # rows of rarer layouts: pair by pair
            self._add_pairs(batch, ok, rows[left])
        k = w.factors.shape[-1]
        ffm = w.mk.factors == "feature-field"
        width = w.n_fields if ffm else 1
        step = max(1, _BLOCK_FLOATS // (length * max(width, length) * k * w.C))
        upper = np.triu(np.ones((length, length), bool), 1)
        for g in range(len(layouts)):
            f = layouts[g].astype(np.int64)
            lo, hi = np.minimum.outer(f, f)[upper], np.maximum.outer(f, f)[upper]
            members = pos[inverse == g]
            for r0 in range(0, members.shape[0], step):
                e = members[r0: r0 + step]                      # (R, length) entries
                valid = ok[e]
                ids = np.where(valid, batch.features[e], 0).astype(np.int64)
                both = (valid[:, :, None] & valid[:, None, :])   # (R, x, y)
                np.add.at(self.counts, (lo, hi), both.sum(axis=0)[upper])
                for c in range(w.C):
                    F = w.factors[c]
                    if ffm:
                        G = np.take(F, ids, axis=0)             # (R, x, fields, k)
                        if not (f.size == w.n_fields and (f == np.arange(w.n_fields)).all()):
                            G = G[:, :, np.minimum(f, w.n_fields - 1)]   # (R, x, y, k): w_{i_x, f_y}
                        dots = np.einsum("rxyk,ryxk->rxy", G, G)
                    elif self.matrix:
                        V = np.take(F, ids, axis=0)             # (R, length, k)
                        fc = np.minimum(f, w.n_fields - 1)      # (fields beyond the model: not valid)
                        P = self.acting[c][fc[:, None], fc[None, :]]     # (x, y, k, k)
                        dots = np.einsum("rxyl,ryl->rxy", np.einsum("rxk,xykl->rxyl", V, P), V)
                    else:
                        V = np.take(F, ids, axis=0)             # (R, length, k)
                        dots = V @ np.swapaxes(V, 1, 2)
                    total = np.where(both, np.abs(dots), 0).sum(axis=0, dtype=np.float64)
                    np.add.at(self.sums[c], (lo, hi), total[upper])
        return True

    def _add_pairs(self, batch, ok: np.ndarray, rows: np.ndarray) -> None:
        """The pairs of `rows` (indices), pair by pair."""
        w, m = self.w, self.counts.shape[0]
        limit = max(1024, _PAIR_CHUNK // w.C)
        lengths = np.diff(batch.indptr)[rows]
        indptr = np.zeros(rows.size + 1, np.int64)
        np.cumsum(lengths, out=indptr[1:])
        entries = np.repeat(batch.indptr[rows] - indptr[:-1], lengths) + np.arange(indptr[-1])
        for p, q in _row_pairs(indptr, limit):
            p, q = entries[p], entries[q]
            keep = ok[p] & ok[q]
            p, q = p[keep], q[keep]
            if not p.size:
                continue
            fa, fb = batch.fields[p].astype(np.int64), batch.fields[q].astype(np.int64)
            ia, ib = batch.features[p].astype(np.int64), batch.features[q].astype(np.int64)
            key = np.minimum(fa, fb) * m + np.maximum(fa, fb)
            self.counts += np.bincount(key, minlength=m * m).reshape(m, m)
            if w.mk.factors == "feature-field":     # rows of the (n * fields, k) table: w_{i,b} and w_{j,a}
                ra, rb = ia * w.n_fields + fb, ib * w.n_fields + fa
            else:
                ra, rb = ia, ib
            for c in range(w.C):
                table = self.tables[c]
                if self.matrix:
                    dots = _bilinear(np.take(table, ra, axis=0), np.take(table, rb, axis=0), self.acting[c],
                                     fa, fb)
                else:
                    dots = np.einsum("pk,pk->p", np.take(table, ra, axis=0), np.take(table, rb, axis=0))
                self.sums[c] += np.bincount(key, weights=np.abs(dots), minlength=m * m).reshape(m, m)


_TRIU: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _row_pairs(indptr: np.ndarray, limit: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Entry indices (p, q), p < q, of every pair of entries within one row,
    in pieces of about `limit` pairs (never a row's whole pair list at once
    when that is longer)."""
    lengths = np.diff(indptr)
    for m in np.unique(lengths).tolist():
        if m < 2:
            continue
        starts = indptr[:-1][lengths == m].astype(np.int64)
        npairs = m * (m - 1) // 2
        if npairs <= limit:
            if m not in _TRIU:
                if len(_TRIU) > 256:
                    _TRIU.clear()
                _TRIU[m] = tuple(a.astype(np.int64) for a in np.triu_indices(m, 1))
            P, Q = _TRIU[m]
            per = max(1, limit // npairs)
            for lo in range(0, starts.size, per):
                st = starts[lo: lo + per, None]
                yield (st + P).reshape(-1), (st + Q).reshape(-1)
        else:
            for st in starts.tolist():
                p = 0
                while p < m - 1:
                    lens = m - 1 - np.arange(p, m - 1)
                    take = max(1, int(np.searchsorted(np.cumsum(lens), limit, side="right")))
                    ps = np.arange(p, p + take)
                    lens = lens[:take]
                    P = np.repeat(ps, lens)
                    first = np.repeat(np.cumsum(lens) - lens, lens)
                    Q = P + 1 + (np.arange(P.size) - first)
                    yield st + P, st + Q
                    p += take


# --------------------------------------------------------------------------
# Top interactions
# --------------------------------------------------------------------------


class _Best:
    """A running top N of scored pairs of units."""

    def __init__(self, n: int):
        self.n = n
        self.s = np.zeros(0)
        self.a = np.zeros(0, np.int64)
        self.b = np.zeros(0, np.int64)
        self.threshold = -1.0

    def offer(self, s: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
        if not s.size:
            return
        if s.size > self.n:
            keep = np.argpartition(-s, self.n - 1)[: self.n]
            s, a, b = s[keep], a[keep], b[keep]
        self.s = np.concatenate([self.s, s.astype(np.float64)])
        self.a = np.concatenate([self.a, a])
        self.b = np.concatenate([self.b, b])
        if self.s.size > self.n:
            keep = np.argpartition(-self.s, self.n - 1)[: self.n]
            self.s, self.a, self.b = self.s[keep], self.a[keep], self.b[keep]
        if self.s.size >= self.n:
            self.threshold = float(self.s.min())


def _norms(src: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """The largest norm over classes of the vectors src[:, idx] (src: (C, n, k)), in chunks."""
    out = np.zeros(idx.size)
    step = max(1, (1 << 20) // max(1, src.shape[0] * src.shape[-1]))
    for lo in range(0, idx.size, step):
        x = np.asarray(src[:, idx[lo: lo + step]], np.float64)
        out[lo: lo + step] = np.sqrt(np.einsum("cnk,cnk->cn", x, x)).max(axis=0)
    return out


def _scan(best: _Best, Ls: np.ndarray, li: np.ndarray, Rs: np.ndarray, ri: np.ndarray, la: np.ndarray,
          rb: np.ndarray, scale: np.ndarray, symmetric: bool = False, lg: np.ndarray | None = None,
          rg: np.ndarray | None = None, transform: np.ndarray | None = None) -> int:
    """Offer every pair (x, y) of the vectors L = Ls[:, li] and R = Rs[:, ri]
    (Ls, Rs: (C, n, k)) whose strength max_c scale[c] |<L[c,x], R[c,y]>| may
    beat the running top N.  la, rb: the units of L's and R's vectors;
    symmetric: L is R, pairs x < y; lg, rg: group of each vector, pairs
    within a group >= 0 are skipped; transform: (C, k, k) matrices T, the
    strength then being max_c scale[c] |L[c,x]^T T[c] R[c,y]| (symmetric:
    T must be symmetric).  Returns the pairs scored."""
    nl, nr = li.size, ri.size
    bound = scale
    if transform is not None:       # |x^T T y| <= ||T||_2 |x| |y|: the norms still bound it
        bound = scale * _spectral(transform)
    smax = float(bound.max()) if bound.size else 0.0
    if not nl or not nr or smax == 0.0:
        return 0
    ln = _norms(Ls, li)
    lo_ = np.argsort(-ln, kind="stable")
    ln, la = ln[lo_], la[lo_]
    L = np.asarray(Ls[:, li[lo_]], np.float32)
    if symmetric:
        rn, rb, R, ro_ = ln, la, L, lo_
    else:
        rn = _norms(Rs, ri)
        ro_ = np.argsort(-rn, kind="stable")
        rn, rb = rn[ro_], rb[ro_]
        R = np.asarray(Rs[:, ri[ro_]], np.float32)
    if transform is not None:       # after R = L above: R keeps the plain vectors
        L = L @ np.asarray(transform, np.float32)
    if lg is not None:
        lg, rg = lg[lo_], rg[ro_]
    neg_rn = -rn
    scored = 0
    for r0 in range(0, nl, _ROW_BLOCK):
        r1 = min(r0 + _ROW_BLOCK, nl)
        c0 = r0 if symmetric else 0
        if c0 >= nr or ln[r0] * rn[c0] * smax * _SLACK <= best.threshold:
            break
        cc = c0
        while cc < nr:
            thr = best.threshold
            if ln[r0] * rn[cc] * smax * _SLACK <= thr:
                break
            cend = nr if thr < 0 else int(np.searchsorted(neg_rn, -thr / (ln[r0] * smax * _SLACK), side="left"))
            cc1 = min(cc + _COL_BLOCK, nr, max(cend, cc + 1))
            S = None
            for c in range(L.shape[0]):
                if scale[c] == 0:
                    continue
                Sc = np.abs(L[c, r0:r1] @ R[c, cc:cc1].T) * np.float32(scale[c])
                S = Sc if S is None else np.maximum(S, Sc)
            scored += (r1 - r0) * (cc1 - cc)
            if symmetric and cc < r1:
                S[np.arange(r0, r1)[:, None] >= np.arange(cc, cc1)[None, :]] = -1
            if lg is not None:
                g = lg[r0:r1, None]
                S[(g == rg[None, cc:cc1]) & (g >= 0)] = -1
            flat = np.flatnonzero(S > thr)
            if flat.size:
                ii, jj = np.divmod(flat, cc1 - cc)
                best.offer(S.reshape(-1)[flat], la[r0 + ii], rb[cc + jj])
            cc = cc1
    return scored


def _spectral(T: np.ndarray) -> np.ndarray:
    """The spectral norms ||T[c]||_2 (largest singular values) of matrices T (C, k, k)."""
    return np.linalg.norm(np.asarray(T, np.float64), ord=2, axis=(-2, -1))


@dataclass
class _Units:
    """Candidate (feature, field) occurrences; field -1 where it does not matter."""

    feature: np.ndarray
    field: np.ndarray
    count: np.ndarray | None = None    # occurrences in the sample
    source: str = ""


def _candidates(model: Model, w: _Weights, sample: Sample | None, names: Names) -> _Units:
    n = w.n_features
    trained = w.trained
    fielded = w.mk.needs_fields
    if sample is not None:
        if fielded:
            feat, fld, cnt = sample.unit_feature, sample.unit_field, sample.unit_count
        else:
            feat, cnt = sample.feature_counts()
            fld = np.full(feat.size, -1, np.int64)
        keep = feat < n
        if trained is not None:
            keep &= trained[np.minimum(feat, n - 1)] if n else keep
        return _Units(feat[keep], fld[keep], cnt[keep], "features seen in the sample data"
                      + (" that training updated" if trained is not None else ""))
    if names.has_field_map:
        ids, flds = w.slots(names.map_feature), names.map_field
        keep = (ids < n) & ((flds < w.n_fields) if fielded else True)
        if trained is not None and n:
            keep &= trained[np.minimum(ids, n - 1)]
        ids, flds = ids[keep], flds[keep]
        if not fielded:
            ids = np.unique(ids)
            flds = np.full(ids.size, -1, np.int64)
        return _Units(ids, flds, None, "features of the preprocessing spec"
                      + (" that training updated" if trained is not None else ""))
    ids = np.arange(n, dtype=np.int64) if trained is None else np.flatnonzero(trained).astype(np.int64)
    return _Units(ids, np.full(ids.size, -1, np.int64), None,
                  "every feature" if trained is None else "features that training updated")


def _map_units(w: _Weights, names: Names) -> tuple[np.ndarray, np.ndarray]:
    """The spec's (feature, field) units the model has weights for (and trained)."""
    ids, flds = w.slots(names.map_feature), names.map_field
    keep = ids < w.n_features
    if w.mk.needs_fields:
        keep &= flds < w.n_fields
    if w.trained is not None and w.n_features:
        keep &= w.trained[np.minimum(ids, w.n_features - 1)]
    return ids[keep], flds[keep]


def top_interactions(model: Model, n: int, *, sample: Sample | None = None, names: Names | None = None,
                     class_index: int | None = None) -> dict[str, Any]:
    """The `n` strongest pairwise interactions (see the module docstring)."""
    names = names or Names()
    w = _weights(model, class_index)
    mk = w.mk
    if not mk.factors:
        raise ValueError(f"an {w.kind} model has no pairwise interactions")
    units = _candidates(model, w, sample, names)
    best = _Best(max(1, n))
    t0 = time.perf_counter()
    scored = 0
    F = w.factors
    multi_fields = set(sample.multi_fields.tolist()) if sample is not None else set()
    if not mk.needs_fields:
        idx = np.arange(units.feature.size, dtype=np.int64)
        group = None
        if sample is not None:
            group = _fm_groups(units.feature, sample.unit_feature, sample.unit_field, sample.multi_fields)
        elif names.has_field_map:
            group = _fm_groups(units.feature, names.map_feature, names.map_field, np.zeros(0, np.int64))
        scored = _scan(best, F, units.feature, F, units.feature, idx, idx, np.ones(w.C), symmetric=True,
                       lg=group, rg=group)
    else:
        by_field = {int(a): np.flatnonzero(units.field == a) for a in np.unique(units.field).tolist()}
        fields = sorted(by_field)
        ffm = mk.factors == "feature-field"
        if ffm:
            bound = _ffm_bounds(F, units, by_field, w.n_fields)
        else:
            fnorm = {a: float(_norms(F, units.feature[ix]).max()) if ix.size else 0.0 for a, ix in by_field.items()}
        if mk.pairs == "matrix":
            acting = w.acting()
        pairs = []
        for i, a in enumerate(fields):
            for b in fields[i:]:
                if a == b and a not in multi_fields:
                    continue
                if ffm:
                    ub = bound[a, b] * bound[b, a]
                elif mk.pairs == "matrix":      # the matrix's largest gain ||P||_2 over classes
                    ub = float(_spectral(acting[:, a, b]).max()) * fnorm[a] * fnorm[b]
                else:
                    ub = float(np.abs(w.pairs[:, a, b]).max()) * fnorm[a] * fnorm[b]
                pairs.append((ub, a, b))
        pairs.sort(key=lambda p: (-p[0], p[1], p[2]))
        for ub, a, b in pairs:
            if ub * _SLACK <= best.threshold:
                break
            ia, ib = by_field[a], by_field[b]
            transform = None
            if ffm:
                Ls, Rs, scale = F[:, :, b], F[:, :, a], np.ones(w.C)
            elif mk.pairs == "matrix":      # v_i^T P_ab v_j, a <= b here
                Ls = Rs = F
                scale, transform = np.ones(w.C), acting[:, a, b]
            else:
                Ls = Rs = F
                scale = np.abs(np.asarray(w.pairs[:, a, b], np.float64))
            scored += _scan(best, Ls, units.feature[ia], Rs, units.feature[ib], ia, ib, scale,
                            symmetric=(a == b), transform=transform)
    rows = _exact_pairs(w, units, best, names)
    return {
        "definition": _definition(mk) + (" (largest over classes)" if w.C > 1 else ""),
        "class": None if class_index is None else w.class_names[0] if w.class_names else None,
        "candidates": int(units.feature.size),
        "candidates_are": units.source,
        "pairs_scored": int(scored),
        "seconds": time.perf_counter() - t0,
        "pairs": rows[:n],
    }


def _definition(mk: ModelKind) -> str:
    """What a pair's strength is, for a kind: the registry's formula, and its fields."""
    text = mk.strength
    if mk.needs_fields:
        text += " for feature i in field a, j in field b"
    if mk.pairs == "matrix":
        text += " (a <= b; within one field, the symmetric part of M_aa)"
    return text


def _fm_groups(features: np.ndarray, unit_feature: np.ndarray, unit_field: np.ndarray,
               multi_fields: np.ndarray) -> np.ndarray:
    """FM with fields known (sample data, a spec): a feature's field when it
    occurs in that field only and the field never holds two features of one
    row (pairs within such a field never occur), else -1."""
    order = np.argsort(unit_feature, kind="stable")
    uf, ufld = unit_feature[order], unit_field[order]
    first = np.searchsorted(uf, features, side="left")
    last = np.searchsorted(uf, features, side="right")
    group = np.full(features.size, -1, np.int64)
    single = (last - first) == 1
    fld = ufld[np.minimum(first, max(uf.size - 1, 0))] if uf.size else np.zeros(features.size, np.int64)
    single &= ~np.isin(fld, multi_fields)
    group[single] = fld[single]
    return group


def _ffm_bounds(F: np.ndarray, units: _Units, by_field: dict[int, np.ndarray], m: int) -> np.ndarray:
    """M[a, b]: the largest |w_{i,b}| of a feature i seen in field a."""
    M = np.zeros((m, m))
    C, k = F.shape[0], F.shape[-1]
    step = max(1, (1 << 21) // max(1, C * m * k))
    for a, ix in by_field.items():
        for lo in range(0, ix.size, step):
            block = np.asarray(F[:, units.feature[ix[lo: lo + step]]], np.float64)    # (C, b, m, k)
            norms = np.sqrt(np.einsum("cbmk,cbmk->cbm", block, block)).max(axis=(0, 1))
            M[a] = np.maximum(M[a], norms)
    return M


def _exact_pairs(w: _Weights, units: _Units, best: _Best, names: Names) -> list[dict[str, Any]]:
    """The best pairs, their strengths recomputed in float64, strongest first."""
    out = []
    for a, b in zip(best.a.tolist(), best.b.tolist()):
        i, j = int(units.feature[a]), int(units.feature[b])
        fa, fb = int(units.field[a]), int(units.field[b])
        if (fa, i) > (fb, j):
            a, b, i, j, fa, fb = b, a, j, i, fb, fa
        values = []
        for c in range(w.C):
            F = w.factors[c]
            if w.mk.factors == "feature-field":
                v = float(np.dot(np.asarray(F[i, fb], np.float64), np.asarray(F[j, fa], np.float64)))
            elif w.mk.pairs == "matrix":        # fa <= fb here
                v = float(np.dot(np.asarray(F[i], np.float64) @ w.pair_matrix(c, fa, fb),
                                 np.asarray(F[j], np.float64)))
            else:
                v = float(np.dot(np.asarray(F[i], np.float64), np.asarray(F[j], np.float64)))
                if w.mk.pairs == "scalar":
                    v *= float(w.pairs[c, fa, fb])
            values.append(v)
        c = int(np.argmax(np.abs(values)))
        row = {
            "strength": abs(values[c]),
            "value": values[c],
            "class": w.class_names[c] if w.class_names else None,
            "a": _unit(names, w.original(i), fa, units.count[a] if units.count is not None else None),
            "b": _unit(names, w.original(j), fb, units.count[b] if units.count is not None else None),
        }
        if w.mk.pairs == "scalar":
            row["field_weight"] = float(w.pairs[c, fa, fb])
        elif w.mk.pairs == "matrix":     # ||M_ab||_F / sqrt(k): FwFM's |r_ab| for M_ab = r_ab I
            k = w.factors.shape[-1]
            row["field_matrix_norm"] = float(np.linalg.norm(w.pair_matrix(c, fa, fb)) / math.sqrt(k))
        out.append(row)
    out.sort(key=lambda r: (-r["strength"], r["a"]["field"] if r["a"]["field"] is not None else -1,
                            r["a"]["feature"], r["b"]["field"] if r["b"]["field"] is not None else -1,
                            r["b"]["feature"]))
    for rank, row in enumerate(out, 1):
        row["rank"] = rank
    return out


def _unit(names: Names, i: int, a: int, count) -> dict[str, Any]:
    a_ = None if a < 0 else a
    return {"feature": i, "field": a_, "name": names.feature(i, a_),
            "field_name": names.field(a_), "count": None if count is None else int(count)}


# --------------------------------------------------------------------------
# Field pairs
# --------------------------------------------------------------------------


def field_pairs(model: Model, *, sample: Sample | None = None, names: Names | None = None,
                class_index: int | None = None) -> dict[str, Any]:
    """The field x field interaction-strength matrix (see the module docstring)."""
    names = names or Names()
    w = _weights(model, class_index)
    mk = w.mk
    counts = None
    if not mk.factors:
        raise ValueError(f"an {w.kind} model has no pairwise interactions")
    if mk.pairs == "scalar":
        matrix = np.abs(np.asarray(w.pairs, np.float64)).max(axis=0)
        fields = list(range(w.n_fields))
        statistic = "|r_ab|, the learned field-pair weight" + (" (largest over classes)" if w.C > 1 else "")
        source = "the model's field-pair weights"
    elif sample is not None and sample.pair_sum is not None:
        m = sample.pair_count.shape[0]
        # stored by (lower, higher) field: mirror the upper triangle
        cnt = sample.pair_count + np.triu(sample.pair_count, 1).T
        sums = sample.pair_sum + np.swapaxes(np.triu(sample.pair_sum, 1), 1, 2)
        with np.errstate(invalid="ignore", divide="ignore"):
            matrix = np.where(cnt > 0, (sums / np.maximum(cnt, 1)).max(axis=0), np.nan)
        seen = np.union1d(np.unique(sample.unit_field), np.flatnonzero(cnt.sum(axis=0)))
        fields = [int(a) for a in seen.tolist() if a < m]
        matrix = matrix[np.ix_(fields, fields)] if fields else np.zeros((0, 0))
        counts = cnt[np.ix_(fields, fields)] if fields else np.zeros((0, 0), np.int64)
        statistic = (mk.strength + ", mean over the feature pairs that occur together "
                     "in rows of the sample data" + (" (largest over classes)" if w.C > 1 else ""))
        source = f"{sample.rows:,} rows of {', '.join(sample.files)}"
        return _field_result(statistic, source, fields, matrix, counts, names)
    elif mk.pairs == "matrix":
        # the size of each learned matrix (the upper triangle's, mirrored; a
        # field with itself: the symmetric part that acts), scaled so that
        # M = r I gives FwFM's |r|
        k = w.factors.shape[-1]
        E = w.acting()
        squares = np.einsum("cabkl,cabkl->cab", E, E, dtype=np.float64)      # (C, m, m)
        matrix = np.sqrt(squares).max(axis=0) / math.sqrt(k)
        fields = list(range(w.n_fields))
        statistic = ("||M_ab||_F / sqrt(k), the size of the learned field-pair matrix (|r| for M = r I; "
                     "a = b: of (M_aa + M_aa^T) / 2)" + (" (largest over classes)" if w.C > 1 else ""))
        source = "the model's field-pair matrices"
    elif names.has_field_map:
        feat, fld = _map_units(w, names)
        fields = sorted(set(fld.tolist()))
        rng = np.random.default_rng(0)
        members, sampled = {}, False
        for a in fields:
            ids = feat[fld == a]
            if ids.size > _FIELD_SAMPLE:
                ids, sampled = np.sort(rng.choice(ids, _FIELD_SAMPLE, replace=False)), True
            members[a] = ids
        matrix = np.full((len(fields), len(fields)), np.nan)
        counts = np.zeros((len(fields), len(fields)), np.int64)
        for x, a in enumerate(fields):
            for y in range(x + 1, len(fields)):     # the spec's fields hold one feature per row
                b = fields[y]
                ia, ib = members[a], members[b]
                if mk.factors == "feature-field":
                    A, B = w.factors[:, ia, b], w.factors[:, ib, a]
                else:
                    A, B = w.factors[:, ia], w.factors[:, ib]
                total, pairs = _mean_abs(np.asarray(A), np.asarray(B), False)
                if pairs:
                    matrix[x, y] = matrix[y, x] = (total / pairs).max()
                counts[x, y] = counts[y, x] = pairs
        statistic = (mk.strength + ", mean over the pairs of features of the two fields"
                     + (f" (at most {_FIELD_SAMPLE:,} features of a field, drawn at random)" if sampled else "")
                     + (" (largest over classes)" if w.C > 1 else ""))
        source = "the preprocessing spec's feature-to-field map"
        return _field_result(statistic, source, fields, matrix, counts, names)
    else:
        raise ValueError(f"field strengths of an {w.kind} model need sample data or a feature-to-field map")
    return _field_result(statistic, source, fields, matrix, counts, names)


def _mean_abs(A: np.ndarray, B: np.ndarray, same: bool) -> tuple[np.ndarray, int]:
    """Per class, the sum of |<a, b>| over rows a of A and b of B (pairs
    a < b when A is B), blockwise; and the number of pairs."""
    C, na, nb = A.shape[0], A.shape[1], B.shape[1]
    total = np.zeros(C)
    for r0 in range(0, na, _ROW_BLOCK):
        r1 = min(r0 + _ROW_BLOCK, na)
        for c0 in range(r0 if same else 0, nb, _COL_BLOCK):
            c1 = min(c0 + _COL_BLOCK, nb)
            for c in range(C):
                S = np.abs(A[c, r0:r1].astype(np.float64) @ B[c, c0:c1].astype(np.float64).T)
                if same:
                    S[np.arange(r0, r1)[:, None] >= np.arange(c0, c1)[None, :]] = 0
                total[c] += S.sum()
    pairs = na * (na - 1) // 2 if same else na * nb
    return total, pairs


def _field_result(statistic, source, fields, matrix, counts, names) -> dict[str, Any]:
    return {
        "statistic": statistic,
        "source": source,
        "fields": [int(a) for a in fields],
        "field_names": [names.field(a) for a in fields],
        "matrix": [[None if not np.isfinite(x) else float(x) for x in row] for row in np.asarray(matrix)],
        "pairs": None if counts is None else [[int(x) for x in row] for row in np.asarray(counts)],
    }


# --------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------


def top_features(model: Model, n: int, *, sample: Sample | None = None, names: Names | None = None,
                 class_index: int | None = None) -> dict[str, Any]:
    """The `n` features with the largest score = |linear weight| + factor norm."""
    names = names or Names()
    w = _weights(model, class_index)
    nf = w.n_features
    if sample is not None:
        ids, occ = sample.feature_counts()
        keep = ids < nf
        ids, occ = ids[keep], occ[keep]
        source = "features seen in the sample data"
    elif w.trained is not None:
        ids, occ = np.flatnonzero(w.trained).astype(np.int64), None
        source = "features that training updated"
    else:
        ids, occ = np.arange(nf, dtype=np.int64), None
        source = "every feature"
    if sample is not None and w.trained is not None:
        t = w.trained[ids] if ids.size else np.zeros(0, bool)
        ids, occ = ids[t], occ[t]
        source += " that training updated"
    lin = np.zeros(ids.size)
    emb = np.zeros(ids.size)
    step = 1 << 16
    for lo in range(0, ids.size, step):
        part = ids[lo: lo + step]
        if w.linear is not None:
            L = np.asarray(w.linear[:, part], np.float64)
            lin[lo: lo + step] = np.sqrt((L * L).sum(axis=0))
        if w.factors is not None:
            Fp = np.asarray(w.factors[:, part], np.float64)
            emb[lo: lo + step] = np.sqrt((Fp * Fp).reshape(Fp.shape[0], Fp.shape[1], -1).sum(axis=(0, 2)))
    score = lin + emb
    top = np.argsort(-score, kind="stable")[:n] if ids.size <= n else \
        np.argpartition(-score, n - 1)[:n]
    top = sorted(top.tolist(), key=lambda t: (-score[t], ids[t]))
    field_of = _main_field(sample) if sample is not None else {}
    map_field = {}
    if sample is None and names.has_field_map:     # the field of a listed feature that is in one field only
        chosen = [w.original(i) for i in ids[top].tolist()]
        hit = np.isin(names.map_feature, chosen)
        f, a = names.map_feature[hit].tolist(), names.map_field[hit].tolist()
        for i, fa in zip(f, a):
            map_field[i] = fa if i not in map_field else None
    rows = []
    for rank, t in enumerate(top, 1):
        slot = int(ids[t])
        i = w.original(slot)          # the id as the data has it
        fld = field_of.get(slot, map_field.get(i))
        linear = lin[t]
        if w.linear is not None and w.C == 1:
            linear = float(w.linear[0, slot])
        rows.append({"rank": rank, "feature": i, "field": fld, "name": names.feature(i, fld),
                     "field_name": names.field(fld), "linear": float(linear) if w.linear is not None else None,
                     "factor_norm": float(emb[t]) if w.factors is not None else None,
                     "score": float(score[t]), "count": None if occ is None else int(occ[t])})
    return {
        "score": "|linear weight| + factor vector norm"
                 + (" (FFM: over all its field blocks)" if w.mk.factors == "feature-field" else "")
                 + (" (norms over classes)" if w.C > 1 else ""),
        "class": None if class_index is None else w.class_names[0] if w.class_names else None,
        "candidates": int(ids.size),
        "candidates_are": source,
        "features": rows,
    }


def _main_field(sample: Sample) -> dict[int, int]:
    """The field each feature of the sample occurs in most often."""
    order = np.lexsort((-sample.unit_count, sample.unit_feature))
    f, a = sample.unit_feature[order], sample.unit_field[order]
    first = np.r_[True, f[1:] != f[:-1]] if f.size else np.zeros(0, bool)
    return dict(zip(f[first].tolist(), a[first].tolist()))


# --------------------------------------------------------------------------
# Data files
# --------------------------------------------------------------------------

_EXACT_IDS = 1 << 28      # ids below this are counted exactly, one bit each (32 MiB at most) ...
_BYTE_IDS = 1 << 24       # ... or below this, one byte each (16 MiB at most), which is quicker
_HLL_P = 14               # HyperLogLog registers: 2^14, standard error 1.04 / 2^7 = 0.8%
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], np.uint8)


class DistinctCounter:
    """Distinct non-negative ids: exact while every id is below 2^28 (a byte
    per id up to 2^24, then a bit per id), a HyperLogLog estimate (2^14
    registers, about 0.8% standard error) once a larger id appears."""

    def __init__(self, exact_limit: int = _EXACT_IDS, byte_limit: int = _BYTE_IDS):
        self.exact_limit = exact_limit
        self.byte_limit = min(byte_limit, exact_limit)
        self.flags: np.ndarray | None = np.zeros(0, bool)     # a byte per id (small ids)
        self.bits: np.ndarray | None = None                   # a bit per id
        self.registers: np.ndarray | None = None

    @property
    def exact(self) -> bool:
        return self.registers is None

    def add(self, ids: np.ndarray) -> None:
        if not ids.size:
            return
        top = int(ids.max())
        if self.registers is None and top >= self.exact_limit:
            self.registers = np.zeros(1 << _HLL_P, np.uint8)
            self._hll_add(self._members())
            self.flags = self.bits = None
        if self.registers is not None:
            self._hll_add(np.unique(ids).astype(np.int64))
            return
        if self.flags is not None and top >= self.byte_limit:
            self.bits = np.packbits(self.flags, bitorder="little")
            self.flags = None
        if self.flags is not None:
            if top >= self.flags.size:
                grown = np.zeros(max(top + 1, min(2 * self.flags.size, self.byte_limit)), bool)
                grown[: self.flags.size] = self.flags
                self.flags = grown
            self.flags[ids] = True
            return
        need = (top >> 3) + 1
        if need > self.bits.size:
            grown = np.zeros(max(need, min(2 * self.bits.size, (self.exact_limit >> 3) + 1)), np.uint8)
            grown[: self.bits.size] = self.bits
            self.bits = grown
        np.bitwise_or.at(self.bits, ids >> 3, np.left_shift(np.uint8(1), (ids & 7).astype(np.uint8)))

    def _members(self) -> Iterator[np.ndarray]:
        if self.flags is not None:
            yield np.flatnonzero(self.flags).astype(np.int64)
            return
        step = 1 << 20
        for lo in range(0, self.bits.size, step):
            ids = np.flatnonzero(np.unpackbits(self.bits[lo: lo + step], bitorder="little"))
            yield ids.astype(np.int64) + lo * 8

    def _hll_add(self, ids) -> None:
        if isinstance(ids, np.ndarray):
            ids = [ids]
        for part in ids:
            if not part.size:
                continue
            h = part.astype(np.uint64)
            with np.errstate(over="ignore"):
                h ^= h >> np.uint64(33)
                h *= np.uint64(0xFF51AFD7ED558CCD)
                h ^= h >> np.uint64(33)
                h *= np.uint64(0xC4CEB93FE53BE185)
                h ^= h >> np.uint64(33)
            idx = (h >> np.uint64(64 - _HLL_P)).astype(np.int64)
            rest = (h & np.uint64((1 << (64 - _HLL_P)) - 1)).astype(np.float64)   # < 2^50: exact
            bitlen = np.frexp(rest)[1]
            rank = (64 - _HLL_P - bitlen + 1).astype(np.uint8)
            np.maximum.at(self.registers, idx, rank)

    def count(self) -> int:
        if self.registers is None:
            if self.flags is not None:
                return int(np.count_nonzero(self.flags))
            total = 0
            step = 1 << 24
            for lo in range(0, self.bits.size, step):
                total += int(_POPCOUNT[self.bits[lo: lo + step]].sum(dtype=np.int64))
            return total
        m = float(1 << _HLL_P)
        alpha = 0.7213 / (1 + 1.079 / m)
        estimate = alpha * m * m / float(np.sum(np.ldexp(1.0, -self.registers.astype(np.int64))))
        zeros = int(np.count_nonzero(self.registers == 0))
        if estimate <= 2.5 * m and zeros:
            estimate = m * math.log(m / zeros)
        return int(round(estimate))


@dataclass
class _LabelStats:
    mode: str
    values: dict = field(default_factory=dict)      # numeric label -> rows (while few)
    many: bool = False
    n: int = 0
    total: float = 0.0
    squares: float = 0.0
    lo: float = math.inf
    hi: float = -math.inf
    classes: dict = field(default_factory=dict)     # class name -> rows

    def add(self, labels: np.ndarray, classes: list[str] | None) -> None:
        if not labels.size:
            return
        if self.mode == "class":
            idx, c = np.unique(labels.astype(np.int64), return_counts=True)
            for i, k in zip(idx.tolist(), c.tolist()):
                name = classes[i]
                self.classes[name] = self.classes.get(name, 0) + k
            return
        x = labels.astype(np.float64)
        self.n += x.size
        self.total += float(x.sum())
        self.squares += float((x * x).sum())
        self.lo, self.hi = min(self.lo, float(x.min())), max(self.hi, float(x.max()))
        if not self.many:
            v, c = np.unique(x, return_counts=True)
            for a, k in zip(v.tolist(), c.tolist()):
                self.values[a] = self.values.get(a, 0) + k
            if len(self.values) > 64:
                self.many, self.values = True, {}

    def result(self, rows: int) -> dict[str, Any]:
        if self.mode == "class":
            numbers = {}
            for token, k in self.classes.items():
                v = _number(token)
                if v is None:
                    break
                numbers[v] = numbers.get(v, 0) + k
            else:   # numeric labels read as tokens (standard input): count them as numbers
                self.values = numbers
                self.n = sum(numbers.values())
                self.total = sum(v * k for v, k in numbers.items())
                self.squares = sum(v * v * k for v, k in numbers.items())
                self.lo, self.hi = min(numbers, default=math.inf), max(numbers, default=-math.inf)
                self.mode = "real"
                return self.result(rows)
            counts = dict(sorted(self.classes.items(), key=lambda kv: (-kv[1], kv[0])))
            return {"task": "multiclass" if len(counts) > 1 else None, "classes": counts,
                    "n_classes": len(counts)}
        if not self.n:
            return {"task": None, "min": None, "max": None, "mean": None, "std": None, "values": {}}
        out: dict[str, Any] = {"min": None if not self.n else self.lo, "max": None if not self.n else self.hi,
                               "mean": self.total / self.n if self.n else None,
                               "std": math.sqrt(max(0.0, self.squares / self.n - (self.total / self.n) ** 2))
                               if self.n else None}
        values = set(self.values)
        if not self.many and len(values) > 1 and (values <= {0.0, 1.0} or values <= {-1.0, 1.0}):
            pos = self.values.get(1.0, 0)
            out.update(task="binary", positives=pos, negatives=rows - pos, positive_rate=pos / rows if rows else None)
        elif self.many or any(not float(v).is_integer() for v in values):
            out["task"] = "regression"
        else:
            out["task"] = None        # integers other than 0/1: multiclass or regression
        if not self.many:
            out["values"] = {_num(v): k for v, k in sorted(self.values.items())}
        return out


def _number(token: str) -> float | None:
    try:
        v = float(token)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(v)


def _label_mode(path: str, fmt: str, limits, parquet: dict | None) -> str:
    """'real' when the labels at the start of `path` are all numbers, else
    'class' (which reads numbers too, keeping each distinct label: for
    standard input and pipes, which cannot be read twice)."""
    from .data.dataset import make_reader

    if path == "-" or not os.path.isfile(path):      # stdin, a pipe: they cannot be read twice
        return "class"
    reader = make_reader(path, fmt, "class", limits, track_lines=False, parquet=parquet, block_bytes=1 << 20)
    it = iter(reader)
    try:
        next(it, None)
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()
    return "real" if all(_number(t) is not None for t in reader.classes or []) else "class"


def scan_data(specs: str | Sequence[str], *, fmt: str = "auto", limits=None, parquet: dict | None = None,
              max_rows: int | None = None) -> dict[str, Any]:
    """Streaming statistics of data files (paths, globs or '-')."""
    from .data.dataset import make_reader
    from .data.source import compression_from_name, expand_inputs
    from .data.text import ReadLimits

    limits = limits or ReadLimits()
    paths = expand_inputs([specs] if isinstance(specs, (str, os.PathLike)) else list(specs))
    mode = _label_mode(paths[0], fmt, limits, parquet)
    t0 = time.perf_counter()
    features, fields = DistinctCounter(), DistinctCounter()
    labels = _LabelStats(mode)
    rows = nnz = empty = not_one = 0
    nnz_min, nnz_max = None, 0
    max_feature = max_field = -1
    weights = {"rows": 0, "min": math.inf, "max": -math.inf, "sum": 0.0}
    files = []
    bad: list = []
    bad_count = 0
    remaining = limits.max_bad_rows
    for path in paths:
        if max_rows is not None and rows >= max_rows:
            break
        per_file = dataclasses.replace(limits, max_bad_rows=remaining)
        reader = make_reader(path, fmt, mode, per_file, track_lines=False, parquet=parquet)
        file_rows = 0
        for batch in reader:
            if max_rows is not None and rows + batch.n_rows > max_rows:
                batch = batch.rows(0, max_rows - rows)
            n = batch.n_rows
            rows += n
            file_rows += n
            lengths = np.diff(batch.indptr)
            nnz += batch.nnz
            if n:
                nnz_min = int(lengths.min()) if nnz_min is None else min(nnz_min, int(lengths.min()))
                nnz_max = max(nnz_max, int(lengths.max()))
                empty += int(np.count_nonzero(lengths == 0))
            if batch.nnz:
                max_feature = max(max_feature, batch.max_feature)
                max_field = max(max_field, batch.max_field)
                features.add(batch.features)
                fields.add(batch.fields)
                not_one += int(np.count_nonzero(batch.values != 1))
            labels.add(batch.labels, reader.classes)
            if batch.weights is not None:
                wt = batch.weights
                weights["rows"] += n
                weights["min"] = min(weights["min"], float(wt.min()))
                weights["max"] = max(weights["max"], float(wt.max()))
                weights["sum"] += float(wt.sum(dtype=np.float64))
            if max_rows is not None and rows >= max_rows:
                break
        bad += [str(e) for e in reader.bad_rows[:5 - len(bad)]] if len(bad) < 5 else []
        bad_count += len(reader.bad_rows)
        remaining = max(0, remaining - len(reader.bad_rows))
        fmt_name = reader.fmt
        if fmt_name == "parquet" and getattr(reader, "kind", None):
            fmt_name = f"parquet ({reader.kind})"
        codec = None
        if fmt_name != "parquet" and not fmt_name.startswith("parquet"):
            codec = compression_from_name(path) or _sniffed_codec(path)
        files.append({"path": reader.name, "format": fmt_name, "compression": codec, "rows": file_rows,
                      "bytes_on_disk": os.path.getsize(path) if os.path.isfile(path) else None,
                      "bytes_read": int(reader.bytes_read)})
    formats = sorted({f["format"] for f in files})
    return {
        "schema": SCHEMA_DATA,
        "type": "data",
        "files": files,
        "format": formats[0] if len(formats) == 1 else "mixed",
        "rows": rows,
        "truncated": max_rows is not None and rows >= max_rows,
        "entries": nnz,
        "entries_per_row": {"min": nnz_min if nnz_min is not None else 0, "mean": nnz / rows if rows else 0.0,
                            "max": nnz_max},
        "rows_without_features": empty,
        "values_other_than_1": not_one,
        "fields": {"distinct": fields.count(), "exact": fields.exact, "max_id": max_field},
        "features": {"distinct": features.count(), "exact": features.exact, "max_id": max_feature},
        "labels": labels.result(rows),
        "weights": None if not weights["rows"] else {
            "rows": weights["rows"], "min": weights["min"], "max": weights["max"],
            "mean": weights["sum"] / weights["rows"]},
        "bad_rows": {"count": bad_count, "first": bad},
        "seconds": time.perf_counter() - t0,
    }


def _sniffed_codec(path: str) -> str | None:
    from .data.source import sniff_compression

    if not os.path.isfile(path):
        return None
    try:
        with open(path, "rb") as f:
            return sniff_compression(f.read(10))
    except OSError:
        return None
