"""Hyperparameter search over Config fields: successive halving, then
model-based proposals trained to their end.

A search draws its first bracket of configurations from a *space* (a
distribution per hyperparameter, each a :class:`~fmcli.config.Config`
field) as a seeded Latin hypercube, trains every one of them for a few
epochs (rung 0), keeps the best ``1/reduction`` of them by their *outlook*
(:func:`outlook`: the best validation so far plus the gains its last epochs
promise) and trains those ``reduction`` times longer (rung 1), and so on up
to ``max_epochs``.  A promoted trial continues from the best model of its
previous rung (a warm start, see :func:`fmcli.train.train`'s ``parent``);
every training run stops after ``patience`` epochs without a better
validation metric and keeps its best epoch, and a trial that stopped on its
own is done (promoted as it is, without taking one of the next rung's
places: those go to the best trials that still train).  Later brackets hold ``reduction``
configurations proposed by :func:`propose` (a Parzen-estimator model of the
results so far) and train them straight to their own early stop.  Without a
budget the brackets run one after the other, each proposed once the
previous ones are complete (reproducible); with one, a worker with nothing
to do starts the next bracket at once and each of its trials is proposed as
it starts, until the budget is spent.

Trials run in separate worker processes (fresh interpreters running
:func:`serve`, fed jobs through a pipe: nothing of this process's state is
shared, and a caller's script needs no ``__main__`` guard), ``jobs`` at a
time, each with ``threads`` training threads; with one thread per trial every result is bit-for-bit
reproducible for a seed.  The data are read once here before any trial
starts, so that every trial reads the binary cache.

Everything a search is lives in its directory:

- ``tune.json``: the search (base configuration, space, seed, the first
  bracket's configurations, the rung plan, the inputs), written once;
- ``brackets.jsonl``: the later brackets' configurations, appended (and
  fsync'ed) as they are proposed, before they run;
- ``results.jsonl``: one line per finished (trial, rung), appended and
  fsync'ed as each one ends;
- ``trials/NNNN/``: each trial's best model after each rung (what a later
  rung continues from); once the search ends, all but the best trial's and
  those an unfinished bracket needs are deleted (listed in ``pruned.txt``).

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
           "tune", "best_model", "refit", "leaderboard", "flat_rows", "propose", "outlook"]

FORMAT_VERSION = 2
SPACE_TABLE = "space"          # the TOML table of a --space file
DEFAULT_TRIALS = 27            # configurations of the first bracket (and of a search without a budget)
DEFAULT_MIN_EPOCHS = 2         # epochs of the first rung: enough to see how fast a trial still improves
DEFAULT_MAX_EPOCHS = 30        # the most epochs of any trial (it stops earlier on its own)
DEFAULT_REDUCTION = 3
PATIENCE = 2                   # epochs without a better validation that end a trial
RESERVE, RESERVE_SECONDS = 0.02, 1.0   # of a budget, kept for writing the outputs at its end
FIRST_SHARE = 0.6              # of a budget, at most, for the first bracket (the rest: proposals)
LATER_RUNGS = 0.6              # a later rung's cost, as a share of the first rung's (early stopping)
MIN_FIRST_BRACKET = 9          # configurations a budget never cuts the first bracket below

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
        return self.at(rng.uniform())

    def at(self, u: float):
        """The value at quantile `u` in [0, 1) of this distribution (so
        that a uniform draw of `u` is a draw of the value)."""
        k, v = self.kind, self.values
        u = min(max(float(u), 0.0), 1.0 - 1e-12)
        if k == "fixed":
            return v[0]
        if k == "choice":
            return v[int(u * len(v))]
        if k == "int":
            return int(v[0] + int(u * (v[1] - v[0] + 1)))
        if k == "intlog":
            x = math.exp(math.log(v[0]) + u * (math.log(v[1] + 1) - math.log(v[0])))
            return int(min(max(math.floor(x), v[0]), v[1]))
        if k == "loguniform":
            x = math.exp(math.log(v[0]) + u * (math.log(v[1]) - math.log(v[0])))
        else:
            x = v[0] + u * (v[1] - v[0])
        # four significant digits: readable, and the same in every record
        return min(max(float(f"{x:.4g}"), v[0]), v[1])

    def unit(self, value) -> float:
        """Where `value` lies in [0, 1] (the inverse of :meth:`at`; the
        middle of its cell for integers and choices)."""
        k, v = self.kind, self.values
        if k == "fixed":
            return 0.5
        if k == "choice":
            return (v.index(value) + 0.5) / len(v) if value in v else 0.5
        if k == "int":
            return (float(value) - v[0] + 0.5) / (v[1] - v[0] + 1)
        if k == "intlog":
            return (math.log(float(value) + 0.5) - math.log(v[0])) / (math.log(v[1] + 1) - math.log(v[0]))
        if k == "loguniform":
            return (math.log(float(value)) - math.log(v[0])) / (math.log(v[1]) - math.log(v[0]))
        return (float(value) - v[0]) / (v[1] - v[0])

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
    k ~ intlog(4, 16) (models with factors), l2 ~ loguniform(5e-6, 1e-2),
    the step size ~ loguniform(0.05, 1) for sgd and the AdaGrads (a smaller
    one rarely converges within the max_epochs of a trial),
    loguniform(1e-4, 0.1) for adam; FTRL: ftrl_alpha ~ loguniform(0.01, 1)
    and ftrl_beta ~ loguniform(0.1, 10)."""
    space: dict[str, Dist] = {}
    if config.model != "lr":
        space["k"] = Dist("intlog", (4, 16))
    space["l2"] = Dist("loguniform", (5e-6, 1e-2))
    if config.optimizer == "ftrl":
        space["ftrl_alpha"] = Dist("loguniform", (0.01, 1.0))
        space["ftrl_beta"] = Dist("loguniform", (0.1, 10.0))
    elif config.optimizer == "adam":
        space["learning_rate"] = Dist("loguniform", (1e-4, 0.1))
    else:
        space["learning_rate"] = Dist("loguniform", (0.05, 1.0))
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


# Config fields that say where a search's trials run (fm tune --scheduler:
# on the workers of a Dask cluster), not how one trains: a trial trains in
# one process, wherever it runs, and they may change when a search resumes
WHERE_TRIALS_RUN = ("scheduler", "scheduler_file", "scheduler_timeout", "min_workers")
_ONE_PROCESS = {"scheduler": None, "scheduler_file": None, "min_workers": 1}


def _trial_config(base: Config, params: Mapping[str, Any]) -> Config:
    """`base` with a trial's parameters (a step size is left out for FTRL,
    whose step size is ftrl_alpha, when the optimizer itself is searched),
    trained in one process (see WHERE_TRIALS_RUN)."""
    changes = dict(params)
    if changes.get("optimizer", base.optimizer) == "ftrl" and "learning_rate" in changes \
            and "optimizer" in changes:
        changes["learning_rate"] = None
    return base.replace(**_ONE_PROCESS, **changes)


def sample_trials(space: Mapping[str, Dist], n: int, seed: int) -> list[dict[str, Any]]:
    """`n` configurations drawn from `space` as a Latin hypercube: each
    parameter's range cut into `n` equally likely slices, every slice used
    once, the slices of different parameters paired at random.  Spread out
    far better than independent draws, and just as random.  Drawn in
    parameter-name order (the draw does not depend on how the space was
    written), distinct as long as the space allows."""
    rng = np.random.default_rng([int(seed), 0x7475])
    names = sorted(space)
    cells = {name: (rng.permutation(n) + rng.uniform(size=n)) / n for name in names}
    out: list[dict[str, Any]] = []
    seen: set[tuple] = set()
    for i in range(n):
        params = {name: space[name].at(cells[name][i]) for name in names}
        for _attempt in range(100):
            key = tuple(params[name] for name in names)
            if key not in seen:
                break
            params = {name: space[name].sample(rng) for name in names}
        seen.add(key)
        out.append(params)
    return out


# Model-based sampling (a tree-structured Parzen estimator): the trials seen
# so far are split into the best GOOD_FRACTION and the rest; each part is a
# density over the space (a Gaussian kernel on every trial, in the unit cube
# where log-uniform ranges are uniform, plus a uniform floor), and a new
# configuration is the one of CANDIDATES draws from the good density that
# maximises good density / rest density.  EXPLORE of the proposals are
# plain random draws, so that no region is ever given up for good.
GOOD_FRACTION = 0.15
CANDIDATES = 64
EXPLORE = 0.2
MIN_OBSERVATIONS = 8
MIN_DISTANCE = 0.04            # in the unit cube, along the farthest parameter
WIDTH = 0.5                    # kernel widths: this times Scott's rule


def _kernel_density(points: np.ndarray, x: np.ndarray, width: np.ndarray, choice_sizes: np.ndarray) -> np.ndarray:
    """log density at rows of `x` of a mixture of one kernel per row of
    `points` and a uniform component (weight 1 / (points + 1)).  Columns
    with choice_sizes > 0 are choices (the index scaled to [0, 1)): their
    kernel keeps a point's choice with probability 1 - CHOICE_NOISE."""
    n = len(points)
    if n == 0:
        return np.zeros(len(x))
    cont = choice_sizes == 0
    diff = (x[:, None, :] - points[None, :, :]) / width
    log_k = np.where(cont, -0.5 * diff ** 2 - np.log(width * math.sqrt(2 * math.pi)), 0.0)
    sizes = np.maximum(choice_sizes, 1)
    same = np.floor(x[:, None, :] * sizes) == np.floor(points[None, :, :] * sizes)
    keep = 1.0 - _CHOICE_NOISE
    other = _CHOICE_NOISE / np.maximum(sizes - 1, 1)
    log_c = np.where(same, np.log(keep * sizes), np.log(np.maximum(other * sizes, 1e-12)))
    log_k = log_k + np.where(cont, 0.0, log_c)
    per_point = log_k.sum(axis=2)                       # (candidates, points)
    mix = np.logaddexp(np.logaddexp.reduce(per_point, axis=1), 0.0)   # + the uniform density 1
    return mix - math.log(n + 1)


_CHOICE_NOISE = 0.2


def propose(space: Mapping[str, Dist], observations: Sequence[tuple[Mapping[str, Any], float]], n: int,
            rng: np.random.Generator, *, higher_is_better: bool = False,
            exclude: Sequence[Mapping[str, Any]] = (), good: float = GOOD_FRACTION) -> list[dict[str, Any]]:
    """`n` new configurations of `space` guided by `observations`, pairs of
    (parameters, value) where a NaN or infinite value is a failed trial (the
    worst); the best fraction `good` of them make the good density.  With
    fewer than MIN_OBSERVATIONS of them, random draws.  The result depends
    only on the arguments (and the generator's state); it avoids the
    configurations in `exclude`, repeats none, and keeps its model-guided
    proposals MIN_DISTANCE away from every configuration before them."""
    names = sorted(space)
    dims = [name for name in names if space[name].searched]
    seen = {tuple(p.get(name) for name in names) for p in exclude}
    out: list[dict[str, Any]] = []

    taken = [[space[d].unit(p[d]) for d in dims] for p in exclude if all(d in p for d in dims)]

    def add(params, spread: bool = False) -> bool:
        """Take `params` unless it was seen (or, with `spread`, lies within
        MIN_DISTANCE of a configuration seen: no two trials spent on one point)."""
        key = tuple(params[name] for name in names)
        if key in seen:
            return False
        point = [space[d].unit(params[d]) for d in dims]
        if spread and taken and dims:
            gaps = np.abs(np.array(taken) - np.array(point)).max(axis=1)
            if gaps.min() < MIN_DISTANCE:
                return False
        seen.add(key)
        taken.append(point)
        out.append(params)
        return True

    def random_one():
        for _attempt in range(100):
            if add({name: space[name].sample(rng) for name in names}):
                return
        out.append({name: space[name].sample(rng) for name in names})

    obs = [(p, float(v)) for p, v in observations]
    if not dims or len(obs) < MIN_OBSERVATIONS:
        for _ in range(n):
            random_one()
        return out
    worst = -math.inf if higher_is_better else math.inf
    values = np.array([v if math.isfinite(v) else worst for _, v in obs])
    order = np.argsort(-values if higher_is_better else values, kind="stable")
    unit = np.array([[min(max(space[d].unit(p[d]), 0.0), 1.0) for d in dims] for p, _ in obs])
    n_good = max(3, int(math.ceil(good * len(obs))))
    best, rest = unit[order[:n_good]], unit[order[n_good:]]
    choice_sizes = np.array([len(space[d].values) if space[d].kind == "choice" else 0 for d in dims])
    # kernel widths: Scott's rule on each part's spread, kept between 0.03 and 0.5 of a range
    d = len(dims)

    def widths(points):
        spread = points.std(axis=0) if len(points) > 1 else np.full(d, 0.5)
        return np.clip(WIDTH * spread * len(points) ** (-1.0 / (d + 4)), 0.03, 0.5)

    w_best, w_rest = widths(best), widths(rest)
    for _ in range(n):
        if rng.uniform() < EXPLORE:
            random_one()
            continue
        picks = best[rng.integers(len(best), size=CANDIDATES)]
        cand = picks + rng.normal(size=picks.shape) * w_best
        cand = np.abs(cand)                                   # reflect at 0 and at 1
        cand = np.where(cand > 1.0, 2.0 - cand, cand).clip(0.0, 1.0 - 1e-9)
        flip = rng.uniform(size=picks.shape) < _CHOICE_NOISE
        cand = np.where((choice_sizes > 0) & flip, rng.uniform(size=picks.shape), cand)
        cand = np.where(choice_sizes > 0, picks * ~flip + cand * flip, cand)
        score = (_kernel_density(best, cand, w_best, choice_sizes)
                 - _kernel_density(rest, cand, w_rest, choice_sizes))
        for i in np.argsort(-score, kind="stable"):
            params = {name: space[name].at(0.5) if not space[name].searched else None for name in names}
            for j, dim in enumerate(dims):
                params[dim] = space[dim].at(cand[i, j])
            if add(params, spread=True):
                break
        else:
            random_one()
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
    """What defines a search (tune.json): a search resumed must be the same.

    Its trials come in brackets: the first (`trials` of tune.json) is drawn
    when the search begins; each later one is proposed from the results so
    far (:func:`propose`) when it starts, and recorded in brackets.jsonl.
    The first bracket is a successive halving; every later one trains its
    trials straight to their own early stop (see :meth:`plan_of`)."""

    config: Config                       # the base configuration of every trial
    space: dict[str, Dist]
    trials: list[dict[str, Any]]         # every configuration so far, trial i = trials[i]
    plan: list[Rung]                     # the first bracket's rungs
    metric: str
    train: list[str]
    valid: str
    weights: str | None = None
    min_epochs: int = DEFAULT_MIN_EPOCHS
    max_epochs: int = DEFAULT_MAX_EPOCHS
    reduction: int = DEFAULT_REDUCTION
    data: dict = field(default_factory=dict)   # rows and values of the inputs when the search began
    output: str | None = None                  # where the command writes the best model (not compared)
    bracket: int = DEFAULT_TRIALS              # configurations of the first bracket
    max_trials: int | None = None              # configurations in all (None: as many as the budget allows)
    patience: int = PATIENCE                   # epochs without improvement that end a trial
    groups: list[tuple[int, int]] = field(default_factory=list)   # each bracket's (first trial, size)

    def __post_init__(self):
        if not self.groups:
            self.groups = [(0, len(self.trials))]

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
            "bracket": self.bracket, "max_trials": self.max_trials, "patience": self.patience,
            "plan": [dataclasses.asdict(r) for r in self.plan],
            "trials": [dict(t) for t in self.trials[: self.groups[0][1]]],
        }

    def trial_config(self, trial: int) -> Config:
        return _trial_config(self.config, self.trials[trial])

    def plan_of(self, bracket: int) -> list[Rung]:
        """The first bracket is successive halving from min_epochs; every
        later one trains its trials straight to their own early stop (at
        most max_epochs), as the grid's points are."""
        size = self.groups[bracket][1]
        if bracket == 0:
            return plan_rungs(size, self.min_epochs, self.max_epochs, self.reduction)
        return [Rung(size, self.max_epochs)]

    def bracket_of(self, trial: int) -> int:
        for b, (first, size) in enumerate(self.groups):
            if first <= trial < first + size:
                return b
        raise IndexError(trial)

    def resize_first(self, n: int) -> None:
        """Keep the first `n` configurations of the first bracket (a short budget)."""
        first, size = self.groups[0]
        if len(self.groups) == 1 and n < size:
            self.groups[0] = (first, n)
            del self.trials[first + n: first + size]
            self.plan = self.plan_of(0)

    def add_bracket(self, trials: Sequence[Mapping[str, Any]], size: int | None = None) -> int:
        """A new bracket of `size` trials (default: those given), the first of them `trials`."""
        self.groups.append((len(self.trials), len(trials) if size is None else size))
        self.trials.extend(dict(t) for t in trials)
        return len(self.groups) - 1


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
            trials: int | None = DEFAULT_TRIALS, bracket: int | None = None,
            min_epochs: int = DEFAULT_MIN_EPOCHS, max_epochs: int = DEFAULT_MAX_EPOCHS,
            reduction: int = DEFAULT_REDUCTION, metric: str | None = None, weights: str | None = None,
            patience: int = PATIENCE, where: Mapping[str, str] | None = None,
            log: Callable[[str], None] | None = None) -> Search:
    """A new search: check the space and settings against `config` (the base
    of every trial; its seed seeds the draw and every trial's training), read
    the data once, draw the first bracket and plan its rungs.

    trials: configurations in all (None: brackets follow one another for as
    long as a budget allows); bracket: configurations of the first bracket
    (default DEFAULT_TRIALS, at most `trials`)."""
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
    if bracket is not None and bracket < 1:
        raise ConfigError(f"--bracket must be at least 1, got {bracket}")
    if patience < 1:
        raise ConfigError(f"the patience of a search must be at least 1, got {patience}")
    size = min(bracket or DEFAULT_TRIALS, trials if trials is not None else DEFAULT_TRIALS * 1000)
    plan = plan_rungs(size, min_epochs, max_epochs, reduction)
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
    drawn = sample_trials(space, size, base.seed)
    if first is not None:
        drawn = ([first] + [t for t in drawn if t != first])[:size]
    return Search(config=base, space=dict(space), trials=drawn, plan=plan, metric=metric,
                  train=_absolute(list(train)), valid=_absolute(valid), weights=_absolute(weights),
                  min_epochs=min_epochs, max_epochs=max_epochs, reduction=reduction, data=data,
                  bracket=bracket or DEFAULT_TRIALS, max_trials=trials, patience=patience)


def _tune_file(directory: str) -> str:
    return os.path.join(directory, "tune.json")


def _results_file(directory: str) -> str:
    return os.path.join(directory, "results.jsonl")


def _brackets_file(directory: str) -> str:
    return os.path.join(directory, "brackets.jsonl")


def _pruned_file(directory: str) -> str:
    return os.path.join(directory, "pruned.txt")


def _read_lines(path: str) -> list[dict]:
    """The JSON lines of `path` (none when it is absent); a torn or damaged
    line (a kill while appending) is skipped."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def open_search(directory: str) -> Search:
    """The search recorded in `directory` (its tune.json and brackets.jsonl)."""
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
        search = Search(config=config, space=space, trials=[dict(t) for t in rec["trials"]],
                        plan=[Rung(**r) for r in rec["plan"]], metric=rec["metric"], train=list(rec["train"]),
                        valid=rec["valid"], weights=rec.get("weights"), min_epochs=rec["min_epochs"],
                        max_epochs=rec["max_epochs"], reduction=rec["reduction"], data=rec.get("data") or {},
                        output=rec.get("output"), bracket=rec["bracket"], max_trials=rec["max_trials"],
                        patience=rec["patience"])
        for b in _read_lines(_brackets_file(directory)):
            if "resize" in b:
                if b.get("bracket") == 0 and len(search.groups) == 1:
                    search.resize_first(int(b["resize"]))
                continue
            # each line continues where the ones before it ended; any other (a line
            # written again after a torn one) is skipped
            at = b.get("at", b["first"])
            if at != len(search.trials):
                continue
            if b["bracket"] == len(search.groups) and b["first"] == at:
                search.add_bracket([dict(t) for t in b["trials"]], b.get("size"))
            elif b["bracket"] == len(search.groups) - 1 and len(search.trials) + len(b["trials"]) <= \
                    sum(search.groups[-1]):
                search.trials.extend(dict(t) for t in b["trials"])     # a bracket's trials proposed one by one
        return search
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
        if key in ("trials", "plan"):     # the first bracket, which a budget may have cut
            continue
        if key == "config":
            out += [f"{k} ({a['config'].get(k)!r}, now {v!r})" for k, v in b["config"].items()
                    if a["config"].get(k) != v and k != "threads" and k not in WHERE_TRIALS_RUN]
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
    appending) is ignored, and so is a result whose model file is gone
    (unless the search pruned it: see :func:`prune`)."""
    out: dict[tuple[int, int], dict] = {}
    try:
        with open(_results_file(directory), encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return out
    pruned = _pruned(directory)
    for line in lines:
        try:
            row = json.loads(line)
            key = (int(row["trial"]), int(row["rung"]))
        except (ValueError, KeyError, TypeError):
            continue
        if row.get("status") == "ok" and not os.path.exists(os.path.join(directory, row["model"])) \
                and row["model"] not in pruned:
            continue
        out[key] = row
    return out


def _pruned(directory: str) -> set[str]:
    try:
        with open(_pruned_file(directory), encoding="utf-8") as f:
            return {line for line in f.read().splitlines() if line}
    except FileNotFoundError:
        return set()


def _append(directory: str, row: dict) -> None:
    """One result line, appended and fsync'ed (a kill leaves at most a torn last line)."""
    _append_line(_results_file(directory), row)


def _append_line(path: str, row: dict) -> None:
    data = (json.dumps(row, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
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
    """Train one trial from its best model so far (or from scratch) up to
    this rung's epochs, in one training run that stops after
    ``job["patience"]`` epochs without a better validation metric and keeps
    its best epoch's model.  Returns the result line: the trial's best value
    over all its rungs, the path to that model, its epochs, the history of
    its validations along the way and whether it is *done* (it stopped on
    its own: no rung can improve it).  A training error (a diverged trial, a
    configuration the space made invalid) is a result with status
    "failed"."""
    from .model import load_model
    from .train import train

    t0 = time.perf_counter()
    trial, rung, metric = job["trial"], job["rung"], job["metric"]
    out = os.path.join(job["dir"], job["trial_dir"])
    history = list(job["history"])
    best = dict(job["best"]) if job["best"] else None
    row = {"trial": trial, "rung": rung}
    start, epochs = job["from"], job["to"] - job["from"]
    try:
        config = _trial_config(Config.from_dict(job["config"]), job["params"])
        parent = load_model(os.path.join(job["dir"], job["start"]), mmap=False) if job["start"] else None
        os.makedirs(out, exist_ok=True)
        model = train(config.replace(epochs=epochs, patience=job["patience"],
                                     seed=_epoch_seed(config.seed, start + 1)),
                      job["train"], job["valid"], weights=job["weights"], parent=parent)
        meta = model.meta
        t = meta["training"]
        ran = t["epochs_run"]
        for step in t["history"]:
            history.append({**{k: v for k, v in step.items() if k not in ("seconds", "rows_per_s")},
                            "epoch": start + step["epoch"]})
        value = (t.get("valid_metrics") or {}).get(metric)
        improved = value is not None and (best is None or is_better(metric, value, best["value"]))
        if improved:
            epoch = start + (t.get("best_epoch") or ran)
            best = {"value": value, "epoch": epoch, "metrics": dict(t["valid_metrics"]),
                    "model": os.path.join(job["trial_dir"], f"r{rung}.fm")}
            # the model is the trial's after `epoch` epochs, not one run's
            path = [h for h in history if h["epoch"] <= epoch]
            t.update(history=path, epochs_run=epoch, model_epoch=epoch, best_epoch=epoch)
            meta["hyperparameters"].update(epochs=epoch, seed=config.seed, patience=0)
            meta.pop("parent", None)
            model.save(os.path.join(job["dir"], best["model"]))
        if best is None:
            raise DataError(f"validation {metric} is undefined on these data for every epoch", job["valid"])
        # the trial goes on (at a later rung) from its best epoch: the epochs after it are dropped
        history = [h for h in history if h["epoch"] <= best["epoch"]]
        done = ran < epochs or not improved
        row.update(status="ok", epochs=start + ran, ran=ran, value=best["value"], best_epoch=best["epoch"],
                   metrics=best["metrics"], model=best["model"], last=best["model"], done=done,
                   history=history, outlook=outlook([h.get(f"valid_{metric}") for h in history], metric, done))
    except (FMError, MemoryError) as exc:
        message = "out of memory" if isinstance(exc, MemoryError) else str(exc)
        row.update(status="failed", epochs=start, error=f"{type(exc).__name__}: {message}", history=history)
    row["seconds"] = round(time.perf_counter() - t0, 3)
    return row


def outlook(values: Sequence[float | None], metric: str, done: bool = False) -> float | None:
    """What a trial's validation `metric` may still come to, from its values
    epoch by epoch (up to its best epoch): its best so far, improved by the
    gains to come if each next gain is the last one times the ratio of the
    last two (at most OUTLOOK_RATIO; OUTLOOK_RATIO when only one gain is
    known).  Successive halving ranks trials by it, so that a slow trial
    (a small step size) still improving fast is not cut in favour of a fast
    one that has nearly reached its end.  None when no value is known."""
    higher = METRICS[metric][1]
    v = [(-x if higher else x) for x in values if x is not None and x == x]
    if not v:
        return None
    best = min(v)
    if done or len(v) < 2:
        return -best if higher else best
    gain = v[-2] - v[-1]
    if gain <= 0:
        return -best if higher else best
    ratio = OUTLOOK_RATIO
    if len(v) >= 3 and v[-3] - v[-2] > 0:
        ratio = min(max(gain / (v[-3] - v[-2]), 0.0), OUTLOOK_RATIO)
    est = best - gain * ratio / (1.0 - ratio)
    return -est if higher else est


OUTLOOK_RATIO = 0.75


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
    pruned: tuple[int, int] = (0, 0)     # model files deleted as no longer needed, and their bytes

    def record(self) -> dict:
        """meta["tuning"] of the best model: the whole search."""
        s = self.search
        return {
            "method": "successive halving in brackets, later brackets proposed from the results so far",
            "metric": s.metric,
            "seed": s.seed,
            "trials": len(s.trials),
            # the brackets that ran: (first trial, trials), a budget's last one as far as it got
            "brackets": [[a, min(n, len(s.trials) - a)] for a, n in s.groups if len(s.trials) > a],
            "bracket": s.bracket, "max_trials": s.max_trials, "patience": s.patience,
            "space": {name: d.text() for name, d in sorted(s.space.items())},
            "base_config": s.config.to_dict(),
            "min_epochs": s.min_epochs, "max_epochs": s.max_epochs, "reduction": s.reduction,
            "plan": [dataclasses.asdict(r) for r in s.plan],
            "budget_seconds": self.budget,
            "seconds": round(self.seconds, 3),
            "trial_seconds": round(sum(r.get("seconds") or 0.0 for r in self.results.values()), 3),
            "stopped": self.stopped,
            "pruned_files": self.pruned[0], "pruned_bytes": self.pruned[1],
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
    reached its bracket's last rung), stopped (successive halving did not
    promote it), failed, or not run (the budget or a signal came first)."""
    last_rung = [len(search.plan_of(b)) - 1 for b in range(len(search.groups))]
    mine: dict[int, list] = {}
    for (t, r), res in results.items():
        mine.setdefault(t, []).append((r, res))
    rows = []
    for t, params in enumerate(search.trials):
        row = {"trial": t, "params": dict(params), "rung": None, "epochs": 0, "best_epoch": None,
               "value": None, "metrics": None, "seconds": 0.0, "status": "not run", "error": None}
        done = sorted(mine.get(t, []), key=lambda x: x[0])
        if done:
            rung, res = done[-1]
            row["seconds"] = round(sum(x.get("seconds") or 0.0 for _, x in done), 3)
            row["rung"] = rung
            row["epochs"] = max(x.get("epochs", 0) for _, x in done)
            if res["status"] == "ok":
                row.update(best_epoch=res["best_epoch"], value=res["value"], metrics=res["metrics"],
                           status="completed" if rung == last_rung[search.bracket_of(t)] else "stopped")
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
    """Runs a search's missing (trial, rung) results, bracket after bracket.

    Within a bracket, rung r+1 starts once every trial of rung r has its
    result.  Without `overlap` (a search without a budget: reproducible) a
    new bracket starts once the previous ones are complete, its
    configurations proposed from their results; with it (a budget), a
    worker with nothing to do starts a new bracket at once, so that no
    worker waits for the last trials of a rung."""

    def __init__(self, search: Search, directory: str, jobs: int, deadline: float | None,
                 log: Callable[[str], None], on_result: Callable[[dict], None] | None,
                 should_stop: Callable[[], int | None] | None, overlap: bool = False, client=None):
        """client: a Dask client whose workers run the trials (else local processes)."""
        self.search, self.dir, self.jobs, self.deadline = search, directory, jobs, deadline
        self.client = client
        self.slot = _Worker if client is None else _DaskSlot
        self.say, self.on_result, self.should_stop = log, on_result, should_stop or (lambda: None)
        self.overlap = overlap
        self.results = _load_results(directory)
        self.running: set[tuple[int, int]] = set()
        self.workers: list[_Worker | _DaskSlot] = []
        self.stopped: str | None = None
        self.announced: set[tuple[int, int]] = set()
        self.widths: dict[int, int] = {}        # trial: its factor width (see _width)
        first, size = search.groups[0]
        # decided once, in the run that gets the first results (not again on resume)
        self.resized = len(search.groups) > 1 or any((t, 0) in self.results for t in range(first, first + size))

    # -- the plan's state, from the results ------------------------------

    def _rank(self, t: int, r: int):
        res = self.results[(t, r)]
        value = res.get("outlook", res["value"])
        return _sort_key(self.search.metric)({"status": "completed", "value": value, "trial": t})

    def members(self, b: int, r: int) -> list[int] | None:
        """The trials of bracket b's rung r: all of its trials at rung 0,
        then the best of the previous rung by their outlook (ties: the lower
        trial number), as many as the rung's size of those that still train:
        one that stopped improving on its own (done) goes on as it is, at no
        cost, and leaves its place to the next; None while the previous
        rung is not complete."""
        first, size = self.search.groups[b]
        if r == 0:
            return list(range(first, first + size))
        prev = self.members(b, r - 1)
        if prev is None or any((t, r - 1) not in self.results for t in prev):
            return None
        ok = [t for t in prev if self.results[(t, r - 1)]["status"] == "ok"]
        ok.sort(key=lambda t: self._rank(t, r - 1))
        places, out = self.search.plan_of(b)[r].size, []
        for t in ok:
            if places == 0:
                break
            out.append(t)
            if not self.results[(t, r - 1)].get("done"):
                places -= 1
        return sorted(out)

    def pending(self, b: int) -> list[tuple[int, int]] | None:
        """Bracket b's (trial, rung) without a result whose rung can run now
        (an empty list while a rung waits for the previous one); None when
        the bracket is complete."""
        for r in range(len(self.search.plan_of(b))):
            members = self.members(b, r)
            if members is None:
                return []
            missing = [(t, r) for t in members if (t, r) not in self.results]
            if missing:
                return missing
        return None

    def complete(self) -> bool:
        return all(self.pending(b) is None for b in range(len(self.search.groups)))

    # -- running ---------------------------------------------------------

    def run(self) -> None:
        try:
            while True:
                signum = self.should_stop()
                if signum is not None:
                    self._close(kill=True)
                    raise Interrupted(signum)
                started = self._dispatch()
                if not self.running and not started:
                    if not self._new_bracket():
                        return
                    continue
                # (not waiting when something started: a new bracket's first trial goes out at once)
                for row in self.slot.wait(self.workers, 0.0 if started else 0.2):
                    self._record(row)
        except BaseException:
            self._close(kill=True)   # a running trial's rung runs again on resume
            raise
        finally:
            self._close()

    def _spent(self) -> bool:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            if not self.stopped:
                self.say("the time budget is spent: no new trial starts")
            self.stopped = "budget"
            return True
        return False

    def _dispatch(self) -> bool:
        """Start what can run on the idle workers (earliest bracket first);
        True when something started or was recorded."""
        progressed = False
        self._fit_first_bracket()
        for b in range(len(self.search.groups)):
            todo = self.pending(b)
            if todo is None:
                continue
            for t, r in todo:
                if (t, r) in self.running:
                    continue
                prior = self.results.get((t, r - 1)) if r > 0 else None
                if prior is not None and prior.get("done"):
                    # it stopped improving on its own: promoted as it is
                    self._record({**prior, "rung": r, "seconds": 0.0})
                    progressed = True
                    continue
                idle = self._idle()
                if not idle or self._spent():
                    return progressed
                if not self._fits(t if t < len(self.search.trials) else None, r, b):
                    continue
                if t >= len(self.search.trials):
                    self._propose_one(b, t)
                self._announce(b, r)
                idle[0].send(self._within_budget(self._job(t, r)))
                self.running.add((t, r))
                progressed = True
            if not self.overlap:
                return progressed
        if self.overlap and self._idle() and self._new_bracket():
            progressed = True
        return progressed

    def _fit_first_bracket(self) -> None:
        """With a budget, once the first `jobs` trials of the first bracket
        have their first rung, cut the bracket down to the trials whose
        successive halving is expected to take at most FIRST_SHARE of the
        time left (its first trials: the rest are left out), so that a
        short budget still sees the bracket's end and proposals after it.
        Recorded in brackets.jsonl; never without a budget (a search with
        --trials alone is reproducible)."""
        s = self.search
        if self.deadline is None or len(s.groups) != 1 or self.resized:
            return
        first, size = s.groups[0]
        done = [self.results[(t, 0)] for t in range(first, first + size) if (t, 0) in self.results]
        if len(done) < self.jobs or len(done) >= size:
            return
        self.resized = True
        per_trial = float(np.median([row.get("seconds") or 0.0 for row in done]))
        left = (self.deadline - time.monotonic()) * self.jobs * FIRST_SHARE
        n = size
        while n > max(len(done) + sum(t[1] == 0 for t in self.running), MIN_FIRST_BRACKET):
            rungs = len(plan_rungs(n, s.min_epochs, s.max_epochs, s.reduction))
            # each later rung costs about as much as the first (a third of the trials, three times the
            # epochs), less what early stopping saves
            if per_trial * ((n - len(done)) + LATER_RUNGS * (rungs - 1) * n) <= left:
                break
            n -= 1
        if n < size:
            _append_line(_brackets_file(self.dir), {"bracket": 0, "resize": n})
            s.resize_first(n)
            self.say(f"the budget allows the first bracket {n} of its {size} configurations: "
                     "the others are left out")

    def _epoch_seconds(self, t: int | None = None) -> float | None:
        """Seconds per epoch of trial t's last rung; for a trial without
        one, the median over the trials of its factor width (k padded) so
        far, or else over every trial scaled by the width (an epoch's cost
        grows with it: at k = 16 about twice k = 4's); None before any."""
        rates = {}
        for (tt, _r), row in sorted(self.results.items()):
            if row.get("ran") and row.get("seconds"):
                rates[tt] = row["seconds"] / row["ran"]
        if t is not None and t in rates:
            return rates[t]
        if not rates:
            return None
        if t is None or t >= len(self.search.trials):
            return float(np.median(list(rates.values())))
        width = self._width(t)
        same = [rate for tt, rate in rates.items() if self._width(tt) == width]
        if same:
            return float(np.median(same))
        return float(np.median([rate / (self._width(tt) + 8) for tt, rate in rates.items()])) * (width + 8)

    def _width(self, t: int) -> int:
        """Trial t's factor width: k padded to a multiple of 4."""
        from .model import padded_k

        if t not in self.widths:
            self.widths[t] = padded_k(int(self.search.trials[t].get("k", self.search.config.k)))
        return self.widths[t]

    def _fits(self, t: int | None, r: int, b: int | None = None) -> bool:
        """Whether a job for trial t (None: one not proposed yet, of bracket
        b: default the next) at rung r is expected to end within the budget:
        one that would not is not started (a budget is the search's wall
        time, not only the time it starts jobs in).  The first rung of the
        first bracket runs its epochs; any other job is expected to stop on
        its own after half of the epochs it may run, and starts when the
        budget leaves room for min_epochs * reduction of them (it is then
        cut to the epochs that fit, see _within_budget)."""
        if self.deadline is None:
            return True
        rate = self._epoch_seconds(t)
        if rate is None:
            return True
        s = self.search
        if b is None:
            b = s.bracket_of(t) if t is not None and t < len(s.trials) else len(s.groups)
        start = self.results[(t, r - 1)]["best_epoch"] if r > 0 else 0
        cap = s.plan_of(b)[r].epochs if b < len(s.groups) else s.max_epochs
        epochs = cap if b == 0 and r == 0 else max(1, math.ceil((cap - start) / 2))
        # a job cut short by the budget (see _within_budget) still tells
        # something after a first rung's epochs times the reduction
        epochs = min(epochs, s.min_epochs * s.reduction)
        if time.monotonic() + rate * epochs <= self.deadline:
            return True
        if not self.stopped:
            self.say("the rest of the budget is too short for the next trials: none starts")
        self.stopped = "budget"
        return False

    def _within_budget(self, job: dict) -> dict:
        """`job` with its epochs cut to those expected to end within the
        budget (a trial cut so is not done: resumed, it is not trained
        further; a budget may change a search's results)."""
        rate = self._epoch_seconds(job["trial"])
        if self.deadline is None or rate is None:
            return job
        room = int((self.deadline - time.monotonic()) / rate)
        if job["from"] + max(room, 1) < job["to"]:
            job = {**job, "to": job["from"] + max(room, 1)}
        return job

    def _announce(self, b: int, r: int) -> None:
        if (b, r) in self.announced:
            return
        self.announced.add((b, r))
        members = self.members(b, r) or []
        done = sum((t, r) in self.results for t in members)
        self.say(f"bracket {b} rung {r}: {len(members)} trial(s) to at most {self.search.plan_of(b)[r].epochs} "
                 f"epoch(s)" + (f", {done} done before" if done else ""))

    def _record(self, row: dict) -> None:
        _append(self.dir, row)
        key = (row["trial"], row["rung"])
        self.results[key] = row
        self.running.discard(key)
        if self.on_result is not None:
            self.on_result(row)

    def _job(self, t: int, r: int) -> dict:
        s = self.search
        prior = self.results.get((t, r - 1)) if r > 0 else None
        best = None
        if prior is not None:
            best = {"value": prior["value"], "epoch": prior["best_epoch"], "metrics": prior["metrics"],
                    "model": prior["model"]}
        return {"trial": t, "rung": r, "metric": s.metric, "config": s.config.to_dict(), "params": s.trials[t],
                "dir": os.path.abspath(self.dir), "trial_dir": os.path.join("trials", f"{t:04d}"),
                "train": s.train, "valid": s.valid, "weights": s.weights, "patience": s.patience,
                "from": prior["best_epoch"] if prior is not None else 0, "to": s.plan_of(s.bracket_of(t))[r].epochs,
                "start": prior["model"] if prior is not None else None,
                "history": prior["history"] if prior is not None else [], "best": best}

    def observations(self) -> tuple[list[tuple[dict, float]], float]:
        """What proposals learn from: the trials that got at least as far
        (in epochs, or to their own early stop) as MIN_OBSERVATIONS trials
        did (the longer trained, the truer their ranking), each as (its
        parameters, its outlook at its last rung; NaN when it failed), in
        trial order; and the fraction of them to count as good: at the
        first rung (a few epochs, where a large step size looks better than
        it ends) the third that successive halving would promote, later
        GOOD_FRACTION."""
        s = self.search
        latest: dict[int, tuple[int, dict]] = {}
        for (t, r), row in sorted(self.results.items()):
            # how far it got: its rung's epochs, or all of them once it stopped on its own
            epochs = s.max_epochs if row.get("done") else s.plan_of(s.bracket_of(t))[r].epochs
            latest[t] = (epochs, row)
        levels = sorted({e for e, _ in latest.values()}, reverse=True)
        level = next((lv for lv in levels if sum(e >= lv for e, _ in latest.values()) >= MIN_OBSERVATIONS),
                     levels[-1] if levels else 0)
        out = []
        for t, (epochs, row) in sorted(latest.items()):
            if epochs < level:
                continue
            if row["status"] == "ok":
                value = row.get("outlook")
                out.append((s.trials[t], float(row["value"] if value is None else value)))
            else:
                out.append((s.trials[t], math.nan))
        return out, (GOOD_FRACTION if level > s.min_epochs else 1.0 / s.reduction)

    def _new_bracket(self) -> bool:
        """Start a new bracket if the search may: its trials are proposed
        from the results so far and recorded in brackets.jsonl first."""
        s = self.search
        if s.max_trials is None and self.deadline is None:
            return False                     # a budgeted search resumed without one: finish what began
        if s.max_trials is not None and len(s.trials) >= s.max_trials:
            return False
        if not self.overlap and not self.complete():
            return False
        if self._spent() or not self._fits(None, 0, len(s.groups)):
            return False
        size = s.reduction if s.max_trials is None else min(s.reduction, s.max_trials - len(s.trials))
        b = len(s.groups)
        if self.overlap:
            # proposed one by one as workers take them: each learns from every result before it
            _append_line(_brackets_file(self.dir), {"bracket": b, "first": len(s.trials), "at": len(s.trials),
                                                    "size": size, "trials": []})
            s.add_bracket([], size)
            self.say(f"bracket {b}: {size} configuration(s), each proposed from the results so far as it starts")
            return True
        obs, good = self.observations()
        rng = np.random.default_rng([int(s.seed), 0x7475, b])
        trials = propose(s.space, obs, size, rng, higher_is_better=METRICS[s.metric][1], exclude=s.trials,
                         good=good)
        _append_line(_brackets_file(self.dir), {"bracket": b, "first": len(s.trials), "at": len(s.trials),
                                                "size": size, "trials": trials})
        s.add_bracket(trials)
        self.say(f"bracket {b}: {size} configuration(s) proposed from {len(obs)} result(s)")
        return True

    def _propose_one(self, b: int, t: int) -> None:
        """Trial t (the next one of bracket b, not yet proposed), proposed
        from the results so far and recorded before it runs."""
        s = self.search
        rng = np.random.default_rng([int(s.seed), 0x7475, b, t])
        obs, good = self.observations()
        params = propose(s.space, obs, 1, rng, higher_is_better=METRICS[s.metric][1], exclude=s.trials,
                         good=good)[0]
        _append_line(_brackets_file(self.dir), {"bracket": b, "first": s.groups[b][0], "at": t,
                                                "size": s.groups[b][1], "trials": [params]})
        s.trials.append(params)

    def _idle(self) -> list:
        """Workers without a job, started as needed (at most `jobs`)."""
        self.workers = [w for w in self.workers if w.alive() or w.job is not None]
        while len(self.workers) < self.jobs:
            self.workers.append(_Worker() if self.client is None else _DaskSlot(self.client))
        return [w for w in self.workers if w.job is None]

    def _close(self, kill: bool = False) -> None:
        workers, self.workers = self.workers, []
        for w in workers:
            w.close(kill)
        self.running.clear()


def _failed(job: dict, error: str) -> dict:
    """The result line of a job that ended without one of its own."""
    return {"trial": job["trial"], "rung": job["rung"], "status": "failed", "epochs": job["from"], "error": error,
            "history": job["history"], "seconds": None}


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
        return _failed(job, f"the trial's process ended abruptly (exit status {self.proc.wait()})")

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


class _DaskSlot:
    """One trial at a time on a Dask cluster (fm tune --scheduler): the
    same jobs and results as a :class:`_Worker`'s, run as Dask tasks (a
    task lost with its worker runs again elsewhere).  The data and the
    search directory must be at the same paths on every worker."""

    def __init__(self, client):
        self.client = client
        self.job: dict | None = None
        self.future = None

    def alive(self) -> bool:
        return True

    def send(self, job: dict) -> None:
        import uuid

        self.job = job
        self.future = self.client.submit(run_rung, job, pure=False,
                                         key=f"fmcli-trial-{job['trial']}-{job['rung']}-{uuid.uuid4().hex[:8]}")

    def finish(self) -> dict:
        """The result of the job sent (a task that failed fails the job)."""
        job, future = self.job, self.future
        self.job = self.future = None
        try:
            return future.result()
        except Exception as exc:     # noqa: BLE001 -- whatever ended the task is the trial's error
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return _failed(job, f"the trial's Dask task failed: {reason}")

    @staticmethod
    def wait(slots: Sequence["_DaskSlot"], timeout: float) -> list[dict]:
        """The results that come within `timeout` seconds."""
        busy = [s for s in slots if s.job is not None]
        if not busy:
            return []
        end = time.monotonic() + timeout
        while not any(s.future.done() for s in busy) and time.monotonic() < end:
            time.sleep(0.01)     # (Dask's own wait needs a default client; the search's is not one)
        return [s.finish() for s in busy if s.future.done()]

    def close(self, kill: bool = False) -> None:
        if kill and self.future is not None:
            self.future.cancel()
        self.job = self.future = None


def tune(search: Search, directory: str, *, resume: bool = False, jobs: int | None = None,
         budget: float | None = None, log: Callable[[str], None] | None = None,
         on_result: Callable[[dict], None] | None = None,
         should_stop: Callable[[], int | None] | None = None, started: float | None = None,
         client=None) -> Outcome:
    """Run (or, with `resume`, continue) `search` in `directory`.

    jobs: trials trained at once (default: every CPU); client: a Dask
    client whose workers train them (default: processes here); budget: the seconds
    the search may take, counted from `started` (a time.monotonic() value;
    default: now): no (trial, rung) starts that is not expected to end
    within it, less a reserve for writing the outputs (the running ones
    finish); until then new brackets follow one another (up to the search's
    max_trials).
    on_result(row) is called with every result line as it comes;
    should_stop() returning a signal number stops the running trials at
    once and raises :class:`~fmcli.errors.Interrupted` (the directory keeps
    every finished result).  Once the search ends, the model files it no
    longer needs are deleted (see :func:`prune`).  Raises FMError when
    every trial failed."""
    say = log or (lambda msg: None)
    t0 = time.monotonic() if started is None else started
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
        search.trials, search.groups, search.plan = recorded.trials, recorded.groups, recorded.plan
    else:
        _create(directory, search)
    deadline = None if budget is None else t0 + budget - min(RESERVE_SECONDS + RESERVE * budget, budget / 4)
    runner = _Runner(search, directory, jobs, deadline, say, on_result, should_stop, overlap=budget is not None,
                     client=client)
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
    pruned = prune(search, directory, runner, best)
    if pruned[0]:
        say(f"deleted {pruned[0]} model file(s) the search no longer needs ({pruned[1] / 1e6:.1f} MB)")
    return Outcome(search, directory, rows, best, time.monotonic() - t0, budget, runner.stopped, jobs,
                   dict(runner.results), pruned)


def prune(search: Search, directory: str, runner: "_Runner", best: dict) -> tuple[int, int]:
    """Delete the trial models a search no longer needs: all but the best
    trial's best model and, in a bracket not complete (a budget or a
    signal stopped it), each trial's latest model (a resumed search goes on
    from it).  The deleted paths are listed in pruned.txt so that a resumed
    search still counts their results.  Returns (files, bytes) deleted."""
    keep = {best["model"]}
    latest: dict[int, dict] = {}
    for (t, r), row in sorted(runner.results.items()):
        latest[t] = row
    for b in range(len(search.groups)):
        if runner.pending(b) is not None:
            first, size = search.groups[b]
            keep.update(latest[t]["model"] for t in range(first, first + size)
                        if t in latest and latest[t]["status"] == "ok")
    root = os.path.join(directory, "trials")
    gone = []
    for dirpath, _dirs, files in os.walk(root):
        for name in sorted(files):
            rel = os.path.relpath(os.path.join(dirpath, name), directory)
            if name.endswith(".fm") and rel not in keep:
                gone.append(rel)
    if not gone:
        return 0, 0
    # listed before they go: a kill in between leaves a listed file, which is harmless
    with open(_pruned_file(directory), "a", encoding="utf-8") as f:
        f.write("".join(rel + "\n" for rel in gone))
        f.flush()
        os.fsync(f.fileno())
    freed = 0
    for rel in gone:
        path = os.path.join(directory, rel)
        try:
            size = os.path.getsize(path)
            os.unlink(path)
            freed += size
        except OSError:
            continue
    return len(gone), freed


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
