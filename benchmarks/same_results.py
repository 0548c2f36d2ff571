#!/usr/bin/env python3
"""Prove that two builds of fmcli train the same models, bit for bit.

A refactor of the training core must leave single-thread results unchanged:
the same parameter and optimizer-state arrays for the same seed, per SIMD
level.  This trains every model kind x optimizer, with a few variations
(mini-batches, early stopping, float64, float16 storage, multiclass,
streamed chunks), on data/samples with one thread, once with each tree, and
compares every array byte for byte::

    python benchmarks/same_results.py OLD_TREE NEW_TREE [--simd sse,avx]

A tree is a source directory with its extensions built in place (e.g.
``git worktree add ../fmcli-old HEAD~1 && make -C ../fmcli-old build``).  Each run
happens in a fresh process with that tree first on sys.path; FMCLI_SIMD
picks the SIMD level of the float32 loops.  Exit status 0 when every array
is equal, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Run in the child: train the cells with the tree on sys.path, save every array.
CHILD = r"""
import os, sys
sys.path.insert(0, sys.argv[1])
os.environ["SOURCE_DATE_EPOCH"] = "1700000000"
import numpy as np
import fmcli
from fmcli.config import Config
from fmcli.train import train

tr, va, kinds, cache = sys.argv[3], sys.argv[4], sys.argv[5].split(","), sys.argv[6]
out = {}
for model in kinds:
    for opt in ("adagrad", "sgd", "adam", "ftrl", "rowwise-adagrad"):
        variants = [{}, {"batch_size": 4}, {"patience": 1, "epochs": 4}, {"dtype": "float64"},
                    {"memory_budget": 20000, "cache": True}]
        if model == "fm":
            variants.append({"task": "multiclass"})
        if (model, opt) == ("ffm", "adagrad"):
            variants.append({"storage": "float16"})
        for extra in variants:
            extra = dict(extra)
            cfg = Config(model=model, optimizer=opt, k=4, epochs=extra.pop("epochs", 2),
                         cache=extra.pop("cache", False), cache_dir=cache, **extra)
            m = train(cfg, tr, va if cfg.patience else None)
            key = "-".join([model, opt] + [f"{k}={v}" for k, v in extra.items()])
            for name, a in m.params.items():
                out[f"{key}/{name}"] = np.asarray(a)
            for name, a in m.state.items():
                out[f"{key}/{name}_state"] = np.asarray(a)
            out[f"{key}/epoch_steps"] = np.array([m.meta["training"]["model_epoch"], m.meta["optimizer"]["steps"]])
np.savez(sys.argv[2], **out)
print(os.path.dirname(fmcli.__file__), len(out), "arrays", file=sys.stderr)
"""


def run_tree(tree: Path, out: Path, simd: str, kinds: str, work: Path) -> None:
    env = {**os.environ, "FMCLI_SIMD": simd}
    env.pop("PYTHONPATH", None)
    samples = ROOT / "data" / "samples"
    subprocess.run([sys.executable, "-c", CHILD, str(tree), str(out), str(samples / "train.ffm"),
                    str(samples / "valid.ffm"), kinds, str(work / "cache")], check=True, env=env)


def compare(a_path: Path, b_path: Path) -> tuple[int, list[str]]:
    import numpy as np

    a, b = np.load(a_path), np.load(b_path)
    names = sorted(set(a.files) | set(b.files))
    differ = [n for n in names if n not in a.files or n not in b.files
              or a[n].dtype != b[n].dtype or a[n].shape != b[n].shape or a[n].tobytes() != b[n].tobytes()]
    return len(names), differ


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("old", type=Path, help="the tree before the change (extensions built)")
    ap.add_argument("new", type=Path, help="the tree after the change (extensions built)")
    ap.add_argument("--simd", default="sse,avx", help="comma list of SIMD levels (default: sse,avx)")
    ap.add_argument("--kinds", default="lr,fm,ffm,fwfm", help="model kinds both trees have (default: lr,fm,ffm,fwfm)")
    args = ap.parse_args(argv)
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for simd in args.simd.split(","):
            files = []
            for side, tree in (("old", args.old), ("new", args.new)):
                files.append(work / f"{side}-{simd}.npz")
                run_tree(tree.resolve(), files[-1], simd, args.kinds, work)
            total, differ = compare(*files)
            print(f"{simd}: {total - len(differ)} of {total} arrays byte-equal"
                  + (f"; differ: {', '.join(differ[:10])}" + (" ..." if len(differ) > 10 else "") if differ else ""))
            failed = failed or bool(differ)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
