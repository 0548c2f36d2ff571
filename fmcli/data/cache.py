"""The binary cache: parsed rows on disk, memory-mapped for later epochs and runs.

A cache file holds chunks of CSR rows exactly as the readers produced them,
so that epochs after the first (and later runs on unchanged inputs) skip
parsing.  Layout (little-endian)::

    offset  size  content
    0       8     magic  b"FMCACHE\\x01"
    8       ...   chunks: for each, its arrays, every one starting on a
                  64-byte boundary (labels f4, weights f4 (optional), lines
                  i8, indptr i8 (rows + 1, from 0), fields i4, features i4,
                  values f4)
    T       n     table: UTF-8 JSON {"version", "key", "meta", "chunks": [...]},
                  each chunk {rows, nnz, file, offset, weights, crc32}
    end-24  8     T (u64), 8: n (u64), 8: trailer magic b"FMCEND\\x00\\x01"

The table comes last, so a cache is complete only once its writer has
finished; the writer works on a temporary name and renames it into place.
Opening checks the trailer, the table, every offset against the file size,
the key (a fingerprint of the inputs and of the parse options) and every
chunk's CRC-32: a truncated, corrupt or stale cache is never used.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
import tempfile
import zlib
from collections.abc import Iterator, Sequence

import numpy as np

from .batch import Batch

MAGIC = b"FMCACHE\x01"
TRAILER = b"FMCEND\x00\x01"
VERSION = 1
_ALIGN = 64
_TAIL = struct.Struct("<QQ8s")
_FIELDS = (("labels", "<f4"), ("weights", "<f4"), ("lines", "<i8"), ("indptr", "<i8"),
           ("fields", "<i4"), ("features", "<i4"), ("values", "<f4"))


class CacheInvalid(Exception):
    """The cache file cannot be used (missing, truncated, corrupt or stale)."""


def default_cache_dir() -> str:
    """$FMCLI_CACHE_DIR, else $XDG_CACHE_HOME/fmcli, else ~/.cache/fmcli."""
    explicit = os.environ.get("FMCLI_CACHE_DIR")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fmcli")


def fingerprint(path: str, sample: int = 1 << 20) -> dict:
    """What identifies an input file's content: its size, modification time
    and a hash of its first and last `sample` bytes."""
    st = os.stat(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(sample))
        if st.st_size > sample:
            f.seek(max(sample, st.st_size - sample))
            h.update(f.read(sample))
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "sha256_head_tail": h.hexdigest()}


def cache_key(fingerprints: Sequence[dict], options: dict) -> str:
    """The key of a cache built from inputs with these fingerprints (see
    :func:`fingerprint`) and parse `options`."""
    doc = {"version": VERSION, "inputs": list(fingerprints), "options": options}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def cache_path(cache_dir: str, key: str) -> str:
    return os.path.join(cache_dir, f"{key[:32]}.fmcache")


def _pad(f) -> int:
    pos = f.tell()
    gap = -pos % _ALIGN
    if gap:
        f.write(b"\0" * gap)
    return pos + gap


class CacheWriter:
    """Append chunks to a new cache file; `finish` makes it visible atomically."""

    def __init__(self, path: str | None, directory: str):
        os.makedirs(directory, exist_ok=True)
        self.path = path
        fd, self.tmp = tempfile.mkstemp(prefix=".fmcache-", suffix=".tmp", dir=directory)
        self.f = os.fdopen(fd, "wb")
        self.f.write(MAGIC)
        self.chunks: list[dict] = []

    def add(self, batch: Batch, file: str) -> None:
        rows, nnz = batch.n_rows, batch.nnz
        lines = batch.lines if batch.lines is not None else np.zeros(rows, np.int64)
        arrays = {"labels": batch.labels, "weights": batch.weights, "lines": lines,
                  "indptr": batch.indptr - batch.indptr[0], "fields": batch.fields,
                  "features": batch.features, "values": batch.values}
        start = _pad(self.f)
        crc = 0
        for name, dtype in _FIELDS:
            a = arrays[name]
            if a is None:
                continue
            _pad(self.f)
            data = memoryview(np.ascontiguousarray(a, dtype=dtype)).cast("B")
            crc = zlib.crc32(data, crc)
            self.f.write(data)
        self.chunks.append({"rows": rows, "nnz": nnz, "file": file, "offset": start,
                            "weights": batch.weights is not None, "crc32": crc})

    def finish(self, key: str, meta: dict) -> str:
        """Write the table and put the file in place; returns its path."""
        table = json.dumps({"version": VERSION, "key": key, "meta": meta, "chunks": self.chunks},
                           separators=(",", ":")).encode()
        pos = _pad(self.f)
        self.f.write(table)
        self.f.write(_TAIL.pack(pos, len(table), TRAILER))
        # No fsync: after a crash a half-written cache fails its checks on
        # opening and is rebuilt, so durability buys nothing here.
        self.f.close()
        final = self.path or self.tmp
        os.replace(self.tmp, final)
        return final

    def abort(self) -> None:
        try:
            self.f.close()
        finally:
            try:
                os.unlink(self.tmp)
            except OSError:
                pass


class CacheFile:
    """A validated cache, memory-mapped; chunks come out as Batch views."""

    def __init__(self, path: str, key: str | None = None, verify: bool = True):
        self.path = path
        try:
            with open(path, "rb") as f:
                self.mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:
            raise CacheInvalid(f"cannot open: {exc}") from None
        try:
            self._validate(key, verify)
        except Exception:
            self.mm.close()
            raise

    def _validate(self, key: str | None, verify: bool) -> None:
        size = len(self.mm)
        if size < len(MAGIC) + _TAIL.size or self.mm[: len(MAGIC)] != MAGIC:
            raise CacheInvalid("not a cache file, or truncated")
        pos, length, trailer = _TAIL.unpack(self.mm[size - _TAIL.size :])
        if trailer != TRAILER or pos + length + _TAIL.size != size or pos < len(MAGIC):
            raise CacheInvalid("truncated or incomplete")
        try:
            table = json.loads(bytes(self.mm[pos : pos + length]))
            if table["version"] != VERSION:
                raise CacheInvalid(f"cache version {table['version']}")
            self.key, self.meta, self.chunks = table["key"], table["meta"], table["chunks"]
        except (ValueError, KeyError, TypeError) as exc:
            raise CacheInvalid(f"bad table ({exc})") from None
        if key is not None and self.key != key:
            raise CacheInvalid("stale (built from other inputs or options)")
        self._layout = []
        for c in self.chunks:
            off = int(c["offset"])
            rows, nnz = int(c["rows"]), int(c["nnz"])
            if rows < 0 or nnz < 0 or off % _ALIGN:
                raise CacheInvalid("bad chunk entry")
            spans = {}
            for name, dtype in _FIELDS:
                if name == "weights" and not c["weights"]:
                    continue
                off += -off % _ALIGN
                count = {"indptr": rows + 1, "fields": nnz, "features": nnz, "values": nnz}.get(name, rows)
                nbytes = count * np.dtype(dtype).itemsize
                spans[name] = (off, count, dtype)
                off += nbytes
            if off > pos:
                raise CacheInvalid("chunk beyond the table")
            self._layout.append(spans)
            if verify:
                crc = 0
                view = memoryview(self.mm)
                for name, (o, count, dtype) in spans.items():
                    crc = zlib.crc32(view[o : o + count * np.dtype(dtype).itemsize], crc)
                view.release()
                self.release(len(self._layout) - 1)   # keep resident memory bounded
                if crc != c["crc32"]:
                    raise CacheInvalid("checksum mismatch (corrupt)")

    def __len__(self) -> int:
        return len(self.chunks)

    def chunk(self, i: int) -> Batch:
        """Chunk i as a Batch of read-only views into the mapping."""
        spans = self._layout[i]
        arr = {name: np.frombuffer(self.mm, dtype=dtype, count=count, offset=o)
               for name, (o, count, dtype) in spans.items()}
        batch = Batch(arr["labels"], arr["indptr"], arr["fields"], arr["features"], arr["values"],
                      arr["lines"], arr.get("weights"))
        return batch

    def release(self, i: int) -> None:
        """Tell the OS chunk i's pages may go (bounded resident memory when streaming)."""
        spans = self._layout[i]
        start = min(o for o, _, _ in spans.values())
        end = max(o + count * np.dtype(dtype).itemsize for o, count, dtype in spans.values())
        page = mmap.PAGESIZE
        start -= start % page
        if hasattr(self.mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            try:
                self.mm.madvise(mmap.MADV_DONTNEED, start, end - start)
            except (OSError, ValueError):
                pass

    def close(self) -> None:
        try:
            self.mm.close()
        except BufferError:
            pass   # views still alive; the mapping goes with them

    def iter_chunks(self, order: Sequence[int] | None = None) -> Iterator[tuple[Batch, str]]:
        for i in (range(len(self)) if order is None else order):
            yield self.chunk(i), self.chunks[i]["file"]
