"""Training orchestration: read data, size and initialise the model, run epochs.

The arithmetic lives in the compiled core (``fmcli._core._kernels``); this
module only decides what runs when: row order per epoch, validation, early
stopping and turning the training layout into a :class:`~fmcli.model.Model`.
"""

from __future__ import annotations

import datetime as _dt
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from . import __version__
from ._core import _kernels
from .config import MAX_HOT_FEATURES, Config, available_cpus
from .data.batch import Batch
from .data.cache import default_cache_dir
from .data.dataset import Dataset, dataset_from_batch, load_dataset
from .data.idmap import IdMap
from .data.weights import read_weights
from . import checkpoint
from .errors import ConfigError, DataError, DivergenceError, Interrupted, ModelFormatError
from .inputmap import run_map
from .metrics import DEFAULT_METRIC, METRIC_NAMES, METRICS, defined, evaluate, is_better, why_undefined
from .model import Model, ModelSpec, load_model, padded_k
from .safepaths import refuse_clobber


@dataclass
class EpochStats:
    epoch: int
    train_loss: float | None               # weighted mean training loss of the epoch (None: no weight)
    valid: dict[str, float | None] | None  # validation metrics (fmcli.metrics.evaluate; None: undefined)
    seconds: float
    rows_per_s: float
    skipped_nonfinite: int = 0
    task: str = "binary"

    @property
    def valid_logloss(self) -> float | None:
        return None if self.valid is None else self.valid.get("logloss")

    @property
    def valid_auc(self) -> float | None:
        return None if self.valid is None else self.valid.get("auc")


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
    """Parameters and optimizer state in the kernels' interleaved layout.

    Each array holds one parameter set per class (one for binary and
    regression), class after class: B (C, w), L (C * n_features, w),
    F (C * blocks, w * kp), R (C * n_fields^2, w), w = 1 + state slots.
    With --storage float16 an F row is kp float16 weights then the state
    (see factor_slot); with row-wise AdaGrad it is kp weights then one
    accumulator."""

    half = False    # float16 factor weights (set from the config)
    rowwise = False # one AdaGrad accumulator per factor block (set from the config)
    hot: np.ndarray | None = None   # features trained on per-thread replicas (see choose_hot)

    def __init__(self, cfg: Config, n_features: int, n_fields: int, rng: np.random.Generator,
                 task: str = "binary", classes: list[str] | None = None, slot_ids: np.ndarray | None = None):
        """slot_ids: for a model of compact ids (fmcli.data.idmap), the
        original id of each slot, all below n_features of the dense model:
        each slot starts from the values the dense model gives its id, and
        `rng` ends where the dense model leaves it, so with one thread the
        two train alike."""
        self.cfg = cfg
        C = len(classes) if task == "multiclass" else 1
        self.n_classes = C
        self.spec = ModelSpec(
            kind=cfg.model,
            task=task,
            k=cfg.k,
            n_features=n_features if slot_ids is None else len(slot_ids),
            n_fields=n_fields,
            use_bias=cfg.use_bias,
            use_linear=cfg.use_linear,
            normalize=cfg.normalize,
            n_classes=C,
            classes=tuple(classes) if task == "multiclass" else None,
        )
        dtype = np.dtype(cfg.dtype)
        self.ns = _kernels.n_state(cfg.optimizer)
        self.kp = padded_k(cfg.k)
        width = 1 + self.ns
        dense_features = n_features
        if slot_ids is not None:
            n_features = len(slot_ids)
        n_blocks = self.n_blocks(cfg, n_features, n_fields)
        pairs = n_fields * n_fields if cfg.model == "fwfm" else 0
        self.B = np.zeros((C, width), dtype)
        self.L = np.zeros((C * n_features, width), dtype)
        self.half = cfg.storage == "float16"
        self.rowwise = cfg.optimizer == "rowwise-adagrad"
        words = self.factor_words(cfg)
        self.F = aligned_zeros((C * n_blocks, words), dtype)
        # FwFM's field-pair weights start at 1 (FwFM then starts as FM).
        self.R = np.zeros((C * pairs, width), dtype)
        self.R[:, 0] = 1.0
        if n_blocks and slot_ids is not None:
            scale = np.float32(cfg.init_scale / np.sqrt(cfg.k))
            _draw_as_dense(self.factor_slot(0), rng, slot_ids, C, self.n_blocks(cfg, dense_features, n_fields),
                           n_blocks // max(n_features, 1), cfg.k, scale)
        elif n_blocks:
            # libffm's initialisation: U(0, 1) / sqrt(k), padding stays zero.
            scale = np.float32(cfg.init_scale / np.sqrt(cfg.k))
            step = 1 << 20  # fill in slices so no full-size temporary is made
            for start in range(0, C * n_blocks, step):
                stop = min(start + step, C * n_blocks)
                self.factor_slot(0)[start:stop, : cfg.k] = (
                    rng.random((stop - start, cfg.k), dtype=np.float32) * scale)
        self._init_state()

    def replicable(self) -> bool:
        """Whether the kernels can train hot features on per-thread replicas:
        float32 FFM (float32 storage), several threads, one class, one row at a
        time, no clipping, and an optimizer whose steps add up (not Adam)."""
        c = self.cfg
        return (c.model == "ffm" and c.threads > 1 and c.dtype == "float32" and not self.half
                and c.batch_size == 1 and not c.clip_norm and c.optimizer != "adam"
                and self.n_classes == 1)

    def choose_hot(self, batch: Batch) -> None:
        """Pick the features that every thread would otherwise keep writing:
        the --hot-features most frequent in batch (auto: on a batch of
        HOT_MIN_ROWS or more, as many as fit HOT_BYTES per thread, each on at
        least HOT_MIN_SHARE of the rows)."""
        want = self.cfg.hot_features
        if want and self.n_classes > 1:
            raise ConfigError("--hot-features applies to the binary and regression tasks, not multiclass")
        if (not self.replicable() or want == 0 or batch.n_rows == 0
                or (want is None and batch.n_rows < HOT_MIN_ROWS)):
            self.hot = None
            return
        n = self.spec.n_features
        per_feature = self.F.shape[1] * self.F.itemsize * self.spec.n_fields
        counts = np.zeros(n, np.int64)
        step = 1 << 20   # in slices: bincount widens its input to int64
        for i in range(0, len(batch.features), step):
            part = batch.features[i : i + step]
            counts += np.bincount(part[part < n], minlength=n)[:n]
        if want is None:
            want = min(HOT_BYTES // per_feature, int((counts >= HOT_MIN_SHARE * batch.n_rows).sum()))
        want = min(want, int(np.count_nonzero(counts)), MAX_HOT_FEATURES)
        if want <= 0:
            self.hot = None
            return
        top = np.argpartition(-counts, want - 1)[:want]
        self.hot = np.sort(top).astype(np.int32)

    @staticmethod
    def factor_words(cfg: Config) -> int:
        """Four-byte words per factor block: kp weights and their state, kp
        per slot; float16 storage: kp float16 weights (kp / 2 words) then kp
        float32 accumulators; row-wise AdaGrad: kp weights then one accumulator."""
        kp, ns = padded_k(cfg.k), _kernels.n_state(cfg.optimizer)
        if cfg.storage == "float16":
            return kp // 2 + ns * kp
        if cfg.optimizer == "rowwise-adagrad":
            return kp + 1
        return (1 + ns) * kp

    def factor_slot(self, slot: int) -> np.ndarray:
        """Slot `slot` of every factor block, (blocks, kp): 0 the weights (float16
        with --storage float16), 1.. the optimizer's state ((blocks, 1) for
        row-wise AdaGrad's accumulator)."""
        kp = self.kp
        if self.rowwise and slot:
            return self.F[:, kp : kp + 1]
        if not self.half:
            return self.F[:, slot * kp : (slot + 1) * kp]
        halves = self.F.view(np.float16)
        return halves[:, :kp] if slot == 0 else halves[:, kp:].view(np.float32)

    def _init_state(self) -> None:
        cfg, kp = self.cfg, self.kp
        if cfg.optimizer in ("adagrad", "rowwise-adagrad"):
            # libffm's AdaGrad accumulators start at 1
            for a in (self.B, self.L, self.R):
                a[:, 1:] = 1.0
            for slot in range(1, 1 + self.ns):
                self.factor_slot(slot)[...] = 1.0
        elif cfg.optimizer == "ftrl":
            # z such that FTRL's closed form at n = 0 gives back the initial weights
            alpha, beta, l1 = cfg.ftrl_alpha, cfg.ftrl_beta, cfg.l1
            for a, l1_, l2 in ((self.B, 0.0, cfg.l2_of("bias")), (self.L, l1, cfg.l2_of("linear")),
                               (self.R, 0.0, 0.0)):
                a[:, 1] = -(a[:, 0] * (beta / alpha + l2) + np.sign(a[:, 0]) * l1_)
            l2 = cfg.l2_of("factors")
            step = 1 << 18
            for start in range(0, self.F.shape[0], step):
                w = self.F[start : start + step, :kp]
                self.F[start : start + step, kp : 2 * kp] = -(w * np.float32(beta / alpha + l2)
                                                                + np.sign(w) * np.float32(l1))

    def warm_start(self, parent: Model, path: str, say: Callable[[str], None]) -> int:
        """Start from `parent`'s weights (and optimizer state when it has the
        same optimizer's); ids beyond its range keep their fresh values.
        Returns the updates the parent had made (Adam's step count and the
        schedules continue from there)."""
        p, s, cfg = parent.spec, self.spec, self.cfg
        for name, mine, theirs in (("model", s.kind, p.kind), ("task", s.task, p.task), ("k", s.k, p.k),
                                   ("bias term", s.use_bias, p.use_bias),
                                   ("linear term", s.use_linear, p.use_linear),
                                   ("normalization", s.normalize, p.normalize),
                                   ("classes", s.classes, p.classes)):
            if mine != theirs:
                raise ConfigError(f"{path}: --init-model has {name} {theirs!r} but this run trains {mine!r}")
        C, n0, m0, k, kp = self.n_classes, p.n_features, p.n_fields, s.k, self.kp
        n, m = s.n_features, s.n_fields
        width = 1 + self.ns
        same_opt = (parent.meta.get("optimizer") or {}).get("name") == cfg.optimizer
        if not same_opt:
            say(f"{path} was trained with another optimizer: its weights are kept, the "
                f"{cfg.optimizer} state starts fresh")
        elif self.ns and not parent.state:
            say(f"{path} has no optimizer state (--no-optimizer-state): it starts fresh")

        def slots(name: str, shape: tuple[int, ...], state_shape: tuple[int, ...] | None = None):
            """The parent's parameter and state slots of one array, each (C, *shape)
            (the state (C, *state_shape) when given)."""
            out = [np.asarray(parent.params[name], np.float32).reshape((C,) + shape)]
            st = parent.state.get(name) if same_opt else None
            if st is not None and self.ns:
                st = np.asarray(st, np.float32)
                sh = (C,) + (shape if state_shape is None else state_shape)
                out += [x.reshape(sh) for x in (st[None] if self.ns == 1 else st)]
            return out

        if s.use_bias and "bias" in parent.params:
            for i, a in enumerate(slots("bias", ())):
                self.B[:, i] = a
        if s.use_linear and "linear" in parent.params:
            L = self.L.reshape(C, n, width)
            for i, a in enumerate(slots("linear", (n0,))):
                L[:, :n0, i] = a
        if "factors" in parent.params:
            # a block per feature (FM, FwFM) or per feature and field (FFM)
            old, new = ((n0, m0), (n, m)) if s.kind == "ffm" else ((n0,), (n,))
            within = (slice(None),) + tuple(slice(0, x) for x in old)
            for i, a in enumerate(slots("factors", old + (k,), old if self.rowwise else None)):
                if i and self.rowwise:   # one accumulator per block
                    self.factor_slot(i).reshape((C,) + new)[within] = a
                else:
                    self.factor_slot(i).reshape((C,) + new + (kp,))[within + (slice(0, k),)] = a
        if s.kind == "fwfm":
            R = self.R.reshape(C, m, m, width)
            for i, a in enumerate(slots("field_weights", (m0, m0))):
                R[:, :m0, :m0, i] = a
        if n > n0 or m > m0:
            say(f"{path} knew {n0} features and {m0} fields; this data has {n} and {m}: "
                "the new ones start from fresh values")
        return int((parent.meta.get("optimizer") or {}).get("steps") or 0) if same_opt else 0

    @staticmethod
    def n_blocks(cfg: Config, n_features: int, n_fields: int) -> int:
        return {"lr": 0, "fm": n_features, "fwfm": n_features, "ffm": n_features * n_fields}[cfg.model]

    @classmethod
    def bytes_needed(cls, cfg: Config, n_features: int, n_fields: int, n_classes: int = 1) -> int:
        """Memory for parameters, optimizer state and mini-batch gradient sums
        (the early-stopping copy not included)."""
        sums = cfg.threads if cfg.batch_size > 1 else 0   # one gradient sum per weight and thread
        blocks = cls.n_blocks(cfg, n_features, n_fields)
        pairs = n_fields * n_fields if cfg.model == "fwfm" else 0
        scalars = (n_features + 1 + pairs) * (1 + _kernels.n_state(cfg.optimizer) + sums)
        factors = blocks * (cls.factor_words(cfg) + sums * padded_k(cfg.k))
        return (scalars + factors) * n_classes * np.dtype(cfg.dtype).itemsize

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
        arrays = self.arrays()
        if self.half:   # F holds float16 and float32 words: look at each
            arrays = arrays[:2] + arrays[3:] + tuple(self.factor_slot(i) for i in range(1 + self.ns))
        step = 1 << 16   # in slices: no temporary the size of the model
        return all(bool(np.isfinite(a[i : i + step]).all()) for a in arrays for i in range(0, len(a), step))

    def scores(self, batch: Batch, threads: int) -> np.ndarray:
        """Raw scores: (n,) for one class, (n, C) for multiclass."""
        C = self.n_classes
        out = np.empty(batch.n_rows * C, np.float64)
        b, l, f, r = self.flat()
        s = self.spec
        _kernels.score_rows(
            s.kind, b, l, f, r, s.n_features, s.n_fields, self.kp, self.ns,
            batch.indptr, batch.fields, batch.features, batch.values, out,
            s.use_bias, s.use_linear, s.normalize, threads, C, self.half, self.rowwise,
        )
        return out.reshape(-1, C) if s.task == "multiclass" else out

    def train_epoch(self, batch: Batch, order: np.ndarray, weights: np.ndarray | None,
                    step0: int, total_steps: int) -> tuple[float, float, int, int]:
        b, l, f, r = self.flat()
        s, c = self.spec, self.cfg
        w = np.zeros(0, np.float32) if weights is None else weights
        return _kernels.train_epoch(
            s.kind, c.optimizer, s.task, b, l, f, r, s.n_features, s.n_fields, self.kp,
            self.n_classes, batch.indptr, batch.fields, batch.features, batch.values,
            batch.labels, w, order, c.step_size,
            l2_bias=c.l2_of("bias"), l2_linear=c.l2_of("linear"), l2_factors=c.l2_of("factors"),
            l1=c.l1, beta1=c.adam_beta1, beta2=c.adam_beta2, adam_eps=c.adam_eps,
            ftrl_beta=c.ftrl_beta, label_smoothing=c.label_smoothing, clip_norm=c.clip_norm,
            schedule=c.lr_schedule, warmup=c.warmup_steps, total_steps=total_steps, step0=step0,
            batch_size=c.batch_size, use_bias=s.use_bias, use_linear=s.use_linear,
            normalize=s.normalize, threads=c.threads, exact_rsqrt=c.exact_adagrad, half_factors=self.half,
            skip_nonfinite=c.on_nonfinite == "skip", hot_features=self.hot, hot_sync=HOT_SYNC_ROWS,
            k=c.k,
        )

    def to_model(self, meta: dict) -> Model:
        """The trained model; its arrays are views of this state where possible."""
        s, k, C = self.spec, self.cfg.k, self.n_classes
        lead = (C,) if s.task == "multiclass" else ()

        def take(a: np.ndarray, slot: int, shape: tuple[int, ...]) -> np.ndarray:
            return a[:, slot : slot + 1].astype(np.float32, copy=False).reshape(lead + shape)

        def pairs(a: np.ndarray, slot: int) -> np.ndarray:
            m = s.n_fields
            return np.stack([_symmetric(x) for x in a[:, slot].reshape(C, m, m)]).reshape(lead + (m, m))

        params: dict[str, np.ndarray] = {}
        state: dict[str, np.ndarray] = {}
        shape = s.factor_shape()
        for slot in range(1 + self.ns):
            out = params if slot == 0 else {}
            if s.use_bias:
                out["bias"] = take(self.B, slot, (1,) if not lead else ())
            if s.use_linear:
                out["linear"] = take(self.L, slot, (s.n_features,))
            if shape is not None and slot and self.rowwise:
                # one accumulator per k-vector
                out["factors"] = self.factor_slot(slot)[:, 0].reshape(lead + shape[:-1])
            elif shape is not None:
                # float16 weights stay float16 here (a view, no model-sized copy
                # while the training data is still held); saving widens them
                f = self.factor_slot(slot)[:, :k]
                out["factors"] = (f if f.dtype == np.float16 else f.astype(np.float32, copy=False)).reshape(
                    lead + shape)
            if s.kind == "fwfm":
                out["field_weights"] = pairs(self.R, slot)
            if slot:
                for name, a in out.items():
                    state.setdefault(name, []).append(a)
        # one state slot: the parameter's shape; more: (slots, *shape)
        state = {name: (v[0] if len(v) == 1 else np.stack(v)) for name, v in state.items()}
        return Model(spec=s, params=params, state=state, meta=meta)


def _class_weight_table(config: Config, data: Dataset) -> np.ndarray | None:
    """Weight of each final label value (binary: [negative, positive]), or None."""
    cw = config.class_weights()
    if cw is None:
        return None
    names = ["0", "1"] if data.task == "binary" else list(data.classes)
    counts = np.asarray(data.label_counts, np.float64)
    if cw == "balanced":
        return np.where(counts > 0, data.n_rows / (len(names) * np.maximum(counts, 1)), 0.0).astype(np.float32)
    table = np.ones(len(names), np.float32)
    for key, value in cw.items():
        if data.task == "binary":
            try:
                index = 1 if float(key) > 0 else 0
            except ValueError:
                raise ConfigError(f"class weight label {key!r} is not a binary label (0, 1 or -1)") from None
        elif key in names:
            index = names.index(key)
        else:
            raise ConfigError(f"class weight label {key!r} is not a class of {data.name} "
                              f"({', '.join(names[:10])}{', ...' if len(names) > 10 else ''})")
        table[index] = value
    return table


def _weights_of(batch: Batch, table: np.ndarray | None, file_weights: np.ndarray | None,
                first_row: int) -> np.ndarray | None:
    """The rows' weights: sample weights (inline or from the weights file)
    times class weights; None when all are 1."""
    w = batch.weights
    if file_weights is not None:
        w = file_weights[first_row : first_row + batch.n_rows]
    if table is not None:
        cw = table[batch.labels.astype(np.int64)]
        w = cw if w is None else (w * cw).astype(np.float32)
    return w


def _data_options(config: Config) -> dict:
    return {"fmt": config.format, "limits": config.read_limits(),
            "cache_dir": (config.cache_dir or default_cache_dir()) if config.cache else None,
            "memory_budget": config.memory_budget, "parquet": config.parquet_options(),
            "cache_check": config.cache_check, "cache_max_size": config.cache_max_size}


def _load(source, config: Config, task: str, classes, say, input_map: dict | None = None,
          on_read=None) -> Dataset:
    if isinstance(source, Batch):
        return dataset_from_batch(source, task, classes)
    options = _data_options(config)
    if input_map is not None and input_map.get("layout") == "wide":
        # wide Parquet: every file is read by column name (fmcli.inputmap)
        options["parquet"] = {**options["parquet"], "match": input_map}
    ds = load_dataset(source, task=task, classes=classes, log=say, on_read=on_read, **options)
    how = {"hit": "from the cache", "built": "and cached"}.get(ds.cached_from, "")
    rate = f" ({ds.bytes_read / 1e6 / max(ds.seconds, 1e-9):.0f} MB/s)" if ds.cached_from != "hit" and ds.bytes_read else ""
    say(f"read {ds.n_rows} rows from {ds.name} {how} in {ds.seconds:.2f} s{rate}".replace("  ", " "))
    if ds.n_skipped:
        say(f"skipped {ds.n_skipped} malformed rows of {ds.name} (--max-bad-rows)"
            + (f"; first: {ds.skipped[0]}" if ds.skipped else ""))
    return ds


SLICE_ROWS = 1 << 15   # rows per kernel call: the grain of progress, checkpoints and signals
# Hot-feature replicas (multi-threaded FFM, see fmcli/_core/hot.h): a thread's
# replica takes at most HOT_BYTES, of features on at least HOT_MIN_SHARE of the
# rows, exchanged with the shared model every HOT_SYNC_ROWS of its rows.  By
# default they are used on data of HOT_MIN_ROWS or more: their staleness costs
# accuracy where a few hundred rows are a sizeable share of an epoch, and the
# contention they avoid matters on long runs.
HOT_BYTES = 1 << 19
HOT_MIN_SHARE = 0.002
HOT_MIN_ROWS = 100_000
HOT_SYNC_ROWS = 256


def _data_key(ds: Dataset) -> dict:
    """What a checkpoint remembers of its training data: its shape and the
    digest of its content (not the names it was given: a resumed run names
    the files by absolute path, and a copied or restored file is the same data)."""
    return {"rows": ds.n_rows, "nnz": ds.nnz, "chunks": ds.chunk_rows, "digest": ds.digest}


def _check_resume_data(saved: dict, ds: Dataset, where: str) -> None:
    """Refuse to resume on data other than the checkpoint's."""
    changed = f"{where}: the training data changed since the checkpoint was written"
    if saved.get("rows") != ds.n_rows:
        raise ConfigError(f"{changed} ({saved.get('rows')} rows then, {ds.n_rows} now)")
    if "digest" in saved:
        if saved["digest"] != ds.digest or saved.get("chunks") != ds.chunk_rows:
            raise ConfigError(f"{changed} (the same {ds.n_rows} rows, other content)")
        return
    # a checkpoint from before content digests: shape and the inputs' sizes and sampled hashes
    def sampled(prints):
        return [(p.get("size"), p.get("sha256_head_tail")) for p in prints or []]

    if (saved.get("nnz") != ds.nnz or saved.get("chunks") != ds.chunk_rows
            or sampled(saved.get("inputs")) != sampled(ds.fingerprints)):
        raise ConfigError(f"{changed} (the same {ds.n_rows} rows, other content)")


def train(
    config: Config,
    train_data: str | os.PathLike | Sequence[str] | Batch,
    valid: str | os.PathLike | Sequence[str] | Batch | None = None,
    *,
    weights: str | os.PathLike | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
    log: Callable[[str], None] | None = None,
    on_progress: Callable[[int, int, int], None] | None = None,
    on_checkpoint: Callable[[dict], None] | None = None,
    should_stop: Callable[[], int | None] | None = None,
    on_start: Callable[[], None] | None = None,
    on_read: Callable[[str, int, int | None, int], None] | None = None,
    resume: str | None = None,
    run_info: dict | None = None,
) -> Model:
    """Train a model; returns it with the run's summary in ``model.meta``.

    train_data and valid: a path, a glob, '-', a list of them, or a Batch.
    weights: a file with one weight per training row (or give them inline
    as LABEL:WEIGHT).  on_progress(epoch, rows done, rows in the epoch) is
    called every SLICE_ROWS rows; should_stop() returning a signal number
    ends the run there (after a checkpoint, when config.checkpoint_dir is
    set) with :class:`~fmcli.errors.Interrupted`.  on_start() is called
    once every input is read, before the first update.  on_read(name,
    bytes read, bytes in all or None, rows so far) is called while inputs
    are parsed (not when they come from the cache).  resume: a checkpoint
    directory to continue from (the configuration must be the checkpoint's;
    see :func:`resume_arguments`).  run_info: stored in checkpoints (the
    command line's own arguments)."""
    say = log or (lambda msg: None)
    patience = config.stop_patience
    if patience and valid is None:
        raise ConfigError("early stopping (--patience / --auto-stop) needs a validation set (-p/--valid)")
    # Checkpoints never go where an input lives (a resumed run writes its own directory).
    refuse_clobber({"the training data": None if isinstance(train_data, Batch) else train_data,
                    "the validation data": None if isinstance(valid, Batch) else valid,
                    "the weights file": weights, "the init_model file": config.init_model,
                    "the resume directory": resume},
                   {}, directories={"checkpoint_dir": (config.checkpoint_dir, checkpoint.OWNED_NAMES)},
                   allow={("checkpoint_dir", "the resume directory")})
    ckpt = checkpoint.load_latest(resume) if resume is not None else None
    if config.checkpoint_dir:
        checkpoint.prepare(config.checkpoint_dir)   # a bad place fails now, not at the first checkpoint
    # the parent of a warm start is read once (it may come through a pipe)
    parent = load_model(config.init_model) if config.init_model else None
    input_map = run_map(train_data, valid, config,           # how rows are read: stored in the model
                        parent=parent.meta.get("input") if parent is not None else None)
    tr = _load(train_data, config, config.task, None, say, input_map, on_read)
    task = tr.task
    if config.task == "auto":
        say(f"task: {task} (from the labels of {tr.name})")
        config = config.replace(task=task)   # re-validates the combination
    if task == "multiclass" and len(tr.classes) < 2:
        raise DataError(f"multiclass training needs at least two classes, found only {tr.classes}", tr.name)
    va = _load(valid, config, task, tr.classes, say, input_map, on_read) if valid is not None else None
    if config.model in ("ffm", "fwfm") and tr.format == "libsvm":
        raise ConfigError(
            f"{tr.name} is libsvm (no field ids) but the {config.model} model needs fields; "
            "use --model fm or lr, or libffm input"
        )
    if ckpt is not None:
        _check_resume_data(ckpt.info["data"], tr, resume)
    file_weights = None
    if weights is not None:
        if tr.has_weights:
            raise ConfigError(f"{tr.name} has inline row weights (LABEL:WEIGHT); "
                              "give weights inline or with --weights, not both")
        file_weights = read_weights(weights, tr.n_rows, tr.name)
    class_table = _class_weight_table(config, tr)
    metric = config.early_stopping_metric or DEFAULT_METRIC[task]
    if task not in METRICS[metric][0]:
        raise ConfigError(f"metric {metric} is not defined for the {task} task")
    if patience and va is not None:
        _check_stopping_metric(va, task, metric)

    rng = np.random.default_rng(config.seed)
    # ids sparse in their space train compact slots (fmcli.data.idmap); the
    # data sets hand the kernels slots from here on
    id_map = plan_id_map(tr, parent)
    tr.use_id_map(id_map)
    if va is not None:
        va.use_id_map(id_map)
    n_features = (len(id_map) if id_map is not None
                  else max(tr.max_feature + 1, parent.spec.n_features if parent else 0, 0))
    n_fields = max(tr.max_field + 1, parent.spec.n_fields if parent else 0, 0)
    n_classes = len(tr.classes) if task == "multiclass" else 1
    need = TrainState.bytes_needed(config, n_features, n_fields, n_classes)
    limit = config.max_memory if config.max_memory is not None else _available_memory()
    if limit is not None and need > limit:
        raise DataError(
            (f"feature ids up to {n_features - 1}" if id_map is None
             else f"{n_features} distinct feature ids (of ids up to {id_map.space - 1})")
            + f" and {n_fields} fields need a {config.model} model "
            f"of {need / 2**30:.2f} GiB (k={config.k}"
            + (f", {n_classes} classes" if n_classes > 1 else "") + "), more than "
            + (f"--max-memory {limit / 2**30:.2f} GiB" if config.max_memory is not None
               else f"this machine's {limit / 2**30:.1f} GiB")
            + "; hash the ids into a smaller space or raise --max-memory",
            tr.name,
        )
    state, device = _new_state(config, n_features, n_fields, rng, task, tr.classes, say,
                               # a new model of compact ids starts as the dense one would
                               None if id_map is None or parent is not None else id_map.ids,
                               tr.max_feature + 1)
    steps_before = 0            # updates made by the parent model's runs (Adam, schedules)
    lineage = None
    if parent is not None:
        steps_before = state.warm_start(parent, config.init_model, say)
        lineage = _lineage(parent, config.init_model)
    n_rows = tr.n_rows
    # Data that fits the memory budget is trained as one chunk (an exact
    # shuffle of all rows each epoch); larger data streams chunk by chunk:
    # the chunks' order is shuffled, then the rows within each chunk.
    whole = tr.n_chunks == 1 or tr.data_bytes <= config.memory_budget
    # the CPU kernels read the compact form (uint8 fields, no all-1 values)
    compact = device == "cpu"
    mem_batch = tr.in_memory(compact) if whole else None
    sizes = [n_rows] if whole else tr.chunk_rows
    bs = config.batch_size
    steps_per_epoch = sum(-(-r // bs) for r in sizes)
    total_steps = steps_before + steps_per_epoch * config.epochs
    grain = min(SLICE_ROWS, config.checkpoint_every) if config.checkpoint_every else SLICE_ROWS
    slice_rows = max(bs, grain // bs * bs)
    va_batch = (va.in_memory(compact) if va is not None and va.data_bytes <= config.memory_budget
                else None)
    if not whole:
        say(f"streaming {tr.n_chunks} chunks of up to {max(tr.chunk_rows)} rows per epoch "
            f"(data of {tr.data_bytes / 2**20:.0f} MiB > --memory-budget)")
    offsets = np.concatenate([[0], np.cumsum(tr.chunk_rows)])
    history: list[EpochStats] = []
    best: tuple[float | None, int] = (None, 0)
    snap = None
    nonfinite = 0
    first_epoch = 1
    if ckpt is not None:
        # Refuse weights or optimizer state that are not finite (a model file
        # is refused the same way): the best epoch's copy, then the current
        # arrays, which stay restored.
        for prefix in ("best_", "") if "best_B" in ckpt.arrays else ("",):
            state.restore(tuple(ckpt.arrays[prefix + n] for n in ("B", "L", "F", "R")))
            if not state.all_finite():
                which = "the best epoch's weights" if prefix else "the weights"
                raise ModelFormatError(
                    f"{which} or optimizer state hold a non-finite value (NaN or inf): the checkpoint "
                    "is corrupt; remove it to resume from the one before, or train anew", ckpt.path)
        if "best_B" in ckpt.arrays:
            snap = tuple(np.array(ckpt.arrays[f"best_{n}"]) for n in ("B", "L", "F", "R"))
        c = ckpt.info
        history = [EpochStats(**h) for h in c["history"]]
        best = (c["best"][0], c["best"][1])
        nonfinite = c["nonfinite"]
        first_epoch = c["epoch"]
        steps_before = c["steps_before"]
        total_steps = steps_before + steps_per_epoch * config.epochs
        lineage = c.get("parent")
        say(f"resuming from {ckpt.path}: epoch {c['epoch']}, "
            f"{c['rows_done']} of {n_rows} rows done")

    def write_checkpoint(epoch: int, chunk_pos: int, row_pos: int, rows_done: int, rng_state: dict,
                         sums: tuple[float, float, int]) -> None:
        if not config.checkpoint_dir:
            return
        arrays = dict(zip(("B", "L", "F", "R"), state.arrays()))
        if snap is not None:
            arrays.update(zip(("best_B", "best_L", "best_F", "best_R"), snap))
        info = {"epoch": epoch, "chunk_pos": chunk_pos, "row_pos": row_pos, "rows_done": rows_done,
                "rng": rng_state, "sums": list(sums), "history": [asdict(h) for h in history],
                "best": list(best), "nonfinite": nonfinite, "steps_before": steps_before,
                "config": config.to_dict(), "data": _data_key(tr), "parent": lineage,
                "run": run_info or {}}
        path = checkpoint.save(config.checkpoint_dir, info, arrays, config.keep_checkpoints)
        if on_checkpoint is not None:
            on_checkpoint({"path": path, "epoch": epoch, "rows_done": rows_done})

    if on_start is not None:
        on_start()
    t_start = time.perf_counter()
    stopped = False
    hot_chosen = False   # from the first batch trained on
    for epoch in range(first_epoch, config.epochs + 1):
        t0 = time.perf_counter()
        step = steps_before + (epoch - 1) * steps_per_epoch
        resuming = ckpt is not None and epoch == ckpt.info["epoch"]
        if resuming:
            rng.bit_generator.state = ckpt.info["rng"]
        epoch_rng = rng.bit_generator.state
        loss, wsum, bad = (ckpt.info["sums"] if resuming else (0.0, 0.0, 0))
        loss, wsum, bad = float(loss or 0.0), float(wsum or 0.0), int(bad)
        chunk_pos, row_pos = (ckpt.info["chunk_pos"], ckpt.info["row_pos"]) if resuming else (0, 0)
        rows_done = ckpt.info["rows_done"] if resuming else 0
        since_ckpt = 0
        if whole:
            chunk_order = np.zeros(1, np.int64)
        elif tr.file_order_only:
            chunk_order = np.arange(tr.n_chunks)
        else:
            chunk_order = rng.permutation(tr.n_chunks) if config.shuffle else np.arange(tr.n_chunks)
        # replay the draws of the chunks a resumed epoch had finished
        for ci in chunk_order[:chunk_pos]:
            rows = n_rows if whole else tr.chunk_rows[int(ci)]
            if config.shuffle:
                rng.permutation(rows)
            step += -(-rows // bs)
        # (a run stopped after its epoch's last slice resumes with nothing left of the epoch)
        parts = ([] if chunk_pos >= len(chunk_order) else [(0, mem_batch, None)] if whole
                 else tr.chunks(chunk_order[chunk_pos:], reuse=True))
        for pos, (index, batch, fname) in enumerate(parts, start=chunk_pos):
            rows = batch.n_rows
            if device == "cpu" and not hot_chosen:
                state.choose_hot(batch)
                hot_chosen = True
                if state.hot is not None:
                    say(f"{config.threads} threads: the {len(state.hot)} most frequent features "
                        "train on per-thread replicas (--hot-features)")
            order = (rng.permutation(rows) if config.shuffle else np.arange(rows)).astype(np.int64)
            w = _weights_of(batch, class_table, file_weights, 0 if whole else int(offsets[index]))
            start = row_pos if pos == chunk_pos else 0
            step += start // bs
            for lo in range(start, rows, slice_rows):
                hi = min(rows, lo + slice_rows)
                part = order[lo:hi]
                l, ws, b, first = state.train_epoch(batch, part, w, step, total_steps)
                step += -(-(hi - lo) // bs)
                loss, wsum, bad = loss + l, wsum + ws, bad + b
                if first >= 0:
                    row = int(part[first])
                    where = fname or tr.file_of_rows(np.array([row]))[0]
                    line = int(batch.lines[row]) if batch.lines is not None else None
                    raise DivergenceError(
                        f"{where}:{line if line is not None else f'row {row + 1}'}: training diverged in "
                        f"epoch {epoch} (a non-finite score or loss on this row); lower the learning "
                        "rate (-r), set --clip-norm, or use --on-nonfinite skip; no model was written")
                rows_done += hi - lo
                since_ckpt += hi - lo
                if on_progress is not None:
                    on_progress(epoch, rows_done, n_rows)
                at = (pos, hi) if hi < rows else (pos + 1, 0)
                signum = should_stop() if should_stop is not None else None
                if signum or (config.checkpoint_every and since_ckpt >= config.checkpoint_every
                              and rows_done < n_rows):
                    write_checkpoint(epoch, at[0], at[1], rows_done, epoch_rng, (loss, wsum, bad))
                    since_ckpt = 0
                if signum:
                    raise Interrupted(signum, checkpointed=bool(config.checkpoint_dir))
        seconds = time.perf_counter() - t0
        nonfinite += bad
        if not state.all_finite():
            raise DivergenceError(
                f"training diverged in epoch {epoch} (a weight became non-finite); lower the "
                "learning rate (-r) or set --clip-norm; no model was written")
        if epoch == 1 and not wsum > 0 and bad < n_rows:
            raise DataError("every training row has weight 0", tr.name)
        if bad:
            say(f"epoch {epoch}: skipped {bad} rows with a non-finite score or loss (--on-nonfinite skip)")
        va_metrics = None
        if va is not None:
            va_metrics = _validate(state, va, va_batch, task)
        stats = EpochStats(epoch, loss / wsum if wsum > 0 else None, va_metrics, seconds,
                           n_rows / max(seconds, 1e-9), bad, task)
        history.append(stats)
        if on_epoch is not None:
            on_epoch(stats)
        if va_metrics is not None:
            value = va_metrics[metric]   # None when undefined on this data: never the best
            if value is not None and (best[1] == 0 or is_better(metric, value, best[0])):
                best = (value, epoch)
                if patience and epoch < config.epochs:
                    snap = state.snapshot()
            elif patience and epoch - best[1] >= patience:
                say(f"validation {metric} has not improved for {epoch - best[1]} epoch(s); "
                    f"keeping epoch {best[1]}")
                stopped = True
        if epoch < config.epochs and not stopped:
            write_checkpoint(epoch + 1, 0, 0, 0, rng.bit_generator.state, (0.0, 0.0, 0))
        if stopped:
            break
    if patience and va is not None and best[1] != history[-1].epoch and snap is not None:
        state.restore(snap)
    final_epoch = best[1] if (patience and va is not None and snap is not None) else history[-1].epoch
    # With SOURCE_DATE_EPOCH set the file must be reproducible: leave out
    # wall-clock figures (they stay in the console output).
    timed = "SOURCE_DATE_EPOCH" not in os.environ
    epochs_meta = [
        {"epoch": h.epoch, "train_loss": h.train_loss,
         **{f"valid_{k}": v for k, v in (h.valid or {}).items()},
         **({"seconds": h.seconds, "rows_per_s": h.rows_per_s} if timed else {})}
        for h in history
    ]
    final = history[final_epoch - 1]
    meta = {
        "created_at": _created_at(),
        "hyperparameters": {**config.to_dict(), "learning_rate": config.step_size},
        "optimizer": {"name": config.optimizer, "state": state.ns > 0,
                      "slots": _STATE_SLOTS[config.optimizer],
                      "steps": steps_before + steps_per_epoch * len(history)},
        "training": {
            "device": device,
            "train_file": tr.name,
            "valid_file": va.name if va is not None else None,
            "train_rows": n_rows,
            "skipped_rows": tr.n_skipped + (va.n_skipped if va is not None else 0),
            "nonfinite_rows": nonfinite,
            "valid_rows": va.n_rows if va is not None else 0,
            "epochs_run": len(history),
            "model_epoch": final_epoch,
            "early_stopping_metric": metric if va is not None else None,
            "best_epoch": best[1] or None,
            "train_loss": final.train_loss,
            "valid_metrics": final.valid,
            "valid_logloss": final.valid_logloss,
            "valid_auc": final.valid_auc,
            "seconds": time.perf_counter() - t_start if timed else None,
            "history": epochs_meta,
        },
        "fmcli_version": __version__,
        "input": input_map,
        "features": feature_summary(tr, parent, id_map),
    }
    if lineage is not None:
        meta["parent"] = lineage
    model = state.to_model(meta)
    model.feature_ids = None if id_map is None else id_map.ids
    model.meta["training"]["zero_weights"] = model.count_zeros()
    # let go of the caches now (and of their shared locks: a cache is "in
    # use" while open); on an error the data sets close when collected
    for ds in (tr, va):
        if ds is not None:
            ds.close()
    return model


def _draw_as_dense(out: np.ndarray, rng: np.random.Generator, slot_ids: np.ndarray, n_classes: int,
                   dense_blocks: int, per_feature: int, k: int, scale: np.float32) -> None:
    """Fill `out` (slot blocks, class after class) with the initial factors
    the dense model (dense_blocks blocks per class) would give the slots'
    original ids, then leave `rng` where the dense draws leave it.

    The dense model draws its blocks in order, one float32 per uint32 of
    the PCG64 stream (two per 64-bit output, the low half first), so the
    values of any block are found by advancing a copy of the generator to
    it (PCG64.advance: O(log n)), without drawing the others."""
    start = rng.bit_generator.state
    if start["bit_generator"] != "PCG64" or start["has_uint32"]:
        raise ValueError("the dense draws are reproduced only for a fresh PCG64 generator")
    bg = np.random.PCG64()
    ids = np.asarray(slot_ids, np.int64)
    n = ids.shape[0]
    # runs of consecutive ids in consecutive slots: one jump and one draw each
    breaks = np.flatnonzero(np.diff(ids) != 1) + 1
    runs = list(zip(np.concatenate([[0], breaks]).tolist(), np.concatenate([breaks, [n]]).tolist()))
    for c in range(n_classes):
        for a, z in runs:
            u0 = (c * dense_blocks + int(ids[a]) * per_feature) * k    # first uint32 of the run
            u1 = u0 + (z - a) * per_feature * k
            bg.state = start
            bg.advance(u0 // 2)
            raw = bg.random_raw((u1 - (u0 // 2) * 2 + 1) // 2)
            halves = np.empty(raw.shape[0] * 2, np.uint32)
            halves[0::2] = raw & np.uint64(0xFFFFFFFF)
            halves[1::2] = raw >> np.uint64(32)
            u = halves[u0 % 2 : u0 % 2 + (u1 - u0)]
            values = (u >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / 16777216.0)
            rows = slice(c * n * per_feature + a * per_feature, c * n * per_feature + z * per_feature)
            out[rows, :k] = values.reshape(-1, k) * scale
    # where the dense model's C * dense_blocks * k draws leave the generator
    total = n_classes * dense_blocks * k
    bg.state = start
    bg.advance(total // 2)
    end = bg.state
    if total % 2:
        last = int(bg.random_raw())
        end = {**bg.state, "has_uint32": 1, "uinteger": last >> 32}
    rng.bit_generator.state = end


def plan_id_map(tr: Dataset, parent: Model | None) -> IdMap | None:
    """The id map of a run: None (the kernels see the ids as read) or the
    slots of the ids that occur.

    - no parent: a map when the training ids are sparse in their space
      (fmcli.data.idmap.is_sparse), else none;
    - a parent with a map: its map, with the ids it lacks appended (every id
      of 0 .. largest for dense data);
    - a parent without a map: none (the model keeps the parent's dense
      layout, grown to the new data's largest id)."""
    if parent is not None and parent.feature_ids is None:
        return None
    if parent is not None:
        used = tr.used_ids if tr.used_ids is not None else np.arange(max(tr.max_feature + 1, 0))
        return IdMap(parent.feature_ids).extended(used)
    return IdMap(tr.used_ids) if tr.used_ids is not None else None


def feature_summary(tr: Dataset, parent: Model | None, id_map: IdMap | None) -> dict:
    """The model header's "features": the id space its ids come from, the
    ids its training data used, and whether it stores an id map."""
    parent_space = 0
    if parent is not None:
        parent_space = int((parent.meta.get("features") or {}).get("id_space") or parent.spec.n_features)
    space = max(tr.max_feature + 1, parent_space, id_map.space if id_map is not None else 0)
    return {"id_space": space, "used": tr.n_used if tr.n_used >= 0 else None,
            "id_map": id_map is not None}


def _lineage(parent: Model, path: str) -> dict:
    """The parent model of a warm start: where it was, its hash and its own parent."""
    import hashlib

    from .data.source import reads_once

    h = hashlib.sha256()
    if reads_once(path):
        digest = None      # read once, from a pipe: its bytes are gone
    else:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        digest = h.hexdigest()
    return {"path": os.path.abspath(path), "sha256": digest,
            "created_at": parent.meta.get("created_at"), "parent_sha256": (parent.meta.get("parent") or {}).get("sha256")}


def resume_arguments(directory: str) -> dict:
    """The configuration and run arguments stored in the newest checkpoint
    of `directory` (for ``fm train --resume``)."""
    ck = checkpoint.load_latest(directory)
    return {"config": Config.from_dict(ck.info["config"]), "run": ck.info.get("run") or {}, "path": ck.path,
            # where the run stands: the epoch it is in, and rows of it done
            "epoch": ck.info["epoch"], "rows_done": ck.info.get("rows_done", 0)}


def _new_state(config: Config, n_features: int, n_fields: int, rng: np.random.Generator, task: str,
               classes, say: Callable[[str], None], slot_ids: np.ndarray | None = None, id_space: int = 0):
    """(the training state, the device it lives on: 'cpu' or 'cuda').

    slot_ids: the original ids of a new model of compact ids (n_features
    slots), from `id_space` ids: on the CPU it starts as the dense model would.

    --device cuda / auto import fmcli.gpu (CuPy) here and nowhere else; auto
    falls back to the CPU, saying why, when no device (or kernel build) works."""
    if config.device != "cpu":
        from .errors import DeviceError
        from .gpu.device import resolve

        if resolve(config.device, say) == "cuda":
            from .gpu.state import GpuState

            try:
                return GpuState(config, n_features, n_fields, rng, task, classes), "cuda"
            except DeviceError as exc:
                if config.device != "auto":
                    raise
                say(f"device auto: {exc}; running on the CPU")
    if slot_ids is not None:
        return TrainState(config, id_space, n_fields, rng, task, classes, slot_ids=slot_ids), "cpu"
    return TrainState(config, n_features, n_fields, rng, task, classes), "cpu"


def _validate(state: "TrainState", va: Dataset, va_batch: Batch | None, task: str) -> dict[str, float | None]:
    """The task's metrics on the validation data (scored with every CPU);
    None for a metric the data leave undefined (AUC of one class, anything
    over a total weight of 0)."""
    threads = available_cpus()
    if va_batch is not None:
        return defined(evaluate(task, va_batch.labels, state.scores(va_batch, threads), va_batch.weights))
    scores, labels, weights = [], [], []
    for _, batch, _ in va.chunks():
        scores.append(state.scores(batch, threads))
        labels.append(np.array(batch.labels))
        weights.append(batch.weights if batch.weights is not None else np.ones(batch.n_rows, np.float32))
    return defined(evaluate(task, np.concatenate(labels), np.concatenate(scores),
                            np.concatenate(weights) if va.has_weights else None))


def _check_stopping_metric(va: Dataset, task: str, metric: str) -> None:
    """Refuse, before the first epoch, to stop early on a metric that the
    validation data leave undefined (one class for AUC, no weight at all)."""
    weighted = va.has_weights
    if not weighted:
        totals = list(va.label_counts) if task == "binary" else [va.n_rows]
    else:
        totals = np.zeros(2 if task == "binary" else 1)
        for _, batch, _ in va.chunks():
            w = np.asarray(batch.weights if batch.weights is not None else np.ones(batch.n_rows), np.float64)
            if task == "binary":
                positive = batch.labels > 0
                totals += (w[~positive].sum(), w[positive].sum())
            else:
                totals += w.sum()
    reason = why_undefined(metric, task, totals, weighted)
    if reason is None:
        return
    hint = ("choose another --early-stopping-metric" if sum(totals) > 0
            else "give its rows a positive weight, or train without --patience/--auto-stop")
    raise ConfigError(f"-p {va.name} {reason}: {METRIC_NAMES[metric]} is undefined, so it cannot "
                      f"select the epoch for early stopping; {hint}")


_STATE_SLOTS = {"sgd": [], "adagrad": ["G"], "adam": ["m", "v"], "ftrl": ["z", "n"], "rowwise-adagrad": ["G"]}


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


class _CallableModule(__import__("types").ModuleType):
    """``fmcli.train`` is the function even when this submodule was imported
    first (importing a submodule binds it as an attribute of the package)."""

    def __call__(self, *args, **kwargs):
        return train(*args, **kwargs)


__import__("sys").modules[__name__].__class__ = _CallableModule
