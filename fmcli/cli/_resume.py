"""``fm train --resume DIR``: which other options may come with it.

A resumed run is the checkpoint's run: its model, its data and its
hyperparameters.  An option given with --resume (on the command line, in an
FM_TRAIN_* variable or in the --config file; built-in defaults do not count)
is

- applied, when it changes neither the model nor the data: where and how
  the result is written and logged, the resources used, the cache;
- applied with checks, for -t/--epochs: a run can be extended (or ended
  sooner) exactly, as long as no step-size schedule depends on its length;
- accepted when it repeats the checkpoint's own value (a script that adds
  --resume to its usual command line), and otherwise refused: all such
  options are named in one line, exit status 2.
"""

from __future__ import annotations

import os
from typing import Any

import click
from click.core import ParameterSource

from ..config import Config
from ..errors import UsageError

__all__ = ["RUN_OPTIONS", "CONFIG_OPTIONS", "resume_settings"]

# Options of the command itself, used as given: outputs, logging, locking.
RUN_OPTIONS = frozenset({"output", "quiet", "log_json", "lock_timeout", "dry_run", "no_optimizer_state",
                         "config_file", "resume_dir"})
# Config fields that may change on resume (they change no weight, except
# --threads, which trades Hogwild's run-to-run variation for speed, and the
# Dask scheduler: a resumed run may find its cluster elsewhere, or its
# workers fewer or more).
CONFIG_OPTIONS = frozenset({"epochs", "threads", "max_memory", "keep_checkpoints", "cache", "cache_dir",
                            "cache_max_size", "cache_check", "scheduler", "scheduler_file", "scheduler_timeout",
                            "min_workers"})
# Schedules whose step size depends on the run's total length.
_LENGTH_SCHEDULES = ("linear", "cosine")
_PATHS = frozenset({"checkpoint_dir", "init_model"})
_GIVEN = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT, ParameterSource.DEFAULT_MAP,
          ParameterSource.PROMPT)


def _label(param: click.Parameter) -> str:
    """An option as --help names it: '-k/--factors', '--model', or an argument's metavar."""
    if isinstance(param, click.Argument):
        return param.metavar or (param.name or "").upper()
    return "/".join(param.opts + param.secondary_opts)


def _absolute(path: str | None) -> str | None:
    return path if path in (None, "-") else os.path.abspath(path)


def _same(name: str, value: Any, cfg: Config, run: dict) -> bool:
    """Whether an option given with --resume says what the checkpoint says."""
    if name == "train_files":
        return [_absolute(f) for f in value] == list(run.get("train_files") or [])
    if name in ("valid", "weights_file", "spec_file"):
        key = {"valid": "valid", "weights_file": "weights", "spec_file": "spec"}[name]
        return _absolute(value) == run.get(key)
    field = "format" if name == "fmt" else name
    if not hasattr(cfg, field):
        return False
    saved = getattr(cfg, field)
    if field in _PATHS and value is not None and saved is not None:
        return _absolute(value) == _absolute(saved)
    return saved == value


def resume_settings(ctx: click.Context, saved: dict) -> tuple[Config, dict[str, Any]]:
    """The configuration of a resumed run (the checkpoint's, with the options
    that may change applied) and the run options given with --resume
    (name -> value).  Raises UsageError naming every option that would
    change the model or the data."""
    cfg: Config = saved["config"]
    run: dict = saved["run"]
    changes: dict[str, Any] = {}
    given: dict[str, Any] = {}
    refused: list[str] = []
    for param in ctx.command.params:
        name = param.name
        if not name or ctx.get_parameter_source(name) not in _GIVEN:
            continue
        value = ctx.params.get(name)
        if isinstance(param, click.Argument) and not value:
            continue      # no TRAIN_FILE (click 8.1 counts an empty nargs=-1 as given)
        if name in RUN_OPTIONS:
            given[name] = value
        elif name in CONFIG_OPTIONS:
            if getattr(cfg, name) != value:
                changes[name] = value
        elif not _same(name, value, cfg, run):
            refused.append(_label(param))
    if refused:
        raise UsageError(
            f"--resume continues {saved['path']} with the model, data and settings it was started with: "
            f"{', '.join(refused)} cannot change (start a new run, or warm-start one with --init-model)")
    epochs = changes.get("epochs")
    if epochs is not None:
        begun = saved.get("epoch", 1) - (0 if saved.get("rows_done") else 1)   # epochs trained or under way
        if cfg.lr_schedule in _LENGTH_SCHEDULES:
            raise UsageError(f"-t/--epochs cannot change on --resume with --lr-schedule {cfg.lr_schedule}: "
                             f"its step sizes depend on the run's length ({cfg.epochs} epochs)")
        if epochs < max(begun, 1):
            raise UsageError(f"-t/--epochs {epochs}: {saved['path']} is past that ({begun} epochs trained "
                             "or under way)")
    return (cfg.replace(**changes) if changes else cfg), given
