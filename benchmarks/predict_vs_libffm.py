"""Whole-command scoring time: `fm predict` against libffm's `ffm-predict`.

Both commands score the same data with a model of the same configuration
(FFM k=4 trained by each tool with libffm's settings, see the README's
"Prediction" part), writing the probabilities to a file.  The commands run
alternately, `--repeat` times each (fmcli with its default threads, fmcli
with -s 1, libffm), after one unmeasured run of each that brings the files
into the page cache and writes fmcli's byte code (as an installed package
has it, even where PYTHONDONTWRITEBYTECODE is set here); the medians of
their wall times and the ratios are printed.  Nothing here builds libffm:
give the directory of an already built ffm-predict.

    python benchmarks/predict_vs_libffm.py --data va.ffm --fm-model fm4.fm \\
        --libffm-model lf4.model --libffm-dir /path/to/libffm --repeat 9
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


# the commands' environment: Python may cache byte code (see the module's doc)
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    if done.returncode:
        last = (done.stderr.decode(errors="replace").strip().splitlines() or [""])[-1]
        raise SystemExit(f"predict_vs_libffm: {' '.join(cmd)} exited {done.returncode}: {last}")
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="libffm data to score (BENCH.md's va.ffm)")
    ap.add_argument("--fm-model", required=True, help="an fmcli model file")
    ap.add_argument("--libffm-model", required=True, help="a libffm model file of the same configuration")
    ap.add_argument("--libffm-dir", required=True, help="directory holding an already-built ffm-predict")
    ap.add_argument("--fm", default=shutil.which("fm") or os.path.join(os.path.dirname(sys.executable), "fm"),
                    help="the fm command (default: the one beside this Python)")
    ap.add_argument("--repeat", type=int, default=9)
    a = ap.parse_args(argv)
    ffm_predict = os.path.join(a.libffm_dir, "ffm-predict")
    for what, path in (("ffm-predict", ffm_predict), ("fm", a.fm)):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise SystemExit(f"predict_vs_libffm: {what}: no executable {path}")
    for path in (a.data, a.fm_model, a.libffm_model):
        if not os.path.isfile(path):
            raise SystemExit(f"predict_vs_libffm: no file {path}")
    with tempfile.TemporaryDirectory(prefix="predict-bench-") as work:
        out = os.path.join(work, "p.txt")
        commands = {
            "fmcli": [a.fm, "predict", a.fm_model, a.data, "-o", out],
            "fmcli -s 1": [a.fm, "predict", "-s", "1", a.fm_model, a.data, "-o", out],
            "libffm": [ffm_predict, a.data, a.libffm_model, out],
        }
        for cmd in commands.values():     # page cache
            timed(cmd)
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(a.repeat):
            for name, cmd in commands.items():
                times[name].append(timed(cmd))
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    for name, ts in times.items():
        print(f"{name:11s} median {medians[name]:.3f} s   " + " ".join(f"{t:.2f}" for t in ts))
    for name in ("fmcli", "fmcli -s 1"):
        print(f"libffm / {name}: {medians['libffm'] / medians[name]:.2f}x")
    for name, cmd in commands.items():
        print(f"# {name}: {' '.join(cmd)}")
    return {"medians": medians, "times": times}


if __name__ == "__main__":
    main()
