"""Synthetic libffm data for tests, written by benchmarks/synth.py."""

import subprocess
import sys
from pathlib import Path

SYNTH = Path(__file__).resolve().parent.parent / "benchmarks" / "synth.py"


def write_synth(directory: Path, rows: int, seed: int, fields: int, valid_rows: int = 0) -> list[str]:
    """directory/tr.ffm with `rows` rows (and directory/va.ffm, its first
    valid_rows lines, when valid_rows > 0); returns tr.ffm's lines."""
    subprocess.run([sys.executable, str(SYNTH), "--rows", str(rows), "--seed", str(seed), "--fields", str(fields),
                    "--out", str(directory / "tr.ffm"), "-q"], check=True)
    lines = (directory / "tr.ffm").read_text().splitlines(keepends=True)
    if valid_rows:
        (directory / "va.ffm").write_text("".join(lines[:valid_rows]))
    return lines
