"""Where input bytes come from: paths, globs, stdin, and compression.

:func:`expand_inputs` turns command-line input specs (paths, shell globs,
``-`` for stdin) into a list of paths.  :func:`open_input` opens one of them
as a binary stream of its *decompressed* bytes:

* a name ending in ``.gz``, ``.bz2``, ``.zst``/``.zstd`` or ``.lz4`` (any
  case) is decompressed with that codec (lz4: the frame format); data that
  does not start like that codec is a DataError;
* stdin, and a file whose name names no compression, are decompressed when
  they start with a codec's magic bytes, else read as they are.

Decompression uses pyarrow, imported only when a compressed input is opened,
so reading plain text never pays for importing it.  Truncated or corrupt
compressed data raises :class:`CorruptInputError` (an OSError) from
``read``, after the bytes decompressed before the damage have been returned,
so a reader can name the line it reached.
"""

from __future__ import annotations

import contextlib
import glob
import io
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import PurePath
from typing import BinaryIO

from .._core._parse import count_newlines
from ..errors import ConfigError, DataError, InputNotFoundError
from . import remote
from .remote import is_url

STDIN = "-"

# Compression suffixes (matched case-insensitively) and their pyarrow codec names.
COMPRESSION_SUFFIXES = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd", ".zstd": "zstd", ".lz4": "lz4"}

# What each codec's data starts with; a zstd or lz4 frame may be preceded by
# a skippable frame (magic 0x184D2A50..5F, little-endian).
_MAGIC = {
    "gzip": (b"\x1f\x8b",),
    "bz2": (b"BZh",),
    "zstd": (b"\x28\xb5\x2f\xfd",) + tuple(bytes([b, 0x2A, 0x4D, 0x18]) for b in range(0x50, 0x60)),
    "lz4": (b"\x04\x22\x4d\x18",) + tuple(bytes([b, 0x2A, 0x4D, 0x18]) for b in range(0x50, 0x60)),
}
# Sniffing an input whose name says nothing: bytes that text cannot start
# with.  A bz2 stream's "BZh" is text, so it also needs the block size digit
# and the first block's (or the end of stream's) 48-bit magic.
_SNIFF_BYTES = 10
_BZ2_BLOCK = (b"1AY&SY", b"\x17rE8P\x90")

_GLOB_CHARS = frozenset("*?[")

# Decompressed bytes are asked of pyarrow in pieces: what a read returns
# ends before the piece that fails.  (Where data stops is known to a
# codec's block at best: a zstd block is up to 128 KiB, a bz2 one 900 kB.)
_PIECE = 256 << 10


class CorruptInputError(OSError):
    """Compressed data that ends early or does not decompress."""

    def __init__(self, codec: str, detail: str = ""):
        self.codec = codec
        self.detail = detail
        super().__init__(f"truncated or corrupt {codec} data")


def display_name(path: str | os.PathLike) -> str:
    """The name an input goes by in messages."""
    path = os.fspath(path)
    return "<stdin>" if path == STDIN else path


def reads_once(path: str | os.PathLike) -> bool:
    """Whether an input can be read only once, from its start to its end:
    stdin ('-') and anything that is not a regular file -- a FIFO, a pipe
    such as the /dev/fd/N of a shell's ``<(...)``, a character device, a
    socket.  Such an input is never fingerprinted, cached under its name,
    peeked at or opened a second time: it is read once, in order, or
    spooled to a temporary file first where a command needs two passes.
    (A path that cannot be stat'ed is left to the readers to report.)"""
    path = os.fspath(path)
    if path == STDIN:
        return True
    if is_url(path):
        return False
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def compression_from_name(path: str | os.PathLike) -> str | None:
    """The codec a name's suffix names ('gzip', 'bz2', 'zstd', 'lz4'), or None."""
    name = os.fspath(path).lower()
    for suffix, codec in COMPRESSION_SUFFIXES.items():
        if name.endswith(suffix):
            return codec
    return None


def strip_compression_suffix(path: str | os.PathLike) -> str:
    """The name without its compression suffix: 'day_0.ffm.gz' -> 'day_0.ffm'."""
    name = os.fspath(path)
    lower = name.lower()
    for suffix in COMPRESSION_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


_SUFFIX_FORMATS = {".ffm": "libffm", ".libffm": "libffm", ".svm": "libsvm", ".libsvm": "libsvm"}


def format_from_name(path: str | os.PathLike) -> str | None:
    """The format a file's extension names, if any, seen through a
    compression suffix ('day_0.ffm.gz' -> 'libffm')."""
    name = strip_compression_suffix(path)
    for suffix, fmt in _SUFFIX_FORMATS.items():
        if name.endswith(suffix):
            return fmt
    return None


def expand_inputs(specs: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Input specs as paths, in order.

    A spec is ``-`` (stdin: at most once, and only as the sole input), a
    path, or a shell glob (a spec holding ``*``, ``?`` or ``[`` that is not
    itself an existing path), expanded in sorted order.  Duplicates are
    kept, except of an input that can be read only once (see reads_once:
    several FIFOs or ``<(...)`` are fine, each is read once in turn, but
    the same one twice is a ConfigError).  A missing path, a glob matching
    nothing and a directory raise InputNotFoundError."""
    if isinstance(specs, (str, os.PathLike)):
        specs = [specs]
    specs = [os.fspath(s) for s in specs]
    if not specs:
        raise ConfigError("no input files given")
    if STDIN in specs and len(specs) > 1:
        raise ConfigError("'-' (stdin) must be the only input")
    paths: list[str] = []
    for spec in specs:
        if spec == STDIN:
            paths.append(spec)
            continue
        if is_url(spec):        # fsspec's glob and checks (fmcli.data.remote)
            paths.extend(remote.expand(spec))
            continue
        if _GLOB_CHARS.intersection(spec) and not os.path.lexists(spec):
            matches = sorted(glob.glob(spec))
            if not matches:
                raise InputNotFoundError(f"{spec}: no file matches")
        else:
            matches = [spec]
        for path in matches:
            if os.path.isdir(path):
                raise InputNotFoundError(f"{path}: is a directory, expected a data file")
            if not os.path.exists(path):
                raise InputNotFoundError(f"{path}: no such file")
            check_readable(path)    # a glob's unreadable match fails here, named
            paths.append(path)
    _check_read_once(paths)
    return paths


def _check_read_once(paths: list[str]) -> None:
    """A pipe or FIFO named twice would hang (or read nothing) the second time."""
    seen: set[tuple[int, int]] = set()
    for path in paths:
        if path == STDIN or not reads_once(path):
            continue
        try:
            st = os.stat(path)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in seen:
            raise ConfigError(f"{path}: a pipe or FIFO can be read only once, but it is given twice")
        seen.add((st.st_dev, st.st_ino))


def open_input(path: str | os.PathLike) -> BinaryIO:
    """A binary stream of the decompressed bytes of a path, or of stdin for '-'.

    Closing it never closes stdin."""
    path = os.fspath(path)
    name = display_name(path)
    if path == STDIN:
        stdin = sys.stdin.buffer
        head = _read_head(stdin, name)
        return _open_sniffed(_Replay(head, stdin, owned=False), head, name)
    f = _open_file(path)
    try:
        codec = compression_from_name(path)
        head = _read_head(f, name)
        if codec is not None:
            if head and not any(m.startswith(head) or head.startswith(m) for m in _MAGIC[codec]):
                suffix = path[path.rfind("."):]
                raise DataError(f"not {codec} data, though the name ends in {suffix}", name)
            return _decompress(_rewind(f, head), codec, name)
        return _open_sniffed(_rewind(f, head), head, name)
    except BaseException:
        f.close()
        raise


def sniff_compression(head: bytes) -> str | None:
    """The codec whose magic bytes `head` (the first bytes of an input)
    starts with, or None for anything else (plain text, say)."""
    if head.startswith(b"BZh"):
        ok = len(head) >= 10 and head[3:4].isdigit() and head[3:4] != b"0" and head[4:10] in _BZ2_BLOCK
        return "bz2" if ok else None
    for codec in ("gzip", "zstd", "lz4"):
        if head.startswith(_MAGIC[codec][0]):
            return codec
    return None


def check_readable(path: str | os.PathLike, what: str = "a data file", directory: bool = False) -> None:
    """Fail at once, in one line (InputNotFoundError, exit status 66), when
    an input that exists cannot be read: a directory where a file is
    expected (or, with `directory`, the reverse), no read permission, an
    unreadable device file.  A missing path is left to the caller, which
    says what it looked for.  A FIFO, pipe or device is not opened: that
    could block, or take bytes that only the reader should see."""
    path = os.fspath(path)
    if path == STDIN or is_url(path):     # (a URL: its opening says what is wrong)
        return
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as exc:           # no search permission on a parent, a name too long
        raise InputNotFoundError(f"cannot read {path}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode) != directory:
        raise InputNotFoundError(f"{path}: {'is not' if directory else 'is'} a directory, expected {what}")
    if not (stat.S_ISREG(st.st_mode) or directory):
        return
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise InputNotFoundError(f"cannot read {path}: {exc.strerror or exc}") from None
    os.close(fd)


def _open_file(path: str) -> BinaryIO:
    if is_url(path):
        return remote.open_url(path)
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise InputNotFoundError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputNotFoundError(f"{path}: is a directory, expected a data file") from None
    except OSError as exc:
        raise InputNotFoundError(f"{path}: cannot open: {exc.strerror or exc}") from None


def _read_head(f: BinaryIO, name: str) -> bytes:
    """Up to _SNIFF_BYTES first bytes (fewer only at the end of the input)."""
    parts: list[bytes] = []
    got = 0
    try:
        while got < _SNIFF_BYTES:
            part = f.read(_SNIFF_BYTES - got)
            if not part:
                break
            parts.append(part)
            got += len(part)
    except OSError as exc:
        raise DataError(f"read error: {exc.strerror or exc}", name) from None
    return b"".join(parts)


def _rewind(f: BinaryIO, head: bytes) -> BinaryIO:
    """`f` from its first byte again: seeked back, or replaying `head`."""
    try:
        if f.seekable():
            f.seek(0)
            return f
    except OSError:
        pass
    return _Replay(head, f, owned=True)


def _open_sniffed(f: BinaryIO, head: bytes, name: str) -> BinaryIO:
    codec = sniff_compression(head)
    return f if codec is None else _decompress(f, codec, name)


def _decompress(raw: BinaryIO, codec: str, name: str) -> BinaryIO:
    try:
        import pyarrow as pa
    except ImportError:
        raise ConfigError(f"{name}: reading {codec} data needs pyarrow (pip install pyarrow)") from None
    if not pa.Codec.is_available(codec):
        raise ConfigError(f"{name}: this pyarrow build cannot decompress {codec}")
    source = _Source(raw)
    return _Decompressed(pa.CompressedInputStream(pa.PythonFile(source, mode="r"), codec), source, codec)


class _Replay(io.RawIOBase):
    """A stream whose first bytes were already read: they are read again."""

    def __init__(self, head: bytes, base: BinaryIO, owned: bool):
        self._head = head
        self._base = base
        self._owned = owned  # close the base on close (not for stdin)

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            out, self._head = self._head + self._base.read(), b""
            return out
        if not self._head:
            return self._base.read(size)
        out, self._head = self._head[:size], self._head[size:]
        if len(out) < size:
            out += self._base.read(size - len(out))
        return out

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed and self._owned:
            self._base.close()
        super().close()


class _Source(io.RawIOBase):
    """The compressed bytes as pyarrow reads them, keeping a read error apart
    from a decompression error."""

    def __init__(self, base: BinaryIO):
        self._base = base
        self.error: OSError | None = None

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        try:
            return self._base.read(size)
        except OSError as exc:
            self.error = exc
            raise

    def close(self) -> None:
        if not self.closed:
            self._base.close()
        super().close()


class _Decompressed(io.RawIOBase):
    """Decompressed bytes read from a pyarrow CompressedInputStream.

    An error is held back while bytes read before it remain to be returned:
    a read returns what was decompressed before the damage, the next one
    raises CorruptInputError."""

    def __init__(self, stream, source: _Source, codec: str):
        self._stream = stream
        self._source = source
        self.codec = codec
        self._error: OSError | None = None

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if self._error is not None:
            raise self._error
        parts: list[bytes] = []
        got = 0
        while size is None or size < 0 or got < size:
            piece = _PIECE if size is None or size < 0 else min(_PIECE, size - got)
            try:
                data = self._stream.read(piece)
            except MemoryError:
                raise
            except Exception as exc:  # pyarrow: an OSError, or another ArrowException
                # A failing read of the compressed bytes themselves is no
                # fault of the data: pass it on as the OSError it was.
                failed = self._source.error
                self._error = failed if failed is not None else CorruptInputError(self.codec, str(exc))
                if not parts:
                    raise self._error from None
                break
            if not data:
                break
            parts.append(data)
            got += len(data)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            try:
                self._stream.close()
            finally:
                self._source.close()
        super().close()


BOM = b"\xef\xbb\xbf"


def line_blocks(f: BinaryIO, name: str, block_bytes: int, max_line: int,
                on_long_line: Callable[[int, bytes], None],
                on_bytes: Callable[[int], None] | None = None,
                lines_after: Callable[[], int | None] | None = None,
                reuse: bool | int = False) -> Iterator[tuple[bytes, int, int]]:
    """The whole lines of stream `f`, block by block, for the text readers.

    Yields (buf, cut, lines): buf[:cut] are whole lines (in the last block,
    all that is left, perhaps without a final newline) and `lines` counts
    the lines before them.  A UTF-8 byte-order mark at the start is
    dropped.  A line longer than `max_line` (0: no limit) is never held
    whole: on_long_line(its line number, its first 40 bytes) either raises
    or returns, and then the line is skipped.  on_bytes(n) is told of every
    n bytes read.  Read errors and corrupt compressed data are DataErrors
    naming `name` (and the line reached).  A consumer that counts the lines
    it parses anyway gives lines_after(): after each block it returns the
    lines through that block's end (or None), which saves counting them
    here.

    With `reuse`, the blocks are read into one bytearray of block_bytes,
    which the next block overwrites: the consumer must be done with a block
    (and every view of it) when it asks for the next one.  reuse=N (an int)
    takes N bytearrays in turn, one per block yielded: a block stays intact
    while the next N - 1 are read (a consumer that parses blocks ahead, in
    parallel).  Fresh memory for
    every block costs a page fault and a zero-filled page per 4 KiB (about
    half of what is saved here, on some virtual machines much more)."""
    carry = b""
    first = True
    dropping = False  # inside an over-long line that is being skipped
    lines = 0
    turns = int(reuse) if reuse and hasattr(f, "readinto") else 0
    helds: list[bytearray | None] = [None] * turns
    turn = 0
    while True:
        held = None
        if turns:
            held = helds[turn % turns]
            if held is None:
                held = helds[turn % turns] = bytearray(block_bytes)
        try:
            if held is not None and len(carry) <= block_bytes // 2:
                # the carried part line, then new bytes up to block_bytes, in `held`
                block = _fill(f, held, carry)
                if on_bytes is not None:
                    on_bytes(len(block) - len(carry))
                final = len(block) == len(carry)
                buf = carry if final else block
            else:
                block = f.read(block_bytes)
                if on_bytes is not None:
                    on_bytes(len(block))
                final = not block
                buf = carry + block if carry else block
        except CorruptInputError as exc:
            # The input stops (or breaks) inside the line after the whole
            # lines read so far.
            raise DataError(str(exc), name, lines + carry.count(b"\n") + 1) from None
        except OSError as exc:
            raise DataError(f"read error: {exc.strerror or exc}", name) from None
        block = carry = b""   # not held while buf is parsed
        if first:
            if len(buf) < len(BOM) and not final:
                carry = bytes(buf)  # too short to tell whether it starts with a BOM
                continue
            if buf.startswith(BOM):
                buf = buf[len(BOM):]  # a UTF-8 byte-order mark is not data
            first = False
        if dropping:
            nl = buf.find(b"\n")
            if nl < 0:
                carry = b""
                if final:
                    return
                continue
            buf, dropping = buf[nl + 1 :], False
            lines += 1
        if not buf:
            if final:
                return
            carry = b""
            continue
        if final:
            yield buf, len(buf), lines
            return
        cut = buf.rfind(b"\n") + 1
        if cut == 0:
            if max_line and len(buf) > max_line:
                on_long_line(lines + 1, bytes(buf[:40]))
                carry, dropping = b"", True
                continue
            carry = bytes(buf)  # a line longer than one block: keep reading
            continue
        yield buf, cut, lines
        turn += 1     # the next block goes to the next bytearray (reads that yield nothing keep theirs)
        told = lines_after() if lines_after is not None else None
        lines = told if told is not None else lines + count_newlines(buf, cut)
        carry = bytes(buf[cut:])


def _fill(f: BinaryIO, held: bytearray, carry: bytes) -> bytearray:
    """`carry` followed by what `f` holds next, up to len(held) bytes in
    all, in `held` (line_blocks' reuse): `held` itself when it is full, else
    (the end of the input) a copy of the part filled."""
    n = len(carry)
    with memoryview(held) as view:
        view[:n] = carry
        while n < len(held):
            got = f.readinto(view[n:])
            if not got:
                break
            n += got
    return held if n == len(held) else held[:n]


@contextlib.contextmanager
def spooled(paths: list[str], needed: bool) -> Iterator[tuple[list[str], dict[str, str]]]:
    """Inputs that can be read only once (stdin, pipes, FIFOs: see
    reads_once) copied, in order, to temporary files when they have to be
    read twice (or seeked); yields (paths, {temporary path: the input's
    name in messages}).  The copies are removed afterwards, also on error."""
    if not needed or not any(reads_once(p) for p in paths):
        yield paths, {}
        return
    names: dict[str, str] = {}
    try:
        spooled = []
        for path in paths:
            if not reads_once(path):
                spooled.append(path)
                continue
            # the copy keeps the name's suffixes (.parquet, .gz, ...): they decide how it is read
            suffix = "" if path == STDIN else "".join(PurePath(path).suffixes[-2:])[:40]
            fd, tmp = tempfile.mkstemp(prefix="fm-input.", suffix=suffix or ".tmp")
            names[tmp] = display_name(path)
            with os.fdopen(fd, "wb") as f:
                copy_input(path, f)
            spooled.append(tmp)
        yield spooled, names
    finally:
        for tmp in names:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def copy_input(path: str, f) -> None:
    """The bytes of an input, as they are (compressed or not), into `f`."""
    if path == STDIN:
        shutil.copyfileobj(sys.stdin.buffer, f, 1 << 20)
        return
    try:
        src = open(path, "rb")
    except OSError as exc:
        raise InputNotFoundError(f"{path}: cannot open: {exc.strerror or exc}") from None
    with src:
        while True:
            try:
                block = src.read(1 << 20)
            except OSError as exc:
                raise DataError(f"read error: {exc.strerror or exc}", path) from None
            if not block:
                return
            f.write(block)
