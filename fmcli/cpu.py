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
# replica takes at most HOT_BYTES, of features on at least HOT_MIN_SHARE of the
# rows, exchanged with the shared model every HOT_SYNC_ROWS of its rows.  By
# default they are used on data of HOT_MIN_ROWS or more: their staleness costs
# accuracy where a few hundred rows are a sizeable share of an epoch, and the
# contention they avoid matters on long runs.
HOT_BYTES = 1 << 19
HOT_MIN_SHARE = 0.002
HOT_MIN_ROWS = 100_000
HOT_SYNC_ROWS = 256


class CpuBackend(HostParams):
    """Parameters in host memory, trained and scored by fmcli._core._kernels
    (the fmcli.backend.Backend interface)."""

    device = "cpu"
    compact_rows = True     # the kernels read compact batches (uint8 fields, no all-1 values)
    hot: np.ndarray | None = None   # features trained on per-thread replicas (see prepare)
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
        rows).  Returns what to tell the user, or None."""
        want = self.cfg.hot_features
        if want and self.n_classes > 1:
            raise ConfigError("--hot-features applies to the binary and regression tasks, not multiclass")
        self.hot = None
        if (not self.replicable() or want == 0 or batch.n_rows == 0
                or (want is None and batch.n_rows < HOT_MIN_ROWS)):
            return None
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
            return None
        top = np.argpartition(-counts, want - 1)[:want]
        self.hot = np.sort(top).astype(np.int32)
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
                                             self.cfg.threads, self.hot, HOT_SYNC_ROWS)
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
