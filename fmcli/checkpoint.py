"""Training checkpoints: everything needed to continue a run exactly.

A checkpoint is a model container (fmcli.modelfile: magic, JSON header,
aligned arrays, CRC-32; written atomically) whose header holds a
``checkpoint`` object: the cursor (epoch, chunk position in that epoch's
chunk order, row position in that chunk's row order), the random generator's
state at the start of the epoch, the epoch's partial loss sums, the history
of finished epochs, the best epoch so far, the configuration, the data set's
key and the run's own arguments; its arrays are the training state in the
kernels' layout (parameters with their optimizer state, and the best
epoch's copy when early stopping keeps one).

Files are named ``ckpt-NNNNNNNN.fmc`` with a counter; the newest readable
one wins, older ones beyond ``keep`` are removed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ConfigError, InputNotFoundError, ModelFormatError
from .modelfile import json_safe, read_model_file, write_model_file   # json_safe: non-finite -> null
from .safepaths import sweep_stale

_NAME = re.compile(r"^ckpt-(\d{8})\.fmc$")
# atomic_output's temporary files of checkpoints: ".ckpt-NNNNNNNN.fmc.XXXXXXXX.tmp"
_TEMP_NAMES = re.compile(r"\.ckpt-\d{8}\.fmc\.[a-z0-9_]{8}\.tmp")
# every name save() creates or removes in the directory (an input there under
# such a name would be lost; any other file is left alone)
OWNED_NAMES = re.compile(r"^(ckpt-\d{8}\.fmc|\.ckpt-\d{8}\.fmc\..*\.tmp)$")
VERSION = 1


@dataclass
class Checkpoint:
    info: dict[str, Any]             # the header's "checkpoint" object
    arrays: dict[str, np.ndarray]
    path: str


def _numbered(directory: str) -> list[tuple[int, str]]:
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    found = [(int(m.group(1)), os.path.join(directory, n)) for n in names if (m := _NAME.match(n))]
    return sorted(found)


def prepare(directory: str) -> None:
    """Create the checkpoint directory now and check that it takes files
    (OutputError, exit status 73, otherwise): called before training, so
    that a read-only place or a path under a regular file fails at once."""
    from .atomic import prepare_directory

    prepare_directory(directory, "checkpoint directory")


def save(directory: str, info: dict[str, Any], arrays: dict[str, np.ndarray], keep: int) -> str:
    """Write the next checkpoint into `directory`; returns its path."""
    prepare(directory)
    # Half-written checkpoints of runs killed mid-write (ours are locked).
    sweep_stale(directory, _TEMP_NAMES)
    existing = _numbered(directory)
    number = existing[-1][0] + 1 if existing else 1
    path = os.path.join(directory, f"ckpt-{number:08d}.fmc")
    write_model_file(path, {"checkpoint": json_safe({"version": VERSION, **info})}, arrays)
    for _, old in existing[: max(0, len(existing) + 1 - max(1, keep))]:
        try:
            os.unlink(old)
        except OSError:
            pass
    return path


def load_latest(directory: str) -> Checkpoint:
    """The newest checkpoint in `directory` that reads back intact."""
    if not os.path.isdir(directory):
        raise InputNotFoundError(f"{directory}: no such checkpoint directory")
    errors = []
    for _, path in reversed(_numbered(directory)):
        try:
            header, arrays = read_model_file(path, mmap=False)
        except ModelFormatError as exc:
            errors.append(str(exc))
            continue
        info = header.get("checkpoint")
        if not isinstance(info, dict) or info.get("version") != VERSION:
            errors.append(f"{path}: not a checkpoint of this fmcli")
            continue
        return Checkpoint(info, dict(arrays), path)
    raise ConfigError(f"{directory}: no usable checkpoint" + (f" ({errors[0]})" if errors else ""))
