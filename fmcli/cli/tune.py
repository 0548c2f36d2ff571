"""`fm tune`: search hyperparameters (fmcli.tune), write the best model."""

from __future__ import annotations

import copy
import os

import click

from ..metrics import METRICS
from . import _render
from . import train as _train
from ._ops import config_option, lock_timeout_option
from ._options import Duration, InputPath, OutputPath
from ._search import (_DEFAULT_MAX_EPOCHS, _DEFAULT_MIN_EPOCHS, _DEFAULT_REDUCTION, _DEFAULT_TRIALS, _LEFT_OUT,
                      REFUSED, _given, _new_search, _option_name, _search_and_write)

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
            p.help = "Training threads of each trial (auto: the default).  [default: the CPUs / --jobs; 1 is reproducible]"
            p.show_default = False
        out.append(p)
    return out


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
    "tuning"; fm inspect shows its summary, --json all of it).

    First a successive halving: --bracket configurations spread over the
    space (the first is the untuned one, the defaults and options given,
    when the space holds it) are trained for --min-epochs, the best
    1/--reduction of them (ranked by their best value so far and the gains
    their last epochs promise) continue from their best epoch for
    --reduction times as many epochs, up to --max-epochs (one that stopped
    improving on its own goes on as it is and leaves its place to the
    next).  Then brackets of
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


tune.params.extend(_train_params())
