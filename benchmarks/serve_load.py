#!/usr/bin/env python3
"""Load test of `fm serve` on 127.0.0.1 while its model file is replaced.

1. Generates (benchmarks/synth.py) Criteo-shaped libffm training rows and
   request rows, unless --train and --rows-file are given, and trains two
   FFM models A and B of the same shape (different seeds and epochs).
2. For each batch size (default 1 and 1000 rows per request) starts
   `fm serve` as its own process on a free port, serving A under the name
   ctr with a short --reload-interval (a fresh server per batch size, so
   that its latency figures are that size's alone), and stops it with
   SIGTERM at the end (it must exit 0).
3. Meanwhile --clients threads send requests over keep-alive connections
   for --seconds (at most --max-requests), while the file is replaced
   --replacements times (B, A, B, ...: copied beside it, then renamed over
   it, as fm train -o does).
4. Checks every answer: status 200, and predictions equal, number for
   number, to those of the model whose checksum the answer names
   (computed beforehand with fmcli.predict).  A failed request or an
   answer that is neither A's nor B's (a mix) makes the run fail (exit 1).

Prints a table (requests/s, rows/s, p50 and p99 latency as the client saw
it and as the server measured it over its last 1,024 requests, checksums
seen, reloads done) and writes every figure with --json.
The client runs in Python in this process: on a machine with few cores it
competes with the server for CPU, so the figures are a lower bound.

Usage::

    python benchmarks/serve_load.py [--seconds 10] [--clients 4] [--threads 4] \\
        [--batches 1,1000] [--replacements 10] [--json serve.json]
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SYNTH = HERE / "synth.py"


def fm_command() -> list[str]:
    return [sys.executable, "-m", "fmcli"]


def run(cmd: list[str]) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"failed ({result.returncode}): {' '.join(cmd)}\n{result.stderr}")


def generate(path: Path, rows: int, seed: int) -> None:
    if not path.exists():
        run([sys.executable, str(SYNTH), "--rows", str(rows), "--seed", str(seed), "--out", str(path), "-q"])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def start_server(model: Path, threads: int, reload_interval: float) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(fm_command() + ["serve", "--port", "0", "--threads", str(threads),
                                            "--reload-interval", str(reload_interval), f"ctr={model}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
        if m:
            # keep reading its log so that the pipe never fills
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, int(m.group(1))
    proc.kill()
    sys.exit("fm serve did not start: " + proc.stderr.read())


def phase(port: int, bodies: list[bytes], expected: dict[str, list[list]], served: Path,
          sources: list[Path], args) -> dict:
    """One batch size: clients send requests while the file is replaced."""
    stop = threading.Event()
    lock = threading.Lock()
    latencies: list[float] = []
    failures: list[str] = []
    mixed: list[str] = []
    checksums: dict[str, int] = {}
    count = [0]

    def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine: list[float] = []
        while not stop.is_set():
            with lock:
                if count[0] >= args.max_requests:
                    break
                count[0] += 1
            i = int(rng.integers(len(bodies)))
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/v1/models/ctr/predict", bodies[i], {"Content-Type": "text/plain"})
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                with lock:
                    failures.append(f"{type(exc).__name__}: {exc}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                continue
            mine.append(time.perf_counter() - t0)
            if resp.status != 200:
                with lock:
                    failures.append(f"{resp.status}: {data[:200]!r}")
                continue
            answer = json.loads(data)
            want = expected.get(answer["checksum"])
            with lock:
                checksums[answer["checksum"]] = checksums.get(answer["checksum"], 0) + 1
                if want is None or answer["predictions"] != want[i]:
                    mixed.append(answer["checksum"])
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(s,)) for s in range(args.clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    # the replacements, spread evenly over the phase
    replaced = 0
    step = args.seconds / (args.replacements + 1)
    for r in range(args.replacements):
        if stop.wait(step) or count[0] >= args.max_requests:
            break
        src = sources[(r + 1) % 2]
        tmp = served.with_name(served.name + ".new")
        shutil.copyfile(src, tmp)
        os.replace(tmp, served)
        replaced += 1
    remaining = args.seconds - (time.perf_counter() - start)
    if remaining > 0:
        deadline = time.time() + remaining
        while time.time() < deadline and count[0] < args.max_requests:
            time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    lat = np.array(latencies) * 1000
    rows = len(bodies[0].splitlines())
    return {"batch_rows": rows, "requests": len(latencies), "seconds": elapsed, "failures": len(failures),
            "mixed": len(mixed), "requests_per_s": len(latencies) / elapsed,
            "rows_per_s": len(latencies) * rows / elapsed,
            "p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
            "p99_ms": float(np.percentile(lat, 99)) if lat.size else None,
            "replacements": replaced, "checksums_seen": len(checksums), "answers_by_checksum": checksums,
            "failure_examples": failures[:5]}


def metrics(port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    return text


def serving_checksum(port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/v1/models/ctr")
    info = json.loads(conn.getresponse().read())
    conn.close()
    return info["checksum"]


def reloads(port: int) -> int:
    m = re.search(r'fm_serve_reloads_total\{model="ctr",result="ok"\} (\d+)', metrics(port))
    return int(m.group(1)) if m else -1


def server_quantile(port: int, q: str) -> float | None:
    """The server's own latency quantile over its last 1024 requests, in ms."""
    m = re.search(r'fm_serve_request_latency_seconds\{model="ctr",quantile="' + q + r'"\} (\S+)', metrics(port))
    return float(m.group(1)) * 1000 if m else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work-dir", default=None, help="generated data and models (default: a temporary directory)")
    ap.add_argument("--train", help="libffm training rows (default: 20,000 generated)")
    ap.add_argument("--rows-file", help="libffm rows to send (default: 5,000 generated)")
    ap.add_argument("--batches", default="1,1000", help="comma list of rows per request")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each batch size's run")
    ap.add_argument("--max-requests", type=int, default=200_000, help="at most this many requests per batch size")
    ap.add_argument("--clients", type=int, default=4, help="client threads (keep-alive connections)")
    ap.add_argument("--threads", type=int, default=4, help="fm serve --threads")
    ap.add_argument("--replacements", type=int, default=10, help="times the model file is replaced per batch size")
    ap.add_argument("--reload-interval", type=float, default=0.05, help="fm serve --reload-interval")
    ap.add_argument("--json", help="write every figure here")
    args = ap.parse_args()

    sys.path.insert(0, str(HERE.parent))
    from fmcli.model import load_model
    from fmcli.predict import predict

    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="serve-load-"))
    work.mkdir(parents=True, exist_ok=True)
    train = Path(args.train) if args.train else work / "train.ffm"
    rows_file = Path(args.rows_file) if args.rows_file else work / "rows.ffm"
    if not args.train:
        generate(train, 20_000, 1)
    if not args.rows_file:
        generate(rows_file, 5_000, 2)
    a, b = work / "a.fm", work / "b.fm"
    for path, seed, epochs in ((a, 1, 1), (b, 2, 2)):
        if not path.exists():
            run(fm_command() + ["train", "-q", "--model", "ffm", "-k", "4", "-t", str(epochs), "-s", "1",
                                "--seed", str(seed), "--no-optimizer-state", "-o", str(path), str(train)])
    served = work / "served.fm"
    lines = rows_file.read_bytes().splitlines(keepends=True)
    sizes = [int(x) for x in args.batches.split(",")]
    results = []
    codes = []
    for size in sizes:
        n_bodies = max(1, min(200, len(lines) // size))
        bodies = [b"".join(lines[i * size:(i + 1) * size]) for i in range(n_bodies)]
        expected = {}
        for path in (a, b):
            model = load_model(path)
            expected[sha256(path)] = []
            for body in bodies:
                tmp = work / "body.ffm"
                tmp.write_bytes(body)
                expected[sha256(path)].append(predict(model, str(tmp)).tolist())
        # a server of its own for each batch size: its latency figures are this size's alone
        shutil.copyfile(a, served)
        proc, port = start_server(served, args.threads, args.reload_interval)
        try:
            result = phase(port, bodies, expected, served, [a, b], args)
            # the last replacement put in place (up to 30 s) before the reloads are counted
            final, deadline = sha256(served), time.time() + 30
            while serving_checksum(port) != final and time.time() < deadline:
                time.sleep(args.reload_interval)
            result["reloads"] = reloads(port)
            result["server_p50_ms"] = server_quantile(port, "0.5")
            result["server_p99_ms"] = server_quantile(port, "0.99")
            results.append(result)
        finally:
            proc.terminate()
            codes.append(proc.wait(timeout=60))
    code = max(codes)
    print(f"fm serve load test: {args.clients} client threads, fm serve --threads {args.threads}, "
          f"{args.seconds:g} s per batch size, model file replaced {args.replacements} times per batch size; "
          f"{platform.machine()}, {os.cpu_count()} CPUs")
    header = ("rows/request", "requests", "failed", "mixed", "requests/s", "rows/s", "p50 ms", "p99 ms",
              "server p50 ms", "server p99 ms", "replaced", "reloads", "checksums")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in results:
        print(f"| {r['batch_rows']} | {r['requests']} | {r['failures']} | {r['mixed']} | {r['requests_per_s']:.0f} | "
              f"{r['rows_per_s']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['server_p50_ms']:.2f} | "
              f"{r['server_p99_ms']:.2f} | {r['replacements']} | "
              f"{r['reloads']} | {r['checksums_seen']} |")
    print(f"fm serve exited with status {', '.join(map(str, codes))} on SIGTERM")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"benchmark": "serve_load", "args": vars(args), "cpus": os.cpu_count(),
                       "machine": platform.machine(), "python": platform.python_version(),
                       "server_exit_status": code, "results": results}, f, indent=2)
    bad = [r for r in results if r["failures"] or r["mixed"] or r["requests"] == 0]
    if bad or code != 0:
        for r in bad:
            print(f"FAILED: {r['batch_rows']} rows/request: {r['failures']} failed, {r['mixed']} mixed "
                  f"answers; e.g. {r['failure_examples']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
