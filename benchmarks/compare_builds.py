#!/usr/bin/env python3
"""Training speed of two builds of fmcli, side by side.

A refactor must not slow training down.  This times the training slices of
each case (MODEL:K:THREADS) with each of two trees -- source directories
with their extensions built in place -- alternating which goes first, each
run in a fresh process, and reports the medians and the paired ratios::

    python benchmarks/compare_builds.py OLD_TREE NEW_TREE --train train.ffm \\
        --cases ffm:4:1,fwfm:8:1,ffm:4:2,fwfm:8:2 --runs 10

FFM runs libffm's model (no bias, no linear terms), the others fmcli's
defaults; a fourth part ``defaults`` (``ffm:4:1:defaults``) runs FFM with
fmcli's defaults too (bias and linear terms).  Only training is timed: each run reads the first --rows rows
(from the binary cache after the first run), initialises the model, then
trains them once in slices of 32,768 rows, as ``fm train`` does.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

# Run in the child: time one case with the tree on sys.path; print rows/s.
CHILD = r"""
import os, sys, time
root, data, cache, model, k, threads, rows, defaults = sys.argv[1:9]
k, threads, rows = int(k), int(threads), int(rows)
sys.path.insert(0, root)
import numpy as np
from fmcli.config import Config
from fmcli.data.dataset import load_dataset
ds = load_dataset(data, cache_dir=cache)
batch = ds.in_memory(compact=True).rows(0, rows)
rows = batch.n_rows
libffm = model == "ffm" and defaults != "defaults"
cfg = Config(model=model, k=k, threads=threads, use_bias=not libffm, use_linear=not libffm, seed=1)
n, m = ds.max_feature + 1, ds.max_field + 1
if os.path.exists(os.path.join(root, "fmcli", "cpu.py")):
    from fmcli.cpu import CpuBackend
    st = CpuBackend(cfg, n, m, np.random.default_rng(1))
    st.prepare(batch)
    st.total_steps = rows
    run = lambda part, step: st.train_slice(batch, part, None, step)
else:   # a build from before the backend interface
    from fmcli.train import TrainState
    st = TrainState(cfg, n, m, np.random.default_rng(1))
    st.choose_hot(batch)
    run = lambda part, step: st.train_epoch(batch, part, None, step, rows)
order = np.random.default_rng(2).permutation(rows).astype(np.int64)
t = time.perf_counter()
for lo in range(0, rows, 32768):
    run(order[lo:lo + 32768], lo)
print(rows / (time.perf_counter() - t))
"""


def parse_cases(text: str) -> list[tuple[str, int, int, str]]:
    out = []
    for part in text.split(","):
        try:
            model, k, threads, *rest = part.split(":")
            if rest not in ([], ["defaults"]):
                raise ValueError(part)
            out.append((model, int(k), int(threads), "defaults" if rest else ""))
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad case {part!r}: want MODEL:K:THREADS[:defaults], "
                                             "e.g. ffm:4:1 or ffm:4:1:defaults") from None
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("old", type=Path, help="the tree before the change (extensions built)")
    ap.add_argument("new", type=Path, help="the tree after the change (extensions built)")
    ap.add_argument("--train", required=True, help="training data (libffm), e.g. BENCH's train.ffm")
    ap.add_argument("--cases", type=parse_cases, default=parse_cases("ffm:4:1,fwfm:8:1,ffm:4:2,fwfm:8:2"),
                    help="comma list of MODEL:K:THREADS (default: ffm:4:1,fwfm:8:1,ffm:4:2,fwfm:8:2)")
    ap.add_argument("--rows", type=int, default=262144, help="rows trained per run (default: 262144)")
    ap.add_argument("--runs", type=int, default=10, help="runs per case and build (default: 10)")
    args = ap.parse_args(argv)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    with tempfile.TemporaryDirectory() as cache:
        times = {c: {"old": [], "new": []} for c in args.cases}
        for r in range(args.runs):
            for case in args.cases:
                for side in (("old", "new") if r % 2 == 0 else ("new", "old")):
                    tree = (args.old if side == "old" else args.new).resolve()
                    out = subprocess.run(
                        [sys.executable, "-c", CHILD, str(tree), args.train, cache, case[0], str(case[1]),
                         str(case[2]), str(args.rows), case[3]], capture_output=True, text=True, check=True, env=env)
                    times[case][side].append(float(out.stdout.split()[-1]))
            print(f"run {r + 1} of {args.runs} done", file=sys.stderr)
    for (model, k, threads, defaults), t in times.items():
        old, new = statistics.median(t["old"]), statistics.median(t["new"])
        ratios = sorted(n / o for n, o in zip(t["new"], t["old"]))
        print(f"{model} k={k} threads={threads}{' (defaults)' if defaults else ''}: old {old:,.0f} rows/s, new {new:,.0f} rows/s, "
              f"new/old {new / old:.3f} (paired ratios: median {statistics.median(ratios):.3f}, "
              f"{ratios[0]:.3f} to {ratios[-1]:.3f}; {args.runs} runs each)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
