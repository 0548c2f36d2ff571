"""Training and validation data: any number of inputs read once, as chunks.

The first pass parses every input (text, compressed text, Parquet, stdin)
in bounded memory, collects what the model needs to know before it exists
(largest feature and field ids, classes, row count, label balance) and
writes the rows, chunk by chunk, to the binary cache (fmcli.data.cache).
Every epoch then reads chunks from the cache (checked on every read), or from memory
when the whole data set fits the memory budget.  With the cache turned off
and data larger than the budget, every epoch parses the inputs again.

Chunks never span two input files and hold at most CHUNK_ROWS rows; they
are the unit of out-of-core shuffling (see fmcli.train).

Labels in chunks are what the kernels want: 0/1 (binary), the target
(regression) or the class index (multiclass).  Readers produce them in a
provisional form (binary: as written; multiclass: classes in order of first
appearance); ``label_map`` turns that into the final form when a chunk is
handed out, so a cache never has to be rewritten.

Feature ids work the same way: the first pass notes which ids occur
(fmcli.data.idmap), and when training gives the data set an id map
(:meth:`Dataset.use_id_map`, for ids sparse in their space) chunks are
handed out with each id replaced by its compact slot.  The cache keeps the
ids as read, valid with or without a map.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import CacheError, DataError
from .batch import Batch
from .cache import (CacheFile, CacheInvalid, CacheWriter, cache_group, cache_key, cache_path, chunk_checksum,
                    data_digest, evict, fingerprint, human_size, record_use, remove_older, resolve_max_size)
from .idmap import IdMap, Occurrences, is_sparse
from .text import ReadLimits, TextReader, detect_task, sort_classes

CHUNK_ROWS = 1 << 18
TEXT_BLOCK_BYTES = 64 << 20   # text read per parser call while building a data set


def _parse_workers() -> int:
    """Threads that parse text blocks side by side while a data set is built
    (the same rows as one thread): the CPUs this process may use, up to 4."""
    from ..config import available_cpus

    return max(1, min(4, available_cpus()))


PARSE_WORKERS = _parse_workers()
PARQUET_SUFFIXES = (".parquet", ".pq")


def make_reader(path: str, fmt: str, label_mode: str, limits: ReadLimits, track_lines: bool = True,
                classes: Sequence[str] | None = None, parquet: dict | None = None,
                block_bytes: int | None = None):
    """The reader for one input: Parquet by name or --format parquet, else text.
    `parquet`: ParquetReader's column options."""
    extra = {"classes": list(classes)} if classes is not None else {}
    if fmt == "parquet" or (fmt == "auto" and str(path).lower().endswith(PARQUET_SUFFIXES)):
        from .parquet import ParquetReader

        return ParquetReader(path, label_mode=label_mode, limits=limits, track_lines=track_lines,
                             **extra, **(parquet or {}))
    if block_bytes is not None:
        extra["block_bytes"] = block_bytes
    return TextReader(path, fmt=fmt, label_mode=label_mode, limits=limits, track_lines=track_lines, **extra)


def _inputs(specs: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    from .source import expand_inputs

    if isinstance(specs, (str, os.PathLike)):
        specs = [specs]
    return expand_inputs([os.fspath(s) for s in specs])


@dataclass
class Dataset:
    """Rows of one or more inputs; iterate them with :meth:`chunks`."""

    name: str                       # the inputs' names, comma-separated
    format: str
    task: str
    n_rows: int
    nnz: int
    max_feature: int
    max_field: int
    classes: list[str] | None       # multiclass: label token of each class index
    label_map: np.ndarray | None    # provisional label -> final label (see module doc)
    label_counts: list[int]         # rows per final class (binary: [negatives, positives])
    has_weights: bool
    chunk_rows: list[int]
    chunk_files: list[str]
    bytes_read: int = 0
    seconds: float = 0.0
    skipped: list = field(default_factory=list)   # DataErrors of rows skipped (max_bad_rows)
    n_skipped: int = 0
    fingerprints: list = field(default_factory=list)   # of the input files (fmcli.data.cache.fingerprint)
    cache: CacheFile | None = None
    cached_from: str | None = None  # "hit" (reused), "built", or None
    digest: str = ""                # of the parsed rows (fmcli.data.cache.data_digest)
    _rebuild: Callable[[], "Dataset"] | None = None   # a new cache from the same inputs
    _buffers: list | None = None    # chunks() reads the cache into these (reuse=True)
    _memory: list[Batch] | None = None
    _reparse: Callable[[], Iterator[tuple[Batch, str]]] | None = None
    n_used: int = -1                # distinct feature ids (-1: not known)
    used_ids: np.ndarray | None = None   # those ids, sorted, when sparse (fmcli.data.idmap.is_sparse)
    id_map: IdMap | None = None     # set by use_id_map: chunks carry slots instead of ids

    def use_id_map(self, id_map: IdMap | None) -> None:
        """Hand out chunks with each feature id replaced by its slot in
        `id_map` (ids without one become len(id_map), which models ignore).
        Set once, before the chunks are read."""
        if id_map is None:
            return
        if self.id_map is not None:
            raise ValueError("the data set already has an id map")
        self.id_map = id_map
        if self._memory is not None:     # chunks held in memory change once, here
            self._memory = [None if b is None else self._mapped(b) for b in self._memory]

    def _mapped(self, batch: Batch) -> Batch:
        return Batch(batch.labels, batch.indptr, batch.fields, self.id_map.lookup(batch.features),
                     batch.values, batch.lines, batch.weights)

    @property
    def n_chunks(self) -> int:
        return len(self.chunk_rows)

    @property
    def data_bytes(self) -> int:
        """Bytes the rows take in memory."""
        return self.n_rows * (4 + 8 + 8 + (4 if self.has_weights else 0)) + self.nnz * 12

    def _final(self, batch: Batch) -> Batch:
        labels = batch.labels
        if self.label_map is not None:
            labels = self.label_map[labels.astype(np.int64)]
        elif self.task == "binary":
            labels = (labels > 0).astype(np.float32)
        return Batch(np.ascontiguousarray(labels, np.float32), batch.indptr, batch.fields, batch.features,
                     batch.values, batch.lines, batch.weights)

    def chunks(self, order: Sequence[int] | None = None, compact: bool = False,
               reuse: bool = False) -> Iterator[tuple[int, Batch, str]]:
        """(index, rows, file name) of every chunk, in `order` (default: as read).

        Chunks held in memory are kept compact (see in_memory); they are
        handed out in the plain form unless `compact` says the caller reads
        both.  From a cache, each chunk is read (and its checksum checked)
        by a thread while the caller works on the one before; with `reuse`
        the caller promises to let go of a chunk before it asks for the one
        after the next, and chunks are read into two buffers in turn instead
        of new memory each time."""
        if self._memory is not None:
            for i in (range(self.n_chunks) if order is None else order):
                b = self._memory[int(i)]
                yield int(i), (b if compact else expanded(b)), self.chunk_files[int(i)]
            return
        if self.cache is not None:
            indices = [int(i) for i in (range(self.n_chunks) if order is None else order)]
            # the two buffers stay with the data set from one epoch to the next (fresh
            # memory would be faulted in again every epoch); a second reader at the
            # same time gets its own
            buffers, self._buffers = (self._buffers or [None, None]), None

            def read() -> Iterator[tuple[int, Batch, str]]:
                for n, i in enumerate(indices):
                    buffer = None
                    if reuse:
                        size = self.cache.chunk_bytes(i)
                        if buffers[n % 2] is None or buffers[n % 2].shape[0] < size:
                            buffers[n % 2] = np.empty(size, np.uint8)
                        buffer = buffers[n % 2]
                    chunk = self._final(self._cached_chunk(i, buffer))
                    yield i, (chunk if self.id_map is None else self._mapped(chunk)), self.chunk_files[i]

            try:
                yield from prefetched(read())
            finally:
                self._buffers = buffers
            return
        # no cache, too big for memory: parse again, in file order, the next
        # chunk in a thread while the caller trains on this one (the parser
        # and the kernels both run without the GIL)
        assert self._reparse is not None
        wanted = None if order is None else {int(i) for i in order}
        for i, (batch, name) in enumerate(prefetched(self._reparse())):
            if wanted is None or i in wanted:
                batch = self._final(batch)
                yield i, (batch if self.id_map is None else self._mapped(batch)), name

    def _cached_chunk(self, i: int, buffer) -> Batch:
        """Chunk i from the cache.  A cache found changed or damaged (another
        process truncated or overwrote it) is rebuilt from the inputs, once,
        when they are unchanged and can be read again; otherwise the run
        stops with one line.  The kernels never see unverified bytes."""
        try:
            return self.cache.chunk(i, buffer)
        except CacheInvalid as exc:
            self._replace_cache(str(exc))
        try:
            return self.cache.chunk(i, buffer)
        except CacheInvalid as exc:
            raise CacheError(f"the cache of {self.name} ({self.cache.path}) changed while this run "
                             f"read it: {exc}; run again") from None

    def _replace_cache(self, problem: str) -> None:
        """The cache failed a check (`problem`): put a rebuilt one in its place,
        or raise CacheError (a second failure, read-once inputs, or inputs
        that no longer hold the rows this run started with)."""
        path = self.cache.path
        if self._rebuild is None:
            raise CacheError(f"the cache of {self.name} ({path}) changed while this run read it: "
                             f"{problem}; run again")
        new = self._rebuild()
        self._rebuild = None          # at most once per run
        if new.digest != self.digest or new.chunk_rows != self.chunk_rows:
            new.close()
            raise CacheError(f"the cache of {self.name} ({path}) was damaged ({problem}) and the "
                             "inputs no longer hold the rows this run started with; run again")
        self.cache.close()
        self.cache = new.cache

    @property
    def file_order_only(self) -> bool:
        """Chunks come only in file order (parsed again every epoch)."""
        return self._memory is None and self.cache is None

    def in_memory(self, compact: bool = False) -> Batch:
        """All rows as one Batch (the caller decided they fit).

        The result is filled chunk by chunk into arrays allocated once, and
        chunks held in memory are let go as they are copied, so the rows are
        never held twice; afterwards the data set's chunks are views of it.

        compact: fields as uint8 when every field id is below 256, and no
        values (an empty array) when every value is 1 -- the compiled CPU
        kernels read that form, and it saves 8 of the 12 bytes per entry of
        typical one-hot CTR data."""
        small_fields = compact and self.max_field < 256
        if self._memory is not None and len(self._memory) == 1:
            one = self._memory[0]
            return compacted(one, small_fields) if compact else expanded(one)
        n, nnz = self.n_rows, self.nnz
        values = None if compact else np.empty(nnz, np.float32)   # allocated at the first value != 1
        out = Batch(labels=np.empty(n, np.float32), indptr=np.empty(n + 1, np.int64),
                    fields=np.empty(nnz, np.uint8 if small_fields else np.int32),
                    features=np.empty(nnz, np.int32),
                    values=np.zeros(0, np.float32), lines=np.empty(n, np.int64),
                    weights=np.ones(n, np.float32) if self.has_weights else None)
        out.indptr[0] = 0
        if self._memory is None and self.cache is not None:
            values = self._fill_from_cache(out, values)
            if values is not None:
                out.values = values
            return out
        r = e = 0
        for i, b, _ in self.chunks(compact=True, reuse=True):
            rows, k = b.n_rows, b.nnz
            out.labels[r : r + rows] = b.labels
            out.indptr[r + 1 : r + rows + 1] = b.indptr[1:] - b.indptr[0] + e
            out.fields[e : e + k] = b.fields
            out.features[e : e + k] = b.features
            if values is None and b.values.shape[0] and not (b.values == 1).all():
                values = np.empty(nnz, np.float32)
                values[:e] = 1
            if values is not None:
                values[e : e + k] = b.values if b.values.shape[0] else 1
            out.lines[r : r + rows] = b.lines if b.lines is not None else np.arange(1, rows + 1)
            if out.weights is not None and b.weights is not None:
                out.weights[r : r + rows] = b.weights
            r, e = r + rows, e + k
            del b
            if self._memory is not None:
                self._memory[i] = None        # copied: let it go
        if values is not None:
            out.values = values
        if self._memory is not None:
            bounds = np.concatenate([[0], np.cumsum(self.chunk_rows)])
            self._memory = [out.rows(int(a), int(z)) for a, z in zip(bounds[:-1], bounds[1:])]
        return out

    def _fill_from_cache(self, out: Batch, values: np.ndarray | None) -> np.ndarray | None:
        """in_memory's rows from the cache: every chunk read straight into
        `out` through one small buffer (CacheFile.read_into), so the rows are
        held once; labels take their final form once a chunk's checksum has
        passed.  Returns the values array (None while every value is 1)."""
        held = [values]
        id_map = self.id_map
        r = e = 0
        for i, rows in enumerate(self.chunk_rows):
            k = int(self.cache.chunks[i]["nnz"])

            def sink(name: str, j: int, seg: np.ndarray, r: int = r, e: int = e) -> None:
                m = seg.shape[0]
                if name == "labels":
                    out.labels[r + j : r + j + m] = seg
                elif name == "indptr":       # stored from 0: rows + 1 offsets
                    if j == 0:
                        seg, j, m = seg[1:], 1, m - 1
                    out.indptr[r + j : r + j + m] = seg + e
                elif name == "fields":
                    out.fields[e + j : e + j + m] = seg
                elif name == "features":
                    out.features[e + j : e + j + m] = seg if id_map is None else id_map.lookup(seg)
                elif name == "values":
                    if held[0] is None and not (seg == 1).all():
                        held[0] = np.empty(self.nnz, np.float32)
                        held[0][: e + j] = 1
                    if held[0] is not None:
                        held[0][e + j : e + j + m] = seg
                elif name == "lines":
                    out.lines[r + j : r + j + m] = seg
                elif name == "weights" and out.weights is not None:
                    out.weights[r + j : r + j + m] = seg

            for attempt in (1, 2):
                try:
                    self.cache.read_into(i, sink)
                    break
                except CacheInvalid as exc:
                    self._replace_cache(str(exc))     # raises CacheError when it cannot
            if self.label_map is not None:
                out.labels[r : r + rows] = self.label_map[out.labels[r : r + rows].astype(np.int64)]
            elif self.task == "binary":
                out.labels[r : r + rows] = out.labels[r : r + rows] > 0
            r, e = r + rows, e + k
        return held[0]

    def rows_in_memory(self, start: int, stop: int, compact: bool = False) -> Batch:
        """Rows start..stop-1 as one Batch of their own, in the form
        in_memory(compact) gives the whole data set (the same field type,
        whatever the range holds), read from the chunks that hold them only:
        a worker's shard of the rows (fmcli.distributed).  All the rows:
        in_memory itself."""
        if not 0 <= start <= stop <= self.n_rows:
            raise ValueError(f"rows {start}..{stop} of a data set of {self.n_rows}")
        if (start, stop) == (0, self.n_rows):
            return self.in_memory(compact)
        bounds = np.concatenate([[0], np.cumsum(self.chunk_rows, dtype=np.int64)])
        first = int(np.searchsorted(bounds, start, side="right")) - 1
        last = int(np.searchsorted(bounds, stop, side="left"))
        parts = []
        for i, b, _ in self.chunks(range(first, last), compact=True, reuse=True):
            a, z = max(start, int(bounds[i])) - int(bounds[i]), min(stop, int(bounds[i + 1])) - int(bounds[i])
            if a < z:
                piece = expanded(b.rows(a, z))
                parts.append(Batch(piece.labels.copy(), piece.indptr.copy(), piece.fields.copy(),
                                   piece.features.copy(), piece.values.copy(),
                                   None if piece.lines is None else piece.lines.copy(),
                                   None if piece.weights is None else piece.weights.copy()))
            del b
        out = Batch.concat(parts) if parts else expanded(Batch.empty())
        if self.has_weights and out.weights is None:
            out.weights = np.ones(out.n_rows, np.float32)
        return compacted(out, self.max_field < 256) if compact else out

    def file_of_rows(self, rows: np.ndarray) -> list[str]:
        """Input file of each row of :meth:`in_memory`'s batch."""
        ends = np.cumsum(self.chunk_rows)
        return [self.chunk_files[i] for i in np.searchsorted(ends, rows, side="right")]

    def close(self) -> None:
        self._buffers = None
        if self.cache is not None:
            self.cache.close()


def compacted(b: Batch, small_fields: bool) -> Batch:
    """`b` in the compact form (see Dataset.in_memory): uint8 fields if
    `small_fields` (every field id below 256), no values if all are 1."""
    fields = b.fields
    if small_fields != (fields.dtype == np.uint8):
        fields = fields.astype(np.uint8 if small_fields else np.int32)
    values = b.values
    if values.shape[0] and (values == 1).all():
        values = np.zeros(0, np.float32)
    if fields is b.fields and values is b.values:
        return b
    return Batch(b.labels, b.indptr, fields, b.features, values, b.lines, b.weights)


def _owning(b: Batch) -> Batch:
    """`b` with copies of the arrays that are views of larger ones: a chunk cut
    from joined parser blocks would otherwise keep all of them alive."""
    def own(a):
        return a.copy() if isinstance(getattr(a, "base", None), np.ndarray) and a.base.nbytes > a.nbytes else a

    return Batch(own(b.labels), own(b.indptr), own(b.fields), own(b.features), own(b.values),
                 own(b.lines), own(b.weights))


def expanded(b: Batch) -> Batch:
    """`b` in the plain form: int32 fields and a value per entry."""
    fields, values = b.fields, b.values
    if fields.dtype != np.int32:
        fields = fields.astype(np.int32)
    if values.shape[0] != b.features.shape[0]:
        values = np.ones(b.features.shape[0], np.float32)
    if fields is b.fields and values is b.values:
        return b
    return Batch(b.labels, b.indptr, fields, b.features, values, b.lines, b.weights)


def prefetched(items: Iterator, depth: int = 1) -> Iterator:
    """`items`, produced `depth` ahead by a background thread; its exceptions
    are raised here, and closing this generator stops the thread.

    The thread starts on an item only once the consumer has asked for the
    one before the item it holds: at most depth + 1 items are alive (the
    consumer's, and those made or being made ahead of it)."""
    import queue
    import threading

    q: queue.Queue = queue.Queue()
    slots = threading.Semaphore(depth + 1)
    stop = threading.Event()
    done = object()

    def run() -> None:
        try:
            it = iter(items)
            while True:
                while not slots.acquire(timeout=0.1):
                    if stop.is_set():
                        return
                if stop.is_set():
                    return
                try:
                    item = next(it)
                except StopIteration:
                    q.put(("done", done))
                    return
                q.put(("item", item))
                del item
        except BaseException as exc:  # handed to the consumer
            q.put(("error", exc))

    worker = threading.Thread(target=run, name="fmcli-prefetch", daemon=True)
    worker.start()
    patience = 10.0   # seconds to wait for the thread when the consumer stops early
    try:
        first = True
        while True:
            if not first:
                slots.release()   # the consumer is done with the item it had
            first = False
            kind, value = q.get()
            if kind == "done":
                return
            if kind == "error":
                raise value
            yield value
            value = None
    except KeyboardInterrupt:
        # SIGINT/SIGTERM: the thread may be blocked on a pipe that never
        # delivers; it is a daemon and goes with the process
        patience = 0.0
        raise
    finally:
        stop.set()
        deadline = time.monotonic() + patience
        while worker.is_alive() and time.monotonic() < deadline:
            try:
                q.get_nowait()
            except queue.Empty:
                pass
            worker.join(0.05)


class _Classes:
    """Class tokens across inputs, in order of first appearance."""

    def __init__(self):
        self.names: list[str] = []
        self.index: dict[str, int] = {}

    def remap(self, reader_classes: list[str], labels: np.ndarray) -> np.ndarray:
        table = np.empty(len(reader_classes), np.float32)
        for i, name in enumerate(reader_classes):
            if name not in self.index:
                self.index[name] = len(self.names)
                self.names.append(name)
            table[i] = self.index[name]
        return table[labels.astype(np.int64)] if labels.size else labels


def input_size(paths: Sequence[str]) -> int | None:
    """The bytes a reader will count for `paths` (their sizes), when known
    without reading them: None for stdin, pipes and compressed files (whose
    readers count the bytes they decompress to)."""
    from .source import reads_once, sniff_compression

    from .remote import is_url

    total = 0
    for p in paths:
        if reads_once(p) or is_url(p):
            return None
        try:
            with open(p, "rb") as f:
                if sniff_compression(f.read(8)):
                    return None
                total += os.fstat(f.fileno()).st_size
        except OSError:
            return None
    return total


# on_read(name, bytes read, bytes in all (None: unknown), rows so far): see _parse
ReadCallback = Callable[[str, int, "int | None", int], None]


def _parse(inputs: list[str], fmt: str, label_mode: str, limits: ReadLimits,
           classes: Sequence[str] | None, stats: dict | None,
           parquet: dict | None = None, on_read: ReadCallback | None = None) -> Iterator[tuple[Batch, str]]:
    """Every input's rows, as chunks of at most CHUNK_ROWS rows, with
    provisional labels; `stats` (when given) collects what the first pass
    learns.  on_read(name, bytes_done, bytes_total, rows_done) is called after
    every block read, bytes_total None when the size is not known up front."""
    found = _Classes()
    total = input_size(inputs) if on_read is not None else None
    done_before = rows_read = 0     # bytes of the inputs before this one; rows of all so far
    for path in inputs:
        reader = make_reader(path, fmt, label_mode, limits, True, classes, parquet, TEXT_BLOCK_BYTES)
        if isinstance(reader, TextReader):
            reader.workers = PARSE_WORKERS
        pending: list[Batch] = []
        rows = 0
        t0 = time.perf_counter()
        for batch in reader:
            if on_read is not None:
                rows_read += batch.n_rows
                done = done_before + int(reader.bytes_read)
                total = None if total is not None and done > total else total
                on_read(reader.name, done, total, rows_read)
            if label_mode == "class" and classes is None:
                batch.labels = found.remap(reader.classes, batch.labels)
            if not pending and CHUNK_ROWS // 4 <= batch.n_rows <= CHUNK_ROWS:
                yield batch, reader.name      # big enough to be a chunk as it is
                continue
            pending.append(batch)
            rows += batch.n_rows
            while rows >= CHUNK_ROWS:
                whole = _join(pending)
                yield whole.rows(0, CHUNK_ROWS), reader.name
                rest = whole.rows(CHUNK_ROWS, whole.n_rows)
                pending, rows = ([rest] if rest.n_rows else []), rest.n_rows
        if pending:
            yield _join(pending), reader.name
        done_before += int(reader.bytes_read)
        if stats is not None:
            stats["names"].append(reader.name)
            stats["formats"].append(reader.fmt)
            stats["bytes"] += reader.bytes_read
            stats["skipped"].extend(reader.bad_rows)
            stats["seconds"] += time.perf_counter() - t0
    if stats is not None:
        stats["classes"] = found.names


def _join(parts: list[Batch]) -> Batch:
    if len(parts) == 1:
        return parts[0]
    batch = Batch.concat(parts)
    batch.lines = np.concatenate([b.lines for b in parts])
    return batch


def load_dataset(
    specs: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    fmt: str = "auto",
    limits: ReadLimits = ReadLimits(),
    task: str = "binary",
    classes: Sequence[str] | None = None,
    cache_dir: str | None = None,
    memory_budget: int = 1 << 30,
    parquet: dict | None = None,
    log: Callable[[str], None] = lambda msg: None,
    cache_check: str = "stat",
    rebuild: bool = False,
    cache_max_size: int | None = None,
    on_read: ReadCallback | None = None,
) -> Dataset:
    """Read (or find in the cache) the rows of `specs`: paths, globs or '-'.

    task "auto" reads labels as tokens and decides (detect_task).  With
    `classes` (a trained model's) a label outside them is an error.
    cache_dir None turns the cache off; a cache directory that cannot be
    used (read-only, not a directory) turns it off with a note.
    cache_check: how a cached input is recognised ("stat" or "content",
    see fmcli.data.cache.fingerprint).  rebuild: ignore an existing cache.
    cache_max_size: bytes all caches of cache_dir may take (None: see
    fmcli.data.cache.resolve_max_size); a new cache makes room by removing
    the least recently used others, and one larger than that alone is used
    for this run only.  on_read: told how reading the inputs progresses
    (see _parse); not called when the rows come from the cache."""
    from .source import reads_once

    inputs = _inputs(specs)
    # stdin, pipes and FIFOs (read once) have no fingerprint and no reusable
    # cache: opening one to fingerprint it would eat the rows it starts with
    once = any(reads_once(p) for p in inputs)
    prints = [fingerprint(p, check=cache_check) for p in inputs if not reads_once(p)]
    label_mode = {"binary": "binary", "regression": "real"}.get(task, "class")
    options = {"fmt": fmt, "label_mode": label_mode, "task": task,
               "classes": None if classes is None else list(classes),
               "limits": [limits.max_bad_rows, limits.max_line_bytes, limits.max_feature_id],
               "parquet": {k: (list(v) if isinstance(v, tuple) else v) for k, v in (parquet or {}).items()},
               "ids": 1}   # caches since the occurrence of ids is noted (fmcli.data.idmap)
    reusable = cache_dir is not None and not once
    key = cache_key(prints, options) if reusable else None
    path = cache_path(cache_dir, key, cache_group(prints, options)) if reusable else None
    args = dict(fmt=fmt, limits=limits, task=task, classes=classes, cache_dir=cache_dir,
                memory_budget=memory_budget, parquet=parquet, log=log, cache_check=cache_check,
                cache_max_size=cache_max_size)
    # the cap of the cache directory (a bad $FMCLI_CACHE_MAX_SIZE fails here, hit or not)
    cap, cap_from = resolve_max_size(cache_dir, cache_max_size) if reusable else (None, None)
    if reusable and not rebuild and os.path.exists(path):
        t0 = time.perf_counter()
        try:
            cf = CacheFile(path, key)
        except CacheInvalid as exc:
            log(f"cache {path} is not usable ({exc}); rebuilding it")
        else:
            record_use(cf.fd, path)       # for least-recently-used eviction
            ds = _from_meta(cf.meta, cache=cf)
            # the inputs as this run names them (the cache may be from another directory)
            from .source import display_name

            now = [display_name(p) for p in inputs]
            rename = dict(zip(cf.meta["names"], now))
            ds.name = ", ".join(now)
            ds.chunk_files = [rename.get(f, f) for f in ds.chunk_files]
            ds.seconds = time.perf_counter() - t0
            ds.cached_from = "hit"
            ds.fingerprints = prints
            ds.digest = cf.digest
            ds._rebuild = _rebuilder(specs, args, log, path, "damaged")
            return ds

    stats = {"names": [], "formats": [], "bytes": 0, "skipped": [], "seconds": 0.0, "classes": []}
    writer = None
    if reusable:
        _evict(cache_dir, cap, [], log)   # a lowered cap applies before the new cache is written
    if cache_dir is not None:
        try:
            writer = CacheWriter(path, cache_dir)
        except OSError as exc:
            # a read-only file system, a regular file named as the directory, no permission
            from ..atomic import IO_ERRNOS

            if exc.errno in IO_ERRNOS:
                raise
            why = ("not a directory" if os.path.exists(cache_dir) and not os.path.isdir(cache_dir)
                   else (exc.strerror or str(exc)).lower())
            log(f"note: cache directory {cache_dir} is not usable ({why}); reading without a cache")
            reusable = False
    memory: list[Batch] | None = [] if writer is None else None
    chunk_rows, chunk_files, counts, nnzs, sums = [], [], {}, [], []
    n_rows = nnz = 0
    max_feature = max_field = -1
    has_weights = False
    used = Occurrences()
    t0 = time.perf_counter()
    try:
        for batch, name in _parse(inputs, fmt, label_mode, limits, classes, stats, parquet, on_read):
            n_rows += batch.n_rows
            nnz += batch.nnz
            max_feature = max(max_feature, batch.max_feature)
            used.add(batch.features, max_feature)
            max_field = max(max_field, batch.max_field)
            has_weights = has_weights or batch.weights is not None
            if label_mode != "real":
                values, c = np.unique(batch.labels, return_counts=True)
                for v, k in zip(values.tolist(), c.tolist()):
                    counts[v] = counts.get(v, 0) + k
            chunk_rows.append(batch.n_rows)
            chunk_files.append(name)
            nnzs.append(batch.nnz)
            if writer is not None:
                writer.add(batch, name)
                sums.append(writer.chunks[-1]["checksum"])
            else:
                sums.append(chunk_checksum(batch))
            if memory is not None:
                memory.append(_owning(compacted(batch, batch.max_field < 256)))
                if n_rows * 24 + nnz * 12 > memory_budget and not once:
                    memory = None          # too big: parse again every epoch instead
        names = stats["names"]
        if n_rows == 0:
            raise DataError("no data rows (the file is empty, blank or only comments)", ", ".join(names))
        meta = _meta(names, stats, task, label_mode, classes, n_rows, nnz, max_feature, max_field,
                     has_weights, chunk_rows, chunk_files, counts)
        meta.update(_used_meta(used, max_feature + 1))
        cf = None
        if writer is not None:
            if reusable:
                meta["paths"] = [p["path"] for p in prints]   # what `fm cache` lists
            cf = writer.finish_open(key or "", meta)   # opened (and locked) before it is visible
            writer = None
            if not reusable:
                os.unlink(cf.path)   # read once: the open file stays readable for this run only
            else:
                if remove_older(cf.path):
                    log("removed the cache of an earlier version of these inputs")
                _keep_under_cap(cf, cache_dir, cap, cap_from, ", ".join(names), log)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    ds = _from_meta(meta, cache=cf)
    ds.seconds = time.perf_counter() - t0
    ds.skipped = stats["skipped"]
    ds.cached_from = "built" if cf is not None else None
    ds.fingerprints = prints
    ds.digest = data_digest(list(zip(chunk_rows, nnzs, sums)))
    if cf is not None and reusable:
        ds._rebuild = _rebuilder(specs, args, log, cf.path, "changed")
    if cf is None:
        if memory is not None:
            ds._memory = [ds._final(b) for b in memory]
        else:
            ds._reparse = lambda: _parse(inputs, fmt, label_mode, limits, classes, None, parquet)
    return ds


def _evict(cache_dir: str, cap: int, keep: list[str], log: Callable[[str], None]) -> int:
    """Remove least recently used caches until the directory's fit `cap`
    (see fmcli.data.cache.evict), saying so; returns the bytes left."""
    removed, total = evict(cache_dir, cap, keep)
    if removed:
        n = len(removed)
        log(f"removed {n} least recently used cache{'s' if n > 1 else ''} "
            f"({human_size(sum(e.bytes for e in removed))}) to keep {cache_dir} under its cap of {human_size(cap)}")
    return total


def _keep_under_cap(cf: CacheFile, cache_dir: str, cap: int, cap_from: str, name: str,
                    log: Callable[[str], None]) -> None:
    """Keep the new cache `cf` within the directory's cap, by removing least
    recently used others; a cache that cannot fit (larger than the cap, or
    the caches other runs are reading leave no room) is used by this run
    only, like a cache of stdin: unlinked while held open."""
    size = os.fstat(cf.fd).st_size
    limit = f"the cache directory's cap of {human_size(cap)} " + {
        "option": "(--cache-max-size)", "environment": "(FMCLI_CACHE_MAX_SIZE)",
        "default": "(the default; see --cache-max-size)"}.get(cap_from, "")
    why = None
    if size > cap:
        why = f"is larger than {limit}"
    elif _evict(cache_dir, cap, [cf.path], log) > cap:
        why = f"does not fit {limit} beside the caches other runs are reading"
    if why is not None:
        try:
            os.unlink(cf.path)
        except OSError:
            pass
        log(f"note: the cache of {name} ({human_size(size)}) {why}; it is kept for this run only")


def _rebuilder(specs, args: dict, log: Callable[[str], None], path: str,
               what: str) -> Callable[[], Dataset]:
    """Build the cache at `path` again from the same inputs (they are read
    again, so this is only for inputs that are files)."""
    def rebuild() -> Dataset:
        log(f"cache {path} was {what} while in use; rebuilding it from the inputs")
        return load_dataset(specs, rebuild=True, **args)

    return rebuild


def _meta(names, stats, task, label_mode, classes, n_rows, nnz, max_feature, max_field, has_weights,
          chunk_rows, chunk_files, counts) -> dict:
    found = stats["classes"]
    label_map = None
    final_classes = None if classes is None else list(classes)
    if task == "auto":
        task = detect_task(found)
        if task != "multiclass":
            values = np.array([float(t) for t in found], np.float64)
            label_map = (values > 0).astype(np.float32) if task == "binary" else values.astype(np.float32)
    if task == "multiclass" and classes is None:
        final_classes = sort_classes(found)
        position = {c: i for i, c in enumerate(final_classes)}
        label_map = np.array([position[c] for c in found], np.float32)
    # rows per final label
    label_counts: list[int] = []
    if task == "binary":
        pos = sum(k for v, k in counts.items() if (label_map[int(v)] if label_map is not None else v) > 0)
        label_counts = [n_rows - pos, pos]
    elif task == "multiclass":
        label_counts = [0] * len(final_classes)
        for v, k in counts.items():
            label_counts[int(label_map[int(v)]) if label_map is not None else int(v)] += k
    return {
        "names": names, "formats": stats["formats"], "bytes": stats["bytes"], "task": task,
        "n_rows": n_rows, "nnz": nnz, "max_feature": max_feature, "max_field": max_field,
        "classes": final_classes, "label_map": None if label_map is None else label_map.tolist(),
        "label_counts": label_counts, "has_weights": has_weights, "chunk_rows": chunk_rows,
        "chunk_files": chunk_files, "skipped": len(stats["skipped"]),
    }


def _used_meta(used: Occurrences, space: int) -> dict:
    """The cache meta of the feature ids that occur: their number, and the
    ids themselves when they are sparse in their space (dense data needs no
    list: its ids are all of 0 .. largest)."""
    n = used.count()
    return {"n_used": n, "used_ids": used.ids().tolist() if is_sparse(n, space) else None}


def _from_meta(meta: dict, cache: CacheFile | None) -> Dataset:
    formats = sorted(set(meta["formats"]))
    return Dataset(
        name=", ".join(meta["names"]), format=formats[0] if len(formats) == 1 else "mixed",
        task=meta["task"], n_rows=meta["n_rows"], nnz=meta["nnz"], max_feature=meta["max_feature"],
        max_field=meta["max_field"], classes=meta["classes"],
        label_map=None if meta["label_map"] is None else np.array(meta["label_map"], np.float32),
        label_counts=meta["label_counts"], has_weights=meta["has_weights"],
        chunk_rows=meta["chunk_rows"], chunk_files=meta["chunk_files"], bytes_read=meta["bytes"],
        cache=cache, n_skipped=meta["skipped"], n_used=meta.get("n_used", -1),
        used_ids=None if meta.get("used_ids") is None else np.array(meta["used_ids"], np.int64),
    )


def dataset_from_batch(batch: Batch, task: str = "binary", classes: Sequence[str] | None = None) -> Dataset:
    """An in-memory Dataset of ready rows (labels as the task wants them, or
    0/1 / -1/+1 for binary)."""
    if task == "auto":
        raise DataError("a Batch needs an explicit task", "<batch>")
    bad = batch.problems()
    if bad:
        raise DataError(bad, "<batch>")
    labels = batch.labels
    counts: list[int] = []
    if task == "binary":
        labels = (labels > 0).astype(np.float32)
        pos = int(np.count_nonzero(labels))
        counts = [batch.n_rows - pos, pos]
    elif task == "multiclass":
        if classes is None:
            classes = [str(c) for c in range(int(labels.max()) + 1 if labels.size else 0)]
        counts = np.bincount(labels.astype(np.int64), minlength=len(classes)).tolist()
    rows = Batch(labels, batch.indptr, batch.fields, batch.features, batch.values,
                 batch.lines if batch.lines is not None else np.arange(1, batch.n_rows + 1),
                 batch.weights)
    used = Occurrences()
    used.add(batch.features, batch.max_feature)
    ids = _used_meta(used, batch.max_feature + 1)
    return Dataset(name="<batch>", format="batch", task=task, n_rows=batch.n_rows, nnz=batch.nnz,
                   n_used=ids["n_used"],
                   used_ids=None if ids["used_ids"] is None else np.array(ids["used_ids"], np.int64),
                   digest=data_digest([(batch.n_rows, batch.nnz, chunk_checksum(rows))]),
                   max_feature=batch.max_feature, max_field=batch.max_field,
                   classes=None if classes is None else list(classes), label_map=None,
                   label_counts=counts, has_weights=batch.weights is not None,
                   chunk_rows=[batch.n_rows], chunk_files=["<batch>"], _memory=[rows])
