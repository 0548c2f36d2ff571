"""The `fm` command: a click group with one thin module per command.

Every :class:`~fmcli.errors.FMError` is turned here, in one place, into one
line on stderr and its exit code (see :mod:`fmcli.cli._status`); commands
never print tracebacks for user errors.
"""

from __future__ import annotations

import os
import signal
import sys

# Set before numpy is imported: OpenBLAS's worker threads otherwise spin for
# about 0.1 s after numpy's import and after each vector product (a metric),
# taking a core from the kernels' own threads; with this they sleep at once.
# The CLI's work is in those kernels, not in BLAS.  A value the user set wins.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import click

from .. import __version__
from ..atomic import IO_ERRNOS
from ..errors import EX_CONFIG, EX_SIGPIPE, EX_SOFTWARE, ConfigError, FMError, printable
from ._status import SignalExit, classify
from ._process import map_large_blocks as _map_large_blocks


class FMGroup(click.Group):
    """Turns every failure into one line on stderr and a documented exit code."""

    def invoke(self, ctx: click.Context):
        debug = bool(ctx.params.get("debug"))
        try:
            return super().invoke(ctx)
        except FMError as exc:
            if debug:
                raise
            message = str(exc)
            config_file, keys = ctx.meta.get("fm.config_file"), ctx.meta.get("fm.config_keys")
            if isinstance(exc, ConfigError) and config_file and keys:
                from ..settings import blame

                message = blame(message, config_file, keys)
            # A message names files: a newline in a name must not split it.
            click.echo(f"fm: error: {printable(message)}", err=True)
            ctx.exit(exc.exit_code)
        except click.BadParameter as exc:
            # A bad value from an FM_* variable is a configuration error, not
            # a usage error: say which variable, in one line.
            from ..settings import env_source

            name = env_source(exc)
            if name is None or debug:
                raise
            click.echo(printable(f"fm: error: environment variable {name}={os.environ.get(name)!r}: "
                                 f"{exc.message.rstrip('.')}"), err=True)
            ctx.exit(EX_CONFIG)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt as exc:
            # SIGINT, or SIGTERM (see main): any output being written was
            # abandoned and its previous version kept.
            _, code, message = classify(exc)
            click.echo(f"fm: {message}", err=True)
            ctx.exit(code)
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
        except OSError as exc:
            if debug:
                raise
            if exc.errno in IO_ERRNOS:   # e.g. a full disk under the cache
                _, code, message = classify(exc)
                click.echo(f"fm: error: {printable(message)}", err=True)
                ctx.exit(code)
            click.echo(f"fm: internal error: {type(exc).__name__}: {printable(str(exc))} "
                       "(rerun with --debug for a traceback)", err=True)
            ctx.exit(EX_SOFTWARE)
        except Exception as exc:  # a bug: say so in one line, traceback with --debug
            if debug:
                raise
            click.echo(f"fm: internal error: {type(exc).__name__}: {printable(str(exc))} "
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
      fm convert criteo train.txt -o tr.ffm       raw logs (and formats, models)
    """
    ctx = click.get_current_context()
    if ctx.invoked_subcommand and not ctx.resilient_parsing:
        from ..settings import check_envvars

        # FM_TRAIN_EPOCH (a typo) is an error, not silently ignored
        check_envvars(ctx.command, ctx.invoked_subcommand)


from . import cache as _cache  # noqa: E402
from . import convert as _convert  # noqa: E402
from . import inspect as _inspect  # noqa: E402
from . import predict as _predict  # noqa: E402
from . import serve as _serve  # noqa: E402
from . import train as _train  # noqa: E402
from . import tune as _tune  # noqa: E402

cli.add_command(_train.train)
cli.add_command(_tune.tune)
cli.add_command(_predict.predict)
cli.add_command(_inspect.inspect)
cli.add_command(_convert.convert)
cli.add_command(_cache.cache)
cli.add_command(_serve.serve)


def _setup_envvars() -> None:
    from ..settings import apply_envvars

    apply_envvars(cli)   # FM_TRAIN_EPOCHS, FM_PREDICT_THREADS, ...


_setup_envvars()


def _terminate(signum, frame):
    raise SignalExit(signum)


def main() -> None:
    # Writing past RLIMIT_FSIZE must fail with EFBIG (an I/O error, exit 74,
    # the old file kept) rather than kill the process with SIGXFSZ.
    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    # SIGTERM unwinds like Ctrl-C: temporary files are removed, locks
    # released, and the status is 143.
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminate)
    _map_large_blocks()
    cli(prog_name="fm")
