"""Exit statuses: which failure ends the process with which code.

==== =====================================================================
0    success
1    runtime failure (training diverged, out of memory)
2    usage error (click: unknown option, bad value, missing argument)
65   bad input data or a corrupt or foreign model file
66   an input file is missing or cannot be opened
70   internal error (a bug)
73   an output cannot be created
74   an I/O error while writing (disk full, file too large, quota)
75   the output is locked by another run
78   invalid configuration (options, configuration file, environment)
130  interrupted by SIGINT (128 + 2)
141  stdout's reader went away (128 + SIGPIPE)
143  terminated by SIGTERM (128 + 15)
==== =====================================================================
"""

from __future__ import annotations

import signal

import click

from ..atomic import IO_ERRNOS
from ..errors import EX_IOERR, EX_SIGPIPE, EX_SOFTWARE, FMError, Interrupted

__all__ = ["SignalExit", "classify"]


class SignalExit(KeyboardInterrupt):
    """Raised from a signal handler to abandon the command at once (a second
    SIGINT during training, SIGTERM elsewhere); exit status 128 + signum."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = int(signum)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def classify(exc: BaseException | None) -> tuple[str, int, str | None]:
    """(status, exit code, message) of the way a command ended:
    status is ok, error or interrupted."""
    if exc is None:
        return "ok", 0, None
    if isinstance(exc, Interrupted):
        return "interrupted", exc.exit_code, str(exc)
    if isinstance(exc, FMError):
        return "error", exc.exit_code, str(exc)
    if isinstance(exc, KeyboardInterrupt):
        signum = getattr(exc, "signum", signal.SIGINT)
        return "interrupted", 128 + signum, f"interrupted by {signal_name(signum)}"
    if isinstance(exc, click.exceptions.Exit):
        return ("ok" if exc.exit_code == 0 else "error"), exc.exit_code, None
    if isinstance(exc, click.ClickException):
        return "error", exc.exit_code, exc.format_message()
    if isinstance(exc, click.Abort):
        return "interrupted", 128 + signal.SIGINT, "aborted"
    if isinstance(exc, BrokenPipeError):
        return "error", EX_SIGPIPE, "the reader of stdout went away"
    if isinstance(exc, MemoryError):
        return "error", 1, "out of memory"
    if isinstance(exc, OSError) and exc.errno in IO_ERRNOS:
        return "error", EX_IOERR, f"I/O error: {exc.strerror or exc}" + (
            f": {exc.filename}" if getattr(exc, "filename", None) else "")
    if isinstance(exc, SystemExit):
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        return ("ok" if code == 0 else "error"), code, None
    return "error", EX_SOFTWARE, f"internal error: {type(exc).__name__}: {exc}"
