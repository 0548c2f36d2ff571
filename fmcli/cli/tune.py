"""`fm tune`: search hyperparameters (fmcli.tune), write the best model."""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import os
import signal

import click
from click.core import ParameterSource

from ..atomic import atomic_output, check_writable, output_lock
from ..config import Config, available_cpus
from ..metrics import METRICS
from ..safepaths import refuse_clobber
from . import _render
from . import train as _train
from ._ops import config_option, lock_timeout_option
from ._options import Duration, InputPath, OutputPath
from ._status import signal_name

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


def _train_params() -> list[click.Parameter]:
    """fm train's options and argument, copied (each command gets its own
    FM_<COMMAND>_* variable); the refused ones hidden."""
    out = []
    for param in _train.train.params:
        if param.name in _LEFT_OUT:
            continue
        p = copy.copy(param)
        if param.name in REFUSED:
            p.hidden = True
        elif param.name == "output":
            p.help = "Where to write the best model.  [default: TRAIN_FILE's base name + .fm]"
        elif param.name == "valid":
            p.help = "Validation file: trials are ranked by their metric on it (required)."
        elif param.name == "seed":
            p.help = ("Seed of the search's draw of configurations and of every trial's "
                      "initialisation and shuffling.")
        elif param.name == "threads":
            p.help = "Training threads of each trial.  [default: the CPUs / --jobs; 1 is reproducible]"
            p.show_default = False
        out.append(p)
    return out


def _given(ctx: click.Context, name: str) -> bool:
    return ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT)


def _option_name(ctx: click.Context, name: str) -> str:
    for p in ctx.command.params:
        if p.name == name:
            longs = [o for o in p.opts if o.startswith("--")]
            return (longs or p.opts)[0]
    return name


@click.command(context_settings={"show_default": True})
@click.option("--param", "params", multiple=True, metavar="NAME=SPEC",
              help="Search this hyperparameter (a Config field, e.g. l2, k, learning-rate, optimizer): "
                   "loguniform(A,B), uniform(A,B), int(A,B), intlog(A,B), choice(X,Y,...) or a fixed "
                   "value.  Repeatable; added to (or replacing) the default space.")
@click.option("--space", "space_file", type=InputPath("a space file"), default=None, show_default=False,
              help="TOML file whose [space] table gives parameters as --param does (l2 = "
                   "\"loguniform(1e-7, 1e-2)\"; k = [4, 8, 16] is a choice; a number is fixed).")
@click.option("--trials", type=click.IntRange(1), default=_DEFAULT_TRIALS,
              help="Configurations trained in all.  With --budget and without --trials: as many as "
                   "the budget allows.")
@click.option("--bracket", type=click.IntRange(1), default=_DEFAULT_TRIALS,
              help="Configurations of the first bracket, a successive halving over the space; "
                   "later brackets of --reduction configurations, proposed from the results so far, "
                   "train straight to their own early stop.")
@click.option("--budget", type=Duration(), default=None, show_default=False,
              help="Wall time (90s, 10m, 1h30m) for the search: brackets follow one another until "
                   "it is spent, then no trial starts a new rung; the best so far wins.  [default: none]")
@click.option("--min-epochs", type=click.IntRange(1), default=_DEFAULT_MIN_EPOCHS,
              help="Epochs of every trial at the first rung.")
@click.option("--max-epochs", type=click.IntRange(1), default=_DEFAULT_MAX_EPOCHS,
              help="Epochs of the trials of the last rung; every trial stops earlier after 2 epochs "
                   "without a better validation metric, keeping its best epoch.")
@click.option("--reduction", type=click.IntRange(2), default=_DEFAULT_REDUCTION,
              help="Each rung keeps the best 1/N trials of the previous one and trains them N times longer.")
@click.option("--metric", type=click.Choice(list(METRICS)), default=None, show_default=False,
              help="Validation metric that ranks the trials.  [default: logloss; rmse for regression]")
@click.option("--jobs", "-j", type=click.IntRange(1), default=None, show_default=False,
              help="Trials trained at once, each in its own process (with --scheduler: each a task on a "
                   "worker).  [default: the CPUs available; with --scheduler, the workers' threads / -s]")
@click.option("--dir", "directory", type=OutputPath(directory=True), default=None, show_default=False,
              help="The search's directory: its plan, results and every trial's models.  "
                   "[default: OUTPUT.tune]")
@click.option("--resume", "resume_dir", type=InputPath("a search directory", directory=True), default=None,
              show_default=False,
              help="Continue the search of this directory (after a crash, a signal or its budget): "
                   "finished trials are kept, the rest run.  Its settings are used; one given that "
                   "differs is refused (exit status 2); -o, -j, --budget, --refit and the outputs apply.")
@click.option("--leaderboard", "leaderboard_file", type=OutputPath(), default=None, show_default=False,
              help="Write one row per trial (parameters, rung, epochs, metrics, seconds, status): "
                   "CSV, or JSON lines when the name ends in .jsonl or .json.")
@click.option("--refit", is_flag=True,
              help="Train the best configuration again on the training and validation data together, "
                   "for its best epoch count, and write that model.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary of the search on stdout.")
@lock_timeout_option
@config_option("tune", "trials = 50, budget = \"10m\"")
def tune(params, space_file, trials, bracket, budget, min_epochs, max_epochs, reduction, metric, jobs, directory,
         resume_dir, leaderboard_file, refit, as_json, lock_timeout, **options):
    """Search hyperparameters for TRAIN_FILE... with validation on -p VALID
    and write the best model (its header holds the whole search under
    "tuning").

    First a successive halving: --bracket configurations spread over the
    space (the first is the untuned one, the defaults and options given,
    when the space holds it) are trained for --min-epochs, the best
    1/--reduction of them (ranked by their best value so far and the gains
    their last epochs promise) continue from their best epoch for
    --reduction times as many epochs, up to --max-epochs.  Then brackets of
    --reduction configurations, each proposed from the results so far, are
    trained to their own early stop, until --trials configurations ran, or
    with --budget until the time is spent.  Every trial stops after 2
    epochs without a better validation metric, keeping its best epoch.
    Trials run as separate processes, --jobs at a time; with -s 1 (the
    default when --jobs is the CPU count) and --trials without --budget, a
    search is reproducible for a --seed.  SIGINT/SIGTERM stop it (exit
    status 130/143) and --resume continues it.  With --scheduler (or
    --scheduler-file) the trials run as tasks on the Dask cluster's
    workers, each trial whole on one worker with -s threads (default 1),
    and give the same results; the data and the search directory must be
    at the same paths on every worker.

    \b
    The default space (parameters given as options are left out of it):
      k ~ intlog(4, 16)                        (not for --model lr)
      l2 ~ loguniform(5e-6, 1e-2)
      learning-rate ~ loguniform(0.05, 1)      (sgd, adagrad; adam: 1e-4 .. 0.1)
      ftrl-alpha ~ loguniform(0.01, 1), ftrl-beta ~ loguniform(0.1, 10)  (ftrl)

    Every other fm train option is fixed for all trials; -t, --patience,
    --auto-stop, --eval-every, --early-stopping-metric, --init-model,
    --resume, --checkpoint-*, --dry-run and --log-json are refused.  A
    parameter given as an option cannot also be searched.
    """
    import time

    from .. import tune as core

    started = time.monotonic()           # a --budget counts from here: reading the inputs is part of it
    ctx = click.get_current_context()
    if directory is not None and resume_dir is not None:
        raise click.UsageError("--dir and --resume name the search directory: give one of them")
    quiet = options.get("quiet")
    say = (lambda msg: _render.info(msg, quiet))
    for name, why in REFUSED.items():
        if _given(ctx, name):
            raise click.UsageError(f"{_option_name(ctx, name)} is not an option of fm tune: {why}")
    if resume_dir is not None:
        search = _resumed(ctx, resume_dir, params, space_file, say)
        directory = resume_dir
        output = options["output"] or search.output
        if output is None:
            raise click.UsageError(f"{resume_dir} does not say where to write the model: give -o")
    else:
        if budget is not None and not _given(ctx, "trials"):
            trials = None                # as many as the budget allows
        if not _given(ctx, "min_epochs"):
            min_epochs = min(min_epochs, max_epochs)
        search, output, directory = _new_search(ctx, options, params, space_file, trials, bracket,
                                                min_epochs, max_epochs, reduction, metric, jobs, directory, say)
    _search_and_write(ctx, search, output, directory, options, space_file=space_file, jobs=jobs, budget=budget,
                      started=started, resume=resume_dir is not None, refit=refit,
                      leaderboard_file=leaderboard_file, as_json=as_json, lock_timeout=lock_timeout,
                      quiet=quiet, say=say)


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
        output = _train.default_output(train_files[0])
    directory = directory or output + ".tune"
    cfg_options = {k: v for k, v in options.items() if k not in _NOT_CONFIG and k not in REFUSED}
    cfg_options["format"] = options["fmt"]
    fixed = {("format" if n == "fmt" else n) for n in options if _given(ctx, n)}
    if "threads" not in fixed:
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


def _resumed(ctx, directory, params, space_file, say):
    """The search of `directory`; an option given that differs from its record is refused."""
    from .. import tune as core

    search = core.reopen(directory, log=say)
    recorded = search.config.to_dict()
    diffs = []
    for p in ctx.command.params:
        name = p.name
        if not _given(ctx, name) or name in ("resume_dir", "output", "jobs", "budget", "refit", "as_json",
                                             "leaderboard_file", "lock_timeout", "quiet", "threads",
                                             "no_optimizer_state", "spec_file", "cache", "cache_dir",
                                             "cache_max_size", "directory"):
            continue
        if name in core.WHERE_TRIALS_RUN:       # where the trials run, not what they are
            search.config = search.config.replace(**{name: ctx.params.get(name)})
            continue
        value = ctx.params.get(name)
        key = "format" if name == "fmt" else name
        if key in recorded:
            same = recorded[key] == value
        elif name == "train_files":
            same = [os.path.abspath(f) for f in value] == search.train
        elif name == "valid":
            same = os.path.abspath(value) == search.valid
        elif name == "weights_file":
            same = os.path.abspath(value) == search.weights
        elif name in ("trials", "bracket", "min_epochs", "max_epochs", "reduction", "metric"):
            same = getattr(search, "max_trials" if name == "trials" else name) == value
        elif name in ("params", "space_file"):
            same = False
            if name == "params":
                parsed = dict(core.parse_param(t) for t in value)
            else:
                parsed = core.read_space(value)
            same = all(search.space.get(n) == d for n, d in parsed.items())
        else:
            same = False
        if not same:
            diffs.append(_option_name(ctx, name))
    if diffs:
        raise click.UsageError(f"{directory} holds a search with other settings: {', '.join(diffs)} "
                               "differ(s) from its record; resume it without them, or start a new search")
    say(f"resuming the search in {directory}")
    return search


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


tune.params.extend(_train_params())
