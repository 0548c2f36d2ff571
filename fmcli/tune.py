"""Hyperparameter search: synchronous successive halving over Config fields.

A search samples ``trials`` configurations from a *space* (a distribution
per hyperparameter, each a :class:`~fmcli.config.Config` field) with a
seeded generator, trains every one of them for a few epochs (rung 0), keeps
the best ``1/reduction`` of them and trains those ``reduction`` times
longer (rung 1), and so on up to ``max_epochs``.  A promoted trial
continues from the model its previous rung ended with (a warm start, see
:func:`fmcli.train.train`'s ``parent``) instead of starting over.  A trial's
value at a rung is the best validation metric over its epochs so far; the
model of that epoch is kept.

Trials run in separate worker processes (fresh interpreters running
:func:`serve`, fed jobs through a pipe: nothing of this process's state is
shared, and a caller's script needs no ``__main__`` guard), ``jobs`` at a
time, each with ``threads`` training threads; with one thread per trial every result is bit-for-bit
reproducible for a seed.  The data are read once here before any trial
starts, so that every trial reads the binary cache.

Everything a search is lives in its directory:

- ``tune.json``: the search (base configuration, space, seed, the sampled
  trial configurations, the rung plan, the inputs), written once;
- ``results.jsonl``: one line per finished (trial, rung), appended and
  fsync'ed as each one ends;
- ``trials/NNNN/``: each trial's models (the end of each rung, to continue
  from, and its best epoch's).

A search that stopped (a crash, SIGKILL, a signal, its time budget) is
continued by :func:`tune` with ``resume=True``: the recorded (trial, rung)
results are reused and the others run again, so that with a fixed number of
trials and one thread per trial the final leaderboard is the one an
uninterrupted search gives.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .atomic import atomic_output, prepare_directory
from .config import Config, available_cpus
from .errors import ConfigError, DataError, FMError, Interrupted, UsageError
from .metrics import DEFAULT_METRIC, METRICS, is_better

__all__ = ["Dist", "SEARCHABLE", "parse_spec", "parse_param", "read_space", "default_space", "check_space",
           "sample_trials", "base_point", "plan_rungs", "parse_duration", "Search", "Outcome", "prepare", "open_search", "reopen",
           "tune", "best_model", "refit", "leaderboard", "flat_rows"]

FORMAT_VERSION = 1
SPACE_TABLE = "space"          # the TOML table of a --space file
DEFAULT_TRIALS = 27
DEFAULT_MAX_EPOCHS = 9
DEFAULT_REDUCTION = 3

# ---------------------------------------------------------------------------
# the search space
# ---------------------------------------------------------------------------

# The Config fields a search may vary, with the type of their values.
SEARCHABLE: dict[str, type] = {
    "model": str, "k": int, "optimizer": str, "learning_rate": float,
    "l2": float, "l2_bias": float, "l2_linear": float, "l2_factors": float, "l1": float,
    "adam_beta1": float, "adam_beta2": float, "adam_eps": float, "ftrl_alpha": float, "ftrl_beta": float,
    "batch_size": int, "lr_schedule": str, "warmup_steps": int, "clip_norm": float,
    "label_smoothing": float, "class_weight": str, "init_scale": float, "normalize": bool,
    "use_bias": bool, "use_linear": bool, "storage": str, "exact_adagrad": bool,
}

# Fields that are never searched, and why.
_OWNED = {
    "epochs": "the tuner sets each trial's epochs (--min-epochs, --max-epochs)",
    "patience": "the tuner keeps each trial's best epoch itself",
    "auto_stop": "the tuner keeps each trial's best epoch itself",
    "early_stopping_metric": "the tuner's metric is --metric",
    "seed": "the search's seed is fixed for all trials (--seed)",
    "init_model": "trials start from scratch (promoted ones from their previous rung)",
}

# Other names a parameter is known by: the options' long names.
_ALIASES = {"factors": "k", "norm": "normalize", "bias": "use_bias", "linear": "use_linear",
            "lr": "learning_rate", "eta": "learning_rate", "lambda": "l2"}

_DISTRIBUTIONS = ("loguniform", "uniform", "int", "intlog", "choice")


@dataclass(frozen=True)
class Dist:
    """One parameter's distribution: ``kind`` is loguniform, uniform, int
    (uniform integers, both ends included), intlog (log-uniform integers),
    choice (one of ``values``, equally likely) or fixed (``values[0]``)."""

    kind: str
    values: tuple

    def sample(self, rng: np.random.Generator):
        k, v = self.kind, self.values
        if k == "fixed":
            return v[0]
        if k == "choice":
            return v[int(rng.integers(len(v)))]
        if k == "int":
            return int(rng.integers(v[0], v[1] + 1))
        if k == "intlog":
            x = math.exp(rng.uniform(math.log(v[0]), math.log(v[1] + 1)))
            return int(min(max(math.floor(x), v[0]), v[1]))
        if k == "loguniform":
            x = math.exp(rng.uniform(math.log(v[0]), math.log(v[1])))
        else:
            x = rng.uniform(v[0], v[1])
        # four significant digits: readable, and the same in every record
        return min(max(float(f"{x:.4g}"), v[0]), v[1])

    @property
    def searched(self) -> bool:
        return self.kind != "fixed" and not (self.kind == "choice" and len(self.values) == 1)

    def text(self) -> str:
        """The spec this distribution is written as (parse_spec reads it back)."""
        if self.kind == "fixed":
            return _value_text(self.values[0])
        return f"{self.kind}({', '.join(_value_text(x) for x in self.values)})"


def _value_text(x) -> str:
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, float):
        return repr(x)
    return str(x)


_INT = re.compile(r"[+-]?\d+")
_CALL = re.compile(r"\s*([A-Za-z_]\w*)\s*\((.*)\)\s*", re.DOTALL)


def _parse_value(token: str):
    """A number, true/false, or a name (quotes optional)."""
    t = token.strip()
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "'\"":
        return t[1:-1]
    if _INT.fullmatch(t):
        return int(t)
    low = t.lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        x = float(t)
    except ValueError:
        return t
    return x


def canonical_name(name: str, where: str) -> str:
    """The Config field a parameter name means (long option names and
    '-' for '_' accepted); ConfigError for one that cannot be searched."""
    key = name.strip().replace("-", "_").lower()
    key = _ALIASES.get(key, key)
    if key in SEARCHABLE:
        return key
    if key in _OWNED:
        raise ConfigError(f"{where}: {name} cannot be searched: {_OWNED[key]}")
    fields = {f.name for f in dataclasses.fields(Config)}
    if key in fields:
        raise ConfigError(f"{where}: {name} cannot be searched (not a hyperparameter: it is the same "
                          "for every trial; give it as an option)")
    close = difflib.get_close_matches(key, sorted(SEARCHABLE) + sorted(_ALIASES), n=1)
    raise ConfigError(f"{where}: unknown parameter {name!r}"
                      + (f" (did you mean {close[0]}?)" if close else "")
                      + f"; searchable: {', '.join(sorted(SEARCHABLE))}")


def parse_spec(name: str, spec: Any, where: str) -> Dist:
    """A distribution from its text (``loguniform(1e-7, 1e-2)``,
    ``uniform(a, b)``, ``int(a, b)``, ``intlog(a, b)``, ``choice(x, y, ...)``
    or a fixed value), or from a TOML value (a list is a choice, a number,
    boolean or string without parentheses a fixed value).  `name` must be
    canonical (see :func:`canonical_name`); `where` names the place in
    messages.  Checked for the parameter's type only (see :func:`check_space`)."""
    kind_of = SEARCHABLE[name]
    if isinstance(spec, list):
        if not spec:
            raise ConfigError(f"{where}: an empty list of choices")
        dist = Dist("choice", tuple(spec))
    elif isinstance(spec, (bool, int, float)):
        dist = Dist("fixed", (spec,))
    elif isinstance(spec, str):
        m = _CALL.fullmatch(spec)
        if m is None:
            if "(" in spec or ")" in spec:
                raise ConfigError(f"{where}: {spec!r} is not a distribution such as loguniform(1e-7, 1e-2), "
                                  "uniform(A, B), int(A, B), intlog(A, B) or choice(X, Y, ...)")
            dist = Dist("fixed", (_parse_value(spec),))
        else:
            kind, body = m.group(1).lower(), m.group(2)
            if kind not in _DISTRIBUTIONS:
                close = difflib.get_close_matches(kind, _DISTRIBUTIONS, n=1)
                raise ConfigError(f"{where}: unknown distribution {m.group(1)!r}"
                                  + (f" (did you mean {close[0]}?)" if close else "")
                                  + f"; one of {', '.join(_DISTRIBUTIONS)}")
            args = [_parse_value(a) for a in body.split(",")] if body.strip() else []
            if any(a == "" for a in args):
                raise ConfigError(f"{where}: an empty value in {spec!r}")
            dist = Dist(kind, tuple(args))
    else:
        raise ConfigError(f"{where}: expected a distribution (a string such as \"loguniform(1e-7, 1e-2)\"), "
                          f"a list of choices or a value, got {type(spec).__name__}")
    return _typed(dist, kind_of, where)


def _typed(dist: Dist, kind_of: type, where: str) -> Dist:
    """`dist` with values of the parameter's type, or ConfigError."""
    k, v = dist.kind, dist.values
    spec = dist.text()
    if k in ("loguniform", "uniform", "int", "intlog"):
        if len(v) != 2 or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
            raise ConfigError(f"{where}: {k} takes two numbers (low, high), got {spec}")
        low, high = v
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ConfigError(f"{where}: {k} needs low < high (finite), got {spec}")
        if k in ("loguniform", "intlog") and low <= 0:
            raise ConfigError(f"{where}: {k} needs low > 0, got {spec}")
        if k in ("int", "intlog"):
            if not all(isinstance(x, int) for x in v):
                raise ConfigError(f"{where}: {k} takes two integers, got {spec}")
            if kind_of is float:
                raise ConfigError(f"{where}: this parameter is a real number: use uniform or "
                                  f"loguniform, not {k}")
        elif kind_of is not float:
            raise ConfigError(f"{where}: this parameter is {_type_word(kind_of)}: "
                              + ("use int or intlog" if kind_of is int else "use choice(...)")
                              + f", not {k}")
        return Dist(k, (float(low), float(high)) if kind_of is float else (int(low), int(high)))
    values = []
    for x in v:
        if kind_of is float and isinstance(x, (int, float)) and not isinstance(x, bool):
            x = float(x)
        elif kind_of is int and isinstance(x, float) and x.is_integer():
            x = int(x)
        if not isinstance(x, kind_of) or (kind_of is int and isinstance(x, bool)):
            raise ConfigError(f"{where}: {_value_text(x)!s} is not {_type_word(kind_of)}")
        values.append(x)
    if k == "choice" and len(set(values)) != len(values):
        raise ConfigError(f"{where}: a choice repeats a value: {spec}")
    return Dist(k, tuple(values))


def _type_word(t: type) -> str:
    return {int: "an integer", float: "a number", str: "a name", bool: "true or false"}[t]


def parse_param(text: str) -> tuple[str, Dist]:
    """``NAME=SPEC`` (a --param option) as (Config field, distribution)."""
    name, sep, spec = text.partition("=")
    if not sep or not name.strip() or not spec.strip():
        raise ConfigError(f"--param {text}: expected NAME=SPEC, e.g. l2=loguniform(1e-7,1e-2) or k=choice(4,8,16)")
    where = f"--param {name.strip()}"
    key = canonical_name(name, where)
    return key, parse_spec(key, spec.strip(), where)


def read_space(path: str) -> dict[str, Dist]:
    """The ``[space]`` table of a TOML file: ``l2 = "loguniform(1e-7, 1e-2)"``,
    ``k = [4, 8, 16]`` (a choice), ``normalize = false`` (fixed)."""
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        import tomli as tomllib
    from .errors import InputNotFoundError

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise InputNotFoundError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputNotFoundError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not a TOML file: {str(exc).splitlines()[0]}") from None
    table = data.get(SPACE_TABLE)
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: no [{SPACE_TABLE}] table (e.g. [{SPACE_TABLE}] l2 = \"loguniform(1e-7, 1e-2)\")")
    others = sorted(k for k in data if k != SPACE_TABLE and not isinstance(data[k], dict))
    if others:
        raise ConfigError(f"{path}: key {others[0]} is outside the [{SPACE_TABLE}] table")
    space: dict[str, Dist] = {}
    for key, spec in table.items():
        where = f"{path}: [{SPACE_TABLE}] {key}"
        name = canonical_name(key, where)
        if name in space:
            raise ConfigError(f"{where}: {name} is given twice")
        space[name] = parse_spec(name, spec, where)
    return space


def default_space(config: Config, fixed: Sequence[str] = ()) -> dict[str, Dist]:
    """The space searched when none is given, for `config`'s model and
    optimizer, leaving out the parameters in `fixed` (given as options):
    k ~ intlog(2, 32) (models with factors), l2 ~ loguniform(1e-7, 1e-2),
    the step size ~ loguniform(0.01, 1) for sgd and the AdaGrads,
    loguniform(1e-4, 0.1) for adam; FTRL: ftrl_alpha ~ loguniform(0.01, 1)
    and ftrl_beta ~ loguniform(0.1, 10)."""
    space: dict[str, Dist] = {}
    if config.model != "lr":
        space["k"] = Dist("intlog", (2, 32))
    space["l2"] = Dist("loguniform", (1e-7, 1e-2))
    if config.optimizer == "ftrl":
        space["ftrl_alpha"] = Dist("loguniform", (0.01, 1.0))
        space["ftrl_beta"] = Dist("loguniform", (0.1, 10.0))
    elif config.optimizer == "adam":
        space["learning_rate"] = Dist("loguniform", (1e-4, 0.1))
    else:
        space["learning_rate"] = Dist("loguniform", (0.01, 1.0))
    return {k: v for k, v in space.items() if k not in set(fixed)}


def check_space(space: Mapping[str, Dist], base: Config, where: Mapping[str, str] | None = None) -> None:
    """Every value a distribution can take (the ends of a range, each
    choice) must be one Config accepts on `base`; ConfigError naming the
    parameter's place (`where`: name -> place) otherwise."""
    where = where or {}
    for name, dist in space.items():
        ends = dist.values
        if dist.kind in ("int", "intlog", "loguniform", "uniform"):
            ends = (dist.values[0], dist.values[1])
        for value in ends:
            changes = {name: value}
            if name == "learning_rate" and base.optimizer == "ftrl" and "optimizer" not in space:
                raise ConfigError(f"{where.get(name, name)}: FTRL's step size is ftrl_alpha: search that "
                                  "instead of learning_rate")
            try:
                _trial_config(base, changes)
            except ConfigError as exc:
                raise ConfigError(f"{where.get(name, name)}: {_value_text(value)}: {exc}") from None


def _trial_config(base: Config, params: Mapping[str, Any]) -> Config:
    """`base` with a trial's parameters (a step size is left out for FTRL,
    whose step size is ftrl_alpha, when the optimizer itself is searched)."""
    changes = dict(params)
    if changes.get("optimizer", base.optimizer) == "ftrl" and "learning_rate" in changes \
            and "optimizer" in changes:
        changes["learning_rate"] = None
    return base.replace(**changes)


def sample_trials(space: Mapping[str, Dist], n: int, seed: int) -> list[dict[str, Any]]:
    """`n` configurations drawn from `space` (in parameter-name order, so the
    draw does not depend on how the space was written), distinct as long as
    the space allows."""
    rng = np.random.default_rng([int(seed), 0x7475])
    names = sorted(space)
    out: list[dict[str, Any]] = []
    seen: set[tuple] = set()
    for _ in range(n):
        for _attempt in range(100):
            params = {name: space[name].sample(rng) for name in names}
            key = tuple(params[name] for name in names)
            if key not in seen:
                break
        seen.add(key)
        out.append(params)
    return out


def base_point(space: Mapping[str, Dist], config: Config) -> dict[str, Any] | None:
    """The configuration's own values of the searched parameters (the
    defaults and the options given), or None when one of them lies outside
    the space: the search's first trial, so that the untuned settings always
    take part."""
    point: dict[str, Any] = {}
    for name, dist in space.items():
        value = getattr(config, name, None)
        if name == "learning_rate" and value is None:
            value = config.step_size          # the optimizer's default step size
        k, v = dist.kind, dist.values
        if k == "fixed":
            value = v[0]
        elif value is None or isinstance(value, bool) != isinstance(v[0], bool):
            return None
        elif k == "choice":
            if value not in v:
                return None
        elif not (isinstance(value, (int, float)) and v[0] <= value <= v[1]):
            return None
        elif k in ("int", "intlog") and int(value) != value:
            return None
        point[name] = int(value) if k in ("int", "intlog") else value
    return {name: point[name] for name in sorted(point)}


@dataclass(frozen=True)
class Rung:
    size: int      # trials trained at this rung
    epochs: int    # epochs each of them has been trained for at its end


def plan_rungs(trials: int, min_epochs: int, max_epochs: int, reduction: int) -> list[Rung]:
    """Successive halving: `trials` configurations for `min_epochs`, then
    the best 1/`reduction` of them for `reduction` times the epochs, ...,
    the last rung at `max_epochs`.  Once one trial is left it goes straight
    to `max_epochs`."""
    if trials < 1:
        raise ConfigError(f"--trials must be at least 1, got {trials}")
    if not 1 <= min_epochs <= max_epochs:
        raise ConfigError(f"--min-epochs must be between 1 and --max-epochs ({max_epochs}), got {min_epochs}")
    if reduction < 2:
        raise ConfigError(f"--reduction must be at least 2, got {reduction}")
    rungs = [Rung(trials, min_epochs)]
    while rungs[-1].epochs < max_epochs:
        size = max(1, rungs[-1].size // reduction)
        epochs = max_epochs if size == 1 else min(rungs[-1].epochs * reduction, max_epochs)
        rungs.append(Rung(size, epochs))
    return rungs


_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(h|m|min|s|sec)?", re.IGNORECASE)


def parse_duration(text: str) -> float:
    """Seconds from 90, 90s, 10m, 1.5h, 1h30m.  ValueError with a reason."""
    s = str(text).strip().lower().replace(" ", "")
    scale = {"h": 3600, "m": 60, "min": 60, "s": 1, "sec": 1, None: 1}
    total, pos = 0.0, 0
    while pos < len(s):
        m = _DURATION.match(s, pos)
        if m is None:
            break
        total += float(m.group(1)) * scale[m.group(2)]
        pos = m.end()
    if not s or pos != len(s):
        raise ValueError(f"{text!r} is not a duration such as 90s, 10m or 1h30m")
    if total <= 0:
        raise ValueError("the duration must be positive")
    return total


# ---------------------------------------------------------------------------
# the search and its directory
# ---------------------------------------------------------------------------

@dataclass
class Search:
    """What defines a search (tune.json): a search resumed must be the same."""

    config: Config                       # the base configuration of every trial
    space: dict[str, Dist]
    trials: list[dict[str, Any]]         # the sampled configurations, trial i = trials[i]
    plan: list[Rung]
    metric: str
    train: list[str]
    valid: str
    weights: str | None = None
    min_epochs: int = 1
    max_epochs: int = DEFAULT_MAX_EPOCHS
    reduction: int = DEFAULT_REDUCTION
    data: dict = field(default_factory=dict)   # rows and values of the inputs when the search began
    output: str | None = None                  # where the command writes the best model (not compared)

    @property
    def seed(self) -> int:
        return self.config.seed

    def definition(self) -> dict:
        """The JSON record; everything but the data key is compared on resume."""
        return {
            "config": self.config.to_dict(),
            "space": {name: d.text() for name, d in sorted(self.space.items())},
            "seed": self.seed,
            "metric": self.metric,
            "train": list(self.train), "valid": self.valid, "weights": self.weights,
            "min_epochs": self.min_epochs, "max_epochs": self.max_epochs, "reduction": self.reduction,
            "plan": [dataclasses.asdict(r) for r in self.plan],
            "trials": [dict(t) for t in self.trials],
        }

    def trial_config(self, trial: int) -> Config:
        return _trial_config(self.config, self.trials[trial])


def _absolute(paths):
    if paths is None:
        return None
    if isinstance(paths, (str, os.PathLike)):
        return os.path.abspath(os.fspath(paths))
    return [os.path.abspath(os.fspath(p)) for p in paths]


def _read_inputs(config: Config, train, valid, weights, log) -> tuple[Config, dict]:
    """Read the data as a trial will (filling the binary cache), with every
    check training makes; the configuration with its task decided, and a
    key of the data (rows, values) that a resumed search must find again."""
    from .train import plan_training

    plan = plan_training(config, list(train), valid, weights=weights, log=log, dry_run=True)
    try:
        key = {"train_rows": plan.tr.n_rows, "train_values": plan.tr.nnz,
               "valid_rows": plan.va.n_rows if plan.va is not None else 0}
        return plan.config, key
    finally:
        plan.close()


def prepare(config: Config, train: Sequence[str], valid: str, *, space: Mapping[str, Dist],
            trials: int = DEFAULT_TRIALS, min_epochs: int = 1, max_epochs: int = DEFAULT_MAX_EPOCHS,
            reduction: int = DEFAULT_REDUCTION, metric: str | None = None, weights: str | None = None,
            where: Mapping[str, str] | None = None, log: Callable[[str], None] | None = None) -> Search:
    """A new search: check the space and settings against `config` (the base
    of every trial; its seed seeds the draw and every trial's training), read
    the data once, draw the trials and plan the rungs."""
    say = log or (lambda msg: None)
    if valid is None:
        raise UsageError("a search needs a validation set (-p/--valid)")
    from .data.source import expand_inputs, reads_once

    for what, paths in (("training", list(train)), ("validation", [valid]), ("weights", [weights])):
        paths = [os.fspath(p) for p in paths if p is not None]
        for path in expand_inputs(paths) if paths else ():
            if reads_once(path):
                raise ConfigError(f"{path}: fm tune reads its {what} data once per trial, so it needs a file, "
                                  "not standard input, a pipe or a FIFO (write it to a file first)")
    if config.stop_patience or config.checkpoint_dir or config.init_model:
        raise ConfigError("a search sets early stopping, checkpoints and warm starts itself")
    plan = plan_rungs(trials, min_epochs, max_epochs, reduction)
    check_space(space, config, where)
    base, data = _read_inputs(config.replace(epochs=1), train, valid, weights, say)
    metric = metric or DEFAULT_METRIC[base.task]
    if metric not in METRICS:
        raise ConfigError(f"--metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if base.task not in METRICS[metric][0]:
        raise ConfigError(f"metric {metric} is not defined for the {base.task} task "
                          f"(it applies to: {', '.join(METRICS[metric][0])})")
    # the first trial is the untuned configuration when the space holds it
    first = base_point(space, base)
    drawn = sample_trials(space, trials, base.seed)
    if first is not None:
        drawn = ([first] + [t for t in drawn if t != first])[:trials]
    return Search(config=base, space=dict(space), trials=drawn, plan=plan, metric=metric,
                  train=_absolute(list(train)), valid=_absolute(valid), weights=_absolute(weights),
                  min_epochs=min_epochs, max_epochs=max_epochs, reduction=reduction, data=data)


def _tune_file(directory: str) -> str:
    return os.path.join(directory, "tune.json")


def _results_file(directory: str) -> str:
    return os.path.join(directory, "results.jsonl")


def open_search(directory: str) -> Search:
    """The search recorded in `directory` (its tune.json)."""
    from .errors import InputNotFoundError

    path = _tune_file(directory)
    try:
        with open(path, encoding="utf-8") as f:
            rec = json.load(f)
    except FileNotFoundError:
        raise InputNotFoundError(f"{directory}: not a search directory (no tune.json)") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read the search: {exc}") from None
    if not isinstance(rec, dict) or rec.get("format") != FORMAT_VERSION:
        raise ConfigError(f"{path}: not a search record of this version of fm tune")
    try:
        config = Config.from_dict(rec["config"])
        space = {}
        for name, text in rec["space"].items():
            space[name] = parse_spec(name, text, f"{path}: space {name}")
        return Search(config=config, space=space, trials=[dict(t) for t in rec["trials"]],
                      plan=[Rung(**r) for r in rec["plan"]], metric=rec["metric"], train=list(rec["train"]),
                      valid=rec["valid"], weights=rec.get("weights"), min_epochs=rec["min_epochs"],
                      max_epochs=rec["max_epochs"], reduction=rec["reduction"], data=rec.get("data") or {},
                      output=rec.get("output"))
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: a damaged search record ({type(exc).__name__}: {exc})") from None


def reopen(directory: str, log: Callable[[str], None] | None = None) -> Search:
    """The search recorded in `directory`, its inputs read again (filling
    the cache if it went) and checked to be the data it began with."""
    search = open_search(directory)
    _, data = _read_inputs(search.config, search.train, search.valid, search.weights, log or (lambda m: None))
    if search.data and data != search.data:
        raise ConfigError(f"the data of the search in {directory} changed since it began "
                          f"({search.data}, now {data})")
    return search


def differences(recorded: Search, other: Search) -> list[str]:
    """The parts of `other`'s definition that are not `recorded`'s."""
    a, b = recorded.definition(), other.definition()
    out = []
    for key in a:
        if key == "trials":
            continue
        if key == "config":
            out += [f"{k} ({a['config'].get(k)!r}, now {v!r})" for k, v in b["config"].items()
                    if a["config"].get(k) != v and k != "threads"]
        elif a[key] != b[key]:
            out.append(f"{key} ({a[key]!r}, now {b[key]!r})")
    return out


def _write_json(path: str, obj: dict) -> None:
    with atomic_output(path, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=False)
        f.write("\n")


def _create(directory: str, search: Search) -> None:
    prepare_directory(directory, "search directory")
    if os.path.exists(_tune_file(directory)):
        raise UsageError(f"{directory} already holds a search: continue it with --resume {directory}, "
                         "or give another --dir")
    _write_json(_tune_file(directory), {"format": FORMAT_VERSION, **search.definition(), "data": search.data,
                                        "output": search.output})
    # a results file left by nothing: start it empty
    with atomic_output(_results_file(directory), "w"):
        pass


def _load_results(directory: str) -> dict[tuple[int, int], dict]:
    """(trial, rung) -> its result line; a torn last line (a kill while
    appending) is ignored, and so is a result whose model files are gone."""
    out: dict[tuple[int, int], dict] = {}
    try:
        with open(_results_file(directory), encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return out
    for line in lines:
        try:
            row = json.loads(line)
            key = (int(row["trial"]), int(row["rung"]))
        except (ValueError, KeyError, TypeError):
            continue
        if row.get("status") == "ok" and not all(
                os.path.exists(os.path.join(directory, row[k])) for k in ("model", "last")):
            continue
        out[key] = row
    return out


def _append(directory: str, row: dict) -> None:
    """One result line, appended and fsync'ed (a kill leaves at most a torn last line)."""
    data = (json.dumps(row, sort_keys=True) + "\n").encode()
    fd = os.open(_results_file(directory), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------
# one (trial, rung): runs in a worker process
# ---------------------------------------------------------------------------

def _epoch_seed(seed: int, epoch: int) -> int:
    """The seed of a trial's epoch (its first: the configuration's own, so that
    a one-epoch trial is `fm train -t 1`)."""
    if epoch == 1:
        return seed
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0] & 0x7FFFFFFF)


def serve() -> None:
    """A worker process: reads jobs (JSON lines) on stdin, answers each with
    its result line on stdout, until stdin ends.  Anything else printed goes
    to stderr."""
    import signal
    import sys

    # Ctrl-C reaches the whole process group: the search decides what stops
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    for line in sys.stdin:
        if line.strip():
            out.write(json.dumps(run_rung(json.loads(line))) + "\n")
            out.flush()


def run_rung(job: dict) -> dict:
    """Train one trial from its previous rung's end (or from scratch) up to
    this rung's epochs, one epoch per training run, keeping the model of its
    best epoch so far.  Returns the result line; a training error (a
    diverged trial, a configuration the space made invalid) is a result
    with status "failed"."""
    from .model import load_model
    from .train import train

    t0 = time.perf_counter()
    trial, rung, metric = job["trial"], job["rung"], job["metric"]
    out = os.path.join(job["dir"], job["trial_dir"])
    history = list(job["history"])
    best = dict(job["best"]) if job["best"] else None
    row = {"trial": trial, "rung": rung}
    epoch = job["from"]
    try:
        config = _trial_config(Config.from_dict(job["config"]), job["params"])
        model = load_model(os.path.join(job["dir"], job["start"]), mmap=False) if job["start"] else None
        os.makedirs(out, exist_ok=True)
        improved = False
        for epoch in range(job["from"] + 1, job["to"] + 1):
            model = train(config.replace(epochs=1, seed=_epoch_seed(config.seed, epoch)),
                          job["train"], job["valid"], weights=job["weights"], parent=model)
            meta = model.meta
            t = meta["training"]
            step = {k: v for k, v in t["history"][0].items() if k not in ("seconds", "rows_per_s")}
            history.append({**step, "epoch": epoch})
            # the model is the trial's after `epoch` epochs, not a one-epoch run's
            t.update(history=list(history), epochs_run=epoch, model_epoch=epoch, best_epoch=None)
            meta["hyperparameters"].update(epochs=epoch, seed=config.seed)
            meta.pop("parent", None)
            value = (t.get("valid_metrics") or {}).get(metric)
            if value is not None and (best is None or is_better(metric, value, best["value"])):
                best = {"value": value, "epoch": epoch, "metrics": dict(t["valid_metrics"])}
                improved = True
                best_model = model
                if epoch < job["to"]:   # a later epoch may be better: keep this one now
                    best_model.save(os.path.join(out, f"r{rung}-best.fm"))
        last = os.path.join(job["trial_dir"], f"r{rung}.fm")
        model.save(os.path.join(job["dir"], last))
        if improved:
            best["model"] = last if best["epoch"] == job["to"] else os.path.join(job["trial_dir"],
                                                                                f"r{rung}-best.fm")
        if best is None:
            raise DataError(f"validation {metric} is undefined on these data for every epoch", job["valid"])
        row.update(status="ok", epochs=job["to"], value=best["value"], best_epoch=best["epoch"],
                   metrics=best["metrics"], model=best["model"], last=last, history=history)
    except (FMError, MemoryError) as exc:
        message = "out of memory" if isinstance(exc, MemoryError) else str(exc)
        row.update(status="failed", epochs=epoch, error=f"{type(exc).__name__}: {message}", history=history)
    row["seconds"] = round(time.perf_counter() - t0, 3)
    return row


# ---------------------------------------------------------------------------
# the search loop
# ---------------------------------------------------------------------------

@dataclass
class Outcome:
    """A search's result: the leaderboard (best first) and how it went."""

    search: Search
    directory: str
    rows: list[dict]
    best: dict | None
    seconds: float
    budget: float | None
    stopped: str | None          # why it ended before its plan's end ("budget"), or None
    jobs: int
    results: dict = field(default_factory=dict)

    def record(self) -> dict:
        """meta["tuning"] of the best model: the whole search."""
        s = self.search
        return {
            "method": "successive halving",
            "metric": s.metric,
            "seed": s.seed,
            "trials": len(s.trials),
            "space": {name: d.text() for name, d in sorted(s.space.items())},
            "base_config": s.config.to_dict(),
            "min_epochs": s.min_epochs, "max_epochs": s.max_epochs, "reduction": s.reduction,
            "plan": [dataclasses.asdict(r) for r in s.plan],
            "budget_seconds": self.budget,
            "seconds": round(self.seconds, 3),
            "trial_seconds": round(sum(r.get("seconds") or 0.0 for r in self.results.values()), 3),
            "stopped": self.stopped,
            "jobs": self.jobs,
            "threads_per_trial": s.config.threads,
            "train": s.train, "valid": s.valid,
            "best": None if self.best is None else {
                "trial": self.best["trial"], "params": self.best["params"], "value": self.best["value"],
                "epoch": self.best["best_epoch"], "metrics": self.best["metrics"]},
            "leaderboard": self.rows,
        }


def _sort_key(metric: str):
    higher = METRICS[metric][1]

    def key(row: dict):
        v = row.get("value")
        if row["status"] not in ("completed", "stopped") or v is None or v != v:
            return (1, 0.0, row["trial"])
        return (0, -v if higher else v, row["trial"])

    return key


def leaderboard(search: Search, results: Mapping[tuple[int, int], dict]) -> list[dict]:
    """One row per trial, best first: its parameters, the last rung it
    finished, epochs trained, its best epoch and value with that epoch's
    metrics, seconds over all its rungs, and its status: completed (it
    finished the last rung), stopped (successive halving stopped it),
    failed, or not run (the budget or a signal came first)."""
    last_rung = len(search.plan) - 1
    rows = []
    for t, params in enumerate(search.trials):
        mine = sorted((r, row) for (tt, r), row in results.items() if tt == t)
        row = {"trial": t, "params": dict(params), "rung": None, "epochs": 0, "best_epoch": None,
               "value": None, "metrics": None, "seconds": 0.0, "status": "not run", "error": None}
        if mine:
            rung, res = mine[-1]
            row["seconds"] = round(sum(x.get("seconds") or 0.0 for _, x in mine), 3)
            row["rung"] = rung
            row["epochs"] = res.get("epochs", 0)
            if res["status"] == "ok":
                row.update(best_epoch=res["best_epoch"], value=res["value"], metrics=res["metrics"],
                           status="completed" if rung == last_rung else "stopped")
                row["model"] = res["model"]
            else:
                row.update(status="failed", error=res.get("error"))
        rows.append(row)
    rows.sort(key=_sort_key(search.metric))
    return rows


def flat_rows(search: Search, rows: Sequence[dict]) -> tuple[list[str], list[dict]]:
    """The leaderboard as flat rows for a CSV file: columns (trial, each
    searched parameter, rung, epochs, best_epoch, value, valid_METRIC for
    each metric, seconds, status, error) and one dict per trial."""
    metrics: list[str] = []
    for r in rows:
        for m in r.get("metrics") or {}:
            if m not in metrics:
                metrics.append(m)
    columns = ["trial", *sorted(search.space), "rung", "epochs", "best_epoch", "value",
               *(f"valid_{m}" for m in metrics), "seconds", "status", "error"]
    out = []
    for r in rows:
        flat = {"trial": r["trial"], **{n: r["params"].get(n) for n in sorted(search.space)},
                "rung": r["rung"], "epochs": r["epochs"], "best_epoch": r["best_epoch"], "value": r["value"],
                **{f"valid_{m}": (r.get("metrics") or {}).get(m) for m in metrics},
                "seconds": r["seconds"], "status": r["status"], "error": r.get("error")}
        out.append(flat)
    return columns, out


class _Runner:
    """Runs a search's missing (trial, rung) results, rung by rung."""

    def __init__(self, search: Search, directory: str, jobs: int, deadline: float | None,
                 log: Callable[[str], None], on_result: Callable[[dict], None] | None,
                 should_stop: Callable[[], int | None] | None):
        self.search, self.dir, self.jobs, self.deadline = search, directory, jobs, deadline
        self.say, self.on_result, self.should_stop = log, on_result, should_stop or (lambda: None)
        self.results = _load_results(directory)
        self.workers: list[_Worker] = []
        self.stopped: str | None = None

    def run(self) -> None:
        try:
            for r, rung in enumerate(self.search.plan):
                members = self._members(r)
                todo = [t for t in members if (t, r) not in self.results]
                if todo:
                    done = len(members) - len(todo)
                    self.say(f"rung {r}: {len(members)} trial(s) to {rung.epochs} epoch(s)"
                             + (f", {done} done before" if done else ""))
                    self._execute(todo, r)
                if self.stopped:
                    return
                if not any(self.results.get((t, r), {}).get("status") == "ok" for t in members):
                    return
        except BaseException:
            self._close(kill=True)   # a running trial's rung runs again on resume
            raise
        finally:
            self._close()

    def _members(self, r: int) -> list[int]:
        """The trials of rung r: all of them at rung 0, then the best of the
        previous rung (ties: the lower trial number)."""
        if r == 0:
            return list(range(len(self.search.trials)))
        prev = [t for t in self._members(r - 1) if self.results.get((t, r - 1), {}).get("status") == "ok"]
        key = _sort_key(self.search.metric)
        prev.sort(key=lambda t: key({"status": "completed", "value": self.results[(t, r - 1)]["value"],
                                     "trial": t}))
        return sorted(prev[: self.search.plan[r].size])

    def _job(self, t: int, r: int) -> dict:
        s = self.search
        prior = self.results.get((t, r - 1)) if r > 0 else None
        best = None
        if prior is not None:
            best = {"value": prior["value"], "epoch": prior["best_epoch"], "metrics": prior["metrics"],
                    "model": prior["model"]}
        return {"trial": t, "rung": r, "metric": s.metric, "config": s.config.to_dict(), "params": s.trials[t],
                "dir": os.path.abspath(self.dir), "trial_dir": os.path.join("trials", f"{t:04d}"),
                "train": s.train, "valid": s.valid, "weights": s.weights,
                "from": prior["epochs"] if prior is not None else 0, "to": s.plan[r].epochs,
                "start": prior["last"] if prior is not None else None,
                "history": prior["history"] if prior is not None else [], "best": best}

    def _execute(self, todo: list[int], r: int) -> None:
        queue = list(todo)
        while queue or any(w.job is not None for w in self.workers):
            signum = self.should_stop()
            if signum is not None:
                self._close(kill=True)
                raise Interrupted(signum)
            for w in self._idle():
                if not queue:
                    break
                if self.deadline is not None and time.monotonic() >= self.deadline:
                    if not self.stopped:
                        self.say("the time budget is spent: no new trial starts")
                    self.stopped = "budget"
                    queue.clear()
                    break
                t = queue.pop(0)
                w.send(self._job(t, r))
            for row in _Worker.wait(self.workers, 0.2):
                _append(self.dir, row)
                self.results[(row["trial"], row["rung"])] = row
                if self.on_result is not None:
                    self.on_result(row)

    def _idle(self) -> list["_Worker"]:
        """Workers without a job, started as needed (at most `jobs`)."""
        self.workers = [w for w in self.workers if w.alive() or w.job is not None]
        while len(self.workers) < self.jobs:
            self.workers.append(_Worker())
        return [w for w in self.workers if w.job is None]

    def _close(self, kill: bool = False) -> None:
        workers, self.workers = self.workers, []
        for w in workers:
            w.close(kill)


class _Worker:
    """A process running :func:`serve`: one job at a time, by pipes."""

    def __init__(self):
        import subprocess
        import sys

        env = dict(os.environ)
        # the child imports this very package, wherever it was imported from
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in [env.get("PYTHONPATH")] if p])
        self.proc = subprocess.Popen([sys.executable, "-c", "from fmcli.tune import serve; serve()"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self.job: dict | None = None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, job: dict) -> None:
        self.job = job
        try:
            self.proc.stdin.write((json.dumps(job) + "\n").encode())
            self.proc.stdin.flush()
        except OSError:
            pass   # it died: wait() reports the job as failed

    def finish(self) -> dict:
        """The result of the job sent (a worker that died fails the job)."""
        job, self.job = self.job, None
        line = self.proc.stdout.readline()
        if line:
            return json.loads(line)
        code = self.proc.wait()
        return {"trial": job["trial"], "rung": job["rung"], "status": "failed", "epochs": job["from"],
                "error": f"the trial's process ended abruptly (exit status {code})", "history": job["history"],
                "seconds": None}

    @staticmethod
    def wait(workers: Sequence["_Worker"], timeout: float) -> list[dict]:
        """The results that come within `timeout` seconds."""
        import selectors

        busy = [w for w in workers if w.job is not None]
        if not busy:
            return []
        with selectors.DefaultSelector() as sel:
            for w in busy:
                sel.register(w.proc.stdout, selectors.EVENT_READ, w)
            ready = sel.select(timeout)
        return [key.data.finish() for key, _ in ready]

    def close(self, kill: bool = False) -> None:
        if kill:
            self.proc.kill()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        self.proc.wait()


def tune(search: Search, directory: str, *, resume: bool = False, jobs: int | None = None,
         budget: float | None = None, log: Callable[[str], None] | None = None,
         on_result: Callable[[dict], None] | None = None,
         should_stop: Callable[[], int | None] | None = None) -> Outcome:
    """Run (or, with `resume`, continue) `search` in `directory`.

    jobs: trials trained at once (default: every CPU); budget: seconds after
    which no new (trial, rung) starts (the running ones finish).
    on_result(row) is called with every result line as it comes;
    should_stop() returning a signal number stops the running trials at
    once and raises :class:`~fmcli.errors.Interrupted` (the directory keeps
    every finished result).  Raises FMError when every trial failed."""
    say = log or (lambda msg: None)
    t0 = time.monotonic()
    jobs = max(1, int(jobs or available_cpus()))
    if resume:
        recorded = open_search(directory)
        diff = differences(recorded, search)
        if diff:
            raise UsageError(f"{directory} holds a different search: " + "; ".join(diff[:3])
                             + ("; ..." if len(diff) > 3 else ""))
        if recorded.data and search.data and recorded.data != search.data:
            raise ConfigError(f"the data of the search in {directory} changed since it began "
                              f"({recorded.data}, now {search.data})")
    else:
        _create(directory, search)
    deadline = None if budget is None else t0 + budget
    runner = _Runner(search, directory, jobs, deadline, say, on_result, should_stop)
    if resume and runner.results:
        say(f"resuming {directory}: {len(runner.results)} (trial, rung) result(s) reused")
    runner.run()
    rows = leaderboard(search, runner.results)
    best = rows[0] if rows and rows[0]["status"] in ("completed", "stopped") else None
    if best is None:
        failed = [r for r in rows if r["status"] == "failed"]
        if failed:
            raise FMError(f"every trial failed; trial {failed[0]['trial']}: {failed[0]['error']}")
        raise FMError("no trial finished within the budget; give a longer --budget")
    return Outcome(search, directory, rows, best, time.monotonic() - t0, budget, runner.stopped, jobs,
                   dict(runner.results))


def best_model(outcome: Outcome):
    """The best trial's model (at its best epoch), with the search in meta["tuning"]."""
    from .model import load_model

    model = load_model(os.path.join(outcome.directory, outcome.best["model"]), mmap=False)
    model.meta["tuning"] = outcome.record()
    return model


def refit(outcome: Outcome, log: Callable[[str], None] | None = None):
    """The best configuration trained again on the training and validation
    data together, for the best trial's best epoch count."""
    from .train import train

    s, best = outcome.search, outcome.best
    if s.weights is not None:
        raise ConfigError("--refit cannot weight the validation rows: give weights inline, not with --weights")
    config = _trial_config(s.config, best["params"]).replace(epochs=best["best_epoch"])
    model = train(config, list(s.train) + [s.valid], None, log=log)
    record = outcome.record()
    record["refit"] = {"epochs": best["best_epoch"], "data": list(s.train) + [s.valid]}
    model.meta["tuning"] = record
    return model
