"""The fm command run in-process for tests (click's CliRunner): one helper
instead of a copy in every test module."""

from __future__ import annotations

import os

from click.testing import CliRunner

from fmcli.cli import cli


def invoke(*args, input=None, env=None, cwd=None, catch_exceptions=True):
    """`fm ARGS` (each argument str()-ed), in `cwd` when given."""
    old = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        return CliRunner().invoke(cli, [str(a) for a in args], prog_name="fm", input=input, env=env,
                                  catch_exceptions=catch_exceptions)
    finally:
        os.chdir(old)


def ok(result):
    """The result of a run that must succeed (its output in the message when not)."""
    assert result.exit_code == 0, (result.exit_code, result.stderr, result.exception)
    return result
