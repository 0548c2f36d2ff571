"""Model summaries for `fm inspect` (pure data; rendering lives in the CLI)."""

from __future__ import annotations

import os
from typing import Any

from .model import inspect_header


def summarize(path: str | os.PathLike) -> dict[str, Any]:
    """The model file's header plus a few derived figures."""
    header = inspect_header(path)
    arrays = header.get("arrays", [])
    params = [a for a in arrays if not str(a.get("name", "")).endswith("_state")]
    return {
        "path": os.fspath(path),
        "file_bytes": os.path.getsize(path),
        "header": header,
        "n_parameters": sum(_count(a["shape"]) for a in params),
        "has_optimizer_state": any(str(a.get("name", "")).endswith("_state") for a in arrays),
    }


def _count(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n
