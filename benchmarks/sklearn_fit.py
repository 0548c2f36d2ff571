#!/usr/bin/env python3
"""The scikit-learn estimators against `fm train`, on the same rows.

`FFMClassifier.fit` on a scipy CSR matrix (columns = feature ids, a field
per column) must cost about what `fm train` costs on the libffm file those
rows come from: the estimator hands the CSR arrays to the same kernels,
without temporary files.  This reads a libffm file once into a CSR matrix
and a field per column, then times, alternating, each repeat in a fresh
process:

* ``fit``: the estimator's fit on the CSR matrix (conversion included);
* ``fm train (cache)``: the whole command, its binary cache already built
  (no parsing: the fairest comparison with data already in memory);
* ``fm train (text)``: the whole command without the cache (parsing included).

Both train libffm's model (no bias, no linear term, k=4, AdaGrad, one
thread, the same epochs and seed).  Usage::

    python benchmarks/sklearn_fit.py --train train.ffm --epochs 3 --repeat 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

FIT = r"""
import sys, time
import numpy as np
import scipy.sparse as sp
data = np.load(sys.argv[1])
X = sp.csr_matrix((data["values"], data["features"], data["indptr"]), shape=tuple(data["shape"]))
y = data["labels"]
from fmcli.estimators import FFMClassifier
est = FFMClassifier(k=int(sys.argv[2]), epochs=int(sys.argv[3]), use_bias=False, use_linear=False,
                    fields=data["fields"], n_jobs=1, random_state=0)
t = time.perf_counter()
est.fit(X, y)
print(time.perf_counter() - t)
"""


def to_csr(train: str, out: Path) -> int:
    """Read a libffm file into CSR arrays (and each column's field) saved in out."""
    import numpy as np

    from fmcli.data.dataset import load_dataset

    ds = load_dataset(train, cache_dir=None)
    b = ds.in_memory(compact=False)
    n_cols = int(b.features.max()) + 1
    fields = np.zeros(n_cols, np.int32)
    fields[b.features] = b.fields          # BENCH's data: every feature id belongs to one field
    values = b.values if b.values is not None and len(b.values) else np.ones(len(b.features), np.float32)
    np.savez(out, indptr=b.indptr, features=b.features, values=values, labels=b.labels,
             fields=fields, shape=np.array([b.n_rows, n_cols]))
    return b.n_rows


def timed(cmd: list[str], env: dict) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", required=True, help="a libffm file, e.g. BENCH's train.ffm")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("-k", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rows = to_csr(args.train, work / "csr.npz")
        env["FMCLI_CACHE_DIR"] = str(work / "cache")
        train = [sys.executable, "-m", "fmcli", "train", "-q", "--model", "ffm", "-k", str(args.k), "-t",
                 str(args.epochs), "--no-bias", "--no-linear", "-s", "1", "-o", str(work / "m.fm")]
        subprocess.run(train + [args.train], check=True, env=env)       # builds the cache
        times: dict[str, list[float]] = {"fit": [], "fm train (cache)": [], "fm train (text)": []}
        for r in range(args.repeat):
            runs = [("fit", lambda: float(subprocess.run(
                        [sys.executable, "-c", FIT, str(work / "csr.npz"), str(args.k), str(args.epochs)],
                        check=True, env=env, capture_output=True, text=True).stdout.split()[-1])),
                    ("fm train (cache)", lambda: timed(train + [args.train], env)),
                    ("fm train (text)", lambda: timed(train + ["--no-cache", args.train], env))]
            for name, run in (runs if r % 2 == 0 else runs[::-1]):
                times[name].append(run())
            print(f"repeat {r + 1} of {args.repeat} done", file=sys.stderr)
    print(f"{rows:,} rows, FFM k={args.k}, {args.epochs} epochs, 1 thread; medians of {args.repeat}:")
    base = statistics.median(times["fm train (cache)"])
    for name, t in times.items():
        m = statistics.median(t)
        print(f"  {name:<18} {m:8.2f} s   {m / base:5.3f} x fm train (cache)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
