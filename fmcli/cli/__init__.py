"""The `fm` command: a click group with one thin module per command.

Every :class:`~fmcli.errors.FMError` is turned here, in one place, into one
line on stderr and its exit code; commands never print tracebacks for user
errors.
"""

from __future__ import annotations

import os
import sys

import click

from .. import __version__
from ..errors import EX_SIGPIPE, EX_SOFTWARE, FMError


class FMGroup(click.Group):
    """Turns every failure into one line on stderr and a documented exit code."""

    def invoke(self, ctx: click.Context):
        debug = bool(ctx.params.get("debug"))
        try:
            return super().invoke(ctx)
        except FMError as exc:
            if debug:
                raise
            click.echo(f"fm: error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except BrokenPipeError:
            # The reader of stdout went away (`fm predict ... | head`): stop
            # quietly with the status a shell gives SIGPIPE.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            ctx.exit(EX_SIGPIPE)
        except MemoryError:
            if debug:
                raise
            click.echo("fm: error: out of memory", err=True)
            ctx.exit(1)
        except Exception as exc:  # a bug: say so in one line, traceback with --debug
            if debug:
                raise
            click.echo(f"fm: internal error: {type(exc).__name__}: {exc} "
                       "(rerun with --debug for a traceback)", err=True)
            ctx.exit(EX_SOFTWARE)


@click.group(cls=FMGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fm")
@click.option("--debug", is_flag=True, help="Show Python tracebacks for errors.")
def cli(debug: bool) -> None:
    """Train and serve click-through-rate models: LR, FM and field-aware FM.

    \b
      fm train -p va.ffm -o ctr.fm train.ffm     train with validation
      fm predict ctr.fm test.ffm > p.txt          one probability per line
      fm inspect ctr.fm                           what a model file holds
    """


from . import inspect as _inspect  # noqa: E402
from . import predict as _predict  # noqa: E402
from . import train as _train  # noqa: E402

cli.add_command(_train.train)
cli.add_command(_predict.predict)
cli.add_command(_inspect.inspect)


def main() -> None:
    cli(prog_name="fm")
