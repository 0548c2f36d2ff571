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


def write_overfitting(path, rows: int, seed: int, noise_ids: int, fields: int) -> None:
    """libffm rows with a weak signal in field 0 (label rate 0.05 + 0.1 a,
    a in 0..9) and `fields` fields of `noise_ids` ids each that carry
    nothing: FFM learns their pairs by heart at a small L2, so that the
    validation logloss climbs and a tuner has something to find."""
    import numpy as np

    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for _ in range(rows):
            a = int(rng.integers(0, 10))
            y = int(rng.random() < 0.05 + 0.1 * a)
            ids = [10 + j * noise_ids + int(rng.integers(0, noise_ids)) for j in range(fields)]
            f.write(f"{y} 0:{a}:1 " + " ".join(f"{j + 1}:{i}:1" for j, i in enumerate(ids)) + "\n")
