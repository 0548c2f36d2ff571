"""ONNX export of a model (``fm convert MODEL --to onnx``).

The exported graph scores padded rows with standard ONNX operators (opset
17: Gather, Where, Mul, MatMul, ReduceSum, NonZero, Sigmoid, Softmax, ...),
so any ONNX runtime can serve a model without fmcli.

Inputs (N rows, L entries per row; both dimensions are dynamic):

    fields    int64   [N, L]   field of each entry
    features  int64   [N, L]   feature id of each entry (the ids the data
                               holds: a model with an id map translates them
                               in the graph)
    values    float32 [N, L]   value of each entry

Rows shorter than L are padded with entries of value 0 (any feature and
field; feature -1 and field 0 by convention): such an entry adds nothing to
the score nor to the row's instance normalisation.  A feature id outside the
model (negative, >= n_features, or without a slot in the id map) or, for
the field-aware kinds (FFM, FwFM, FmFM), a field outside the model adds
nothing, as in ``fm predict``; its value still counts in the normalisation.

Outputs:

    probabilities float32 [N] (binary) or [N, C] (multiclass, softmax)
    predictions   float32 [N]           (regression: the value)
    scores        float32 [N] or [N, C] the raw scores (logits)

How each kind is scored (``x`` the values times the row's normalisation
factor, ``j`` the features, ``f`` the fields, pairs i < l of the row's
entries), as in fmcli's kernels:

    score = bias + sum_i w[j_i] x_i + pair term
    fm    0.5 * (|sum_i V[j_i] x_i|^2 - sum_i |V[j_i] x_i|^2)
    ffm   sum_{i<l} <V[j_i, f_l], V[j_l, f_i]> x_i x_l
    fwfm  sum_{i<l} R[f_i, f_l] <V[j_i], V[j_l]> x_i x_l
    fmfm  sum_{i<l} (V[j_i] x_i)^T M[f_i, f_l] (V[j_l] x_l)

FFM, FwFM and FmFM build the L (L - 1) / 2 pairs of every row at once, so
their working memory grows as N * L^2 / 2 * C * k floats (FmFM: times k):
score large inputs in batches of rows.

Size: a protobuf message cannot exceed 2 GiB, so a model whose parameters
take more than :data:`EXTERNAL_DATA_THRESHOLD` bytes is written with its
weights in a sibling file, ``OUTPUT.data`` (ONNX external data, each tensor
at an offset aligned to 64 KiB), which must stay next to the graph.

This is the only module that imports ``onnx`` (the ``onnx`` extra); it is
imported when an export is asked for, never by the plain command line.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field

import numpy as np

from ._version import DISTRIBUTION, __version__
from .atomic import atomic_output
from .errors import ExtraMissingError, UsageError
from .model import Model
from .registry import kind as model_kind

__all__ = ["export_onnx", "to_onnx", "ExportResult", "EXTERNAL_DATA_THRESHOLD", "OPSET"]

OPSET = 17
# Parameters beyond this many bytes go to OUTPUT.data (protobuf's limit is 2 GiB
# for the whole message; the graph itself is a few kilobytes).
EXTERNAL_DATA_THRESHOLD = 1 << 30
_DATA_ALIGN = 1 << 16     # external tensors start at multiples of this (memory-mappable)
_INLINE_MAX = 1024        # tensors smaller than this stay in the graph file
_DENSE_ID_MAP_BYTES = 4 << 20   # an id map's dense table may always take this much

EXTRA_HINT = f"pip install '{DISTRIBUTION}[onnx]'"


def _onnx():
    """The onnx package, or ExtraMissingError naming the extra."""
    try:
        import onnx
    except ImportError:
        raise ExtraMissingError(f"--to onnx needs the onnx package: {EXTRA_HINT}") from None
    return onnx


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote."""

    path: str
    data_path: str | None = None      # the external data file, when one was written
    bytes_out: int = 0                # the graph and its data file together
    outputs: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------
# the parameters as the graph reads them


def _tables(model: Model) -> dict[str, np.ndarray]:
    """The model's parameters as float32 tables indexed by the graph, each
    with the class axis C (1 for binary and regression) after the row axis
    and a zero row appended where unseen ids are sent:

        bias     [C]
        linear   [n + 1, C]
        factors  [n + 1, C, k]       (FFM: [(n + 1) * m, C, k], row j * m + f)
        pairs    [m * m, C]          FwFM: R, row a * m + b, mirrored from a <= b
                 [m * m, C, k, k]    FmFM: M, mirrored (transposed) from a < b,
                                     the symmetric part on the diagonal
    """
    s = model.spec
    kind = model_kind(s.kind)
    multi = s.task == "multiclass"
    C, n, m, k = s.n_classes, s.n_features, s.n_fields, s.k

    def per_class(a: np.ndarray) -> np.ndarray:
        a = np.asarray(a, np.float32)
        return a if multi else a[None]      # a leading class axis

    out: dict[str, np.ndarray] = {}
    if s.use_bias:
        out["bias"] = per_class(model.params["bias"]).reshape(C)
    if s.use_linear:
        lin = per_class(model.params["linear"])                     # (C, n)
        out["linear"] = np.concatenate([lin.T, np.zeros((1, C), np.float32)])
    factors = model.params.get("factors")
    if factors is not None:
        v = per_class(factors)
        if kind.factors == "feature-field":                         # (C, n, m, k)
            v = v.transpose(1, 2, 0, 3).reshape(n * m, C, k)
            pad = m
        else:                                                       # (C, n, k)
            v = v.transpose(1, 0, 2)
            pad = 1
        out["factors"] = np.concatenate([v, np.zeros((pad, C, k), np.float32)])
    if kind.pairs:
        p = per_class(model.params[kind.pair_param])
        upper = np.triu(np.ones((m, m), bool))           # the trained pairs, a <= b
        a_idx, b_idx = np.nonzero(~upper)                # a > b: mirrored from (b, a)
        if kind.pairs == "scalar":                                  # (C, m, m)
            r = p.copy()
            r[:, a_idx, b_idx] = p[:, b_idx, a_idx]
            out["pairs"] = np.ascontiguousarray(r.transpose(1, 2, 0).reshape(m * m, C))
        else:                                                       # (C, m, m, k, k)
            mm = p.copy()
            mm[:, a_idx, b_idx] = p[:, b_idx, a_idx].transpose(0, 1, 3, 2)
            d = np.arange(m)
            diag = p[:, d, d]
            mm[:, d, d] = 0.5 * (diag + diag.transpose(0, 1, 3, 2))
            out["pairs"] = np.ascontiguousarray(mm.transpose(1, 2, 0, 3, 4).reshape(m * m, C, k, k))
    return out


# ---------------------------------------------------------------------------
# the graph


class _Graph:
    """A small builder of ONNX nodes with generated names."""

    def __init__(self, onnx):
        self.onnx = onnx
        self.h = onnx.helper
        self.nodes: list = []
        self.initializers: list = []
        self._n = 0
        self._ints: dict = {}

    def const(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(self.onnx.numpy_helper.from_array(np.asarray(array, order="C"), name))
        return name

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs) -> str:
        self._n += 1
        name = out or f"{op_type.lower()}_{self._n}"
        self.nodes.append(self.h.make_node(op_type, list(inputs), [name], name=f"n{self._n}_{op_type}",
                                           **attrs))
        return name

    def ints(self, name: str, values) -> str:
        """An int64 constant (a scalar or a list), made once per value."""
        a = np.asarray(values, np.int64)
        key = (a.shape, a.tobytes())
        if key not in self._ints:
            self._ints[key] = self.const(f"{name}_{len(self._ints)}", a)
        return self._ints[key]


def _feature_slots(g: _Graph, model: Model, features: str, weight_bytes: int) -> tuple[str, str]:
    """(slots, known): the model's slot of each feature id (int64 [N, L]) and
    whether it has one (bool [N, L]).  Without an id map the slot is the id,
    known when 0 <= id < n_features.

    With an id map whose id space (largest id + 1) takes no more int32 than
    the weights (`weight_bytes`) or 4 MiB, a table holds the slot of every
    id of the space.  Otherwise the sorted original ids are split into
    about n buckets of equal id ranges; a table gives where each bucket
    starts, and a binary search within the bucket, unrolled into
    ceil(log2(largest bucket + 1)) steps of Gather and Where, finds the id
    (hashed ids fill the buckets evenly: a few steps)."""
    n = model.spec.n_features
    n_c = g.ints("n_features", n)
    zero = g.ints("zero", 0)
    if model.feature_ids is None:
        known = g.op("And", g.op("GreaterOrEqual", features, zero), g.op("Less", features, n_c))
        return features, known
    ids = np.asarray(model.feature_ids, np.int64)
    space = int(ids.max()) + 1 if ids.size else 1
    if 4 * space <= max(_DENSE_ID_MAP_BYTES, weight_bytes):
        # a slot per id of the space (int32; n: no slot), one Gather
        dense = np.full(space, n, np.int32)
        dense[ids] = np.arange(n, dtype=np.int32)
        inside = g.op("And", g.op("GreaterOrEqual", features, zero),
                      g.op("Less", features, g.ints("space", space)))
        clamped = g.op("Min", g.op("Max", features, zero), g.ints("last_id", space - 1))
        slot = g.op("Cast", g.op("Gather", g.const("id_map_dense", dense), clamped, axis=0),
                    to=g.onnx.TensorProto.INT64)
        slot = g.op("Where", inside, slot, n_c)
        return slot, g.op("Less", slot, n_c)
    order = np.argsort(ids, kind="stable")
    ordered = ids[order]
    shift = max(0, (space - 1).bit_length() - max(1, n.bit_length()))
    buckets = (space - 1 >> shift) + 1
    starts = np.searchsorted(ordered, np.arange(buckets + 1, dtype=np.int64) << shift).astype(np.int64)
    steps = int(np.diff(starts).max(initial=0)).bit_length()
    # sorted ids with a sentinel above every id, so that position n reads it
    sorted_ids = g.const("id_map_sorted", np.concatenate([ordered, [np.iinfo(np.int64).max]]))
    slot_of = g.const("id_map_slots", np.concatenate([order, [n]]).astype(np.int64))
    one = g.ints("one", 1)
    inside = g.op("Min", g.op("Max", features, zero), g.ints("last_id", space - 1))
    bucket = g.op("Div", inside, g.ints("bucket_width", 1 << shift))
    table = g.const("id_map_buckets", starts)
    # lo, hi: the first position whose id is >= the feature lies in [lo, hi]
    lo = g.op("Gather", table, bucket, axis=0)
    hi = g.op("Gather", table, g.op("Add", bucket, one), axis=0)
    for _ in range(steps):
        mid = g.op("Div", g.op("Add", lo, hi), g.ints("two", 2))
        below = g.op("Less", g.op("Gather", sorted_ids, mid, axis=0), features)
        lo = g.op("Where", below, g.op("Add", mid, one), lo)
        hi = g.op("Where", below, hi, mid)
    found = g.op("Equal", g.op("Gather", sorted_ids, lo, axis=0), features)
    return g.op("Gather", slot_of, lo, axis=0), found


def _pair_term(g: _Graph, kind, V: str, tables: dict[str, np.ndarray], j: str, f: str, x: str,
               m: int) -> str:
    """The pair term [N, C] of FFM, FwFM and FmFM.  FFM and FmFM gather
    every pair i < l of a row's L entries (P = L (L - 1) / 2 of them, listed
    by NonZero of the upper triangle) at once."""
    L = g.op("Squeeze", g.op("Slice", g.op("Shape", j), g.ints("s1", [1]), g.ints("s2", [2])),
             g.ints("axis_0", [0]))
    r = g.op("Range", g.ints("r0", 0), L, g.ints("r1", 1))
    upper = g.op("Less", g.op("Unsqueeze", r, g.ints("axis_1", [1])),
                 g.op("Unsqueeze", r, g.ints("axis_0", [0])))                     # [L, L]: i < l
    m_c = g.ints("m", m)
    if kind.pairs == "scalar":
        # FwFM: R[f_i, f_l] <p_i, p_l> for every i, l at once (one batched
        # MatMul; faster than gathering the pairs), i < l kept by a mask
        P = g.op("Mul", g.op("Gather", V, j, axis=0),
                 g.op("Unsqueeze", x, g.ints("axes_23", [2, 3])))                # [N, L, C, k]
        Pt = g.op("Transpose", P, perm=[0, 2, 1, 3])                             # [N, C, L, k]
        dots = g.op("MatMul", Pt, g.op("Transpose", P, perm=[0, 2, 3, 1]))       # [N, C, L, L]
        pidx = g.op("Add", g.op("Mul", g.op("Unsqueeze", f, g.ints("axis_2", [2])), m_c),
                    g.op("Unsqueeze", f, g.ints("axis_1", [1])))                 # [N, L, L]: f_i m + f_l
        R = g.op("Transpose", g.op("Gather", g.const("pairs", tables["pairs"]), pidx, axis=0),
                 perm=[0, 3, 1, 2])                                              # [N, C, L, L]
        mask = g.op("Cast", upper, to=g.onnx.TensorProto.FLOAT)
        return g.op("ReduceSum", g.op("Mul", g.op("Mul", dots, R), mask), g.ints("axes_23", [2, 3]),
                    keepdims=0)
    both = g.op("NonZero", upper)                                                # [2, P]
    I = g.op("Gather", both, g.ints("zero", 0), axis=0)                          # [P]: i
    J = g.op("Gather", both, g.ints("one", 1), axis=0)                           # [P]: l

    def at(t: str, positions: str) -> str:       # t[:, positions]
        return g.op("Gather", t, positions, axis=1)

    if kind.factors == "feature-field":
        # <V[j_i, f_l], V[j_l, f_i]> x_i x_l, V's row j * m + f
        A = g.op("Gather", V, g.op("Add", g.op("Mul", at(j, I), m_c), at(f, J)), axis=0)   # [N, P, C, k]
        B = g.op("Gather", V, g.op("Add", g.op("Mul", at(j, J), m_c), at(f, I)), axis=0)
        dots = g.op("ReduceSum", g.op("Mul", A, B), g.ints("axis_3", [3]), keepdims=0)       # [N, P, C]
        xx = g.op("Unsqueeze", g.op("Mul", at(x, I), at(x, J)), g.ints("axis_2", [2]))     # [N, P, 1]
        return g.op("ReduceSum", g.op("Mul", dots, xx), g.ints("axis_1", [1]), keepdims=0)
    P = g.op("Mul", g.op("Gather", V, j, axis=0),
             g.op("Unsqueeze", x, g.ints("axes_23", [2, 3])))                    # [N, L, C, k]
    Pi, Pl = at(P, I), at(P, J)                                                  # [N, P, C, k]
    R = g.op("Gather", g.const("pairs", tables["pairs"]),
             g.op("Add", g.op("Mul", at(f, I), m_c), at(f, J)), axis=0)          # row f_i * m + f_l
    # p_i^T M[f_i, f_l] p_l = sum_{r,q} p_i[r] M[r, q] p_l[q]; R is [N, P, C, k, k].
    # (Broadcast products rather than MatMul: a k x k product per pair is
    # mostly call overhead in a runtime's batched MatMul.)
    left = g.op("Mul", g.op("Unsqueeze", Pi, g.ints("axis_4", [4])), R)        # p_i[r] M[r, q]
    terms = g.op("Mul", left, g.op("Unsqueeze", Pl, g.ints("axis_3", [3])))     # ... p_l[q]
    return g.op("ReduceSum", terms, g.ints("axes_134", [1, 3, 4]), keepdims=0)


def _build(onnx, model: Model, tables: dict[str, np.ndarray], metadata: dict[str, str]):
    """The ModelProto scoring `model` with `tables` (see :func:`_tables`)."""
    s = model.spec
    kind = model_kind(s.kind)
    TP = onnx.TensorProto
    g = _Graph(onnx)
    C, n, m = s.n_classes, s.n_features, s.n_fields
    fielded = kind.needs_fields        # an entry with a field outside the model adds nothing

    # -- ids: unseen features (and fields) go to the zero row n -------------------------
    slots, ok = _feature_slots(g, model, "features", sum(a.nbytes for a in tables.values()))
    if fielded:
        field_ok = g.op("And", g.op("GreaterOrEqual", "fields", g.ints("zero_f", 0)),
                        g.op("Less", "fields", g.ints("n_fields", m)))
        ok = g.op("And", ok, field_ok)
    j = g.op("Where", ok, slots, g.ints("unseen_row", n), out="rows_of_entries")
    f = None
    if fielded:
        f = g.op("Where", ok, "fields", g.ints("field_of_unseen", 0), out="fields_of_entries")

    # -- values, times 1/||x|| per row when the model normalises -------------------------
    x = "values"
    if s.normalize:
        ss = g.op("ReduceSum", g.op("Mul", x, x), g.ints("axis_1", [1]), keepdims=1)
        inv = g.op("Reciprocal", g.op("Sqrt", ss))
        scale = g.op("Where", g.op("Greater", ss, g.const("zero_f32", np.float32(0))), inv,
                     g.const("one_f32", np.float32(1)))
        x = g.op("Mul", x, scale, out="scaled_values")

    # -- score [N, C] = bias + linear + pair term ----------------------------------------
    rows = g.op("Slice", g.op("Shape", "features"), g.ints("s0", [0]), g.ints("s1", [1]))
    shape_nc = g.op("Concat", rows, g.ints("n_classes", [C]), axis=0)
    score = g.op("ConstantOfShape", shape_nc, value=onnx.helper.make_tensor("z", TP.FLOAT, [1], [0.0]))
    if "bias" in tables:
        score = g.op("Add", score, g.const("bias", tables["bias"]))
    x3 = g.op("Unsqueeze", x, g.ints("axis_2", [2]))                      # [N, L, 1]
    if "linear" in tables:
        w = g.op("Gather", g.const("linear", tables["linear"]), j, axis=0)  # [N, L, C]
        score = g.op("Add", score, g.op("ReduceSum", g.op("Mul", w, x3), g.ints("axis_1b", [1]), keepdims=0))

    if kind.factors:
        V = g.const("factors", tables["factors"])
        if kind.factors == "feature" and not kind.pairs:
            # FM: 0.5 * (|sum_i p_i|^2 - sum_i |p_i|^2), p_i = V[j_i] x_i
            P = g.op("Mul", g.op("Gather", V, j, axis=0),
                     g.op("Unsqueeze", x, g.ints("axes_23", [2, 3])))            # [N, L, C, k]
            total = g.op("ReduceSum", P, g.ints("axis_1", [1]), keepdims=0)      # [N, C, k]
            sq_sum = g.op("ReduceSum", g.op("Mul", total, total), g.ints("axis_2", [2]), keepdims=0)
            sum_sq = g.op("ReduceSum", g.op("Mul", P, P), g.ints("axes_13", [1, 3]), keepdims=0)
            pair = g.op("Mul", g.op("Sub", sq_sum, sum_sq), g.const("half", np.float32(0.5)))
        else:
            pair = _pair_term(g, kind, V, tables, j, f, x, m)
        score = g.op("Add", score, pair)

    # -- outputs -----------------------------------------------------------------------
    if s.task == "multiclass":
        scores = g.op("Identity", score, out="scores")
        main = g.op("Softmax", scores, axis=1, out="probabilities")
        out_shape = ["N", C]
    else:
        scores = g.op("Squeeze", score, g.ints("axis_1i", [1]), out="scores")
        if s.task == "binary":
            main = g.op("Sigmoid", scores, out="probabilities")
        else:
            main = g.op("Identity", scores, out="predictions")   # "values" names an input
        out_shape = ["N"]
    h = onnx.helper
    inputs = [h.make_tensor_value_info("fields", TP.INT64, ["N", "L"]),
              h.make_tensor_value_info("features", TP.INT64, ["N", "L"]),
              h.make_tensor_value_info("values", TP.FLOAT, ["N", "L"])]
    outputs = [h.make_tensor_value_info(main, TP.FLOAT, out_shape),
               h.make_tensor_value_info("scores", TP.FLOAT, out_shape)]
    graph = h.make_graph(g.nodes, f"fmcli_{s.kind}_{s.task}", inputs, outputs, initializer=g.initializers)
    proto = h.make_model(graph, producer_name="fmcli", producer_version=__version__,
                         opset_imports=[h.make_opsetid("", OPSET)],
                         doc_string=f"fmcli {s.kind} model ({s.task}): inputs fields, features (int64) "
                                    "and values (float32), [rows, entries], padded with value 0")
    proto.ir_version = 8       # opset 17's IR version: readable by onnxruntime >= 1.13
    h.set_model_props(proto, metadata)
    return proto


def _metadata(model: Model, checksum: str | None) -> dict[str, str]:
    s = model.spec
    meta = {
        "fmcli.version": __version__,
        "fmcli.kind": s.kind,
        "fmcli.task": s.task,
        "fmcli.k": str(s.k),
        "fmcli.n_features": str(s.n_features),
        "fmcli.n_fields": str(s.n_fields),
        "fmcli.n_classes": str(s.n_classes),
        "fmcli.use_bias": json.dumps(s.use_bias),
        "fmcli.use_linear": json.dumps(s.use_linear),
        "fmcli.normalize": json.dumps(s.normalize),
        "fmcli.stored_dtype": model.stored_dtype,
        "fmcli.id_map": json.dumps(model.feature_ids is not None),
    }
    if s.classes is not None:
        meta["fmcli.classes"] = json.dumps(list(s.classes))
    if checksum is not None:
        meta["fmcli.model_sha256"] = checksum
    return meta


def to_onnx(model: Model, *, checksum: str | None = None):
    """The ONNX ModelProto of `model` (its weights inside the message).
    checksum: recorded in the metadata as fmcli.model_sha256 (by default
    the SHA-256 of the model's file, when it was loaded from one)."""
    onnx = _onnx()
    if checksum is None and model.path:
        checksum = _sha256(model.path)
    return _build(onnx, model, _tables(model), _metadata(model, checksum))


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def export_onnx(model: Model, path: str | os.PathLike, *, source: str | os.PathLike | None = None,
                external_threshold: int | None = None) -> ExportResult:
    """Write `model` as an ONNX graph to `path`, atomically.

    Parameters beyond `external_threshold` bytes (default
    :data:`EXTERNAL_DATA_THRESHOLD`) are written to ``path + '.data'``
    (ONNX external data, the file named relative to the graph), which is
    renamed into place before the graph.  `source` (default: the model's
    file) may not be the output nor its data file.

    Raises ExtraMissingError without the onnx package, UsageError when an
    output would replace the model file."""
    onnx = _onnx()
    path = os.fspath(path)
    data_path = path + ".data"
    source = os.fspath(source) if source is not None else model.path
    if source is not None:
        for out in (path, data_path):
            if _same_file(source, out):
                raise UsageError(f"{out} is the model file {source}; choose another output")
    checksum = _sha256(source) if source is not None and os.path.isfile(source) else None
    tables = _tables(model)
    proto = _build(onnx, model, tables, _metadata(model, checksum))
    limit = EXTERNAL_DATA_THRESHOLD if external_threshold is None else int(external_threshold)
    result = ExportResult(path=path)
    if sum(a.nbytes for a in tables.values()) > limit:
        result.data_path = data_path
        _write_external(onnx, proto, data_path, os.path.basename(data_path))
        result.outputs.append(data_path)
    with atomic_output(path) as f:
        f.write(proto.SerializeToString())
    result.outputs.append(path)
    result.bytes_out = sum(os.path.getsize(p) for p in result.outputs)
    return result


def _write_external(onnx, proto, data_path: str, location: str) -> None:
    """Move the bytes of every initializer but the small ones to `data_path`
    (atomically), leaving references to `location` (offset, length) in
    `proto`."""
    from onnx.external_data_helper import set_external_data

    offset = 0
    with atomic_output(data_path) as f:
        for tensor in proto.graph.initializer:
            raw = tensor.raw_data
            if len(raw) < _INLINE_MAX:      # small constants (axes, shapes) stay in the graph
                continue
            pad = -offset % _DATA_ALIGN
            f.write(b"\0" * pad)
            offset += pad
            f.write(raw)
            set_external_data(tensor, location, offset=offset, length=len(raw))
            tensor.ClearField("raw_data")
            tensor.data_location = onnx.TensorProto.EXTERNAL
            offset += len(raw)

