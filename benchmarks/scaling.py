#!/usr/bin/env python3
"""Thread scaling of training (and other A/B comparisons), measured in interleaved slices.

On a shared machine the speed of the CPU drifts by 20-40% within minutes,
so the ratio of two runs made a minute apart says little about threads.
Here every setting trains its own model on the same rows, slice by slice,
and the settings take turns on each slice (in alternating order), so each
slice's rows/s of N threads and of 1 thread are measured seconds apart.
The report gives every setting's median rows/s and the median (and
quartiles) of its per-slice ratio to the 1-thread setting, then the
validation logloss of every model after the pass, so that a faster setting
is seen to train as well.  It also gives each setting's share of its
threads' cores (the process's CPU seconds / wall seconds / threads: below 1
when other processes took the rest; OpenMP threads spinning idle count, which
matters only for slices of a few milliseconds) and the median per-slice ratio of
its rows per CPU-second to the 1-thread setting's, which separates what the
threads cost one another from what the machine's other load takes.

Settings: 1 thread, and for every other --threads count fmcli's default
(hot features on per-thread replicas where they apply) and, with
--hogwild, the plain Hogwild run (--hot-features 0).  With several
--optimizers every optimizer gets those settings (ratios are to the first
optimizer's 1 thread), and --general-loops adds each setting again with the
kernels' one-hot shortcut off (fmcli._core._kernels.uniform_rows(False):
the same results, computed by the general loops), --separate-models adds,
for every other --threads count N, N one-thread trainers on models of their
own, each training 1/N of every slice at the same time as the others (in
Python threads: the kernels release the GIL): what N threads reach when
they share nothing at all, neither model nor loop, the ceiling of N threads
on one model (its logloss is not given: each model sees 1/N of the rows),
and --hot-sync adds each
setting with hot-feature replicas again with the replicas exchanged every
that many rows instead of fmcli's intervals (fmcli.cpu.HOT_SYNC_ROWS, one
interval for all), and --hot-variant adds them with other constants of the
replicas (their bytes, the tiers of their exchange intervals).  With
--valid, every setting's validation logloss is measured after each epoch.

Usage::

    python benchmarks/scaling.py --train train.ffm --valid va.ffm --threads 1,2 --hogwild
    python benchmarks/scaling.py --train train.ffm --k 8 --linear --json out.json
    python benchmarks/scaling.py --train train.ffm --threads 1,2 --optimizers adagrad,rowwise-adagrad
    python benchmarks/scaling.py --train train.ffm --threads 1 --general-loops
    python benchmarks/scaling.py --train train.ffm --threads 1,2 --separate-models
    python benchmarks/scaling.py --train train.ffm --threads 1,2 --hogwild --hot-sync 1024,4096
    python benchmarks/scaling.py --train train.ffm --valid va.ffm --epochs 2 --slice-rows 131072 \
        --hot-variant bytes=524288,step=1 --hot-variant bytes=1048576 --hot-variant share=0.125

Without --train/--valid a dataset is generated with benchmarks/synth.py
(as bench.py does, in --work-dir).

This times the training kernels only (the epoch timer of fm train): data
are read once, before any timing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench import generate_dataset  # noqa: E402

from fmcli._core import _kernels  # noqa: E402
from fmcli.config import Config  # noqa: E402
from fmcli.data.dataset import load_dataset  # noqa: E402
from fmcli.metrics import evaluate  # noqa: E402
import fmcli.cpu  # noqa: E402
from fmcli.cpu import CpuBackend as TrainState  # noqa: E402


@dataclass
class Setting:
    name: str
    threads: int
    hot_features: int | None       # None: fmcli's default (auto)
    optimizer: str = "adagrad"
    uniform: bool = True           # the kernels' one-hot shortcut (see --general-loops)
    rows_per_s: list[float] = field(default_factory=list)
    cpu_share: list[float] = field(default_factory=list)   # CPU seconds / (wall seconds x threads)
    hot: int = 0                   # features on per-thread replicas
    va_logloss: float | None = None
    hot_sync: int | None = None    # rows between a replica's exchanges (None: fmcli's HOT_SYNC_ROWS)
    variant: dict = field(default_factory=dict)   # fmcli.cpu's HOT_* constants for this setting
    va_by_epoch: list[float] = field(default_factory=list)
    separate: bool = False         # `threads` one-thread models, each on its share of a slice
    tiers: dict = field(default_factory=dict)     # replicated features per exchange interval


# --hot-variant's keys: fmcli.cpu's constants of the hot-feature replicas
VARIANT_KEYS = {"bytes": "HOT_BYTES", "min_share": "HOT_MIN_SHARE", "sync": "HOT_SYNC_ROWS",
                "share": "HOT_SYNC_SHARE", "step": "HOT_SYNC_STEP", "tiers": "HOT_SYNC_TIERS"}


def parse_variant(text: str) -> dict:
    """'bytes=1048576,share=0.125' -> {"bytes": 1048576, "share": 0.125}."""
    out = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in VARIANT_KEYS:
            raise ValueError(f"{item!r}: expected KEY=VALUE with KEY one of {', '.join(VARIANT_KEYS)}")
        number = float(value)
        out[key] = int(number) if number.is_integer() and key != "share" and key != "min_share" else number
    return out


def constants(s: "Setting") -> dict:
    """fmcli.cpu's constants as setting s has them (its variant, its --hot-sync)."""
    values = dict(s.variant)
    if s.hot_sync is not None:
        values["HOT_SYNC_ROWS"] = s.hot_sync
        values.setdefault("HOT_SYNC_STEP", 1)    # one interval for all
    return values


class patched:
    """fmcli.cpu's constants set to a setting's values while in the block."""

    def __init__(self, values: dict):
        self.values = values

    def __enter__(self):
        self.old = {k: getattr(fmcli.cpu, k) for k in self.values}
        for k, v in self.values.items():
            setattr(fmcli.cpu, k, v)

    def __exit__(self, *exc):
        for k, v in self.old.items():
            setattr(fmcli.cpu, k, v)


def settings(threads: list[int], hogwild: bool, optimizers: tuple[str, ...] = ("adagrad",),
             general: bool = False, hot_syncs: tuple[int, ...] = (),
             variants: tuple[dict, ...] = (), separate: bool = False) -> list[Setting]:
    out = []
    for opt in optimizers:
        name = f"{opt}, " if len(optimizers) > 1 else ""
        for n in threads:
            kinds = [("", None)] if n == 1 else [("", None)] + ([(", --hot-features 0", 0)] if hogwild else [])
            for suffix, hot in kinds:
                label = f"{name}{n} thread{'s' if n > 1 else ''}{suffix}"
                out.append(Setting(label, n, hot, opt))
                if n > 1 and hot is None and separate:
                    out.append(Setting(f"{label}, separate models", n, 0, opt, separate=True))
                if n > 1 and hot is None:
                    out += [Setting(f"{label}, hot sync {rows}", n, hot, opt, hot_sync=rows) for rows in hot_syncs]
                    out += [Setting(f"{label}, " + ",".join(f"{k}={v}" for k, v in var.items()), n, hot, opt,
                                    variant={VARIANT_KEYS[k]: v for k, v in var.items()})
                            for var in variants]
                if general:
                    out.append(Setting(label + ", general loops", n, hot, opt, uniform=False))
    return out


def train_apart(states: list, batch, part: np.ndarray, step: int) -> None:
    """Each one-thread state trains its share of `part`, all at once (one
    Python thread each; the kernels release the GIL while they train)."""
    from concurrent.futures import ThreadPoolExecutor

    shares = np.array_split(part, len(states))
    with ThreadPoolExecutor(len(states) - 1) as pool:
        others = [pool.submit(st.train_slice, batch, rows, None, step)
                  for st, rows in zip(states[1:], shares[1:])]
        states[0].train_slice(batch, shares[0], None, step)
        for f in others:
            f.result()


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q = np.percentile(values, [25, 50, 75])
    return float(q[0]), float(q[1]), float(q[2])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--train", type=Path, help="libffm training file (default: generated)")
    ap.add_argument("--valid", type=Path, help="libffm validation file (logloss after the pass)")
    ap.add_argument("--rows", type=int, default=200_000, help="rows to generate without --train")
    ap.add_argument("--work-dir", type=Path, default=Path("bench-out"), help="where generated data go")
    ap.add_argument("--model", default="ffm", choices=["lr", "fm", "ffm", "fwfm"])
    ap.add_argument("-k", "--k", type=int, default=4)
    ap.add_argument("--threads", default="1,2", help="comma list; must include 1")
    ap.add_argument("--epochs", type=int, default=1, help="passes over the training rows")
    ap.add_argument("--slice-rows", type=int, default=16384, help="rows per timed slice")
    ap.add_argument("--linear", action="store_true",
                    help="fmcli's defaults (bias and linear terms); without: libffm's model")
    ap.add_argument("--hogwild", action="store_true",
                    help="also run plain Hogwild (--hot-features 0) at every thread count above 1")
    ap.add_argument("--optimizers", default="adagrad",
                    help="comma list: every setting for each (ratios to the first one's 1 thread)")
    ap.add_argument("--general-loops", action="store_true",
                    help="also run every setting with the one-hot shortcut of the FFM loops off")
    ap.add_argument("--separate-models", action="store_true",
                    help="add, for each thread count N > 1, N one-thread trainers on models of their own, "
                         "training 1/N of each slice each, all at once (the ceiling of N threads)")
    ap.add_argument("--hot-sync", default="",
                    help="comma list of rows between the hot-feature replicas' exchanges: every setting "
                         "with replicas also runs with each (fmcli's own interval is "
                         f"{fmcli.cpu.HOT_SYNC_ROWS})")
    ap.add_argument("--hot-variant", action="append", default=[], metavar="KEY=VALUE,...",
                    help="add each multi-thread setting again with the hot-feature replicas' "
                         "constants of fmcli.cpu changed: bytes (HOT_BYTES), min_share, sync "
                         "(HOT_SYNC_ROWS), share (HOT_SYNC_SHARE), step (HOT_SYNC_STEP: 1 for one "
                         "interval for all), tiers; repeatable")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="write every slice's figures here")
    args = ap.parse_args(argv)
    threads = sorted({int(t) for t in args.threads.split(",")})
    optimizers = tuple(dict.fromkeys(o.strip() for o in args.optimizers.split(",") if o.strip()))
    if 1 not in threads or min(threads) < 1:
        ap.error("--threads must list 1 (the base of the ratios)")
    hot_syncs = tuple(int(x) for x in args.hot_sync.split(",") if x.strip())
    try:
        variants = tuple(parse_variant(v) for v in args.hot_variant)
    except ValueError as exc:
        ap.error(f"--hot-variant: {exc}")
    if any(x < 1 for x in hot_syncs):
        ap.error("--hot-sync: rows must be at least 1")
    runs = settings(threads, args.hogwild, optimizers, args.general_loops, hot_syncs, variants,
                    args.separate_models)
    if len(runs) < 2:
        ap.error("nothing to compare: give --threads with 1 and a larger count, several --optimizers "
                 "or --general-loops")

    if args.train is None:
        args.train, generated_valid = generate_dataset(args.work_dir, args.rows,
                                                       lambda msg: print(msg, file=sys.stderr))
        args.valid = args.valid or generated_valid
    t0 = time.perf_counter()
    ds = load_dataset(str(args.train), cache_dir=None)
    batch = ds.in_memory(compact=True)
    va = load_dataset(str(args.valid), cache_dir=None).in_memory(compact=True) if args.valid else None
    n_features = ds.max_feature + 1
    n_fields = ds.max_field + 1
    if va is not None:
        n_features = max(n_features, va.features.max(initial=-1) + 1)
    print(f"read {batch.n_rows:,} rows in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    states = []
    for s in runs:
        cfg = Config(model=args.model, k=args.k, threads=1 if s.separate else s.threads,
                     hot_features=s.hot_features, use_bias=args.linear, use_linear=args.linear,
                     seed=args.seed, optimizer=s.optimizer)
        if s.separate:
            states.append([TrainState(cfg, n_features, n_fields, np.random.default_rng(args.seed))
                           for _ in range(s.threads)])
            continue
        st = TrainState(cfg, n_features, n_fields, np.random.default_rng(args.seed))
        with patched(constants(s)):
            st.prepare(batch)
        if st.hot is not None and st.hot_sync is not None:
            every, count = np.unique(st.hot_sync, return_counts=True)
            s.tiers = {int(e): int(c) for e, c in zip(every, count)}
        st.total_steps = args.epochs * batch.n_rows
        s.hot = 0 if st.hot is None else len(st.hot)
        states.append(st)

    rng = np.random.default_rng(args.seed)
    n = batch.n_rows
    step = 0
    turn = 0
    for _ in range(args.epochs):
        order = rng.permutation(n).astype(np.int64)
        for lo in range(0, n, args.slice_rows):
            part = order[lo : lo + args.slice_rows]
            pairs = list(zip(runs, states))
            for s, st in (pairs if turn % 2 == 0 else pairs[::-1]):
                _kernels.uniform_rows(s.uniform)
                # (the replicas' settings are read by prepare() and when the
                # state's kernels are built, on its first slice)
                t, cpu = time.perf_counter(), time.process_time()
                if s.separate:
                    train_apart(st, batch, part, step)
                else:
                    with patched(constants(s)):
                        st.train_slice(batch, part, None, step)
                wall = time.perf_counter() - t
                s.rows_per_s.append(len(part) / wall)
                s.cpu_share.append((time.process_time() - cpu) / wall / s.threads)
            _kernels.uniform_rows(True)
            step += len(part)
            turn += 1
        if va is not None:
            for s, st in zip(runs, states):
                if s.separate:
                    continue
                s.va_by_epoch.append(evaluate("binary", va.labels, st.scores(va, max(threads)))["logloss"])

    if va is not None:
        for s in runs:
            s.va_logloss = s.va_by_epoch[-1] if s.va_by_epoch else None   # (none: separate models)

    base = runs[0].rows_per_s
    what = "fmcli's defaults (bias, linear, pairs)" if args.linear else "--no-bias --no-linear (libffm's model)"
    print(f"{args.model} k={args.k}, {what}: {batch.n_rows:,} rows x {args.epochs} epoch(s) "
          f"in slices of {args.slice_rows:,}, settings interleaved")
    width = max(34, max(len(s.name) for s in runs))
    print(f"{'setting':{width}} {'hot':>5} {'rows/s':>10} {'x ' + runs[0].name + ' (q25 / median / q75)':>34} "
          f"{'va_logloss':>11} {'cpu share':>9} {'x per cpu-s':>11}")
    report = []
    for s in runs:
        ratios = [a / b for a, b in zip(s.rows_per_s, base)]
        q25, med, q75 = quartiles(ratios)
        rate = statistics.median(s.rows_per_s)
        ll = f"{s.va_logloss:.5f}" if s.va_logloss is not None else "-"
        # the share of its threads' cores the setting got (other processes
        # take the rest), and its ratio per CPU-second: what the code would
        # do with its cores to itself
        share = statistics.median(s.cpu_share)
        per_cpu = statistics.median([(a / (c * s.threads)) / (b / (d * runs[0].threads)) for a, b, c, d
                                     in zip(s.rows_per_s, base, s.cpu_share, runs[0].cpu_share)])
        print(f"{s.name:{width}} {s.hot:>5} {rate:>10,.0f} {f'{q25:.2f} / {med:.2f} / {q75:.2f}':>34} {ll:>11} "
              f"{share:>9.2f} {per_cpu:>11.2f}")
        report.append({**asdict(s), "median_rows_per_s": rate, "ratio_q25": q25, "ratio_median": med,
                       "median_cpu_share": share, "ratio_per_cpu_second": per_cpu,
                       "ratio_q75": q75})
    for s in runs:
        if s.tiers or len(s.va_by_epoch) > 1:
            tiers = ", ".join(f"{c} every {e}" for e, c in s.tiers.items()) or "-"
            va_text = ", ".join(f"{x:.5f}" for x in s.va_by_epoch) or "-"
            print(f"  {s.name}: replicated features {tiers}; va_logloss by epoch {va_text}")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "rows": batch.n_rows, "settings": report}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
