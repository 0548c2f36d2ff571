"""Data-parallel training on Dask: the run loop's "train a slice" as rounds
of Dask tasks and a merge.

:class:`DaskBackend` trains the CPU layout in bulk-synchronous rounds (one
per epoch by default: ``--syncs-per-epoch``, or ``--rows-per-round``).
Between rounds the model lives on the workers, cut into one block of rows
per worker (every array's rows split into W ranges), and a round is made
of ordinary, pure Dask tasks:

1. train (:func:`train_part`, one per worker): put the round's W merged
   blocks together into a copy of the model (Dask brings the blocks held
   elsewhere, peer to peer), train it on the worker's piece of the round's
   rows, and cut the result into W parts again, each part only the rows
   that changed when few did;
2. merge (:func:`merge_block`, one per block, on the worker that holds the
   block): part r of every worker's result, in the fixed worker order,
   merged into block r by :func:`merge_array`'s rules (below).

3. copy (:meth:`DaskBackend._keep_spares`): every merged block copied to
   every worker under a key of the worker's own, so that each block lives
   on every worker until the next round's merge (Dask's active memory
   manager drops the extra replicas of one key within seconds, and a worker
   lost between rounds would otherwise take the only copy of its blocks with
   it: the round then runs again from blocks no worker holds, and fails).
   The next round's training finds every block on its worker.

Together that is a reduce-scatter and an all-gather: per round each worker
sends and receives about 2 (W - 1) / W model sizes, whatever the number of
workers, and the driver sends only row indices.  A block lost with its
worker is taken from a copy; a round that loses a result runs again from
its starting blocks (at most ROUND_TRIES times).

The rows are cut into one shard per worker (:func:`shard_bounds`:
contiguous ranges, balanced to a row), and each worker holds its shard
only.  A round's rows, positions of the epoch's row order, are dealt to the
shards in turn (:func:`dealt`), so that an unshuffled round gives every
shard its next rows in file order and a shuffled one a random share, and
one shard is the single-process order itself.  The rows stay where the
data are: the driver parses the inputs into the binary cache
(fmcli.data.cache), and a worker that sees the cache under the same path
(the local cluster, a shared file system) reads the chunks that hold its
shard once per run and keeps the rows (:class:`CacheRows`); the driver then
sends each round only the positions of the worker's piece in its shard.
Where the cache is not visible (or the run reads without a cache), each
worker is sent its shard once; a shard lost with its worker is read (or
sent) again for the worker that takes its tasks (:class:`_Shards`).  Tasks are pure
functions of their inputs (the rows, the round's merged blocks, the
hyperparameters and the step numbers), so Dask retries a task lost with
its worker elsewhere and the result is the same.

The driver gathers the model only when the run loop needs the arrays
(checkpoints, the final model, a snapshot restored from the driver):
validation scores the merged model on the workers (:func:`score_part`), a
snapshot for early stopping keeps the blocks on the cluster, and the
finite check comes with each merge.

The merge, per coordinate (a weight and its optimizer state), over the
workers that changed its row (a row touched by one worker is that worker's
row, bit for bit; one worker's run is the single-process run):

- adagrad, rowwise-adagrad: the accumulator grows by the sum of the
  workers' increments dG_i; the weight moves by the dG-weighted mean of the
  workers' moves, sum_i dG_i dw_i / sum_i dG_i (the plain mean of the
  moves where every dG_i is 0).  A coordinate that one worker moved a lot
  and another hardly at all keeps the first worker's move, instead of half
  of it.
- ftrl: as adagrad's, with FTRL's n for G: n grows by the sum of the
  workers' increments dn_i, the weight moves by the dn-weighted mean of
  their moves, and z is the one that FTRL's closed form turns into that
  weight for the new n (the workers' z mean where the weight is 0: L1's
  dead zone).  The workers step at W times FTRL's rate alpha (below): each
  rewrites z for its rate before it trains (the weights unchanged) and back
  for the run's after (_ftrl_rate; a coordinate it did not move keeps its
  bits).  Summing the z increments instead (with each worker's proximal
  term put back, the merged one taken off once) left 2 workers with one
  round per epoch +2.7% above one process's validation logloss after 3
  epochs on a 200,000-row head of BENCH.md's data; this rule, +0.1%.
- sgd, adam: the weight (and Adam's m and v) moves by the mean of the moves
  of the workers that touched the row.  An approximation: Adam's moments
  are not additive.

Learning rate: a merge that averages moves (every optimizer's) would move
a weight that every worker sees about as far per round as one worker's
share of the rows moves it, so that W workers would need about
W times the epochs.  Each worker therefore steps with the learning rate
times the number of pieces of its round (the linear scaling rule of
data-parallel SGD): a weight that moves steadily moves as far per round as
in one process, and one that settles within the round settles on every
worker, so that the mean does not overshoot.  On BENCH.md-shaped data, 2
workers with one round per epoch then follow the single-process validation
logloss epoch for epoch (within 0.2%), where the unscaled rule needed twice
the epochs.  FTRL's rate is alpha (--ftrl-alpha), scaled the same way.

Rounds are cut into as many pieces as the run had workers when it started
(one per shard), whatever workers are alive later: piece j goes to the
worker of shard j (another one when it is lost), so that the pieces, and
with them the merged model, do not depend on which workers took part.

After every round ``backend.on_round`` (when set) receives the round's
figures: its rows and wall time, the merge's time, the bytes it moved and
each worker's rows and rows/s (see :meth:`DaskBackend.round_report`).

This module is the only one that imports Dask, and only when a run names a
scheduler (``--scheduler`` / ``--scheduler-file``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import operator
import os
import sys
import threading
import time
import uuid
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ._version import DISTRIBUTION, __version__
from .config import Config
from .cpu import CpuBackend
from .data.batch import Batch
from .errors import ClusterError
from .model import Model, ModelSpec
from ._core import _kernels
from .params import aligned_zeros

# The names of the four arrays of the training layout, in their order.
ARRAYS = ("B", "L", "F", "R")
# Merge rules: "optimizer" (the rule of the run's optimizer, see above) or
# "average" (every slot the plain mean of all workers' values: kept for
# comparisons, it dilutes a rare feature's move by the number of workers).
MERGE_RULES = ("optimizer", "average")
# times a round runs when Dask cancels its tasks for results lost with a worker
ROUND_TRIES = 3
# Rows merged (and compared) at a time: the float64 temporaries of a piece
# stay in the processor's cache.
MERGE_ROWS = 16384
# float32 AdaGrad blocks are merged by a compiled loop (_kernels.merge_adagrad_f32,
# the same bits as the NumPy code below); False: the NumPy code (tests)
MERGE_KERNEL = True
# the rows a worker changed are found by a compiled loop (_kernels.changed_row_mask);
# False: the NumPy code (tests)
MASK_KERNEL = True
# FTRL's z is rewritten for a rate by a compiled loop (_kernels.ftrl_rate_f32, the
# same bits as _ftrl_rate's NumPy code); False: the NumPy code (tests)
FTRL_KERNEL = True
# glibc's malloc settings of the workers of a local:N cluster.  Dask starts
# workers with MALLOC_TRIM_THRESHOLD_ set, which also turns off glibc's
# adaptive mmap threshold, and glibc maps every block of more than 32 MiB
# on its own whatever the threshold: each round's blocks, their parts and
# the buffers Dask receives them in (tens of MB each) were mapped fresh and
# unmapped again, the kernel zero-filling every page of each anew (on
# virtual machines that hand freed memory back to their host, the host
# faults it in again as well: on the 2-core test machine that took a
# quarter of a worker's CPU time).  So the workers take every block from the
# heap, which keeps up to 1 GiB free for the next round.  Workers started by
# hand (tcp://) can be given the same environment.
WORKER_MALLOC = {"MALLOC_MMAP_MAX_": 0, "MALLOC_TRIM_THRESHOLD_": 1 << 30}
# Dask's comm settings for the rounds.  By default a frame of more than
# 64 MiB is cut into shards, which the receiver copies together again, and a
# message of more than 10 MiB is (de)serialised in another thread: for the
# rounds' blocks (model size / workers each) both cost more than the
# transfer itself (2 workers on BENCH.md's data: 3.7-3.8 s per round with
# Dask's defaults, 3.2-3.3 s without them).  Dask reads both once, when it
# is imported: a local:N cluster's workers get them in their environment
# (WORKER_COMM; workers started by hand can be given the same), and the
# driver, which sends the starting model, sets them before it imports Dask's
# distributed package (see connect).
COMM = {"distributed.comm.shard": "1GiB", "distributed.comm.offload": "2GiB"}
WORKER_COMM = {"DASK_" + key.upper().replace(".", "__"): value for key, value in COMM.items()}
# Data sets a worker keeps in memory between tasks (the training and the
# validation rows of a run, and of the run before it).
HELD_DATASETS = 4


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
        self.timeout = 30.0     # seconds to wait for a worker when none is left (connect sets the run's)
        self.bytes_out = 0      # bytes shipped to the workers (model copies and rows)
        self.bytes_back = 0     # bytes of changed rows shipped back

    @property
    def workers(self) -> list[str]:
        """The workers' addresses, sorted (a fixed order); waits for one
        when none is there (ClusterError after the scheduler timeout)."""
        found = sorted(self.client.scheduler_info()["workers"])[: self.use]
        if not found:
            try:
                self.client.wait_for_workers(1, timeout=self.timeout)
            except (OSError, TimeoutError):
                raise ClusterError(f"no Dask worker left within {self.timeout:g} s") from None
            found = sorted(self.client.scheduler_info()["workers"])[: self.use]
        return found

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


def _check_address(distributed, address: str) -> None:
    """Refuse, before a client is made, an address whose scheme Dask does
    not know, and a tls:// (or wss://) one without the certificates that
    Dask's configuration must name."""
    scheme = address.split("://", 1)[0] if "://" in address else "tcp"
    try:
        distributed.comm.registry.get_backend(scheme)
    except ValueError:
        raise ClusterError(f"cannot reach {address}: Dask knows no {scheme}:// addresses "
                           "(tcp://, tls://, inproc://, ucx:// where installed)") from None
    if scheme in ("tls", "wss"):
        args = distributed.security.Security().get_connection_args("client")
        if args.get("ssl_context") is None:
            raise ClusterError(f"cannot reach {address}: {scheme}:// needs certificates, set in Dask's "
                               "configuration (distributed.comm.tls.ca-file, .client.cert and .client.key, "
                               "or DASK_DISTRIBUTED__COMM__TLS__CA_FILE and the like)")


def _wait_for_workers(client, n: int, timeout: float, where: str) -> None:
    """Wait until `n` workers have joined the client's scheduler (ClusterError
    naming how many did after `timeout` seconds)."""
    try:
        client.wait_for_workers(n, timeout=timeout)
    except (OSError, TimeoutError):
        try:
            joined = len(client.scheduler_info()["workers"])
        except (OSError, TimeoutError):
            joined = 0
        client.close()
        if n == 1:
            raise ClusterError(f"no worker joined {where} within {timeout:g} s") from None
        raise ClusterError(f"{joined} of the {n} workers asked for (--min-workers) joined {where} "
                           f"within {timeout:g} s") from None


def connect(config: Config, say: Callable[[str], None]) -> DaskRunner:
    """The cluster of a run: a LocalCluster of N worker processes for
    ``local:N`` (closed with the run), else a client of the scheduler at an
    address (tcp://, tls://, ...) or in a scheduler file.  Refuses, in one
    line: Dask missing, a scheduler that does not answer within
    config.scheduler_timeout seconds, fewer workers than config.min_workers
    within that time (one for an address: a run trains on the workers that
    have joined when it starts), or a worker whose fmcli or
    compiled core differs from this one's."""
    try:
        import dask

        if "distributed" not in sys.modules:
            # the settings of COMM for this process, unless Dask's config
            # files or environment set them (a process that imported Dask's
            # distributed package already keeps what it read then)
            dask.config.set({key: value for key, value in COMM.items() if dask.config.get(key, None) is None})
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
            # The workers' statistical profiler samples every task's stack
            # under the GIL every few ms: it slows the merges' NumPy loops.
            import dask

            environ = {**dask.config.get("distributed.nanny.pre-spawn-environ", {}), **WORKER_MALLOC,
                       **WORKER_COMM}
            with dask.config.set({"distributed.worker.profile.enabled": False,
                                  "distributed.nanny.pre-spawn-environ": environ}):
                cluster = distributed.LocalCluster(n_workers=n, threads_per_worker=max(1, config.threads), processes=True,
                                                   dashboard_address=":0")
            client = distributed.Client(cluster, timeout=timeout, set_as_default=False)
            client.wait_for_workers(n, timeout=timeout)
        else:
            if config.scheduler is not None:
                _check_address(distributed, config.scheduler)
                client = distributed.Client(config.scheduler, timeout=timeout, set_as_default=False)
            else:
                if not os.path.exists(config.scheduler_file):
                    raise ClusterError(f"--scheduler-file {config.scheduler_file}: no such file")
                client = distributed.Client(scheduler_file=config.scheduler_file, timeout=timeout,
                                            set_as_default=False)
            _wait_for_workers(client, int(config.min_workers), timeout, where)
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
    runner.timeout = timeout
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
# the rows on the workers
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class CacheRows:
    """Where a worker finds the rows of a data set: the driver's cache file,
    under the same path, and what the driver did to its rows (labels, id
    map, compact form), so that the worker holds the very Batch the driver
    holds.  Small: it is sent, not the rows."""

    path: str
    size: int
    key: str                        # the cache's key (inputs and parse options)
    digest: str                     # the cached rows' content digest
    n_rows: int
    nnz: int
    task: str
    label_map: np.ndarray | None
    ids: np.ndarray | None          # the run's id map (original id of each slot), or None
    compact: bool
    check: int                      # crc32 of the driver's labels and row offsets
    start: int = 0                  # the rows start..stop-1 of the data set (a shard)
    stop: int = 0
    token: str = ""                 # names the rows in a worker's memory

    @classmethod
    def of(cls, ds, batch: Batch, compact: bool, start: int = 0, stop: int | None = None) -> "CacheRows | None":
        """The reference to the rows start..stop-1 (default: all) of
        `batch`, ds.in_memory(compact)'s rows, or None when ds has no cache
        file under a name (read without a cache, or a cache of read-once
        inputs, removed once open)."""
        cf = getattr(ds, "cache", None)
        if cf is None or getattr(cf, "fd", -1) < 0:
            return None
        try:
            st, mine = os.stat(cf.path), os.fstat(cf.fd)
        except OSError:
            return None
        if (st.st_ino, st.st_dev) != (mine.st_ino, mine.st_dev):
            return None     # the name now holds another file
        ids = None if ds.id_map is None else np.asarray(ds.id_map.ids, np.int64)
        label_map = None if ds.label_map is None else np.asarray(ds.label_map, np.float32)
        stop = batch.n_rows if stop is None else stop
        rows = batch if (start, stop) == (0, batch.n_rows) else batch.rows(start, stop)
        fields = dict(path=os.path.abspath(cf.path), size=st.st_size, key=cf.key,
                      digest=ds.digest, n_rows=rows.n_rows, nnz=rows.nnz, task=ds.task,
                      label_map=label_map, ids=ids, compact=compact, check=_rows_check(rows),
                      start=start, stop=stop)
        h = hashlib.sha256(repr(sorted((k, v) for k, v in fields.items()
                                       if k not in ("label_map", "ids"))).encode())
        for a in (label_map, ids):
            h.update(b"-" if a is None else a.tobytes())
        return cls(**fields, token=h.hexdigest()[:24])

    def visible(self) -> bool:
        """Whether this process sees a file of the cache's size under its
        name (opening it checks the key, reading it the content; the
        modification time is no guide: every run that uses a cache sets it)."""
        try:
            return os.stat(self.path).st_size == self.size
        except OSError:
            return False


def _rows_check(batch: Batch) -> int:
    """A cheap check that two processes hold the same rows."""
    c = zlib.crc32(np.ascontiguousarray(batch.labels).view(np.uint8))
    return zlib.crc32(np.ascontiguousarray(batch.indptr).view(np.uint8), c)


# a worker's rows, by CacheRows.token (oldest first)
_HELD: OrderedDict[str, Batch] = OrderedDict()


def rows_of(data) -> Batch:
    """The rows a task trains or scores on: a Batch sent as it is, or the
    rows of a CacheRows, read from the cache file once per process."""
    if not isinstance(data, CacheRows):
        return data
    held = _HELD.get(data.token)
    if held is not None:
        _HELD.move_to_end(data.token)
        return held
    from .data.cache import CacheFile, CacheInvalid
    from .data.dataset import _from_meta
    from .data.idmap import IdMap

    if not data.visible():
        raise ClusterError(f"{data.path}: the cache of the rows is not readable on this worker "
                           "(or changed since the run began)")
    try:
        cf = CacheFile(data.path, data.key)
    except CacheInvalid as exc:
        raise ClusterError(f"{data.path}: cannot read the cache on a worker: {exc}") from None
    try:
        if cf.digest != data.digest:
            raise ClusterError(f"{data.path}: the cache on a worker holds other rows than the driver's")
        ds = _from_meta(cf.meta, cache=cf)
        ds.task, ds.label_map, ds.digest = data.task, data.label_map, cf.digest
        if data.ids is not None:
            ds.use_id_map(IdMap(data.ids))
        batch = ds.rows_in_memory(data.start, data.stop, data.compact)
    finally:
        cf.close()
    batch = Batch(batch.labels, batch.indptr, batch.fields, batch.features, batch.values, None, batch.weights)
    if (batch.n_rows, batch.nnz, _rows_check(batch)) != (data.n_rows, data.nnz, data.check):
        raise ClusterError(f"{data.path}: the rows a worker read from the cache differ from the driver's")
    _HELD[data.token] = batch
    while len(_HELD) > HELD_DATASETS:
        _HELD.popitem(last=False)
    return batch


def _sees(ref: CacheRows) -> bool:
    """(On every worker) whether the worker can read the cache of `ref`."""
    return ref.visible()


def _warm_worker(data: list, model: list, block: list, room: int = 0) -> None:
    """(On each worker, before the first round) read the rows of `data`
    and fault in pooled buffers for arrays of the (shape, dtype) of
    `model` and two of `block` (the first rounds reuse them).  Where the heap
    keeps what is freed (a local:N worker, see WORKER_MALLOC), also fault
    in `room` bytes of it and free them again: the buffers Dask receives
    the first round's blocks in are then made of memory already faulted in,
    as every later round's are."""
    for d in data:
        rows_of(d)
    # (two buffers of a block: a round merges into one while the other
    # holds the block it started from)
    held = [_arrays_like(shapes) for shapes in (model, block, block)]
    for arrays in held:
        for a in arrays:
            a[...] = 0
    del held
    if room and os.environ.get("MALLOC_MMAP_MAX_") == "0":
        np.ones(room, np.uint8)


def _forget(tokens: list[str]) -> None:
    """(On every worker, when a run ends) let go of the run's rows and of
    the pooled buffers."""
    for token in tokens:
        _HELD.pop(token, None)
    with _POOL_LOCK:
        _POOL.clear()


def _where() -> str:
    """The address of the worker running the calling task ("" elsewhere)."""
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return ""


# ---------------------------------------------------------------------------
# the tasks
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
    return np.flatnonzero(_changed_mask(before, after))


def _changed_mask(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Whether each row of a 2-d array has other bits in `after`: compiled,
    each row up to its first difference (_kernels.changed_row_mask), or
    with MASK_KERNEL False as the widest integers that tile a row,
    MERGE_ROWS rows at a time."""
    n = before.shape[0]
    out = np.zeros(n, bool)
    row_bytes = before.shape[1] * before.itemsize if before.ndim > 1 else before.itemsize
    if n == 0 or row_bytes == 0:
        return out
    if MASK_KERNEL:
        _kernels.changed_row_mask(np.ascontiguousarray(before).reshape(n, -1).view(np.uint8),
                                  np.ascontiguousarray(after).reshape(n, -1).view(np.uint8), out.view(np.uint8))
        return out
    kind = next(t for t in (np.uint64, np.uint32, np.uint16, np.uint8) if row_bytes % np.dtype(t).itemsize == 0)
    x = np.ascontiguousarray(before).reshape(n, -1).view(kind)
    y = np.ascontiguousarray(after).reshape(n, -1).view(kind)
    for lo in range(0, n, MERGE_ROWS):
        ne = x[lo : lo + MERGE_ROWS] != y[lo : lo + MERGE_ROWS]
        m = out[lo : lo + MERGE_ROWS]
        for col in range(ne.shape[1]):
            m |= ne[:, col]
    return out


def train_piece(model: tuple[np.ndarray, ...], cfg: Config, spec: ModelSpec, hot: tuple | None,
                rows: Batch, weights: np.ndarray | None, total_steps: int, step0: int,
                ftrl_alpha: float | None = None):
    """One worker's part of a round when the driver holds the model (an
    InlineRunner): train a copy of `model` (B, L, F, R) on all of `rows` in
    order, the first being step step0 of the run.  Returns ([(indices, rows)
    of each array that the pass changed], (loss sum, weight sum, rows
    skipped, position of the row that stopped the pass or -1), seconds)."""
    t0 = time.perf_counter()
    arrays = []
    for a in model:     # the round's model may be shared by other tasks: train a copy
        mine = aligned_zeros(a.shape, a.dtype)
        mine[...] = a
        arrays.append(mine)
    backend = CpuBackend.from_arrays(cfg, spec, tuple(arrays))
    backend.hot, backend.hot_sync = hot or (None, None)
    backend.total_steps = total_steps
    if ftrl_alpha is not None:      # (see train_part)
        _ftrl_rate(backend, arrays, cfg.ftrl_alpha)
    sums = backend.train_slice(rows, np.arange(rows.n_rows, dtype=np.int64), weights, step0)
    if ftrl_alpha is not None:
        _ftrl_rate(backend, arrays, ftrl_alpha, base=model)
    changes = []
    for before, after in zip(model, arrays):
        idx = changed_rows(before, after)
        changes.append((idx, after[idx]))
    return changes, tuple(sums), time.perf_counter() - t0


# Large arrays a worker allocates every round (its copy of the model, the
# merged blocks) are taken from a small pool of buffers and reused once no
# array uses them any more: fresh memory costs a page fault per page (and,
# with transparent huge pages, compaction) every round.
POOL_BUFFERS = 6
_POOL: list[np.ndarray] = []
_POOL_LOCK = threading.Lock()


def _refs(buf: np.ndarray) -> int:
    return sys.getrefcount(buf)


def _unused_refs() -> int:
    """_refs() of a pooled buffer that no array uses (this very call pattern)."""
    pool = [np.zeros(1, np.uint8)]
    for buf in pool:
        return _refs(buf)


_UNUSED = _unused_refs()


def _buffer(nbytes: int) -> np.ndarray:
    """A 64-byte aligned uint8 array of nbytes whose memory no live array
    uses: a pooled one when one is free, else a new one (pooled while
    there is room).  Its contents are arbitrary."""
    size = nbytes + 64
    with _POOL_LOCK:
        buf = None
        for cand in _POOL:
            if cand.shape[0] == size and _refs(cand) <= _UNUSED:
                buf = cand
                break
        if buf is None:
            buf = np.empty(size, np.uint8)
            if len(_POOL) < POOL_BUFFERS:
                _POOL.append(buf)
        offset = (-buf.ctypes.data) % 64
        return buf[offset : offset + nbytes]


def _arrays_like(templates) -> tuple[np.ndarray, ...]:
    """New arrays of the (shape, dtype) of `templates`, 64-byte aligned, in one pooled buffer."""
    spans, total = [], 0
    for shape, dtype in templates:
        n = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        spans.append((total, n))
        total += n + (-n % 64)
    buf = _buffer(max(total, 1))
    return tuple(buf[o : o + n].view(dtype).reshape(shape) for (o, n), (shape, dtype) in zip(spans, templates))


def _assemble(blocks) -> tuple[np.ndarray, ...]:
    """The model (B, L, F, R) as new arrays, from its blocks in order."""
    shapes = []
    for i in range(len(ARRAYS)):
        parts = [b[i] for b in blocks]
        shapes.append(((sum(p.shape[0] for p in parts),) + parts[0].shape[1:], parts[0].dtype))
    out = _arrays_like(shapes)
    for i, a in enumerate(out):
        lo = 0
        for b in blocks:
            p = b[i]
            a[lo : lo + p.shape[0]] = p
            lo += p.shape[0]
    return out


def _part(base: np.ndarray, after: np.ndarray):
    """What a worker sends of one array's block: (None, the block, a bit per
    row: whether it changed, np.packbits) when most rows changed, else
    (int32 indices of the changed rows, those rows, None)."""
    mask = _changed_mask(base, after)
    n = int(np.count_nonzero(mask))
    row_bytes = after.shape[1] * after.itemsize if after.ndim > 1 else after.itemsize
    if n * (row_bytes + 4) >= 0.9 * after.shape[0] * row_bytes:
        return None, after, np.packbits(mask)
    idx = np.flatnonzero(mask).astype(np.int32)
    return idx, after[idx], None


def _unpacked(packed: np.ndarray, n: int) -> np.ndarray:
    """_part's bit per row as a bool array of n rows."""
    return np.unpackbits(packed, count=n).view(bool)


def train_part(data, order, weights, cfg: Config, spec: ModelSpec, hot: tuple | None, total_steps: int,
               step0: int, ftrl_alpha: float | None, *blocks):
    """One worker's part of a round (a pure function of its arguments):
    train the model made of `blocks` (the round's merged blocks, in order)
    on the rows `order` of rows_of(data) (None: all of them, in order), the
    first being step step0 of the run.  ftrl_alpha: the run's FTRL rate
    when cfg's is W times it (see _ftrl_rate), else None.

    Returns (stats, parts): stats = ((loss sum, weight sum, rows skipped,
    position of the row that stopped the pass or -1), seconds training,
    seconds in all, rows, worker address, bytes of each part, {"load",
    "copy", "train", "parts": seconds}); parts[r] = the four arrays' rows
    of block r as _part sends them."""
    t0 = time.perf_counter()
    batch = rows_of(data)
    if order is None:
        order = np.arange(batch.n_rows, dtype=np.int64)
    t1 = time.perf_counter()
    arrays = _assemble(blocks)
    t2 = time.perf_counter()
    backend = CpuBackend.from_arrays(cfg, spec, arrays)
    backend.hot, backend.hot_sync = hot or (None, None)
    backend.total_steps = total_steps
    if ftrl_alpha is not None:
        _ftrl_rate(backend, arrays, cfg.ftrl_alpha)
    sums = backend.train_slice(batch, order, weights, step0)
    t3 = time.perf_counter()
    parts, offsets = [], [0] * len(ARRAYS)
    for block in blocks:
        part = []
        mine = [a[o : o + base.shape[0]] for a, o, base in zip(arrays, offsets, block)]
        if ftrl_alpha is not None:      # back to the run's rate
            _ftrl_rate(backend, mine, ftrl_alpha, base=block)
        for i, base in enumerate(block):
            part.append(_part(base, mine[i]))
            offsets[i] += base.shape[0]
        parts.append(tuple(part))
    sizes = [_nbytes(p) for p in parts]
    t4 = time.perf_counter()
    times = {"load": t1 - t0, "copy": t2 - t1, "train": t3 - t2, "parts": t4 - t3}
    return (tuple(sums), t3 - t2, t4 - t0, len(order), _where(), sizes, times), parts


def score_part(data, lo: int, hi: int, cfg: Config, spec: ModelSpec, threads: int, *blocks) -> np.ndarray:
    """Raw scores of the rows lo:hi of rows_of(data) by the model made of `blocks`."""
    batch = rows_of(data)
    if (lo, hi) != (0, batch.n_rows):
        batch = batch.rows(lo, hi)
    host = CpuBackend.from_arrays(cfg, spec, _assemble(blocks))
    return host.scores(batch, threads)


def _finite_block(cfg: Config, spec: ModelSpec, block) -> bool:
    return CpuBackend.from_arrays(cfg, spec, block).all_finite()


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


def _ftrl_z(host: CpuBackend, name: str, w: np.ndarray, n: np.ndarray, alpha: float) -> np.ndarray:
    """The z of FTRL's closed form that gives the weights w (w != 0) for
    accumulators n and the rate alpha (float64)."""
    l1, l2 = _ftrl_penalties(host, name)
    w64 = w.astype(np.float64)
    return -(w64 * ((host.cfg.ftrl_beta + np.sqrt(n.astype(np.float64))) / alpha + l2) + np.sign(w64) * l1)


def _ftrl_rate(host: CpuBackend, arrays, alpha: float, base=None) -> None:
    """Rewrite the z of every FTRL weight of `arrays` (B, L, F, R, or
    blocks of them) for the rate alpha, its weight kept (see the module's
    doc: workers of a round of W pieces step at W times the rate).  With
    `base` (the arrays as they were sent), an element whose weight and n are
    still those of base takes its z back from base, bit for bit: a row
    that the worker did not train stays unchanged."""
    for i, a in enumerate(arrays):
        if a.size == 0:
            continue
        name = ARRAYS[i]
        w, z, n = _slots(host, name, a)
        if FTRL_KERNEL and all(x.dtype == np.float32 for x in (w, z, n)):
            l1, l2 = _ftrl_penalties(host, name)
            _kernels.ftrl_rate_f32(w, z, n, alpha, host.cfg.ftrl_beta, l1, l2,
                                   *(() if base is None else _slots(host, name, base[i])))
            continue
        new = np.where(w != 0, _ftrl_z(host, name, w, n, alpha), z)
        if base is not None:
            w0, z0, n0 = _slots(host, name, base[i])
            new = np.where((w == w0) & (n == n0), z0, new)
        z[...] = new


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
    rows_of_, masks = [], []
    for idx, rows in zip(touched, (r for _, r in changes)):
        pos = np.searchsorted(union, idx)
        full = start.copy()
        full[pos] = rows
        mask = np.zeros(len(union), bool)
        mask[pos] = True
        rows_of_.append(full)
        masks.append(mask)
    return union, _merge_rows(host, name, start, rows_of_, masks, rule)


def _merge_rows(host: CpuBackend, name: str, start: np.ndarray, rows: list[np.ndarray], masks: list[np.ndarray],
                rule: str) -> np.ndarray:
    """The merged rows: start (the rows as the round began), rows[i] (worker
    i's rows, equal to start where it did not change them) and masks[i]
    (which rows worker i changed), workers in the fixed order.  Every step
    works row by row, so merging a block piece by piece gives the same bits."""
    out = start.copy()
    if rule == "average":
        # every word's plain mean over all workers (the untouched keep the start)
        for slot_out, *slot_in in zip(_slots(host, name, out), *(_slots(host, name, r) for r in rows)):
            slot_out[...] = np.mean([x.astype(np.float64) for x in slot_in], axis=0)
        return out
    counts = sum(m.astype(np.int64) for m in masks) if len(masks) > 1 else masks[0].astype(np.int64)
    # a row only one worker changed: that worker's row as it is
    for full, mask in zip(rows, masks):
        one = mask & (counts == 1)
        out[one] = full[one]
    many = counts > 1
    if not many.any():
        return out
    sel = slice(None) if many.all() else np.flatnonzero(many)
    dense = all(bool(m[sel].all()) for m in masks)     # every worker changed every selected row

    def wide(a: np.ndarray) -> list[np.ndarray]:
        """The slots of the selected rows of `a` in float64 (whole rows at
        once where the words are all float32 or all float64)."""
        if host.half:
            return [s[sel].astype(np.float64) for s in _slots(host, name, a)]
        return _slots(host, name, a[sel].astype(np.float64))

    x0 = wide(start)
    xs = [wide(r) for r in rows]
    # (rows, 1): whether the worker touched the row (1.0 everywhere when all did)
    hit = [1.0 if dense else m[sel].astype(np.float64)[:, None] for m in masks]
    n_hit = float(len(masks)) if dense else sum(hit)
    dst = _slots(host, name, out)
    opt = host.cfg.optimizer

    def mean_move(slot: int) -> np.ndarray:
        return sum(h * (x[slot] - x0[slot]) for h, x in zip(hit, xs)) / n_hit

    if opt in ("adagrad", "rowwise-adagrad"):
        dG = [x[1] - x0[1] for x in xs]                       # (rows, kp) or (rows, 1) per block
        total = sum(dG)
        weighted = sum(g * (x[0] - x0[0]) for g, x in zip(dG, xs))
        positive = total > 0
        if positive.all():
            move = weighted / total
        else:
            with np.errstate(invalid="ignore", divide="ignore"):
                move = np.where(positive, weighted / np.where(positive, total, 1.0), mean_move(0))
        dst[0][sel] = x0[0] + move
        dst[1][sel] = x0[1] + total
    elif opt == "ftrl":
        # the workers stepped at W times the rate (worker_config): as
        # AdaGrad's, each weight moves by the workers' moves weighted by their
        # increments of n, n grows by their sum, and z is the closed form's
        # for that weight (the mean of the workers' z where it is 0)
        dn = [x[2] - x0[2] for x in xs]
        total = sum(dn)
        weighted = sum(d * (x[0] - x0[0]) for d, x in zip(dn, xs))
        positive = total > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            move = np.where(positive, weighted / np.where(positive, total, 1.0), mean_move(0))
        w = x0[0] + move
        n = x0[2] + total
        w32 = w.astype(dst[0].dtype)
        dst[0][sel] = w32
        dst[2][sel] = n
        zs = sum(x[1] for x in xs) / len(xs)
        dst[1][sel] = np.where(w32 != 0, _ftrl_z(host, name, w32, n.astype(np.float32), host.cfg.ftrl_alpha), zs)
    else:   # sgd, adam: the mean move of the workers that touched the row
        for slot in range(1 + host.ns):
            dst[slot][sel] = x0[slot] + mean_move(slot)
    return out


def _merge_part(host: CpuBackend, name: str, base: np.ndarray, parts: list, rule: str,
                out: np.ndarray | None = None) -> np.ndarray:
    """Block rows of one array merged from the workers' parts (see _part),
    written into `out` (default: a new array).  Rows one worker changed are
    copied; the rows several changed are merged MERGE_ROWS at a time
    (_merge_rows)."""
    if out is None:
        out = np.empty_like(base)
    if len(parts) == 1:     # one worker: its rows are the result
        idx, rows, _ = parts[0]
        if idx is None:
            out[...] = rows
        else:
            out[...] = base
            out[idx] = rows
        return out
    if (rule != "average" and host.cfg.optimizer in ("adagrad", "rowwise-adagrad") and not host.half
            and (any(p[0] is None for p in parts) or _compiled_merge(base, parts))):
        # whole blocks (most rows changed): on runs of rows rather than gathered
        # rows; float32 words: the compiled loop, whole blocks or changed rows
        return _merge_adagrad(host, name, base, parts, out)
    idxs, rowss = [], []
    for idx, rows, packed in parts:
        if idx is None:     # the whole block: which rows it changed, and those rows
            idx = np.flatnonzero(_unpacked(packed, base.shape[0]))
            rows = rows[idx]
        idxs.append(np.asarray(idx, np.int64))
        rowss.append(rows)
    out[...] = base
    if rule == "average":   # (comparisons only) every worker's row counts, changed or not
        union, merged = merge_array(host, name, base, list(zip(idxs, rowss)), rule)
        out[union] = merged
        return out
    counts = np.bincount(np.concatenate(idxs), minlength=base.shape[0])
    for idx, rows in zip(idxs, rowss):
        one = counts[idx] == 1
        out[idx[one]] = rows[one]
    many = np.flatnonzero(counts > 1)
    if len(many) == 0:
        return out
    # for each worker, whether it changed each row, and where the row is among its rows
    touched, rank = [], []
    for idx in idxs:
        t = np.zeros(base.shape[0], bool)
        t[idx] = True
        touched.append(t)
        rank.append(np.cumsum(t) - 1)
    for lo in range(0, len(many), MERGE_ROWS):
        sel = many[lo : lo + MERGE_ROWS]
        if sel[-1] - sel[0] == len(sel) - 1:    # a run of rows: slices, not copies
            sel = slice(int(sel[0]), int(sel[-1]) + 1)
        start = base[sel]
        mine, masks = [], []
        for t, rk, rows in zip(touched, rank, rowss):
            hit = t[sel]
            pos = rk[sel]
            if hit.all():
                mine.append(rows[pos[0] : pos[-1] + 1] if pos[-1] - pos[0] == len(pos) - 1 else rows[pos])
            else:
                r = start.copy()
                r[hit] = rows[pos[hit]]
                mine.append(r)
            masks.append(hit)
        out[sel] = _merge_rows(host, name, start, mine, masks, rule)
    return out


def _compiled_merge(base: np.ndarray, parts: list) -> bool:
    """Whether _merge_adagrad runs the compiled loop on these parts (float32 words)."""
    return (MERGE_KERNEL and base.dtype == np.float32 and base.ndim == 2 and base.shape[0] > 0
            and base.flags.c_contiguous
            and all(p[1].dtype == np.float32 and p[1].ndim == 2 and p[1].flags.c_contiguous for p in parts))


def _merge_adagrad(host: CpuBackend, name: str, base: np.ndarray, parts: list, out: np.ndarray) -> np.ndarray:
    """_merge_part for AdaGrad (float32 or float64 words): the same rule and
    the same bits as _merge_rows, computed on runs of MERGE_ROWS rows in
    place (every row, then each row's case picked by masks) instead of on
    gathered copies: no row is gathered or scattered by index."""
    n = base.shape[0]
    if _compiled_merge(base, parts):
        # float32 words: the compiled loop (same sums in the same order, same bits)
        w, g = _slots(host, name, base[:1])
        w0, g0 = ((v.__array_interface__["data"][0] - base.__array_interface__["data"][0]) // 4 for v in (w, g))
        idx32 = [None if p[0] is None else np.ascontiguousarray(p[0], np.int32) for p in parts]
        _kernels.merge_adagrad_f32(base, out, [(i, r, b) for i, (_, r, b) in zip(idx32, parts)],
                                   w0, w.shape[1], g0, g.shape[1])
        return out
    tops = [np.zeros(0, np.int64) if p[0] is None else np.asarray(p[0], np.int64) for p in parts]
    changed = [None if p[0] is not None else _unpacked(p[2], n) for p in parts]
    for lo in range(0, n, MERGE_ROWS):
        hi = min(n, lo + MERGE_ROWS)
        start = base[lo:hi]
        mine, masks = [], []
        for (idx, rows, _), top, whole in zip(parts, tops, changed):
            if idx is None:
                r = rows[lo:hi]
                m = whole[lo:hi]
            else:
                a, b = np.searchsorted(top, (lo, hi))
                at = top[a:b] - lo
                r = start.copy()
                r[at] = rows[a:b]
                m = np.zeros(hi - lo, bool)
                m[at] = True
            mine.append(r)
            masks.append(m)
        counts = sum(m.astype(np.int32) for m in masks)
        dst = out[lo:hi]
        many = counts > 1
        every = bool(many.all())
        if not every:
            dst[...] = start
            for r, m in zip(mine, masks):
                one = m & (counts == 1)
                if one.any():
                    dst[one] = r[one]
            if not many.any():
                continue
        wide = start.astype(np.float64)
        x0 = _slots(host, name, wide)
        total = weighted = None
        moves = []
        for r in mine:      # (the same sums, in the same order, as _merge_rows's)
            d = _slots(host, name, r.astype(np.float64) - wide)     # each slot's move
            dw, dG = d[0], d[1]
            if total is None:
                total, weighted = dG + 0.0, dG * dw     # (+ 0.0: a sum from 0, as sum() starts)
                weighted += 0.0
            else:
                total += dG
                weighted += dG * dw
            moves.append(dw)
        positive = total > 0
        if bool(positive.all()):
            move = weighted
            move /= total
        else:
            move = weighted / np.where(positive, total, 1.0)
            if not positive[many].all():
                # where no accumulator grew: the plain mean of the moves of the workers that touched the row
                hit = [m.astype(np.float64)[:, None] for m in masks]
                n_hit = np.maximum(sum(hit), 1.0)
                move = np.where(positive, move, sum(h * dw for h, dw in zip(hit, moves)) / n_hit)
        move += x0[0]
        total += x0[1]
        w = _slots(host, name, dst)
        if every:
            w[0][...] = move
            w[1][...] = total
        else:
            w[0][many] = move[many]
            w[1][many] = total[many]
    return out


def merge_block(base, parts, cfg: Config, spec: ModelSpec, rule: str):
    """Block r of the next round (a pure function of its arguments): `base`
    (block r as the round began) merged with parts[i] (part r of worker i's
    result, workers in the fixed order).  Returns (the block, (seconds,
    whether every value is finite, bytes of the block))."""
    t0 = time.perf_counter()
    host = CpuBackend.from_arrays(cfg, spec, base)     # the layout (slot views, optimizer)
    outs = _arrays_like([(b.shape, b.dtype) for b in base])
    block = tuple(_merge_part(host, name, b, [p[i] for p in parts], rule, o)
                  for i, (name, b, o) in enumerate(zip(ARRAYS, base, outs)))
    finite = _finite_block(cfg, spec, block)
    return block, (time.perf_counter() - t0, finite, _nbytes(block))


# ---------------------------------------------------------------------------
# the backend
# ---------------------------------------------------------------------------

def shard_bounds(n: int, shards: int) -> np.ndarray:
    """Row bounds of the shards of n rows: `shards` contiguous ranges, the
    first n % shards of them one row longer than the others."""
    q, r = divmod(n, shards)
    sizes = np.full(shards, q, np.int64)
    sizes[:r] += 1
    return np.concatenate([np.zeros(1, np.int64), np.cumsum(sizes)])


def dealt(positions: np.ndarray, n: int, shards: int) -> tuple[np.ndarray, np.ndarray]:
    """For positions of a run's row order over n rows: the shard of each
    (see shard_bounds) and the row of that shard it stands for.  Positions
    are dealt to the shards in turn, position p to shard p % shards as its
    row p // shards, the few after the last whole turn to the longer
    shards: a bijection, so that a run of consecutive positions (an
    unshuffled round) is shared evenly, each shard's rows in their order,
    and a random sample of positions (a shuffled round) as evenly as chance
    has it.  With one shard, position p is row p."""
    p = np.asarray(positions, np.int64)
    q = n // shards
    whole = p < q * shards
    shard = np.where(whole, p % shards, p - q * shards)
    row = np.where(whole, p // shards, q)
    return shard, row


def round_pieces(positions: np.ndarray, n: int, shards: int) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """A round's rows, `positions` of the run's order over n rows, as one
    piece per shard that has some: [(shard, where its rows are in
    `positions`, those rows as rows of the shard), ...] in shard order,
    each shard's rows in the round's order."""
    shard, row = dealt(positions, n, shards)
    # (a stable sort by shard, a radix sort for small integers: one pass, whatever the shards)
    by_shard = np.argsort(shard.astype(np.int16 if shards < 1 << 15 else np.int64), kind="stable")
    ends = np.cumsum(np.bincount(shard, minlength=shards))
    out = []
    for j in range(shards):
        where = by_shard[ends[j - 1] if j else 0 : ends[j]]
        if where.shape[0]:
            out.append((j, where, row[where]))
    return out


def block_cuts(n: int, blocks: int) -> list[int]:
    """Row bounds of `blocks` ranges of n rows, as even as can be."""
    return [n * r // blocks for r in range(blocks + 1)]


class _RoundLost(Exception):
    """A round's result was lost with a worker (the round runs again)."""


def _lost_blocks(blocks: list, spares: list) -> bool:
    """Whether some block was lost (Dask cancelled its future) and has no copy."""
    return any(b.status in ("cancelled", "error", "lost") and not (sp and sp.alive())
               for b, sp in zip(blocks, spares or [None] * len(blocks)))


class _PerWorker:
    """One object scattered to each worker under a key of its own (rows,
    weights): Dask's active memory manager drops the extra replicas of a
    broadcast key, which a lost worker could then take with it; a key per
    worker keeps one copy on each."""

    def __init__(self, futures: dict):
        self.futures = futures      # worker address -> future

    @classmethod
    def scatter(cls, client, obj, workers: list[str]) -> "_PerWorker":
        return cls({w: client.scatter([obj], hash=False, workers=[w])[0] for w in workers})

    def alive(self) -> list:
        """The futures still held (Dask cancels one lost with its worker)."""
        return [f for f in self.futures.values() if f.status == "finished"]

    def on(self, worker: str):
        """The future for a task on `worker`: its own, or one still held elsewhere."""
        mine = self.futures.get(worker)
        if mine is not None and mine.status == "finished":
            return mine
        alive = self.alive()
        return alive[0] if alive else (mine if mine is not None else next(iter(self.futures.values())))


class _Shards:
    """One object per shard of a data set (its rows, a CacheRows of them, or
    its weights), each scattered to the worker of that shard under a key of
    its own (see _PerWorker).  A shard lost with its worker is scattered
    again, from the driver, which holds them all: the tasks of that shard
    then run elsewhere on the same rows."""

    def __init__(self, client, make: Callable[[int], object], n: int, workers: list[str],
                 on_send: Callable[[int], None]):
        self.client, self.make, self.workers, self.on_send = client, make, workers, on_send
        self.futures = [None] * n
        for j in range(n):
            self._send(j)

    def _send(self, j: int):
        obj = self.make(j)
        w = self.workers[j % len(self.workers)]
        if self.futures[j] is not None and w not in self.client.scheduler_info()["workers"]:
            w = None                # its worker is gone: wherever Dask puts it
        self.futures[j] = self.client.scatter([obj], hash=False, workers=None if w is None else [w])[0]
        self.on_send(_nbytes(obj))
        return self.futures[j]

    def on(self, j: int):
        """The future of shard j, scattered again if it was lost."""
        f = self.futures[j]
        return f if f.status == "finished" else self._send(j)


class _Snapshot:
    """The model of one moment kept on the cluster (early stopping's best
    validation): its blocks, gathered only if the driver reads it (a
    checkpoint iterates it as B, L, F, R)."""

    def __init__(self, backend: "DaskBackend"):
        self.backend, self.blocks, self.finite = backend, list(backend._blocks), backend._finite
        self.spares = list(backend._spares)
        self._arrays: tuple[np.ndarray, ...] | None = None

    def __iter__(self):
        if self._arrays is None:
            self._arrays = self.backend._gather(self.backend._live(self.blocks, self.spares))
        return iter(self._arrays)

    def __len__(self) -> int:
        return len(ARRAYS)


class DaskBackend(CpuBackend):
    """The CPU layout trained in rounds by Dask workers (the
    fmcli.backend.Backend interface; see the module's doc).  The model is
    on the driver until the first round, then on the workers in blocks; the
    driver's arrays are brought up to date only when read."""

    runner = None
    merge_rule = "optimizer"
    on_round: Callable[[dict], None] | None = None
    _blocks: list | None = None       # futures of the model's blocks (None: the driver's arrays hold it)
    # Per block, a _PerWorker of its copies, one under a key of its own on
    # every worker (or None): Dask's active memory manager drops the extra replicas of a key
    # (client.replicate's, or a block fetched by a task) within seconds, so a
    # worker lost between two rounds could take the only copy of a block with
    # it; a copy's key has one replica, which it keeps.  Every worker needs
    # every block for its next round anyway: the copies are that all-gather.
    _spares: list = []

    def attach(self, runner, rows_per_round: int) -> "DaskBackend":
        self.runner = runner
        self.rows_per_round = rows_per_round
        self.rounds = 0
        self.merge_seconds = 0.0
        self.task_seconds = 0.0
        self.rows_trained = 0
        self.bytes_moved = 0          # all directions, all rounds (and the driver's pulls)
        self.pulls = 0                # times the driver gathered the model
        self.bytes_sent = 0           # sent by the driver (rows or row positions, the model when it had it)
        self._moved_reported = 0      # bytes_moved when the last round was reported
        self.data_mode = None         # "cache", "shipped" or "rows" (see _data)
        self.last_round: dict | None = None
        self._finite = True           # of the blocks, as their merge found
        self._fresh = True            # the driver's arrays hold the model
        self._bound: dict[int, tuple] = {}     # id(batch) -> (batch, dataset)
        self._sent: dict[int, tuple] = {}      # id(batch or weights) -> (the object, its future, how sent)
        self._tokens: dict[int, set] = {}      # id(batch) -> its shards' CacheRows.token
        self._holders: list[set] = []          # workers that hold each block (bytes estimates)
        self._block_bytes: list[int] = []
        self._homes = list(runner.workers)      # shard j's worker (see _home)
        n = len(self._homes)
        self.n_blocks = n
        self.n_pieces = n             # shards and pieces per round: fixed for the run (see the module's doc)
        self.device = f"dask ({n} worker{'s' if n != 1 else ''})"
        return self

    def worker_config(self, n_pieces: int) -> Config:
        """The configuration the workers of a round of n_pieces pieces train
        with: the run's, with the learning rate scaled by n_pieces where the
        merge averages moves (see the module's doc)."""
        if n_pieces <= 1 or self.merge_rule != "optimizer":
            return self.cfg
        if self.cfg.optimizer == "ftrl":
            return dataclasses.replace(self.cfg, ftrl_alpha=self.cfg.ftrl_alpha * n_pieces)
        return dataclasses.replace(self.cfg, learning_rate=self.cfg.step_size * n_pieces)

    def _ftrl_alpha(self, cfg: Config) -> float | None:
        """The run's FTRL rate when the workers' (cfg) is scaled, else None."""
        return self.cfg.ftrl_alpha if cfg.optimizer == "ftrl" and cfg.ftrl_alpha != self.cfg.ftrl_alpha else None

    @property
    def clustered(self) -> bool:
        """Whether rounds run as Dask tasks with the model kept on the workers
        (an InlineRunner keeps the model here and runs train_piece)."""
        return getattr(self.runner, "client", None) is not None

    # -- the data ------------------------------------------------------------------
    def bind_data(self, train_ds, train_batch: Batch | None, valid_ds=None, valid_batch: Batch | None = None) -> None:
        """Tell the backend which data sets the run loop's whole-data batches
        come from, so that workers read their rows from the cache (or get
        them once) and rounds send only row positions."""
        for ds, batch in ((train_ds, train_batch), (valid_ds, valid_batch)):
            if ds is not None and batch is not None:
                self._bound[id(batch)] = (batch, ds)
        if self.clustered:
            self._warm([b for b in (train_batch, valid_batch) if b is not None])

    def _warm(self, batches: list[Batch]) -> None:
        """Before the first round, as a single process reads its data before
        its first epoch: every worker reads the rows (from the cache, or
        receives them) and makes the memory of its copy of the model and of
        the block it merges ready."""
        client, workers = self.runner.client, self.runner.workers
        data = [d for d in (self._data(b) for b in batches) if d is not None]     # _Shards each
        model = [(a.shape, a.dtype) for a in self.arrays()]
        cuts = self._cuts()
        futures = []
        # Room in the heap for what a worker allocates by the end of its first
        # rounds: the blocks of the placed model, the others' parts of its
        # block, the copies of the merged blocks, the merge's temporaries and
        # Dask's receive buffers.  Measured (Dask's task stream, 2 workers,
        # BENCH.md's 161 MB model): with 5 blocks' room or 8 (4 model sizes)
        # the transfers of the first two rounds still took 0.22 s each (pages
        # touched for the first time) against 0.03-0.05 s later; with 1 GiB
        # all took 0.02-0.05 s.  So: 8 model sizes, at most what the heap
        # keeps free (WORKER_MALLOC), which would give the rest back at once.
        model_bytes = sum(a.nbytes for a in self.arrays())
        room = min(WORKER_MALLOC["MALLOC_TRIM_THRESHOLD_"], 8 * model_bytes)
        for j, w in enumerate(workers):
            r = j % self.n_blocks
            block = [((c[r + 1] - c[r],) + a.shape[1:], a.dtype) for a, c in zip(self.arrays(), cuts)]
            futures.append(client.submit(_warm_worker, [d.on(j % self.n_pieces) for d in data], model, block, room,
                                         key=f"fmcli-warm-{uuid.uuid4().hex[:12]}",
                                         workers=[w], allow_other_workers=True, pure=False))
        client.gather(futures)

    def _data(self, batch: Batch):
        """What a task is given to find `batch`'s rows on its worker (a
        _Shards of futures, one per shard: of a CacheRows of the shard's rows
        or of the rows themselves), or None for a batch the run did not bind
        (a chunk of streamed data: rounds then send their rows).  Each
        worker holds its shard of the rows only (shard_bounds)."""
        sent = self._sent.get(id(batch))
        if sent is not None and sent[0] is batch:
            return sent[1]
        bound = self._bound.get(id(batch))
        if bound is None or bound[0] is not batch or batch.n_rows == 0:
            return None
        client, workers = self.runner.client, self.runner.workers
        cuts = shard_bounds(batch.n_rows, self.n_pieces)
        ds = bound[1]
        ref = CacheRows.of(ds, batch, self.compact_rows, 0, 0)    # (no rows: only whether workers see the file)
        if ref is not None:
            seen = client.run(_sees, ref, workers=workers)
            if not all(seen.get(w) for w in workers):
                ref = None
        if ref is not None:
            def make(j: int) -> CacheRows:
                shard = CacheRows.of(ds, batch, self.compact_rows, int(cuts[j]), int(cuts[j + 1]))
                if shard is None:
                    raise ClusterError(f"{ref.path}: the cache of the rows is gone; a worker lost "
                                       "with its shard cannot read it again")
                self._tokens.setdefault(id(batch), set()).add(shard.token)
                return shard
        else:
            def make(j: int) -> Batch:
                rows = batch.rows(int(cuts[j]), int(cuts[j + 1]))
                return Batch(rows.labels, rows.indptr, rows.fields, rows.features, rows.values, None,
                             rows.weights)
        shards = _Shards(client, make, self.n_pieces, self._homes, self._count_sent)
        self._sent[id(batch)] = (batch, shards, "cache" if ref is not None else "shipped")
        return shards

    def _count_sent(self, nbytes: int) -> None:
        self.bytes_moved += nbytes
        self.bytes_sent += nbytes
        self.runner.bytes_out += nbytes

    def _weights(self, weights: np.ndarray | None):
        """A _Shards of the shards of `weights` (of a bound batch's rows), or None."""
        if weights is None:
            return None
        sent = self._sent.get(id(weights))
        if sent is not None and sent[0] is weights:
            return sent[1]
        cuts = shard_bounds(weights.shape[0], self.n_pieces)
        shards = _Shards(self.runner.client, lambda j: weights[cuts[j] : cuts[j + 1]], self.n_pieces,
                         self._homes, self._count_sent)
        self._sent[id(weights)] = (weights, shards, None)
        return shards

    def _home(self, j: int, workers: list[str]) -> str:
        """The worker of shard j: the one it was given at the start while
        it is alive (it holds the shard's rows), else one of `workers`."""
        w = self._homes[j] if j < len(self._homes) else None
        return w if w in workers else workers[j % len(workers)]

    # -- where the model is ----------------------------------------------------------
    def _cuts(self) -> list[list[int]]:
        return [block_cuts(a.shape[0], self.n_blocks) for a in self.arrays()]

    def _to_cluster(self) -> None:
        """Send the driver's arrays to the workers, block r to worker r."""
        if self._blocks is not None:
            return
        workers = self.runner.workers
        cuts = self._cuts()
        blocks = [tuple(np.ascontiguousarray(a[c[r] : c[r + 1]]) for a, c in zip(self.arrays(), cuts))
                  for r in range(self.n_blocks)]
        futures = []
        for r, block in enumerate(blocks):
            [f] = self.runner.client.scatter([block], hash=False, workers=[workers[r % len(workers)]])
            futures.append(f)
        self._spares = self._keep_spares(futures, workers)   # (see _spares)
        if _lost_blocks(futures, self._spares):
            # a worker lost already: the driver still has the model, send it again
            self.runner.client.cancel(futures + [f for sp in self._spares if sp for f in sp.futures.values()])
            self._spares = []
            raise _RoundLost("a block of the model was lost with its worker before it had a copy")
        self._blocks = futures
        self._block_bytes = [_nbytes(b) for b in blocks]
        self._holders = self._held_at(workers)
        self.bytes_moved += sum(self._block_bytes)
        self.bytes_moved += sum(b * (len(h) - 1) for b, h in zip(self._block_bytes, self._holders))
        self.bytes_sent += sum(self._block_bytes)
        self.runner.bytes_out += sum(self._block_bytes)
        self._fresh = True

    def _gather(self, blocks) -> tuple[np.ndarray, ...]:
        """The model of `blocks` on the driver (new arrays)."""
        got = self.runner.client.gather(list(blocks))
        self.pulls += 1
        moved = sum(_nbytes(b) for b in got)
        self.bytes_moved += moved
        self.runner.bytes_back += moved
        return _assemble(got)

    def _to_host(self) -> None:
        """Bring the driver's arrays up to date (they stay valid until the next round)."""
        if self._fresh or self._blocks is None:
            return
        self._revive()
        for a, b in zip(self.arrays(), self._gather(self._blocks)):
            a[...] = b
        self._fresh = True

    def _drop_blocks(self) -> None:
        """The driver's arrays are about to change: they hold the model from now on."""
        self._to_host()
        self._blocks = None
        self._spares = []
        self._fresh = True

    def _fetch_bytes(self, worker: str) -> int:
        """Bytes of the blocks a task on `worker` has to fetch (and note that it then holds them)."""
        moved = 0
        for r, holders in enumerate(self._holders):
            if worker not in holders:
                moved += self._block_bytes[r]
                holders.add(worker)
        return moved

    def _keep_spares(self, blocks: list, workers: list[str]) -> list:
        """A copy of every block under its own key on every worker (see
        _spares), made before returning: a _PerWorker per block (None with
        one worker); a worker lost meanwhile has none."""
        return self._await_spares(self._copy_blocks(blocks, workers), workers)

    def _copy_blocks(self, blocks: list, workers: list[str]) -> list:
        """_keep_spares' copy tasks, submitted (one list per block, in
        `workers` order; None with one worker).  A round submits them with
        its merges, so that a block is copied as soon as it is merged."""
        if len(workers) < 2:
            return [None] * len(blocks)
        client = self.runner.client
        tag = uuid.uuid4().hex[:12]
        # (each on its worker only: a copy beside another would be no copy)
        return [[client.submit(_same, b, key=f"fmcli-spare-{tag}-{r}-{j}", workers=[w],
                               allow_other_workers=False, pure=False) for j, w in enumerate(workers)]
                for r, b in enumerate(blocks)]

    def _await_spares(self, spares: list, workers: list[str]) -> list:
        """The copies of _copy_blocks once made (see _keep_spares)."""
        if len(workers) < 2:
            return [None] * len(spares)
        from distributed import wait
        from distributed.client import FuturesCancelledError

        client = self.runner.client
        flat = [(c, w) for copies in spares for c, w in zip(copies, workers)]
        with client.as_current():
            # a copy whose worker is lost meanwhile is given up (a task bound
            # to a worker that is gone would wait for it for ever)
            while True:
                pending = [c for c, _ in flat if c.status == "pending"]
                if not pending:
                    break
                try:
                    wait(pending, timeout=1.0)
                except FuturesCancelledError:
                    continue
                except TimeoutError:
                    present = set(client.scheduler_info()["workers"])
                    gone = [c for c, w in flat if c.status == "pending" and w not in present]
                    if gone:
                        client.cancel(gone)
                        until = time.monotonic() + 10.0     # (seen when the scheduler answers)
                        while any(c.status == "pending" for c in gone) and time.monotonic() < until:
                            time.sleep(0.01)
                        if any(c.status == "pending" for c in gone):
                            raise _RoundLost("a worker was lost while the round's blocks were copied")
        return [_PerWorker({w: c for c, w in zip(copies, workers) if c.status == "finished"}) for copies in spares]

    def _live(self, blocks: list, spares: list) -> list:
        """`blocks`, each one that no worker holds any more (Dask cancels a
        future whose only copy was lost with its worker) replaced by a copy."""
        if len(spares) != len(blocks) or not any(spares):
            return list(blocks)
        from distributed.client import FuturesCancelledError

        who = None
        for _ in range(2):      # (a future cancelled while asking: ask again without it)
            held = [f for f in (*blocks, *(f for sp in spares if sp for f in sp.futures.values()))
                    if f.status == "finished"]
            try:
                who = self.runner.client.who_has(held) if held else {}
                break
            except FuturesCancelledError:
                continue

        def alive(f) -> bool:
            return f.status == "finished" and (who is None or bool(who.get(f.key)))

        return [b if alive(b) or not sp else next((c for c in sp.futures.values() if alive(c)), b)
                for b, sp in zip(blocks, spares)]

    def _revive(self) -> None:
        """Blocks lost with a worker are taken from their spares (which then
        are the blocks, without spares until the next round makes them)."""
        if self._blocks is None:
            return
        live = self._live(self._blocks, self._spares)
        for r, (old, new) in enumerate(zip(self._blocks, live)):
            if new is not old:
                logging.getLogger(__name__).warning("block %d was lost with its worker: using its copy", r)
                self._blocks[r] = new

    def _blocks_on(self, worker: str) -> list:
        """The block futures for a task on `worker`: the spares it holds
        where it holds them (no fetch), else the blocks."""
        if len(self._spares) != len(self._blocks):
            return list(self._blocks)
        return [sp.on(worker) if sp and sp.alive() else b for b, sp in zip(self._blocks, self._spares)]

    def _held_at(self, workers: list[str]) -> list[set]:
        """The workers that hold each block: the one it was merged or sent to, and its copies'."""
        return [{workers[r % len(workers)]} | (set(sp.futures) if sp else set())
                for r, sp in zip(range(len(self._blocks)), self._spares or [None] * len(self._blocks))]

    def place_model(self) -> None:
        """(Before the run loop, once the starting model is final: drawn,
        warm-started or resumed) send it to the workers, as a single process
        has its model in memory before its first epoch.  A later change on
        the driver (a restore) drops these blocks and sends the arrays again."""
        if not self.clustered:
            return
        for attempt in range(ROUND_TRIES):
            try:
                self._to_cluster()
                return
            except _RoundLost:
                if attempt == ROUND_TRIES - 1:
                    raise ClusterError(f"the model could not be placed on the workers in {ROUND_TRIES} "
                                       "tries: workers were lost") from None

    # -- the Backend interface ---------------------------------------------------------
    def warm_start(self, parent: Model, path: str, say: Callable[[str], None]) -> int:
        self._drop_blocks()
        return super().warm_start(parent, path, say)

    def export_state(self) -> tuple[np.ndarray, ...]:
        self._to_host()
        return self.arrays()

    def snapshot(self, into=None):
        if self.clustered and self._blocks is not None:
            return _Snapshot(self)
        return super().snapshot(into)

    def restore(self, arrays) -> None:
        if isinstance(arrays, _Snapshot) and arrays.backend is self:
            self._blocks, self._finite, self._fresh = list(arrays.blocks), arrays.finite, False
            self._spares = list(arrays.spares)
            self._holders = self._held_at(self.runner.workers)
            return
        self._drop_blocks()
        super().restore(arrays)

    def all_finite(self) -> bool:
        if self._blocks is not None and not self._fresh:
            return self._finite
        return super().all_finite()

    def scores(self, batch: Batch, threads: int) -> np.ndarray:
        """Raw scores; the validation rows are scored on the workers, by the
        merged model where it is."""
        data = self._data(batch) if self.clustered and self._blocks is not None else None
        if data is None:
            self._to_host()
            return super().scores(batch, threads)
        client, workers = self.runner.client, self.runner.workers
        self._revive()
        tag = uuid.uuid4().hex[:12]
        futures = []
        cuts = shard_bounds(batch.n_rows, self.n_pieces)
        for j in range(self.n_pieces):      # each worker its shard of the rows
            n = int(cuts[j + 1] - cuts[j])
            if n == 0:
                continue
            w = self._home(j, workers)
            self.bytes_moved += self._fetch_bytes(w) + n * 8 * self.n_classes
            futures.append(client.submit(score_part, data.on(j), 0, n, self.cfg, self.spec,
                                         self.cfg.threads,
                                         *self._blocks_on(w), key=f"fmcli-score-{tag}-{j}",
                                         workers=[w], allow_other_workers=True, retries=3, pure=False))
        try:
            parts = client.gather(futures)
        finally:
            client.cancel(futures)
        return np.concatenate(parts)

    def train_slice(self, batch: Batch, order: np.ndarray, weights: np.ndarray | None,
                    step0: int) -> tuple[float, float, int, int]:
        """The rows `order` in rounds of rows_per_round rows (0: one round)."""
        bs = self.cfg.batch_size
        per_round = self.rows_per_round or len(order)
        per_round = max(bs, per_round // bs * bs)
        loss = wsum = 0.0
        skipped = 0
        for lo in range(0, len(order), per_round):
            part = order[lo : lo + per_round]
            if self.clustered:
                l, w, s, first = self._round_again_if_lost(batch, part, weights, step0 + lo // bs)
            else:
                l, w, s, first = self._round(batch, part, weights, step0 + lo // bs)
            loss, wsum, skipped = loss + l, wsum + w, skipped + s
            if first >= 0:
                return loss, wsum, skipped, lo + first
        return loss, wsum, skipped, -1

    def _round_again_if_lost(self, batch: Batch, part: np.ndarray, weights: np.ndarray | None, step0: int):
        """_cluster_round, run again (from the same starting blocks, which
        every worker may hold: the result is the same) when Dask gave up on
        one of its tasks because a worker was lost with a result that it
        could not compute again; at most ROUND_TRIES times."""
        from distributed.client import FutureCancelledError, FuturesCancelledError
        from distributed.scheduler import KilledWorker

        for attempt in range(ROUND_TRIES):
            try:
                return self._cluster_round(batch, part, weights, step0)
            except (FutureCancelledError, FuturesCancelledError, KilledWorker, _RoundLost) as exc:
                if attempt == ROUND_TRIES - 1:
                    raise ClusterError(f"a round failed {ROUND_TRIES} times as workers were lost: "
                                       f"{str(exc).splitlines()[0]}") from None
                logging.getLogger(__name__).warning("a round lost a result with its worker; running it again")

    def _cluster_round(self, batch: Batch, part: np.ndarray, weights: np.ndarray | None, step0: int):
        """One bulk-synchronous round over the rows `part` of batch, the model
        on the workers (see the module's doc)."""
        t0 = time.perf_counter()
        # (bytes moved since the last round: validation's fetch of the merged blocks
        # is the all-gather the round would otherwise make)
        sent0, moved0 = self.bytes_sent, self._moved_reported
        client, workers = self.runner.client, self.runner.workers
        self._to_cluster()
        self._revive()
        bs = self.cfg.batch_size
        data = self._data(batch)
        wdata = self._weights(weights) if data is not None else None
        # how the workers get the rows: read from the cache, sent once, or sent every round
        self.data_mode = self._sent[id(batch)][2] if data is not None else "rows"
        tag = uuid.uuid4().hex[:12]
        moved = 0
        cut = round_pieces(part, batch.n_rows, self.n_pieces)
        cfg = self.worker_config(len(cut))
        trains = []
        opts = dict(allow_other_workers=True, retries=3, pure=False)
        before = 0
        for j, where, rows in cut:
            w = self._home(j, workers)
            if data is not None:     # the rows of shard j that worker w holds
                args = (data.on(j), rows, None if wdata is None else wdata.on(j))
                sent = rows.nbytes
            else:   # rows the workers do not have: send them
                held = shard_bounds(batch.n_rows, self.n_pieces)[j] + rows
                piece = take_rows(batch, held)
                args = (piece, None, None if weights is None else weights[held])
                sent = _nbytes(args)
            moved += sent
            self.bytes_sent += sent
            moved += self._fetch_bytes(w)
            # (the steps of the pieces follow one another, as the pieces' rows would in one process)
            trains.append(client.submit(train_part, *args, cfg, self.spec, self._hot(), self.total_steps,
                                        step0 + before // bs, self._ftrl_alpha(cfg), *self._blocks_on(w),
                                        key=f"fmcli-train-{tag}-{j}", workers=[w], **opts))
            before += len(rows)
        stats = [client.submit(operator.itemgetter(0), t, key=f"fmcli-stats-{tag}-{j}", pure=False)
                 for j, t in enumerate(trains)]
        merged = []
        for r in range(self.n_blocks):
            picks = [client.submit(_pick, t, r, key=f"fmcli-pick-{tag}-{j}-{r}", pure=False)
                     for j, t in enumerate(trains)]
            merged.append(client.submit(merge_block, self._blocks[r], picks, self.cfg, self.spec, self.merge_rule,
                                        key=f"fmcli-merge-{tag}-{r}", workers=[workers[r % len(workers)]],
                                        **opts))
        blocks = [client.submit(operator.itemgetter(0), m, key=f"fmcli-block-{tag}-{r}", pure=False)
                  for r, m in enumerate(merged)]
        infos = [client.submit(operator.itemgetter(1), m, key=f"fmcli-info-{tag}-{r}", pure=False)
                 for r, m in enumerate(merged)]
        # a copy of every block on every worker before the round's inputs are
        # let go: a worker lost now leaves each block somewhere (and the next
        # round's training, which needs every block on every worker, finds
        # them there: this is its all-gather)
        copies = self._copy_blocks(blocks, workers)
        results, merge_info = client.gather([stats, infos])
        spares = self._await_spares(copies, workers)
        if _lost_blocks(blocks, spares):
            # a worker lost with a merged block before its copy was made: the
            # round again, from its starting blocks (still held)
            raise _RoundLost("a merged block was lost with its worker before it had a copy")
        self._spares = spares
        self._blocks = blocks
        # the bytes of the reduce-scatter: each worker's part of each block held elsewhere
        for j, res in enumerate(results):
            moved += sum(size for r, size in enumerate(res[5]) if r % len(workers) != j)
        self._block_bytes = [info[2] for info in merge_info]
        self._holders = self._held_at(workers)
        moved += sum(b * (len(h) - 1) for b, h in zip(self._block_bytes, self._holders))   # the copies
        self._finite = all(info[1] for info in merge_info)
        self._fresh = False
        merge_seconds = max(info[0] for info in merge_info)
        self.merge_seconds += merge_seconds
        self.task_seconds += sum(res[2] for res in results)
        self.bytes_moved += moved
        self.runner.bytes_out += moved
        self.rounds += 1
        self.rows_trained += len(part)
        loss, wsum, skipped, first = _round_sums(cut, [res[0] for res in results])
        self._report(len(part), time.perf_counter() - t0, merge_seconds, self.bytes_moved - moved0,
                     [(res[4] or self._home(j, workers), res[3], res[1], res[6])
                      for (j, _, _), res in zip(cut, results)],
                     self.bytes_sent - sent0)
        return loss, wsum, skipped, first

    def _round(self, batch: Batch, part: np.ndarray, weights: np.ndarray | None, step0: int):
        """One round with the model on the driver (an InlineRunner): the
        rows go to the tasks, the changed rows come back and are merged here."""
        t0 = time.perf_counter()
        bs = self.cfg.batch_size
        calls = []
        cut = round_pieces(part, batch.n_rows, self.n_pieces)
        cfg = self.worker_config(len(cut))
        bounds = shard_bounds(batch.n_rows, self.n_pieces)
        before = 0
        for j, _, rows in cut:
            held = bounds[j] + rows
            calls.append((cfg, self.spec, self._hot(), take_rows(batch, held),
                          None if weights is None else weights[held], self.total_steps, step0 + before // bs,
                          self._ftrl_alpha(cfg)))
            before += len(rows)
        model = self.arrays()
        results = self.runner.run(model, calls)
        t1 = time.perf_counter()
        self.apply([r[0] for r in results])
        merge_seconds = time.perf_counter() - t1
        self.merge_seconds += merge_seconds
        self.task_seconds += sum(r[2] for r in results)
        self.rounds += 1
        self.rows_trained += len(part)
        moved = sum(_nbytes(c) for c in calls) + sum(_nbytes(r[0]) for r in results)
        self.bytes_moved += moved
        loss, wsum, skipped, first = _round_sums(cut, [r[1] for r in results])
        self._report(len(part), time.perf_counter() - t0, merge_seconds, moved,
                     [(w, len(rows), r[2]) for w, (_, _, rows), r in zip(self.runner.workers, cut, results)])
        return loss, wsum, skipped, first

    def _hot(self) -> tuple | None:
        """What a task needs of the hot features: (ids, exchange intervals) or None."""
        return None if self.hot is None else (self.hot, self.hot_sync)

    def _report(self, rows: int, seconds: float, merge_seconds: float, moved: int, per_worker,
                sent: int | None = None) -> None:
        """Keep the round's figures and hand them to on_round."""
        self.last_round = self.round_report(self.rounds, rows, seconds, merge_seconds, moved, per_worker)
        self._moved_reported = self.bytes_moved
        self.last_round["bytes_sent"] = moved if sent is None else sent
        if self.on_round is not None:
            self.on_round(dict(self.last_round))

    @staticmethod
    def round_report(number: int, rows: int, seconds: float, merge_seconds: float, moved: int,
                     per_worker) -> dict:
        """What on_round receives: {"round", "rows", "seconds" (the round's
        wall time), "merge_seconds" (the slowest block's merge), "bytes_moved"
        (all directions, from the arrays' sizes), "workers": [{"worker",
        "rows", "seconds" (its training), "rows_per_s", "phases": {"load",
        "copy", "train", "parts": seconds of the task's steps}}]}; _report
        adds "bytes_sent" (of bytes_moved, those the driver sent: row
        positions, or rows where the workers cannot read them)."""
        return {"round": number, "rows": rows, "seconds": seconds, "merge_seconds": merge_seconds,
                "bytes_moved": moved,
                "workers": [{"worker": w[0], "rows": int(w[1]), "seconds": w[2], "rows_per_s": w[1] / max(w[2], 1e-9),
                             **({"phases": w[3]} if len(w) > 3 else {})}
                            for w in per_worker]}

    def apply(self, changes: list[list[tuple[np.ndarray, np.ndarray]]]) -> None:
        """Merge the workers' changes (one list of four (indices, rows) per
        worker, in worker order) into the driver's arrays."""
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
               "syncs_per_epoch": None if self.rows_per_round else self.cfg.syncs_per_epoch,
               "merge": self.merge_rule if self.merge_rule != "optimizer" else self.cfg.optimizer,
               # the workers' learning rate over the run's (1: unscaled; see the module's doc)
               "learning_rate_scale": self.worker_config(self.n_pieces).step_size / self.cfg.step_size,
               "data": self.data_mode,
               "bytes_out": self.runner.bytes_out, "bytes_back": self.runner.bytes_back,
               "bytes_moved": self.bytes_moved, "model_gathers": self.pulls}
        if "SOURCE_DATE_EPOCH" not in os.environ:   # reproducible files leave wall-clock figures out
            out["merge_seconds"] = round(self.merge_seconds, 6)
            out["task_seconds"] = round(self.task_seconds, 6)
        return out

    def to_model(self, meta: dict) -> Model:
        self._to_host()
        model = super().to_model(meta)
        training = model.meta.get("training")
        if isinstance(training, dict) and self.runner is not None:
            training["distributed"] = self.record()
        return model

    def close(self) -> None:
        tokens = [t for k, ts in getattr(self, "_tokens", {}).items() if k in self._sent for t in ts]
        self._blocks, self._sent, self._bound = None, {}, {}
        if self.runner is not None:
            if self.clustered:
                try:    # a cluster that outlives the run keeps no memory of it
                    self.runner.client.run(_forget, tokens)
                except Exception:   # (a cluster already gone)
                    pass
            self.runner.close()


def _round_sums(cut: list, sums: list) -> tuple[float, float, int, int]:
    """A round's (loss sum, weight sum, rows skipped, position in the round
    of the first row that stopped a piece or -1) from its pieces'
    (round_pieces) sums."""
    loss = wsum = 0.0
    skipped, first = 0, -1
    for (_, where, _), (l, w, s, f) in zip(cut, sums):
        loss, wsum, skipped = loss + l, wsum + w, skipped + s
        if f >= 0 and (first < 0 or where[f] < first):
            first = int(where[f])
    return loss, wsum, skipped, first


def _same(x):
    """x (a spare block: the same object under another key, on its worker)."""
    return x


def _pick(result, r: int):
    """Part r of a train_part result (runs where the result is)."""
    return result[1][r]


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
