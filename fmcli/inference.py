"""Inference files: a model's weights for the C scorer (fmcli/include/fmscore.h).

``fm convert MODEL.fm --to inference -o MODEL.fmi`` writes one.  It holds
what scoring needs and nothing else -- no optimizer state, no JSON -- behind
a fixed binary header, so that a C program reads it with a few dozen lines
(fmscore.c).  The layout is documented in fm-model(5), INFERENCE FILES::

    offset  size  field
    0       8     magic b"\\x89FMI\\r\\n\\x1a\\n"
    8       2     format major (u16), 10: format minor (u16)
    12      4     scorer API version needed (u32)
    16      8     file size in bytes (u64)
    24      4     kind (fmcli.registry code), 28: task (0 binary, 1 regression, 2 multiclass)
    32      4     classes, 36: k, 40: features, 44: fields (u32 each)
    48      4     flags: 1 bias, 2 linear, 4 instance normalisation, 8 id map
    52      4     storage: 0 float32, 1 float16, 2 int8 factors
    56      4     id map entries, 60: CRC-32 of the source model file (u32)
    64      112   array table: (offset u64, bytes u64) for bias, linear, factors,
                  factor_scales, pairs, id_keys, id_slots (0, 0 when absent)
    176     80    zero
    256     ...   the arrays, each at a 64-byte aligned offset
    E       24    trailer: b"FMIEND\\0\\0", E (u64), CRC-32 of bytes [0, E) (u32), 0 (u32)

Everything is little-endian.  ``python -m fmcli.inference --include-dir``
prints the folder of the C sources (:func:`get_include`).
"""

from __future__ import annotations

import os
import struct
import sys

import numpy as np

from ._core._parse import crc32
from .atomic import atomic_output
from .errors import ConfigError
from .model import Model, quantize_int8, to_float16
from .registry import kind as model_kind

__all__ = ["API_VERSION", "FORMAT_MAJOR", "FORMAT_MINOR", "MAGIC", "SUFFIX", "STORAGE",
           "get_include", "write_inference", "inference_bytes"]

MAGIC = b"\x89FMI\r\n\x1a\n"
TRAILER_MAGIC = b"FMIEND\x00\x00"
FORMAT_MAJOR, FORMAT_MINOR = 1, 0
API_VERSION = 1            # FMS_API_VERSION of fmscore.h that reads this format
SUFFIX = ".fmi"
HEADER_SIZE = 256
ALIGNMENT = 64
STORAGE = ("float32", "float16", "int8")     # the storage code is the index
TASKS = ("binary", "regression", "multiclass")
ARRAYS = ("bias", "linear", "factors", "factor_scales", "pairs", "id_keys", "id_slots")
KINDS = ("lr", "fm", "ffm", "fwfm", "fmfm")   # the kinds format 1 lays out (fmscore.h's FMS_LR ..)
FLAG_BIAS, FLAG_LINEAR, FLAG_NORMALIZE, FLAG_ID_MAP = 1, 2, 4, 8
_FIXED = struct.Struct("<8sHHIQIIIIIIIIII")     # the header up to the array table (64 bytes)
_TRAILER = struct.Struct("<8sQII")


def get_include() -> str:
    """The folder holding fmscore.h and fmscore.c (and example/score_example.c)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "include")


def default_storage(model: Model) -> str:
    """The storage an inference file keeps by default: float16 for a model
    stored so (no loss), float32 otherwise (int8 is asked for, never assumed)."""
    return "float16" if model.stored_dtype == "float16" else "float32"


def _arrays(model: Model, storage: str) -> dict[str, np.ndarray]:
    """The arrays of an inference file, flattened, in their stored types."""
    s = model.spec
    pair_param = model_kind(s.kind).pair_param
    half = storage != "float32"
    out: dict[str, np.ndarray] = {}
    if s.use_bias:
        out["bias"] = np.asarray(model.params["bias"], np.float32).reshape(-1)
    if s.use_linear:
        linear = model.params["linear"]
        out["linear"] = (to_float16(linear) if half else np.asarray(linear, np.float32)).reshape(-1)
    factors = model.params.get("factors")
    if factors is not None:
        if storage == "int8":
            q, scale = quantize_int8(factors)
            out["factors"] = q.reshape(-1)
            out["factor_scales"] = scale.astype(np.float16).reshape(-1)
        else:
            out["factors"] = (to_float16(factors) if half else np.asarray(factors, np.float32)).reshape(-1)
    if pair_param is not None:
        pairs = model.params[pair_param]
        out["pairs"] = (to_float16(pairs) if half else np.asarray(pairs, np.float32)).reshape(-1)
    if model.feature_ids is not None:
        ids = np.asarray(model.feature_ids, np.int64)
        if ids.size and int(ids.max()) >= 2**31:
            raise ConfigError("the model's feature ids do not fit 32 bits")
        order = np.argsort(ids, kind="stable")
        out["id_keys"] = ids[order].astype(np.int32)
        out["id_slots"] = order.astype(np.int32)
    return out


def inference_bytes(model: Model, *, storage: str | None = None, source_crc: int = 0) -> bytes:
    """The inference file of `model` (see the module's docstring).
    storage: float32, float16 (weights but the bias) or int8 (factors as
    int8 with a float16 scale per k-vector, the rest as float16); default
    :func:`default_storage`.  A weight beyond float16's range is a ValueError."""
    storage = storage or default_storage(model)
    if storage not in STORAGE:
        raise ConfigError(f"storage must be one of {', '.join(STORAGE)}, got {storage!r}")
    s = model.spec
    if s.kind not in KINDS:
        raise ConfigError(f"inference files have no layout for {s.kind} models (they hold "
                          f"{', '.join(KINDS)})")
    arrays = _arrays(model, storage)
    # the arrays' places: each at the next 64-byte boundary after the header
    table, pos = [], HEADER_SIZE
    for name in ARRAYS:
        a = arrays.get(name)
        if a is None or a.size == 0:
            table += [0, 0]
            continue
        table += [pos, a.nbytes]
        pos = (pos + a.nbytes + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT
    payload_end = pos
    flags = ((FLAG_BIAS if s.use_bias else 0) | (FLAG_LINEAR if s.use_linear else 0)
             | (FLAG_NORMALIZE if s.normalize else 0) | (FLAG_ID_MAP if "id_keys" in arrays else 0))
    buf = bytearray(payload_end + _TRAILER.size)
    _FIXED.pack_into(buf, 0, MAGIC, FORMAT_MAJOR, FORMAT_MINOR, API_VERSION, len(buf),
                     model_kind(s.kind).code, TASKS.index(s.task), s.n_classes, s.k, s.n_features,
                     s.n_fields, flags, STORAGE.index(storage),
                     0 if model.feature_ids is None else len(model.feature_ids), source_crc & 0xFFFFFFFF)
    struct.pack_into(f"<{len(table)}Q", buf, _FIXED.size, *table)
    for name, offset in zip(ARRAYS, table[::2]):
        a = arrays.get(name)
        if a is not None and a.size:
            buf[offset : offset + a.nbytes] = np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<"),
                                                                           copy=False).tobytes()
    _TRAILER.pack_into(buf, payload_end, TRAILER_MAGIC, payload_end,
                       crc32(memoryview(buf)[:payload_end]), 0)
    return bytes(buf)


def source_checksum(path: str | os.PathLike) -> int:
    """The CRC-32 in an fmcli model file's trailer (0 when it has none)."""
    from .modelfile import MAGIC as FM_MAGIC, TRAILER_MAGIC as FM_TRAILER

    try:
        with open(path, "rb") as f:
            if f.read(len(FM_MAGIC)) != FM_MAGIC:
                return 0
            f.seek(-_TRAILER.size, os.SEEK_END)
            magic, _, crc, _ = _TRAILER.unpack(f.read(_TRAILER.size))
    except (OSError, struct.error):
        return 0
    return crc if magic == FM_TRAILER else 0


def write_inference(model: Model, path: str | os.PathLike, *, storage: str | None = None,
                    source_crc: int | None = None) -> int:
    """Write `model`'s inference file to `path` atomically; returns its size.
    source_crc: the checksum to record of the model file it came from
    (default: read from model.path's trailer when there is one)."""
    if source_crc is None:
        source_crc = source_checksum(model.path) if model.path else 0
    data = inference_bytes(model, storage=storage, source_crc=source_crc)
    with atomic_output(path, "wb") as f:
        f.write(data)
    return len(data)


def main(argv: list[str] | None = None) -> int:
    """python -m fmcli.inference --include-dir: print the C scorer's folder."""
    args = sys.argv[1:] if argv is None else argv
    if args in (["--include-dir"], ["--includes"]):
        print(get_include() if args[0] == "--include-dir" else f"-I{get_include()}")
        return 0
    print("usage: python -m fmcli.inference --include-dir | --includes\n\n"
          "  --include-dir  print the folder of fmscore.h and fmscore.c (the C scorer of\n"
          "                 the .fmi files that fm convert MODEL --to inference writes)\n"
          "  --includes     the same as a compiler flag: -I<folder>",
          file=sys.stderr if args not in (["-h"], ["--help"]) else sys.stdout)
    return 0 if args in (["-h"], ["--help"]) else 2


if __name__ == "__main__":
    sys.exit(main())
