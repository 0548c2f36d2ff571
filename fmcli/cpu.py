"""The CPU backend: the compiled core (fmcli/_core) trains the host layout in place."""

from __future__ import annotations

import numpy as np

from ._core import _kernels
from .config import MAX_HOT_FEATURES, Config
from .data.batch import Batch
from .errors import ConfigError
from .params import HostParams
from .registry import hot_features_apply

# Hot-feature replicas (multi-threaded FFM, see fmcli/_core/hot.h): a thread's
# replica takes at most HOT_BYTES of features on at least HOT_MIN_SHARE of the
# rows.  By default they are used on data of HOT_MIN_ROWS or more: their
# staleness costs accuracy where a few hundred rows are a sizeable share of an
# epoch, and the contention they avoid matters on long runs.  The replica need
# not fit a core's cache: the next row's features are prefetched from where
# the thread keeps them.  BENCH.md's data, k=4, 2 threads, in one process
# (benchmarks/scaling.py, slices of 131,072 rows taking turns): 6,332
# features (8 MiB, on 0.02% of the rows or more) trained 1.11x and 10,326
# 1.10x as fast as 840 (a 1 MiB budget, 0.2% of the rows), slice by slice,
# to the same validation logloss to 0.01%.
HOT_BYTES = 8 << 20
HOT_MIN_SHARE = 0.0002
HOT_MIN_ROWS = 100_000
# The replicas are exchanged in tiers: features on HOT_SYNC_SHARE or more of
# the rows every HOT_SYNC_ROWS of the thread's rows, those on a
# HOT_SYNC_STEP-th of that share every HOT_SYNC_STEP times as many rows, and so
# on (at most HOT_SYNC_TIERS tiers): between two exchanges of a feature below
# the first tier a thread trains fewer than HOT_SYNC_ROWS x HOT_SYNC_SHARE x
# HOT_SYNC_STEP (64) rows that carry it, while the bytes exchanged per row are a
# fraction of what one interval for all would cost (BENCH.md's data, 2
# threads, in one process (benchmarks/scaling.py): 1.6x one thread with 420
# features every 256 rows, 1.8x with 1,680 in these tiers, the same
# validation logloss to 0.01%; whole runs 1.52x -> 1.73x).
HOT_SYNC_ROWS = 256
HOT_SYNC_SHARE = 0.0625
HOT_SYNC_STEP = 4
HOT_SYNC_TIERS = 6


def hot_intervals(share: np.ndarray) -> np.ndarray:
    """The exchange interval in rows of replicated features on `share` of the
    rows each: HOT_SYNC_ROWS for a share of HOT_SYNC_SHARE or more, times
    HOT_SYNC_STEP for each further HOT_SYNC_STEP-th of it (up to the last of
    HOT_SYNC_TIERS tiers)."""
    share = np.maximum(np.asarray(share, np.float64), 1e-12)
    tier = np.zeros(share.shape, np.int64)
    for t in range(1, HOT_SYNC_TIERS):
        tier += share < HOT_SYNC_SHARE / HOT_SYNC_STEP ** (t - 1)
    return HOT_SYNC_ROWS * np.power(HOT_SYNC_STEP, tier, dtype=np.int64)


HOT_SAMPLE_ROWS = 1 << 16
HOT_SAMPLE_SPANS = 16


def feature_counts(batch: Batch, n: int) -> tuple[np.ndarray, int]:
    """(how many entries of each of the n features, rows counted): of every
    row of batch, or on larger batches of HOT_SAMPLE_SPANS evenly spread runs
    of rows, HOT_SAMPLE_ROWS in all (counting every row of 1,000,000 took
    0.1 s, 4% of a two-thread epoch, the sample 0.008 s; the hot features
    are the frequent ones, which a sample finds as well: 1,641 of the 1,680
    chosen on BENCH.md's data are those that counting every row chooses)."""
    spans = [(0, batch.n_rows)]
    if batch.n_rows > HOT_SAMPLE_ROWS:
        each = HOT_SAMPLE_ROWS // HOT_SAMPLE_SPANS
        gap = batch.n_rows // HOT_SAMPLE_SPANS
        spans = [(j * gap, j * gap + each) for j in range(HOT_SAMPLE_SPANS)]
    counts = np.zeros(n, np.int64)
    step = 1 << 20   # in slices: bincount widens its input to int64
    parts = [batch.features[int(batch.indptr[lo]) : int(batch.indptr[hi])] for lo, hi in spans]
    feats = parts[0] if len(parts) == 1 else np.concatenate(parts)
    for i in range(0, len(feats), step):
        part = feats[i : i + step]
        counts += np.bincount(part[part < n], minlength=n)[:n]
    return counts, sum(hi - lo for lo, hi in spans)


def _settled(name: str) -> property:
    """A parameter array of CpuBackend, read once the kernels' trainer has
    folded what its per-thread replicas still hold into it (see Trainer.settle)."""
    key = "_" + name

    def get(self) -> np.ndarray:
        trainer = self._trainer
        if trainer is not None and trainer.unsettled:
            trainer.settle()
        return self.__dict__[key]

    def put(self, value: np.ndarray) -> None:
        self.__dict__[key] = value

    return property(get, put, doc=f"{name}, with every thread's changes in it")


class CpuBackend(HostParams):
    """Parameters in host memory, trained and scored by fmcli._core._kernels
    (the fmcli.backend.Backend interface).

    With several threads the trainer's replicas of the hot features keep
    their changes between train_slice calls, to be exchanged at their own
    intervals (fmcli/_core/hot.h); any read of the arrays (B, L, F, R, and
    all that goes through them) first folds those changes in."""

    B = _settled("B")
    L = _settled("L")
    F = _settled("F")
    R = _settled("R")

    device = "cpu"
    compact_rows = True     # the kernels read compact batches (uint8 fields, no all-1 values)
    hot: np.ndarray | None = None   # features trained on per-thread replicas (see prepare)
    hot_sync: np.ndarray | None = None   # each one's exchange interval in rows (None: HOT_SYNC_ROWS)
    total_steps = 1

    @property
    def simd(self) -> str:
        """The SIMD level of the kernels' float32 loops (recorded in the model's
        training metadata: single-thread results are reproducible per level)."""
        return _kernels.simd()

    def replicable(self) -> bool:
        """Whether the kernels can train hot features on per-thread replicas."""
        return hot_features_apply(self.cfg, self.n_classes)

    def prepare(self, batch: Batch) -> str | None:
        """Called once with the first batch trained on: pick the features that
        every thread would otherwise keep writing, the --hot-features most
        frequent in batch (auto: on a batch of HOT_MIN_ROWS or more, as many
        as fit HOT_BYTES per thread, each on at least HOT_MIN_SHARE of the
        rows), counted on HOT_SAMPLE_ROWS of its rows at most (see
        feature_counts).  Returns what to tell the user, or None."""
        want = self.cfg.hot_features
        if want and self.n_classes > 1:
            raise ConfigError("--hot-features applies to the binary and regression tasks, not multiclass")
        self.hot = self.hot_sync = None
        if (not self.replicable() or want == 0 or batch.n_rows == 0
                or (want is None and batch.n_rows < HOT_MIN_ROWS)):
            return None
        n = self.spec.n_features
        # a feature's blocks (FFM's one per field, the others' one) and its linear weight
        per_feature = self.F.shape[1] * self.F.itemsize * (self.F.shape[0] // max(n, 1))
        if self.spec.use_linear:
            per_feature += self.L.shape[1] * self.L.itemsize
        counts, rows = feature_counts(batch, n)
        if want is None:
            want = min(HOT_BYTES // per_feature, int((counts >= HOT_MIN_SHARE * rows).sum()))
        want = min(want, int(np.count_nonzero(counts)), MAX_HOT_FEATURES)
        if want <= 0:
            return None
        top = np.sort(np.argpartition(-counts, want - 1)[:want])
        self.hot = top.astype(np.int32)
        self.hot_sync = hot_intervals(counts[top] / rows)
        return (f"{self.cfg.threads} threads: the {len(self.hot)} most frequent features "
                "train on per-thread replicas (--hot-features)")

    _layout = None
    _trainer = None

    @property
    def layout(self):
        """The kernels' description of this layout (built once)."""
        if self._layout is None:
            s = self.spec
            self._layout = _kernels.Layout(
                s.kind, s.task, self.n_classes, s.n_features, s.n_fields, self.kp, self.ns,
                use_bias=s.use_bias, use_linear=s.use_linear, normalize=s.normalize,
                half=self.half, row_state=self.rowwise)
        return self._layout

    def scores(self, batch: Batch, threads: int) -> np.ndarray:
        """Raw scores: (n,) for one class, (n, C) for multiclass."""
        out = np.empty(batch.n_rows * self.n_classes, np.float64)
        _kernels.score_rows(self.layout, *self.flat(), batch.indptr, batch.fields, batch.features,
                            batch.values, out, threads)
        return out.reshape(-1, self.n_classes) if self.spec.task == "multiclass" else out

    def train_slice(self, batch: Batch, order: np.ndarray, weights: np.ndarray | None,
                    step0: int) -> tuple[float, float, int, int]:
        """One pass over the rows `order` of batch: (weighted loss sum, weight
        sum, rows skipped, position in `order` of the row that stopped the
        pass or -1).  The kernels' Trainer is built on the first call (after
        prepare() chose the hot features) and trains the arrays in place."""
        if self._trainer is None:
            self._trainer = _kernels.Trainer(self.layout, *self.flat(), kernel_hyper(self.cfg, self.total_steps),
                                             self.cfg.threads, self.hot,
                                             HOT_SYNC_ROWS if self.hot_sync is None else self.hot_sync,
                                             copies=self.cfg.hot_features != 0)
            self._trainer.settle_passes = False
        self._trainer.total_steps = self.total_steps
        w = np.zeros(0, np.float32) if weights is None else weights
        return self._trainer.train(batch.indptr, batch.fields, batch.features, batch.values, batch.labels,
                                   w, order, step0)

    def export_state(self) -> tuple[np.ndarray, ...]:
        """B, L, F, R as they are (for checkpoints): the arrays themselves."""
        return self.arrays()


def kernel_hyper(c: Config, total_steps: int) -> dict:
    """The hyperparameters of a run as the kernels' Trainer takes them."""
    return dict(optimizer=c.optimizer, eta=c.step_size, k=c.k,
                l2_bias=c.l2_of("bias"), l2_linear=c.l2_of("linear"), l2_factors=c.l2_of("factors"),
                l1=c.l1, beta1=c.adam_beta1, beta2=c.adam_beta2, adam_eps=c.adam_eps,
                ftrl_beta=c.ftrl_beta, label_smoothing=c.label_smoothing, clip_norm=c.clip_norm,
                schedule=c.lr_schedule, warmup=c.warmup_steps, total_steps=total_steps,
                batch_size=c.batch_size, exact_rsqrt=c.exact_adagrad,
                skip_nonfinite=c.on_nonfinite == "skip")


def new_cpu_backend(cfg: Config, n_features: int, n_fields: int, rng: np.random.Generator, task: str,
                    classes, slot_ids: np.ndarray | None = None, id_space: int = 0) -> CpuBackend:
    if slot_ids is not None:
        return CpuBackend(cfg, id_space, n_fields, rng, task, classes, slot_ids=slot_ids)
    return CpuBackend(cfg, n_features, n_fields, rng, task, classes)
