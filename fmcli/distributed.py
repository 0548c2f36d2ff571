"""Data-parallel training on Dask: the run loop's "train a slice" as rounds
of Dask tasks and a merge.

:class:`DaskBackend` is the CPU backend whose parameters live on the driver
(the process that runs fmcli.train's loop) and whose ``train_slice`` runs
bulk-synchronous rounds: the rows of a round are cut into one contiguous
piece per worker, each piece is trained by a pure task (:func:`train_piece`:
the round's merged arrays, the piece's rows, the hyperparameters and the
step number of its first row; no other state), which returns only the rows
of B, L, F and R that it changed; the driver merges them in worker order
(:func:`merge_array`), so a run is reproducible and a lost task can simply
be run again elsewhere.

The merge, per coordinate (a weight and its optimizer state), over the
workers that changed its row (a row touched by one worker is that worker's
row, bit for bit; one worker's run is the single-process run):

- adagrad, rowwise-adagrad: the accumulator grows by the sum of the
  workers' increments dG_i; the weight moves by the dG-weighted mean of the
  workers' moves, sum_i dG_i dw_i / sum_i dG_i (the plain mean of the
  moves where every dG_i is 0).  A coordinate that one worker moved a lot
  and another hardly at all keeps the first worker's move, instead of half
  of it.
- ftrl: z and n grow by the sums of the workers' increments, and the weight
  is FTRL's closed form of the new z and n (coordinates whose z and n no
  worker changed keep their weight).
- sgd, adam: the weight (and Adam's m and v) moves by the mean of the moves
  of the workers that touched the row.  An approximation: Adam's moments
  are not additive.

This module is the only one that imports Dask, and only when a run names a
scheduler (``--scheduler`` / ``--scheduler-file``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
from collections.abc import Callable

import numpy as np

from ._version import DISTRIBUTION, __version__
from .config import Config
from .cpu import CpuBackend
from .data.batch import Batch
from .errors import ClusterError
from .model import Model, ModelSpec
from .params import aligned_zeros

# The names of the four arrays of the training layout, in their order.
ARRAYS = ("B", "L", "F", "R")
# Merge rules: "optimizer" (the rule of the run's optimizer, see above) or
# "average" (every slot the plain mean of all workers' values: kept for
# comparisons, it dilutes a rare feature's move by the number of workers).
MERGE_RULES = ("optimizer", "average")


# ---------------------------------------------------------------------------
# the cluster
# ---------------------------------------------------------------------------

def core_fingerprint() -> str:
    """fmcli's version and a hash of its compiled kernels: what every worker
    must share with the driver."""
    from ._core import _kernels

    h = hashlib.sha256()
    with open(_kernels.__file__, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return f"{__version__} {h.hexdigest()[:16]}"


class DaskRunner:
    """A Dask client (and the LocalCluster it started, for ``local:N``):
    runs one round's tasks, one per worker, and gathers their results."""

    def __init__(self, client, cluster=None, use: int | None = None):
        """use: train on the first `use` workers only (None: all)."""
        self.client, self.cluster, self.use = client, cluster, use
        self.bytes_out = 0      # bytes shipped to the workers (model copies and rows)
        self.bytes_back = 0     # bytes of changed rows shipped back

    @property
    def workers(self) -> list[str]:
        """The workers' addresses, sorted (a fixed order)."""
        return sorted(self.client.scheduler_info()["workers"])[: self.use]

    def run(self, model: tuple[np.ndarray, ...], calls: list[tuple]) -> list:
        """train_piece(model, *args) for each args of `calls`, the j-th
        preferably on the j-th worker (elsewhere when it is lost): their
        results in the order of `calls`."""
        client, workers = self.client, self.workers
        # the round's model goes to each worker once (not once per task)
        [shared] = client.scatter([model], broadcast=True, hash=False)
        tag = uuid.uuid4().hex[:12]
        futures = [client.submit(train_piece, shared, *args, key=f"fmcli-piece-{tag}-{j}", pure=False,
                                 workers=[workers[j % len(workers)]], allow_other_workers=True, retries=3)
                   for j, args in enumerate(calls)]
        try:
            results = client.gather(futures)
        finally:
            client.cancel(futures + [shared])
        self.bytes_out += sum(a.nbytes for a in model) * len(workers)
        self.bytes_out += sum(_nbytes(args) for args in calls)
        self.bytes_back += sum(_nbytes(r[0]) for r in results)
        return results

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


class InlineRunner:
    """Runs a round's tasks one after another in this process, as if on
    `n` workers (tests and comparisons of merge rules; no Dask)."""

    def __init__(self, n: int):
        self.workers = [f"inline-{j}" for j in range(n)]
        self.bytes_out = self.bytes_back = 0

    def run(self, model, calls):
        return [train_piece(model, *args) for args in calls]

    def close(self) -> None:
        pass


def _nbytes(x) -> int:
    """Bytes of the arrays in x (nested tuples and lists, Batches)."""
    if isinstance(x, np.ndarray):
        return x.nbytes
    if isinstance(x, Batch):
        return sum(_nbytes(a) for a in (x.labels, x.indptr, x.fields, x.features, x.values, x.weights))
    if isinstance(x, (tuple, list)):
        return sum(_nbytes(a) for a in x)
    return 0


def connect(config: Config, say: Callable[[str], None]) -> DaskRunner:
    """The cluster of a run: a LocalCluster of N worker processes for
    ``local:N`` (closed with the run), else a client of the scheduler at an
    address (tcp://, tls://, ...) or in a scheduler file.  Refuses, in one
    line: Dask missing, a scheduler that does not answer within
    config.scheduler_timeout seconds, no worker, or a worker whose fmcli or
    compiled core differs from this one's."""
    try:
        import distributed
    except ImportError:
        raise ClusterError(f"--scheduler needs Dask: pip install '{DISTRIBUTION}[dask]'") from None
    timeout = config.scheduler_timeout
    where = config.scheduler or f"the scheduler in {config.scheduler_file}"
    cluster = None
    # Dask logs connection failures and shutdowns itself; the one line is ours
    quiet = [logging.getLogger(name) for name in ("distributed", "distributed.client", "distributed.core",
                                                  "distributed.comm", "distributed.worker", "distributed.nanny",
                                                  "distributed.scheduler")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.CRITICAL)
    try:
        if config.scheduler is not None and config.scheduler.startswith("local:"):
            n = int(config.scheduler.split(":", 1)[1])
            # (Dask's HTTP server still listens without a dashboard: on any free
            # port, so that runs side by side do not compete for one)
            cluster = distributed.LocalCluster(n_workers=n, threads_per_worker=config.threads, processes=True,
                                               dashboard_address=":0")
            client = distributed.Client(cluster, timeout=timeout, set_as_default=False)
            client.wait_for_workers(n, timeout=timeout)
        elif config.scheduler is not None:
            client = distributed.Client(config.scheduler, timeout=timeout, set_as_default=False)
            client.wait_for_workers(1, timeout=timeout)
        else:
            if not os.path.exists(config.scheduler_file):
                raise ClusterError(f"--scheduler-file {config.scheduler_file}: no such file")
            client = distributed.Client(scheduler_file=config.scheduler_file, timeout=timeout,
                                        set_as_default=False)
            client.wait_for_workers(1, timeout=timeout)
    except ClusterError:
        raise
    except (OSError, TimeoutError, ValueError) as exc:
        if cluster is not None:
            cluster.close()
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ClusterError(f"cannot reach {where} (or no worker joined) within {timeout:g} s: {reason}") from None
    finally:
        for lg, level in zip(quiet, levels):
            lg.setLevel(level)
    runner = DaskRunner(client, cluster)
    try:
        mine = core_fingerprint()
        theirs = client.run(core_fingerprint)
        odd = {addr: fp for addr, fp in sorted(theirs.items()) if fp != mine}
        if odd:
            addr, fp = next(iter(odd.items()))
            raise ClusterError(f"worker {addr} runs fmcli {fp}, this process {mine}: every worker needs the "
                               f"same fmcli and compiled core ({len(odd)} of {len(theirs)} differ)")
    except BaseException:
        runner.close()
        raise
    say(f"{where}: {len(runner.workers)} workers")
    return runner


# ---------------------------------------------------------------------------
# the task
# ---------------------------------------------------------------------------

def take_rows(batch: Batch, rows: np.ndarray) -> Batch:
    """The rows `rows` of batch, in that order, as a new compact Batch
    (copies: what a task is sent)."""
    rows = np.asarray(rows, np.int64)
    starts, ends = batch.indptr[rows], batch.indptr[rows + 1]
    lengths = ends - starts
    indptr = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(lengths, out=indptr[1:])
    # the entries of each row: its start in batch, then +1, +2, ...
    entries = np.repeat(starts - indptr[:-1], lengths) + np.arange(indptr[-1], dtype=np.int64)
    return Batch(labels=batch.labels[rows], indptr=indptr, fields=batch.fields[entries],
                 features=batch.features[entries],
                 values=batch.values[entries] if batch.values.shape[0] else batch.values,
                 weights=None if batch.weights is None else batch.weights[rows])


def changed_rows(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Indices of the rows of a 2-d array whose bits differ."""
    kind = {4: np.int32, 8: np.int64}[before.dtype.itemsize]
    return np.flatnonzero((before.view(kind) != after.view(kind)).any(axis=1))


def train_piece(model: tuple[np.ndarray, ...], cfg: Config, spec: ModelSpec, hot: np.ndarray | None,
                rows: Batch, weights: np.ndarray | None, total_steps: int, step0: int):
    """One worker's part of a round (a pure function of its arguments):
    train a copy of `model` (B, L, F, R) on all of `rows` in order, the first
    being step step0 of the run.  Returns ([(indices, rows) of each array
    that the pass changed], (loss sum, weight sum, rows skipped, position of
    the row that stopped the pass or -1), seconds)."""
    t0 = time.perf_counter()
    arrays = []
    for a in model:     # the round's model may be shared by other tasks: train a copy
        mine = aligned_zeros(a.shape, a.dtype)
        mine[...] = a
        arrays.append(mine)
    backend = CpuBackend.from_arrays(cfg, spec, tuple(arrays))
    backend.hot = hot
    backend.total_steps = total_steps
    sums = backend.train_slice(rows, np.arange(rows.n_rows, dtype=np.int64), weights, step0)
    changes = []
    for before, after in zip(model, arrays):
        idx = changed_rows(before, after)
        changes.append((idx, after[idx]))
    return changes, tuple(sums), time.perf_counter() - t0


# ---------------------------------------------------------------------------
# the merge
# ---------------------------------------------------------------------------

def _slots(host: CpuBackend, name: str, a: np.ndarray) -> list[np.ndarray]:
    """Views of the weights (first) and of each optimizer state slot of the
    rows `a` of array `name`: (rows, kp) for factor-format blocks, (rows, 1)
    for (weight, state...) rows."""
    blocks = name == "F" or (name == "R" and host.kind.pairs == "matrix")
    if blocks:
        return [host.slot_view(a, s) for s in range(1 + host.ns)]
    return [a[:, s : s + 1] for s in range(1 + host.ns)]


def _ftrl_penalties(host: CpuBackend, name: str) -> tuple[float, float]:
    """FTRL's (l1, l2) of array `name` (as the kernels and HostParams._init_state use them)."""
    c = host.cfg
    return {"B": (0.0, c.l2_of("bias")), "L": (c.l1, c.l2_of("linear")),
            "F": (c.l1, c.l2_of("factors")), "R": (0.0, 0.0)}[name]


def merge_array(host: CpuBackend, name: str, base: np.ndarray, changes: list[tuple[np.ndarray, np.ndarray]],
                rule: str = "optimizer") -> tuple[np.ndarray, np.ndarray]:
    """Merge the workers' changed rows of one array: (row indices, their new
    contents), to be written into `base` (the array as the round began).

    changes: for each worker, in the fixed worker order, (sorted indices of
    the rows it changed, those rows).  host: the layout (slot views, the
    optimizer and its hyperparameters).  See the module's doc for the rules."""
    touched = [np.asarray(idx, np.int64) for idx, _ in changes]
    if not any(len(i) for i in touched):
        return np.zeros(0, np.int64), base[:0].copy()
    union = np.unique(np.concatenate(touched))
    start = base[union]
    out = start.copy()
    counts = np.zeros(len(union), np.int64)
    rows_of, masks = [], []
    for idx, rows in changes:
        pos = np.searchsorted(union, idx)
        full = start.copy()
        full[pos] = rows
        mask = np.zeros(len(union), bool)
        mask[pos] = True
        counts += mask
        rows_of.append(full)
        masks.append(mask)
    if rule == "average":
        # every word's plain mean over all workers (the untouched keep the start)
        for slot_out, *slot_in in zip(_slots(host, name, out), *(_slots(host, name, r) for r in rows_of)):
            slot_out[...] = np.mean([x.astype(np.float64) for x in slot_in], axis=0)
        return union, out
    # a row only one worker changed: that worker's row as it is
    for full, mask in zip(rows_of, masks):
        one = mask & (counts == 1)
        out[one] = full[one]
    many = counts > 1
    if not many.any():
        return union, out
    sel = np.flatnonzero(many)
    x0 = [s[sel].astype(np.float64) for s in _slots(host, name, start)]
    xs = [[s[sel].astype(np.float64) for s in _slots(host, name, r)] for r in rows_of]
    hit = [m[sel].astype(np.float64)[:, None] for m in masks]      # (rows, 1): the worker touched the row
    n_hit = np.sum(hit, axis=0)
    dst = _slots(host, name, out)
    opt = host.cfg.optimizer

    def mean_move(slot: int) -> np.ndarray:
        return sum(h * (x[slot] - x0[slot]) for h, x in zip(hit, xs)) / n_hit

    if opt in ("adagrad", "rowwise-adagrad"):
        dG = [x[1] - x0[1] for x in xs]                       # (rows, kp) or (rows, 1) per block
        total = np.sum(dG, axis=0)
        weighted = sum(g * (x[0] - x0[0]) for g, x in zip(dG, xs))
        with np.errstate(invalid="ignore", divide="ignore"):
            move = np.where(total > 0, weighted / np.where(total > 0, total, 1.0), mean_move(0))
        dst[0][sel] = x0[0] + move
        dst[1][sel] = x0[1] + total
    elif opt == "ftrl":
        c = host.cfg
        l1, l2 = _ftrl_penalties(host, name)
        dz = np.sum([x[1] - x0[1] for x in xs], axis=0)
        dn = np.sum([x[2] - x0[2] for x in xs], axis=0)
        z, n = x0[1] + dz, x0[2] + dn
        w = np.where(np.abs(z) <= l1, 0.0,
                     -(z - np.sign(z) * l1) / ((c.ftrl_beta + np.sqrt(n)) / c.ftrl_alpha + l2))
        moved = (dz != 0) | (dn != 0)
        dst[0][sel] = np.where(moved, w, x0[0])
        dst[1][sel] = z
        dst[2][sel] = n
    else:   # sgd, adam: the mean move of the workers that touched the row
        for slot in range(1 + host.ns):
            dst[slot][sel] = x0[slot] + mean_move(slot)
    return union, out


# ---------------------------------------------------------------------------
# the backend
# ---------------------------------------------------------------------------

def pieces(n: int, workers: int, batch_size: int) -> list[tuple[int, int]]:
    """Cut n rows into at most `workers` contiguous, non-empty pieces of
    whole mini-batches, as even as can be: [(start, stop), ...]."""
    n_batches = -(-n // batch_size)
    k = max(1, min(workers, n_batches))
    cuts = [j * n_batches // k * batch_size for j in range(k)] + [n]
    return [(min(a, n), min(b, n)) for a, b in zip(cuts, cuts[1:]) if min(a, n) < min(b, n)]


class DaskBackend(CpuBackend):
    """The CPU layout held on the driver, trained in rounds by Dask workers
    (the fmcli.backend.Backend interface; see the module's doc)."""

    runner = None
    merge_rule = "optimizer"

    def attach(self, runner, rows_per_round: int) -> "DaskBackend":
        self.runner = runner
        self.rows_per_round = rows_per_round
        self.rounds = 0
        self.merge_seconds = 0.0
        self.task_seconds = 0.0
        self.rows_trained = 0
        n = len(runner.workers)
        self.device = f"dask ({n} worker{'s' if n != 1 else ''})"
        return self

    def train_slice(self, batch: Batch, order: np.ndarray, weights: np.ndarray | None,
                    step0: int) -> tuple[float, float, int, int]:
        """The rows `order` in rounds of rows_per_round rows (0: one round)."""
        bs = self.cfg.batch_size
        per_round = self.rows_per_round or len(order)
        per_round = max(bs, per_round // bs * bs)
        loss = wsum = 0.0
        skipped = 0
        for lo in range(0, len(order), per_round):
            l, w, s, first = self._round(batch, order[lo : lo + per_round], weights, step0 + lo // bs)
            loss, wsum, skipped = loss + l, wsum + w, skipped + s
            if first >= 0:
                return loss, wsum, skipped, lo + first
        return loss, wsum, skipped, -1

    def _round(self, batch: Batch, part: np.ndarray, weights: np.ndarray | None, step0: int):
        """One bulk-synchronous round over the rows `part` of batch."""
        bs = self.cfg.batch_size
        calls = []
        cut = pieces(len(part), len(self.runner.workers), bs)
        for a, b in cut:
            rows = part[a:b]
            calls.append((self.cfg, self.spec, self.hot, take_rows(batch, rows),
                          None if weights is None else weights[rows], self.total_steps, step0 + a // bs))
        model = self.arrays()
        results = self.runner.run(model, calls)
        t0 = time.perf_counter()
        self.apply([r[0] for r in results])
        self.merge_seconds += time.perf_counter() - t0
        self.task_seconds += sum(r[2] for r in results)
        self.rounds += 1
        self.rows_trained += len(part)
        loss = wsum = 0.0
        skipped, first = 0, -1
        for (a, _), (_, (l, w, s, f), _) in zip(cut, results):
            loss, wsum, skipped = loss + l, wsum + w, skipped + s
            if f >= 0 and first < 0:
                first = a + f
        return loss, wsum, skipped, first

    def apply(self, changes: list[list[tuple[np.ndarray, np.ndarray]]]) -> None:
        """Merge the workers' changes (one list of four (indices, rows) per
        worker, in worker order) into the arrays."""
        if len(changes) == 1:    # one worker: its rows are the result
            for a, (idx, rows) in zip(self.arrays(), changes[0]):
                a[idx] = rows
            return
        for i, (name, a) in enumerate(zip(ARRAYS, self.arrays())):
            idx, rows = merge_array(self, name, a, [c[i] for c in changes], self.merge_rule)
            a[idx] = rows

    def record(self) -> dict:
        """The model header's "distributed" record."""
        out = {"workers": len(self.runner.workers), "rounds": self.rounds,
               "rows_per_round": self.rows_per_round or None,
               "merge": self.merge_rule if self.merge_rule != "optimizer" else self.cfg.optimizer,
               "bytes_out": self.runner.bytes_out, "bytes_back": self.runner.bytes_back}
        if "SOURCE_DATE_EPOCH" not in os.environ:   # reproducible files leave wall-clock figures out
            out["merge_seconds"] = round(self.merge_seconds, 6)
            out["task_seconds"] = round(self.task_seconds, 6)
        return out

    def to_model(self, meta: dict) -> Model:
        model = super().to_model(meta)
        training = model.meta.get("training")
        if isinstance(training, dict) and self.runner is not None:
            training["distributed"] = self.record()
        return model

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()


def new_dask_backend(cfg: Config, n_features: int, n_fields: int, rng: np.random.Generator, task: str,
                     classes, say: Callable[[str], None], slot_ids: np.ndarray | None = None,
                     id_space: int = 0, runner=None) -> DaskBackend:
    """The backend of a run with a scheduler: connect (or start the local
    cluster) first, then draw the parameters as the CPU backend does."""
    runner = runner if runner is not None else connect(cfg, say)
    try:
        if slot_ids is not None:
            backend = DaskBackend(cfg, id_space, n_fields, rng, task, classes, slot_ids=slot_ids)
        else:
            backend = DaskBackend(cfg, n_features, n_fields, rng, task, classes)
    except BaseException:
        runner.close()
        raise
    return backend.attach(runner, cfg.rows_per_round)
