"""Option groups shared by several commands."""

from __future__ import annotations

import os

import click

from ..config import Config, parse_size

D = Config()


class ByteSize(click.ParamType):
    """A size in bytes: 123, 64K, 512M, 8G, 1T (powers of 1024)."""

    name = "size"

    def __init__(self, minimum: int = 1):
        self.minimum = minimum     # 0 where "nothing" has a meaning (--cache-max-size 0)

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        try:
            return parse_size(value, self.minimum)    # the grammar lives with the defaults
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class Duration(click.ParamType):
    """Seconds, from 90, 90s, 2.5m, 1h (fmcli.tune.parse_duration)."""

    name = "DURATION"

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float)):
            return float(value)
        from ..tune import parse_duration

        try:
            return parse_duration(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class Threads(click.ParamType):
    """'auto' (fmcli.config.AUTO_THREADS) or a thread count of 1 or more."""

    name = "auto|N"

    def convert(self, value, param, ctx):
        from ..config import AUTO_THREADS

        if value == AUTO_THREADS and isinstance(value, int):   # a default click converts twice
            return value
        text = str(value).strip().lower()
        if text == "auto":
            return AUTO_THREADS
        try:
            number = int(text)
        except ValueError:
            number = 0
        if number < 1:
            self.fail(f"{value!r} is not a thread count: give a positive integer or auto", param, ctx)
        return number


class InputPath(click.Path):
    """A file (with `directory`, a directory) the command reads.

    The project's own check instead of click's: an input that exists but is
    a directory, or cannot be read, is one line naming it with exit status
    66 (see fmcli.data.source.check_readable), not click's usage block with
    status 2.  A missing path and a glob pass: the command expands globs
    and says in its own words what it did not find.  Help, metavar and
    shell completion stay click.Path's."""

    def __init__(self, what: str = "a file", *, directory: bool = False, allow_dash: bool = False):
        super().__init__(file_okay=not directory, dir_okay=directory, allow_dash=allow_dash)
        self.what = what
        self.directory = directory

    def convert(self, value, param, ctx):
        path = os.fsdecode(value) if isinstance(value, bytes) else os.fspath(value)
        if ctx is None or not ctx.resilient_parsing:
            from ..data.source import check_readable

            check_readable(path, self.what, directory=self.directory)
        return path


class OutputPath(click.Path):
    """A file (or directory) the command writes: taken as it is; whether it
    can be written is checked by the command before any work (check_writable,
    exit status 73), never by click (which would, say, refuse an existing
    output it cannot read)."""

    def __init__(self, *, directory: bool = False, allow_dash: bool = False):
        super().__init__(file_okay=not directory, dir_okay=directory, allow_dash=allow_dash)

    def convert(self, value, param, ctx):
        return os.fsdecode(value) if isinstance(value, bytes) else os.fspath(value)


class AutoCount(click.ParamType):
    """'auto' (None) or a count in 0..maximum."""

    name = "auto|N"

    def __init__(self, maximum: int):
        self.maximum = maximum

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, int):
            return value
        if str(value).strip().lower() == "auto":
            return None
        try:
            n = int(value)
        except ValueError:
            self.fail(f"{value!r} is neither 'auto' nor a whole number", param, ctx)
        if not 0 <= n <= self.maximum:
            self.fail(f"{n} is not in 0..{self.maximum}", param, ctx)
        return n


def read_limit_options(f):
    """--max-bad-rows and --max-line-bytes (Config.max_bad_rows, max_line_bytes)."""
    f = click.option("--max-line-bytes", type=ByteSize(), default=D.max_line_bytes, show_default=True,
                     help="Longest accepted line; a longer one is a bad row.")(f)
    f = click.option("--max-bad-rows", type=click.IntRange(0), default=D.max_bad_rows, show_default=True,
                     help="Skip and count up to this many malformed rows, then fail.")(f)
    return f
