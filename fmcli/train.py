"""Training orchestration: plan a run, then run it.

:func:`plan_training` reads the data and decides everything a run needs
before a parameter exists (the model's size, the id map, weights, the
schedule); ``fm train --dry-run`` prints the same plan.  :class:`_Run`
then drives a backend (fmcli.backend: CPU or GPU) through the epochs --
row order, slices, validation (at each epoch's end, and every
``eval_every`` rows), early stopping, checkpoints -- and turns the result
into a :class:`~fmcli.model.Model`.  The arithmetic lives in the backends.
"""

from __future__ import annotations

import datetime as _dt
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from ._version import __version__
from . import checkpoint
from .backend import Backend, bytes_needed, make_backend
from .config import AUTO_MAX_THREADS, AUTO_THREADS, AUTO_THREADS_ROWS, Config, available_cpus, threads_for
from .data.batch import Batch
from .data.cache import default_cache_dir
from .data.dataset import Dataset, dataset_from_batch, load_dataset
from .data.idmap import IdMap
from .data.weights import read_weights
from .errors import ConfigError, DataError, DivergenceError, Interrupted, ModelFormatError
from .inputmap import run_map
from .metrics import DEFAULT_METRIC, METRIC_NAMES, METRICS, defined, evaluate, is_better, why_undefined
from .model import Model, ModelSpec, load_model
from .registry import kind as model_kind, optimizer as optimizer_entry
from .safepaths import refuse_clobber

SLICE_ROWS = 1 << 15   # rows per backend call: the grain of progress, checkpoints and signals


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


@dataclass
class EvalStats:
    """One validation within an epoch (--eval-every)."""

    epoch: int
    rows: int                              # rows of the epoch trained before it
    rows_total: int                        # rows trained since the run (or its first run) began
    train_loss: float | None               # mean training loss of the epoch so far
    valid: dict[str, float | None]
    task: str = "binary"


@dataclass
class TrainingPlan:
    """What a run will do, decided before any parameter is allocated."""

    config: Config                 # task resolved
    tr: Dataset
    va: Dataset | None
    metric: str                    # what selects the best model
    parent: Model | None           # the --init-model, read once
    input_map: dict | None         # how rows are read (stored in the model)
    id_map: IdMap | None           # compact slots of sparse ids, or None
    n_features: int
    n_fields: int
    n_classes: int
    bytes_needed: int
    memory_limit: int | None       # --max-memory or the machine's memory
    whole: bool                    # one in-memory chunk (else streamed chunk by chunk)
    steps_per_epoch: int
    slice_rows: int
    file_weights: np.ndarray | None
    class_table: np.ndarray | None
    ckpt: checkpoint.Checkpoint | None = None
    resume: str | None = None

    @property
    def task(self) -> str:
        return self.config.task

    @property
    def n_params(self) -> int:
        """The parameters of the model file this run writes (ModelSpec.shapes)."""
        c = self.config
        spec = ModelSpec(kind=c.model, task=c.task, k=c.k, n_features=self.n_features, n_fields=self.n_fields,
                         use_bias=c.use_bias, use_linear=c.use_linear, normalize=c.normalize,
                         n_classes=self.n_classes,
                         classes=tuple(self.tr.classes) if c.task == "multiclass" else None)
        return int(sum(np.prod(shape, dtype=np.int64) for shape in spec.shapes().values()))

    def device_memory(self):
        """The device memory a run on a GPU takes (fmcli.gpu.plan.DeviceMemory):
        resident rows are the whole training set, or its largest chunk."""
        from .gpu.plan import device_memory

        tr, va = self.tr, self.va
        rows = tr.n_rows if self.whole else max(tr.chunk_rows)
        nnz = tr.nnz if self.whole else -(-tr.nnz * rows // max(tr.n_rows, 1))
        return device_memory(self.config, self.n_features, self.n_fields, self.n_classes, rows=rows, nnz=nnz,
                             valid_rows=va.n_rows if va is not None else 0,
                             valid_nnz=va.nnz if va is not None else 0,
                             weights=(tr.has_weights or self.file_weights is not None
                                      or self.class_table is not None))

    def too_large(self) -> bool:
        return self.memory_limit is not None and self.bytes_needed > self.memory_limit

    def check_memory(self) -> None:
        if not self.too_large():
            return
        c, limit, id_map = self.config, self.memory_limit, self.id_map
        raise DataError(
            (f"feature ids up to {self.n_features - 1}" if id_map is None
             else f"{self.n_features} distinct feature ids (of ids up to {id_map.space - 1})")
            + f" and {self.n_fields} fields need a {c.model} model "
            f"of {self.bytes_needed / 2**30:.2f} GiB (k={c.k}"
            + (f", {self.n_classes} classes" if self.n_classes > 1 else "") + "), more than "
            + (f"--max-memory {limit / 2**30:.2f} GiB" if c.max_memory is not None
               else f"this machine's {limit / 2**30:.1f} GiB")
            + "; hash the ids into a smaller space or raise --max-memory",
            self.tr.name)

    def close(self) -> None:
        """Let go of the caches (and of their shared locks: a cache is "in use" while open)."""
        for ds in (self.tr, self.va):
            if ds is not None:
                ds.close()


def plan_training(config: Config, train_data, valid=None, *, weights=None, resume: str | None = None,
                  log: Callable[[str], None] | None = None, on_read=None,
                  dry_run: bool = False, parent: Model | None = None,
                  classes: Sequence[str] | None = None) -> TrainingPlan:
    """Check the run's arguments and read its data.  See :func:`train` for
    the arguments.  dry_run: write nothing but the data caches (a real run
    makes its checkpoint directory ready here, before reading any data).
    parent: a model in memory to warm-start from (instead of config.init_model)."""
    if parent is not None and config.init_model:
        raise ConfigError("give the model to start from as init_model or as parent, not both")
    say = log or (lambda msg: None)
    patience = config.stop_patience
    if (patience or config.eval_every) and valid is None:
        raise ConfigError(("early stopping (--patience / --auto-stop)" if patience else "--eval-every")
                          + " needs a validation set (-p/--valid)")
    # Checkpoints never go where an input lives (a resumed run writes its own directory).
    refuse_clobber({"the training data": None if isinstance(train_data, Batch) else train_data,
                    "the validation data": None if isinstance(valid, Batch) else valid,
                    "the weights file": weights, "the init_model file": config.init_model,
                    "the resume directory": resume},
                   {}, directories={"checkpoint_dir": (config.checkpoint_dir, checkpoint.OWNED_NAMES)},
                   allow={("checkpoint_dir", "the resume directory")})
    ckpt = checkpoint.load_latest(resume) if resume is not None else None
    if config.checkpoint_dir and not dry_run:
        checkpoint.prepare(config.checkpoint_dir)   # a bad place fails now, not at the first checkpoint
    # the parent of a warm start is read once (it may come through a pipe)
    if config.init_model:
        parent = load_model(config.init_model)
    input_map = run_map(train_data, valid, config,
                        parent=parent.meta.get("input") if parent is not None else None)
    # a Batch's multiclass labels may index classes given by the caller
    tr = _load(train_data, config, config.task, classes if isinstance(train_data, Batch) else None,
               say, input_map, on_read)
    task = tr.task
    if config.task == "auto":
        say(f"task: {task} (from the labels of {tr.name})")
        config = config.replace(task=task)   # re-validates the combination
    if config.threads == AUTO_THREADS:
        threads = threads_for(config, tr.n_rows)
        config = config.replace(threads=threads)
        if threads > 1:
            say(f"training on {threads} threads (--threads auto: every CPU, up to {AUTO_MAX_THREADS}, on "
                f"{AUTO_THREADS_ROWS:,} rows or more; -s 1 for bit-for-bit reproducible runs)")
    if task == "multiclass" and len(tr.classes) < 2:
        raise DataError(f"multiclass training needs at least two classes, found only {tr.classes}", tr.name)
    va = _load(valid, config, task, tr.classes, say, input_map, on_read) if valid is not None else None
    if model_kind(config.model).needs_fields and tr.format == "libsvm":
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
    metric = config.early_stopping_metric or DEFAULT_METRIC[task]
    if task not in METRICS[metric][0]:
        raise ConfigError(f"metric {metric} is not defined for the {task} task")
    if patience and va is not None:
        _check_stopping_metric(va, task, metric)
    # ids sparse in their space train compact slots (fmcli.data.idmap); the
    # data sets hand the backend slots from here on
    id_map = plan_id_map(tr, parent)
    tr.use_id_map(id_map)
    if va is not None:
        va.use_id_map(id_map)
    n_features = (len(id_map) if id_map is not None
                  else max(tr.max_feature + 1, parent.spec.n_features if parent else 0, 0))
    n_fields = max(tr.max_field + 1, parent.spec.n_fields if parent else 0, 0)
    n_classes = len(tr.classes) if task == "multiclass" else 1
    # Data that fits the memory budget is trained as one chunk (an exact
    # shuffle of all rows each epoch); larger data streams chunk by chunk:
    # the chunks' order is shuffled, then the rows within each chunk.
    whole = tr.n_chunks == 1 or tr.data_bytes <= config.memory_budget
    bs = config.batch_size
    sizes = [tr.n_rows] if whole else tr.chunk_rows
    # a distributed run's slice is its synchronisation round (fmcli.distributed)
    distributed = config.scheduler is not None or config.scheduler_file is not None
    first = config.round_rows(tr.n_rows) if distributed else SLICE_ROWS
    grain = min([first] + [n for n in (config.checkpoint_every, config.eval_every) if n])
    return TrainingPlan(
        config=config, tr=tr, va=va, metric=metric, parent=parent, input_map=input_map, id_map=id_map,
        n_features=n_features, n_fields=n_fields, n_classes=n_classes,
        bytes_needed=bytes_needed(config, n_features, n_fields, n_classes),
        memory_limit=config.max_memory if config.max_memory is not None else _available_memory(),
        whole=whole, steps_per_epoch=sum(-(-r // bs) for r in sizes),
        slice_rows=max(bs, grain // bs * bs), file_weights=file_weights,
        class_table=_class_weight_table(config, tr), ckpt=ckpt, resume=resume)


def _available_memory() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def train(
    config: Config,
    train_data: str | os.PathLike | Sequence[str] | Batch,
    valid: str | os.PathLike | Sequence[str] | Batch | None = None,
    *,
    weights: str | os.PathLike | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
    on_eval: Callable[[EvalStats], None] | None = None,
    log: Callable[[str], None] | None = None,
    on_progress: Callable[[int, int, int], None] | None = None,
    on_checkpoint: Callable[[dict], None] | None = None,
    should_stop: Callable[[], int | None] | None = None,
    on_start: Callable[[], None] | None = None,
    on_read: Callable[[str, int, int | None, int], None] | None = None,
    on_round: Callable[[dict], None] | None = None,
    resume: str | None = None,
    run_info: dict | None = None,
    parent: Model | None = None,
    classes: Sequence[str] | None = None,
) -> Model:
    """Train a model; returns it with the run's summary in ``model.meta``.

    train_data and valid: a path, a glob, '-', a list of them, or a Batch.
    weights: a file with one weight per training row (or give them inline
    as LABEL:WEIGHT).  on_epoch(EpochStats) is called after every epoch and
    on_eval(EvalStats) after every validation within one (config.eval_every).
    on_progress(epoch, rows done, rows in the epoch) is called every
    SLICE_ROWS rows; should_stop() returning a signal number ends the run
    there (after a checkpoint, when config.checkpoint_dir is set) with
    :class:`~fmcli.errors.Interrupted`.  on_start() is called once every
    input is read, before the first update.  on_read(name, bytes read, bytes
    in all or None, rows so far) is called while inputs are parsed (not when
    they come from the cache).  on_round(record) is called after every
    round of a distributed run (config.scheduler): the round's number, rows,
    seconds, merge_seconds, bytes_moved and per-worker figures (workers:
    worker, rows, seconds, rows_per_s), with the epoch it belongs to added
    (see fmcli.distributed); it is never called on one machine.  resume: a
    checkpoint directory to continue
    from (the configuration must be the checkpoint's; see
    :func:`resume_arguments`).  run_info: stored in checkpoints (the command
    line's own arguments).  parent: a model in memory to continue from, as
    config.init_model does with a file (its weights and optimizer state).
    classes: for a multiclass Batch, the name of each class its labels index
    (default: "0", "1", ... up to its largest label)."""
    say = log or (lambda msg: None)
    plan = plan_training(config, train_data, valid, weights=weights, resume=resume, log=say, on_read=on_read,
                         parent=parent, classes=classes)
    backend = None
    try:
        plan.check_memory()
        c = plan.config
        rng = np.random.default_rng(c.seed)
        backend = make_backend(c, plan.n_features, plan.n_fields, rng, plan.task, plan.tr.classes, say,
                               # a new model of compact ids starts as the dense one would
                               None if plan.id_map is None or plan.parent is not None else plan.id_map.ids,
                               plan.tr.max_feature + 1,
                               device_need=plan.device_memory().total if c.device != "cpu" else None)
        hooks = _Hooks(on_epoch, on_eval, on_progress, on_checkpoint, should_stop, on_start, on_round)
        run = _Run(plan, backend, rng, hooks, run_info or {}, say)
        run.run()
        return run.model()
    finally:
        if backend is not None and hasattr(backend, "close"):
            backend.close()     # a distributed run's cluster (fmcli.distributed)
        plan.close()


@dataclass
class _Hooks:
    on_epoch: Callable | None = None
    on_eval: Callable | None = None
    on_progress: Callable | None = None
    on_checkpoint: Callable | None = None
    should_stop: Callable | None = None
    on_start: Callable | None = None
    on_round: Callable | None = None


@dataclass
class _Best:
    """The best validation so far: its value, where it was (epoch, rows of
    that epoch) and its number among the run's validations (0: none yet)."""

    value: float | None = None
    epoch: int = 0
    rows: int = 0
    index: int = 0
    metrics: dict | None = None

    @classmethod
    def from_info(cls, saved, n_rows: int) -> "_Best":
        if isinstance(saved, dict):
            return cls(**saved)
        value, epoch = saved    # a checkpoint of a run that validated once per epoch
        return cls(value, epoch, n_rows if epoch else 0, epoch)


@dataclass
class _Cursor:
    """Where an epoch stands: the next chunk (position in the epoch's chunk
    order) and row in it, rows done, the run's step count and the epoch's
    loss sums."""

    epoch: int
    chunk_pos: int = 0
    row_pos: int = 0
    rows_done: int = 0
    step: int = 0
    loss: float = 0.0
    wsum: float = 0.0
    bad: int = 0
    since_ckpt: int = 0
    rng_state: dict = field(default_factory=dict)   # the generator at the epoch's start


class _Run:
    """One training run: the epoch and slice loop, validation and early
    stopping, checkpoints, and the model's metadata."""

    def __init__(self, plan: TrainingPlan, backend: Backend, rng: np.random.Generator, hooks: _Hooks,
                 run_info: dict, say: Callable[[str], None]):
        self.plan, self.backend, self.rng, self.hooks, self.run_info, self.say = (
            plan, backend, rng, hooks, run_info, say)
        c = self.cfg = plan.config
        tr, va = plan.tr, plan.va
        self.n_rows = tr.n_rows
        self.history: list[EpochStats] = []
        self.evals: list[dict] = []       # validations within epochs (EvalStats as dicts)
        self.n_evals = 0                  # validations so far, epochs' ends included
        self.since_eval = 0               # rows trained since the last validation
        self.best = _Best()
        self.snap = None                  # the best validation's parameters (early stopping)
        self.nonfinite = 0
        self.first_epoch = 1
        self.stopped = False
        self.prepared = False             # backend.prepare done (with the first batch trained on)
        self.steps_before = 0             # updates made by the parent model's runs (Adam, schedules)
        self.lineage = None
        self.resumed: dict | None = None  # the checkpoint's cursor, for the epoch it stopped in
        compact = backend.compact_rows
        self.mem_batch = tr.in_memory(compact) if plan.whole else None
        self.va_batch = (va.in_memory(compact) if va is not None and va.data_bytes <= c.memory_budget
                         else None)
        bind = getattr(backend, "bind_data", None)
        if bind is not None:    # a distributed backend finds these rows on its workers
            bind(tr, self.mem_batch, va, self.va_batch)
        if not plan.whole:
            say(f"streaming {tr.n_chunks} chunks of up to {max(tr.chunk_rows)} rows per epoch "
                f"(data of {tr.data_bytes / 2**20:.0f} MiB > --memory-budget)")
        self.offsets = np.concatenate([[0], np.cumsum(tr.chunk_rows)])
        if plan.parent is not None:
            where = c.init_model or plan.parent.path or "the parent model"
            self.steps_before = backend.warm_start(plan.parent, where, say)
            self.lineage = _lineage(plan.parent, c.init_model or plan.parent.path)
        if plan.ckpt is not None:
            self._resume(plan.ckpt)
        backend.total_steps = self.steps_before + plan.steps_per_epoch * c.epochs
        self.epoch = self.first_epoch     # the epoch being trained
        if hooks.on_round is not None and hasattr(backend, "on_round"):
            # a distributed backend reports its rounds (fmcli.distributed)
            backend.on_round = lambda record: hooks.on_round({"epoch": self.epoch, **record})
        place = getattr(backend, "place_model", None)
        if place is not None:   # the starting model is final: a distributed backend sends it out now
            place()

    # -- resume and checkpoints --------------------------------------------------
    def _resume(self, ckpt: checkpoint.Checkpoint) -> None:
        # Refuse weights or optimizer state that are not finite (a model file
        # is refused the same way): the best validation's copy, then the
        # current arrays, which stay restored.
        for prefix in ("best_", "") if "best_B" in ckpt.arrays else ("",):
            self.backend.restore(tuple(ckpt.arrays[prefix + n] for n in ("B", "L", "F", "R")))
            if not self.backend.all_finite():
                which = "the best epoch's weights" if prefix else "the weights"
                raise ModelFormatError(
                    f"{which} or optimizer state hold a non-finite value (NaN or inf): the checkpoint "
                    "is corrupt; remove it to resume from the one before, or train anew", ckpt.path)
        if "best_B" in ckpt.arrays:
            self.snap = tuple(np.array(ckpt.arrays[f"best_{n}"]) for n in ("B", "L", "F", "R"))
        info = self.resumed = ckpt.info
        self.history = [EpochStats(**h) for h in info["history"]]
        if self.history:    # where the run stands if no epoch is left to run
            self.end = (self.history[-1].epoch, self.n_rows)
            self.steps_done = info["steps_before"] + self.plan.steps_per_epoch * len(self.history)
        self.evals = list(info.get("evals", []))
        self.n_evals = info.get("n_evals", len(self.history))
        self.since_eval = info.get("since_eval", 0)
        self.best = _Best.from_info(info["best"], self.n_rows)
        self.nonfinite = info["nonfinite"]
        self.first_epoch = info["epoch"]
        self.steps_before = info["steps_before"]
        self.lineage = info.get("parent")
        self.say(f"resuming from {ckpt.path}: epoch {info['epoch']}, "
                 f"{info['rows_done']} of {self.n_rows} rows done")

    def _checkpoint(self, cur: _Cursor, at: tuple[int, int], rng_state: dict | None = None) -> None:
        """Save the run as it stands, to continue at chunk position at[0], row at[1]
        (a new epoch: cur.epoch + 1 at (0, 0) with the generator's state rng_state)."""
        c = self.cfg
        if not c.checkpoint_dir:
            return
        arrays = dict(zip(("B", "L", "F", "R"), self.backend.export_state()))
        if self.snap is not None:
            arrays.update(zip(("best_B", "best_L", "best_F", "best_R"), self.snap))
        fresh = rng_state is not None      # the next epoch, from its start
        info = {"epoch": cur.epoch + fresh, "chunk_pos": at[0], "row_pos": at[1],
                "rows_done": 0 if fresh else cur.rows_done,
                "rng": rng_state if fresh else cur.rng_state,
                "sums": [0.0, 0.0, 0] if fresh else [cur.loss, cur.wsum, cur.bad],
                "history": [asdict(h) for h in self.history], "evals": self.evals,
                "n_evals": self.n_evals, "since_eval": self.since_eval, "best": asdict(self.best),
                "nonfinite": self.nonfinite, "steps_before": self.steps_before,
                "config": c.to_dict(), "data": _data_key(self.plan.tr), "parent": self.lineage,
                "run": self.run_info}
        path = checkpoint.save(c.checkpoint_dir, info, arrays, c.keep_checkpoints)
        if self.hooks.on_checkpoint is not None:
            self.hooks.on_checkpoint({"path": path, "epoch": info["epoch"], "rows_done": info["rows_done"]})

    # -- the loop ------------------------------------------------------------------
    def run(self) -> None:
        if self.hooks.on_start is not None:
            self.hooks.on_start()
        self.t_start = time.perf_counter()
        for epoch in range(self.first_epoch, self.cfg.epochs + 1):
            self._epoch(epoch)
            if self.stopped:
                break

    def _start_epoch(self, epoch: int) -> tuple[_Cursor, np.ndarray]:
        """The epoch's cursor (a resumed epoch's from its checkpoint) and chunk order."""
        c, plan, rng = self.cfg, self.plan, self.rng
        cur = _Cursor(epoch, step=self.steps_before + (epoch - 1) * plan.steps_per_epoch)
        saved = self.resumed if self.resumed is not None and epoch == self.resumed["epoch"] else None
        if saved is not None:
            rng.bit_generator.state = saved["rng"]
            cur.chunk_pos, cur.row_pos, cur.rows_done = saved["chunk_pos"], saved["row_pos"], saved["rows_done"]
            loss, wsum, bad = saved["sums"]
            cur.loss, cur.wsum, cur.bad = float(loss or 0.0), float(wsum or 0.0), int(bad)
        cur.rng_state = rng.bit_generator.state
        tr = plan.tr
        if plan.whole:
            chunk_order = np.zeros(1, np.int64)
        elif tr.file_order_only:
            chunk_order = np.arange(tr.n_chunks)
        else:
            chunk_order = rng.permutation(tr.n_chunks) if c.shuffle else np.arange(tr.n_chunks)
        # replay the draws of the chunks a resumed epoch had finished
        for ci in chunk_order[: cur.chunk_pos]:
            rows = self.n_rows if plan.whole else tr.chunk_rows[int(ci)]
            if c.shuffle:
                rng.permutation(rows)
            cur.step += -(-rows // c.batch_size)
        return cur, chunk_order

    def _epoch(self, epoch: int) -> None:
        t0 = time.perf_counter()
        self.epoch = epoch
        cur, chunk_order = self._start_epoch(epoch)
        # (a run stopped after its epoch's last slice resumes with nothing left of the epoch)
        parts = ([] if cur.chunk_pos >= len(chunk_order) else [(0, self.mem_batch, None)] if self.plan.whole
                 else self.plan.tr.chunks(chunk_order[cur.chunk_pos :], reuse=True))
        for pos, (index, batch, fname) in enumerate(parts, start=cur.chunk_pos):
            self._chunk(cur, pos, index, batch, fname)
            if self.stopped:    # early stopping within the epoch (--eval-every)
                break
        self._end_epoch(cur, time.perf_counter() - t0)

    def _chunk(self, cur: _Cursor, pos: int, index: int, batch: Batch, fname: str | None) -> None:
        c, plan = self.cfg, self.plan
        rows = batch.n_rows
        if not self.prepared:
            note = self.backend.prepare(batch)
            self.prepared = True
            if note:
                self.say(note)
        order = (self.rng.permutation(rows) if c.shuffle else np.arange(rows)).astype(np.int64)
        w = _weights_of(batch, plan.class_table, plan.file_weights, 0 if plan.whole else int(self.offsets[index]))
        start = cur.row_pos if pos == cur.chunk_pos else 0
        cur.step += start // c.batch_size
        for lo in range(start, rows, plan.slice_rows):
            hi = min(rows, lo + plan.slice_rows)
            self._slice(cur, batch, order[lo:hi], w, fname)
            at = (pos, hi) if hi < rows else (pos + 1, 0)
            self._after_slice(cur, at)
            if self.stopped:
                return

    def _slice(self, cur: _Cursor, batch: Batch, part: np.ndarray, w: np.ndarray | None,
               fname: str | None) -> None:
        loss, wsum, bad, first = self.backend.train_slice(batch, part, w, cur.step)
        cur.step += -(-len(part) // self.cfg.batch_size)
        cur.loss, cur.wsum, cur.bad = cur.loss + loss, cur.wsum + wsum, cur.bad + bad
        if first >= 0:
            row = int(part[first])
            where = fname or self.plan.tr.file_of_rows(np.array([row]))[0]
            line = int(batch.lines[row]) if batch.lines is not None else None
            raise DivergenceError(
                f"{where}:{line if line is not None else f'row {row + 1}'}: training diverged in "
                f"epoch {cur.epoch} (a non-finite score or loss on this row); lower the learning "
                "rate (-r), set --clip-norm, or use --on-nonfinite skip; no model was written")
        cur.rows_done += len(part)
        cur.since_ckpt += len(part)
        self.since_eval += len(part)

    def _after_slice(self, cur: _Cursor, at: tuple[int, int]) -> None:
        """Progress, validation within the epoch, checkpoints and signals."""
        c, h = self.cfg, self.hooks
        if h.on_progress is not None:
            h.on_progress(cur.epoch, cur.rows_done, self.n_rows)
        within = cur.rows_done < self.n_rows      # the epoch's end validates and checkpoints anyway
        if c.eval_every and self.since_eval >= c.eval_every and within:
            self._validate_within(cur)
        signum = h.should_stop() if h.should_stop is not None else None
        if signum or (c.checkpoint_every and cur.since_ckpt >= c.checkpoint_every and within
                      and not self.stopped):
            self._checkpoint(cur, at)
            cur.since_ckpt = 0
        if signum:
            raise Interrupted(signum, checkpointed=bool(c.checkpoint_dir))

    # -- validation and early stopping ---------------------------------------------
    def _validate_within(self, cur: _Cursor) -> None:
        metrics = _validate(self.backend, self.plan.va, self.va_batch, self.plan.task)
        stats = EvalStats(cur.epoch, cur.rows_done, (cur.epoch - 1) * self.n_rows + cur.rows_done,
                          cur.loss / cur.wsum if cur.wsum > 0 else None, metrics, self.plan.task)
        self.evals.append(asdict(stats))
        if self.hooks.on_eval is not None:
            self.hooks.on_eval(stats)
        self._judge(metrics, cur.epoch, cur.rows_done)

    def _judge(self, metrics: dict, epoch: int, rows: int) -> None:
        """Keep the best validation (a copy of its parameters when early
        stopping may need them) and stop after `patience` validations without
        improvement."""
        c, metric = self.cfg, self.plan.metric
        patience = c.stop_patience
        self.n_evals += 1
        self.since_eval = 0
        value = metrics[metric]   # None when undefined on this data: never the best
        last = epoch == c.epochs and rows == self.n_rows
        if value is not None and (self.best.index == 0 or is_better(metric, value, self.best.value)):
            self.best = _Best(value, epoch, rows, self.n_evals, metrics)
            if patience and not last:
                self.snap = self.backend.snapshot(self.snap)
        elif patience and self.n_evals - self.best.index >= patience:
            waited = self.n_evals - self.best.index
            if c.eval_every:
                self.say(f"validation {metric} has not improved for {waited} validation(s); keeping "
                         f"the model of epoch {self.best.epoch} after {self.best.rows} of its rows")
            else:
                self.say(f"validation {metric} has not improved for {waited} epoch(s); "
                         f"keeping epoch {self.best.epoch}")
            self.stopped = True

    def _end_epoch(self, cur: _Cursor, seconds: float) -> None:
        epoch, plan = cur.epoch, self.plan
        self.nonfinite += cur.bad
        if not self.backend.all_finite():
            raise DivergenceError(
                f"training diverged in epoch {epoch} (a weight became non-finite); lower the "
                "learning rate (-r) or set --clip-norm; no model was written")
        if epoch == 1 and not cur.wsum > 0 and cur.bad < self.n_rows:
            raise DataError("every training row has weight 0", plan.tr.name)
        if cur.bad:
            self.say(f"epoch {epoch}: skipped {cur.bad} rows with a non-finite score or loss (--on-nonfinite skip)")
        within = self.stopped     # stopped early within the epoch: its last validation stands
        self.end = (epoch, cur.rows_done)
        self.steps_done = cur.step
        if within:
            metrics = self.evals[-1]["valid"]
        else:
            metrics = _validate(self.backend, plan.va, self.va_batch, plan.task) if plan.va is not None else None
        stats = EpochStats(epoch, cur.loss / cur.wsum if cur.wsum > 0 else None, metrics, seconds,
                           cur.rows_done / max(seconds, 1e-9), cur.bad, plan.task)
        self.history.append(stats)
        if self.hooks.on_epoch is not None:
            self.hooks.on_epoch(stats)
        if metrics is not None and not within:
            self._judge(metrics, epoch, self.n_rows)
        if epoch < self.cfg.epochs and not self.stopped:
            self._checkpoint(cur, (0, 0), self.rng.bit_generator.state)

    # -- the result ----------------------------------------------------------------
    def model(self) -> Model:
        c, plan = self.cfg, self.plan
        keeps_best = bool(c.stop_patience) and plan.va is not None and self.snap is not None
        if keeps_best and (self.best.epoch, self.best.rows) != self.end:
            self.backend.restore(self.snap)
        model = self.backend.to_model(self._metadata(self.best.epoch if keeps_best else self.end[0]))
        model.feature_ids = None if plan.id_map is None else plan.id_map.ids
        model.meta["training"]["zero_weights"] = model.count_zeros()
        return model

    def _metadata(self, final_epoch: int) -> dict:
        c, plan, tr, va = self.cfg, self.plan, self.plan.tr, self.plan.va
        # With SOURCE_DATE_EPOCH set the file must be reproducible: leave out
        # wall-clock figures (they stay in the console output).
        timed = "SOURCE_DATE_EPOCH" not in os.environ
        epochs_meta = [
            {"epoch": h.epoch, "train_loss": h.train_loss,
             **{f"valid_{k}": v for k, v in (h.valid or {}).items()},
             **({"seconds": h.seconds, "rows_per_s": h.rows_per_s} if timed else {})}
            for h in self.history
        ]
        final = self.history[final_epoch - 1]
        # the model's validation: its epoch's, or within epochs the best one's
        valid = self.best.metrics if c.eval_every and self.best.index and final_epoch == self.best.epoch else final.valid
        opt = optimizer_entry(c.optimizer)
        training = {
            "device": self.backend.device,
            "simd": getattr(self.backend, "simd", None) if self.backend.device == "cpu" else None,
            "train_file": tr.name,
            "valid_file": va.name if va is not None else None,
            "train_rows": self.n_rows,
            "skipped_rows": tr.n_skipped + (va.n_skipped if va is not None else 0),
            "nonfinite_rows": self.nonfinite,
            "valid_rows": va.n_rows if va is not None else 0,
            "epochs_run": len(self.history),
            "model_epoch": final_epoch,
            "early_stopping_metric": plan.metric if va is not None else None,
            "best_epoch": self.best.epoch or None,
            "train_loss": final.train_loss,
            "valid_metrics": valid,
            "valid_logloss": (valid or {}).get("logloss") if valid is not None else None,
            "valid_auc": (valid or {}).get("auc") if valid is not None else None,
            "seconds": time.perf_counter() - self.t_start if timed else None,
            "history": epochs_meta,
        }
        if c.eval_every:
            # validations within epochs, and where the best one was
            training["best_rows"] = self.best.rows if self.best.index else None
            training["evaluations"] = [{k: v for k, v in e.items() if k != "task"} for e in self.evals]
        meta = {
            "created_at": _created_at(),
            "hyperparameters": {**c.to_dict(), "learning_rate": c.step_size},
            "optimizer": {"name": c.optimizer, "state": opt.n_state > 0, "slots": list(opt.slots),
                          "steps": self.steps_done},
            "training": training,
            "fmcli_version": __version__,
            "input": plan.input_map,
            "features": feature_summary(tr, plan.parent, plan.id_map),
        }
        if self.lineage is not None:
            meta["parent"] = self.lineage
        return meta


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


def _lineage(parent: Model, path: str | None) -> dict:
    """The parent model of a warm start: where it was, its hash and its own
    parent (path None: a model in memory, hashed by nothing)."""
    import hashlib

    from .data.source import reads_once

    h = hashlib.sha256()
    if path is None or reads_once(path):
        digest = None      # in memory, or read once from a pipe: its bytes are gone
    else:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        digest = h.hexdigest()
    return {"path": os.path.abspath(path) if path is not None else None, "sha256": digest,
            "created_at": parent.meta.get("created_at"), "parent_sha256": (parent.meta.get("parent") or {}).get("sha256")}


def resume_arguments(directory: str) -> dict:
    """The configuration and run arguments stored in the newest checkpoint
    of `directory` (for ``fm train --resume``)."""
    ck = checkpoint.load_latest(directory)
    return {"config": Config.from_dict(ck.info["config"]), "run": ck.info.get("run") or {}, "path": ck.path,
            # where the run stands: the epoch it is in, and rows of it done
            "epoch": ck.info["epoch"], "rows_done": ck.info.get("rows_done", 0)}


def _validate(backend: Backend, va: Dataset, va_batch: Batch | None, task: str) -> dict[str, float | None]:
    """The task's metrics on the validation data (scored with every CPU);
    None for a metric the data leave undefined (AUC of one class, anything
    over a total weight of 0)."""
    threads = available_cpus()
    if va_batch is not None:
        return defined(evaluate(task, va_batch.labels, backend.scores(va_batch, threads), va_batch.weights))
    scores, labels, weights = [], [], []
    for _, batch, _ in va.chunks():
        scores.append(backend.scores(batch, threads))
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
