"""The model kinds and the optimizers, each described once.

Everything that depends on the kind of model -- the training layout, the
compiled and GPU kernels' dispatch codes, the model file, ``fm inspect`` --
reads this table instead of testing names, so a new kind is a new entry
here plus its kernels.  Likewise each optimizer's state slots, kernel code
and where it runs are stated once.

This module is a leaf: it imports nothing from the package.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelKind:
    """One model kind.

    factors: "" (none), "feature" (one k-vector per feature) or
    "feature-field" (one k-vector per feature and field, FFM's).
    pairs: "" (none), "scalar" (one weight per field pair, FwFM's r_ab) or
    "matrix" (one k x k matrix per field pair, FmFM's M_ab).  Only the upper
    triangle of field pairs (a <= b) is trained; a saved model stores the
    full (m, m) or (m, m, k, k) array, mirrored (a matrix transposed)."""

    name: str
    code: int            # KIND_* of fmcli/_core/_kernels.pyx and fmcli/gpu/fm_device.cu
    title: str
    factors: str = ""
    pairs: str = ""
    pair_param: str | None = None   # the model file's name for the pair parameters
    strength: str = ""              # inspect: what a feature pair's strength is

    @property
    def needs_fields(self) -> bool:
        """Whether the model reads the field of every entry (libsvm input lacks them)."""
        return self.factors == "feature-field" or bool(self.pairs)

    def blocks(self, n_features: int, n_fields: int) -> int:
        """Factor blocks (k-vectors) per class."""
        return {"": 0, "feature": n_features, "feature-field": n_features * n_fields}[self.factors]

    def pair_count(self, n_fields: int) -> int:
        """Field-pair entries per class in the training layout (all m * m; a <= b used)."""
        return n_fields * n_fields if self.pairs else 0

    def factor_shape(self, n_features: int, n_fields: int, k: int) -> tuple[int, ...] | None:
        """The factors of one class as the model file holds them."""
        if self.factors == "feature":
            return (n_features, k)
        if self.factors == "feature-field":
            return (n_features, n_fields, k)
        return None

    def pair_shape(self, n_fields: int, k: int) -> tuple[int, ...] | None:
        """The field-pair parameters of one class as the model file holds them."""
        if self.pairs == "scalar":
            return (n_fields, n_fields)
        if self.pairs == "matrix":
            return (n_fields, n_fields, k, k)
        return None


KINDS: dict[str, ModelKind] = {m.name: m for m in (
    ModelKind("lr", 0, "logistic/linear regression"),
    ModelKind("fm", 1, "factorization machine", factors="feature", strength="|<v_i, v_j>|"),
    ModelKind("ffm", 2, "field-aware factorization machine", factors="feature-field",
              strength="|<w_i,b, w_j,a>|"),
    ModelKind("fwfm", 3, "field-weighted factorization machine", factors="feature", pairs="scalar",
              pair_param="field_weights", strength="|r_ab <v_i, v_j>|"),
    ModelKind("fmfm", 4, "field-matrixed factorization machine", factors="feature", pairs="matrix",
              pair_param="field_matrices", strength="|v_i^T M_ab v_j|"),
)}
MODELS = tuple(KINDS)


def kind(name: str) -> ModelKind:
    """The registry entry of a model kind (KeyError for an unknown name)."""
    return KINDS[name]


@dataclass(frozen=True)
class Optimizer:
    """One optimizer: its state slots per weight (their names in the model
    file's state), its code in the kernels (OPT_* of fmcli/_core/_optim.pxd
    and fmcli/gpu/fm_device.cu) and whether the GPU kernels have it.
    row_state: one state value per block (a factor k-vector) instead of per weight."""

    name: str
    code: int
    slots: tuple[str, ...]
    row_state: bool = False
    gpu: bool = True

    @property
    def n_state(self) -> int:
        return len(self.slots)


# In the order the command line lists them (the default first).
OPTIMIZER_TABLE: dict[str, Optimizer] = {o.name: o for o in (
    Optimizer("adagrad", 1, ("G",)),
    Optimizer("sgd", 0, ()),
    Optimizer("adam", 2, ("m", "v")),
    Optimizer("ftrl", 3, ("z", "n")),
    Optimizer("rowwise-adagrad", 4, ("G",), row_state=True, gpu=False),
)}
OPTIMIZERS = tuple(OPTIMIZER_TABLE)
GPU_OPTIMIZERS = tuple(sorted((o.name for o in OPTIMIZER_TABLE.values() if o.gpu),
                              key=lambda n: OPTIMIZER_TABLE[n].code))


def optimizer(name: str) -> Optimizer:
    return OPTIMIZER_TABLE[name]


# -- eligibility rules: one predicate each ---------------------------------------
# Each returns what the configuration lacks, as option texts (empty: eligible),
# so the configuration can refuse with the reason and the training core can
# decide with the same rule.

def half_storage_missing(cfg) -> list[str]:
    """--storage float16: FFM's factor weights as float16 (fmcli/_core/ffm_f32.h)."""
    needs = {"--model ffm": cfg.model == "ffm", "--optimizer adagrad": cfg.optimizer == "adagrad",
             "--dtype float32": cfg.dtype == "float32", "--batch-size 1": cfg.batch_size == 1,
             "no --clip-norm": not cfg.clip_norm, "--device cpu": cfg.device == "cpu"}
    return [k for k, ok in needs.items() if not ok]


def hot_features_missing(cfg) -> list[str]:
    """Per-thread replicas of the hottest features (fmcli/_core/hot.h)."""
    needs = {"--model fm, ffm, fwfm or fmfm": cfg.model in ("fm", "ffm", "fwfm", "fmfm"),
             # auto threads (0) are decided once the data are read
             "--threads 2 or more": cfg.threads > 1 or cfg.threads == 0,
             "--dtype float32": cfg.dtype == "float32", "--storage float32": cfg.storage == "float32",
             "--batch-size 1": cfg.batch_size == 1, "no --clip-norm": not cfg.clip_norm,
             "an optimizer other than adam": cfg.optimizer != "adam", "--device cpu": cfg.device == "cpu"}
    return [k for k, ok in needs.items() if not ok]


def gpu_hot_features_missing(cfg) -> list[str]:
    """Hot accumulation of per-row training on a GPU (fmcli/gpu/state.py)."""
    needs = {"--batch-size 1": cfg.batch_size == 1,
             "--optimizer sgd, adagrad or ftrl": cfg.optimizer in ("sgd", "adagrad", "ftrl")}
    return [k for k, ok in needs.items() if not ok]


def hot_features_apply(cfg, n_classes: int) -> bool:
    """Whether a CPU run may train hot features on replicas (one class only)."""
    return n_classes == 1 and not [m for m in hot_features_missing(cfg) if m != "--device cpu"]
