"""Host-side plans of the GPU backend: rows packed for the device, launch
geometry, the exact (mini-batch) mode's contribution slots and sort, and
the device memory a run takes (device_memory: arithmetic, no device).

Everything takes an array module ``xp`` (CuPy, or NumPy for tests and for
the CPU emulation of the kernels) and never synchronises with the device
more than once per call.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..registry import kind as model_kind
from .layout import group_size

WARP = 32

# Per-row mode (fmcli/gpu/state.py), here for the memory plan as well
ROWS_PER_LAUNCH = 1 << 21          # positions per kernel launch (without hot accumulation)
SCRATCH_BUDGET = 256 << 20         # bytes of per-warp scratch (FwFM and FmFM)
HOT_MIN_IN_FLIGHT = 1.0            # hot: carried by this many of the rows in flight, on average
HOT_BYTES = 64 << 20               # at most this much device memory of hot accumulators (auto)
HOT_SCALAR = 4                     # accumulator values per scalar item (FM_HOT_SCALAR)
HOT_RAMP_ROWS = 32                 # the shortest wave at a run's start (GpuState._per_row)
HOT_OPTIMIZERS = ("sgd", "adagrad", "ftrl")   # whose steps add up (not Adam's moving averages)


@dataclass(frozen=True)
class Launch:
    grid: int    # blocks
    block: int   # threads per block (a multiple of 32)

    @property
    def warps(self) -> int:
        return self.grid * self.block // WARP


def row_launch(n_rows: int, sm_count: int, *, warps_per_block: int = 4, blocks_per_sm: int = 8,
               max_warps: int | None = None) -> Launch:
    """A warp per row, grid-stride: enough warps to fill the device (or all
    rows, or max_warps when each warp needs scratch memory), never zero."""
    warps = min(max(int(n_rows), 1), max(1, sm_count) * blocks_per_sm * warps_per_block)
    if max_warps is not None:
        warps = max(1, min(warps, int(max_warps)))
    per_block = min(warps_per_block, warps)
    return Launch(-(-warps // per_block), WARP * per_block)


def item_launch(n_items: int, items_per_warp: int, sm_count: int, *, warps_per_block: int = 4,
                blocks_per_sm: int = 32) -> Launch:
    """Warps for n_items items, items_per_warp to a warp (grid-stride beyond
    what the device holds at once), never zero."""
    warps = max(1, -(-int(n_items) // items_per_warp))
    warps = min(warps, max(1, sm_count) * blocks_per_sm * warps_per_block)
    per_block = min(warps_per_block, warps)
    return Launch(-(-warps // per_block), WARP * per_block)


def vector_items_per_warp(kp: int) -> int:
    return WARP // group_size(kp)


@dataclass
class DeviceRows:
    """A Batch's CSR arrays on the device."""

    indptr: object      # int64 (n_rows + 1,)
    fields: object      # int32 (nnz,), at least one element
    features: object    # int32
    values: object      # float32
    labels: object      # float32 (n_rows,), at least one element
    n_rows: int
    max_nnz: int        # the longest row


def pack_rows(xp, batch) -> DeviceRows:
    """Copy a Batch's rows to the device, in the dtypes the kernels take.
    Empty arrays get one dummy element (a kernel argument needs memory)."""

    def put(a, dtype):
        a = np.ascontiguousarray(a, dtype=dtype)
        if a.size == 0:
            a = np.zeros(1, dtype)
        return xp.asarray(a)

    indptr = np.ascontiguousarray(batch.indptr, dtype=np.int64)
    max_nnz = int(np.diff(indptr).max()) if indptr.size > 1 else 0
    return DeviceRows(
        indptr=xp.asarray(indptr), fields=put(batch.fields, np.int32),
        features=put(batch.features, np.int32), values=put(batch.values, np.float32),
        labels=put(batch.labels, np.float32), n_rows=int(batch.n_rows), max_nnz=max_nnz,
    )


def fwfm_scratch_len(kp: int, max_nnz: int) -> int:
    """Per-warp scratch of the per-row FwFM update: the row's factor
    gradients (max_nnz * kp) and its field-pair gradients (one per pair).
    FmFM's update takes the same: the factor gradients and a flag per pair
    (whether the pair steps its field matrix)."""
    return max_nnz * kp + max_nnz * (max_nnz - 1) // 2


def row_scratch_len(kind: str, kp: int, max_nnz: int) -> int:
    """Per-warp scratch of fm_train_rows (0: none): kinds with field-pair
    parameters gather a row's gradients before stepping."""
    return fwfm_scratch_len(kp, max_nnz) if model_kind(kind).pairs else 0


# ---------------------------------------------------------------------------
# Exact mode


def slot_counts(xp, nnz, kind: str, n_classes: int, use_bias: bool, use_linear: bool,
                kp: int | None = None):
    """Contribution slots per row: (scalar slots, vector slots), each for all
    classes.  Scalar: bias, one per entry (linear), one per pair (FwFM's
    field-pair weights); vector (kp values): one per entry (FM, FwFM), two
    per pair (FFM), or one per entry and kp per pair (FmFM: the factors, and
    every row of the pair's field matrix; kp is needed for it)."""
    entry = model_kind(kind)
    nnz = nnz.astype(np.int64)
    pairs = nnz * (nnz - 1) // 2
    scalar = xp.full(nnz.shape, int(use_bias), np.int64)
    if use_linear:
        scalar = scalar + nnz
    if entry.pairs == "scalar":
        scalar = scalar + pairs
    if entry.factors == "feature":
        vector = nnz
    elif entry.factors == "feature-field":
        vector = 2 * pairs
    else:
        vector = xp.zeros(nnz.shape, np.int64)
    if entry.pairs == "matrix":
        if kp is None:
            raise ValueError("the slot plan of matrix pairs needs the padded factor width kp")
        vector = vector + kp * pairs
    return scalar * n_classes, vector * n_classes


@dataclass
class ExactPlan:
    """Where each position of an epoch's order writes its contributions.

    sofs / vofs: device int64 (n + 1,), exclusive prefix sums of the rows'
    scalar / vector slots in order; bounds: host positions where batches
    start (n_batches + 1,); batch_s / batch_v: host slot offsets at those
    bounds, so batch b owns slots batch_s[b] .. batch_s[b + 1] - 1."""

    sofs: object
    vofs: object
    bounds: np.ndarray
    batch_s: np.ndarray
    batch_v: np.ndarray

    @property
    def n_batches(self) -> int:
        return len(self.bounds) - 1

    def scalar_slots(self, b: int) -> int:
        return int(self.batch_s[b + 1] - self.batch_s[b])

    def vector_slots(self, b: int) -> int:
        return int(self.batch_v[b + 1] - self.batch_v[b])

    @property
    def max_scalar(self) -> int:
        return int(np.diff(self.batch_s).max()) if self.n_batches else 0

    @property
    def max_vector(self) -> int:
        return int(np.diff(self.batch_v).max()) if self.n_batches else 0


def exact_plan(xp, asnumpy, indptr, order, batch_size: int, kind: str, n_classes: int,
               use_bias: bool, use_linear: bool, kp: int | None = None) -> ExactPlan:
    """Contribution slots of every position of `order` (device arrays) cut
    into batches of batch_size positions; one transfer to the host."""
    n = int(order.shape[0])
    nnz = indptr[order + 1] - indptr[order]
    per_s, per_v = slot_counts(xp, nnz, kind, n_classes, use_bias, use_linear, kp)
    sofs = xp.zeros(n + 1, np.int64)
    vofs = xp.zeros(n + 1, np.int64)
    if n:
        sofs[1:] = xp.cumsum(per_s)
        vofs[1:] = xp.cumsum(per_v)
    bounds = np.minimum(np.arange(0, -(-n // batch_size) + 1, dtype=np.int64) * batch_size, n)
    at = xp.asarray(bounds)
    both = asnumpy(xp.stack([sofs[at], vofs[at]]))
    return ExactPlan(sofs, vofs, bounds, both[0].astype(np.int64), both[1].astype(np.int64))


def sort_contributions(xp, gid, n_ids: int):
    """The order of contribution slots by (block id, slot) and the sorted ids.

    Slots of one block end up adjacent and in slot order (rows in batch
    order, a row's contributions in the CPU's emit order), so summing a run
    front to back adds the rows' gradients in the order the CPU does, and
    the result does not depend on the sort algorithm.  Dead slots carry
    n_ids and sort last."""
    n = int(gid.shape[0])
    if n == 0:
        return gid, gid
    idx = xp.arange(n, dtype=np.int64)
    if (int(n_ids) + 1) * n < 2**62:
        perm = xp.argsort(gid * n + idx)
    else:
        perm = xp.lexsort(xp.stack([idx, gid]))
    return perm, gid[perm]


def segment_sums(perm, sorted_gid, values, n_ids: int) -> dict[int, np.ndarray]:
    """Host model of the apply kernels' reduction (for tests): for each live
    block id, its contributions summed front to back in sorted order."""
    out: dict[int, np.ndarray] = {}
    values = np.asarray(values)
    for j, gid in enumerate(np.asarray(sorted_gid).tolist()):
        if gid >= n_ids:
            continue
        v = values[int(perm[j])]
        out[gid] = v.copy() if gid not in out else out[gid] + v
    return out


# ---------------------------------------------------------------------------
# Hot accumulation (per-row mode)


def hot_layout(kind: str, n_fields: int, kp: int, n_hot: int) -> tuple[int, int, int]:
    """Values of hot accumulators per class (fm_device.cu): (per hot feature,
    scalar part, vector part) for n_hot hot features, the bias and the pair
    parameters (FwFM's m * m weights, FmFM's m * m * kp matrix rows)."""
    entry = model_kind(kind)
    stride = 2 * kp + 4
    bpf = n_fields if entry.factors == "feature-field" else 1 if entry.factors else 0
    pair_s = n_fields * n_fields if entry.pairs == "scalar" else 0
    pair_v = n_fields * n_fields * kp if entry.pairs == "matrix" else 0
    per = HOT_SCALAR + bpf * stride
    return per, HOT_SCALAR * (1 + n_hot + pair_s), stride * (n_hot * bpf + pair_v)


# ---------------------------------------------------------------------------
# Device memory


NOMINAL_ROWS_IN_FLIGHT = 8192   # warps of a full per-row launch, where no device says (an H100's order)


@dataclass(frozen=True)
class DeviceMemory:
    """Bytes of device memory a training run takes, by what holds them."""

    parameters: int      # weights
    state: int           # optimizer state
    data: int            # resident rows: training (and validation) rows, row order, weights
    scratch: int         # per-launch buffers: statistics, per-warp scratch, hot accumulators, exact-mode slots

    @property
    def total(self) -> int:
        return self.parameters + self.state + self.data + self.scratch


def device_memory(cfg, n_features: int, n_fields: int, n_classes: int, *, rows: int, nnz: int,
                  valid_rows: int = 0, valid_nnz: int = 0, weights: bool = False,
                  rows_in_flight: int | None = None) -> DeviceMemory:
    """What fmcli.gpu.state.GpuState allocates for a run of `rows` training
    rows with `nnz` entries resident at once (and a validation set): an
    upper estimate, rows of average width assumed for the exact mode's
    contribution slots.  Pure arithmetic: no device needed."""
    from ..model import padded_k
    from ..params import HostParams
    from ..registry import optimizer as optimizer_entry

    itemsize = np.dtype(cfg.dtype).itemsize
    kp, C = padded_k(cfg.k), n_classes
    both = HostParams.bytes_needed(cfg.replace(batch_size=1), n_features, n_fields, C)
    params = both // (1 + optimizer_entry(cfg.optimizer).n_state)
    # rows as pack_rows holds them (indptr, fields, features, values, labels),
    # the order of a pass and its weights; the validation rows stay too
    def rows_bytes(n, z):
        return 8 * (n + 1) + 12 * z + 4 * n if n else 0

    data = rows_bytes(rows, nnz) + rows_bytes(valid_rows, valid_nnz) + 8 * rows + (4 * rows if weights else 0)
    data += 8 * valid_rows * C                       # the validation scores
    warps = max(1, min(int(rows_in_flight or NOMINAL_ROWS_IN_FLIGHT), rows))
    per_launch = min(rows, ROWS_PER_LAUNCH)
    scratch = 17 * per_launch + 16 * warps * C       # row status, loss, weight; per-warp class scores
    width = -(-nnz // rows) if rows else 0           # average entries per row, rounded up
    if cfg.batch_size == 1:
        scratch += min(SCRATCH_BUDGET, warps * row_scratch_len(cfg.model, kp, width) * itemsize)
        if cfg.hot_features != 0 and cfg.optimizer in HOT_OPTIMIZERS:
            # hot accumulation: a slot per feature, the accumulators of the
            # bias, the pair parameters and the hot features
            per, scalars, vectors = hot_layout(cfg.model, n_fields, kp, 0)
            per_feature = C * per * itemsize
            hot = (min(n_features * per_feature, HOT_BYTES) if cfg.hot_features is None
                   else min(cfg.hot_features, n_features) * per_feature)
            scratch += 4 * n_features + C * (scalars + vectors) * itemsize + hot
    else:
        b = min(cfg.batch_size, max(rows, 1))
        s_slots, v_slots = slot_counts(np, np.array([width]), cfg.model, C, cfg.use_bias, cfg.use_linear, kp)
        s_slots, v_slots = int(s_slots[0]) * b, int(v_slots[0]) * b
        scratch += s_slots * (8 + itemsize) + v_slots * (8 + kp * itemsize)
        scratch += 3 * 8 * max(s_slots, v_slots)     # the sort: keys, order, sorted ids
        scratch += 16 * (rows + 1)                   # the plan's slot offsets
    return DeviceMemory(parameters=params, state=both - params, data=data, scratch=scratch)
