"""Exception hierarchy.

Every error a user can cause is an :class:`FMError`; the CLI turns it into one
line on stderr and the exit code in ``exit_code`` (sysexits-style).  Anything
else escaping to the CLI is a bug.
"""

from __future__ import annotations

import os

# sysexits.h codes used by the CLI.
EX_USAGE = 2
EX_DATAERR = 65
EX_NOINPUT = 66
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_OSERR = 71
EX_CANTCREAT = 73
EX_IOERR = 74
EX_TEMPFAIL = 75
EX_CONFIG = 78
EX_SIGPIPE = 141  # 128 + SIGPIPE: stdout's reader went away


class FMError(Exception):
    """Base class of every error fmcli reports to a user."""

    exit_code = 1


class ConfigError(FMError):
    """An invalid combination of options or hyperparameters."""

    exit_code = EX_CONFIG


class UsageError(FMError):
    """A command line that cannot be carried out as given (e.g. an output
    that is one of the inputs)."""

    exit_code = EX_USAGE


class InputNotFoundError(FMError):
    """An input path that does not exist or cannot be opened."""

    exit_code = EX_NOINPUT


class OutputError(FMError):
    """An output that cannot be created or written."""

    exit_code = EX_CANTCREAT


class OutputIOError(OutputError):
    """Writing an output failed part-way (disk full, file too large, quota,
    an I/O error); the file it would have replaced is left as it was."""

    exit_code = EX_IOERR


class CacheError(FMError):
    """The binary cache was changed or damaged while a run read it and could
    not be rebuilt from the inputs (nothing was trained on its bytes), or
    `fm cache clear` could not remove a cache."""

    exit_code = EX_IOERR


class LockedError(FMError):
    """Another run holds the lock of the output file."""

    exit_code = EX_TEMPFAIL


class DataError(FMError):
    """Malformed input data, located as ``FILE:LINE: message``."""

    exit_code = EX_DATAERR

    def __init__(self, message: str, path: str | os.PathLike | None = None, line: int | None = None):
        self.message = message
        self.path = None if path is None else os.fspath(path)
        self.line = line
        where = self.path or "<input>"
        if line is not None:
            where = f"{where}:{line}"
        super().__init__(f"{where}: {message}")


class ModelFormatError(FMError):
    """A model file that is corrupt, truncated, foreign or too new."""

    exit_code = EX_DATAERR

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        self.message = message
        self.path = None if path is None else os.fspath(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)


class ListenError(FMError):
    """fm serve cannot listen on its address: the port is in use, a port
    below 1024 without the privilege, an unknown host."""

    exit_code = EX_OSERR


class DeviceError(FMError):
    """A requested compute device that is not available."""


class ClusterError(FMError):
    """A Dask scheduler that cannot be reached, a missing Dask, or workers
    that run another fmcli (fm train --scheduler)."""

    exit_code = EX_UNAVAILABLE


class ExtraMissingError(FMError):
    """An optional extra that a command needs is not installed (e.g. onnx
    for fm convert --to onnx); the message names the pip install line."""

    exit_code = EX_UNAVAILABLE


class DivergenceError(FMError):
    """Training produced a non-finite loss or weight."""


class Interrupted(FMError):
    """Training stopped on SIGINT or SIGTERM (after a checkpoint, when one was configured)."""

    def __init__(self, signum: int, checkpointed: bool = False):
        import signal

        self.signum = int(signum)
        self.checkpointed = checkpointed
        self.exit_code = 128 + self.signum
        try:
            name = signal.Signals(self.signum).name
        except ValueError:
            name = f"signal {self.signum}"
        super().__init__(f"interrupted by {name}" + ("; a checkpoint was written, continue with "
                                                     "fm train --resume" if checkpointed else ""))


def printable(text: str) -> str:
    """`text` with every character that could break or garble a one-line
    message escaped: control characters (a newline or tab in a file name,
    an escape sequence) as ``\\n``, ``\\t``, ``\\x1b``..., undecodable
    bytes of a file name (surrogate escapes) as ``\\xNN``, other
    non-printable code points as ``\\uNNNN``.  Printable text, non-ASCII
    letters included, is kept as it is."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        code = ord(ch)
        if ch.isprintable():
            out.append(ch)
        elif ch in "\n\r\t":
            out.append(repr(ch)[1:-1])
        elif 0xDC80 <= code <= 0xDCFF:        # a byte os.fsdecode could not decode
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x100:
            out.append(f"\\x{code:02x}")
        else:
            out.append(f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return "".join(out)
