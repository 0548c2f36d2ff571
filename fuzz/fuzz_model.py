"""Fuzz the model-file reader, fmcli.modelfile (see fuzz/README.md).

Each input is written to a temporary file and read back with
``read_model_file`` (copied and memory-mapped, with and without the CRC
check) and ``read_header``.  Only ModelFormatError may come out; any other
exception, a crash, a hang or a memory blow-up is a bug.

Random bytes rarely survive the CRC-32, so every input is tried twice: as
is, and with its trailer rewritten (payload end and checksum recomputed) so
that mutations of the header and the array table reach the structural checks
behind the checksum.  When the checks pass, the arrays must lie inside the
file and match their table entries.

Run it through ``make fuzz`` or by hand:
``python fuzz/fuzz_model.py CORPUS_DIR [libFuzzer flags]``; give it a crash
file instead of a directory to replay one input.
"""

from __future__ import annotations

import os
import struct
import sys
import tempfile
import zlib

import atheris
import numpy as np

with atheris.instrument_imports(include=["fmcli"]):
    from fmcli.errors import ModelFormatError
    from fmcli.modelfile import DTYPES, read_header, read_model_file, write_model_file

TRAILER = struct.Struct("<8sQII")
TRAILER_MAGIC = b"FMMEND\x00\x00"

_fd, PATH = tempfile.mkstemp(prefix="fmcli-fuzz-", suffix=".fm", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
os.close(_fd)


def _fix_trailer(data: bytes) -> bytes | None:
    if len(data) < 48:
        return None
    body = data[:-TRAILER.size]
    fixed = body + TRAILER.pack(TRAILER_MAGIC, len(body), zlib.crc32(body), 0)
    return None if fixed == data else fixed


def _read(size: int, **kwargs) -> None:
    try:
        header, arrays = read_model_file(PATH, **kwargs)
    except ModelFormatError as exc:
        assert str(exc).startswith(PATH + ": "), str(exc)
        return
    # Whatever passed the checks must be what the table says, inside the file.
    assert isinstance(header, dict)
    table = header["arrays"]
    assert [e["name"] for e in table] == list(arrays)
    for entry in table:
        array = arrays[entry["name"]]
        assert array.dtype == DTYPES[entry["dtype"]]
        assert array.nbytes == entry["nbytes"] and list(array.shape) == entry["shape"]
        assert 0 <= entry["offset"] and entry["offset"] + entry["nbytes"] <= size - TRAILER.size
        assert array.flags.writeable != bool(kwargs.get("mmap"))
    # Returning drops every view of a memory map before the file is rewritten.


def _check(data: bytes) -> None:
    with open(PATH, "wb") as f:
        f.write(data)
    for kwargs in ({}, {"mmap": True}, {"verify": False}, {"mmap": True, "verify": False}):
        _read(len(data), **kwargs)
    try:
        read_header(PATH)
    except ModelFormatError as exc:
        assert str(exc).startswith(PATH + ": "), str(exc)


def TestOneInput(data: bytes) -> None:
    _check(data)
    fixed = _fix_trailer(data)
    if fixed is not None:
        _check(fixed)


def _seeds() -> list[bytes]:
    """Small but complete model files, written with the real writer."""
    rng = np.random.default_rng(0)
    cases = [
        ({"model": {"kind": "lr", "task": "binary", "k": 4, "n_features": 3, "n_fields": 1,
                    "use_bias": True, "use_linear": True, "normalize": True}},
         {"bias": np.array([0.5], np.float32), "linear": rng.standard_normal(3).astype(np.float32)}),
        ({"model": {"kind": "ffm", "task": "binary", "k": 2, "n_features": 2, "n_fields": 2,
                    "use_bias": False, "use_linear": False, "normalize": True}, "note": "h\u00e9"},
         {"factors": rng.standard_normal((2, 2, 2)).astype(np.float32)}),
        ({}, {}),
        ({"x": [1, 2.5, None, True, "s", {"y": {}}]},
         {"a": np.arange(3, dtype=np.int64), "b": np.zeros((0, 2), np.uint8),
          "c": np.ones((2, 3), np.float64), "d": np.array(7, np.int32)}),
    ]
    out = []
    for header, arrays in cases:
        write_model_file(PATH, header, arrays)
        with open(PATH, "rb") as f:
            out.append(f.read())
    return out


def _write_seeds(argv: list[str]) -> None:
    dirs = [a for a in argv[1:] if not a.startswith("-") and os.path.isdir(a)]
    if not dirs or os.listdir(dirs[0]):
        return
    for i, seed in enumerate(_seeds()):
        with open(os.path.join(dirs[0], f"seed-{i:02d}"), "wb") as f:
            f.write(seed)


def main() -> None:
    try:
        _write_seeds(sys.argv)
        atheris.Setup(sys.argv, TestOneInput)
        atheris.Fuzz()
    finally:
        os.unlink(PATH)


if __name__ == "__main__":
    main()
