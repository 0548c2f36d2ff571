"""Rows/s of the C scorer (fmcli/include/fmscore.c) beside fmcli's, one thread.

    python benchmarks/c_scorer.py MODEL.fm DATA.ffm [--repeat 3] [--json out.json]

Converts MODEL to an inference file, compiles the C scorer with the system
compiler (cc -O2, no -march), and measures on DATA:

* scoring only: the rows already parsed into memory (fmcli's reader), all
  of them scored in one call -- fmcli.predict.Scorer(model, threads=1)
  against fms_score_raw (through ctypes), the two taking turns -- best of
  --repeat runs each; the two results are compared;
* whole commands: `fm predict -s 1 MODEL DATA` against the example program
  `score_example MODEL.fmi DATA` (parsing, loading and printing included),
  best of --repeat runs.

Not a test: it prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

def best_wall(argv: list[str], repeat: int, stdout=subprocess.DEVNULL) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, stdout=stdout)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("data")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from fmcli.data.batch import Batch
    from fmcli.data.dataset import make_reader
    from fmcli.data.text import ReadLimits
    from fmcli.inference import get_include, write_inference
    from fmcli.model import load_model
    from fmcli.predict import Scorer

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        sys.exit("no C compiler on PATH")
    inc = Path(get_include())
    work = Path(tempfile.mkdtemp(prefix="fm-cscorer-"))
    try:
        model = load_model(args.model)
        fmi = work / "model.fmi"
        write_inference(model, fmi)
        lib_path = work / "libfmscore.so"
        subprocess.run([cc, "-O2", "-std=c99", "-shared", "-fPIC", f"-I{inc}", str(inc / "fmscore.c"), "-o",
                        str(lib_path), "-lm"], check=True)
        subprocess.run([cc, "-O2", "-std=c99", f"-I{inc}", str(inc / "example" / "score_example.c"),
                        str(inc / "fmscore.c"), "-o", str(work / "score_example"), "-lm"], check=True)
        lib = ctypes.CDLL(str(lib_path))
        vp = ctypes.c_void_p
        lib.fms_open.restype = vp
        lib.fms_open.argtypes = [ctypes.c_char_p, vp]
        lib.fms_score_raw.argtypes = [vp, ctypes.c_size_t, vp, vp, vp, vp, vp]
        lib.fms_close.argtypes = [vp]
        handle = lib.fms_open(os.fsencode(fmi), None)
        if not handle:
            sys.exit(f"{fmi}: the C scorer cannot open it")

        # scoring only: the rows in memory, one thread, the two scorers in turn
        blocks = list(make_reader(args.data, "auto", "real", ReadLimits()))
        offsets = np.cumsum([0] + [int(b.indptr[-1]) for b in blocks[:-1]])
        indptr = np.concatenate([[0]] + [b.indptr[1:] + off for b, off in zip(blocks, offsets)]).astype(np.int64)
        fields = np.concatenate([b.fields.astype(np.int32) for b in blocks])
        features = np.concatenate([b.features for b in blocks])
        values = np.concatenate([b.values if b.values.size else np.ones(b.features.size, np.float32)
                                 for b in blocks])
        rows = int(indptr.size - 1)
        batch = Batch(np.zeros(rows, np.float32), indptr, fields, features, values)
        scorer = Scorer(model, threads=1)
        c = np.empty(rows * model.spec.n_classes)
        ptr = lambda a: a.ctypes.data_as(vp)  # noqa: E731
        py_best = c_best = float("inf")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            py = scorer.scores(batch)
            py_best = min(py_best, time.perf_counter() - t0)
            t0 = time.perf_counter()
            rc = lib.fms_score_raw(handle, rows, ptr(indptr), ptr(fields), ptr(features), ptr(values), ptr(c))
            c_best = min(c_best, time.perf_counter() - t0)
            if rc != 0:
                sys.exit(f"fms_score_raw answered {rc}")
        lib.fms_close(handle)
        c = c.reshape(py.shape)
        diff = float(np.max(np.abs(c - py) / np.maximum(1, np.abs(py)))) if rows else 0.0

        # whole commands
        fm = str(Path(sys.executable).with_name("fm"))
        fm_wall = best_wall([fm, "predict", "-q", "-s", "1", args.model, args.data], args.repeat)
        ex_wall = best_wall([str(work / "score_example"), str(fmi), args.data], args.repeat)
        result = {"rows": rows, "kind": model.spec.kind, "k": model.spec.k,
                  "n_features": model.spec.n_features, "n_fields": model.spec.n_fields,
                  "score_only_s": {"fmcli": py_best, "c": c_best},
                  "score_only_rows_s": {"fmcli": rows / py_best, "c": rows / c_best},
                  "command_s": {"fm predict -s 1": fm_wall, "score_example": ex_wall},
                  "command_rows_s": {"fm predict -s 1": rows / fm_wall, "score_example": rows / ex_wall},
                  "max_raw_difference": diff}
        print(f"{rows:,} rows, {model.spec.kind} k={model.spec.k}, 1 thread, best of {args.repeat}")
        print("| measure | fmcli | C scorer |\n|---|---|---|")
        print(f"| scoring only, rows/s | {rows / py_best:,.0f} | {rows / c_best:,.0f} |")
        print(f"| whole command, rows/s (fm predict -s 1 / score_example) | {rows / fm_wall:,.0f} | "
              f"{rows / ex_wall:,.0f} |")
        print(f"max |raw difference| / max(1, |score|): {diff:.2e}")
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
