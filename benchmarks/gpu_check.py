#!/usr/bin/env python3
"""The GPU check: everything a machine with a CUDA device can tell, in five minutes.

    python3 benchmarks/gpu_check.py OUT_DIR [--small] [--only STAGE,...]
    make gpu-check OUT=OUT_DIR

Run it from a checkout with the interpreter that has the dependencies (NumPy,
SciPy, Cython, setuptools, click, pyarrow, rich, pytest, hypothesis and, for
the device, CuPy): it builds the extensions in place with that interpreter
(no download, no virtual environment) and then runs these stages, each in
its own process under its own time limit, so that one slow or hung stage
cannot eat the others' time:

  build        setup.py build_ext --inplace -j N (without pyproject.toml's metadata)
  device       nvidia-smi -q (model, memory, driver) and CuPy's view of it
  gpu_tests    the tests marked gpu (tests/test_gpu.py, tests/test_gpu_fmfm.py) but the reference matrix
  exact        exact mode against the NumPy reference for every model x task x
               optimizer (test_gpu_exact_mode_matches_reference)
  hogwild      per-row (Hogwild) FFM training on the device on BENCH.md-shaped
               generated data, validation logloss beside the CPU path's
  hot          per-row FFM on the device with hot accumulation (the bias and the
               features the rows in flight share step once per wave) on and
               off, validation logloss beside the CPU's sequential pass (one
               thread): the accuracy the rows in flight keep, and lose
  gpu_bench    benchmarks/gpu.py: rows/s of FFM k=4, k=16 and FM k=4, and the
               fraction of the memory bound
  cpu_scaling  CPU training rows/s of FFM k=4 at 1, 2, 4, 8 and 16 threads (as
               many as the machine has)

Every stage writes its figures into OUT_DIR/gpu_check.json as soon as it
ends (the whole file is replaced each time, atomically), so a run cut off
still leaves what finished; its output goes to OUT_DIR/gpu_check.log.
Without a device the device stages are recorded as skipped, the others run
(the CPU scaling on the cores there), and the exit status is 0.  The exit
status is 1 when a stage failed or ran out of time.  --small uses little
data; --emulate (with --small) runs the hogwild, hot and gpu_bench stages on
the CPU emulation of the kernels (fmcli.gpu.emulate) instead of a device --
both check the script itself, their figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent

# (stage, time limit in seconds, needs a device); the limits add up to about
# six minutes with the build
STAGES = [
    ("build", 90, False),
    ("device", 15, True),
    ("gpu_tests", 45, True),
    ("exact", 30, True),
    ("hogwild", 55, True),
    ("hot", 60, True),
    ("gpu_bench", 30, True),
    ("cpu_scaling", 30, False),
]
DEVICE_TESTS = ["tests/test_gpu.py", "tests/test_gpu_fmfm.py"]
EXACT = "test_gpu_exact_mode_matches_reference"


# ---------------------------------------------------------------------------
# the stages, each run in a process of its own: python gpu_check.py --stage NAME OUT


def stage_device(args) -> dict:
    facts: dict = {}
    smi = shutil.which("nvidia-smi")
    if smi:
        text = subprocess.run([smi, "-q"], capture_output=True, text=True, timeout=10).stdout
        for key, pattern in (("model", r"Product Name\s*:\s*(.+)"), ("driver", r"Driver Version\s*:\s*(.+)"),
                             ("cuda", r"CUDA Version\s*:\s*(.+)"),
                             ("memory_total", r"FB Memory Usage\s*\n\s*Total\s*:\s*(.+)")):
            m = re.search(pattern, text)
            facts[key] = m.group(1).strip() if m else None
    import cupy

    facts["cupy"] = cupy.__version__
    facts["devices"] = int(cupy.cuda.runtime.getDeviceCount())
    props = cupy.cuda.runtime.getDeviceProperties(0)
    facts["name"] = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    facts["memory_bytes"] = int(props["totalGlobalMem"])
    facts["multiprocessors"] = int(props["multiProcessorCount"])
    facts["compute_capability"] = f"{props['major']}.{props['minor']}"
    return facts


def _pytest(args, selection: list[str]) -> dict:
    junit = Path(args.out) / f"{args.stage}.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu",
           f"--junitxml={junit}", *DEVICE_TESTS, *selection]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    print(run.stdout[-20000:], run.stderr[-5000:], sep="\n")
    counts = {k: 0 for k in ("passed", "failed", "skipped", "errors")}
    for number, word in re.findall(r"(\d+) (passed|failed|skipped|errors?)", run.stdout.strip().splitlines()[-1]
                                   if run.stdout.strip() else ""):
        counts["errors" if word.startswith("error") else word] = int(number)
    failed = re.findall(r"^FAILED (\S+)", run.stdout, re.M)
    return {"exit": run.returncode, **counts, "failed_tests": failed[:50],
            "ok": run.returncode == 0 and counts["passed"] > 0}


def stage_gpu_tests(args) -> dict:
    return _pytest(args, ["-k", f"not {EXACT}"])


def stage_exact(args) -> dict:
    return _pytest(args, ["-k", EXACT])


def _synthetic(rows: int, seed: int, fields: int = 39):
    sys.path.insert(0, str(HERE))
    from gpu import synthetic_batch

    return synthetic_batch(rows, fields, seed)


def _emulated_device(rows_in_flight: int | None = None) -> None:
    """Make --device cuda train on the CPU emulation of the kernels."""
    from fmcli.gpu import device as gpu_device
    from fmcli.gpu import emulate
    from fmcli.gpu import state as gpu_state

    gpu_device.probe = lambda: (True, "emulated device")
    gpu_state.default_backend = lambda: emulate.EmulatedBackend(sm_count=1, blocks_per_sm=2, warps_per_block=2,
                                                                rows_in_flight=rows_in_flight)


def stage_hogwild(args) -> dict:
    import numpy as np

    from fmcli.config import Config
    from fmcli.train import train

    if args.emulate:
        _emulated_device()
    rows = 400 if args.emulate else 20_000 if args.small else 500_000
    tr, n_features = _synthetic(rows, 1)
    va, _ = _synthetic(rows // 5, 2)
    del n_features
    out = {"rows": rows, "valid_rows": va.n_rows, "model": "ffm", "k": 4, "epochs": 3, "optimizer": "adagrad"}
    for device, threads in (("cuda", 1), ("cpu", os.cpu_count() or 1), ("cpu", 1)):
        if device == "cpu" and threads == 1 and (os.cpu_count() or 1) == 1:
            continue
        config = Config(model="ffm", k=4, epochs=3, device=device, threads=threads, batch_size=1,
                        use_bias=False, use_linear=False, seed=1)
        t0 = time.perf_counter()
        model = train(config, tr, va)
        seconds = time.perf_counter() - t0
        history = model.meta["training"]["history"]
        name = f"{device}_{threads}t" if device == "cpu" else "cuda"
        out[name] = {"valid_logloss": [h.get("valid_logloss") for h in history],
                     "valid_auc": [h.get("valid_auc") for h in history],
                     "seconds": seconds, "rows_per_s": [h.get("rows_per_s") for h in history]}
        print(name, json.dumps(out[name]), flush=True)
    cpu = out[f"cpu_{os.cpu_count() or 1}t"]["valid_logloss"][-1]
    gpu = out["cuda"]["valid_logloss"][-1]
    out["cuda_vs_cpu_logloss"] = gpu / cpu if cpu else None
    out["ok"] = bool(np.isfinite(gpu))
    return out


def stage_hot(args) -> dict:
    import numpy as np

    from fmcli.config import Config
    from fmcli.train import train

    if args.emulate:   # a small model: the emulation copies it per row in flight
        _emulated_device(rows_in_flight=150)
    rows, fields = (1500, 3) if args.emulate else (20_000, 39) if args.small else (1_000_000, 39)
    tr, _ = _synthetic(rows, 1, fields)
    va, _ = _synthetic(max(rows // 5, 300), 2, fields)
    epochs = 2 if args.emulate else 3
    out = {"rows": rows, "valid_rows": va.n_rows, "fields": fields, "model": "ffm", "k": 4, "epochs": epochs,
           "optimizer": "adagrad"}
    for name, device, hot in (("cpu_1t", "cpu", None), ("cuda_hot", "cuda", None), ("cuda_hot_off", "cuda", 0)):
        notes: list[str] = []
        config = Config(model="ffm", k=4, epochs=epochs, device=device, threads=1, batch_size=1, seed=1,
                        hot_features=hot)
        t0 = time.perf_counter()
        model = train(config, tr, va, log=notes.append)
        history = model.meta["training"]["history"]
        out[name] = {"valid_logloss": [h.get("valid_logloss") for h in history],
                     "seconds": time.perf_counter() - t0, "notes": notes}
        print(name, json.dumps(out[name]), flush=True)
    cpu = out["cpu_1t"]["valid_logloss"][-1]
    for name in ("cuda_hot", "cuda_hot_off"):
        out[f"{name}_vs_cpu_logloss"] = out[name]["valid_logloss"][-1] / cpu if cpu else None
    ratio = out["cuda_hot_vs_cpu_logloss"]
    out["hot_within_half_percent"] = ratio is not None and abs(ratio - 1) <= 0.005
    out["ok"] = bool(np.isfinite(out["cuda_hot"]["valid_logloss"][-1]))
    return out


def stage_gpu_bench(args) -> dict:
    target = Path(args.out) / "gpu_bench.json"
    rows = "300" if args.emulate else "20000" if args.small else "1000000"
    cmd = [sys.executable, str(HERE / "gpu.py"), "--rows", rows, "--epochs", "2",
           "--cases", "ffm:4,ffm:16,fm:4", "--json", str(target)] + (["--emulate"] if args.emulate else [])
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    print(run.stdout[-10000:], run.stderr[-5000:], sep="\n")
    if run.returncode != 0:
        return {"ok": False, "exit": run.returncode, "error": (run.stderr.strip().splitlines() or [""])[-1]}
    return {"ok": True, "results": json.loads(target.read_text())}


def stage_cpu_scaling(args) -> dict:
    from fmcli.config import Config
    from fmcli.train import train

    cores = os.cpu_count() or 1
    counts = [t for t in (1, 2, 4, 8, 16) if t <= cores]
    rows = 20_000 if args.small else 400_000
    tr, _ = _synthetic(rows, 1)
    rates: dict[int, list[float]] = {t: [] for t in counts}
    for round_ in range(2):   # up, then down: drift affects every count alike
        for t in (counts if round_ == 0 else counts[::-1]):
            config = Config(model="ffm", k=4, epochs=1, threads=t, use_bias=False, use_linear=False, seed=1)
            model = train(config, tr)
            rates[t].append(float(model.meta["training"]["history"][0]["rows_per_s"]))
            print(f"{t} threads: {rates[t][-1]:,.0f} rows/s", flush=True)
    per = {str(t): sum(v) / len(v) for t, v in rates.items()}
    return {"ok": True, "cores": cores, "rows": rows, "model": "ffm", "k": 4, "rows_per_s": per,
            "speedup": {t: r / per["1"] for t, r in per.items()}, "runs": {str(t): v for t, v in rates.items()}}


STAGE_FUNCTIONS = {"device": stage_device, "gpu_tests": stage_gpu_tests, "exact": stage_exact,
                   "hogwild": stage_hogwild, "hot": stage_hot, "gpu_bench": stage_gpu_bench,
                   "cpu_scaling": stage_cpu_scaling}


# ---------------------------------------------------------------------------
# the driver


class Report:
    """OUT/gpu_check.json, rewritten (atomically) after every stage."""

    def __init__(self, out: Path):
        self.path = out / "gpu_check.json"
        self.doc = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "host": {"machine": platform.machine(), "python": platform.python_version(),
                             "cpus": os.cpu_count()},
                    "stages": {}}
        self.write()

    def add(self, name: str, result: dict) -> None:
        self.doc["stages"][name] = result
        self.write()

    def write(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.doc, indent=2, default=str) + "\n")
        os.replace(tmp, self.path)


def device_present() -> tuple[bool, str]:
    """Whether CuPy sees a CUDA device (checked in a child: a broken driver
    must not take this process down)."""
    code = ("import cupy, sys\n"
            "n = cupy.cuda.runtime.getDeviceCount()\n"
            "sys.exit(0 if n > 0 else 3)\n")
    try:
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return False, "CuPy did not answer within 30 s"
    if run.returncode == 0:
        return True, ""
    last = (run.stderr.strip().splitlines() or ["no CUDA device"])[-1]
    return False, "no CUDA device" if run.returncode == 3 else last


def run_stage(name: str, limit: float, args, log) -> dict:
    if name == "build":
        # setup.py in a directory of its own holding a link to the package:
        # the extensions are built into the checkout as by `setup.py
        # build_ext --inplace`, while setuptools never reads pyproject.toml,
        # whose metadata an older setuptools on the device may not accept
        stage_dir = ROOT / "build" / "gpu-check"      # kept: a later build compiles only what changed
        stage_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / "setup.py", stage_dir / "setup.py")
        link = stage_dir / "fmcli"
        if not link.is_symlink():
            link.symlink_to(ROOT / "fmcli", target_is_directory=True)
        cmd = [sys.executable, "setup.py", "build_ext", "--inplace", "-j", str(min(8, os.cpu_count() or 1))]
        cwd = stage_dir
    else:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--stage", name, str(args.out)]
        cmd += [flag for flag, on in (("--small", args.small), ("--emulate", args.emulate)) if on]
        cwd = ROOT
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    t0 = time.perf_counter()
    log.write(f"\n===== {name} (limit {limit:.0f} s): {' '.join(cmd)}\n")
    log.flush()
    try:
        run = subprocess.run(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=limit)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "seconds": time.perf_counter() - t0, "limit": limit}
    seconds = time.perf_counter() - t0
    if name == "build":
        return {"status": "ok" if run.returncode == 0 else "failed", "exit": run.returncode, "seconds": seconds}
    result_file = Path(args.out) / f"stage-{name}.json"
    if run.returncode != 0 or not result_file.exists():
        return {"status": "failed", "exit": run.returncode, "seconds": seconds}
    result = json.loads(result_file.read_text())
    ok = result.pop("ok", True)
    return {"status": "ok" if ok else "failed", "seconds": seconds, **result}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="output directory (created)")
    ap.add_argument("--small", action="store_true", help="little data: checks the script, not the device")
    ap.add_argument("--emulate", action="store_true",
                    help="hogwild, hot and gpu_bench on the CPU emulation of the kernels (checks the script)")
    ap.add_argument("--only", default=None, help="comma list of stages to run (default: all)")
    ap.add_argument("--stage", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        ap.error(f"cannot use {out} as the output directory: {exc.strerror or exc}")

    if args.stage:   # a child: one stage, its result as JSON
        args.out = str(out)
        result = STAGE_FUNCTIONS[args.stage](args)
        (out / f"stage-{args.stage}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
        return 0

    only = set(args.only.split(",")) if args.only else None
    unknown = (only or set()) - {name for name, _, _ in STAGES}
    if unknown:
        ap.error(f"unknown stage(s): {', '.join(sorted(unknown))}")
    report = Report(out)
    failed = False
    with open(out / "gpu_check.log", "a", encoding="utf-8") as log:
        present: tuple[bool, str] | None = None
        for name, limit, needs_device in STAGES:
            if only is not None and name not in only:
                continue
            if needs_device:
                if args.emulate and name in ("hogwild", "hot", "gpu_bench"):
                    present = (True, "")
                elif present is None or args.emulate:
                    present = device_present()
                    report.doc["device_present"] = present[0]
                if not present[0]:
                    report.add(name, {"status": "skipped", "reason": present[1]})
                    print(f"gpu-check: {name}: skipped ({present[1]})", flush=True)
                    continue
            result = run_stage(name, limit, args, log)
            report.add(name, result)
            failed = failed or result["status"] in ("failed", "timeout")
            print(f"gpu-check: {name}: {result['status']} in {result.get('seconds', 0):.1f} s", flush=True)
    report.doc["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    report.write()
    print(f"gpu-check: figures in {report.path}, output in {out / 'gpu_check.log'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
