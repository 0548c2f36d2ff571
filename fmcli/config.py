"""Training configuration: the only home of defaults and of their validation."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .errors import ConfigError

MODELS = ("lr", "fm", "ffm", "fwfm")
TASKS = ("binary",)
OPTIMIZERS = ("adagrad", "sgd")
FORMATS = ("auto", "libffm", "libsvm")
DTYPES = ("float32", "float64")

MAX_K = 1024


def available_cpus() -> int:
    """CPUs this process may run on (scoring uses them all: it is deterministic)."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Config:
    """Every training hyperparameter, with libffm's defaults where libffm has one.

    ``use_bias=False, use_linear=False`` with the FFM model and AdaGrad is
    exactly libffm's model and update rule, including its use of the CPU's
    reciprocal-square-root estimate in float32 AdaGrad (``exact_adagrad``
    refines it to float32 precision at some cost in speed).
    """

    model: str = "ffm"
    task: str = "binary"
    k: int = 4
    epochs: int = 15
    learning_rate: float = 0.2
    l2: float = 0.00002
    optimizer: str = "adagrad"
    normalize: bool = True
    use_bias: bool = True
    use_linear: bool = True
    threads: int = 1
    seed: int = 0
    shuffle: bool = True
    auto_stop: bool = False
    init_scale: float = 1.0
    exact_adagrad: bool = False
    format: str = "auto"
    dtype: str = "float32"
    # input limits (see fmcli.data.text.ReadLimits) and the model-size guard
    max_bad_rows: int = 0
    max_line_bytes: int = 1 << 24
    max_feature_id: int = 2**31 - 1
    max_memory: int | None = None  # bytes; None: the machine's physical memory

    def __post_init__(self) -> None:
        def choice(name: str, allowed: tuple[str, ...]) -> None:
            value = getattr(self, name)
            if value not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")

        choice("model", MODELS)
        choice("task", TASKS)
        choice("optimizer", OPTIMIZERS)
        choice("format", FORMATS)
        choice("dtype", DTYPES)
        if not 1 <= self.k <= MAX_K:
            raise ConfigError(f"k must be between 1 and {MAX_K}, got {self.k}")
        if self.epochs < 1:
            raise ConfigError(f"epochs must be at least 1, got {self.epochs}")
        if not self.learning_rate > 0 or self.learning_rate == float("inf"):
            raise ConfigError(f"learning rate must be a positive number, got {self.learning_rate}")
        if not self.l2 >= 0 or self.l2 == float("inf"):
            raise ConfigError(f"l2 must be a non-negative number, got {self.l2}")
        if self.threads < 1:
            raise ConfigError(f"threads must be at least 1, got {self.threads}")
        if not self.init_scale >= 0 or self.init_scale == float("inf"):
            raise ConfigError(f"init scale must be a non-negative number, got {self.init_scale}")
        if self.seed < 0:
            raise ConfigError(f"seed must be non-negative, got {self.seed}")
        if self.max_bad_rows < 0 or self.max_line_bytes < 1 or not 0 <= self.max_feature_id < 2**31:
            raise ConfigError("max_bad_rows must be >= 0, max_line_bytes >= 1 and max_feature_id in 0..2^31-1")
        if self.max_memory is not None and self.max_memory < 1:
            raise ConfigError(f"max_memory must be positive, got {self.max_memory}")

    def read_limits(self):
        from .data.text import ReadLimits

        return ReadLimits(self.max_bad_rows, self.max_line_bytes, self.max_feature_id)

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Config":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
