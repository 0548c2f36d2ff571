#!/usr/bin/env python3
"""Training speed of fmcli's GPU backend against the memory bound.

For each case (by default FFM k=4, FFM k=16 and FM k=4, AdaGrad, batch size
1) the script trains on generated Criteo-shaped rows (benchmarks/synth.py:
39 fields, one feature per field) held in device memory, times whole epochs
after one warm-up epoch (kernel compilation, copying the rows to the
device), and prints per case:

- rows/s of training, and of scoring;
- the bytes one training row must move at the least: every parameter
  vector and optimizer state it touches read once and written once (FFM:
  2 x 741 factor vectors at 39 fields; FM: 39) plus the row itself;
- the rows/s the device's memory bandwidth allows at that traffic (the
  memory bound: training is memory-bound, about 0.5 FLOP per byte), and the
  fraction of it reached;
- where a timed epoch goes: the rows' one upload (transfer, before the
  epochs: they stay resident), host work (Python up to the last launch of
  the epoch, launches included), kernels (device time between two events
  around the epoch; on the emulation, the wall time) and the kernel
  launches per epoch -- a handful per wave of rows in flight (per-row mode)
  or per mini-batch (exact mode), never one per row.

The bandwidth is the device's peak (from its memory clock and bus width),
or --bandwidth GB/s; a device-to-device copy is measured as well.

    python benchmarks/gpu.py [--rows 1000000] [--epochs 3] [--cases ffm:4,ffm:16,fm:4]
        [--optimizer adagrad] [--batch-size 1] [--hot-features auto|N|0] [--fields 39]
        [--bandwidth GBS] [--json gpu.json]

Without CuPy or a CUDA device it says so in one line and exits with status
1.  --emulate runs the kernels on the CPU emulation (fmcli.gpu.emulate)
instead: a check of this script on a machine without a device, with
meaningless numbers (use a few hundred rows).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fmcli._core import _kernels  # noqa: E402
from fmcli.config import Config  # noqa: E402
from fmcli.data.batch import Batch  # noqa: E402
from fmcli.model import padded_k  # noqa: E402
from fmcli.registry import MODELS  # noqa: E402


def parse_cases(text: str) -> list[tuple[str, int]]:
    cases = []
    for part in text.split(","):
        model, _, k = part.strip().partition(":")
        if model not in MODELS or not k.isdigit():
            raise SystemExit(f"gpu.py: bad case {part!r} (want MODEL:K, e.g. ffm:4)")
        cases.append((model, int(k)))
    return cases


def synthetic_batch(rows: int, fields: int, seed: int) -> tuple[Batch, int]:
    """Generated rows as a Batch (field f holds column f's feature) and the feature count."""
    from synth import generate

    data = generate(rows, seed=seed, fields=fields)
    feats = np.ascontiguousarray(data.features, dtype=np.int32)
    n, m = feats.shape
    batch = Batch(labels=np.asarray(data.labels, np.float32),
                  indptr=np.arange(0, n * m + 1, m, dtype=np.int64),
                  fields=np.tile(np.arange(m, dtype=np.int32), n),
                  features=feats.reshape(-1), values=np.ones(n * m, np.float32))
    return batch, int(data.model.n_features)


def bytes_per_row(model: str, k: int, n_state: int, nnz: int, itemsize: int = 4) -> int:
    """Least traffic of one training row: touched weights and their optimizer
    state read once and written once, plus the row (CSR entry, label, order)."""
    kp, width = padded_k(k), 1 + n_state
    pairs = nnz * (nnz - 1) // 2
    # FmFM: a matrix of kp rows per pair
    vectors = {"lr": 0, "fm": nnz, "fwfm": nnz, "ffm": 2 * pairs, "fmfm": nnz + pairs * kp}[model]
    scalars = 1 + nnz + (pairs if model == "fwfm" else 0)   # bias, linear weights, field-pair weights
    params = 2 * width * itemsize * (vectors * kp + scalars)
    row = 8 + 12 * nnz + 4 + 8
    return params + row


def peak_bandwidth(cupy) -> float | None:
    """Bytes/s from the memory clock and bus width (double data rate)."""
    dev = cupy.cuda.Device()
    try:
        attrs = dev.attributes
        return 2.0 * attrs["MemoryClockRate"] * 1e3 * attrs["GlobalMemoryBusWidth"] / 8
    except Exception:
        pass
    try:
        props = cupy.cuda.runtime.getDeviceProperties(dev.id)
        return 2.0 * props["memoryClockRate"] * 1e3 * props["memoryBusWidth"] / 8
    except Exception:
        return None


def copy_bandwidth(cupy, nbytes: int = 1 << 30) -> float:
    """Measured bytes/s of a device-to-device copy (read + write)."""
    a = cupy.ones(nbytes // 4, cupy.float32)
    b = cupy.empty_like(a)
    b[...] = a
    cupy.cuda.Device().synchronize()
    t0 = time.perf_counter()
    for _ in range(5):
        b[...] = a
    cupy.cuda.Device().synchronize()
    return 2.0 * nbytes * 5 / (time.perf_counter() - t0)


def run_case(backend, batch: Batch, n_features: int, n_fields: int, model: str, k: int, args) -> dict:
    from fmcli.gpu.state import GpuState

    hot = None if args.hot_features == "auto" else int(args.hot_features)
    cfg = Config(model=model, k=k, optimizer=args.optimizer, batch_size=args.batch_size,
                 epochs=args.epochs + 1, device="cuda", hot_features=hot)
    rng = np.random.default_rng(0)
    n = batch.n_rows
    steps = n if args.batch_size == 1 else -(-n // args.batch_size)
    total = steps * (args.epochs + 1)
    orders = [rng.permutation(n).astype(np.int64) for _ in range(args.epochs + 1)]
    t0 = time.perf_counter()
    state = GpuState(cfg, n_features, n_fields, rng, backend=backend)
    state.total_steps = total
    note = state.prepare(batch)                            # hot features (per-row mode)
    t1 = time.perf_counter()
    state._rows.get(batch)                                 # the rows' upload: once, then resident
    backend.synchronize()
    transfer = time.perf_counter() - t1
    state.train_slice(batch, orders[0], None, 0)          # warm-up: compile
    backend.synchronize()
    warmup = time.perf_counter() - t0
    loss = wsum = 0.0
    host = kernels = 0.0
    launches0 = sum(state.launches.values())
    t0 = time.perf_counter()
    for e in range(1, args.epochs + 1):
        with EpochTimer(backend) as timer:
            loss, wsum, _, _ = state.train_slice(batch, orders[e], None, e * steps)
        host += timer.host
        kernels += timer.kernels
    backend.synchronize()
    seconds = time.perf_counter() - t0
    launches = (sum(state.launches.values()) - launches0) / args.epochs
    t1 = time.perf_counter()
    scores = state.scores(batch)
    backend.synchronize()
    score_seconds = time.perf_counter() - t1
    nnz = batch.nnz // max(n, 1)
    return {
        "model": model, "k": k, "optimizer": args.optimizer, "batch_size": args.batch_size,
        "rows": n, "fields": n_fields, "features": n_features, "epochs": args.epochs,
        "warmup_seconds": warmup, "seconds": seconds,
        "rows_per_s": n * args.epochs / max(seconds, 1e-12),
        "score_rows_per_s": n / max(score_seconds, 1e-12),
        "train_logloss": loss / wsum if wsum else float("nan"),
        "hot_features": None if state.hot_ids is None else len(state.hot_ids), "note": note,
        "transfer_seconds": transfer, "upload_bytes": upload_bytes(batch),
        "host_seconds_per_epoch": host / args.epochs, "kernel_seconds_per_epoch": kernels / args.epochs,
        "launches_per_epoch": launches, "launches": dict(state.launches),
        "finite_scores": bool(np.isfinite(scores).all()),
        "bytes_per_row": bytes_per_row(model, k, _kernels.n_state(args.optimizer), nnz),
    }


def upload_bytes(batch: Batch) -> int:
    """The rows as the device holds them (fmcli.gpu.plan.pack_rows)."""
    return 8 * (batch.n_rows + 1) + 12 * batch.nnz + 4 * batch.n_rows


class EpochTimer:
    """Host work and kernel time of one train_slice call.  Host work ends
    where the state asks for the epoch's statistics (the last call of
    backend.asnumpy: the only wait for the device); kernel time is the
    device's, between two CUDA events (the wall time on the emulation)."""

    def __init__(self, backend):
        self.backend, self.host, self.kernels = backend, 0.0, 0.0

    def __enter__(self):
        b = self.backend
        self._asnumpy, self._last = b.asnumpy, None
        b.asnumpy = self._mark
        self._cupy = getattr(b, "cupy", None)
        if self._cupy is not None:
            self._events = (self._cupy.cuda.Event(), self._cupy.cuda.Event())
            self._events[0].record()
        self._t0 = time.perf_counter()
        return self

    def _mark(self, a):
        self._last = time.perf_counter()
        return self._asnumpy(a)

    def __exit__(self, *exc):
        end = time.perf_counter()
        self.backend.asnumpy = self._asnumpy
        try:
            del self.backend.asnumpy           # the class's method again, where it was one
        except AttributeError:
            pass
        self.host = (self._last or end) - self._t0
        if self._cupy is not None:
            self._events[1].record()
            self._events[1].synchronize()
            self.kernels = self._cupy.cuda.get_elapsed_time(*self._events) / 1e3
        else:
            self.kernels = end - self._t0
        return False


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=None, help="training rows (default 1000000; 300 with --emulate)")
    ap.add_argument("--fields", type=int, default=39)
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs, after one warm-up epoch")
    ap.add_argument("--cases", default="ffm:4,ffm:16,fm:4", help="comma list of MODEL:K")
    ap.add_argument("--optimizer", default="adagrad", choices=("sgd", "adagrad", "adam", "ftrl"))
    ap.add_argument("--batch-size", type=int, default=1, help="1: per-row Hogwild; more: exact mini-batches")
    ap.add_argument("--hot-features", default="auto",
                    help="per-row mode: hot accumulation as fm train --hot-features (auto, N, 0: off)")
    ap.add_argument("--bandwidth", type=float, default=None, help="device memory bandwidth in GB/s (default: its peak)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--emulate", action="store_true", help="run the kernels on the CPU emulation (checks the script)")
    ap.add_argument("--rows-in-flight", type=int, default=None,
                    help="with --emulate: rows the emulation keeps in flight (default: its launch's warps)")
    args = ap.parse_args(argv)
    cases = parse_cases(args.cases)
    rows = args.rows if args.rows is not None else (300 if args.emulate else 1_000_000)

    if args.emulate:
        from fmcli.gpu.emulate import EmulatedBackend

        backend = EmulatedBackend(sm_count=1, blocks_per_sm=2, warps_per_block=2,
                                  rows_in_flight=args.rows_in_flight)
        device, peak, copy = backend.describe(), None, None
    else:
        from fmcli.gpu.device import probe

        ok, what = probe()
        if not ok:
            print(f"gpu.py: no usable CUDA device: {what}; nothing to measure", file=sys.stderr)
            return 1
        from fmcli.gpu.device import CupyBackend

        backend = CupyBackend()
        device = what
        peak = peak_bandwidth(backend.cupy)
        copy = copy_bandwidth(backend.cupy)
    bandwidth = args.bandwidth * 1e9 if args.bandwidth else peak

    batch, n_features = synthetic_batch(rows, args.fields, args.seed)
    print(f"device: {device}; peak bandwidth "
          + (f"{peak / 1e9:.0f} GB/s" if peak else "unknown")
          + (f", measured copy {copy / 1e9:.0f} GB/s" if copy else "")
          + f"; {rows} rows, {args.fields} fields, {n_features} features", file=sys.stderr)
    results = []
    header = (f"{'case':>10} {'train rows/s':>14} {'score rows/s':>14} {'bytes/row':>11} "
              f"{'bound rows/s':>14} {'of bound':>9} {'copy bound':>11} {'logloss':>8}")
    print(header)
    for model, k in cases:
        r = run_case(backend, batch, n_features, args.fields, model, k, args)
        r["bound_rows_per_s"] = bandwidth / r["bytes_per_row"] if bandwidth else None
        r["fraction_of_bound"] = r["rows_per_s"] / r["bound_rows_per_s"] if bandwidth else None
        r["fraction_of_copy_bound"] = r["rows_per_s"] * r["bytes_per_row"] / copy if copy else None
        results.append(r)
        bound = f"{r['bound_rows_per_s']:14,.0f}" if bandwidth else f"{'n/a':>14}"
        frac = f"{100 * r['fraction_of_bound']:8.1f}%" if bandwidth else f"{'n/a':>9}"
        cfrac = f"{100 * r['fraction_of_copy_bound']:10.1f}%" if copy else f"{'n/a':>11}"
        print(f"{model + ':' + str(k):>10} {r['rows_per_s']:14,.0f} {r['score_rows_per_s']:14,.0f} "
              f"{r['bytes_per_row']:11,d} {bound} {frac} {cfrac} {r['train_logloss']:8.4f}", flush=True)
        print(f"{'':>10} per epoch: host {r['host_seconds_per_epoch']:.4f} s, kernels "
              f"{r['kernel_seconds_per_epoch']:.4f} s, kernel launches {r['launches_per_epoch']:,.0f} "
              f"({', '.join(f'{n} {c}' for n, c in sorted(r['launches'].items()))} in all); rows uploaded "
              f"once: {r['upload_bytes'] / 2**20:,.1f} MiB in {r['transfer_seconds']:.4f} s"
              + (f"; {r['note']}" if r["note"] else ""), flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"device": device, "peak_bandwidth": peak, "copy_bandwidth": copy,
                       "bandwidth_used": bandwidth, "emulated": args.emulate, "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
