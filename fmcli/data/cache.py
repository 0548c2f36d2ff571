"""The binary cache: parsed rows on disk, read back by later epochs and runs.

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

The caches of a directory are kept under a cap (:func:`resolve_max_size`):
when a run writes a cache, the least recently used others are removed
(:func:`evict`) until all of them fit.  A run records its use of a cache by
setting the file's modification time, and holds a shared ``flock`` on it for
as long as it reads it; a cache is removed only under an exclusive lock
taken without waiting, so a cache another run is reading is never removed
(:func:`remove_cache`).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

try:
    import fcntl
except ImportError:  # pragma: no cover - no flock: nothing is ever seen as in use
    fcntl = None

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


# -- the cap on a cache directory ----------------------------------------------------------

DEFAULT_MAX_BYTES = 10 << 30   # the default cap: at most 10 GiB ...
DEFAULT_FREE_DIVISOR = 10      # ... and at most 1/10 of what the caches' file system could give them
MAX_SIZE_ENV = "FMCLI_CACHE_MAX_SIZE"
SUFFIX = ".fmcache"


@dataclass
class CacheEntry:
    """One finished cache file of a directory."""

    path: str
    bytes: int
    last_used_ns: int     # the file's modification time: set when written and on every hit

    @property
    def name(self) -> str:
        return os.path.basename(self.path)


def cache_entries(directory: str) -> list[CacheEntry]:
    """The caches (regular files named *.fmcache) in `directory`, least
    recently used first; none when it cannot be listed."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    out = []
    for name in names:
        if not name.endswith(SUFFIX) or name.startswith("."):
            continue
        path = os.path.join(directory, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            out.append(CacheEntry(path, st.st_size, st.st_mtime_ns))
    out.sort(key=lambda e: (e.last_used_ns, e.path))
    return out


def default_max_size(directory: str, used: int = 0) -> int:
    """The default cap of `directory`: the smaller of DEFAULT_MAX_BYTES and
    a tenth of the space its file system has free for this user, counting
    the `used` bytes the caches already take as free (so that the cap does
    not shrink as they grow)."""
    probe = os.path.abspath(directory)
    while True:                 # the directory may not exist yet: its nearest ancestor's file system
        try:
            st = os.statvfs(probe)
            break
        except OSError:
            parent = os.path.dirname(probe)
            if parent == probe:
                return DEFAULT_MAX_BYTES
            probe = parent
    free = st.f_bavail * st.f_frsize
    return min(DEFAULT_MAX_BYTES, (free + used) // DEFAULT_FREE_DIVISOR)


def resolve_max_size(directory: str, given: int | None = None,
                     entries: Sequence[CacheEntry] | None = None) -> tuple[int, str]:
    """The cap of `directory` and where it comes from: `given` ("option"),
    else $FMCLI_CACHE_MAX_SIZE ("environment"), else :func:`default_max_size`
    ("default").  A bad $FMCLI_CACHE_MAX_SIZE is a ConfigError."""
    if given is not None:
        return int(given), "option"
    text = os.environ.get(MAX_SIZE_ENV, "").strip()
    if text:
        from ..config import parse_size
        from ..errors import ConfigError

        try:
            return parse_size(text, minimum=0), "environment"
        except ValueError as exc:
            raise ConfigError(f"environment variable {MAX_SIZE_ENV}={text!r}: {exc}") from None
    if entries is None:
        entries = cache_entries(directory)
    return default_max_size(directory, sum(e.bytes for e in entries)), "default"


def _try_lock(fd: int, how: int) -> bool:
    """flock(fd, how | LOCK_NB); False when another open file holds a
    conflicting lock.  A file system without locks counts as unlocked."""
    try:
        fcntl.flock(fd, how | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
    return True


def _open_plain(path: str) -> int:
    return os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))


def in_use(path: str) -> bool:
    """Whether a run holds `path` open for reading (a shared flock on it, see
    CacheFile).  Checked by taking an exclusive lock without waiting and
    dropping it at once."""
    if fcntl is None:  # pragma: no cover
        return False
    try:
        fd = _open_plain(path)
    except OSError:
        return False
    try:
        return not _try_lock(fd, fcntl.LOCK_EX)
    finally:
        os.close(fd)


def remove_cache(path: str) -> bool:
    """Remove the cache at `path` unless a run is reading it: only under an
    exclusive flock taken without waiting, and only while the name still
    names the file locked.  Returns whether it was removed (False: in use,
    or gone or replaced meanwhile).

    Raises:
        OSError: it is there, not in use, and cannot be opened or removed.
    """
    try:
        fd = _open_plain(path)
    except FileNotFoundError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return False
        if fcntl is not None and not _try_lock(fd, fcntl.LOCK_EX):
            return False              # in use: never removed under a reader
        try:
            if not os.path.samestat(st, os.lstat(path)):
                return False          # replaced meanwhile (a rebuilt cache): not ours to judge
            os.unlink(path)
        except FileNotFoundError:
            return False
        return True
    finally:
        os.close(fd)


def evict(directory: str, max_size: int, keep: Sequence[str] = ()) -> tuple[list[CacheEntry], int]:
    """Remove least recently used caches of `directory` (never those in
    `keep`, never one in use) until all of them take at most `max_size`
    bytes.  Returns the caches removed and the bytes the others still take
    (more than `max_size` when what is in use or kept does not fit)."""
    entries = cache_entries(directory)
    total = sum(e.bytes for e in entries)
    kept = {os.path.abspath(k) for k in keep}
    removed = []
    for entry in entries:          # least recently used first
        if total <= max_size:
            break
        if os.path.abspath(entry.path) in kept:
            continue
        try:
            gone = remove_cache(entry.path)
        except OSError:
            continue                  # another user's, a read-only directory: not ours to remove
        if gone:
            removed.append(entry)
            total -= entry.bytes
    return removed, total


def record_use(fd: int, path: str) -> None:
    """Mark the cache open on `fd` as just used (its modification time, which
    eviction orders by).  A cache this user cannot touch is left as it is."""
    try:
        os.utime(fd if os.utime in os.supports_fd else path)
    except OSError:
        pass


def human_size(n: int) -> str:
    """1536 -> '1.5 KiB', 10 << 30 -> '10 GiB' (for notes and listings)."""
    size = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{n} bytes" if unit == "bytes" else f"{size:.1f}".removesuffix(".0") + f" {unit}"
        size /= 1024
    return f"{n} bytes"  # pragma: no cover


def fingerprint(path: str, sample: int = 1 << 20, check: str = "stat") -> dict:
    """What identifies an input file's content.

    check "stat": its device, inode, size, modification and change times
    (the kernel sets ctime on every write, and a copy gets a new inode and
    ctime whatever mtime it is given) and a hash of its first and last
    `sample` bytes.  check "content": the same plus a SHA-256 of every byte."""
    if check not in CHECKS:
        raise ValueError(f"check must be one of {', '.join(CHECKS)}, got {check!r}")
    from . import remote

    if remote.is_url(path):     # what the file system says of it, and its bytes
        return remote.fingerprint(path, sample, check)
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


def sweep_temporaries(directory: str) -> list[str]:
    """Remove the temporary files of cache writers that are gone (killed
    mid-write); a live writer's is left alone (see safepaths.sweep_stale)."""
    return sweep_stale(directory, _TEMP_NAMES)


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

    def _write_table(self, key: str, meta: dict) -> None:
        table = json.dumps({"version": VERSION, "key": key, "meta": meta, "chunks": self.chunks},
                           separators=(",", ":")).encode()
        pos = _pad(self.f)
        self.f.write(table)
        self.f.write(_TAIL.pack(pos, len(table), TRAILER))
        # No fsync: after a crash a half-written cache fails its checks on
        # opening and is rebuilt, so durability buys nothing here.
        self.f.close()

    def finish(self, key: str, meta: dict) -> str:
        """Write the table and put the file in place; returns its path."""
        self._write_table(key, meta)
        final = self.path or self.tmp
        try:
            os.replace(self.tmp, final)
        finally:
            release(self._lock)
            self._lock = None
        return final

    def finish_open(self, key: str, meta: dict) -> "CacheFile":
        """:meth:`finish`, returning the cache opened for reading: it is
        opened (with its shared lock, see CacheFile) before its name appears,
        so that no other run's eviction can remove it in between.  Without a
        path (read once) it keeps its temporary name for the caller to unlink."""
        self._write_table(key, meta)
        final = self.path or self.tmp
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(self._lock, fcntl.LOCK_SH)   # ours, so our reader's shared lock can join it
                except OSError:
                    release(self._lock)      # (no locks here) and never one that would block the reader
                    self._lock = None
            cf = CacheFile(self.tmp)
            try:
                if final != self.tmp:
                    os.replace(self.tmp, final)
                    cf.path = final
            except BaseException:
                cf.close()
                raise
        except BaseException:
            try:
                os.unlink(self.tmp)
            except OSError:
                pass
            raise
        finally:
            release(self._lock)
            self._lock = None
        return cf

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
            # A shared lock for as long as the file is open: eviction and
            # `fm cache clear` leave a cache alone while a run holds it
            # (remove_cache).  It waits only for a remover's moment between
            # its lock and the unlink; the file then stays readable here.
            if fcntl is not None:
                try:
                    fcntl.flock(self.fd, fcntl.LOCK_SH)
                except OSError:
                    pass      # a file system without locks
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

    def __del__(self) -> None:
        # a run that forgets to close its data sets must not keep their
        # caches open (and locked against eviction) for the life of the process
        if getattr(self, "fd", -1) >= 0:
            self.close()
