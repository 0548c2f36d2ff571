"""benchmarks/gpu_check.py on a machine without a CUDA device: every stage
it can run runs, the device stages are recorded as skipped, exit status 0."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"

# the check builds the extensions from a checkout with a compiler (not the
# case where the tests run against an installed wheel)
pytestmark = pytest.mark.skipif(
    not (ROOT / "setup.py").exists() or not (ROOT / "fmcli").is_dir() or shutil.which(
        os.environ.get("CC") or "cc") is None or os.environ.get("CC") == "/bin/false",
    reason="needs a source checkout and a C compiler (it builds the extensions in place)")


def test_without_a_device_the_device_stages_are_skipped(tmp_path):
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, str(SCRIPT), str(out), "--small", "--emulate"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    doc = json.loads((out / "gpu_check.json").read_text())
    stages = doc["stages"]
    assert list(stages) == ["build", "device", "gpu_tests", "exact", "hogwild", "hot", "gpu_bench", "cpu_scaling"]
    assert stages["build"]["status"] == "ok"
    if not doc.get("device_present"):
        for name in ("device", "gpu_tests", "exact"):
            assert stages[name]["status"] == "skipped" and stages[name]["reason"]
    # the device stages' own code, run on the CPU emulation of the kernels
    hog = stages["hogwild"]
    assert hog["status"] == "ok" and len(hog["cuda"]["valid_logloss"]) == 3
    assert any(name.startswith("cpu_") for name in hog)
    hot = stages["hot"]
    assert hot["status"] == "ok" and {"cpu_1t", "cuda_hot", "cuda_hot_off"} <= set(hot)
    assert any("rows in flight" in note for note in hot["cuda_hot"]["notes"])
    assert not any("rows in flight" in note for note in hot["cuda_hot_off"]["notes"])
    bench = stages["gpu_bench"]
    assert bench["status"] == "ok"
    assert {(r["model"], r["k"]) for r in bench["results"]["results"]} == {("ffm", 4), ("ffm", 16), ("fm", 4)}
    scaling = stages["cpu_scaling"]
    assert scaling["status"] == "ok" and scaling["rows_per_s"]["1"] > 0
    assert "finished" in doc and (out / "gpu_check.log").stat().st_size > 0


def test_a_stage_past_its_time_limit_is_recorded_and_the_rest_run(tmp_path, monkeypatch):
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import gpu_check
    finally:
        sys.path.pop(0)
    monkeypatch.setattr(gpu_check, "STAGES", [("cpu_scaling", 0.5, False), ("build", 90, False)])
    assert gpu_check.main([str(tmp_path), "--small"]) == 1
    stages = json.loads((tmp_path / "gpu_check.json").read_text())["stages"]
    assert stages["cpu_scaling"]["status"] == "timeout" and stages["build"]["status"] == "ok"
