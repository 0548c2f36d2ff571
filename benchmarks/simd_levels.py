#!/usr/bin/env python3
"""Training and scoring speed of the float32 kernels at each SIMD level, interleaved.

Every level trains its own model (same seed, same rows, one thread) and the
levels take turns on each slice of rows, in alternating order, so that each
slice's rows/s at one level and at another are measured seconds apart on a
machine whose speed drifts.  After training, every level scores the
validation rows (or the training rows) several times, again in turns.  The
report gives every level's median training rows/s, the median of its
per-slice ratio to the first level, its median scoring rows/s and the
validation logloss of its model (levels with the same arithmetic train the
same model, so their loglosses are equal).

Usage::

    python benchmarks/simd_levels.py --train train.ffm --valid va.ffm -k 4 --levels sse,avx,avx2,avx512
    python benchmarks/simd_levels.py --train train.ffm -k 8 --optimizer adam --epochs 2 --json out.json

The model is libffm's (no bias, no linear terms) unless --linear.  Levels
the CPU lacks are run at the best level it has and reported as such (see
fmcli._core._kernels.set_simd).  Data are read once, before any timing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from fmcli._core import _kernels  # noqa: E402
from fmcli.config import Config  # noqa: E402
from fmcli.cpu import CpuBackend as TrainState  # noqa: E402
from fmcli.data.dataset import load_dataset  # noqa: E402
from fmcli.metrics import evaluate  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--train", type=Path, required=True, help="libffm training file")
    ap.add_argument("--valid", type=Path, help="libffm validation file (scored, and logloss after training)")
    ap.add_argument("--model", default="ffm", choices=["fm", "ffm", "fwfm", "fmfm"])
    ap.add_argument("-k", "--k", type=int, default=4)
    ap.add_argument("--optimizer", default="adagrad")
    ap.add_argument("--levels", default=",".join(_kernels.SIMD_LEVELS[1:]),
                    help="comma list of SIMD levels; ratios are to the first")
    ap.add_argument("--epochs", type=int, default=1, help="passes over the training rows (0: scoring only)")
    ap.add_argument("--slice-rows", type=int, default=16384, help="rows per timed slice")
    ap.add_argument("--score-repeat", type=int, default=3, help="scoring passes per level")
    ap.add_argument("--linear", action="store_true", help="fmcli's defaults (bias and linear terms)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="write every slice's figures here")
    args = ap.parse_args(argv)

    best = _kernels.simd()
    levels = []
    for name in dict.fromkeys(x.strip() for x in args.levels.split(",") if x.strip()):
        got = _kernels.set_simd(name)
        if got != name:
            print(f"{name}: not available here, runs as {got}", file=sys.stderr)
        levels.append((name, got))
    _kernels.set_simd(best)

    t0 = time.perf_counter()
    ds = load_dataset(str(args.train), cache_dir=None)
    batch = ds.in_memory(compact=True)
    va = load_dataset(str(args.valid), cache_dir=None).in_memory(compact=True) if args.valid else None
    n_features, n_fields = ds.max_feature + 1, ds.max_field + 1
    if va is not None:
        n_features = max(n_features, int(va.features.max(initial=-1)) + 1)
    print(f"read {batch.n_rows:,} rows in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    states = []
    for _ in levels:
        cfg = Config(model=args.model, k=args.k, threads=1, use_bias=args.linear, use_linear=args.linear,
                     seed=args.seed, optimizer=args.optimizer)
        st = TrainState(cfg, n_features, n_fields, np.random.default_rng(args.seed))
        st.prepare(batch)
        st.total_steps = args.epochs * batch.n_rows
        states.append(st)

    rates: list[list[float]] = [[] for _ in levels]
    rng = np.random.default_rng(args.seed)
    n, step, turn = batch.n_rows, 0, 0
    for _ in range(args.epochs):
        order = rng.permutation(n).astype(np.int64)
        for lo in range(0, n, args.slice_rows):
            part = order[lo : lo + args.slice_rows]
            idx = list(range(len(levels)))
            for i in (idx if turn % 2 == 0 else idx[::-1]):
                _kernels.set_simd(levels[i][1])
                t = time.perf_counter()
                states[i].train_slice(batch, part, None, step)
                rates[i].append(len(part) / (time.perf_counter() - t))
            step += len(part)
            turn += 1

    scored = va if va is not None else batch
    score_rates: list[list[float]] = [[] for _ in levels]
    loglosses: list[float | None] = [None] * len(levels)
    for r in range(args.score_repeat):
        idx = list(range(len(levels)))
        for i in (idx if r % 2 == 0 else idx[::-1]):
            _kernels.set_simd(levels[i][1])
            t = time.perf_counter()
            s = states[i].scores(scored, 1)
            score_rates[i].append(scored.n_rows / (time.perf_counter() - t))
            if va is not None:
                loglosses[i] = evaluate("binary", va.labels, s)["logloss"]
    _kernels.set_simd(best)

    print(f"{args.model} k={args.k} {args.optimizer}, {'defaults' if args.linear else 'no bias, no linear'}, "
          f"1 thread: {batch.n_rows:,} rows x {args.epochs} epoch(s) in slices of {args.slice_rows:,}, "
          f"levels interleaved")
    print(f"{'level':10} {'ran as':8} {'train rows/s':>13} {'x ' + levels[0][0] + ' (q25/med/q75)':>26} "
          f"{'score rows/s':>13} {'va_logloss':>11}")
    report = []
    for (name, got), rr, sr, ll in zip(levels, rates, score_rates, loglosses):
        q = np.percentile([a / b for a, b in zip(rr, rates[0])] or [np.nan], [25, 50, 75])
        rate = statistics.median(rr) if rr else float("nan")
        srate = statistics.median(sr) if sr else float("nan")
        lls = f"{ll:.6f}" if ll is not None else "-"
        print(f"{name:10} {got:8} {rate:>13,.0f} {f'{q[0]:.2f} / {q[1]:.2f} / {q[2]:.2f}':>26} "
              f"{srate:>13,.0f} {lls:>11}")
        report.append({"level": name, "ran_as": got, "train_rows_per_s": rr, "score_rows_per_s": sr,
                       "median_train_rows_per_s": rate, "ratio_q25": q[0], "ratio_median": q[1],
                       "ratio_q75": q[2], "median_score_rows_per_s": srate, "va_logloss": ll})
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "rows": batch.n_rows, "levels": report}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
