#!/usr/bin/env python3
"""Time to quality: fm train with its defaults against libffm's time to its best epoch.

Each repeat runs libffm's ``ffm-train`` with its usual settings and
``--auto-stop`` (``-k K -l 0.00002 -r 0.2 -t 15 --auto-stop -p VALID``), then
``fm train`` with fmcli's defaults and ``--auto-stop`` (the order swapped on
every other repeat), both from the text files, each with its own default
threads (libffm's ``-s 1``, fmcli's ``--threads auto``) unless ``--threads``
gives both a number.  Every line either tool prints is stamped with the wall time since
the command started, so:

* libffm's time is the wall time at which it printed its best epoch's line
  (text-to-binary conversion, training and validation included), and its best
  validation logloss is the target;
* fmcli's time is the wall time at which it first printed a validation
  logloss at or below that target (start-up, parsing, building its cache,
  training and validation included), or "not reached".

The report gives every repeat's figures, their medians and the ratio
libffm time / fmcli time (the issue's target is 3 or more).

Usage::

    python benchmarks/time_to_quality.py --train train.ffm --valid va.ffm --libffm-dir /path/to/libffm
    python benchmarks/time_to_quality.py --train train.ffm --valid va.ffm --libffm-dir DIR \\
        -k 8 --repeat 3 --fmcli-args "--eval-every 250000" --json ttq.json
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench import _FFM_EPOCH, _FM_EPOCH, L2, LEARNING_RATE, find_fm  # noqa: E402


@dataclass
class Run:
    tool: str
    command: str
    wall_s: float                                   # the whole command
    evals: list[tuple[float, float]] = field(default_factory=list)   # (seconds since start, va_logloss)

    def best(self) -> tuple[float, float] | None:
        """(time of the line, logloss) of the lowest validation logloss (the first, on ties)."""
        return min(self.evals, key=lambda e: (e[1], e[0])) if self.evals else None

    def first_at_most(self, target: float) -> float | None:
        return next((t for t, ll in self.evals if ll <= target), None)


def run_stamped(tool: str, cmd: list[str], *, cwd: Path, env: dict | None, parse) -> Run:
    """Run cmd, stamping each output line (stdout and stderr together) on arrival."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1)
    run = Run(tool, shlex.join(cmd), 0.0)
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        now = time.perf_counter() - start
        tail = (tail + [line])[-40:]
        ll = parse(line)
        if ll is not None:
            run.evals.append((now, ll))
    rc = proc.wait()
    run.wall_s = time.perf_counter() - start
    if rc != 0:
        raise SystemExit(f"{tool} exited {rc}: {run.command}\n{''.join(tail)}")
    return run


def libffm_logloss(line: str) -> float | None:
    m = _FFM_EPOCH.match(line)
    return float(m[3]) if m else None


def fmcli_logloss(line: str) -> float | None:
    m = _FM_EPOCH.match(line)
    return float(m[3]) if m and m[3] != "-" else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--train", type=Path, required=True, help="libffm training file")
    ap.add_argument("--valid", type=Path, required=True, help="libffm validation file")
    ap.add_argument("--libffm-dir", type=Path, required=True, help="directory holding a built ffm-train")
    ap.add_argument("-k", "--k", type=int, default=4, help="factor length of both tools")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads of both tools (default: each tool's own: libffm 1, fmcli auto)")
    ap.add_argument("--max-epochs", type=int, default=15, help="-t of both tools (both stop earlier)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--fmcli-args", default="", help="more fm train options (the default: none)")
    ap.add_argument("--json", type=Path, help="write every run's stamped evaluations here")
    args = ap.parse_args(argv)

    fm = find_fm()
    path = os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    train, valid = args.train.resolve(), args.valid.resolve()
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="ttq-") as tmp:
        scratch = Path(tmp)
        for rep in range(args.repeat):
            for f in scratch.iterdir():   # no tool starts from the other's (or its own) cache
                shutil.rmtree(f) if f.is_dir() and not f.is_symlink() else f.unlink()
            lib = [str(args.libffm_dir / "ffm-train"), "-k", str(args.k), "-t", str(args.max_epochs),
                   "-s", str(args.threads or 1), "-l", str(L2), "-r", str(LEARNING_RATE), "--auto-stop",
                   "-p", str(valid), str(train), str(scratch / "libffm.model")]
            ours = [str(fm), "train", "-k", str(args.k), "-t", str(args.max_epochs),
                    *(["-s", str(args.threads)] if args.threads else []),
                    "--auto-stop", "-p", str(valid), "-o", str(scratch / "fmcli.fm"),
                    "--cache-dir", str(scratch / "fmcli-cache"), *shlex.split(args.fmcli_args), str(train)]
            order = [("libffm", lib), ("fmcli", ours)]
            runs: dict[str, Run] = {}
            for tool, cmd in (order if rep % 2 == 0 else order[::-1]):
                if tool == "libffm":
                    # libffm writes its binary caches beside the text files it reads: work on links
                    for src in (train, valid):
                        link = scratch / src.name
                        if not link.exists():
                            link.symlink_to(src)
                    cmd = [*cmd[:-3], str(scratch / valid.name), str(scratch / train.name), cmd[-1]]
                    runs[tool] = run_stamped(tool, cmd, cwd=scratch, env=None, parse=libffm_logloss)
                    for p in scratch.glob("*.bin"):
                        p.unlink()
                else:
                    runs[tool] = run_stamped(tool, cmd, cwd=scratch, env=env, parse=fmcli_logloss)
            lb = runs["libffm"].best()
            if lb is None:
                raise SystemExit("libffm printed no validation logloss:\n" + runs["libffm"].command)
            t_lib, target = lb
            t_fm = runs["fmcli"].first_at_most(target)
            fb = runs["fmcli"].best()
            row = {"repeat": rep + 1, "target_va_logloss": target, "libffm_s": t_lib,
                   "fmcli_s": t_fm, "ratio": (t_lib / t_fm) if t_fm else None,
                   "fmcli_best_va_logloss": fb[1] if fb else None,
                   "runs": {k: asdict(v) for k, v in runs.items()}}
            results.append(row)
            shown = f"{t_fm:.1f} s" if t_fm else "not reached"
            print(f"repeat {rep + 1}: libffm best {target:.5f} at {t_lib:.1f} s; fmcli reached it at {shown}"
                  + (f" ({t_lib / t_fm:.2f}x)" if t_fm else "")
                  + (f", its best {fb[1]:.5f}" if fb else ""), file=sys.stderr, flush=True)

    reached = [r for r in results if r["fmcli_s"]]
    threads = f"{args.threads} thread(s)" if args.threads else "each tool's default threads (libffm 1, fmcli auto)"
    print(f"time to quality, ffm k={args.k}, {threads}, {args.repeat} repeats, interleaved")
    print(f"  libffm: its best validation logloss (median {statistics.median(r['target_va_logloss'] for r in results):.5f})"
          f" after {statistics.median(r['libffm_s'] for r in results):.1f} s (median wall time)")
    who = "fmcli defaults" + (f" + {args.fmcli_args}" if args.fmcli_args else "")
    if reached:
        print(f"  {who}: reached it after {statistics.median(r['fmcli_s'] for r in reached):.1f} s "
              f"in {len(reached)} of {len(results)} repeats; ratio libffm / fmcli median "
              f"{statistics.median(r['ratio'] for r in reached):.2f}x")
    else:
        print(f"  {who}: did not reach it")
    print(f"  fmcli's best validation logloss (median): "
          f"{statistics.median(r['fmcli_best_va_logloss'] for r in results if r['fmcli_best_va_logloss']):.5f}")
    for tool in ("libffm", "fmcli"):
        print(f"  {tool}: {results[-1]['runs'][tool]['command']}")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "repeats": results}, indent=1))
    return 0 if len(reached) == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
