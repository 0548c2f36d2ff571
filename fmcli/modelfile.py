"""The on-disk model container (formats 1.3, 1.4, 2.0 and 2.1), documented in fm-model(5).

A model file is a small JSON header followed by raw little-endian arrays, each
starting on a 64-byte boundary so that it can be memory-mapped and used in
place.  A trailer carries a CRC-32 of everything before it.  Layout::

    offset  size  field
    0       8     magic b"\\x89FMM\\r\\n\\x1a\\n"
    8       2     format major (u16)
    10      2     format minor (u16)
    12      4     flags (u32, reserved, 0)
    16      8     header_len (u64)
    24      N     header: UTF-8 JSON object, with an "arrays" table
    ...           zero padding to a multiple of 64
    ...           arrays, each at a 64-aligned offset, zero padding between
    E       8     trailer magic b"FMMEND\\0\\0"
    E+8     8     payload_end = E (u64)
    E+16    4     CRC-32 of bytes [0, E) (u32)
    E+20    4     reserved (u32, 0)

The reader validates the whole structure against the real file size before it
allocates any array memory, so a corrupt or hostile file costs at most one
header read (bounded by :data:`MAX_HEADER_LEN`) and one checksum pass.  The
format never contains pickled objects.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import mmap as _mmap
import os
import stat
import struct
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any, BinaryIO

import numpy as np

from ._core._parse import crc32   # zlib's CRC-32, faster (crc32.h)
from .atomic import atomic_output
from .errors import InputNotFoundError, ModelFormatError, OutputError

__all__ = [
    "ALIGNMENT",
    "DTYPES",
    "FORMAT_MAJOR",
    "FORMAT_MINOR",
    "MAGIC",
    "MAX_HEADER_LEN",
    "TRAILER_MAGIC",
    "json_safe",
    "read_header",
    "read_model_file",
    "write_model_file",
]

MAGIC = b"\x89FMM\r\n\x1a\n"
TRAILER_MAGIC = b"FMMEND\x00\x00"
FORMAT_MAJOR = 1
# 1.1: regression and multiclass models, multi-slot optimizer state;
# 1.2: the "input" header key (how the training rows were read: wide Parquet's column map)
# 1.3: the "features" header key
FORMAT_MINOR = 3
# 2.0: a model with the "feature_ids" array (a slot per feature id that occurs,
# fmcli.data.idmap).  It is a new major version so that a reader of 1.x, which
# would take its slots for feature ids and score wrongly, refuses it; every
# other model is still written as 1.3 and read by 1.x readers.
IDMAP_MAJOR, IDMAP_MINOR = 2, 0
# 1.4 / 2.1: an FmFM model (the "field_matrices" array); other models are
# still written as 1.3 / 2.0, so that every reader that can use them reads them
FMFM_MINOR = {FORMAT_MAJOR: 4, IDMAP_MAJOR: 1}
# the newest minor version this reader knows, per major version
_KNOWN = dict(FMFM_MINOR)
ALIGNMENT = 64
MAX_HEADER_LEN = 16 * 1024 * 1024
MAX_NDIM = 32

#: Array element types a model file may hold, by their name in the header.
DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype("<f4"),
    "float64": np.dtype("<f8"),
    "int32": np.dtype("<i4"),
    "int64": np.dtype("<i8"),
    "uint8": np.dtype("u1"),
    "float16": np.dtype("<f2"),   # smaller model files (fm convert --dtype float16)
    "int8": np.dtype("i1"),       # quantized factors (fm convert --dtype int8)
}

_PREFIX = struct.Struct("<8sHHIQ")
_TRAILER = struct.Struct("<8sQII")
PREFIX_SIZE = _PREFIX.size  # 24
TRAILER_SIZE = _TRAILER.size  # 24

_CHUNK = 16 * 1024 * 1024
_CRC_CHUNK = 1 << 20   # the checksum pass reads this much at a time: crc32 then finds it in cache


def _align(n: int) -> int:
    return -(-n // ALIGNMENT) * ALIGNMENT


# --------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------


def _header_default(obj: Any) -> Any:
    """Let numpy scalars and small arrays appear in a header."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"header value of type {type(obj).__name__} is not JSON serializable")


def json_safe(obj: Any) -> Any:
    """`obj` ready for a strict JSON header: NaN and infinities (an undefined
    metric, say) become None (null), numpy scalars and arrays plain numbers
    and lists, tuples lists.  Anything else is left for the encoder, which
    refuses what JSON cannot hold (so a bug fails loudly, never writes a
    file that readers reject)."""
    if isinstance(obj, (np.generic, np.ndarray)):
        obj = obj.tolist()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def _encode_header(header: Mapping[str, Any]) -> bytes:
    text = json.dumps(
        header,
        sort_keys=False,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
        default=_header_default,
    )
    return text.encode("utf-8")


def _storage_dtype(name: str, array: np.ndarray) -> tuple[str, np.dtype]:
    """The header dtype name and little-endian dtype ``array`` is stored as."""
    little = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    for dtype_name, dtype in DTYPES.items():
        if little == dtype:
            return dtype_name, dtype
    allowed = ", ".join(DTYPES)
    raise ValueError(f"array {name!r} has unsupported dtype {array.dtype}; expected one of {allowed}")


@dataclass(frozen=True)
class _Planned:
    name: str
    array: np.ndarray
    dtype_name: str
    dtype: np.dtype
    nbytes: int


def _layout(header: Mapping[str, Any], planned: list[_Planned]) -> tuple[bytes, int, list[int]]:
    """Find the header bytes, data start and array offsets.

    The offsets are part of the header, whose length decides where the data
    starts; iterate to the (monotone, hence reached) fixed point.
    """

    def offsets_from(data_start: int) -> list[int]:
        offsets, pos = [], data_start
        for item in planned:
            pos = _align(pos)
            offsets.append(pos)
            pos += item.nbytes
        return offsets

    def encode(offsets: list[int]) -> bytes:
        table = [
            {
                "name": item.name,
                "dtype": item.dtype_name,
                "shape": list(item.array.shape),
                "offset": offset,
                "nbytes": item.nbytes,
            }
            for item, offset in zip(planned, offsets)
        ]
        return _encode_header({**header, "arrays": table})

    data_start = _align(PREFIX_SIZE + len(encode(offsets_from(0))))
    while True:
        offsets = offsets_from(data_start)
        blob = encode(offsets)
        needed = _align(PREFIX_SIZE + len(blob))
        if needed == data_start:
            return blob, data_start, offsets
        data_start = needed


class _CRCWriter:
    """Write to a file while tracking the position and a running CRC-32."""

    def __init__(self, fobj: IO[bytes]):
        self._f = fobj
        self.pos = 0
        self.crc = 0

    def write(self, data: Any) -> None:
        view = memoryview(data).cast("B")
        if not view.nbytes:
            return
        self._f.write(view)
        self.crc = crc32(view, self.crc)
        self.pos += view.nbytes

    def pad_to(self, pos: int) -> None:
        if pos < self.pos:
            raise AssertionError("model file layout went backwards")
        self.write(bytes(pos - self.pos))


def _array_chunks(array: np.ndarray, dtype: np.dtype) -> Iterator[np.ndarray]:
    """Yield C-ordered little-endian byte blocks of ``array``, about 16 MiB each.

    A contiguous array already in the storage byte order is yielded as a
    single view without copying; anything else is converted a block of rows
    at a time so that memory stays bounded.
    """
    if array.size == 0:
        return
    if array.ndim == 0:
        yield np.ascontiguousarray(array.reshape(1), dtype=dtype).view(np.uint8)
        return
    if array.dtype == dtype and array.flags.c_contiguous:
        yield array.reshape(-1).view(np.uint8)
        return
    row_bytes = max(1, array[0].size * dtype.itemsize)
    rows = max(1, _CHUNK // row_bytes)
    for start in range(0, array.shape[0], rows):
        block = np.ascontiguousarray(array[start : start + rows], dtype=dtype)
        yield block.reshape(-1).view(np.uint8)


def write_model_file(
    path: str | os.PathLike[str] | io.BytesIO,
    header: Mapping[str, Any],
    arrays: Mapping[str, np.ndarray],
) -> None:
    """Write a model file atomically.

    Args:
        path: destination; replaced atomically (see :func:`atomic_output`),
            or an ``io.BytesIO`` that receives the whole file.
        header: JSON-serialisable metadata.  Must not contain ``"arrays"``,
            which the writer fills in.  A ``"format"`` key is added (as
            ``"1.3"``, or ``"2.0"`` for a model with ``feature_ids``, each one
            minor version up for an FmFM model (``field_matrices``): the version
            written) unless present, in which case it
            must say that.
            Numpy scalars are accepted and stored as plain JSON numbers.
        arrays: name to array.  Arrays are stored in C order and little-endian
            byte order (big-endian input is converted); the dtype must be one
            of float32, float64, int32, int64, uint8, float16 or int8.

    Raises:
        ValueError: a bad header (``"arrays"`` present, NaN or infinity, a
            wrong ``"format"``) or an unsupported array dtype or name.
        TypeError: a header value that JSON cannot represent.
        OutputError: the file cannot be created or written.
    """
    if not isinstance(header, Mapping):
        raise TypeError("header must be a mapping")
    if "arrays" in header:
        raise ValueError('header must not contain "arrays"; the writer computes it')
    major, minor = (IDMAP_MAJOR, IDMAP_MINOR) if "feature_ids" in arrays else (FORMAT_MAJOR, FORMAT_MINOR)
    if "field_matrices" in arrays:
        minor = FMFM_MINOR[major]
    version = f"{major}.{minor}"
    if "format" in header and header["format"] != version:
        raise ValueError(f'header "format" is {header["format"]!r}; this writer produces {version!r}')
    full_header = {"format": version, **{k: v for k, v in header.items() if k != "format"}}

    planned: list[_Planned] = []
    for name, value in arrays.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"array names must be non-empty strings, got {name!r}")
        array = np.asarray(value)
        dtype_name, dtype = _storage_dtype(name, array)
        nbytes = math.prod(array.shape) * dtype.itemsize
        planned.append(_Planned(name, array, dtype_name, dtype, nbytes))

    blob, data_start, offsets = _layout(full_header, planned)

    def emit(fobj: IO[bytes]) -> None:
        out = _CRCWriter(fobj)
        out.write(_PREFIX.pack(MAGIC, major, minor, 0, len(blob)))
        out.write(blob)
        out.pad_to(data_start)
        for item, offset in zip(planned, offsets):
            out.pad_to(offset)
            for chunk in _array_chunks(item.array, item.dtype):
                out.write(chunk)
        payload_end = out.pos
        fobj.write(_TRAILER.pack(TRAILER_MAGIC, payload_end, out.crc, 0))

    if isinstance(path, io.BytesIO):
        # in memory (Model.to_bytes): the whole file, from the buffer's start
        path.seek(0)
        path.truncate()
        emit(path)
        return
    target = os.fspath(path)
    try:
        with atomic_output(target, "wb") as fobj:
            emit(fobj)
    except OSError as exc:
        raise OutputError(f"cannot write output {target}: {exc.strerror or exc}") from exc


# --------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _ArraySpec:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int
    nbytes: int


@dataclass(frozen=True)
class _Structure:
    header: dict[str, Any]
    specs: list[_ArraySpec]
    payload_end: int
    stored_crc: int


def _open(path: str | io.BytesIO) -> BinaryIO:
    if isinstance(path, io.BytesIO):    # a whole file in memory (Model.from_bytes)
        path.seek(0)
        return path
    try:
        f = open(path, "rb")
    except FileNotFoundError as exc:
        raise InputNotFoundError(f"{path}: no such model file") from exc
    except IsADirectoryError as exc:
        raise InputNotFoundError(f"{path}: is a directory, not a model file") from exc
    except OSError as exc:
        raise InputNotFoundError(f"{path}: cannot open model file: {exc.strerror or exc}") from exc
    try:
        regular = stat.S_ISREG(os.fstat(f.fileno()).st_mode)
    except OSError:
        regular = True     # _read_structure reports it
    if regular:
        return f
    # A pipe, FIFO or /dev/fd/N (a shell's <(...)) can be read only once and
    # neither seeked nor mapped: read it whole into memory, then as a file.
    with f:
        try:
            data = f.read()
        except OSError as exc:
            raise ModelFormatError(f"cannot read model file: {exc.strerror or exc}", path) from exc
    return io.BytesIO(data)


def _size(f: BinaryIO) -> int:
    """The size of a model file opened by _open."""
    if isinstance(f, io.BytesIO):
        return len(f.getbuffer())
    return os.fstat(f.fileno()).st_size


def _read_exact(f: BinaryIO, offset: int, size: int, path: str, what: str) -> bytes:
    try:
        f.seek(offset)
        data = f.read(size)
    except OSError as exc:
        raise ModelFormatError(f"cannot read {what} at offset {offset}: {exc.strerror or exc}", path) from exc
    if len(data) != size:
        raise ModelFormatError(f"file truncated while reading {what} at offset {offset}", path)
    return data


def _describe_bad_magic(head: bytes) -> str:
    if head[:4] == MAGIC[:4]:
        return (
            "not a valid fmcli model file (bad magic): the signature looks altered, "
            "as by a text-mode transfer that converted line endings"
        )
    return "not an fmcli model file (bad magic)"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"duplicate key {key!r}")
        obj[key] = value
    return obj


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_array_table(table: Any, header_end: int, payload_end: int, path: str) -> list[_ArraySpec]:
    if not isinstance(table, list):
        raise ModelFormatError('header "arrays" is missing or not a list', path)
    specs: list[_ArraySpec] = []
    names: set[str] = set()
    prev_end = header_end
    for i, entry in enumerate(table):
        where = f'header "arrays"[{i}]'
        if not isinstance(entry, dict):
            raise ModelFormatError(f"{where} is not an object", path)
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise ModelFormatError(f'{where}: "name" is missing or not a non-empty string', path)
        where = f"array {name!r}"
        if name in names:
            raise ModelFormatError(f"{where} appears twice in the header", path)
        names.add(name)
        dtype_name = entry.get("dtype")
        if not isinstance(dtype_name, str) or dtype_name not in DTYPES:
            raise ModelFormatError(f"{where} has unknown dtype {dtype_name!r}", path)
        dtype = DTYPES[dtype_name]
        shape = entry.get("shape")
        if not isinstance(shape, list) or len(shape) > MAX_NDIM:
            raise ModelFormatError(f'{where}: "shape" is not a list of at most {MAX_NDIM} integers', path)
        if not all(_is_int(dim) and dim >= 0 for dim in shape):
            raise ModelFormatError(f'{where}: "shape" {shape!r} has a negative or non-integer entry', path)
        offset, nbytes = entry.get("offset"), entry.get("nbytes")
        if not _is_int(offset) or offset < 0:
            raise ModelFormatError(f'{where}: "offset" is not a non-negative integer', path)
        if not _is_int(nbytes) or nbytes < 0:
            raise ModelFormatError(f'{where}: "nbytes" is not a non-negative integer', path)
        expected = math.prod(shape) * dtype.itemsize
        if nbytes != expected:
            raise ModelFormatError(
                f"{where}: nbytes {nbytes} does not match shape {shape} of {dtype_name} ({expected} bytes)",
                path,
            )
        if offset % ALIGNMENT:
            raise ModelFormatError(f"{where}: offset {offset} is not a multiple of {ALIGNMENT}", path)
        if offset < header_end:
            raise ModelFormatError(
                f"{where}: offset {offset} is inside the header (ends at {header_end})", path
            )
        if offset < prev_end:
            raise ModelFormatError(
                f"{where}: offset {offset} overlaps or precedes the previous array (ends at {prev_end})", path
            )
        end = offset + nbytes
        if end > payload_end:
            raise ModelFormatError(
                f"{where}: bytes [{offset}, {end}) extend beyond the payload end at {payload_end}", path
            )
        prev_end = end
        specs.append(_ArraySpec(name, dtype, tuple(shape), offset, nbytes))
    return specs


def _read_structure(f: BinaryIO, path: str) -> _Structure:
    """Validate everything but the checksum; allocates no array memory."""
    try:
        size = _size(f)
    except OSError as exc:
        raise ModelFormatError(f"cannot stat model file: {exc.strerror or exc}", path) from exc
    if size == 0:
        raise ModelFormatError("file is empty, not an fmcli model file", path)
    head = _read_exact(f, 0, min(size, PREFIX_SIZE), path, "file signature")
    if head[: len(MAGIC)] != MAGIC[: len(head)]:
        raise ModelFormatError(_describe_bad_magic(head), path)
    if size < PREFIX_SIZE + TRAILER_SIZE:
        raise ModelFormatError(
            f"file is truncated: {size} bytes, shorter than the fixed {PREFIX_SIZE + TRAILER_SIZE}-byte "
            "prefix and trailer",
            path,
        )
    _, major, minor, flags, header_len = _PREFIX.unpack(head)
    if major > max(_KNOWN):
        raise ModelFormatError(
            f"model format {major}.{minor} is newer than this fmcli supports (<= {max(_KNOWN)}.x); "
            "upgrade fmcli",
            path,
        )
    if major not in _KNOWN:
        raise ModelFormatError(
            f"model format {major}.{minor} is not supported by this fmcli (expected "
            f"{' or '.join(f'{m}.x' for m in sorted(_KNOWN))})", path
        )
    if flags and minor <= _KNOWN[major]:
        raise ModelFormatError(f"reserved flags field at offset 12 is {flags:#x}, expected 0", path)
    header_end = PREFIX_SIZE + header_len
    limit = min(MAX_HEADER_LEN, size - PREFIX_SIZE - TRAILER_SIZE)
    if limit < 1:
        raise ModelFormatError(f"file is truncated: {size} bytes leave no room for a header", path)
    if header_len == 0 or header_len > limit:
        raise ModelFormatError(
            f"header length {header_len} at offset 16 is out of bounds (must be 1..{limit} for this "
            f"{size}-byte file)",
            path,
        )

    trailer_at = size - TRAILER_SIZE
    trailer = _read_exact(f, trailer_at, TRAILER_SIZE, path, "trailer")
    end_magic, payload_end, stored_crc, reserved = _TRAILER.unpack(trailer)
    if end_magic != TRAILER_MAGIC:
        raise ModelFormatError(
            f"bad trailer magic at offset {trailer_at}: the file is truncated or corrupt", path
        )
    if payload_end != trailer_at:
        raise ModelFormatError(
            f"trailer records payload end {payload_end} but the trailer starts at offset {trailer_at}: "
            "the file is truncated or corrupt",
            path,
        )
    if reserved:
        raise ModelFormatError(f"reserved trailer field at offset {trailer_at + 20} is not zero", path)
    if payload_end < header_end:
        raise ModelFormatError(f"header (ends at {header_end}) overlaps the trailer at {payload_end}", path)

    raw = _read_exact(f, PREFIX_SIZE, header_len, path, "header")
    try:
        header = json.loads(
            raw.decode("utf-8"),
            object_pairs_hook=_unique_object,
            parse_constant=_reject_constant,
        )
    except (ValueError, RecursionError) as exc:
        message = f"header at offset {PREFIX_SIZE} is not valid UTF-8 JSON: {exc}"
        raise ModelFormatError(message, path) from exc
    if not isinstance(header, dict):
        raise ModelFormatError(f"header at offset {PREFIX_SIZE} is not a JSON object", path)
    specs = _parse_array_table(header.get("arrays"), header_end, payload_end, path)
    return _Structure(header, specs, payload_end, stored_crc)


def _scan_file(
    f: BinaryIO,
    structure: _Structure,
    path: str,
    verify: bool,
    finite: Callable[[str], str | None] | None,
) -> None:
    """Read the file once, through the file object (not a memory map, whose
    pages would stay in the resident set) a block at a time: with `verify`,
    check the CRC-32 of bytes [0, payload_end); with `finite`, check that
    every float array it names holds no NaN or infinity.

    ``finite(name)`` gives the words that name an array in an error
    ("parameter array"), or None to leave the array unchecked.  Without
    `verify` only the checked arrays' bytes are read.  A checksum mismatch is
    reported before a non-finite value: in a corrupt file that is the cause.
    """
    checks = []
    if finite is not None:
        for spec in structure.specs:
            what = finite(spec.name) if spec.dtype.kind == "f" and spec.nbytes else None
            if what:
                checks.append((spec, what))
    ranges = ([(0, structure.payload_end)] if verify
              else [(spec.offset, spec.offset + spec.nbytes) for spec, _ in checks])
    if not ranges:
        return
    crc, bad = 0, None
    buf = bytearray(min(_CRC_CHUNK, max(1, max(end - start for start, end in ranges))))
    view = memoryview(buf)
    doing = "verifying the checksum" if verify else "checking the arrays"
    for start, end in ranges:
        pos = start
        try:
            f.seek(start)
            while pos < end:
                # Fill the whole block: blocks then start at multiples of its
                # size from a 64-aligned offset, so no element straddles two.
                want, n = min(len(buf), end - pos), 0
                while n < want:
                    got = f.readinto(view[n:want])
                    if not got:
                        raise ModelFormatError(f"file truncated at offset {pos + n} while {doing}", path)
                    n += got
                if verify:
                    crc = crc32(view[:n], crc)
                if bad is None:
                    for spec, what in checks:
                        bad = bad or _nonfinite_in_block(buf, pos, n, spec, what)
                pos += n
        except OSError as exc:
            raise ModelFormatError(f"cannot read at offset {pos}: {exc.strerror or exc}", path) from exc
    if verify:
        _check_crc(crc, structure, path)
    if bad is not None:
        raise ModelFormatError(bad, path)


def _nonfinite_in_block(buf: bytearray, pos: int, n: int, spec: _ArraySpec, what: str) -> str | None:
    """The error for the first NaN or infinity of `spec`'s elements among the
    block of `n` bytes at file offset `pos` held in `buf`; None if there is none."""
    lo, hi = max(spec.offset, pos), min(spec.offset + spec.nbytes, pos + n)
    if lo >= hi:
        return None
    size = spec.dtype.itemsize
    ok = np.isfinite(np.frombuffer(buf, dtype=spec.dtype, count=(hi - lo) // size, offset=lo - pos))
    if ok.all():
        return None
    first = int(np.argmin(ok))
    value = float(np.frombuffer(buf, dtype=spec.dtype, count=1, offset=lo - pos + first * size)[0])
    shown = "NaN" if math.isnan(value) else "+inf" if value > 0 else "-inf"
    index = np.unravel_index((lo - spec.offset) // size + first, spec.shape) if spec.shape else ()
    where = f" at [{', '.join(str(int(i)) for i in index)}]" if index else ""
    return (f"{what} {spec.name!r} holds a non-finite value ({shown}){where}: the file is corrupt "
            "or was written by a run that diverged")


def _check_crc(actual: int, struct_: _Structure, path: str) -> None:
    if actual != struct_.stored_crc:
        raise ModelFormatError(
            f"checksum mismatch over bytes [0, {struct_.payload_end}) "
            f"(stored {struct_.stored_crc:#010x}, computed {actual:#010x}): file is corrupt",
            path,
        )


def _read_array(f: BinaryIO, spec: _ArraySpec, path: str) -> np.ndarray:
    array = np.empty(spec.shape, dtype=spec.dtype)
    if not spec.nbytes:
        return array
    dest = memoryview(array.reshape(-1).view(np.uint8))
    done = 0
    try:
        f.seek(spec.offset)
        while done < spec.nbytes:
            n = f.readinto(dest[done : min(done + _CHUNK, spec.nbytes)])
            if not n:
                raise ModelFormatError(
                    f"file truncated at offset {spec.offset + done} while reading array {spec.name!r}", path
                )
            done += n
    except OSError as exc:
        raise ModelFormatError(
            f"cannot read array {spec.name!r} at offset {spec.offset + done}: {exc.strerror or exc}", path
        ) from exc
    return array


def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Validate a model file's structure and return its JSON header.

    Every structural check of :func:`read_model_file` is made, but the
    checksum is not computed and no array is read, so this is cheap even for
    very large models.  The returned header includes the ``"arrays"`` table.

    Raises:
        InputNotFoundError: ``path`` does not exist or cannot be opened.
        ModelFormatError: the file is not a valid model file.
    """
    name = os.fspath(path)
    with _open(name) as f:
        return _read_structure(f, name).header


def read_model_file(
    path: str | os.PathLike[str] | io.BytesIO,
    *,
    mmap: bool = False,
    verify: bool = True,
    finite: Callable[[str], str | None] | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read a model file.

    All structural checks, with ``verify`` the CRC-32 and with ``finite``
    the values of the named arrays, pass before any array memory is allocated.

    Args:
        path: the model file.
        mmap: return read-only arrays backed by a memory map of the file
            instead of fresh writable copies.  The mapping lives as long as
            any of the arrays does.
        verify: check the CRC-32 of the file (one sequential read).
        finite: refuse a float array holding NaN or infinity among those for
            which ``finite(name)`` gives the words naming it in the error
            (e.g. ``"parameter array"``; None: not checked).  The check is
            made on the checksum pass, so it costs no extra read.

    Returns:
        ``(header, arrays)``: the JSON header (``"arrays"`` table included)
        and the arrays by name, in file order.

    Raises:
        InputNotFoundError: ``path`` does not exist or cannot be opened.
        ModelFormatError: the file is corrupt, truncated, foreign or of a
            newer major format version, or a checked array is not finite.
    """
    header, arrays, check = _read_model_file(path, mmap, verify, finite, later=False)
    check.wait()
    return header, arrays


class PendingCheck:
    """The checksum and value checks of a model file running in a background
    thread (see map_model_file): wait() returns once they passed and raises
    their error (ModelFormatError) if they failed; done() tells without waiting."""

    def __init__(self, run: Callable[[], None] | None = None):
        import threading

        self._error: BaseException | None = None
        self._done = threading.Event()
        if run is None:
            self._done.set()
            return

        def target() -> None:
            try:
                run()
            except BaseException as exc:  # handed to wait()
                self._error = exc
            finally:
                self._done.set()

        threading.Thread(target=target, name="fmcli-model-check", daemon=True).start()

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self) -> None:
        self._done.wait()
        if self._error is not None:
            raise self._error

    @contextlib.contextmanager
    def as_cause(self) -> Iterator[None]:
        """Within it, an error raised gives way to the checks' error when they
        fail: a corrupt file is the cause of what failed with it."""
        try:
            yield
        except Exception:
            self.wait()
            raise


def map_model_file(
    path: str | os.PathLike[str],
    *,
    finite: Callable[[str], str | None] | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray], PendingCheck]:
    """read_model_file(path, mmap=True, finite=finite) that returns once the
    file's structure is checked and its arrays are mapped, while the
    checksum and the values are checked in a background thread.

    Nothing may be made of the arrays that outlives a failed check: the
    caller waits for the returned PendingCheck before it writes anything
    derived from them (fm predict scores the first blocks meanwhile).  An
    input that cannot be mapped (a pipe) is read and checked at once."""
    return _read_model_file(path, True, True, finite, later=True)


def _read_model_file(path, mmap: bool, verify: bool, finite, later: bool):
    """read_model_file and map_model_file: (header, arrays, PendingCheck)."""
    in_memory = isinstance(path, io.BytesIO)    # a whole file's bytes (never mapped)
    name = "<in memory>" if in_memory else os.fspath(path)
    with _open(path if in_memory else name) as f:
        structure = _read_structure(f, name)
        if not mmap or isinstance(f, io.BytesIO):   # (read from a pipe: nothing to map)
            _scan_file(f, structure, name, verify, finite)
            arrays = {spec.name: _read_array(f, spec, name) for spec in structure.specs}
            return structure.header, arrays, PendingCheck()
        # The CRC is read through the file, not the mapping: pages read via
        # the mapping would stay in this process's resident set, and a
        # scorer needs only the parameters' pages, not the optimizer state's.
        if later:
            # its own handle on the same open file (not the name, which may
            # be replaced meanwhile), closed when the checks are done
            scan = open(os.dup(f.fileno()), "rb")  # noqa: SIM115 (closed by run)

            def run() -> None:
                with scan:
                    _scan_file(scan, structure, name, verify, finite)

            check = PendingCheck(run)
        else:
            _scan_file(f, structure, name, verify, finite)
            check = PendingCheck()
        try:
            mapping = _mmap.mmap(f.fileno(), 0, access=_mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:
            raise ModelFormatError(f"cannot memory-map model file: {exc}", name) from exc
    if len(mapping) < structure.payload_end + TRAILER_SIZE:
        mapping.close()
        raise ModelFormatError("file shrank while being read", name)
    arrays = {}
    for spec in structure.specs:
        count = spec.nbytes // spec.dtype.itemsize
        array = np.frombuffer(mapping, dtype=spec.dtype, count=count, offset=spec.offset).reshape(spec.shape)
        arrays[spec.name] = array
    return structure.header, arrays, check
