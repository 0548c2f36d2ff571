"""Model = a description of the model plus its parameter arrays.

Logical parameter shapes (what the model file stores, see fm-model(5)):

    bias      (1,)                          when use_bias
    linear    (n_features,)                 when use_linear
    factors   (n_features, k)               FM, FwFM
              (n_features, n_fields, k)     FFM (libffm's w[j][f][:])
    field_weights (n_fields, n_fields)      FwFM: symmetric field-pair weights
    field_matrices (n_fields, n_fields, k, k)  FmFM: a k x k matrix per field pair,
                                            M[b, a] = M[a, b]^T

A multiclass model has one parameter set per class: every shape gains a
leading class dimension (bias becomes (C,)).

Optimizer state is optional and named ``<array>_state``: the parameter's
shape for one state slot (AdaGrad), (slots, *shape) for more (Adam's m and
v, FTRL's z and n); the header's optimizer.slots names them.  Row-wise
AdaGrad keeps one accumulator per k-vector: its factors_state is
factors.shape[:-1] (field_matrices_state: one per matrix row, (m, m, k)).

Parameters may be stored as float16, or (factors) as int8 with a float16
scale per k-vector (``factors_scale``, shape factors.shape[:-1]); they are
float32 again once loaded.  Arrays named ``spec_*`` belong to the
preprocessing spec in the header's ``spec`` key (fmcli.data.criteo) and are
kept as they are.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._version import __version__
from .config import MAX_K
from .errors import ModelFormatError
from .registry import KINDS, kind as model_kind
from .modelfile import PendingCheck, json_safe, map_model_file, read_header, read_model_file, write_model_file

def padded_k(k: int) -> int:
    """Factor width in memory: k rounded up to a multiple of 4."""
    return (k + 3) // 4 * 4


@dataclass(frozen=True)
class ModelSpec:
    """What a model is, independent of its weights."""

    kind: str
    task: str
    k: int
    n_features: int
    n_fields: int
    use_bias: bool
    use_linear: bool
    normalize: bool
    n_classes: int = 1
    classes: tuple[str, ...] | None = None   # multiclass: the label token of each class

    def factor_shape(self) -> tuple[int, ...] | None:
        """Factor shape of one class."""
        return model_kind(self.kind).factor_shape(self.n_features, self.n_fields, self.k)

    def pair_shape(self) -> tuple[int, ...] | None:
        """Field-pair parameters' shape of one class (FwFM's weights, FmFM's matrices)."""
        return model_kind(self.kind).pair_shape(self.n_fields, self.k)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        out: dict[str, tuple[int, ...]] = {}
        lead = (self.n_classes,) if self.task == "multiclass" else ()
        if self.use_bias:
            out["bias"] = lead or (1,)
        if self.use_linear:
            out["linear"] = lead + (self.n_features,)
        fs = self.factor_shape()
        if fs is not None:
            out["factors"] = lead + fs
        ps = self.pair_shape()
        if ps is not None:
            out[model_kind(self.kind).pair_param] = lead + ps
        return out

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["classes"] = None if self.classes is None else list(self.classes)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: str | None = None) -> "ModelSpec":
        try:
            flags = {name: data[name] for name in ("use_bias", "use_linear", "normalize")}
            if not all(isinstance(v, bool) for v in flags.values()):
                raise TypeError("use_bias, use_linear and normalize must be true or false")
            classes = data.get("classes")
            if classes is not None and not (isinstance(classes, list)
                                            and all(isinstance(c, str) for c in classes)):
                raise TypeError("classes must be a list of strings")
            spec = cls(
                kind=str(data["kind"]),
                task=str(data["task"]),
                k=int(data["k"]),
                n_features=int(data["n_features"]),
                n_fields=int(data["n_fields"]),
                n_classes=int(data.get("n_classes", 1)),   # format 1.0 files: one class
                classes=None if classes is None else tuple(classes),
                **flags,
            )
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise ModelFormatError(f"model description is incomplete or invalid ({exc})", path) from None
        if spec.kind not in KINDS or spec.task not in ("binary", "regression", "multiclass"):
            raise ModelFormatError(f"unsupported model kind/task {spec.kind}/{spec.task}", path)
        if spec.task == "multiclass":
            if not (2 <= spec.n_classes <= 2**20 and spec.classes is not None
                    and len(spec.classes) == spec.n_classes and len(set(spec.classes)) == spec.n_classes):
                raise ModelFormatError("a multiclass model needs n_classes >= 2 distinct class labels", path)
        elif spec.n_classes != 1 or spec.classes is not None:
            raise ModelFormatError(f"a {spec.task} model has one output (n_classes 1, no classes)", path)
        if not (1 <= spec.k <= MAX_K and 0 <= spec.n_features <= 2**31 and 0 <= spec.n_fields <= 2**31):
            raise ModelFormatError(
                f"model sizes out of range (k={spec.k}, n_features={spec.n_features}, "
                f"n_fields={spec.n_fields}; k must be 1..{MAX_K}, ids are below 2^31)", path)
        return spec


@dataclass
class Model:
    """A trained model: its spec, parameters, optional optimizer state and metadata."""

    spec: ModelSpec
    params: dict[str, np.ndarray]
    state: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, np.ndarray] = field(default_factory=dict)   # spec_* arrays, stored as they are
    stored_dtype: str = "float32"    # how the file held the parameters (float32, float16, int8)
    path: str | None = field(default=None, compare=False)   # the file it was loaded from, for messages
    # the original feature id of each slot when the model was trained on
    # compact ids (fmcli.data.idmap); None: slot = id
    feature_ids: np.ndarray | None = field(default=None, compare=False)

    def id_map(self):
        """The model's fmcli.data.idmap.IdMap, or None (ids are slots)."""
        if self.feature_ids is None:
            return None
        if getattr(self, "_id_map", None) is None:
            from .data.idmap import IdMap

            self._id_map = IdMap(self.feature_ids)
        return self._id_map

    # -- scoring layout -------------------------------------------------------
    def kernel_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
        """(bias, linear, factor blocks, field-pair weights, kp) flattened for the scoring kernel."""
        s = self.spec
        empty = np.zeros(0, np.float32)
        bias = np.ascontiguousarray(self.params.get("bias", empty), dtype=np.float32).reshape(-1)
        linear = np.ascontiguousarray(self.params.get("linear", empty), dtype=np.float32).reshape(-1)
        kp = padded_k(s.k)
        factors = self.params.get("factors")
        if factors is None:
            flat = empty
        else:
            blocks = factors.reshape(-1, s.k)
            if kp == s.k and blocks.dtype == np.float32 and blocks.flags.c_contiguous:
                flat = blocks.reshape(-1)
            else:
                padded = np.zeros((blocks.shape[0], kp), np.float32)
                padded[:, : s.k] = blocks
                flat = padded.reshape(-1)
        kind = model_kind(s.kind)
        pairs = self.params.get(kind.pair_param) if kind.pair_param else None
        if pairs is None:
            pairs = empty
        elif kind.pairs == "matrix":
            # kp x kp blocks (a row per block), zero-padded, as in training
            m, k = s.n_fields, s.k
            padded = np.zeros((pairs.size // (k * k), kp, kp), np.float32)
            padded[:, :k, :k] = pairs.reshape(-1, k, k)
            pairs = padded.reshape(-1)
        else:
            pairs = np.ascontiguousarray(pairs, dtype=np.float32).reshape(-1)
        return bias, linear, flat, pairs, kp

    # -- persistence ----------------------------------------------------------
    def save(self, path: str | os.PathLike, *, include_state: bool = True, dtype: str = "float32") -> None:
        """Write the model file.  dtype: float32, or float16 (parameters but
        the bias), or int8 (factors as int8 with a float16 scale per k-vector,
        the rest as float16) to make it smaller; optimizer state is float32."""
        if dtype not in STORAGE_DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(STORAGE_DTYPES)}, got {dtype!r}")
        header = {
            "fmcli_version": __version__,
            "model": self.spec.to_dict(),
            **{k: v for k, v in self.meta.items() if k not in ("model", "fmcli_version", "format")},
        }
        if isinstance(header.get("optimizer"), dict):
            header["optimizer"] = {**header["optimizer"], "state": bool(include_state and self.state)}
        # Strided views are fine: the writer converts them in bounded slices.
        arrays: dict[str, np.ndarray] = {}
        for name, a in self.params.items():
            if dtype == "float32" or name == "bias":
                arrays[name] = a.astype(np.float32, copy=False)
            elif dtype == "int8" and name == "factors":
                arrays[name], arrays[f"{name}_scale"] = quantize_int8(a)
            else:
                arrays[name] = to_float16(a)
        if include_state:
            for name, a in self.state.items():
                arrays[f"{name}_state"] = a.astype(np.float32, copy=False)
        arrays.update(self.extras)
        if self.feature_ids is not None:
            arrays["feature_ids"] = np.asarray(self.feature_ids, np.int32)
        # an undefined metric (NaN) is written as null, never fails the save
        write_model_file(path, json_safe(header), arrays)

    def to_bytes(self, *, include_state: bool = True) -> bytes:
        """The model file :meth:`save` would write, as bytes (for pickling)."""
        buf = io.BytesIO()
        self.save(buf, include_state=include_state)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Model":
        """The model of a model file's bytes (:meth:`to_bytes`), checked as
        :func:`load_model` checks a file."""
        return load_model(io.BytesIO(data))

    @property
    def n_parameters(self) -> int:
        return int(sum(a.size for a in self.params.values()))

    def count_zeros(self) -> int:
        """Linear and factor weights that are exactly zero (FTRL's L1 makes them)."""
        return int(sum(int(a.size) - int(np.count_nonzero(a))
                       for name, a in self.params.items() if name in ("linear", "factors")))


PARAMETER_NAMES = ("bias", "linear", "factors") + tuple(k.pair_param for k in KINDS.values() if k.pair_param)


def _must_be_finite(name: str) -> str | None:
    """How an error names array `name` when it holds NaN or infinity; None for
    arrays whose values are not checked (the preprocessing spec's)."""
    base, _, suffix = name.rpartition("_")
    if name in PARAMETER_NAMES:
        return "parameter array"
    if base in PARAMETER_NAMES and suffix == "state":
        return "optimizer state array"
    if base in PARAMETER_NAMES and suffix == "scale":
        return "quantization scale array"
    return None


def load_model(path: str | os.PathLike, *, mmap: bool = True) -> Model:
    """Load and validate a model file (memory-mapped by default).

    Every parameter, its optimizer state and its int8 scales must be finite:
    a NaN or an infinity (which a corrupt or hand-made file with a valid
    checksum can hold) is refused with :class:`ModelFormatError` rather than
    scored as NaN.  The check runs on the checksum pass (no extra read)."""
    if isinstance(path, io.BytesIO):    # a model file's bytes (Model.from_bytes)
        header, arrays = read_model_file(path, finite=_must_be_finite)
        path = None
    else:
        path = os.fspath(path)
        header, arrays = read_model_file(path, mmap=mmap, finite=_must_be_finite)
    return _model_from(header, arrays, path)


def map_model(path: str | os.PathLike) -> tuple[Model, PendingCheck]:
    """load_model(path) that returns once the file's structure is checked,
    with its checksum and values checked in a background thread
    (modelfile.map_model_file): nothing derived from the model may be
    written before the returned check's wait() has returned.  A model that
    fails its own checks on a file that fails the background ones raises
    the latter's error: a corrupt file is the cause."""
    path = os.fspath(path)
    header, arrays, check = map_model_file(path, finite=_must_be_finite)
    with check.as_cause():
        return _model_from(header, arrays, path), check


def _model_from(header: dict, arrays: dict[str, np.ndarray], path: str | None) -> Model:
    """The Model of a model file's header and arrays (see load_model)."""
    spec = ModelSpec.from_dict(header.get("model") or {}, path)
    params: dict[str, np.ndarray] = {}
    state: dict[str, np.ndarray] = {}
    expected = spec.shapes()
    stored = "float32"
    kind = model_kind(spec.kind)
    # arrays of k-vectors, which row-wise AdaGrad keeps one accumulator for
    row_state = ("factors",) + ((kind.pair_param,) if kind.pairs == "matrix" else ())
    for name, shape in expected.items():
        if name not in arrays:
            raise ModelFormatError(f"array {name!r} is missing", path)
        a = arrays[name]
        if tuple(a.shape) != shape or a.dtype not in (np.float32, np.float16, np.int8):
            raise ModelFormatError(
                f"array {name!r} has shape {tuple(a.shape)} {a.dtype}, "
                f"expected {shape} float32 (or float16, int8)",
                path,
            )
        if a.dtype == np.int8:
            scale = arrays.get(f"{name}_scale")
            if scale is None or tuple(scale.shape) != shape[:-1] or scale.dtype not in (np.float16, np.float32):
                raise ModelFormatError(f"int8 array {name!r} needs a float16 {name}_scale of shape "
                                       f"{shape[:-1]}", path)
            a = dequantize_int8(a, scale)
            stored = "int8"
        elif a.dtype == np.float16:
            a = a.astype(np.float32)
            stored = "float16" if stored == "float32" else stored
        params[name] = a
        st = arrays.get(f"{name}_state")
        if name in row_state and (header.get("optimizer") or {}).get("name") == "rowwise-adagrad":
            shape = shape[:-1]   # one accumulator per k-vector (per matrix row)
        if st is not None and tuple(st.shape[-len(shape):]) == shape and st.ndim - len(shape) <= 1:
            state[name] = st
    meta = {k: v for k, v in header.items() if k not in ("arrays", "model")}
    extras = {name: a for name, a in arrays.items() if name.startswith("spec_")}
    ids = arrays.get("feature_ids")
    if ids is not None:
        ids = np.asarray(ids)
        if (ids.ndim != 1 or ids.dtype.kind != "i" or ids.shape[0] != spec.n_features
                or (ids.shape[0] and int(ids.min()) < 0)
                or np.unique(ids).shape[0] != ids.shape[0]):
            raise ModelFormatError(f"array 'feature_ids' must hold {spec.n_features} distinct "
                                   "non-negative ids (one per feature slot)", path)
        ids = np.array(ids, np.int64)
    return Model(spec=spec, params=params, state=state, meta=meta, extras=extras, stored_dtype=stored,
                 path=path, feature_ids=ids)


STORAGE_DTYPES = ("float32", "float16", "int8")
_F16_MAX = float(np.finfo(np.float16).max)
_SLICE = 1 << 22


def to_float16(a: np.ndarray) -> np.ndarray:
    """float32 -> float16, in bounded slices; values beyond float16's range
    (65504) are an error rather than infinities."""
    flat = np.asarray(a).reshape(-1)
    out = np.empty(flat.size, np.float16)
    for s in range(0, flat.size, _SLICE):
        part = np.asarray(flat[s : s + _SLICE], np.float32)
        if part.size and float(np.abs(part).max()) > _F16_MAX:
            raise ValueError(f"a weight of magnitude {float(np.abs(part).max()):g} does not fit float16")
        out[s : s + _SLICE] = part
    return out.reshape(a.shape)


def quantize_int8(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 quantization per k-vector (the last axis): q =
    round(x / s) with s = max|x| / 127 stored as float16 (rounded up, so that
    |q| <= 127).  Returns (q, s)."""
    k = a.shape[-1]
    flat = np.asarray(a).reshape(-1, k)
    q = np.empty(flat.shape, np.int8)
    scale = np.empty(flat.shape[0], np.float16)
    tiny = float(np.finfo(np.float16).smallest_subnormal)
    step = max(1, _SLICE // max(k, 1))
    for s in range(0, flat.shape[0], step):
        x = np.asarray(flat[s : s + step], np.float32)
        m = np.abs(x).max(axis=1) / np.float32(127)
        sc = m.astype(np.float16)
        low = sc.astype(np.float32) < m           # rounded down: take the next float16 up
        sc[low] = np.nextafter(sc[low], np.float16(np.inf))
        sc[(m > 0) & (sc == 0)] = np.float16(tiny)
        if not np.isfinite(sc).all():
            raise ValueError("a factor vector is too large for a float16 scale")
        div = sc.astype(np.float32)
        div[div == 0] = 1
        q[s : s + step] = np.clip(np.rint(x / div[:, None]), -127, 127).astype(np.int8)
        scale[s : s + step] = sc
    return q.reshape(a.shape), scale.reshape(a.shape[:-1])


def dequantize_int8(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return q.astype(np.float32) * np.asarray(scale, np.float32)[..., None]


def inspect_header(path: str | os.PathLike) -> dict[str, Any]:
    """The validated header of a model file, without reading its arrays."""
    return read_header(path)
