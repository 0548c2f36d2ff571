#!/usr/bin/env python3
"""`fm tune` against an exhaustive grid and against the defaults.

The grid is the one users write by hand: k in {4, 8, 16} x lambda in {2e-4,
5e-4, 1e-3, 2e-3, 5e-3} x eta in {0.1, 0.2, 0.5} (45 points), each trained
with --auto-stop; its points run JOBS at a time, one thread each, as the
tuner's trials do.  The tuner then gets a third of the grid's wall time as
its budget.  Reported: each method's best validation logloss and wall time::

    python benchmarks/tune_vs_grid.py --train train.ffm --valid va.ffm
    python benchmarks/tune_vs_grid.py --rows 60000      # data from benchmarks/synth.py
    python benchmarks/tune_vs_grid.py --rows 200000 --model-seed 7
    python benchmarks/tune_vs_grid.py --train train.ffm --valid va.ffm --save-grid grid.json  # the grid only
    python benchmarks/tune_vs_grid.py --train train.ffm --valid va.ffm --grid grid.json       # the tuner only

A search trains every trial with its own seed (`fm tune --seed S`), and the
same configuration trained with another seed ends up to about 0.1% away, so
one grid measured with one seed is a noisy yardstick for searches with
other seeds.  `--grid-seed S` trains the grid (and the defaults) with
`fm train --seed S`; several `--grid FILE` of different seeds pair each
search with the grid of its own seed, and the grids' spread is printed::

    for s in 0 1 2; do python benchmarks/tune_vs_grid.py --rows 40000 --grid-seed $s --save-grid g40-$s.json; done
    python benchmarks/tune_vs_grid.py --rows 40000 --grid g40-0.json --grid g40-1.json --grid g40-2.json --seeds 0,1,2

Validation logloss is read from each model file's header (the epoch
auto-stop kept), so every method is judged on the same validation rows.
Both methods run in the same invocation, one after the other; the load
average of the machine before and after each is printed with the figures
(on a shared machine a busy neighbour slows one method and not the other).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
GRID_K = (4, 8, 16)
GRID_L2 = (2e-4, 5e-4, 1e-3, 2e-3, 5e-3)
GRID_ETA = (0.1, 0.2, 0.5)
GRID = list(itertools.product(GRID_K, GRID_L2, GRID_ETA))


def fm(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fmcli", *args], check=True, env=env,
                          capture_output=True, text=True)


def valid_logloss(path: Path) -> float:
    from fmcli.modelfile import read_header

    return float(read_header(path)["training"]["valid_logloss"])


def data_id(train: str, valid: str) -> list:
    """What identifies the data a grid was measured on: each file's size and BLAKE2b digest."""
    out = []
    for path in (train, valid):
        digest = hashlib.blake2b(digest_size=16)
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
        out.append([os.stat(path).st_size, digest.hexdigest()])
    return out


def makespan(seconds: list[float], jobs: int) -> float:
    """Wall time of tasks of these durations run `jobs` at a time in this
    order, each taken by the first worker free (as a thread pool's map does)."""
    free = [0.0] * jobs
    for s in seconds:
        i = min(range(jobs), key=free.__getitem__)
        free[i] += s
    return max(free) if seconds else 0.0


def save(path: str, state: dict) -> None:
    tmp = f"{path}.tmp"
    Path(tmp).write_text(json.dumps(state, indent=1))
    os.replace(tmp, path)


def run_grid(common: list, train: str, work: Path, env: dict, jobs: int, state: dict,
             save_to: str | None) -> tuple[dict, dict]:
    """Train the defaults, then the 45 grid points `jobs` at a time: (defaults,
    grid) figures.  `state` holds what an earlier, interrupted invocation
    finished (saved to `save_to` after every point): only the rest run, and
    the grid's wall time is then the makespan of every point's own time."""
    if "defaults" not in state:
        t0 = time.perf_counter()
        fm(*common, "-o", str(work / "defaults.fm"), train, env=env)
        state["defaults"] = {"seconds": time.perf_counter() - t0, "logloss": valid_logloss(work / "defaults.fm")}
        if save_to:
            save(save_to, state)
    done = {(p["k"], p["l2"], p["learning_rate"]): p for p in state.setdefault("points", [])}
    lock = threading.Lock()

    def point(p):
        k, l2, eta = p
        out = work / f"grid-{k}-{l2}-{eta}.fm"
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        fm(*common, "-k", str(k), "-l", str(l2), "-r", str(eta), "-o", str(out), train, env=env)
        row = {"k": k, "l2": l2, "learning_rate": eta, "logloss": valid_logloss(out),
               "seconds": round(time.perf_counter() - t0, 2), "load": [round(load, 1), round(os.getloadavg()[0], 1)]}
        out.unlink()
        with lock:
            done[p] = row
            state["points"] = [done[q] for q in GRID if q in done]
            if save_to:
                save(save_to, state)
        return row

    todo = [p for p in GRID if p not in done]
    if todo and done:
        state["resumed"] = True       # the points ran in more than one invocation
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(jobs) as pool:
        list(pool.map(point, todo))
    wall = time.perf_counter() - t0
    if todo:
        state.setdefault("segments", []).append({"points": len(todo), "seconds": round(wall, 1),
                                                 "load": [round(load0, 1), round(os.getloadavg()[0], 1)]})
    points = state["points"]
    best = min(points, key=lambda r: r["logloss"])
    whole = not state.get("resumed")
    if not todo and "grid" in state:
        return state["defaults"], state["grid"]
    grid = {"seconds": wall if whole else makespan([r["seconds"] for r in points], jobs),
            "seconds_from": "wall time" if whole else "makespan of the points' own times (more than one invocation)",
            "logloss": best["logloss"], "best": {key: best[key] for key in ("k", "l2", "learning_rate")},
            "load": state["segments"][-1]["load"], "points": points}
    return state["defaults"], grid


def main(argv: list[str] | None = None) -> int:
    from fmcli.config import available_cpus

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train")
    ap.add_argument("--valid")
    ap.add_argument("--rows", type=int, default=60000, help="rows to generate without --train (validation: rows/4)")
    ap.add_argument("--fields", type=int, default=20, help="fields of generated data")
    ap.add_argument("--model-seed", type=int, default=0, help="synth.py's --model-seed (the planted model)")
    ap.add_argument("--budget", type=float, help="fm tune's budget in seconds [default: a third of the grid's time]")
    ap.add_argument("--model", default="ffm")
    ap.add_argument("--max-epochs", type=int, default=30, help="-t of every auto-stopped run")
    ap.add_argument("--jobs", type=int, default=available_cpus())
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--seeds", type=lambda text: [int(x) for x in text.split(",")], default=[0],
                    help="fm tune's --seed, or several (1,2,3): one search each, with the same budget, "
                         "and how many of them reach the grid within 0.1%% [default: 0, fm tune's own]")
    ap.add_argument("--save-grid", metavar="FILE",
                    help="write the defaults' and the grid's figures here (after every point) and stop before "
                         "the tuner; an invocation with the FILE of an interrupted one trains only the points "
                         "it lacks")
    ap.add_argument("--grid-seed", type=int, default=0,
                    help="fm train's --seed for the defaults and every grid point [default: 0, fm train's own]")
    ap.add_argument("--grid", metavar="FILE", action="append",
                    help="take the defaults' and the grid's figures from a --save-grid FILE of the same data "
                         "instead of training them again (the grid's wall time is the one measured then); "
                         "repeated, grids of other --grid-seed: each search is also compared with the grid of "
                         "its own seed, and the first FILE is the yardstick of the budget and of the rest")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "FMCLI_CACHE_DIR": str(work / "cache")}
        if args.train:
            train, valid = args.train, args.valid
        else:
            train, valid = str(work / "tr.ffm"), str(work / "va.ffm")
            for path, rows, seed in ((train, args.rows, 1), (valid, args.rows // 4, 2)):
                subprocess.run([sys.executable, str(HERE / "synth.py"), "--rows", str(rows), "--seed", str(seed),
                                "--fields", str(args.fields), "--model-seed", str(args.model_seed), "--out", path,
                                "-q"], check=True)
        common = ["train", "-q", "--model", args.model, "-s", "1", "-t", str(args.max_epochs), "--auto-stop",
                  "--seed", str(args.grid_seed), "-p", valid]
        fm(*common[:6], "-t", "1", "-p", valid, "-o", str(work / "warm.fm"), train, env=env)   # builds the caches

        by_seed = {}
        if args.grid:
            ident = data_id(train, valid)
            for path in args.grid:
                saved = json.loads(Path(path).read_text())
                if saved.get("data") != ident or "grid" not in saved:
                    ap.error(f"{path}: not a whole grid measured on these data")
                seed = saved.get("seed", 0)
                if seed in by_seed:
                    ap.error(f"{path}: a second grid of --grid-seed {seed}")
                by_seed[seed] = (saved["defaults"], saved["grid"])
            defaults, grid = by_seed[json.loads(Path(args.grid[0]).read_text()).get("seed", 0)]
        else:
            state = {"data": data_id(train, valid), "seed": args.grid_seed}
            if args.save_grid and os.path.exists(args.save_grid):
                state = json.loads(Path(args.save_grid).read_text())
                if state.get("data") != data_id(train, valid):
                    ap.error(f"{args.save_grid}: its grid was measured on other data")
                if state.get("seed", 0) != args.grid_seed:
                    ap.error(f"{args.save_grid}: its grid was trained with --grid-seed {state.get('seed', 0)}")
                left = len(GRID) - len(state.get("points", []))
                print(f"{args.save_grid}: {len(GRID) - left} of the {len(GRID)} points done"
                      + (f"; training the other {left}" if left else ""), flush=True)
            defaults, grid = run_grid(common, train, work, env, args.jobs, state, args.save_grid)
            by_seed[args.grid_seed] = (defaults, grid)
            if args.save_grid:
                save(args.save_grid, {**state, "grid": grid})
        if args.save_grid:
            print(f"--grid-seed {args.grid_seed}: defaults {defaults['logloss']:.5f} ({defaults['seconds']:.1f} s); "
                  f"grid best {grid['logloss']:.5f} "
                  f"at {grid['best']} in {grid['seconds']:.1f} s ({grid['seconds_from']})")
            return 0

        budget = args.budget or grid["seconds"] / 3
        from fmcli.modelfile import read_header

        tunes = []
        for seed in args.seeds:
            load0 = os.getloadavg()[0]
            t0 = time.perf_counter()
            fm("tune", "-q", "--model", args.model, "-p", valid, "--budget", f"{budget:.1f}s", "--jobs",
               str(args.jobs), "--seed", str(seed), "-o", str(work / f"tuned-{seed}.fm"), train, env=env)
            rec = read_header(work / f"tuned-{seed}.fm")["tuning"]
            tunes.append({"seed": seed, "seconds": time.perf_counter() - t0,
                          "logloss": valid_logloss(work / f"tuned-{seed}.fm"), "budget_s": budget,
                          "trials": rec["trials"], "brackets": len(rec["brackets"]), "best": rec["best"]["params"],
                          "load": [round(load0, 1), round(os.getloadavg()[0], 1)]})

    rows = [("defaults", defaults), ("grid (45 points)", grid)] + [
        ("fm tune" + (f" --seed {t['seed']}" if len(tunes) > 1 else ""), t) for t in tunes]
    print(f"{'method':<18} {'va_logloss':>11} {'wall s':>8}  load  best point")
    for name, r in rows:
        load = "-".join(str(x) for x in r.get("load", [])) or "-"
        print(f"{name:<18} {r['logloss']:11.5f} {r['seconds']:8.1f}  {load:>8}  {r.get('best', '')}")
    for t in tunes:
        name = f"fm tune --seed {t['seed']}" if len(tunes) > 1 else "fm tune"
        print(f"{name}: budget {t['budget_s']:.1f} s, {t['trials']} trials in {t['brackets']} bracket(s); "
              f"vs grid: logloss {t['logloss'] / grid['logloss'] - 1:+.2%}, time {t['seconds'] / grid['seconds']:.2f} x; "
              f"vs defaults {t['logloss'] / defaults['logloss'] - 1:+.2%}")
    if len(tunes) > 1:
        gaps = sorted(t["logloss"] / grid["logloss"] - 1 for t in tunes)
        within = sum(g <= 0.001 for g in gaps)
        print(f"fm tune over {len(tunes)} seeds: within 0.1% of the grid in {within}; median "
              f"{statistics.median(gaps):+.2%}, worst {gaps[-1]:+.2%}; time at most "
              f"{max(t['seconds'] for t in tunes) / grid['seconds']:.2f} x the grid's")
    if len(by_seed) > 1:
        for seed, (_, g) in sorted(by_seed.items()):
            print(f"grid --grid-seed {seed}: best {g['logloss']:.5f} at {g['best']} in {g['seconds']:.1f} s; "
                  f"vs the first grid {g['logloss'] / grid['logloss'] - 1:+.2%}")
        paired = []
        for t in tunes:
            if t["seed"] in by_seed:
                own = by_seed[t["seed"]][1]
                t["vs_own_grid"] = t["logloss"] / own["logloss"] - 1
                paired.append(t["vs_own_grid"])
                print(f"fm tune --seed {t['seed']} vs the grid of --grid-seed {t['seed']}: {t['vs_own_grid']:+.2%}")
        if paired:
            print(f"paired with the grid of its own seed: within 0.1% in {sum(g <= 0.001 for g in paired)} of "
                  f"{len(paired)}; median {statistics.median(paired):+.2%}, worst {max(paired):+.2%}")
    if args.json:
        Path(args.json).write_text(json.dumps({"defaults": defaults, "grid": grid, "tune": tunes,
                                               "grids": {str(k): g for k, (_, g) in sorted(by_seed.items())}},
                                              indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
