#!/usr/bin/env python3
"""Out-of-core training: memory stays bounded by the model, not the data.

Generates (with benchmarks/synth.py) a libffm training file of --gb
gigabytes and a validation file, then

1. trains FFM on the big file with `fm train` (the data is far above
   --memory-budget, so it is parsed once into the binary cache and every
   epoch streams chunks from it) and records the peak RSS of the process,
   the model size, the first-pass (parse + cache) time, the epoch times
   and the best validation logloss;
2. runs the same command again: the cache is reused, nothing is parsed;
3. on a slice of the same data (--slice-rows rows) compares the streamed
   path (--memory-budget 1) with the in-memory path: same data, same
   hyperparameters, validation logloss should agree to within the noise of
   a different row order.

Usage::

    python benchmarks/stream.py --gb 4 --work-dir stream-out [--json out.json]

Needs about 2.3 x --gb of free disk (text plus cache).  The target from the
data-at-scale issue: peak RSS < model file size + 512 MB.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SYNTH = HERE / "synth.py"
ROW_BYTES = 396  # synth.py's libffm rows with 39 fields are about this long


def fm_command() -> list[str]:
    exe = shutil.which("fm")
    return [exe] if exe else [sys.executable, "-m", "fmcli"]


def generate(path: Path, rows: int, seed: int) -> None:
    if path.exists():
        return
    part = path.with_suffix(".part")
    subprocess.run([sys.executable, str(SYNTH), "--rows", str(rows), "--seed", str(seed), "--out", str(part),
                    "-q"], check=True)
    part.rename(path)


def run_train(args: list[str], label: str) -> dict:
    """Run `fm train ...` under a fresh parent (so that RUSAGE_CHILDREN's peak
    is this run's alone); its stderr, wall time and peak RSS."""
    probe = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
             "sys.stdout.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); sys.exit(r.returncode)")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", probe] + fm_command() + ["train"] + args,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{label}: fm train failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    peak_kb = int(proc.stdout.strip() or 0) or None
    epochs = [tuple(float(x) for x in line.split()[1:]) for line in proc.stderr.splitlines()
              if re.match(r"^\s+\d+\s", line)]
    read = re.search(r"read (\d+) rows from .* in ([0-9.]+) s", proc.stderr)
    return {"label": label, "wall_s": wall, "peak_rss_mb": None if peak_kb is None else peak_kb / 1024,
            "epochs": epochs, "read_s": float(read.group(2)) if read else None,
            "rows": int(read.group(1)) if read else None, "stderr": proc.stderr}


def best_valid(run: dict) -> float:
    return min(e[1] for e in run["epochs"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--gb", type=float, default=4.0, help="size of the generated training file")
    ap.add_argument("--valid-rows", type=int, default=200_000)
    ap.add_argument("--slice-rows", type=int, default=1_000_000, help="rows of the streamed-vs-in-memory check")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--work-dir", type=Path, default=Path("stream-out"))
    ap.add_argument("--memory-budget", default="256M", help="fm train --memory-budget for the big run")
    ap.add_argument("--keep", action="store_true", help="keep the generated files and caches")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()

    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    rows = int(args.gb * 1e9 / ROW_BYTES)
    big, valid, small = work / "big.ffm", work / "valid.ffm", work / "slice.ffm"
    print(f"generating {rows:,} training rows (~{args.gb} GB) and {args.valid_rows:,} validation rows ...",
          file=sys.stderr)
    generate(big, rows, 11)
    generate(valid, args.valid_rows, 12)
    generate(small, args.slice_rows, 11)   # the first rows of big.ffm: same seed
    cache = work / "cache"
    common = ["--model", "ffm", "-k", "4", "-t", str(args.epochs), "-s", "1", "-p", str(valid),
              "--cache-dir", str(cache)]

    results = {"text_bytes": big.stat().st_size, "rows": rows}
    first = run_train(common + ["--memory-budget", args.memory_budget, "-o", str(work / "big.fm"), str(big)],
                      "big, first run (parse + cache)")
    model_mb = (work / "big.fm").stat().st_size / 2**20
    second = run_train(common + ["--memory-budget", args.memory_budget, "-o", str(work / "big2.fm"), str(big)],
                       "big, second run (cache hit)")
    streamed = run_train(common + ["--memory-budget", "1", "--no-cache", "-o", str(work / "s1.fm"), str(small)],
                         "slice, streamed")
    in_memory = run_train(common + ["--no-cache", "-o", str(work / "s2.fm"), str(small)], "slice, in memory")

    cache_bytes = sum(p.stat().st_size for p in cache.glob("*.fmcache"))
    results.update({
        "model_mb": model_mb,
        "cache_bytes": cache_bytes,
        "first_run": {k: v for k, v in first.items() if k != "stderr"},
        "second_run": {k: v for k, v in second.items() if k != "stderr"},
        "slice_streamed_best_va": best_valid(streamed),
        "slice_in_memory_best_va": best_valid(in_memory),
    })
    mb_s = results["text_bytes"] / 1e6 / first["read_s"] if first["read_s"] else float("nan")
    print(f"training file        {results['text_bytes'] / 1e9:.2f} GB, {rows:,} rows; cache {cache_bytes / 1e9:.2f} GB")
    print(f"model file           {model_mb:.0f} MiB")
    print(f"first run            parse + cache {first['read_s']:.1f} s ({mb_s:.0f} MB/s of text); "
          f"epochs {[round(e[3], 1) for e in first['epochs']]} s; peak RSS {first['peak_rss_mb']:.0f} MiB; "
          f"best va_logloss {best_valid(first):.5f}")
    rss2 = second["peak_rss_mb"]
    print(f"second run           cache read {second['read_s']:.1f} s; epochs {[round(e[3], 1) for e in second['epochs']]} s"
          + (f"; peak RSS {rss2:.0f} MiB" if rss2 else ""))
    print(f"RSS bound            peak {first['peak_rss_mb']:.0f} MiB vs model + 512 MiB = {model_mb + 512:.0f} MiB: "
          + ("OK" if first["peak_rss_mb"] < model_mb + 512 else "EXCEEDED"))
    print(f"slice of {args.slice_rows:,} rows  best va_logloss streamed {best_valid(streamed):.5f}, "
          f"in memory {best_valid(in_memory):.5f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if not args.keep:
        shutil.rmtree(cache, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
