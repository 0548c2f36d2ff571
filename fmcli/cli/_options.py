"""Option groups shared by several commands."""

from __future__ import annotations

import re

import click

from ..config import Config

D = Config()


class ByteSize(click.ParamType):
    """A size in bytes: 123, 64K, 512M, 8G, 1T (powers of 1024)."""

    name = "size"
    _UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", str(value), re.IGNORECASE)
        if not m:
            self.fail(f"{value!r} is not a size such as 512M or 8G", param, ctx)
        size = int(float(m.group(1)) * self._UNITS[m.group(2).upper()])
        if size < 1:
            self.fail("the size must be positive", param, ctx)
        return size


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
