"""GpuState: training state on a CUDA device, the GPU implementation of
fmcli.backend.Backend (fmcli.backend.make_backend picks it or the CPU's).

The arrays are the CPU's layout (B, L, F, R with optimizer state interleaved
per block, classes stacked), held in device memory; initialisation runs on
the host with the same random draws, so a run on either device starts from
the same weights and shuffles rows in the same order.

Batch size 1 trains per row with fm_train_rows (Hogwild across warps, like
the CPU's threads).  A device keeps thousands of rows in flight
(backend.rows_in_flight), and a weight that most of them carry would keep
only one of their writes; so, as the CPU trains its hot features on
per-thread replicas, prepare() picks the hot features (each carried on
average by at least HOT_MIN_IN_FLIGHT of the rows in flight, or the
--hot-features most frequent) and per-row training runs in waves of
rows_in_flight rows: the rows step every other weight in place and add
the gradients of the bias, of the pair parameters (FwFM's field-pair
weights, FmFM's field matrices: every row carries them too) and of the hot
features to accumulators, and after the wave fm_hot_apply steps each of
those once with the sum of the rows' steps (fm_device.cu).  A run's first
waves are shorter (HOT_RAMP_ROWS, then as many rows as were trained
before), so that the large, alike gradients of the initial weights are not
summed thousands at a time.  Two launches per wave, no host round trip.

Batch size b > 1 is the exact mode: per mini-batch
fm_batch_grad writes every row's gradient contributions into planned slots,
the host sorts them by parameter block (on the device), and the apply
kernels step each touched block once with the batch's mean gradient, as
the CPU core's mini-batch mode does (fmcli/_core/_kernels.pyx); the result
is deterministic.  A training set that stays the same Batch between epochs
stays on the device.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from ..errors import DeviceError
from ..model import Model, padded_k
from ..params import HostParams
from ..registry import kind as model_kind
from . import plan
from .layout import OPTIMIZERS as GPU_OPTIMIZERS, ROW_BAD, ROW_SKIPPED, hyper_array, shape_array

from .plan import (HOT_BYTES, HOT_MIN_IN_FLIGHT, HOT_OPTIMIZERS, HOT_RAMP_ROWS, ROWS_PER_LAUNCH,
                   SCRATCH_BUDGET, hot_layout)

BATCHES_PER_SUMMARY = 256          # exact mode: batches between reductions of the row statistics


def default_backend():
    from .device import CupyBackend

    return CupyBackend()


class _Resident:
    """Device copies of the last few host objects used (Batches, weight
    arrays), found by identity; the host object is kept alive with its copy.
    Training passes the same objects slice after slice and epoch after epoch."""

    def __init__(self, upload, keep: int = 2):
        self.upload, self.keep, self.items = upload, keep, []

    def get(self, obj):
        for i, (o, dev) in enumerate(self.items):
            if o is obj:
                self.items.append(self.items.pop(i))
                return dev
        dev = self.upload(obj)
        self.items.append((obj, dev))
        del self.items[: -self.keep]
        return dev


class GpuState:
    """Parameters and optimizer state on the device (see the module docstring)."""

    device = "cuda"
    compact_rows = False    # the kernels read int32 fields and explicit values
    total_steps = 1

    def __init__(self, cfg, n_features: int, n_fields: int, rng: np.random.Generator,
                 task: str = "binary", classes: list[str] | None = None, *, backend=None,
                 need: int | None = None):
        """need: the device memory the whole run takes (fmcli.gpu.plan.device_memory's
        total; default: the parameters and optimizer state alone), checked
        against the device's free memory before anything is allocated."""
        if cfg.optimizer not in GPU_OPTIMIZERS:
            raise DeviceError(f"the GPU kernels have no {cfg.optimizer} optimizer")
        self.backend = backend if backend is not None else default_backend()
        xp = self.xp = self.backend.xp
        self.dtype = np.dtype(cfg.dtype)
        # Compile and check the memory before the host initialisation draws
        # from rng: after a DeviceError the CPU can take over unchanged.
        self.kernels = self.backend.module(self.dtype, padded_k(cfg.k))
        C = len(classes) if task == "multiclass" else 1
        model = HostParams.bytes_needed(cfg.replace(batch_size=1), n_features, n_fields, C)
        free = self.backend.free_memory()
        if free is not None and max(model, need or 0) > free:
            what = ("the model needs" if not need else
                    "the run needs (parameters, optimizer state, resident data, scratch)")
            raise DeviceError(f"{what} {max(model, need or 0) / 2**30:.2f} GiB of device memory and "
                              f"{self.backend.describe()} has {free / 2**30:.2f} GiB free")
        host = HostParams(cfg, n_features, n_fields, rng, task, classes)
        self.cfg, self.spec, self.n_classes = host.cfg, host.spec, host.n_classes
        self.ns, self.kp = host.ns, host.kp
        self._shapes = tuple(a.shape for a in host.arrays())
        self.B, self.L, self.F, self.R = (xp.asarray(np.ascontiguousarray(a).reshape(-1))
                                          for a in host.arrays())
        del host
        s = self.spec
        self.sh = xp.asarray(shape_array(
            s.kind, s.task, cfg.optimizer, cfg.lr_schedule, self.n_classes, s.n_features,
            s.n_fields, self.kp, self.ns, use_bias=s.use_bias, use_linear=s.use_linear,
            normalize=s.normalize, skip_nonfinite=cfg.on_nonfinite == "skip"))
        self.hp = xp.asarray(hyper_array(cfg))
        self.n_ids = int(self.backend.asnumpy(self.sh)[-1])
        self._rows = _Resident(lambda batch: plan.pack_rows(xp, batch))
        self._weights = _Resident(lambda w: xp.asarray(np.ascontiguousarray(w, dtype=np.float32)))
        self._dummy = {np.dtype(t): xp.zeros(4, t) for t in (np.float32, np.float64, np.int32, np.int64)}
        self.launches: Counter = Counter()   # kernel launches of this state, by kernel
        self.hot_ids: np.ndarray | None = None   # the hot features (prepare); None: no hot accumulation

    # -- the Backend interface ------------------------------------------------
    def device_arrays(self) -> tuple:
        """B, L, F, R on the device (flat)."""
        return self.B, self.L, self.F, self.R

    def arrays(self) -> tuple[np.ndarray, ...]:
        """Host copies of B, L, F, R in HostParams' shapes (for checkpoints)."""
        return tuple(self.backend.asnumpy(a).reshape(shape)
                     for a, shape in zip(self.device_arrays(), self._shapes))

    def snapshot(self, into=None) -> tuple[np.ndarray, ...]:
        # the host copies are new arrays in any case: `into` is not reused
        return self.arrays()

    def export_state(self) -> tuple[np.ndarray, ...]:
        return self.arrays()

    def prepare(self, batch) -> str | None:
        """Called once with the first batch trained on: in per-row mode with
        rows in flight, pick the hot features and turn hot accumulation on
        (see the module docstring).  Returns what to tell the user, or None."""
        self.hot_ids = None
        cfg, s = self.cfg, self.spec
        wave = int(getattr(self.backend, "rows_in_flight", 1))
        if cfg.batch_size != 1 or cfg.optimizer not in HOT_OPTIMIZERS or cfg.hot_features == 0 or wave < 2:
            return None
        counts = feature_counts(batch, s.n_features)
        per = self.hot_bytes_per_feature()
        if cfg.hot_features is None:
            want = int((counts * wave >= HOT_MIN_IN_FLIGHT * max(batch.n_rows, 1)).sum())
            want = min(want, HOT_BYTES // per)
        else:
            want = cfg.hot_features
        want = min(want, int(np.count_nonzero(counts)))
        pairs = {"scalar": "the field-pair weights",
                 "matrix": "the field matrices"}.get(model_kind(s.kind).pairs)
        if want <= 0 and not s.use_bias and not pairs:
            return None
        top = np.sort(np.argpartition(-counts, want - 1)[:want]) if want > 0 else np.zeros(0, np.int64)
        self._use_hot(top)
        parts = [p for p in ("the bias" if s.use_bias else "", pairs or "",
                             "the most frequent feature" if want == 1 else
                             f"the {want:,} most frequent features" if want else "") if p]
        one = len(parts) == 1 and not pairs and want <= 1
        if len(parts) > 2:
            parts = [", ".join(parts[:-1]), parts[-1]]
        return (f"{wave:,} rows in flight: {' and '.join(parts)} step{'s' if one else ''} once per wave "
                "of rows, with the sum of the rows' steps (--hot-features)")

    def hot_bytes_per_feature(self) -> int:
        """Device memory of one hot feature's accumulators."""
        per = hot_layout(self.spec.kind, self.spec.n_fields, self.kp, 1)[0]
        return per * self.n_classes * self.dtype.itemsize

    def _use_hot(self, ids) -> None:
        """Accumulate the bias's, the pair parameters' and the features `ids`'
        gradients (sorted ids)."""
        xp, s, C = self.xp, self.spec, self.n_classes
        ids = np.asarray(ids, np.int32)
        slot = np.full(max(1, s.n_features), -1, np.int32)
        slot[ids] = np.arange(len(ids), dtype=np.int32)
        _, scalars, vectors = hot_layout(s.kind, s.n_fields, self.kp, len(ids))
        self.hot_ids = ids
        self._hot = (xp.asarray(slot), self._arg(xp.asarray(ids), np.int32),
                     xp.zeros(C * scalars, self.dtype), xp.zeros(max(4, C * vectors), self.dtype))

    def restore(self, snap) -> None:
        """Set the parameters from arrays shaped like arrays()' (host or device)."""
        for a, saved in zip(self.device_arrays(), snap):
            a[...] = self.xp.asarray(saved).reshape(-1).astype(a.dtype, copy=False)

    def all_finite(self) -> bool:
        xp = self.xp
        return all(bool(xp.isfinite(a).all()) for a in self.device_arrays())

    def warm_start(self, parent: Model, path: str, say) -> int:
        """HostParams.warm_start, applied on the host and copied back."""
        host = self._host_state()
        steps = host.warm_start(parent, path, say)
        self.restore(host.arrays())
        return steps

    def scores(self, batch, threads: int = 1) -> np.ndarray:
        """Raw scores: (n,) for one class, (n, C) for multiclass."""
        rows = self._rows.get(batch)
        return _score(self, rows, self.sh, self._params(), self.kernels, self.spec.task == "multiclass")

    def train_slice(self, batch, order: np.ndarray, weights: np.ndarray | None,
                    step0: int) -> tuple[float, float, int, int]:
        """One pass over `order` (see fmcli.backend.Backend.train_slice):
        (weighted loss sum, weight sum, rows skipped, position of the row
        that stopped the epoch or -1)."""
        xp = self.xp
        n = int(len(order))
        if n == 0:
            return 0.0, 0.0, 0, -1
        rows = self._rows.get(batch)
        order_d = xp.asarray(np.ascontiguousarray(order, dtype=np.int64))
        has_w = weights is not None
        w_d = self._weights.get(weights) if has_w else self._arg(None, np.float32)
        common = (rows, order_d, w_d, np.int32(has_w), n, float(step0), float(self.total_steps))
        if self.cfg.batch_size == 1:
            parts = self._per_row(*common)
        else:
            parts = self._exact(*common)
        return _collect(self.backend.asnumpy(xp.stack(parts)))

    def to_model(self, meta: dict) -> Model:
        return self._host_state().to_model(meta)

    def _host_state(self) -> HostParams:
        """A HostParams holding host copies of the parameters."""
        return HostParams.from_arrays(self.cfg, self.spec, self.arrays())

    # -- internals ------------------------------------------------------------
    def _arg(self, a, dtype):
        """A kernel argument: the array, or a small dummy for an empty one."""
        return a if a is not None and a.size else self._dummy[np.dtype(dtype)]

    def _params(self):
        d = self.dtype
        return tuple(self._arg(a, d) for a in (self.B, self.L, self.F, self.R))

    def _launch(self, n_rows: int, max_warps: int | None = None) -> plan.Launch:
        b = self.backend
        return plan.row_launch(n_rows, b.sm_count, warps_per_block=b.warps_per_block,
                               blocks_per_sm=b.blocks_per_sm, max_warps=max_warps)

    def _stats(self, status, rloss, rweight, pos0: int):
        """(loss, weight, skipped, first bad position or -1) of one launch, on the device."""
        xp = self.xp
        pos = xp.arange(pos0, pos0 + status.shape[0], dtype=np.float64)
        bad = xp.where(status == ROW_BAD, pos, np.inf).min()
        return xp.stack([rloss.sum(), rweight.sum(), (status == ROW_SKIPPED).sum().astype(np.float64), bad])

    def _per_row(self, rows, order, w, has_w, n, step0, total):
        xp, s = self.xp, self.spec
        C = self.n_classes
        scratch_len = plan.row_scratch_len(s.kind, self.kp, rows.max_nnz)
        max_warps = None
        if scratch_len:
            max_warps = max(1, SCRATCH_BUDGET // (scratch_len * self.dtype.itemsize))
        hot = self.hot_ids is not None
        # with hot accumulation a launch is one wave: the rows in flight
        span = max(1, int(self.backend.rows_in_flight)) if hot else ROWS_PER_LAUNCH
        geo = self._launch(min(n, span), max_warps)
        tbuf = xp.zeros(geo.warps * 2 * C, np.float64)
        scratch = xp.zeros(max(4, geo.warps * scratch_len), self.dtype)
        stop = xp.zeros(1, np.int32)
        if hot:
            slot, ids, hs, hv = self._hot
            hot_args = (np.int32(1), slot, np.int64(len(self.hot_ids)), hs, hv)
            # grid-stride over the items: any grid covers them; this one a lane group per vector item
            n_vec = hv.shape[0] // (2 * self.kp + 4)
            geo_h = plan.item_launch(max(1, n_vec), plan.vector_items_per_warp(self.kp), self.backend.sm_count)
        else:
            i32, d = self._dummy[np.dtype(np.int32)], self._dummy[self.dtype]
            hot_args = (np.int32(0), i32, np.int64(0), d, d)
        parts = []
        for pos0 in range(0, n, ROWS_PER_LAUNCH):
            cnt = min(ROWS_PER_LAUNCH, n - pos0)
            status = xp.zeros(cnt, np.int8)
            rloss = xp.zeros(cnt, np.float64)
            rweight = xp.zeros(cnt, np.float64)
            w0 = 0
            while w0 < cnt:
                # a run's first waves are no longer than the rows trained before
                # them (from HOT_RAMP_ROWS on): early gradients are large and
                # alike, and thousands of them summed at the initial weights
                # would overshoot
                done = int(step0) + pos0 + w0
                wn = min(span, cnt - w0, max(HOT_RAMP_ROWS, done) if hot else span)
                self._go("fm_train_rows", geo, (
                    self.sh, self.hp, *self._params(), rows.indptr, rows.fields, rows.features,
                    rows.values, rows.labels, w, has_w, order, np.int64(pos0 + w0), np.int64(wn),
                    np.float64(step0), np.float64(total), status[w0:], rloss[w0:], rweight[w0:], stop,
                    tbuf, scratch, np.int64(scratch_len), *hot_args))
                if hot:
                    self._go("fm_hot_apply", geo_h, (self.sh, self.hp, *self._params(), ids,
                                                     np.int64(len(self.hot_ids)), hs, hv,
                                                     np.float64(step0 + pos0 + w0), np.float64(total)))
                w0 += wn
            parts.append(self._stats(status, rloss, rweight, pos0))
        return parts

    def _go(self, name: str, geo: plan.Launch, args) -> None:
        """Launch kernel `name` on geo's grid (counted in self.launches)."""
        self.launches[name] += 1
        self.kernels[name]((geo.grid,), (geo.block,), args)

    def _exact(self, rows, order, w, has_w, n, step0, total):
        xp, s, b = self.xp, self.spec, self.cfg.batch_size
        C, kp = self.n_classes, self.kp
        pl = plan.exact_plan(xp, self.backend.asnumpy, rows.indptr, order, b, s.kind, C,
                             s.use_bias, s.use_linear, kp)
        sgid = xp.zeros(max(4, pl.max_scalar), np.int64)
        sval = xp.zeros(max(4, pl.max_scalar), self.dtype)
        vgid = xp.zeros(max(4, pl.max_vector), np.int64)
        vval = xp.zeros(max(4, pl.max_vector) * kp, self.dtype)
        geo = self._launch(b)
        tbuf = xp.zeros(geo.warps * 2 * C, np.float64)
        stop = xp.zeros(1, np.int32)
        counts = xp.zeros(pl.n_batches, np.int32)
        bads = xp.zeros(pl.n_batches, np.int32)
        B, L, F, R = self._params()
        sm, ipw = self.backend.sm_count, plan.vector_items_per_warp(kp)
        parts = []
        for g0 in range(0, pl.n_batches, BATCHES_PER_SUMMARY):
            g1 = min(g0 + BATCHES_PER_SUMMARY, pl.n_batches)
            first, last = int(pl.bounds[g0]), int(pl.bounds[g1])
            status = xp.zeros(last - first, np.int8)
            rloss = xp.zeros(last - first, np.float64)
            rweight = xp.zeros(last - first, np.float64)
            for bi in range(g0, g1):
                pos0, cnt = int(pl.bounds[bi]), int(pl.bounds[bi + 1] - pl.bounds[bi])
                at = pos0 - first
                self._go("fm_batch_grad", geo, (
                    self.sh, self.hp, B, L, F, R, rows.indptr, rows.fields, rows.features,
                    rows.values, rows.labels, w, has_w, order, np.int64(pos0), np.int64(cnt),
                    pl.sofs, pl.vofs, sgid, sval, vgid, vval, status[at:], rloss[at:],
                    rweight[at:], stop, counts[bi:], bads[bi:], tbuf))
                t = np.float64(step0 + bi)
                nv, ns = pl.vector_slots(bi), pl.scalar_slots(bi)
                if nv:
                    perm, sg = plan.sort_contributions(xp, vgid[:nv], self.n_ids)
                    geo_v = plan.item_launch(nv, ipw, sm)
                    self._go("fm_batch_apply_vec", geo_v, (
                        self.sh, self.hp, F, R, sg, perm, np.int64(nv), vval, counts[bi:], bads[bi:],
                        stop, t, np.float64(total)))
                if ns:
                    perm, sg = plan.sort_contributions(xp, sgid[:ns], self.n_ids)
                else:
                    perm = sg = self._dummy[np.dtype(np.int64)]
                # launched even without slots: it is what stops the epoch after a bad row
                geo_s = plan.item_launch(ns, 32, sm)
                self._go("fm_batch_apply_scalar", geo_s, (
                    self.sh, self.hp, B, L, R, sg, perm, np.int64(ns), sval, counts[bi:], bads[bi:],
                    stop, t, np.float64(total)))
            parts.append(self._stats(status, rloss, rweight, first))
        return parts


def feature_counts(batch, n_features: int) -> np.ndarray:
    """How many entries of batch carry each feature id < n_features."""
    counts = np.zeros(max(1, n_features), np.int64)
    step = 1 << 20   # in slices: bincount widens its input to int64
    for i in range(0, len(batch.features), step):
        part = batch.features[i : i + step]
        counts += np.bincount(part[part < n_features], minlength=len(counts))[: len(counts)]
    return counts


def _collect(stats: np.ndarray) -> tuple[float, float, int, int]:
    stats = np.asarray(stats, np.float64).reshape(-1, 4)
    first = float(stats[:, 3].min()) if len(stats) else np.inf
    return (float(stats[:, 0].sum()), float(stats[:, 1].sum()), int(stats[:, 2].sum()),
            int(first) if np.isfinite(first) else -1)


def _score(owner, rows: plan.DeviceRows, sh, params, kernels, multiclass: bool) -> np.ndarray:
    xp = owner.xp
    n, C = rows.n_rows, int(owner.n_classes)
    out = xp.zeros(max(1, n * C), np.float64)
    if n:
        geo = owner._launch(n)
        kernels["fm_score_rows"]((geo.grid,), (geo.block,), (
            sh, *params, rows.indptr, rows.fields, rows.features, rows.values, np.int64(n), out))
    host = owner.backend.asnumpy(out)[: n * C].astype(np.float64, copy=False)
    return host.reshape(-1, C) if multiclass else host


class GpuScorer:
    """Scores batches with a loaded model on the device (fmcli.predict.Scorer's interface)."""

    def __init__(self, model: Model, *, backend=None):
        self.backend = backend if backend is not None else default_backend()
        self.model = model
        xp = self.xp = self.backend.xp
        s = model.spec
        bias, linear, factors, pairs, kp = model.kernel_arrays()
        self.kp, self.n_classes = kp, s.n_classes
        self._dummy = {np.dtype(np.float32): xp.zeros(4, np.float32)}
        self.params = tuple(xp.asarray(a) if a.size else self._dummy[np.dtype(np.float32)]
                            for a in (bias, linear, factors, pairs))
        self.sh = xp.asarray(shape_array(
            s.kind, s.task, "sgd", "constant", s.n_classes, s.n_features, s.n_fields, kp, 0,
            use_bias=s.use_bias, use_linear=s.use_linear, normalize=s.normalize))
        self.kernels = self.backend.module(np.float32, kp)

    def _launch(self, n_rows: int) -> plan.Launch:
        b = self.backend
        return plan.row_launch(n_rows, b.sm_count, warps_per_block=b.warps_per_block,
                               blocks_per_sm=b.blocks_per_sm)

    def scores(self, batch) -> np.ndarray:
        """Raw scores of a batch: (n,), or (n, C) for a multiclass model."""
        rows = plan.pack_rows(self.xp, batch)
        return _score(self, rows, self.sh, self.params, self.kernels, self.model.spec.task == "multiclass")

