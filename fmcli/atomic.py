"""Atomic creation and replacement of output files.

:func:`atomic_output` writes to a temporary file next to the target and only
renames it over the target once every byte is on disk, so a reader never sees
a half-written model or prediction file and an interrupted run (an error,
Ctrl-C, a full disk) leaves any previous file untouched.

:func:`check_writable` is a cheap preflight for long jobs: it fails before
hours of training rather than at the final save.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import threading
from collections.abc import Iterator
from typing import IO, Any

from .errors import OutputError

__all__ = ["atomic_output", "check_writable"]

_BINARY_MODES = frozenset({"wb"})
_TEXT_MODES = frozenset({"w", "wt"})

_umask_lock = threading.Lock()


def _reason(exc: OSError) -> str:
    """The human part of an ``OSError`` (without errno and file name noise)."""
    return exc.strerror or str(exc)


def _current_umask() -> int:
    """Return the process umask without leaving it modified.

    On Linux the value is read from ``/proc/self/status``, which changes
    nothing.  Elsewhere the classic set-and-restore is used under a lock; the
    umask is only altered for the duration of two system calls.
    """
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:
        old = os.umask(0o077)
        os.umask(old)
    return old


def _target_mode(path: str) -> int:
    """Permission bits the finished file should get.

    Those of the file being replaced if there is one, otherwise what a plain
    ``open(path, "w")`` would have produced (``0o666`` minus the umask).
    """
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~_current_umask()


def _fsync_directory(directory: str) -> None:
    """Make a rename in ``directory`` durable; a no-op where unsupported."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        fd = os.open(directory, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        # Some filesystems (and platforms) cannot fsync a directory.
        pass
    finally:
        os.close(fd)


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file that atomically replaces ``path`` on success.

    The temporary file is created in the directory of ``path`` (so the final
    :func:`os.replace` never crosses filesystems) and named
    ``.<basename>.<random>.tmp``.  When the ``with`` block ends normally the
    data is flushed and fsync'ed, the file receives the permission bits of the
    file it replaces (or ``0o666`` minus the umask for a new file), it is
    renamed onto ``path`` and the directory is fsync'ed.  When the block raises
    anything, :class:`KeyboardInterrupt` included, the temporary file is
    removed, ``path`` is left as it was and the exception propagates.

    The caller must not close the yielded file object.

    Args:
        path: the file to create or replace.
        mode: ``"wb"`` for bytes, ``"w"`` (or ``"wt"``) for UTF-8 text with
            ``"\\n"`` line endings on every platform.

    Raises:
        ValueError: ``mode`` is not one of the supported modes.
        OutputError: the temporary file cannot be created (missing directory,
            no permission) or the finished file cannot be flushed or renamed
            into place.
    """
    if mode not in _BINARY_MODES and mode not in _TEXT_MODES:
        raise ValueError(f"unsupported mode {mode!r}; expected 'wb', 'w' or 'wt'")
    target = os.fspath(path)
    directory, basename = os.path.split(target)
    directory = directory or os.curdir
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{basename}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise OutputError(f"cannot create output {target}: {_reason(exc)}") from exc
    try:
        if mode in _TEXT_MODES:
            fobj: IO[Any] = os.fdopen(fd, "w", encoding="utf-8", newline="\n")
        else:
            fobj = os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        _unlink_quietly(tmp)
        raise

    try:
        yield fobj
    except BaseException:
        with contextlib.suppress(Exception):
            fobj.close()
        _unlink_quietly(tmp)
        raise

    try:
        if fobj.closed:
            # Tolerate a caller that closed the file: sync it by name.
            sync_fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(sync_fd)
            finally:
                os.close(sync_fd)
        else:
            fobj.flush()
            os.fsync(fobj.fileno())
            fobj.close()
        os.chmod(tmp, _target_mode(target))
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(Exception):
            fobj.close()
        _unlink_quietly(tmp)
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write output {target}: {_reason(exc)}") from exc
        raise
    _fsync_directory(directory)


def check_writable(path: str | os.PathLike[str]) -> None:
    """Fail early if ``path`` could not be written by :func:`atomic_output`.

    Checks that the parent directory exists, is a directory and is writable,
    and that ``path`` itself is not a directory.  It is a preflight, not a
    guarantee: permissions can change and the disk can fill up later.

    Raises:
        OutputError: with a message naming ``path`` and the problem.
    """
    target = os.fspath(path)
    directory = os.path.dirname(target) or os.curdir
    if not os.path.exists(directory):
        raise OutputError(f"cannot create output {target}: directory {directory} does not exist")
    if not os.path.isdir(directory):
        raise OutputError(f"cannot create output {target}: {directory} is not a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise OutputError(f"cannot create output {target}: directory {directory} is not writable")
    if os.path.isdir(target):
        raise OutputError(f"cannot create output {target}: it is a directory")
