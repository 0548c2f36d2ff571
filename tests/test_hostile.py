"""The hostile-case harness (fuzz/hostile.py) loads, and its cases pass."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HARNESS = Path(__file__).resolve().parent.parent / "fuzz" / "hostile.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(HARNESS), *args], capture_output=True, text=True, timeout=1800)


def test_every_class_of_the_issue_has_cases():
    listed = run("--list")
    assert listed.returncode == 0, listed.stderr
    classes = {line.split(":")[0] for line in listed.stdout.splitlines()}
    assert classes == {"clobber", "read-once", "stale-cache", "cache-damage", "metrics", "nonfinite",
                       "parquet", "environment", "leftovers"}
    assert len(listed.stdout.splitlines()) >= 100


@pytest.mark.parametrize("klass", ["metrics", "nonfinite", "stale-cache"])
def test_a_few_classes_pass(klass):
    result = run("-k", klass)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().splitlines()[-1].endswith(", 0 failed")


@pytest.mark.slow
def test_every_hostile_case_passes():
    result = run()
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
