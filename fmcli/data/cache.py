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
                  each chunk {rows, nnz, file, offset, weights, checksum}
    end-24  8     T (u64), 8: n (u64), 8: trailer magic b"FMCEND\\x00\\x01"

The table comes last, so a cache is complete only once its writer has
finished; the writer works on a temporary name and renames it into place.
Opening checks the trailer, the table, every offset against the file size
and the key (a fingerprint of the inputs and of the parse options).

Chunks are read with ``pread`` into private memory, never memory-mapped, and
each one's checksum (a 64-bit hash of the chunk's bytes from its first array
to the end of its last, padding included: fmcli/_core/checksum.h, fast
enough to check on every read) is checked on every read, piece by piece as
the bytes arrive, while they are still in the processor's cache: a cache
that is truncated,
overwritten or otherwise changed while a run uses it raises
:class:`CacheInvalid` (the reader rebuilds it or stops with one line) and
can never crash the process (no SIGBUS) or hand the kernels garbage.

What identifies an input (:func:`fingerprint`) includes what the kernel
changes on every write or copy -- the inode, the change time (ctime), the
size and the modification time -- besides a hash of its first and last MiB,
so a file changed in the middle behind a restored mtime (``cp -p``,
``rsync -a``, ``touch -r``) is never served from a stale cache.  A copied
file may rebuild its cache; it never reuses a wrong one.  ``check="content"``
hashes every byte instead, for a check that does not trust file metadata.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterator, Sequence

import numpy as np

from .._core._parse import Checksum64
from ..safepaths import locked_temp, release, sweep_stale, temp_pattern
from .batch import Batch

MAGIC = b"FMCACHE\x01"
TRAILER = b"FMCEND\x00\x01"
VERSION = 2          # 2: fingerprints with inode and ctime; 64-bit chunk checksums
_PIECE = 512 << 10   # bytes read (and checked) at a time: they are checked while in cache
CHECKS = ("stat", "content")   # how an input is recognised: see fingerprint()
_ALIGN = 64
_TAIL = struct.Struct("<QQ8s")
_FIELDS = (("labels", "<f4"), ("weights", "<f4"), ("lines", "<i8"), ("indptr", "<i8"),
           ("fields", "<i4"), ("features", "<i4"), ("values", "<f4"))


_ZEROS = bytes(_ALIGN)


class CacheInvalid(Exception):
    """The cache file cannot be used (missing, truncated, corrupt or stale)."""


def default_cache_dir() -> str:
    """$FMCLI_CACHE_DIR, else $XDG_CACHE_HOME/fmcli, else ~/.cache/fmcli."""
    explicit = os.environ.get("FMCLI_CACHE_DIR")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fmcli")


def fingerprint(path: str, sample: int = 1 << 20, check: str = "stat") -> dict:
    """What identifies an input file's content.

    check "stat": its device, inode, size, modification and change times
    (the kernel sets ctime on every write, and a copy gets a new inode and
    ctime whatever mtime it is given) and a hash of its first and last
    `sample` bytes.  check "content": the same plus a SHA-256 of every byte."""
    if check not in CHECKS:
        raise ValueError(f"check must be one of {', '.join(CHECKS)}, got {check!r}")
    st = os.stat(path)
    h = hashlib.sha256()
    whole = hashlib.sha256() if check == "content" else None
    with open(path, "rb") as f:
        if whole is not None:
            for block in iter(lambda: f.read(1 << 20), b""):
                whole.update(block)
            f.seek(0)
        h.update(f.read(sample))
        if st.st_size > sample:
            f.seek(max(sample, st.st_size - sample))
            h.update(f.read(sample))
    out = {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
           "ctime_ns": st.st_ctime_ns, "dev": st.st_dev, "ino": st.st_ino,
           "sha256_head_tail": h.hexdigest()}
    if whole is not None:
        out["sha256"] = whole.hexdigest()
    return out


def cache_key(fingerprints: Sequence[dict], options: dict) -> str:
    """The key of a cache built from inputs with these fingerprints (see
    :func:`fingerprint`) and parse `options`."""
    doc = {"version": VERSION, "inputs": list(fingerprints), "options": options}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def cache_group(fingerprints: Sequence[dict], options: dict) -> str:
    """What caches of the same inputs (by path) and parse options share,
    whatever the inputs' content: a new version of a file replaces the
    cache of the old one instead of adding to it."""
    doc = {"version": VERSION, "paths": [p.get("path") for p in fingerprints], "options": options}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def cache_path(cache_dir: str, key: str, group: str | None = None) -> str:
    """GROUP-KEY.fmcache (see cache_group), or KEY.fmcache without a group."""
    name = f"{key[:32]}.fmcache" if group is None else f"{group[:16]}-{key[:32]}.fmcache"
    return os.path.join(cache_dir, name)


def remove_older(path: str) -> list[str]:
    """Remove the other caches of `path`'s group (GROUP-*.fmcache): those of
    earlier versions of the same inputs.  A run still reading one keeps
    reading it (it holds the file open; caches are never memory-mapped)."""
    directory, name = os.path.split(path)
    group = name.split("-", 1)[0] + "-"
    removed = []
    try:
        names = os.listdir(directory or os.curdir)
    except OSError:
        return removed
    for other in names:
        if other != name and other.startswith(group) and other.endswith(".fmcache"):
            try:
                os.unlink(os.path.join(directory, other))
                removed.append(other)
            except OSError:
                pass
    return removed


def _pad(f) -> int:
    pos = f.tell()
    gap = -pos % _ALIGN
    if gap:
        f.write(b"\0" * gap)
    return pos + gap


def _chunk_bytes(batch: Batch) -> Iterator[memoryview]:
    """The bytes a chunk is stored as: its arrays in _FIELDS order (weights
    only when it has them), indptr counted from 0."""
    lines = batch.lines if batch.lines is not None else np.zeros(batch.n_rows, np.int64)
    arrays = {"labels": batch.labels, "weights": batch.weights, "lines": lines,
              "indptr": batch.indptr - batch.indptr[0], "fields": batch.fields,
              "features": batch.features, "values": batch.values}
    for name, dtype in _FIELDS:
        if arrays[name] is not None:
            yield memoryview(np.ascontiguousarray(arrays[name], dtype=dtype)).cast("B")


def chunk_checksum(batch: Batch) -> int:
    """The checksum a cache stores for this chunk: of its arrays as written,
    each from a 64-byte boundary (zero padding between them).  The same
    whether the chunk was cached or not, so a data set's digest does not
    depend on the cache."""
    h = Checksum64()
    pos = 0
    for data in _chunk_bytes(batch):
        gap = -pos % _ALIGN
        if gap:
            h.update(_ZEROS[:gap])
        h.update(data)
        pos += gap + data.nbytes
    return h.value()


def data_digest(chunks: Sequence[tuple[int, int, int]]) -> str:
    """One hash of a data set's content from its chunks' (rows, nnz, checksum):
    what a checkpoint compares to tell whether ``--resume`` sees the data it
    was trained on."""
    doc = json.dumps([[int(r), int(n), int(c)] for r, n, c in chunks], separators=(",", ":"))
    return hashlib.sha256(doc.encode()).hexdigest()


_TEMP_PREFIX = ".fmcache-"
_TEMP_NAMES = temp_pattern(_TEMP_PREFIX, ".tmp")   # a CacheWriter's temporary files


class CacheWriter:
    """Append chunks to a new cache file; `finish` makes it visible atomically."""

    def __init__(self, path: str | None, directory: str):
        os.makedirs(directory, exist_ok=True)
        self.path = path
        # Remove what writers killed mid-write left behind; ours stays locked
        # until it is renamed into place or removed, so no other run does
        # the same to it.
        sweep_stale(directory, _TEMP_NAMES)
        fd, self.tmp, self._lock = locked_temp(directory, prefix=_TEMP_PREFIX, suffix=".tmp")
        self.f = os.fdopen(fd, "wb")
        self.f.write(MAGIC)
        self.chunks: list[dict] = []

    def add(self, batch: Batch, file: str) -> None:
        start = _pad(self.f)
        h = Checksum64()
        for data in _chunk_bytes(batch):
            gap = -self.f.tell() % _ALIGN
            if gap:
                self.f.write(_ZEROS[:gap])
                h.update(_ZEROS[:gap])
            self.f.write(data)
            h.update(data)
        self.chunks.append({"rows": batch.n_rows, "nnz": batch.nnz, "file": file, "offset": start,
                            "weights": batch.weights is not None, "checksum": h.value()})

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
        try:
            os.replace(self.tmp, final)
        finally:
            release(self._lock)
            self._lock = None
        return final

    def abort(self) -> None:
        try:
            self.f.close()
        finally:
            try:
                os.unlink(self.tmp)
            except OSError:
                pass
            release(self._lock)
            self._lock = None


class CacheFile:
    """A cache whose layout was checked on opening; chunks are read on demand
    into private memory and verified against their checksum (see the module
    doc), so changes to the file after opening are caught, not trusted."""

    def __init__(self, path: str, key: str | None = None):
        self.path = path
        self._piece: np.ndarray | None = None     # read_into's buffer
        try:
            self.fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise CacheInvalid(f"cannot open: {exc.strerror or exc}") from None
        try:
            self._validate(key)
        except Exception:
            os.close(self.fd)
            self.fd = -1
            raise

    def _pread(self, n: int, offset: int) -> bytes:
        try:
            data = os.pread(self.fd, n, offset)
        except OSError as exc:
            raise CacheInvalid(f"cannot read: {exc.strerror or exc}") from None
        if len(data) != n:
            raise CacheInvalid("truncated")
        return data

    def _validate(self, key: str | None) -> None:
        size = os.fstat(self.fd).st_size
        if size < len(MAGIC) + _TAIL.size or self._pread(len(MAGIC), 0) != MAGIC:
            raise CacheInvalid("not a cache file, or truncated")
        pos, length, trailer = _TAIL.unpack(self._pread(_TAIL.size, size - _TAIL.size))
        if trailer != TRAILER or pos + length + _TAIL.size != size or pos < len(MAGIC):
            raise CacheInvalid("truncated or incomplete")
        try:
            table = json.loads(self._pread(length, pos))
            if table["version"] != VERSION:
                raise CacheInvalid(f"cache version {table['version']}")
            self.key, self.meta, self.chunks = table["key"], table["meta"], table["chunks"]
            if key is not None and self.key != key:
                raise CacheInvalid("stale (built from other inputs or options)")
            self._layout: list[dict[str, tuple[int, int, str]]] = []
            self._bounds: list[tuple[int, int]] = []
            for c in self.chunks:
                off = start = int(c["offset"])
                rows, nnz = int(c["rows"]), int(c["nnz"])
                if (rows < 0 or nnz < 0 or off % _ALIGN or off < len(MAGIC)
                        or not isinstance(c["checksum"], int)):
                    raise CacheInvalid("bad chunk entry")
                spans = {}
                for name, dtype in _FIELDS:
                    if name == "weights" and not c["weights"]:
                        continue
                    off += -off % _ALIGN
                    count = {"indptr": rows + 1, "fields": nnz, "features": nnz, "values": nnz}.get(name, rows)
                    spans[name] = (off - start, count, dtype)
                    off += count * np.dtype(dtype).itemsize
                if off > pos:
                    raise CacheInvalid("chunk beyond the table")
                self._layout.append(spans)
                self._bounds.append((start, off))
        except (ValueError, KeyError, TypeError) as exc:
            raise CacheInvalid(f"bad table ({exc})") from None

    def __len__(self) -> int:
        return len(self.chunks)

    @property
    def digest(self) -> str:
        """The content digest of the cached rows (see :func:`data_digest`)."""
        return data_digest([(c["rows"], c["nnz"], c["checksum"]) for c in self.chunks])

    def chunk_bytes(self, i: int) -> int:
        start, end = self._bounds[i]
        return end - start

    def _pieces(self, i: int, place) -> Iterator[tuple[int, np.ndarray]]:
        """Read chunk i _PIECE bytes at a time, each into place(offset, size)
        (a uint8 array of that size), and yield (offset, that array) as it
        arrives; the checksum is taken piece by piece, while the bytes are
        still in the processor's cache, and checked after the last piece.

        Raises CacheInvalid: the file is shorter than its table says, cannot
        be read, or its bytes fail the chunk's checksum (the pieces yielded
        before were then unchecked: the caller discards them)."""
        start, end = self._bounds[i]
        n = end - start
        h = Checksum64()
        done = 0
        while done < n:
            m = min(_PIECE, n - done)
            target = place(done, m)
            view = memoryview(target)
            try:
                got = 0
                while got < m:          # a whole piece, so that no element is split
                    k = os.preadv(self.fd, [view[got:]], start + done + got)
                    if k <= 0:
                        raise CacheInvalid(f"truncated (chunk {i + 1} of {len(self)})")
                    got += k
            except OSError as exc:
                raise CacheInvalid(f"cannot read chunk {i + 1}: {exc.strerror or exc}") from None
            finally:
                view.release()
            h.update(target)
            yield done, target
            done += m
        if h.value() != self.chunks[i]["checksum"]:
            raise CacheInvalid(f"chunk {i + 1} of {len(self)} fails its checksum (the file was changed)")

    def chunk(self, i: int, buffer: np.ndarray | None = None) -> Batch:
        """Chunk i as a Batch of views into private memory: `buffer` (a uint8
        array of at least chunk_bytes(i), reused by the caller) or a new one.
        Raises CacheInvalid when the file no longer holds what its table says
        (truncated, or bytes that fail the chunk's checksum)."""
        n = self.chunk_bytes(i)
        buf = buffer[:n] if buffer is not None and buffer.shape[0] >= n else np.empty(n, np.uint8)
        for _ in self._pieces(i, lambda offset, size: buf[offset : offset + size]):
            pass
        arr = {name: buf[o : o + count * np.dtype(dtype).itemsize].view(dtype)
               for name, (o, count, dtype) in self._layout[i].items()}
        return Batch(arr["labels"], arr["indptr"], arr["fields"], arr["features"], arr["values"],
                     arr["lines"], arr.get("weights"))

    def read_into(self, i: int, sink) -> None:
        """Read chunk i through one _PIECE-byte buffer: sink(name, first
        element, values) receives each array's values as they arrive (views
        valid during the call), so the chunk is never held whole.  On
        CacheInvalid (raised after the last piece) the sink has been given
        unchecked values, which the caller must discard."""
        if self._piece is None:
            self._piece = np.empty(_PIECE, np.uint8)
        piece_buffer = self._piece
        arrays = [(o, o + count * np.dtype(dtype).itemsize, name, np.dtype(dtype))
                  for name, (o, count, dtype) in self._layout[i].items()]
        for lo, piece in self._pieces(i, lambda offset, size: piece_buffer[:size]):
            hi = lo + piece.shape[0]
            for a0, a1, name, dtype in arrays:
                s0, s1 = max(lo, a0), min(hi, a1)
                if s0 < s1:
                    sink(name, (s0 - a0) // dtype.itemsize, piece[s0 - lo : s1 - lo].view(dtype))

    def verify(self) -> None:
        """Read and check every chunk (CacheInvalid on the first bad one)."""
        buffer = None
        for i in range(len(self)):
            if buffer is None or buffer.shape[0] < self.chunk_bytes(i):
                buffer = np.empty(self.chunk_bytes(i), np.uint8)
            self.chunk(i, buffer)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def iter_chunks(self, order: Sequence[int] | None = None) -> Iterator[tuple[Batch, str]]:
        for i in (range(len(self)) if order is None else order):
            yield self.chunk(i), self.chunks[i]["file"]
