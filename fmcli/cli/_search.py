"""What fm tune and fm train --tune-budget share: the options fm tune
refuses, a new search from fm train's options, and running a search to its
best model.  (fm train imports this module, not fmcli.cli.tune, which
imports fm train's options.)"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import signal

import click
from click.core import ParameterSource

from ..atomic import atomic_output, check_writable, output_lock
from ..config import AUTO_THREADS, Config, available_cpus
from ..safepaths import refuse_clobber
from . import _render
from ._status import signal_name

_DATA_SUFFIXES = (".ffm", ".libffm", ".svm", ".libsvm", ".txt", ".parquet", ".pq")
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".zst", ".zstd", ".lz4")


def default_output(train_file: str) -> str:
    """libffm-style default: the training file's base name, with '.fm'."""
    base = os.path.basename(train_file)
    for suffix in _COMPRESSION_SUFFIXES:
        if base.lower().endswith(suffix) and len(base) > len(suffix):
            base = base[: -len(suffix)]
            break
    for suffix in _DATA_SUFFIXES:
        if base.endswith(suffix) and len(base) > len(suffix):
            base = base[: -len(suffix)]
            break
    return base + ".fm"


# fm train's options that fm tune refuses, and why
REFUSED = {
    "epochs": "the search sets each trial's epochs: give --min-epochs and --max-epochs",
    "patience": "the search keeps each trial's best epoch itself",
    "auto_stop": "the search keeps each trial's best epoch itself",
    "early_stopping_metric": "the search ranks trials by --metric",
    "eval_every": "trials are validated at the end of every epoch",
    "init_model": "trials start from scratch (promoted ones continue from their previous rung)",
    "checkpoint_dir": "the search directory (--dir) keeps every trial's models; continue with --resume DIR",
    "checkpoint_every": "the search directory (--dir) keeps every trial's models; continue with --resume DIR",
    "keep_checkpoints": "the search directory (--dir) keeps every trial's models",
    "dry_run": "run fm train --dry-run to see what a trial would allocate",
    "log_json": "the search directory's results.jsonl records every trial",
    "rows_per_round": "with --scheduler each trial trains whole on one worker (the trials are spread "
                      "over the workers, not one trial's rows)",
    "syncs_per_epoch": "with --scheduler each trial trains whole on one worker (the trials are spread "
                       "over the workers, not one trial's rows)",
}
# fm train's parameters fm tune leaves out (it has its own of the same name, or
# is a search itself)
_LEFT_OUT = {"resume_dir", "config_file", "lock_timeout", "help", "tune_budget"}
# fm train's parameters that are not Config fields
_NOT_CONFIG = {"train_files", "output", "valid", "quiet", "no_optimizer_state", "fmt", "weights_file",
               "spec_file"}

_DEFAULT_TRIALS, _DEFAULT_MIN_EPOCHS, _DEFAULT_MAX_EPOCHS, _DEFAULT_REDUCTION = 27, 2, 30, 3


def _given(ctx: click.Context, name: str) -> bool:
    return ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT)


def _option_name(ctx: click.Context, name: str) -> str:
    for p in ctx.command.params:
        if p.name == name:
            longs = [o for o in p.opts if o.startswith("--")]
            return (longs or p.opts)[0]
    return name


def _search_and_write(ctx, search, output, directory, options, *, space_file, jobs, budget, started, resume,
                      refit, leaderboard_file, as_json, lock_timeout, quiet, say) -> None:
    """Run `search` (fm tune, fm train --tune-budget) and write its best
    model to `output`, the leaderboard and the summaries."""
    from .. import tune as core

    refuse_clobber({"the training file": search.train, "the validation file": search.valid,
                    "the --weights file": search.weights, "the --space file": space_file,
                    "the --config file": ctx.meta.get("fm.config_file")},
                   {"-o": output, "--leaderboard": leaderboard_file})
    spec = None
    if options.get("spec_file") is not None:
        from ..data.criteo import load_spec

        spec = load_spec(options["spec_file"])
    check_writable(output)
    with output_lock(output, lock_timeout), _cluster(search.config, say) as client, _signals() as stop:
        if client is not None:
            if jobs is None:
                threads = sum(w.get("nthreads", 1) for w in client.scheduler_info()["workers"].values())
                jobs = max(1, threads // search.config.threads)
            say(f"trials run on the Dask cluster's workers, {jobs} at a time")
        outcome = core.tune(search, directory, resume=resume, jobs=jobs, budget=budget,
                            started=started, client=client,
                            log=say, on_result=lambda row: say(_render.tune_result_line(row, search)),
                            should_stop=lambda: stop[0])
        best = outcome.best
        say(f"best: trial {best['trial']} ({_render.params_text(best['params'])}), va_{search.metric} "
            f"{best['value']:.5f} at epoch {best['best_epoch']}")
        if refit:
            say(f"refitting trial {best['trial']} on the training and validation data for "
                f"{best['best_epoch']} epoch(s)")
            model = core.refit(outcome, log=say)
        else:
            model = core.best_model(outcome)
        if spec is not None:
            from ..data.criteo import attach_spec

            attach_spec(model, spec)
        model.save(output, include_state=not options.get("no_optimizer_state"))
    if leaderboard_file is not None:
        _write_leaderboard(leaderboard_file, search, outcome.rows)
    _render.tune_leaderboard(outcome.rows, sorted(search.space), search.metric, quiet)
    say(f"wrote {output}" + (" (refitted on training + validation data)" if refit else "")
        + f"; the search is in {directory}")
    if as_json:
        _render.tune_summary({"output": output, "directory": directory, "refit": refit,
                            **{k: v for k, v in outcome.record().items() if k != "base_config"}})


def tune_in_train(ctx: click.Context, budget: float) -> None:
    """fm train --tune-budget: fm tune with --budget, its default space and
    defaults, the fm train options given fixed for every trial, writing the
    best model to -o (the search in OUTPUT.tune)."""
    import time

    started = time.monotonic()
    options = {k: v for k, v in ctx.params.items() if k not in _LEFT_OUT}
    for name, why in REFUSED.items():
        if _given(ctx, name):
            raise click.UsageError(f"{_option_name(ctx, name)} does not go with --tune-budget (fm tune "
                                   f"refuses it: {why})")
    quiet = options.get("quiet")
    say = (lambda msg: _render.info(msg, quiet))
    search, output, directory = _new_search(ctx, options, (), None, None, _DEFAULT_TRIALS, _DEFAULT_MIN_EPOCHS,
                                            _DEFAULT_MAX_EPOCHS, _DEFAULT_REDUCTION, None, None, None, say)
    _search_and_write(ctx, search, output, directory, options, space_file=None, jobs=None, budget=budget,
                      started=started, resume=False, refit=False, leaderboard_file=None, as_json=False,
                      lock_timeout=ctx.params.get("lock_timeout") or 0.0, quiet=quiet, say=say)


def _new_search(ctx, options, params, space_file, trials, bracket, min_epochs, max_epochs, reduction, metric,
                jobs, directory, say):
    from .. import tune as core

    train_files = options["train_files"]
    if not train_files:
        raise click.UsageError("Missing argument 'TRAIN_FILE...'.")
    if options["valid"] is None:
        raise click.UsageError("Missing option '-p' / '--valid': trials are ranked on a validation set.")
    output = options["output"]
    if output is None:
        from ..data.source import reads_once

        if reads_once(train_files[0]) or any(c in train_files[0] for c in "*?["):
            raise click.UsageError("tuning on stdin, a pipe or a glob needs -o/--output")
        output = default_output(train_files[0])
    directory = directory or output + ".tune"
    cfg_options = {k: v for k, v in options.items() if k not in _NOT_CONFIG and k not in REFUSED}
    cfg_options["format"] = options["fmt"]
    fixed = {("format" if n == "fmt" else n) for n in options if _given(ctx, n)}
    if "threads" not in fixed or cfg_options.get("threads") == AUTO_THREADS:   # -s auto: the tuner's own
        fixed.discard("threads")
        on_cluster = options.get("scheduler") is not None or options.get("scheduler_file") is not None
        cfg_options["threads"] = 1 if on_cluster else max(1, available_cpus() // (jobs or available_cpus()))
    cfg = Config(**cfg_options)
    # the space: the default one, then the file's parameters, then --param's
    space = core.default_space(cfg, fixed)
    where = {name: f"default space {name}" for name in space}
    given: dict[str, str] = {}
    if space_file is not None:
        for name, dist in core.read_space(space_file).items():
            space[name] = dist
            given[name] = where[name] = f"{space_file}: [space] {name}"
    for text in params:
        name, dist = core.parse_param(text)
        space[name] = dist
        given[name] = where[name] = f"--param {text.partition('=')[0].strip()}"
    for name, place in given.items():
        if name in fixed:
            raise click.UsageError(f"{name} is both fixed ({_option_name(ctx, name)}) and searched ({place}): "
                                   "give one of them")
    search = core.prepare(cfg, list(train_files), options["valid"], space=space, trials=trials,
                          bracket=bracket, min_epochs=min_epochs, max_epochs=max_epochs, reduction=reduction,
                          metric=metric, weights=options.get("weights_file"), where=where, log=say)
    search.output = os.path.abspath(output)
    searched = ", ".join(f"{n} ~ {d.text()}" for n, d in sorted(space.items()) if d.searched) or "nothing"
    say(f"searching {searched}: " + (f"{trials} trial(s)" if trials else "trials until the budget is spent")
        + f", a first bracket of {len(search.trials)} with rungs "
        + ", ".join(f"{r.size}x{r.epochs}" for r in search.plan) + " (trials x at most epochs), "
        + f"{cfg.threads} thread(s) per trial, seed {cfg.seed}")
    return search, output, directory


@contextlib.contextmanager
def _cluster(config: Config, say):
    """A Dask client of config's scheduler (fm tune --scheduler), closed at
    the end; None without one."""
    if config.scheduler is None and config.scheduler_file is None:
        yield None
        return
    from ..distributed import connect

    runner = connect(config, say)
    try:
        yield runner.client
    finally:
        runner.close()


@contextlib.contextmanager
def _signals():
    """SIGINT/SIGTERM ask the search to stop (stop[0] is the signal): the
    running trials are stopped and every finished result is kept."""
    stop: list = [None]

    def handler(signum, frame):
        if stop[0] is None:
            _render.info(f"fm: {signal_name(signum)}: stopping the search; continue it with fm tune --resume")
        stop[0] = signum

    saved = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            saved[signum] = signal.signal(signum, handler)
        except (ValueError, OSError):   # not the main thread
            pass
    try:
        yield stop
    finally:
        for signum, previous in saved.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(signum, previous)


def _write_leaderboard(path: str, search, rows) -> None:
    """CSV, or JSON lines for a name ending in .jsonl or .json."""
    from ..tune import flat_rows

    if path.lower().endswith((".jsonl", ".json")):
        text = _render.tune_jsonl(rows)
    else:
        columns, flat = flat_rows(search, rows)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for r in flat:
            writer.writerow({k: "" if v is None else v for k, v in r.items()})
        text = buf.getvalue()
    if path == "-":
        click.echo(text, nl=False)
        return
    with atomic_output(path, "w") as f:
        f.write(text)
