"""The `fm` command: a click group with one thin module per command.

Every :class:`~fmcli.errors.FMError` is turned here, in one place, into one
line on stderr and its exit code; commands never print tracebacks for user
errors.
"""

from __future__ import annotations

import click

from .. import __version__
from ..errors import FMError


class FMGroup(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except FMError as exc:
            click.echo(f"fm: error: {exc}", err=True)
            ctx.exit(exc.exit_code)


@click.group(cls=FMGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fm")
def cli() -> None:
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
