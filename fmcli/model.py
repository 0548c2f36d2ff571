"""Model = a description of the model plus its parameter arrays.

Logical parameter shapes (what the model file stores, see fm-model(5)):

    bias      (1,)                          when use_bias
    linear    (n_features,)                 when use_linear
    factors   (n_features, k)               FM, FwFM
              (n_features, n_fields, k)     FFM (libffm's w[j][f][:])
    field_weights (n_fields, n_fields)      FwFM: symmetric field-pair weights

A multiclass model has one parameter set per class: every shape gains a
leading class dimension (bias becomes (C,)).

Optimizer state is optional and named ``<array>_state``: the parameter's
shape for one state slot (AdaGrad), (slots, *shape) for more (Adam's m and
v, FTRL's z and n); the header's optimizer.slots names them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import __version__
from .config import MAX_K
from .errors import ModelFormatError
from .modelfile import read_header, read_model_file, write_model_file

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
        if self.kind == "ffm":
            return (self.n_features, self.n_fields, self.k)
        if self.kind in ("fm", "fwfm"):
            return (self.n_features, self.k)
        return None

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
        if self.kind == "fwfm":
            out["field_weights"] = lead + (self.n_fields, self.n_fields)
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
        if spec.kind not in ("lr", "fm", "ffm", "fwfm") or spec.task not in ("binary", "regression", "multiclass"):
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
        pairs = np.ascontiguousarray(self.params.get("field_weights", empty), dtype=np.float32).reshape(-1)
        return bias, linear, flat, pairs, kp

    # -- persistence ----------------------------------------------------------
    def save(self, path: str | os.PathLike, *, include_state: bool = True) -> None:
        header = {
            "fmcli_version": __version__,
            "model": self.spec.to_dict(),
            **{k: v for k, v in self.meta.items() if k not in ("model", "fmcli_version", "format")},
        }
        if isinstance(header.get("optimizer"), dict):
            header["optimizer"] = {**header["optimizer"], "state": bool(include_state and self.state)}
        # Strided views are fine: the writer converts them in bounded slices.
        arrays = {name: a.astype(np.float32, copy=False) for name, a in self.params.items()}
        if include_state:
            for name, a in self.state.items():
                arrays[f"{name}_state"] = a.astype(np.float32, copy=False)
        write_model_file(path, header, arrays)

    @property
    def n_parameters(self) -> int:
        return int(sum(a.size for a in self.params.values()))

    def count_zeros(self) -> int:
        """Linear and factor weights that are exactly zero (FTRL's L1 makes them)."""
        return int(sum(int(a.size) - int(np.count_nonzero(a))
                       for name, a in self.params.items() if name in ("linear", "factors")))


def load_model(path: str | os.PathLike, *, mmap: bool = True) -> Model:
    """Load and validate a model file (memory-mapped by default)."""
    path = os.fspath(path)
    header, arrays = read_model_file(path, mmap=mmap)
    spec = ModelSpec.from_dict(header.get("model") or {}, path)
    params: dict[str, np.ndarray] = {}
    state: dict[str, np.ndarray] = {}
    expected = spec.shapes()
    for name, shape in expected.items():
        if name not in arrays:
            raise ModelFormatError(f"array {name!r} is missing", path)
        if tuple(arrays[name].shape) != shape or arrays[name].dtype != np.float32:
            raise ModelFormatError(
                f"array {name!r} has shape {tuple(arrays[name].shape)} {arrays[name].dtype}, "
                f"expected {shape} float32",
                path,
            )
        params[name] = arrays[name]
        st = arrays.get(f"{name}_state")
        if st is not None and tuple(st.shape[-len(shape):]) == shape and st.ndim - len(shape) <= 1:
            state[name] = st
    meta = {k: v for k, v in header.items() if k not in ("arrays", "model")}
    return Model(spec=spec, params=params, state=state, meta=meta)


def inspect_header(path: str | os.PathLike) -> dict[str, Any]:
    """The validated header of a model file, without reading its arrays."""
    return read_header(path)
