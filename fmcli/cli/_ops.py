"""Operational options shared by the commands that write files.

``--config FILE`` (settings from a TOML table per command), ``--lock-timeout``
(the output's advisory lock), and for ``fm train`` also ``--dry-run`` and
``--log-json``, SIGINT/SIGTERM handling, progress bars and the record of
where each setting came from.

The decorators wrap the command's function: they take their own options
out of its keyword arguments and set up (and tear down) what the run needs
around it, so that the command modules only ask :func:`current_run` for the
callbacks.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import signal
import sys
import time
from typing import Any, Callable

import click

from ..atomic import check_writable, output_lock
from ..safepaths import ClobberError
from ..settings import file_defaults, sources
from . import _render
from ._options import InputPath, OutputPath
from ._status import SignalExit, classify, signal_name

__all__ = ["config_option", "train_options", "predict_options", "current_run", "TrainRun"]

_RUN_KEY = "fm.run"


# --------------------------------------------------------------------------
# --config
# --------------------------------------------------------------------------

def _load_config(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is None or ctx.resilient_parsing:
        return
    root = ctx.find_root().command
    sections = [name for name, cmd in getattr(root, "commands", {}).items()
                if any(p.name == "config_file" for p in cmd.params)]
    keys: dict[str, str] = {}
    values = file_defaults(ctx, value, ctx.info_name or ctx.command.name, sections, keys)
    ctx.default_map = {**(ctx.default_map or {}), **values}
    ctx.meta["fm.config_file"] = value
    ctx.meta["fm.config_keys"] = keys


def config_option(section: str, example: str):
    def decorate(f):
        return click.option(
            "--config", "config_file", type=InputPath("a configuration file"), default=None, is_eager=True,
            expose_value=False, callback=_load_config,
            help=f"Read settings from this TOML file's [{section}] table, long option names as keys "
                 f"({example}).  The command line and FM_{section.upper()}_* environment variables "
                 "override it.")(f)

    return decorate


def lock_timeout_option(f):
    return click.option(
        "--lock-timeout", type=click.FloatRange(0), default=0.0, metavar="SECONDS",
        help="Wait this long for another run writing the same output to finish (0: fail at once, "
             "exit status 75).")(f)


# --------------------------------------------------------------------------
# fm predict: the output's lock
# --------------------------------------------------------------------------

def predict_options(f):
    """--config and --lock-timeout; holds the lock of -o FILE while scoring."""

    @functools.wraps(f)
    def command(*args, lock_timeout: float = 0.0, **kwargs):
        output = kwargs.get("output")
        if output is None or output == "-":
            return f(*args, **kwargs)
        check_writable(output)
        with output_lock(output, lock_timeout):
            return f(*args, **kwargs)

    return config_option("predict", "threads = 4")(lock_timeout_option(command))


# --------------------------------------------------------------------------
# fm train
# --------------------------------------------------------------------------

def train_options(f):
    """--config, --dry-run, --lock-timeout and --log-json for fm train.

    The command's function runs inside a :class:`TrainRun` (see
    :func:`current_run`), which writes the run log's last line and releases
    the lock however the function ends."""

    @functools.wraps(f)
    def command(*args, dry_run: bool = False, lock_timeout: float = 0.0, log_json: str | None = None,
                **kwargs):
        ctx = click.get_current_context()
        run = TrainRun(ctx, quiet=bool(kwargs.get("quiet")), dry_run=dry_run, lock_timeout=lock_timeout,
                       log_json=log_json, params=kwargs)
        ctx.meta[_RUN_KEY] = run
        with run:
            return f(*args, **kwargs)

    command = click.option(
        "--log-json", type=OutputPath(), default=None, metavar="FILE",
        help="Append the run's events to FILE as JSON lines: run_start (versions, settings, inputs), "
             "epoch, eval, round (with --scheduler), checkpoint, run_end (status, exit status, model "
             "hash).")(command)
    command = lock_timeout_option(command)
    command = click.option(
        "--dry-run", is_flag=True,
        help="Read the data (filling the cache), print the model's parameter count and memory "
             "estimate (with --device cuda or auto also the device memory: parameters, optimizer "
             "state, resident data, scratch; --device cuda exits 1 when it does not fit), and exit "
             "without training or writing a model.")(command)
    return config_option("train", "epochs = 20, learning-rate = 0.05")(command)


def current_run() -> "TrainRun":
    return click.get_current_context().meta[_RUN_KEY]


class TrainRun:
    """One fm train run: its log, its lock, its signal handlers, its progress."""

    def __init__(self, ctx: click.Context, *, quiet: bool, dry_run: bool, lock_timeout: float,
                 log_json: str | None, params: dict[str, Any]):
        self.ctx = ctx
        self.quiet = quiet
        self.dry_run = dry_run
        self.lock_timeout = lock_timeout
        self.log_json = log_json
        self.params = params
        self.log = None
        self.output: str | None = None
        self.model_path: str | None = None
        self.stop_signal: int | None = None
        self._training = True     # False while the inputs are read (see callbacks, _on_signal)
        self.progress = _render.EpochProgress(quiet)
        self.read_progress = _render.ReadProgress(quiet)   # the inputs' first reading
        self._stack = contextlib.ExitStack()
        self._handlers: dict[int, Any] = {}
        self._t0 = time.monotonic()
        self._log_started = False
        self._log_created = False   # the run log did not exist before this run
        self._inputs = (params.get("train_files"), params.get("valid"), params.get("weights_file"))
        self._recorded_sources: dict[str, str] | None = None

    # -- the whole command ------------------------------------------------------
    def __enter__(self) -> "TrainRun":
        if self.log_json and not self.dry_run:
            from ..runlog import RunLog

            self._log_created = not os.path.lexists(self.log_json)
            self.log = RunLog(self.log_json, warn=lambda msg: _render.info(f"fm: warning: {msg}"))
            self._stack.callback(self.log.close)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._restore_handlers()
            self.read_progress.close()
            self.progress.close()
            if isinstance(exc, ClobberError):
                self._drop_log()
            if self.log is not None:
                status, code, message = classify(exc)
                if not self._log_started:
                    self._write_start(None)
                end: dict[str, Any] = {"status": status, "exit_code": code,
                                       "seconds": round(time.monotonic() - self._t0, 3)}
                if status == "ok" and self.model_path is not None:
                    from ..runlog import file_sha256

                    end["model"] = os.path.abspath(self.model_path)
                    try:
                        end["sha256"] = file_sha256(self.model_path)
                    except OSError:
                        end["sha256"] = None
                elif message is not None:
                    end["error"] = message
                self.log.write("run_end", **end)
        finally:
            self._stack.close()

    def _drop_log(self) -> None:
        """The run was refused before any work because an output is an input
        (the run log may be that input): write nothing to the log, and
        remove it if this run created it."""
        log, self.log = self.log, None
        if log is None:
            return
        log.close()
        if self._log_created:
            with contextlib.suppress(OSError):
                if os.path.getsize(self.log_json) == 0:
                    os.unlink(self.log_json)

    # -- before training ----------------------------------------------------------
    def begin(self, config, output: str, train_files, valid=None, weights=None) -> None:
        """Log run_start, take the output's lock (preflighting it first) and
        catch SIGINT/SIGTERM: the first asks training to stop after the
        current chunk, the second abandons the run (as does the first while
        the inputs are still being read)."""
        self.output = output
        self._inputs = (train_files, valid, weights)
        self._write_start(config)
        check_writable(output)
        self._stack.enter_context(output_lock(output, self.lock_timeout))
        resume = self.params.get("resume_dir") or self.params.get("resume")
        if resume:
            # a resumed run keeps the record of the run it continues
            with contextlib.suppress(Exception):
                from ..train import resume_arguments

                recorded = resume_arguments(resume)["run"].get("config_sources")
                if isinstance(recorded, dict):
                    self._recorded_sources = recorded
        self._install_handlers()

    def _write_start(self, config) -> None:
        if self.log is None or self._log_started:
            return
        from ..runlog import input_fingerprints, versions

        self._log_started = True
        train_files, valid, weights = self._inputs
        cfg = None
        if config is not None:
            cfg = {**config.to_dict(), "learning_rate": config.step_size}
        self.log.write(
            "run_start",
            versions=versions(),
            argv=sys.argv[1:],
            options=self._options(),
            sources=sources(self.ctx),
            config_file=self.ctx.meta.get("fm.config_file"),
            config=cfg,
            seed=config.seed if config is not None else self.params.get("seed"),
            inputs={"train": input_fingerprints(train_files), "valid": input_fingerprints(valid),
                    "weights": input_fingerprints(weights)},
            output=os.path.abspath(self.output) if self.output else None,
            pid=os.getpid(),
        )

    def _options(self) -> dict[str, Any]:
        from ..settings import option_key

        values = {**self.ctx.params}
        out = {}
        for param in self.ctx.command.params:
            if isinstance(param, click.Option) and param.name in values:
                out[option_key(param)] = values[param.name]
        return out

    # -- the callbacks for fmcli.train.train ---------------------------------------
    def on_epoch(self, table: Callable | None = None) -> Callable:
        def on_epoch(stats) -> None:
            if table is not None:
                table(stats)
            if self.log is not None:
                rows = getattr(stats, "rows", None)
                if rows is None:
                    rows = int(round(stats.rows_per_s * stats.seconds))
                self.log.write("epoch", epoch=stats.epoch, rows=rows, skipped=stats.skipped_nonfinite,
                               train_loss=stats.train_loss, valid=stats.valid,
                               seconds=round(stats.seconds, 6))

        return on_epoch

    def on_eval(self, show: Callable | None = None) -> Callable:
        """The callback for validations within an epoch (--eval-every)."""
        def on_eval(stats) -> None:
            if show is not None:
                show(stats)
            if self.log is not None:
                self.log.write("eval", epoch=stats.epoch, rows=stats.rows, rows_total=stats.rows_total,
                               train_loss=stats.train_loss, valid=stats.valid)

        return on_eval

    def on_checkpoint(self, info: dict) -> None:
        if self.log is not None:
            self.log.write("checkpoint", **info)

    def on_round(self, record: dict) -> None:
        """A round of a distributed run (fmcli.distributed): the progress
        display's round line and a "round" record of the run log."""
        self.progress.round(record)
        if self.log is not None:
            self.log.write("round", **record)

    def should_stop(self) -> int | None:
        return self.stop_signal

    def on_start(self) -> None:
        """Every input is read: a signal now stops training after the current chunk."""
        self.read_progress.close()
        self._training = True

    def callbacks(self, train_function: Callable) -> dict[str, Callable]:
        """on_progress, on_checkpoint, should_stop, on_start, on_read and
        on_round, as far as `train_function` takes them."""
        wanted = {"on_progress": self.progress, "on_checkpoint": self.on_checkpoint,
                  "should_stop": self.should_stop, "on_start": self.on_start,
                  "on_read": self.read_progress, "on_round": self.on_round}
        try:
            accepted = inspect.signature(train_function).parameters
        except (TypeError, ValueError):
            return {}
        # told when training starts, a signal before then abandons the run
        self._training = "on_start" not in accepted
        return {name: cb for name, cb in wanted.items() if name in accepted}

    def trained(self, model) -> None:
        """Training is over: record where the settings came from; a signal
        now abandons the run (the model is about to be written)."""
        self.progress.close()
        self._restore_handlers()
        model.meta["config_sources"] = self._recorded_sources or sources(self.ctx)

    def saved(self, path: str) -> None:
        self.model_path = path

    def run_info(self) -> dict[str, Any]:
        """What checkpoints keep of this run for a resumed one: where the
        settings came from."""
        return {"config_sources": self._recorded_sources or sources(self.ctx)}

    # -- signals ---------------------------------------------------------------------
    def _install_handlers(self) -> None:
        if self._handlers:
            return
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._handlers[signum] = signal.signal(signum, self._on_signal)
            except (ValueError, OSError):   # not the main thread
                pass

    def _restore_handlers(self) -> None:
        handlers, self._handlers = self._handlers, {}
        for signum, previous in handlers.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(signum, previous)

    def _on_signal(self, signum, frame) -> None:
        # Until training starts (on_start), the inputs are being opened and
        # read: there is nothing to keep, and a flag would never be seen by a
        # run blocked on a FIFO that no one writes (Python retries the
        # interrupted open or read), so the run is abandoned at once.
        if self.stop_signal is not None or not self._training:
            raise SignalExit(signum)
        self.stop_signal = signum
        _render.info(f"fm: {signal_name(signum)}: stopping after the current chunk "
                     "(signal again to abort)")

    # -- --dry-run -------------------------------------------------------------------
    def plan(self, config, train_files, valid=None, output: str | None = None, weights: str | None = None,
             resume: str | None = None) -> None:
        print_plan(config, list(train_files), valid, output, self.quiet, weights, resume)


def print_plan(config, train_files, valid, output, quiet: bool, weights=None, resume=None) -> None:
    """Read the data as training would (fmcli.train.plan_training), print
    what training would allocate."""
    from ..train import plan_training

    say = (lambda msg: _render.info(msg, quiet))
    plan = plan_training(config, list(train_files), valid or None, weights=weights, resume=resume,
                         log=say, dry_run=True)
    try:
        _print_plan(plan, output)
    finally:
        plan.close()


def _print_plan(plan, output) -> None:
    from ..errors import DataError

    config, tr, va, id_map = plan.config, plan.tr, plan.va, plan.id_map
    task, C, n_fields, n_features = plan.task, plan.n_classes, plan.n_fields, plan.n_features
    space = max(tr.max_feature + 1, 0, id_map.space if id_map is not None else 0)
    need, limit, whole, n_params = plan.bytes_needed, plan.memory_limit, plan.whole, plan.n_params

    def size(n: int) -> str:
        for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
            if n >= scale:
                return f"{n / scale:.2f} {unit}"
        return f"{n} bytes"

    terms = [t for t, on in (("bias", config.use_bias), ("linear", config.use_linear),
                             ("pairwise", config.model != "lr")) if on]
    lines = [
        ("data", f"{tr.name}: {tr.n_rows:,} rows, {tr.nnz:,} values, feature ids < {space:,}, "
                 f"{n_fields:,} fields ({tr.format}, {task}"
                 + (f", {C} classes" if C > 1 else "") + ")"),
        ("features", (f"{tr.n_used:,} of {space:,} ids used" if tr.n_used >= 0 else f"ids < {space:,}")
                     + (f": a slot per id that occurs ({n_features:,} slots, an id map in the model)"
                        if id_map is not None else ": a weight per id of the space")),
        ("validation", f"{va.name}: {va.n_rows:,} rows" if va is not None else "none"),
        ("training", (f"in memory ({size(tr.data_bytes)} of rows)" if whole
                      else f"streamed: {tr.n_chunks} chunks ({size(tr.data_bytes)} of rows > --memory-budget)")
                     + f", {config.epochs} epochs"),
        ("model", f"{config.model}, k={config.k}, {' + '.join(terms)}, {config.optimizer}"),
        ("parameters", f"{n_params:,}"),
        ("memory", f"{size(need)} ({need:,} bytes) for parameters and optimizer state"
                   + (f"; limit {size(limit)}" if limit is not None else "")),
        ("output", output or "-"),
    ]
    device = _device_memory(plan, size) if config.device != "cpu" else None
    if device is not None:
        lines.insert(-1, ("device memory", device[0]))
    width = max(len(k) for k, _ in lines)
    click.echo("dry run: nothing is trained or written")
    for key, value in lines:
        click.echo(f"{key:>{width}}  {value}")
    if limit is not None and need > limit:
        raise DataError(f"the model would need {size(need)}, more than "
                        + ("--max-memory " if config.max_memory is not None else "this machine's ")
                        + f"{size(limit)}; hash the ids into a smaller space or raise --max-memory", tr.name)
    if device is not None and device[1]:
        from ..errors import DeviceError

        raise DeviceError(device[1])


def _device_memory(plan, size) -> tuple[str, str | None]:
    """The dry run's line on device memory (--device cuda or auto), and why
    the run does not fit the device (for --device cuda), or None."""
    from ..gpu.device import free_memory

    m = plan.device_memory()
    free, what = free_memory()
    text = (f"{size(m.total)} on a CUDA device: {size(m.parameters)} parameters, {size(m.state)} optimizer "
            f"state, {size(m.data)} resident data, {size(m.scratch)} scratch; ")
    if free is None:
        return text + f"no device here ({what})", None
    text += f"{what}: {size(free)} free"
    if m.total <= free:
        return text, None
    if plan.config.device == "auto":
        return text + " (does not fit: --device auto would train on the CPU)", None
    return text, (f"the run needs {size(m.total)} of device memory, more than the {size(free)} free on "
                  f"{what}; hash the ids into a smaller space, lower -k, or train on the CPU")
