"""Shared by the model-file tests: load a file every way fmcli can."""

from __future__ import annotations

import contextlib
from pathlib import Path

from fmcli.errors import ModelFormatError
from fmcli.model import load_model
from fmcli.modelfile import read_header, read_model_file


def load_every_way(path: Path) -> None:
    """Read `path` with every loader and option; only ModelFormatError may escape."""
    for kwargs in ({}, {"mmap": True}, {"verify": False}, {"mmap": True, "verify": False}):
        with contextlib.suppress(ModelFormatError):
            read_model_file(path, **kwargs)
    for mmap in (True, False):
        with contextlib.suppress(ModelFormatError):
            load_model(path, mmap=mmap)
    with contextlib.suppress(ModelFormatError):
        read_header(path)
