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
import datetime
import errno
import os
import re
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import IO, Any

from .errors import LockedError, OutputError, OutputIOError
from .safepaths import deferred_signals, locked_temp, release, sweep_stale, temp_pattern

__all__ = ["atomic_output", "check_writable", "prepare_directory", "output_lock", "lock_path", "IO_ERRNOS"]

# Errors of a write that ran out of room or failed on the device: reported as
# I/O errors (exit status 74), not as "cannot create output" (73).
IO_ERRNOS = frozenset(getattr(errno, name) for name in ("ENOSPC", "EFBIG", "EIO", "EDQUOT")
                      if hasattr(errno, name))

# What atomic_output and output_lock add to an output's name: ".NAME.XXXXXXXX.tmp"
# (tempfile's 8 random characters) and ".NAME.lock".  A name must leave room
# for them under the file system's limit.
_NAME_EXTRA = len(".") + len(".XXXXXXXX") + len(".tmp")

# The directories of file-descriptor links: /dev/fd/N, /proc/self/fd/N (and
# /proc/PID/fd/N, /proc/thread-self/fd/N, which /proc/self resolves to).
_FD_DIRECTORY = re.compile(r"/dev/fd|/proc/(?:self|thread-self|\d+)(?:/task/\d+)?/fd")

_BINARY_MODES = frozenset({"wb"})
_TEXT_MODES = frozenset({"w", "wt"})

_umask_lock = threading.Lock()


def _reason(exc: OSError) -> str:
    """The human part of an ``OSError`` (without errno and file name noise)."""
    return exc.strerror or str(exc)


def _write_failed(target: str, exc: OSError) -> OutputIOError:
    previous = "the previous file is unchanged" if os.path.lexists(target) else "nothing was written"
    return OutputIOError(f"cannot write output {target}: {_reason(exc)}; {previous}")


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


def _discard(tmp: str, lock: int) -> None:
    """Remove an unfinished temporary file, then drop its lock (see locked_temp)."""
    _unlink_quietly(tmp)
    release(lock)


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

    The temporary file is flock'ed for as long as it exists, and temporary
    files of ``path`` that no live process holds (left by a writer killed
    with SIGKILL) are removed first; see :mod:`fmcli.safepaths`.

    The caller must not close the yielded file object.

    Args:
        path: the file to create or replace.
        mode: ``"wb"`` for bytes, ``"w"`` (or ``"wt"``) for UTF-8 text with
            ``"\\n"`` line endings on every platform.

    Raises:
        ValueError: ``mode`` is not one of the supported modes.
        OutputIOError: writing failed with ENOSPC, EFBIG, EDQUOT or EIO (in
            the ``with`` block or when flushing); ``path`` is unchanged.
        OutputError: the temporary file cannot be created (missing directory,
            no permission) or the finished file cannot be flushed or renamed
            into place.
    """
    if mode not in _BINARY_MODES and mode not in _TEXT_MODES:
        raise ValueError(f"unsupported mode {mode!r}; expected 'wb', 'w' or 'wt'")
    target = os.fspath(path)
    if is_special(target):
        # A device or pipe (/dev/null, /dev/stdout, a FIFO): write to it in
        # place; renaming a temporary file onto it would replace the device.
        # A regular file behind /dev/stdout is appended to, never truncated:
        # the shell opened it (`> out` emptied it already, `>> out` must keep it).
        how = "a" if _is_regular(target) else "w"
        try:
            fobj_special: IO[Any] = (open(target, how, encoding="utf-8", newline="\n")
                                     if mode in _TEXT_MODES else open(target, how + "b"))
        except OSError as exc:
            raise OutputError(f"cannot write output {target}: {_reason(exc)}") from exc
        try:
            with fobj_special:
                yield fobj_special
        except OSError as exc:
            # /dev/full, a full disk behind /dev/stdout: an I/O error (74)
            if exc.errno in IO_ERRNOS:
                raise OutputIOError(f"cannot write output {target}: {_reason(exc)}") from exc
            raise
        return
    directory, basename = os.path.split(target)
    directory = directory or os.curdir
    # Leftovers of writers of this file that were killed (SIGKILL, power
    # loss) go first; the temporary file is locked while it exists, so that
    # no other run takes it for such a leftover.
    sweep_stale(directory, temp_pattern(f".{basename}."))
    made: list = []           # (fd, tmp, lock) once created: a signal after it still cleans up
    fobj: IO[Any] | None = None
    try:
        with deferred_signals():  # SIGINT/SIGTERM wait until the file is in our hands
            try:
                made.extend(locked_temp(directory, prefix=f".{basename}."))
            except OSError as exc:
                raise OutputError(f"cannot create output {target}: {_reason(exc)}") from exc
            fd, tmp, lock = made
            if mode in _TEXT_MODES:
                fobj = os.fdopen(fd, "w", encoding="utf-8", newline="\n")
            else:
                fobj = os.fdopen(fd, "wb")
    except BaseException:
        if made:
            if fobj is not None:
                with contextlib.suppress(Exception):
                    fobj.close()
            else:
                with contextlib.suppress(OSError):
                    os.close(made[0])
            _discard(made[1], made[2])
        raise

    try:
        yield fobj
    except BaseException as exc:
        with contextlib.suppress(Exception):
            fobj.close()
        _discard(tmp, lock)
        if isinstance(exc, OSError) and exc.errno in IO_ERRNOS:
            raise _write_failed(target, exc) from exc
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
        _discard(tmp, lock)
        if isinstance(exc, OSError) and exc.errno in IO_ERRNOS:
            raise _write_failed(target, exc) from exc
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write output {target}: {_reason(exc)}") from exc
        raise
    release(lock)
    _fsync_directory(directory)


def is_special(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a stream to write to in place rather than a file to
    replace: it exists and is a device, FIFO or socket (/dev/null,
    /dev/full), or it leads through a file-descriptor link (/dev/stdout,
    /dev/fd/1, /proc/self/fd/1) even to a regular file: that file is where
    a shell sent the stream (``> out.txt``), and renaming a new file onto
    the link would replace the link itself, not write to the stream."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    if stat.S_ISDIR(mode):
        return False
    return not stat.S_ISREG(mode) or _through_fd_link(os.fspath(path))


def _is_regular(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _through_fd_link(path: str) -> bool:
    """Whether following `path`'s symbolic links passes through /dev/fd or /proc/PID/fd."""
    current = os.path.abspath(path)
    for _ in range(40):                 # the kernel's limit on links followed
        if _FD_DIRECTORY.fullmatch(os.path.realpath(os.path.dirname(current))):
            return True
        try:
            link = os.readlink(current)
        except OSError:                 # not a link (or gone): the end of the chain
            return False
        current = os.path.normpath(os.path.join(os.path.dirname(current), link))
    return False


def check_writable(path: str | os.PathLike[str]) -> None:
    """Fail early if ``path`` could not be written by :func:`atomic_output`.

    Checks that the name and the path leave room for the temporary file
    under the file system's limits (NAME_MAX, PATH_MAX), that the parent
    directory exists, is a directory and is writable, and that ``path``
    itself is not a directory; a device or stream (see :func:`is_special`)
    passes.  It is a preflight, not a guarantee: permissions can change and
    the disk can fill up later.

    Raises:
        OutputError: with a message naming ``path`` and the problem.
    """
    target = os.fspath(path)
    if is_special(target):          # /dev/null, /dev/stdout: written in place
        return
    directory = os.path.dirname(target) or os.curdir
    _check_length(target, directory)
    try:
        is_directory = stat.S_ISDIR(os.stat(directory).st_mode)
    except FileNotFoundError:
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", target):
            raise OutputError(f"cannot create output {target}: outputs are local files, not URLs "
                              "(only inputs are read through fsspec)") from None
        raise OutputError(f"cannot create output {target}: directory {directory} does not exist") from None
    except OSError as exc:          # a path through a regular file, no search permission
        raise OutputError(f"cannot create output {target}: {directory}: {_reason(exc)}") from None
    if not is_directory:
        raise OutputError(f"cannot create output {target}: {directory} is not a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise OutputError(f"cannot create output {target}: directory {directory} is not writable")
    if os.path.isdir(target):
        raise OutputError(f"cannot create output {target}: it is a directory")


def _check_length(target: str, directory: str) -> None:
    """Refuse a name or path too long for the output's temporary file (and
    lock file) under the limits of the file system it goes to."""
    def limit(name: str, default: int) -> int:
        try:
            return os.pathconf(directory, name)
        except (OSError, ValueError):   # no such directory yet, or no such limit
            return default

    name = os.fsencode(os.path.basename(target))
    name_max = limit("PC_NAME_MAX", 255)
    if len(name) + _NAME_EXTRA > name_max:
        raise OutputError(f"cannot create output {target}: the file name is too long ({len(name)} bytes; "
                          f"at most {name_max - _NAME_EXTRA} here, leaving room for its temporary file)")
    path_max = limit("PC_PATH_MAX", 4096)
    length = len(os.fsencode(target))
    if length + _NAME_EXTRA >= path_max:
        raise OutputError(f"cannot create output {target}: the path is too long ({length} bytes; "
                          f"at most {path_max - _NAME_EXTRA - 1})")


def prepare_directory(path: str | os.PathLike[str], what: str = "directory") -> str:
    """Create the directory ``path`` (and its parents) unless it exists, and
    check that files can be created in it: a preflight for a directory a
    long run will write into (checkpoints), so that a read-only place or a
    path under a regular file fails before the run, not at its first write.

    Raises:
        OutputError: naming `what` and ``path`` and the problem.
    """
    target = os.fspath(path)
    try:
        os.makedirs(target, exist_ok=True)
    except FileExistsError:
        raise OutputError(f"cannot create {what} {target}: a file of that name exists") from None
    except OSError as exc:
        raise OutputError(f"cannot create {what} {target}: {_reason(exc)}") from None
    # Permission bits do not tell (root, read-only mounts, /proc and /sys):
    # create and remove a file.
    try:
        fd, probe = tempfile.mkstemp(prefix=".probe.", suffix=".tmp", dir=target)
    except OSError as exc:
        reason = "no files can be created there" if exc.errno == errno.ENOENT else _reason(exc)
        raise OutputError(f"cannot write into {what} {target}: {reason}") from None
    os.close(fd)
    _unlink_quietly(probe)
    return target


# --------------------------------------------------------------------------
# Output locks
# --------------------------------------------------------------------------

def lock_path(path: str | os.PathLike[str]) -> str:
    """The lock file of an output: ``.NAME.lock`` in the same directory."""
    directory, basename = os.path.split(os.fspath(path))
    return os.path.join(directory, f".{basename}.lock")


def _holder(fd: int) -> str:
    """What the lock file says about its holder (its pid and start time)."""
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
    except OSError:
        return "another process"
    fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    if "pid" not in fields:
        return "another process"
    return f"process {fields['pid']}" + (f", started {fields['started']}" if fields.get("started") else "")


@contextlib.contextmanager
def output_lock(path: str | os.PathLike[str], timeout: float = 0.0,
                poll: float = 0.1, waits: bool = True) -> Iterator[str]:
    """Hold an advisory lock on ``path``'s lock file (see :func:`lock_path`).

    The lock is an ``flock`` on ``.NAME.lock`` next to ``path``, holding the
    holder's pid and start time; it protects a run that writes ``path`` from
    another one writing the same file.  A lock held by another process is
    waited for up to ``timeout`` seconds (0: not at all; `waits` False: the
    command has no --lock-timeout to suggest).  The lock file is
    removed when the lock is released.

    Raises:
        LockedError: another process holds the lock (naming it).
        OutputError: the lock file cannot be created.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - no flock on this platform
        yield ""
        return

    target = os.fspath(path)
    if is_special(target):          # /dev/null and the like: nothing to protect
        yield ""
        return
    name = lock_path(target)
    deadline = time.monotonic() + max(0.0, timeout)
    held: int | None = None       # the descriptor once the lock is ours
    try:
        while held is None:
            # SIGINT/SIGTERM wait while the lock file is created and taken,
            # so that a signal never leaves it behind (the finally below
            # removes it once `held` is set)
            with deferred_signals():
                try:
                    fd = os.open(name, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
                except OSError as exc:
                    raise OutputError(f"cannot create lock file {name} for {target}: {_reason(exc)}") from exc
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as exc:
                    holder = None if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES) \
                        else _holder(fd)
                    os.close(fd)
                    if holder is None:
                        raise OutputError(f"cannot lock {name} for {target}: {_reason(exc)}") from exc
                else:
                    # The previous holder may have removed the file between our
                    # open and flock: then the lock is on an orphaned inode, so
                    # start over.
                    try:
                        same = os.path.samestat(os.fstat(fd), os.stat(name))
                    except OSError:
                        same = False
                    if same:
                        held = fd
                    else:
                        os.close(fd)
                    continue
            if time.monotonic() >= deadline:
                # waits: the command has --lock-timeout (ffm-train, with libffm's options, has not)
                advice = (f"waited {timeout:g} s; try again later or raise --lock-timeout" if timeout > 0
                          else "wait for it to finish or give --lock-timeout SECONDS" if waits
                          else "wait for it to finish")
                raise LockedError(f"{target} is being written by {holder} (lock file {name}); "
                                  f"{advice}") from None
            time.sleep(min(poll, max(0.0, deadline - time.monotonic())))
        started = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
        with contextlib.suppress(OSError):
            os.ftruncate(held, 0)
            os.pwrite(held, f"pid={os.getpid()}\nstarted={started}\n".encode(), 0)
        yield name
    finally:
        if held is not None:
            # Unlink while still holding the lock, so that a waiter that opened
            # this file notices (above) that it is gone.
            _unlink_quietly(name)
            os.close(held)
