#!/usr/bin/env python3
"""Two threads against one, in consecutive whole `fm train` runs, with the machine's ceiling.

Each of --runs runs trains the same model twice, with ``-s 1`` and with
``-s 2`` (the order swapped every other run), and takes the ratio of their
training rows/s (each command's own epoch timer, the median over its
epochs).  Beside every run the script measures, in the same minute, the
ceiling that two threads can reach on this machine: a plain OpenMP loop of
random read-modify-writes over an array the size of the model (compiled
here, at start, with the system's C compiler), at one thread and at two.
The random read-modify-writes share no cache line between the threads
beyond chance, unlike FFM training, whose rows all write the blocks of the
same frequent features: so each run also measures FFM's own pattern of
memory accesses without its arithmetic, over the training file's first
rows (each entry's feature row read and written block by block for every
other field of its row, the next row's feature rows prefetched, as the
kernels do), at one thread and at two: on one shared model, as Hogwild
training writes it, and on a model per thread, which no cache line joins.
The report lists every run's figures and their medians, and checks the
targets: every run at least 1.5x, the median at least 1.7x.  On a virtual
machine it also gives, for each command, the time the hypervisor took from
the machine's CPUs while it ran (the steal column of /proc/stat, as CPUs'
worth: 0.5 is half a CPU the whole time): a slow run with much taken is
the machine's neighbours, not the threads.

Usage::

    python benchmarks/thread_runs.py --train train.ffm --runs 10
    python benchmarks/thread_runs.py --train train.ffm --runs 10 --args "--no-bias --no-linear -t 2" --json t.json

The default arguments are libffm's model (``--no-bias --no-linear``), one
epoch, no validation, from the binary cache (built once before the runs).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench import find_fm, parse_fmcli_train  # noqa: E402

RMW_C = r"""
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>
typedef float v8 __attribute__((vector_size(32)));   /* GCC and clang: eight floats at a time */
/* n random read-modify-writes of 32-byte blocks of a (words floats), per
   thread, from its own xorshift stream; returns the seconds taken. */
double rmw(float *a, int64_t words, int64_t n, int threads) {
    int64_t blocks = words / 8;
    double t0 = omp_get_wtime();
    #pragma omp parallel num_threads(threads)
    {
        uint64_t x = 88172645463325252ull ^ (uint64_t)(omp_get_thread_num() + 1) * 0x9E3779B97F4A7C15ull;
        for (int64_t i = 0; i < n; i++) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            float *b = a + (int64_t)(x % (uint64_t)blocks) * 8;
            for (int d = 0; d < 8; d++) b[d] = b[d] * 0.999f + 0.001f;
        }
    }
    return omp_get_wtime() - t0;
}

/* FFM's accesses without its arithmetic: for each row, for each entry i and
   each other entry l, the block (feature of i, field of l) of `block`
   floats is read and written; the next row's feature rows (fields * block
   floats each) are prefetched first.  Rows are taken 256 at a time.  With
   `private_`, thread t works on its own model at a + t * models' size (a
   holds `threads` models).  Returns the seconds taken. */
double ffm_pattern(float *a, int64_t features, int64_t fields, int64_t block, const int64_t *indptr,
                   const int32_t *feat, const int32_t *fld, int64_t rows, int threads, int private_) {
    int64_t frow = fields * block;
    double t0 = omp_get_wtime();
    #pragma omp parallel for num_threads(threads) schedule(dynamic, 256)
    for (int64_t r = 0; r < rows; r++) {
        float *w = a + (private_ ? (int64_t)omp_get_thread_num() * features * frow : 0);
        if (r + 1 < rows)
            for (int64_t e = indptr[r + 1]; e < indptr[r + 2]; e++) {
                const char *p = (const char *)(w + feat[e] * frow);
                for (int64_t o = 0; o < frow * 4; o += 64) __builtin_prefetch(p + o, 0, 1);
            }
        for (int64_t i = indptr[r]; i < indptr[r + 1]; i++)
            for (int64_t l = indptr[r]; l < indptr[r + 1]; l++) {
                if (l == i) continue;
                float *b = w + feat[i] * frow + fld[l] * block;
                for (int64_t d = 0; d < block; d += 8) {    /* block: a multiple of 8 */
                    v8 v;
                    memcpy(&v, b + d, sizeof v);
                    v = v * 0.999f + 0.001f;
                    memcpy(b + d, &v, sizeof v);
                }
            }
    }
    return omp_get_wtime() - t0;
}
"""


def build_rmw(work: Path):
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise SystemExit("needs a C compiler (cc or gcc, or $CC) for the ceiling loop")
    src, lib = work / "rmw.c", work / "rmw.so"
    src.write_text(RMW_C)
    subprocess.run([cc, "-O2", "-fopenmp", "-shared", "-fPIC", str(src), "-o", str(lib)], check=True)
    so = ctypes.CDLL(str(lib))
    so.rmw.restype = ctypes.c_double
    so.rmw.argtypes = [ctypes.POINTER(ctypes.c_float), ctypes.c_int64, ctypes.c_int64, ctypes.c_int]
    so.ffm_pattern.restype = ctypes.c_double
    so.ffm_pattern.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
                               ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_int]
    return so


def ceiling(so, model_bytes: int, updates: int = 20_000_000) -> dict:
    """Updates/s of the RMW loop at 1 and 2 threads (each thread does `updates`)."""
    import numpy as np

    a = np.ones(model_bytes // 4, np.float32)
    ptr = a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    so.rmw(ptr, a.size, updates // 10, 1)   # touch the pages
    one = updates / so.rmw(ptr, a.size, updates, 1)
    two = 2 * updates / so.rmw(ptr, a.size, updates, 2)
    return {"one_thread": one, "two_threads": two, "ratio": two / one}


class Pattern:
    """FFM's memory accesses over the first `rows` rows of a libffm file, for
    the C loop ffm_pattern (see the module's doc): k factors padded to a
    multiple of 4, each followed by its AdaGrad accumulator, per block."""

    def __init__(self, path: Path, k: int, rows: int = 300_000):
        import numpy as np

        from fmcli.data.dataset import make_reader
        from fmcli.data.text import ReadLimits

        indptr, feat, fld, n = [np.zeros(1, np.int64)], [], [], 0
        for b in make_reader(str(path), "libffm", "binary", ReadLimits(), False):
            take = min(b.n_rows, rows - n)
            end = int(b.indptr[take])
            indptr.append(b.indptr[1 : take + 1] + int(indptr[-1][-1]))
            feat.append(b.features[:end].astype(np.int32))
            fld.append(b.fields[:end].astype(np.int32))
            n += take
            if n >= rows:
                break
        self.indptr = np.concatenate(indptr)
        self.feat, self.fld = np.concatenate(feat), np.concatenate(fld)
        self.rows = n
        self.features = int(self.feat.max()) + 1 if self.feat.size else 1
        self.fields = int(self.fld.max()) + 1 if self.fld.size else 1
        self.block = 2 * (-(-k // 4) * 4)
        self.model = np.zeros(2 * self.features * self.fields * self.block, np.float32)   # room for two

    def rates(self, so) -> dict:
        """Rows/s at one thread and at two (shared model, and one per thread)."""
        def rate(threads: int, private: int) -> float:
            seconds = so.ffm_pattern(self.model.ctypes.data, self.features, self.fields, self.block,
                                     self.indptr.ctypes.data, self.feat.ctypes.data, self.fld.ctypes.data,
                                     self.rows, threads, private)
            return self.rows / seconds

        rate(2, 1)    # touch both models' pages
        one, shared, private = rate(1, 0), rate(2, 0), rate(2, 1)
        return {"one_thread": one, "two_threads_shared": shared, "two_threads_private": private,
                "shared_ratio": shared / one, "private_ratio": private / one}


def k_of(args: list[str]) -> int:
    """The -k of fm train's arguments (4, fm train's default, without one)."""
    for i, a in enumerate(args):
        if a in ("-k", "--k") and i + 1 < len(args):
            return int(args[i + 1])
        if a.startswith("--k="):
            return int(a.split("=", 1)[1])
    return 4


def stolen_seconds() -> float | None:
    """CPU seconds the hypervisor has taken from this machine's CPUs since
    boot (the steal column of /proc/stat), or None where it is not known."""
    try:
        with open("/proc/stat") as f:
            cpu = f.readline().split()
        return int(cpu[8]) / os.sysconf("SC_CLK_TCK") if cpu[0] == "cpu" and len(cpu) > 8 else None
    except (OSError, ValueError, IndexError):
        return None


def train_rate(fm: Path, args: list[str], threads: int, train: Path, cache: Path, out: Path,
               steal: dict | None = None) -> float:
    """The command's median epoch rate; `steal` (when given) gets, under
    `threads`, the CPUs' worth of time the hypervisor took during it
    (stolen CPU seconds / wall seconds: 0.5 is half a CPU the whole time)."""
    cmd = [str(fm), "train", "-s", str(threads), *args, "--cache-dir", str(cache), "-o", str(out), str(train)]
    s0, t0 = stolen_seconds(), time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    s1, t1 = stolen_seconds(), time.perf_counter()
    if steal is not None and s0 is not None and s1 is not None:
        steal[threads] = (s1 - s0) / (t1 - t0)
    if proc.returncode != 0:
        raise SystemExit(f"fm train exited {proc.returncode}: {shlex.join(cmd)}\n{proc.stderr[-2000:]}")
    epochs, _ = parse_fmcli_train(proc.stderr)
    if not epochs:
        raise SystemExit(f"no epoch table in the output of {shlex.join(cmd)}:\n{proc.stderr[-2000:]}")
    out.unlink(missing_ok=True)
    return statistics.median(e.rows_per_s for e in epochs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--train", type=Path, required=True, help="training file (BENCH.md's train.ffm)")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--args", default="--model ffm -k 4 -t 1 --no-bias --no-linear",
                    help="fm train options of both commands (besides -s, --cache-dir, -o)")
    ap.add_argument("--json", type=Path, help="write every figure here")
    args = ap.parse_args(argv)

    fm = find_fm()
    path = os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")]))
    os.environ["PYTHONPATH"] = path
    extra = shlex.split(args.args)
    rows = []
    with tempfile.TemporaryDirectory(prefix="thread-runs-") as tmp:
        work = Path(tmp)
        so = build_rmw(work)
        cache, out = work / "cache", work / "m.fm"
        train_rate(fm, extra, 1, args.train, cache, out)     # builds the cache; not counted
        model_bytes = 160 * 2**20
        pattern = Pattern(args.train, k_of(extra))
        for run in range(1, args.runs + 1):
            rates, steal = {}, {}
            for threads in ((1, 2) if run % 2 else (2, 1)):
                rates[threads] = train_rate(fm, extra, threads, args.train, cache, out, steal)
            ceil = ceiling(so, model_bytes)
            pat = pattern.rates(so)
            load = os.getloadavg()[0]
            row = {"run": run, "one_thread": rates[1], "two_threads": rates[2], "ratio": rates[2] / rates[1],
                   "ceiling": ceil, "ffm_pattern": pat, "load_average": load, "time": time.strftime("%H:%M:%S"),
                   "stolen_cpus": {str(t): round(v, 3) for t, v in steal.items()} or None}
            rows.append(row)
            stolen = (f", stolen CPUs {steal[1]:.2f} / {steal[2]:.2f}" if len(steal) == 2 else "")
            print(f"run {run:2d}: 1 thread {rates[1]:>9,.0f} rows/s, 2 threads {rates[2]:>9,.0f}: "
                  f"{row['ratio']:.2f}x (ceiling {ceil['ratio']:.2f}x; FFM's accesses {pat['shared_ratio']:.2f}x "
                  f"shared, {pat['private_ratio']:.2f}x private; load {load:.1f}{stolen})",
                  file=sys.stderr, flush=True)

    ratios = [r["ratio"] for r in rows]
    ceils = [r["ceiling"]["ratio"] for r in rows]
    med = statistics.median(ratios)
    print(f"fm train {args.args}: -s 2 against -s 1, {len(rows)} consecutive runs")
    print("ratios: " + ", ".join(f"{x:.2f}" for x in ratios))
    print(f"median {med:.2f}x, lowest {min(ratios):.2f}x; RMW ceiling median {statistics.median(ceils):.2f}x "
          f"(lowest {min(ceils):.2f}x); median share of the ceiling {statistics.median(r / c for r, c in zip(ratios, ceils)):.2f}")
    shared = [r["ffm_pattern"]["shared_ratio"] for r in rows]
    private = [r["ffm_pattern"]["private_ratio"] for r in rows]
    print("FFM's accesses without arithmetic, 2 threads against 1: on one shared model "
          + ", ".join(f"{x:.2f}" for x in shared) + f" (median {statistics.median(shared):.2f}x); "
          "on a model per thread " + ", ".join(f"{x:.2f}" for x in private)
          + f" (median {statistics.median(private):.2f}x)")
    stolen = [r["stolen_cpus"] for r in rows if r["stolen_cpus"] and len(r["stolen_cpus"]) == 2]
    if stolen:
        print("CPUs' worth of time the hypervisor took during the 1-thread / 2-thread command of each run: "
              + ", ".join(f"{x['1']:.2f}/{x['2']:.2f}" for x in stolen))
    ok = min(ratios) >= 1.5 and med >= 1.7
    print(f"targets (every run >= 1.5x, median >= 1.7x): {'met' if ok else 'not met'}")
    if args.json:
        args.json.write_text(json.dumps({"args": args.args, "runs": rows}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
