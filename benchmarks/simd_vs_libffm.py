#!/usr/bin/env python3
"""fm train at each SIMD level against libffm's ffm-train, whole commands, interleaved.

Each repeat runs libffm and then `fm train` once per SIMD level (FMCLI_SIMD),
the order reversed on every other repeat, all with libffm's settings
(``-l 0.00002 -r 0.2``, one thread, fmcli as libffm's model:
``--no-bias --no-linear``).  Training rows/s per epoch come from each
tool's own epoch timer (validation excluded, as in bench.py); the report
gives their medians over every epoch of every repeat, each level's ratio to
libffm, and each tool's best validation logloss.

Usage::

    python benchmarks/simd_vs_libffm.py --train train.ffm --valid va.ffm --libffm-dir /path/to/libffm \\
        -k 4 --levels sse,avx,avx512 --epochs 2 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench import L2, LEARNING_RATE, count_rows, find_fm, parse_fmcli_train, parse_libffm_train  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--train", type=Path, required=True)
    ap.add_argument("--valid", type=Path, required=True)
    ap.add_argument("--libffm-dir", type=Path, help="directory holding a built ffm-train (else fmcli only)")
    ap.add_argument("-k", "--k", type=int, default=4)
    ap.add_argument("--levels", default="sse,avx,avx512", help="comma list of FMCLI_SIMD levels")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", type=Path, help="write every epoch's figures here")
    args = ap.parse_args(argv)

    train_rows, _ = count_rows(args.train)
    fm = find_fm()
    tools = ([("libffm", None)] if args.libffm_dir else []) + [
        (f"fmcli@{lv}", lv) for lv in args.levels.split(",") if lv]
    rates: dict[str, list[float]] = {t: [] for t, _ in tools}
    best: dict[str, list[float]] = {t: [] for t, _ in tools}
    commands: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="simd-bench-") as tmp:
        scratch = Path(tmp)
        for rep in range(args.repeat):
            for tool, level in (tools if rep % 2 == 0 else tools[::-1]):
                if level is None:
                    cmd = [str(args.libffm_dir / "ffm-train"), "-k", str(args.k), "-t", str(args.epochs), "-s", "1",
                           "-l", str(L2), "-r", str(LEARNING_RATE), "-p", str(args.valid.resolve()),
                           str(args.train.resolve()), str(scratch / "libffm.model")]
                    out = subprocess.run(cmd, cwd=scratch, capture_output=True, text=True, check=True)
                    epochs, _ = parse_libffm_train(out.stdout, train_rows)
                    env = None
                else:
                    cmd = [str(fm), "train", "--model", "ffm", "-k", str(args.k), "-t", str(args.epochs), "-s", "1",
                           "-r", str(LEARNING_RATE), "-l", str(L2), "-p", str(args.valid), "-o",
                           str(scratch / "fmcli.fm"), "--no-bias", "--no-linear", "--no-cache", str(args.train)]
                    # this tree's fmcli, whichever one the fm script's environment installed
                    path = os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")]))
                    env = {**os.environ, "FMCLI_SIMD": level, "PYTHONPATH": path}
                    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
                    epochs, _ = parse_fmcli_train(out.stderr)
                if len(epochs) != args.epochs:
                    raise SystemExit(f"{tool}: could not read the epoch table:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
                commands[tool] = (f"FMCLI_SIMD={level} PYTHONPATH={HERE.parent} " if level else "") + " ".join(cmd)
                rates[tool] += [e.rows_per_s for e in epochs if e.rows_per_s]
                best[tool].append(min(e.va_logloss for e in epochs if e.va_logloss is not None))
                print(f"repeat {rep + 1} {tool}: " + " ".join(f"{e.rows_per_s:,.0f}" for e in epochs)
                      + " rows/s", file=sys.stderr, flush=True)

    base = statistics.median(rates["libffm"]) if "libffm" in rates else None
    print(f"ffm k={args.k}, libffm's settings, 1 thread, {train_rows:,} rows, {args.epochs} epochs x "
          f"{args.repeat} repeats, interleaved")
    print(f"{'tool':16} {'train rows/s (median)':>22} {'x libffm':>9} {'best va_logloss':>16}")
    report = []
    for tool, _ in tools:
        rate = statistics.median(rates[tool])
        ll = statistics.median(best[tool])
        ratio = f"{rate / base:.2f}" if base else "-"
        print(f"{tool:16} {rate:>22,.0f} {ratio:>9} {ll:>16.5f}")
        report.append({"tool": tool, "command": commands[tool], "rows_per_s": rates[tool],
                       "median_rows_per_s": rate, "best_va_logloss": best[tool]})
    for tool, _ in tools:
        print(f"  {tool}: {commands[tool]}")
    if args.json:
        args.json.write_text(json.dumps({"k": args.k, "rows": train_rows, "tools": report}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
