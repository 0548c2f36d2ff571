"""What the host tells the kernels: codes, the shape and hyperparameter
arrays, kernel names and the kernel source.

Pure NumPy; nothing here needs CuPy or a device.  The names and their order
mirror the enums at the top of fm_device.cu (a test compares them).
"""

from __future__ import annotations

import os
import re
from functools import lru_cache

import numpy as np

from ..registry import GPU_OPTIMIZERS, KINDS as KIND_TABLE, kind as model_kind

KINDS = tuple(sorted(KIND_TABLE, key=lambda name: KIND_TABLE[name].code))   # by kernel code
TASKS = ("binary", "regression", "multiclass")
OPTIMIZERS = GPU_OPTIMIZERS   # by kernel code
SCHEDULES = ("constant", "linear", "cosine", "inverse-sqrt")

# What a kernel reports per row (ROW_* in fm_device.cu).
ROW_NOT_RUN, ROW_OK, ROW_SKIPPED, ROW_BAD = 0, 1, 2, 3

SHAPE_FIELDS = (
    "kind", "task", "opt", "schedule", "classes", "features", "fields", "kp",
    "nstate", "fstride", "lstride", "cb", "cl", "cf", "cr", "use_bias", "use_linear",
    "normalize", "skip_nonfinite", "blocks", "id_b", "id_l", "id_f", "id_r", "n_ids",
)
HYPER_FIELDS = (
    "eta", "l2_bias", "l2_linear", "l2_factors", "l1", "beta1", "beta2", "adam_eps",
    "ftrl_beta", "clip", "smoothing", "warmup",
)

KERNELS = ("fm_train_rows", "fm_batch_grad", "fm_batch_apply_vec", "fm_batch_apply_scalar",
           "fm_score_rows", "fm_hot_apply")
SOURCE = "fm_kernels.cu"
C_TYPES = {"float32": "float", "float64": "double"}
MAX_KP = 1024


def group_size(kp: int) -> int:
    """Lanes that share one item (an entry or a field pair): kp/4 rounded up
    to a power of two, at most 32 (Lanes<K>::G in fm_device.cu)."""
    g = 1
    while g < kp // 4 and g < 32:
        g *= 2
    return g


def n_blocks(kind: str, n_features: int, n_fields: int) -> int:
    """Factor blocks per class."""
    return model_kind(kind).blocks(n_features, n_fields)


def pair_blocks(kind: str, n_fields: int, kp: int) -> int:
    """Blocks of R per class: one weight per field pair (scalar pairs,
    FwFM), one vector block of kp weights per row of a field pair's k x k
    matrix (matrix pairs, FmFM: matrix row r of pair (a, c) is block
    (a * n_fields + c) * kp + r), none without pair parameters.  Only pairs
    a <= c are used; the others stay as they were made."""
    entry = model_kind(kind)
    return entry.pair_count(n_fields) * (kp if entry.pairs == "matrix" else 1)


def shape_array(kind: str, task: str, optimizer: str, schedule: str, n_classes: int,
                n_features: int, n_fields: int, kp: int, n_state: int, *, use_bias: bool,
                use_linear: bool, normalize: bool, skip_nonfinite: bool = False) -> np.ndarray:
    """The int64 shape array of a parameter layout (the CPU core's layout:
    fmcli/_core/_kernels.pyx).  n_state is 0 for a saved model's arrays."""
    if kp % 4 or not 0 < kp <= MAX_KP:
        raise ValueError(f"kp must be a multiple of 4 in 4..{MAX_KP}")
    C = n_classes
    blocks = n_blocks(kind, n_features, n_fields)
    fstride, lstride = kp * (1 + n_state), 1 + n_state
    pairs = pair_blocks(kind, n_fields, kp)
    pstride = fstride if model_kind(kind).pairs == "matrix" else lstride   # R's blocks: vectors or scalars
    id_b, id_l = 0, C
    id_f = C + C * n_features
    id_r = id_f + C * blocks
    values = {
        "kind": KINDS.index(kind), "task": TASKS.index(task), "opt": OPTIMIZERS.index(optimizer),
        "schedule": SCHEDULES.index(schedule), "classes": C, "features": n_features,
        "fields": n_fields, "kp": kp, "nstate": n_state, "fstride": fstride, "lstride": lstride,
        "cb": lstride, "cl": n_features * lstride, "cf": blocks * fstride, "cr": pairs * pstride,
        "use_bias": int(use_bias), "use_linear": int(use_linear), "normalize": int(normalize),
        "skip_nonfinite": int(skip_nonfinite), "blocks": blocks, "id_b": id_b, "id_l": id_l,
        "id_f": id_f, "id_r": id_r, "n_ids": id_r + C * pairs,
    }
    return np.array([values[name] for name in SHAPE_FIELDS], np.int64)


def hyper_array(cfg) -> np.ndarray:
    """The float64 hyperparameters of a fmcli.config.Config."""
    values = {
        "eta": cfg.step_size, "l2_bias": cfg.l2_of("bias"), "l2_linear": cfg.l2_of("linear"),
        "l2_factors": cfg.l2_of("factors"), "l1": cfg.l1, "beta1": cfg.adam_beta1,
        "beta2": cfg.adam_beta2, "adam_eps": cfg.adam_eps, "ftrl_beta": cfg.ftrl_beta,
        "clip": cfg.clip_norm, "smoothing": cfg.label_smoothing, "warmup": float(cfg.warmup_steps),
    }
    return np.array([values[name] for name in HYPER_FIELDS], np.float64)


def kernel_name(kernel: str, dtype, kp: int) -> str:
    """The C++ name expression of one instantiation, e.g. fm_train_rows<float,4>."""
    return f"{kernel}<{C_TYPES[np.dtype(dtype).name]},{int(kp)}>"


def kernel_names(dtype, kp: int) -> list[str]:
    return [kernel_name(k, dtype, kp) for k in KERNELS]


def source_dir() -> str:
    return os.path.dirname(os.path.abspath(__file__))


@lru_cache(maxsize=None)
def load_source(name: str = SOURCE) -> str:
    """The kernel source with its local #include lines inlined, so that a
    compiler cache keyed on the text sees every change."""
    seen: set[str] = set()

    def expand(fname: str) -> str:
        if fname in seen:
            return ""
        seen.add(fname)
        with open(os.path.join(source_dir(), fname), encoding="utf-8") as f:
            text = f.read()
        return re.sub(r'^\s*#include\s+"([^"]+)"\s*$', lambda m: expand(m.group(1)), text, flags=re.M)

    return expand(name)


def parse_enum(source: str, first: str) -> list[str]:
    """Names of the C enum whose first member is `first` (for tests)."""
    m = re.search(r"enum\s*\{\s*(" + re.escape(first) + r"\b[^}]*)\}", source)
    if m is None:
        raise ValueError(f"no enum starting with {first}")
    return [part.split("=")[0].strip() for part in m.group(1).split(",") if part.strip()]
