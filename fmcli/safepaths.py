"""Guards around the files a command reads and writes.

:func:`refuse_clobber` stops a command, before it does any work, when one of
its outputs is one of its inputs (``fm train -o tr.ffm tr.ffm``, ``fm
predict -o m.fm m.fm te.ffm``, ``--log-json tr.ffm``) or when two of its
outputs are the same file.  Files are compared by identity -- device and
inode, through symbolic links, hard links and any spelling of the path --
so no name trick gets past it.

:func:`locked_temp` and :func:`sweep_stale` make temporary files safe to
clean up: a writer holds an exclusive ``flock`` on its temporary file for as
long as the file exists under its temporary name, and a later run writing to
the same place removes only the temporary files that nobody holds any more,
the leftovers of a process killed with SIGKILL or by a power cut (the kernel
drops a dead process's locks).  A live writer's file is never touched.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import re
import stat
import tempfile
import time
from collections.abc import Collection, Iterable, Mapping
from typing import Union

from .errors import UsageError

try:
    import fcntl
except ImportError:  # pragma: no cover - no flock on this platform
    fcntl = None  # type: ignore[assignment]

__all__ = ["ClobberError", "refuse_clobber", "locked_temp", "release", "sweep_stale", "temp_pattern",
           "STALE_AFTER"]

STDIO = "-"
_GLOB_CHARS = frozenset("*?[")

# An input as the readers take it: a path, a glob, '-', or a list of them.
PathSpec = Union[str, "os.PathLike[str]", Iterable[Union[str, "os.PathLike[str]"]], None]


class ClobberError(UsageError):
    """An output of a command is one of its inputs, or two outputs are one file."""


# --------------------------------------------------------------------------
# An output never overwrites an input
# --------------------------------------------------------------------------

def _paths(spec) -> list[str]:
    """The existing files an input spec names: a path, a glob (expanded as the
    readers expand it) or a list of them; '-' and None name none."""
    if spec is None:
        return []
    specs = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    out: list[str] = []
    for item in specs:
        if item is None:
            continue
        item = os.fspath(item)
        if item == STDIO:
            continue
        if _GLOB_CHARS.intersection(item) and not os.path.lexists(item):
            out.extend(sorted(glob.glob(item)))
        else:
            out.append(item)
    return out


def _identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of an existing regular file or directory, following
    symbolic links; None for anything else.  Devices, FIFOs and sockets
    (/dev/null, /dev/stdout, a pipe) are never a clash: writing to them
    replaces nothing."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        return None
    return st.st_dev, st.st_ino


def _normalized(path: str) -> str:
    """A not-yet-existing path as the file it will be: the real path of its
    directory plus its name."""
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(os.path.realpath(directory), name)


def _key(path: str) -> tuple | None:
    """What two outputs share when they are one file: the identity of an
    existing file or directory, the normalized path of a new one; None for
    a device or pipe, which any number of outputs may share (/dev/null)."""
    try:
        os.stat(path)
    except (OSError, ValueError):
        return ("new", _normalized(path))
    ident = _identity(path)
    return None if ident is None else ("file",) + ident


def _owned(path: str, directory: str, names: re.Pattern[str]) -> bool:
    """Whether `path` lies directly in `directory` (real paths) under a name
    that the directory's writer creates or removes."""
    try:
        real, top = os.path.realpath(path), os.path.realpath(directory)
    except (OSError, ValueError):
        return False
    return os.path.dirname(real) == top and names.match(os.path.basename(real)) is not None


def _same_file(output: str, inp: str) -> str:
    """' (the same file)' where the two names do not say so themselves."""
    return "" if os.path.normpath(output) == os.path.normpath(inp) else " (the same file)"


def refuse_clobber(inputs: Mapping[str, PathSpec], outputs: Mapping[str, str | os.PathLike | None], *,
                   directories: Mapping[str, tuple[str | os.PathLike | None, re.Pattern[str]]] | None = None,
                   allow: Collection[tuple[str, str]] = ()) -> None:
    """Refuse to run when an output is an input or two outputs are one file.

    inputs: what the command reads, by label ("the training file", "the
    model file"): a path, a glob or a list of them; '-' (stdin) and None are
    skipped.  outputs: the files it writes, by option ("-o", "--log-json");
    '-' (stdout) and None are skipped.  directories: output directories by
    option ("--checkpoint-dir"), each with the pattern of the names its
    writer creates or removes there: one clashes with an input that is the
    directory itself, or lies in it under such a name (a checkpoint
    directory may well be the directory that holds the data).  allow: (output option,
    input label) pairs that may name the same file, uses that read the input
    completely before the output replaces it (a warm start written over its
    own --init-model, a resumed run writing its own checkpoint directory).

    Existing files are compared by (st_dev, st_ino) after following links;
    outputs that do not exist yet by their normalized real path.  Call it
    before any input is read or any output opened.

    Raises:
        ClobberError: (exit status 2) one line naming the output and the
            input (or the other output).
    """
    directories = directories or {}
    files: list[tuple[str, tuple[int, int], str]] = []      # (label, identity, path) of every input
    for label, spec in inputs.items():
        for path in _paths(spec):
            ident = _identity(path)
            if ident is not None:
                files.append((label, ident, path))

    written: list[tuple[str, str]] = [(opt, os.fspath(p)) for opt, p in outputs.items()
                                      if p is not None and os.fspath(p) != STDIO]
    written += [(opt, os.fspath(p)) for opt, (p, _) in directories.items() if p is not None]
    for option, path in written:
        ident = _identity(path)
        for label, in_ident, in_path in files:
            if (option, label) in allow:
                continue
            if ident is not None and ident == in_ident:
                raise ClobberError(f"output {option} {path} is {label} {in_path}{_same_file(path, in_path)}; "
                                   "refusing to overwrite an input")
            if option in directories and _owned(in_path, path, directories[option][1]):
                raise ClobberError(f"output {option} {path} holds {label} {in_path} under a name its "
                                   "own files take; refusing to overwrite an input")

    seen: dict[tuple, tuple[str, str]] = {}
    for option, path in written:
        key = _key(path)
        if key is None:
            continue
        if key in seen:
            other, other_path = seen[key]
            raise ClobberError(f"outputs {other} {other_path} and {option} {path} are the same file; "
                               "give them different names")
        seen[key] = (option, path)


# --------------------------------------------------------------------------
# Temporary files: held while written, swept when their writer is gone
# --------------------------------------------------------------------------

# A temporary file is swept only when no process holds it AND it has not been
# written for this many seconds.  The lock is what tells a dead writer from a
# live one; the age is a margin for the moments in which a live file is not
# locked (between its creation and its writer's flock, and a finished cache
# of stdin that is handed to its reader under its temporary name).
STALE_AFTER = 2.0

# The random part tempfile.mkstemp puts into a name.
_RANDOM = r"[a-z0-9_]{8}"


def temp_pattern(prefix: str, suffix: str = ".tmp") -> re.Pattern[str]:
    """The names tempfile.mkstemp(prefix=prefix, suffix=suffix) creates."""
    return re.compile(re.escape(prefix) + _RANDOM + re.escape(suffix))


def _lock(fd: int, blocking: bool) -> bool:
    """Take an exclusive flock on `fd`; False when another holder has it."""
    if fcntl is None:  # pragma: no cover
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def locked_temp(directory: str, prefix: str, suffix: str = ".tmp") -> tuple[int, str, int]:
    """Create a temporary file as :func:`tempfile.mkstemp` does and lock it.

    Returns ``(fd, path, lock)``: the file's descriptor, its path and a
    second descriptor holding an exclusive flock on it.  The lock lives on
    `lock` (a duplicate of `fd`) so that it survives the caller closing
    `fd`; the caller keeps it until the file has been renamed into place or
    removed, and then calls :func:`release`.  Until then :func:`sweep_stale`
    leaves the file alone.

    Raises:
        OSError: the file cannot be created.
    """
    while True:
        fd, path = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=directory)
        try:
            lock = os.dup(fd)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        try:
            try:
                _lock(lock, blocking=True)
            except OSError:
                pass        # a file system without locks: no sweeper can take the file either
            # A sweeper may have taken the file for a dead one's between its
            # creation and the lock: then start over with a new name.
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                return fd, path, lock
        except FileNotFoundError:
            pass
        except BaseException:
            os.close(lock)
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        os.close(lock)
        os.close(fd)


@contextlib.contextmanager
def deferred_signals():
    """Hold SIGINT and SIGTERM back for the few system calls that create a
    file and hand it to the code that will remove it: a signal in between
    would leave the file behind.  They are delivered when the block ends."""
    import signal

    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    except (AttributeError, OSError, ValueError):  # pragma: no cover - no per-thread masks
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def release(lock: int | None) -> None:
    """Drop the lock :func:`locked_temp` returned (closing its descriptor)."""
    if lock is not None and lock >= 0:
        with contextlib.suppress(OSError):
            os.close(lock)


def sweep_stale(directory: str, pattern: re.Pattern[str]) -> list[str]:
    """Remove the temporary files in `directory` whose writers are gone.

    Only regular files whose whole name matches `pattern` are considered
    (see :func:`temp_pattern`); symbolic links and everything else are left
    alone.  A file is removed when this process can take its flock (so no
    live process holds it, see :func:`locked_temp`) and it has not been
    written for :data:`STALE_AFTER` seconds.  Files that cannot be opened
    or removed (another user's) are skipped silently.  Returns the paths
    removed."""
    if fcntl is None:  # pragma: no cover - cannot tell a live writer from a dead one
        return []
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    removed: list[str] = []
    now = time.time()
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    for name in names:
        if not pattern.fullmatch(name):
            continue
        path = os.path.join(directory, name)
        try:
            fd = os.open(path, flags)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or now - st.st_mtime < STALE_AFTER:
                continue
            if not _lock(fd, blocking=False):
                continue                      # a live writer holds it
            # Still the same file under that name: remove it while holding its lock.
            if os.path.samestat(st, os.lstat(path)):
                os.unlink(path)
                removed.append(path)
        except OSError:
            continue
        finally:
            os.close(fd)
    return removed
