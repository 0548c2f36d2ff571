"""Training configuration: the only home of defaults and of their validation."""

from __future__ import annotations

import dataclasses
import numbers
import re
from dataclasses import dataclass

from .errors import ConfigError
from .registry import MODELS, OPTIMIZERS, gpu_hot_features_missing, half_storage_missing, hot_features_missing

TASKS = ("binary", "regression", "multiclass", "auto")
SCHEDULES = ("constant", "linear", "cosine", "inverse-sqrt")
ON_NONFINITE = ("stop", "skip")
# Default step size per optimizer (FTRL's is ftrl_alpha).
LEARNING_RATES = {"adagrad": 0.2, "sgd": 0.1, "adam": 0.001, "rowwise-adagrad": 0.2}
FORMATS = ("auto", "libffm", "libsvm", "parquet")
DTYPES = ("float32", "float64")
# How FFM factor weights are held while training (fmcli.params.HostParams).
STORAGES = ("float32", "float16")
CACHE_CHECKS = ("stat", "content")   # see fmcli.data.cache.fingerprint
# cpu: the compiled core; cuda: fmcli.gpu (CuPy); auto: cuda when usable, else cpu
DEVICES = ("cpu", "cuda", "auto")

MAX_K = 1024
MAX_HOT_FEATURES = 65535   # a replica slot is a uint16 in the kernels (hot.h)

# fm serve (fmcli.serve.ServeOptions): where it listens, its request timeout
# (seconds), largest request body and how often model files are checked
SERVE_HOST = "127.0.0.1"
SERVE_PORT = 8080
SERVE_TIMEOUT = 30.0
SERVE_MAX_REQUEST_BYTES = 16 << 20
SERVE_RELOAD_INTERVAL = 1.0


_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_size(text: str, minimum: int = 1) -> int:
    """A size in bytes from 123, 64K, 512M, 8G, 1.5T, 8GiB, 8gb (powers of
    1024).  Raises ValueError with a one-line reason."""
    m = _SIZE.fullmatch(str(text))
    if not m:
        raise ValueError(f"{text!r} is not a size such as 512M or 8G")
    size = int(float(m.group(1)) * _SIZE_UNITS[m.group(2).upper()])
    if size < minimum:
        raise ValueError("the size must be positive" if minimum == 1 else f"the size must be at least {minimum}")
    return size


def available_cpus() -> int:
    """CPUs this process may run on (scoring uses them all: it is deterministic)."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


AUTO_THREADS = 0               # Config.threads: chosen from the data when it is read (threads_for)
AUTO_THREADS_ROWS = 100_000     # auto: data with fewer training rows trains on one thread
AUTO_MAX_THREADS = 8            # auto: at most this many threads (scaling beyond 2 cores is not measured)


def threads_for(config: "Config", n_rows: int) -> int:
    """The training threads of `config` for data of `n_rows` rows: its own
    count, or for AUTO_THREADS every CPU this process may use (at most
    AUTO_MAX_THREADS) on data of AUTO_THREADS_ROWS rows or more, trained on
    the CPU one row at a time in one process; one thread otherwise (small
    data, where Hogwild's contention costs accuracy; a GPU; mini-batches,
    whose gradient sums take a model's memory per thread; the workers of a
    Dask cluster, which run one training each)."""
    if config.threads != AUTO_THREADS:
        return config.threads
    if (n_rows < AUTO_THREADS_ROWS or config.device != "cpu" or config.batch_size != 1
            or config.scheduler is not None or config.scheduler_file is not None):
        return 1
    return max(1, min(available_cpus(), AUTO_MAX_THREADS))


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
    learning_rate: float | None = None   # None: LEARNING_RATES[optimizer]
    l2: float = 0.00002
    optimizer: str = "adagrad"
    # regularisation groups: None means "l2"; the bias has none by default
    l2_bias: float = 0.0
    l2_linear: float | None = None
    l2_factors: float | None = None
    l1: float = 0.0                      # FTRL only
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    ftrl_alpha: float = 0.5
    ftrl_beta: float = 1.0
    batch_size: int = 1
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    clip_norm: float = 0.0
    label_smoothing: float = 0.0
    class_weight: str | None = None     # "balanced" or "LABEL=W,LABEL=W"
    on_nonfinite: str = "stop"
    early_stopping_metric: str | None = None   # None: the task's default metric
    patience: int = 0                    # evaluations without improvement; 0: no early stopping
    # validate every N training rows (and at each epoch's end); 0: at each epoch's end only
    eval_every: int = 0
    normalize: bool = True
    use_bias: bool = True
    use_linear: bool = True
    threads: int = 1               # AUTO_THREADS (0): chosen from the data (threads_for)
    seed: int = 0
    shuffle: bool = True
    auto_stop: bool = False
    init_scale: float = 1.0
    exact_adagrad: bool = False
    format: str = "auto"
    dtype: str = "float32"
    # float16: FFM factor weights held as float16 during training (float32
    # arithmetic and AdaGrad accumulators): 6 k bytes per block instead of 8 k
    storage: str = "float32"
    # FM, FFM, FwFM, FmFM with 2+ threads: the N most frequent features are
    # trained on per-thread replicas exchanged every 256 to 16,384 rows by
    # their share of rows (None: auto; 0: off, and no copies of the bias and
    # field-pair weights either)
    hot_features: int | None = None
    device: str = "cpu"
    # data-parallel training on Dask (fmcli.distributed): "local:N" (a local
    # cluster of N worker processes), a scheduler address (tcp://HOST:PORT,
    # tls://...) or a scheduler file; how long to wait for it (seconds) and
    # for how many workers (local:N waits for its N); how often the workers'
    # models are merged: rows per bulk-synchronous round (0: see
    # syncs_per_epoch) or rounds per epoch
    scheduler: str | None = None
    scheduler_file: str | None = None
    scheduler_timeout: float = 30.0
    min_workers: int = 1
    rows_per_round: int = 0
    syncs_per_epoch: int = 1
    # input limits (see fmcli.data.text.ReadLimits) and the model-size guard
    max_bad_rows: int = 0
    max_line_bytes: int = 1 << 24
    max_feature_id: int = 2**31 - 1
    max_memory: int | None = None  # bytes; None: the machine's physical memory
    # data: the binary cache (None: fmcli.data.cache.default_cache_dir()) and
    # how much parsed data may be held in memory before training streams it
    cache: bool = True
    cache_dir: str | None = None
    cache_check: str = "stat"            # how a cached input is recognised: "stat" or "content"
    # bytes all caches of the directory may take (least recently used ones are
    # removed); None: $FMCLI_CACHE_MAX_SIZE, else fmcli.data.cache.default_max_size
    cache_max_size: int | None = None
    memory_budget: int = 1 << 30
    # Parquet input (fmcli.data.parquet): the label and weight columns, the
    # columns of a wide table (comma-separated; None: all others) and the
    # hash space of its categorical values
    # checkpoints (fmcli.checkpoint) and warm starts
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0            # rows; 0: at the end of every epoch only
    keep_checkpoints: int = 2
    init_model: str | None = None        # continue from this model's weights and optimizer state
    label_column: str = "label"
    weight_column: str | None = None
    columns: str | None = None
    hash_bits: int = 22
    float_columns: str = "value"         # wide Parquet float columns: "value" or "bucket"

    def __post_init__(self) -> None:
        def choice(name: str, allowed: tuple[str, ...]) -> None:
            value = getattr(self, name)
            if value not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")

        choice("model", MODELS)
        choice("task", TASKS)
        choice("optimizer", OPTIMIZERS)
        choice("lr_schedule", SCHEDULES)
        choice("on_nonfinite", ON_NONFINITE)
        choice("format", FORMATS)
        choice("dtype", DTYPES)
        choice("storage", STORAGES)
        choice("cache_check", CACHE_CHECKS)
        choice("device", DEVICES)
        if not 1 <= self.k <= MAX_K:
            raise ConfigError(f"k must be between 1 and {MAX_K}, got {self.k}")
        if self.epochs < 1:
            raise ConfigError(f"epochs must be at least 1, got {self.epochs}")
        def positive(name: str, value) -> None:
            if not (value > 0 and value != float("inf")):
                raise ConfigError(f"{name} must be a positive number, got {value}")

        def non_negative(name: str, value) -> None:
            if not (value >= 0 and value != float("inf")):
                raise ConfigError(f"{name} must be a non-negative number, got {value}")

        if self.learning_rate is not None:
            positive("learning rate", self.learning_rate)
        for name in ("l2", "l2_bias", "l2_linear", "l2_factors", "l1", "ftrl_beta", "clip_norm"):
            if getattr(self, name) is not None:
                non_negative(name, getattr(self, name))
        positive("ftrl_alpha", self.ftrl_alpha)
        positive("adam_eps", self.adam_eps)
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {self.batch_size}")
        if self.warmup_steps < 0 or self.patience < 0:
            raise ConfigError("warmup steps and patience must be non-negative")
        self._check_combinations()
        if self.threads < 0:
            raise ConfigError(f"threads must be at least 1 (or {AUTO_THREADS}: auto), got {self.threads}")
        if self.hot_features is not None and not 0 <= self.hot_features <= MAX_HOT_FEATURES:
            raise ConfigError(f"hot features must be between 0 and {MAX_HOT_FEATURES}, got {self.hot_features}")
        if not self.init_scale >= 0 or self.init_scale == float("inf"):
            raise ConfigError(f"init scale must be a non-negative number, got {self.init_scale}")
        if self.seed < 0:
            raise ConfigError(f"seed must be non-negative, got {self.seed}")
        if self.max_bad_rows < 0 or self.max_line_bytes < 1 or not 0 <= self.max_feature_id < 2**31:
            raise ConfigError("max_bad_rows must be >= 0, max_line_bytes >= 1 and max_feature_id in 0..2^31-1")
        if self.eval_every < 0:
            raise ConfigError(f"eval-every must be >= 0 rows, got {self.eval_every}")
        if self.checkpoint_every < 0 or self.keep_checkpoints < 1:
            raise ConfigError("checkpoint-every must be >= 0 rows and keep-checkpoints >= 1")
        if self.checkpoint_every and not self.checkpoint_dir:
            raise ConfigError("--checkpoint-every needs --checkpoint-dir")
        if self.float_columns not in ("value", "bucket"):
            raise ConfigError(f"float columns must be 'value' or 'bucket', got {self.float_columns!r}")
        if not 1 <= self.hash_bits <= 31:
            raise ConfigError(f"hash bits must be between 1 and 31, got {self.hash_bits}")
        if self.memory_budget < 0:
            raise ConfigError(f"memory budget must be non-negative, got {self.memory_budget}")
        if self.cache_max_size is not None and not (isinstance(self.cache_max_size, int)
                                                    and self.cache_max_size >= 0):
            raise ConfigError(f"cache max size must be a number of bytes >= 0, got {self.cache_max_size!r}")
        if self.max_memory is not None and self.max_memory < 1:
            raise ConfigError(f"max_memory must be positive, got {self.max_memory}")
        self._check_scheduler()

    def _check_scheduler(self) -> None:
        """The options of a distributed run (fmcli.distributed)."""
        s = self.scheduler
        if s is not None and self.scheduler_file is not None:
            raise ConfigError("give --scheduler or --scheduler-file, not both")
        if s is not None:
            if s.startswith("local:"):
                n = s.split(":", 1)[1]
                if not (n.isdigit() and int(n) >= 1):
                    raise ConfigError(f"--scheduler local:N needs N >= 1 workers, got {s!r}")
            elif "://" not in s:
                raise ConfigError(f"--scheduler must be local:N or an address such as tcp://HOST:8786, got {s!r}")
        distributed = s is not None or self.scheduler_file is not None
        if distributed and self.device != "cpu":
            raise ConfigError("--scheduler trains on the workers' CPUs; it needs --device cpu")
        if not (self.scheduler_timeout > 0 and self.scheduler_timeout != float("inf")):
            raise ConfigError(f"scheduler timeout must be a positive number of seconds, got {self.scheduler_timeout}")
        whole = isinstance(self.min_workers, numbers.Integral) and not isinstance(self.min_workers, bool)
        if not whole or self.min_workers < 1:
            raise ConfigError(f"--min-workers must be a whole number >= 1, got {self.min_workers!r}")
        if self.min_workers != 1:
            if not distributed:
                raise ConfigError("--min-workers applies to distributed runs (--scheduler or --scheduler-file)")
            if s is not None and s.startswith("local:") and self.min_workers > int(s.split(":", 1)[1]):
                raise ConfigError(f"--min-workers {self.min_workers} is more than the {s.split(':', 1)[1]} "
                                  f"worker(s) of --scheduler {s}")
        if self.rows_per_round < 0:
            raise ConfigError(f"rows per round must be >= 0, got {self.rows_per_round}")
        if self.rows_per_round and not distributed:
            raise ConfigError("--rows-per-round applies to distributed runs (--scheduler or --scheduler-file)")
        if self.syncs_per_epoch < 1:
            raise ConfigError(f"syncs per epoch must be >= 1, got {self.syncs_per_epoch}")
        if self.syncs_per_epoch != 1 and not distributed:
            raise ConfigError("--syncs-per-epoch applies to distributed runs (--scheduler or --scheduler-file)")
        if self.syncs_per_epoch != 1 and self.rows_per_round:
            raise ConfigError("give --syncs-per-epoch or --rows-per-round, not both")

    def round_rows(self, epoch_rows: int) -> int:
        """Rows of a distributed run's synchronisation round: rows_per_round,
        or the epoch's rows cut into syncs_per_epoch rounds of whole mini-batches."""
        if self.rows_per_round:
            return self.rows_per_round
        batches = -(-max(epoch_rows, 1) // self.batch_size)
        return -(-batches // self.syncs_per_epoch) * self.batch_size

    def _check_combinations(self) -> None:
        """Refuse settings that would be silently meaningless."""
        opt = self.optimizer
        if opt == "ftrl" and self.learning_rate is not None:
            raise ConfigError("FTRL's step size is --ftrl-alpha; --learning-rate applies to sgd, adagrad and adam")
        if opt == "ftrl" and (self.lr_schedule != "constant" or self.warmup_steps):
            raise ConfigError("FTRL sets a per-coordinate step size itself; "
                              "--lr-schedule and --warmup-steps apply to sgd, adagrad and adam")
        if self.l1 and opt != "ftrl":
            raise ConfigError("--l1 needs --optimizer ftrl (its closed form produces the exact zeros)")
        if self.exact_adagrad and opt not in ("adagrad", "rowwise-adagrad"):
            raise ConfigError("--exact-adagrad applies to --optimizer adagrad and rowwise-adagrad only")
        if opt == "rowwise-adagrad" and self.device == "cuda":
            raise ConfigError("--optimizer rowwise-adagrad runs on the CPU; it needs --device cpu (or auto)")
        if self.storage == "float16":
            missing = half_storage_missing(self)
            if missing:
                raise ConfigError("--storage float16 applies only to FFM trained with AdaGrad in float32 on the CPU; it needs "
                                  + ", ".join(missing))
        if self.hot_features and self.device == "cuda":
            missing = gpu_hot_features_missing(self)
            if missing:
                raise ConfigError("--hot-features on --device cuda applies to per-row training with sgd, "
                                  "adagrad or ftrl; it needs " + ", ".join(missing))
        elif self.hot_features:
            missing = hot_features_missing(self)
            if missing:
                raise ConfigError("--hot-features applies only to FM, FFM, FwFM and FmFM trained on 2+ CPU "
                                  "threads in float32, one row at a time; it needs " + ", ".join(missing))
        if self.task == "regression":
            if self.label_smoothing:
                raise ConfigError("label smoothing applies to the binary and multiclass tasks, not regression")
            if self.class_weight:
                raise ConfigError("class weights apply to the binary and multiclass tasks, not regression")
        if self.class_weight is not None:
            self.class_weights()
        if self.patience and self.auto_stop:
            raise ConfigError("--auto-stop is --patience 1; give one of them")
        metric = self.early_stopping_metric
        if metric is not None:
            from .metrics import METRICS

            if metric not in METRICS:
                raise ConfigError(f"early-stopping metric must be one of {', '.join(METRICS)}, got {metric!r}")
            if self.task != "auto" and self.task not in METRICS[metric][0]:
                raise ConfigError(f"metric {metric} is not defined for the {self.task} task "
                                  f"(it applies to: {', '.join(METRICS[metric][0])})")

    # -- resolved values --------------------------------------------------------
    @property
    def step_size(self) -> float:
        """The base step size: --learning-rate or the optimizer's default (FTRL: alpha)."""
        if self.optimizer == "ftrl":
            return self.ftrl_alpha
        return self.learning_rate if self.learning_rate is not None else LEARNING_RATES[self.optimizer]

    def l2_of(self, group: str) -> float:
        """L2 of a parameter group: bias, linear or factors."""
        value = {"bias": self.l2_bias, "linear": self.l2_linear, "factors": self.l2_factors}[group]
        return self.l2 if value is None else value

    @property
    def stop_patience(self) -> int:
        return 1 if self.auto_stop else self.patience

    def class_weights(self) -> dict[str, float] | str | None:
        """--class-weight parsed: 'balanced', {label token: weight}, or None."""
        spec = self.class_weight
        if spec is None:
            return None
        if spec.strip() == "balanced":
            return "balanced"
        out: dict[str, float] = {}
        for part in spec.split(","):
            label, sep, weight = part.partition("=")
            try:
                value = float(weight)
            except ValueError:
                value = float("nan")
            if not sep or not label.strip() or not (value >= 0 and value != float("inf")):
                raise ConfigError(f"class weight must be 'balanced' or LABEL=WEIGHT[,LABEL=WEIGHT...] "
                                  f"with weights >= 0, got {spec!r}")
            out[label.strip()] = value
        return out

    def parquet_options(self) -> dict:
        """Keyword arguments of fmcli.data.parquet.ParquetReader."""
        columns = None if self.columns is None else tuple(c.strip() for c in self.columns.split(",") if c.strip())
        return {"label_column": self.label_column, "weight_column": self.weight_column,
                "columns": columns, "hash_bits": self.hash_bits, "float_columns": self.float_columns}

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
