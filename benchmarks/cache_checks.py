#!/usr/bin/env python3
"""What verifying the binary cache on every read costs.

Every chunk fmcli reads from its binary cache is read with pread into
private memory and checked against its 64-bit checksum before the kernels
see it (fmcli.data.cache.CacheFile.chunk, fmcli/_core/checksum.h).  This benchmark measures that check on
the cache of a training file, in this process, by timing in alternation
(medians over --repeat rounds, so that a machine whose speed drifts affects
both alike):

* ``verified``: one pass over every chunk as training reads it
  (Dataset.chunks with reused buffers: pread, checksum, labels, views);
* ``checked``: CacheFile.chunk alone (pread and checksum, in pieces);
* ``unverified``: the same preads into the same buffers, without the checksum;

and reports the difference of the last two against the time of one training epoch on the
same data (FFM, k=4, libffm's settings, 1 thread, in memory), measured here
too unless --epoch-seconds gives it.  Data held in memory reads the cache
once per run; streamed data (above --memory-budget) once per epoch.

Usage::

    python benchmarks/cache_checks.py --train train.ffm [--repeat 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from fmcli.data.cache import _PIECE as PIECE


def unverified_pass(ds) -> float:
    """Every chunk's bytes pread into reused buffers, no checksum: the floor."""
    cf = ds.cache
    buffers = [np.empty(max(cf.chunk_bytes(i) for i in range(len(cf))), np.uint8) for _ in range(2)]
    t0 = time.perf_counter()
    for i in range(len(cf)):
        start, end = cf._bounds[i]
        view = memoryview(buffers[i % 2])[: end - start]
        done = 0
        while done < end - start:      # in the same pieces as CacheFile.chunk
            done += os.preadv(cf.fd, [view[done : done + PIECE]], start + done)
        view.release()
    return time.perf_counter() - t0


def checked_pass(ds) -> float:
    """Every chunk read and checked by CacheFile.chunk into reused buffers."""
    cf = ds.cache
    buffers = [np.empty(max(cf.chunk_bytes(i) for i in range(len(cf))), np.uint8) for _ in range(2)]
    t0 = time.perf_counter()
    for i in range(len(cf)):
        cf.chunk(i, buffers[i % 2])
    return time.perf_counter() - t0


def verified_pass(ds) -> float:
    t0 = time.perf_counter()
    rows = 0
    for _, batch, _ in ds.chunks(reuse=True):
        rows += batch.n_rows
    if rows != ds.n_rows:
        raise SystemExit(f"read {rows} rows, expected {ds.n_rows}")
    return time.perf_counter() - t0


def epoch_seconds(train: str, cache_dir: str) -> float:
    from fmcli.config import Config
    from fmcli.train import train as fit

    config = Config(model="ffm", k=4, epochs=1, threads=1, use_bias=False, use_linear=False, l2=2e-5,
                    learning_rate=0.2, cache=True, cache_dir=cache_dir)
    model = fit(config, train)
    return float(model.meta["training"]["history"][0]["seconds"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True, help="a libffm training file (e.g. BENCH.md's train.ffm)")
    parser.add_argument("--repeat", type=int, default=5, help="alternating rounds (medians reported)")
    parser.add_argument("--epoch-seconds", type=float, default=None,
                        help="one training epoch's time, instead of measuring it")
    parser.add_argument("--json", default=None, help="write the figures here too")
    args = parser.parse_args(argv)

    from fmcli.data.dataset import load_dataset

    with tempfile.TemporaryDirectory(prefix="fm-cache-checks-") as cache_dir:
        load_dataset(args.train, cache_dir=cache_dir).close()        # build the cache
        ds = load_dataset(args.train, cache_dir=cache_dir)
        if ds.cached_from != "hit":
            raise SystemExit("the cache was not reused")
        cache_bytes = sum(f.stat().st_size for f in Path(cache_dir).glob("*.fmcache"))
        verified_pass(ds)                                               # warm the page cache
        passes = {"checked": checked_pass, "unverified": unverified_pass, "verified": verified_pass}
        times: dict[str, list[float]] = {name: [] for name in passes}
        for r in range(args.repeat):
            for name in (list(passes) if r % 2 == 0 else list(passes)[::-1]):
                times[name].append(passes[name](ds))
        ds.close()
        epoch = args.epoch_seconds if args.epoch_seconds is not None else epoch_seconds(args.train, cache_dir)
    med = {k: statistics.median(v) for k, v in times.items()}
    cost = med["checked"] - med["unverified"]
    out = {"rows": ds.n_rows, "cache_bytes": cache_bytes, "repeat": args.repeat,
           "verified_s": med["verified"], "checked_s": med["checked"], "unverified_s": med["unverified"],
           "check_s": cost,
           "epoch_s": epoch, "check_share_of_epoch": cost / epoch,
           "verified_rows_per_s": ds.n_rows / med["verified"], "all": times}
    print(f"cache of {ds.n_rows:,} rows ({cache_bytes / 2**20:.0f} MiB), medians of {args.repeat}:")
    print(f"  as training reads    {med['verified']:.3f} s  ({ds.n_rows / med['verified'] / 1e6:.1f}M rows/s;"
          " Dataset.chunks: read, check, labels, views)")
    print(f"  read + checksum      {med['checked']:.3f} s  (CacheFile.chunk)")
    print(f"  read only            {med['unverified']:.3f} s  (the same preads, no checksum)")
    print(f"  the check            {cost:.3f} s = {100 * cost / epoch:.1f}% of one epoch ({epoch:.2f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
