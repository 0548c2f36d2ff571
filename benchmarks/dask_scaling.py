#!/usr/bin/env python3
"""Data-parallel training on Dask against independent single-process runs.

Efficiency = rows/s of the Dask run (its training loop: rounds, merges and
validation included) over the SUM of the rows/s of two independent
single-process runs (``-s 1``) started together on the same machine, same
data, same epochs.  On a 2-core machine that is the question "does one
2-worker run make as much progress as two separate 1-thread runs could?".

Measured (FFM, k=4, 1 thread per worker, the default cache):

* the baseline pair (two single-process runs side by side);
* 1, 2 and 4 workers (``--scheduler local:N``) with one synchronisation per
  epoch; 4 workers on 2 cores are oversubscribed, so the table gives their
  efficiency per worker as well (a worker's rows/s over one single-process
  run's: 50% at best for 4 workers on 2 cores);
* 2 workers with 1, 2 and 4 syncs per epoch (``--syncs-per-epoch``);
* per round (``DaskBackend.on_round``): wall time, merge time, bytes moved,
  each worker's rows/s;
* the best validation logloss against the single-process run's.

Repeats are interleaved (every configuration once per repeat) and the
tables give medians; shared machines are noisy, so compare figures of one
run only.  With --pair-each the baseline pair runs again before every Dask
run, and the "paired" column is the median of each run's rows/s over the
pair's just before it (less exposed to the load of other work changing
between the pair and the run).  The projection to 8-64 workers on 10 GbE is printed with its
formula (see project()).

Usage::

    python benchmarks/dask_scaling.py --train train.ffm --valid va.ffm --rows 200000 --json dask.json

--rows N trains on the first N rows of --train (and N/5 of --valid),
written to --work-dir.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

LINK_BYTES_PER_S = 10e9 / 8     # 10 GbE, each direction


# ---------------------------------------------------------------------------
# one training run (a child process)
# ---------------------------------------------------------------------------

def child(spec: dict) -> dict:
    """Train once as `spec` says; the run's figures."""
    from fmcli import Config
    from fmcli import distributed as dist
    from fmcli.train import train

    rounds: list[dict] = []
    extra = {}
    if spec["workers"]:
        dist.DaskBackend.on_round = staticmethod(rounds.append)
        extra = {"scheduler": f"local:{spec['workers']}", "syncs_per_epoch": spec["syncs"]}
    cfg = Config(model="ffm", k=spec["k"], threads=1, epochs=spec["epochs"], seed=1, cache_dir=spec["cache_dir"],
                 **extra)
    t0 = time.perf_counter()
    model = train(cfg, spec["train"], spec["valid"])
    wall = time.perf_counter() - t0
    tr = model.meta["training"]
    rows = tr["train_rows"] * tr["epochs_run"]
    return {"spec": spec, "loop_seconds": tr["seconds"], "wall_seconds": wall, "rows": rows,
            "rows_per_s": rows / tr["seconds"], "best_logloss": min(h["valid_logloss"] for h in tr["history"]),
            "history": tr["history"], "distributed": tr.get("distributed"), "rounds": rounds}


def _run_children(specs: list[dict], work: str) -> list[dict]:
    """Run one child per spec, all at the same time; their results."""
    procs = []
    for i, spec in enumerate(specs):
        out = os.path.join(work, f"result-{os.getpid()}-{time.monotonic_ns()}-{i}.json")
        procs.append((out, subprocess.Popen([sys.executable, __file__, "--child", json.dumps(spec), "--out", out])))
    results = []
    for out, p in procs:
        if p.wait() != 0:
            raise SystemExit(f"a training run failed (exit {p.returncode}): {json.dumps(specs)}")
        with open(out) as f:
            results.append(json.load(f))
        os.unlink(out)
    return results


# ---------------------------------------------------------------------------
# the comparison
# ---------------------------------------------------------------------------

def _head(src: str, rows: int, dst: str) -> str:
    if not os.path.exists(dst):
        with open(src) as f, open(dst + ".tmp", "w") as g:
            for i, line in enumerate(f):
                if i >= rows:
                    break
                g.write(line)
        os.replace(dst + ".tmp", dst)
    return dst


def _median(xs):
    return statistics.median(xs) if xs else None


def summarise(name: str, runs: list[dict], base_sum: float, workers: int) -> dict:
    rounds = [r for run in runs for r in run["rounds"]]
    rate = _median([r["rows_per_s"] for r in runs])
    out = {"name": name, "workers": workers, "rows_per_s": rate,
           "efficiency": rate / base_sum if base_sum else None,
           "loop_seconds": _median([r["loop_seconds"] for r in runs]),
           "wall_seconds": _median([r["wall_seconds"] for r in runs]),
           "best_logloss": _median([r["best_logloss"] for r in runs]),
           "rounds_per_run": _median([len(r["rounds"]) for r in runs]),
           "round_seconds": _median([r["seconds"] for r in rounds]),
           "merge_seconds": _median([r["merge_seconds"] for r in rounds]),
           "bytes_per_round": _median([r["bytes_moved"] for r in rounds]),
           "worker_rows_per_s": _median([w["rows_per_s"] for r in rounds for w in r["workers"]]),
           "worker_train_seconds": _median([max(w["seconds"] for w in r["workers"]) for r in rounds if r["workers"]])}
    if workers > 2:
        # oversubscribed: each worker's rows/s over one single-process run's (2/N at best on two cores)
        out["efficiency_per_worker"] = out["efficiency"] * 2 / workers if out["efficiency"] else None
    return out


def project(two: dict, single_rate: float, rows_per_epoch: int, syncs: int) -> list[dict]:
    """Projected efficiency at W workers on 10 GbE, from the 2-worker run:

        t_compute(W) = rows_per_epoch / (syncs * W * r1)
        t_other      = round_seconds(2) - t_compute(2)         (merge, copies, scheduling,
                                                                validation share, loopback transfers)
        t_net(W)     = 2 (W - 1) / W * M / 1.25e9              (reduce-scatter + all-gather of
                                                                M = bytes a worker's copy changes)
        efficiency   = t_compute(W) / (t_compute(W) + t_other + t_net(W))

    r1 = one single-process run's rows/s (the baseline pair's mean), M = the
    2-worker run's bytes per round / 2 (each of the two workers sends half of
    its copy and receives half of the merged model: 2 (W-1)/W M = M at W=2).
    t_other is kept constant in W: each worker merges 1/W of the model from
    W parts (the same work), copies its model once and scores 1/W of the
    validation rows (counted at its 2-worker size: an overestimate).
    "strong": this data set; "weak": every worker keeps the 2-worker run's
    rows per round (the data grows with W)."""
    if not two.get("round_seconds") or not single_rate:
        return []
    t2 = rows_per_epoch / (syncs * 2 * single_rate)
    other = max(two["round_seconds"] - t2, 0.0)
    m = (two["bytes_per_round"] or 0) / 2
    out = []
    for w in (2, 8, 16, 32, 64):
        net = 2 * (w - 1) / w * m / LINK_BYTES_PER_S
        strong = rows_per_epoch / (syncs * w * single_rate)
        out.append({"workers": w, "net_seconds": net, "other_seconds": other,
                    "strong_compute_seconds": strong, "strong_efficiency": strong / (strong + other + net),
                    "weak_compute_seconds": t2, "weak_efficiency": t2 / (t2 + other + net)})
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", help="libffm training file (BENCH.md's train.ffm; required)")
    ap.add_argument("--valid", help="libffm validation file (BENCH.md's va.ffm; required)")
    ap.add_argument("--rows", type=int, default=0, help="train on the first N rows (0: all), validate on N/5")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--syncs", default="1,2,4", help="syncs per epoch measured at 2 workers")
    ap.add_argument("--work-dir", default=None, help="heads of the inputs and the cache (default: a temporary directory)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--pair-each", action="store_true",
                    help="run the baseline pair again before every Dask run (noisy machines: each run is "
                         "compared with the pair just before it as well)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        result = child(json.loads(a.child))
        with open(a.out, "w") as f:
            json.dump(result, f)
        return
    if not (a.train and a.valid):
        ap.error("the following arguments are required: --train, --valid")
    work = a.work_dir or tempfile.mkdtemp(prefix="dask-scaling-")
    os.makedirs(work, exist_ok=True)
    train, valid = a.train, a.valid
    if a.rows:
        train = _head(a.train, a.rows, os.path.join(work, f"train-{a.rows}.ffm"))
        valid = _head(a.valid, max(a.rows // 5, 1), os.path.join(work, f"valid-{a.rows // 5}.ffm"))
    cache = os.path.join(work, "cache")
    # build the caches once: every measured run reads them (the single-process runs too)
    base = {"train": train, "valid": valid, "k": a.k, "epochs": a.epochs, "cache_dir": cache, "syncs": 1}
    _run_children([{**base, "workers": 0, "epochs": 1}], work)
    configs = [(f"{w} worker{'s' if w > 1 else ''}", w, 1) for w in map(int, a.workers.split(","))]
    configs += [(f"2 workers, {s} syncs/epoch", 2, s) for s in map(int, a.syncs.split(",")) if s != 1]
    raw: dict[str, list] = {"baseline": []}
    paired: dict[str, list] = {}      # --pair-each: each run's efficiency against the pair just before it
    for rep in range(a.repeat):
        pair = _run_children([{**base, "workers": 0}, {**base, "workers": 0}], work)
        raw["baseline"].append(pair)
        for name, w, s in configs:
            if a.pair_each and name != configs[0][0]:
                pair = _run_children([{**base, "workers": 0}, {**base, "workers": 0}], work)
                raw["baseline"].append(pair)
            [r] = _run_children([{**base, "workers": w, "syncs": s}], work)
            raw.setdefault(name, []).append(r)
            both = sum(p["rows_per_s"] for p in pair)
            paired.setdefault(name, []).append(r["rows_per_s"] / both)
            print(f"repeat {rep + 1}: {name}: {r['rows_per_s']:.0f} rows/s (pair: {both:.0f})",
                  file=sys.stderr, flush=True)
    sums = [sum(p["rows_per_s"] for p in pair) for pair in raw["baseline"]]
    base_sum = _median(sums)
    single_rate = _median([p["rows_per_s"] for pair in raw["baseline"] for p in pair])
    single_ll = _median([p["best_logloss"] for pair in raw["baseline"] for p in pair])
    rows = [summarise(name, raw[name], base_sum, w) for name, w, _ in configs]
    for r in rows:      # each run against the pair measured just before it, median over repeats
        r["efficiency_paired"] = _median(paired.get(r["name"], []))
    two = next((r for r in rows if r["name"] == "2 workers"), None)
    n_rows = raw["baseline"][0][0]["rows"] // a.epochs
    proj = project(two, single_rate, n_rows, 1) if two else []
    print(f"\ndata: {train} ({n_rows} rows), {valid}; FFM k={a.k}, {a.epochs} epochs, 1 thread per "
          f"process, medians of {a.repeat}; machine load average now {os.getloadavg()[0]:.1f}")
    print(f"baseline: two single-process runs side by side: {base_sum:.0f} rows/s together "
          f"({single_rate:.0f} each), best va_logloss {single_ll:.5f}")
    head = (f"{'run':<26} {'rows/s':>9} {'effic.':>7} {'paired':>7} {'/worker':>8} {'rounds':>6} {'round s':>8} "
            f"{'merge s':>8} {'MB/round':>9} {'wkr rows/s':>10} {'va_logloss':>10} {'vs 1 proc':>9}")
    print(head)
    for r in rows:
        per = r.get("efficiency_per_worker")
        print(f"{r['name']:<26} {r['rows_per_s']:>9.0f} {r['efficiency']:>7.1%} {r['efficiency_paired']:>7.1%} "
              f"{(f'{per:.1%}' if per else ''):>8} {r['rounds_per_run'] or 0:>6.0f} "
              f"{(r['round_seconds'] or 0):>8.2f} {(r['merge_seconds'] or 0):>8.2f} "
              f"{(r['bytes_per_round'] or 0) / 1e6:>9.1f} {(r['worker_rows_per_s'] or 0):>10.0f} "
              f"{r['best_logloss']:>10.5f} {r['best_logloss'] / single_ll - 1:>+9.2%}")
    if proj:
        print("\nprojected on 10 GbE (formula: benchmarks/dask_scaling.py project()):")
        print(f"{'workers':>7} {'net s':>7} {'other s':>8} {'strong: compute s':>18} {'effic.':>7} "
              f"{'weak: compute s':>16} {'effic.':>7}")
        for p in proj:
            print(f"{p['workers']:>7} {p['net_seconds']:>7.3f} {p['other_seconds']:>8.3f} "
                  f"{p['strong_compute_seconds']:>18.3f} {p['strong_efficiency']:>7.1%} "
                  f"{p['weak_compute_seconds']:>16.3f} {p['weak_efficiency']:>7.1%}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"baseline_sum_rows_per_s": base_sum, "single_rows_per_s": single_rate,
                       "single_best_logloss": single_ll, "summary": rows, "projection": proj,
                       "formula": project.__doc__, "raw": raw, "load_average": os.getloadavg()}, f, indent=1)


if __name__ == "__main__":
    main()
