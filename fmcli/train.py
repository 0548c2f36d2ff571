"""Training orchestration: read data, size and initialise the model, run epochs.

The arithmetic lives in the compiled core (``fmcli._core._kernels``); this
module only decides what runs when: row order per epoch, validation, early
stopping and turning the training layout into a :class:`~fmcli.model.Model`.
"""

from __future__ import annotations

import datetime as _dt
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from . import __version__
from ._core import _kernels
from .config import Config, available_cpus
from .data.batch import Batch
from .data.text import ReadLimits, TextReader, binary_labels
from .errors import ConfigError, DataError, DivergenceError
from .metrics import auc, logloss_from_scores
from .model import Model, ModelSpec, padded_k


@dataclass
class EpochStats:
    epoch: int
    train_logloss: float
    valid_logloss: float | None
    valid_auc: float | None
    seconds: float
    rows_per_s: float


@dataclass
class LoadedData:
    batch: Batch
    name: str
    format: str
    bytes_read: int
    seconds: float
    skipped: list = field(default_factory=list)   # DataErrors of rows skipped under max_bad_rows


def load_data(source: str | os.PathLike | Batch, fmt: str = "auto",
              limits: ReadLimits = ReadLimits()) -> LoadedData:
    """Read a whole training or validation file (or take a ready Batch)."""
    if isinstance(source, Batch):
        return LoadedData(source, "<batch>", "batch", 0, 0.0)
    t0 = time.perf_counter()
    reader = TextReader(source, fmt=fmt, label_mode="binary", limits=limits)
    batch = reader.read_all()
    if batch.n_rows == 0:
        raise DataError("no data rows (the file is empty, blank or only comments)", reader.name)
    batch.labels = binary_labels(batch.labels)
    return LoadedData(batch, reader.name, reader.fmt, reader.bytes_read,
                      time.perf_counter() - t0, reader.bad_rows)


def aligned_zeros(shape: tuple[int, ...], dtype, align: int = 64) -> np.ndarray:
    """Zero-filled C-contiguous array whose data starts on an `align`-byte boundary.

    Factor blocks are 32 or 64 bytes; starting them on a cache-line boundary
    keeps each block in as few cache lines as possible."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64))
    raw = np.zeros(n * dtype.itemsize + align, np.uint8)
    offset = (-raw.ctypes.data) % align
    return raw[offset : offset + n * dtype.itemsize].view(dtype).reshape(shape)


def _available_memory() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


class TrainState:
    """Parameters and optimizer state in the kernels' interleaved layout."""

    def __init__(self, cfg: Config, n_features: int, n_fields: int, rng: np.random.Generator):
        self.cfg = cfg
        self.spec = ModelSpec(
            kind=cfg.model,
            task=cfg.task,
            k=cfg.k,
            n_features=n_features,
            n_fields=n_fields,
            use_bias=cfg.use_bias,
            use_linear=cfg.use_linear,
            normalize=cfg.normalize,
        )
        dtype = np.dtype(cfg.dtype)
        self.ns = _kernels.n_state(cfg.optimizer)
        self.kp = padded_k(cfg.k)
        width = 1 + self.ns
        n_blocks = self.n_blocks(cfg, n_features, n_fields)
        state_init = 1.0 if cfg.optimizer == "adagrad" else 0.0
        self.B = np.zeros((1, width), dtype)
        self.L = np.zeros((n_features, width), dtype)
        self.F = aligned_zeros((n_blocks, width * self.kp), dtype)
        # FwFM's field-pair weights start at 1 (FwFM then starts as FM).
        self.R = np.zeros((n_fields * n_fields if cfg.model == "fwfm" else 0, width), dtype)
        self.R[:, 0] = 1.0
        self.B[:, 1:] = state_init
        self.L[:, 1:] = state_init
        self.R[:, 1:] = state_init
        if n_blocks:
            # libffm's initialisation: U(0, 1) / sqrt(k), padding stays zero.
            scale = np.float32(cfg.init_scale / np.sqrt(cfg.k))
            step = 1 << 20  # fill in slices so no full-size temporary is made
            for start in range(0, n_blocks, step):
                stop = min(start + step, n_blocks)
                self.F[start:stop, : cfg.k] = rng.random((stop - start, cfg.k), dtype=np.float32) * scale
            self.F[:, self.kp :] = state_init

    @staticmethod
    def n_blocks(cfg: Config, n_features: int, n_fields: int) -> int:
        return {"lr": 0, "fm": n_features, "fwfm": n_features, "ffm": n_features * n_fields}[cfg.model]

    @classmethod
    def bytes_needed(cls, cfg: Config, n_features: int, n_fields: int) -> int:
        """Memory for parameters and optimizer state (the auto-stop copy not included)."""
        width = 1 + _kernels.n_state(cfg.optimizer)
        blocks = cls.n_blocks(cfg, n_features, n_fields)
        pairs = n_fields * n_fields if cfg.model == "fwfm" else 0
        return (blocks * padded_k(cfg.k) + n_features + 1 + pairs) * width * np.dtype(cfg.dtype).itemsize

    def arrays(self) -> tuple[np.ndarray, ...]:
        return self.B, self.L, self.F, self.R

    def flat(self) -> tuple[np.ndarray, ...]:
        return tuple(a.reshape(-1) for a in self.arrays())

    def snapshot(self) -> tuple[np.ndarray, ...]:
        return tuple(a.copy() for a in self.arrays())

    def restore(self, snap: tuple[np.ndarray, ...]) -> None:
        for a, saved in zip(self.arrays(), snap):
            a[...] = saved

    def all_finite(self) -> bool:
        return all(bool(np.isfinite(a).all()) for a in self.arrays())

    def scores(self, batch: Batch, threads: int) -> np.ndarray:
        out = np.empty(batch.n_rows, np.float64)
        b, l, f, r = self.flat()
        s = self.spec
        _kernels.score_rows(
            s.kind, b, l, f, r, s.n_features, s.n_fields, self.kp, self.ns,
            batch.indptr, batch.fields, batch.features, batch.values, out,
            s.use_bias, s.use_linear, s.normalize, threads,
        )
        return out

    def train_epoch(self, batch: Batch, order: np.ndarray) -> tuple[float, int]:
        b, l, f, r = self.flat()
        s, c = self.spec, self.cfg
        return _kernels.train_epoch(
            s.kind, c.optimizer, b, l, f, r, s.n_features, s.n_fields, self.kp,
            batch.indptr, batch.fields, batch.features, batch.values, batch.labels, order,
            c.learning_rate, c.l2, s.use_bias, s.use_linear, s.normalize, c.threads,
            c.exact_adagrad,
        )

    def to_model(self, meta: dict) -> Model:
        """The trained model; its arrays are views of this state where possible."""
        s, k = self.spec, self.cfg.k
        params: dict[str, np.ndarray] = {}
        state: dict[str, np.ndarray] = {}
        if s.use_bias:
            params["bias"] = self.B[:, 0].astype(np.float32, copy=False)
        if s.use_linear:
            params["linear"] = self.L[:, 0].astype(np.float32, copy=False)
        shape = s.factor_shape()
        if shape is not None:
            params["factors"] = self.F[:, :k].astype(np.float32, copy=False).reshape(shape)
        m = s.n_fields
        if s.kind == "fwfm":
            params["field_weights"] = _symmetric(self.R[:, 0].reshape(m, m))
        if self.ns:
            if s.use_bias:
                state["bias"] = self.B[:, 1].astype(np.float32, copy=False)
            if s.use_linear:
                state["linear"] = self.L[:, 1].astype(np.float32, copy=False)
            if shape is not None:
                state["factors"] = self.F[:, self.kp : self.kp + k].astype(np.float32, copy=False).reshape(shape)
            if s.kind == "fwfm":
                state["field_weights"] = _symmetric(self.R[:, 1].reshape(m, m))
        return Model(spec=s, params=params, state=state, meta=meta)


def train(
    config: Config,
    train_data: str | os.PathLike | Batch,
    valid: str | os.PathLike | Batch | None = None,
    *,
    on_epoch: Callable[[EpochStats], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> Model:
    """Train a model; returns it with the run's summary in ``model.meta``."""
    say = log or (lambda msg: None)
    if config.auto_stop and valid is None:
        raise ConfigError("auto-stop needs a validation set (-p/--valid)")
    limits = config.read_limits()
    tr = load_data(train_data, config.format, limits)
    say(f"read {tr.batch.n_rows} rows from {tr.name} in {tr.seconds:.2f} s"
        + (f" ({tr.bytes_read / 1e6 / max(tr.seconds, 1e-9):.0f} MB/s)" if tr.bytes_read else ""))
    va = load_data(valid, config.format, limits) if valid is not None else None
    if va is not None:
        say(f"read {va.batch.n_rows} rows from {va.name} in {va.seconds:.2f} s")
    for data in (tr, va):
        if data is not None and data.skipped:
            say(f"skipped {len(data.skipped)} malformed rows of {data.name} (--max-bad-rows); "
                f"first: {data.skipped[0]}")
    if config.model in ("ffm", "fwfm") and tr.format == "libsvm":
        raise ConfigError(
            f"{tr.name} is libsvm (no field ids) but the {config.model} model needs fields; "
            "use --model fm or lr, or libffm input"
        )

    rng = np.random.default_rng(config.seed)
    n_features = max(tr.batch.max_feature + 1, 0)
    n_fields = max(tr.batch.max_field + 1, 0)
    need = TrainState.bytes_needed(config, n_features, n_fields)
    limit = config.max_memory if config.max_memory is not None else _available_memory()
    if limit is not None and need > limit:
        raise DataError(
            f"feature ids up to {n_features - 1} and {n_fields} fields need a {config.model} model "
            f"of {need / 2**30:.2f} GiB (k={config.k}), more than "
            + (f"--max-memory {limit / 2**30:.2f} GiB" if config.max_memory is not None
               else f"this machine's {limit / 2**30:.1f} GiB")
            + "; hash the ids into a smaller space or raise --max-memory",
            tr.name,
        )
    state = TrainState(config, n_features, n_fields, rng)
    n_rows = tr.batch.n_rows
    history: list[EpochStats] = []
    best: tuple[float, int] = (float("inf"), 0)
    snap = None
    t_start = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        order = rng.permutation(n_rows) if config.shuffle else np.arange(n_rows)
        t0 = time.perf_counter()
        loss, bad = state.train_epoch(tr.batch, order.astype(np.int64, copy=False))
        seconds = time.perf_counter() - t0
        if bad or not np.isfinite(loss) or not state.all_finite():
            raise DivergenceError(
                f"training diverged in epoch {epoch} (non-finite score or weight"
                + (f" on {bad} rows" if bad else "")
                + "); lower the learning rate (-r) or raise l2 (-l); no model was written"
            )
        va_loss = va_auc = None
        if va is not None:
            scores = state.scores(va.batch, available_cpus())
            va_loss = logloss_from_scores(va.batch.labels, scores)
            va_auc = auc(va.batch.labels, scores)
        stats = EpochStats(epoch, loss / n_rows, va_loss, va_auc, seconds, n_rows / max(seconds, 1e-9))
        history.append(stats)
        if on_epoch is not None:
            on_epoch(stats)
        if va_loss is not None:
            if va_loss < best[0]:
                best = (va_loss, epoch)
                if config.auto_stop and epoch < config.epochs:
                    snap = state.snapshot()
            elif config.auto_stop:
                say(f"validation logloss rose in epoch {epoch}; keeping epoch {best[1]}")
                if snap is not None:
                    state.restore(snap)
                break

    final_epoch = best[1] if (config.auto_stop and va is not None) else history[-1].epoch
    # With SOURCE_DATE_EPOCH set the file must be reproducible: leave out
    # wall-clock figures (they stay in the console output).
    timed = "SOURCE_DATE_EPOCH" not in os.environ
    epochs_meta = [
        {k: v for k, v in asdict(h).items() if timed or k not in ("seconds", "rows_per_s")}
        for h in history
    ]
    final = history[final_epoch - 1]
    meta = {
        "created_at": _created_at(),
        "hyperparameters": config.to_dict(),
        "optimizer": {"name": config.optimizer, "state": state.ns > 0},
        "training": {
            "train_file": tr.name,
            "valid_file": va.name if va is not None else None,
            "train_rows": n_rows,
            "skipped_rows": len(tr.skipped) + (len(va.skipped) if va is not None else 0),
            "valid_rows": va.batch.n_rows if va is not None else 0,
            "epochs_run": len(history),
            "model_epoch": final_epoch,
            "best_epoch": best[1] or None,
            "train_logloss": final.train_logloss,
            "valid_logloss": final.valid_logloss,
            "valid_auc": final.valid_auc,
            "seconds": time.perf_counter() - t_start if timed else None,
            "history": epochs_meta,
        },
        "fmcli_version": __version__,
    }
    return state.to_model(meta)


def _symmetric(upper: np.ndarray) -> np.ndarray:
    """The full symmetric matrix whose upper triangle (diagonal included) is `upper`'s."""
    u = np.triu(upper.astype(np.float32))
    return u + np.triu(u, 1).T


def _created_at() -> str:
    """UTC timestamp, honouring SOURCE_DATE_EPOCH for reproducible files."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = (
        _dt.datetime.fromtimestamp(int(epoch), _dt.timezone.utc)
        if epoch and epoch.isdigit()
        else _dt.datetime.now(_dt.timezone.utc)
    )
    return when.replace(microsecond=0).isoformat()
