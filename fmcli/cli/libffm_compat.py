"""libffm's command lines: ``ffm-train`` and ``ffm-predict``.

Scripts written for libffm call ``ffm-train [options] TRAIN [MODEL]`` and
``ffm-predict TEST MODEL OUTPUT``.  These two commands take the same
arguments and options, train the same model through fmcli's core (FFM
without bias or linear terms, AdaGrad, libffm's defaults), print the same
table and ``logloss = X`` lines on stdout, and write and read libffm's
binary model files (fmcli.libffm), so that a script switches to fmcli by
putting these commands first on PATH.

Errors are one line, ``ffm-train: error: ...``, with fmcli's exit codes
(fmcli.errors); fmcli's own notes go to stderr.  Run as
``python -m fmcli.cli.libffm_compat train|predict ARGS...`` too.

This module also holds what ``fm predict`` uses to read libffm's model
files and to recognise ffm-predict's argument order (load_scoring_model).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys

import click
import numpy as np

from ..config import LEARNING_RATES, MAX_K, Config
from ..errors import EX_SIGPIPE, EX_SOFTWARE, FMError, ModelFormatError, UsageError, printable
from ._options import InputPath, OutputPath
from ._status import SignalExit, classify

__all__ = ["ffm_train", "ffm_predict", "train_main", "predict_main", "load_scoring_model",
           "argument_order_hint"]

D = Config()   # libffm's defaults are fmcli's (fmcli.config)
ETA = LEARNING_RATES["adagrad"]


# --------------------------------------------------------------------------
# errors: one line named after the program, fmcli's exit codes
# --------------------------------------------------------------------------

def _fail(prog: str, exc: BaseException) -> int:
    """Print the one line that `exc` deserves and return the exit status."""
    if isinstance(exc, BrokenPipeError):
        # the reader of stdout went away: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EX_SIGPIPE
    status, code, message = classify(exc)
    if status == "interrupted":
        click.echo(f"{prog}: {message}", err=True)
    elif code == EX_SOFTWARE:
        click.echo(f"{prog}: internal error: {type(exc).__name__}: {printable(str(exc))}", err=True)
    else:
        click.echo(f"{prog}: error: {printable(message or str(exc))}", err=True)
    return code


class _Command(click.Command):
    """A stand-alone command that reports FMErrors (from its arguments too)
    and other failures in one line, as ``fm`` does."""

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except FMError as exc:        # an unreadable input named on the command line
            raise click.exceptions.Exit(_fail(info_name or self.name, exc)) from None

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except (KeyboardInterrupt, Exception) as exc:   # FMError, I/O errors, bugs
            ctx.exit(_fail(ctx.info_name or self.name, exc))


class _Number(click.ParamType):
    """A finite real number, at least `low` (or above it when `strict`)."""

    name = "float"

    def __init__(self, low: float, strict: bool):
        self.low, self.strict = low, strict

    def convert(self, value, param, ctx):
        try:
            x = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not np.isfinite(x) or x < self.low or (self.strict and x == self.low):
            self.fail(f"{value} is not a finite number {'>' if self.strict else '>='} {self.low:g}", param, ctx)
        return x


# --------------------------------------------------------------------------
# ffm-train's output on stdout, in libffm's layout
# --------------------------------------------------------------------------

# fmcli.train's note on each input read ("read N rows from NAME [from the
# cache|and cached] in S s ...") becomes a libffm-style progress line.
_READ = re.compile(r"read (\d+) rows from (.*?) ?(from the cache|and cached)? in ([0-9.]+) s\b")
_NOT_IMPROVED = re.compile(r"validation \w+ has not improved")


class _Out:
    """ffm-train's stdout (libffm prints everything there), silenced by --quiet."""

    def __init__(self, quiet: bool):
        self.quiet = quiet

    def line(self, text: str) -> None:
        if not self.quiet:
            click.echo(text)          # flushed: a script tailing the log sees each epoch

    def note(self, message: str) -> None:
        """fmcli.train's messages: inputs read as progress lines on stdout,
        the early-stopping note left to the table, anything else to stderr."""
        m = _READ.match(message)
        if m:
            rows, name, how, seconds = m.groups()
            self.read(name, int(rows), {"from the cache": "hit", "and cached": "built"}.get(how or ""),
                      float(seconds))
        elif not _NOT_IMPROVED.match(message) and not self.quiet:
            click.echo(message, err=True)


    def read(self, name: str, rows: int, cached_from: str | None, seconds: float) -> None:
        """The progress line of an input read (cached_from: see Dataset.cached_from)."""
        what = {"hit": "from the binary cache", "built": "converted to the binary cache"}.get(
            cached_from or "", "read")
        self.line(f"{name}: {rows} rows {what} ({seconds:.1f} seconds)")


class EpochTable:
    """libffm's per-epoch table: iter, tr_logloss, va_logloss (with -p) and
    the training time so far, in columns of 4 and 13 characters; with
    --auto-stop, the epoch whose validation logloss got worse ends the table
    with the line saying which epoch's model is kept."""

    def __init__(self, out: _Out, has_valid: bool, auto_stop: bool):
        self.out, self.has_valid, self.auto_stop = out, has_valid, auto_stop
        self.started = False
        self.seconds = 0.0
        self.best: float | None = None
        self.best_epoch = 0

    def __call__(self, s) -> None:
        from ..metrics import is_better

        if not self.started:
            self.out.line(f"{'iter':>4}{'tr_logloss':>13}" + (f"{'va_logloss':>13}" if self.has_valid else "")
                          + f"{'tr_time':>13}")
            self.started = True
        self.seconds += s.seconds
        row = f"{s.epoch:4d}{_cell(s.train_loss)}"
        if self.has_valid:
            va = s.valid_logloss
            row += _cell(va)
            # the rule of fmcli.train with --auto-stop (patience 1)
            if is_better("logloss", va, self.best):
                self.best, self.best_epoch = va, s.epoch
            elif self.auto_stop:
                self.out.line(row)
                self.out.line(f"Auto-stop. Use model at {self.best_epoch}th iteration.")
                return
        self.out.line(row + f"{self.seconds:13.1f}")


def _cell(value: float | None) -> str:
    return f"{'n/a':>13}" if value is None or value != value else f"{value:13.5f}"


# --------------------------------------------------------------------------
# ffm-train
# --------------------------------------------------------------------------

_TRAIN_EPILOG = """\b
Examples:
  ffm-train -p va.ffm --auto-stop tr.ffm model     (as with libffm)
  ffm-predict va.ffm model out                     (prints logloss = ...)
"""


@click.command("ffm-train", cls=_Command, no_args_is_help=True, epilog=_TRAIN_EPILOG,
               context_settings={"show_default": True, "help_option_names": ["-h", "--help"]})
@click.argument("train_file", metavar="TRAIN", type=InputPath("a data file", allow_dash=True))
@click.argument("model_file", metavar="[MODEL]", required=False, type=OutputPath())
@click.option("-l", "l2", type=_Number(0, strict=False), default=D.l2, metavar="LAMBDA",
              help="L2 regularization on the weights a row touches.")
@click.option("-k", "k", type=click.IntRange(1, MAX_K), default=D.k, metavar="FACTORS",
              help="Latent factors per feature and field.")
@click.option("-t", "epochs", type=click.IntRange(1), default=D.epochs, metavar="ITERATIONS",
              help="Passes over the training data.")
@click.option("-r", "eta", type=_Number(0, strict=True), default=ETA, metavar="ETA",
              help="Learning rate of AdaGrad.")
@click.option("-s", "threads", type=click.IntRange(1), default=D.threads, metavar="THREADS",
              help="Training threads (1 is bit-for-bit reproducible).")
@click.option("-p", "valid", type=InputPath("a data file"), default=None, metavar="PATH",
              help="Validation set, scored after every iteration (the va_logloss column).")
@click.option("-v", "folds", type=click.IntRange(2), default=None, metavar="FOLDS",
              help="Cross-validate on TRAIN with this many folds and print each fold's logloss "
                   "instead of writing a model (libffm before 1.3).")
@click.option("--quiet", is_flag=True, help="Print nothing but errors.")
@click.option("--no-norm", is_flag=True, help="No instance-wise normalization.")
@click.option("--auto-stop", is_flag=True,
              help="Stop at the first iteration whose validation logloss is worse than the one "
                   "before and keep the model of the one before (needs -p).")
@click.option("--no-rand", is_flag=True, help="Train on the rows in file order (no shuffling).")
@click.option("--on-disk", is_flag=True,
              help="Stream the rows from fmcli's binary cache each iteration instead of holding "
                   "them in memory (libffm before 1.3; libffm now always trains this way).")
def ffm_train(train_file, model_file, l2, k, epochs, eta, threads, valid, folds, quiet, no_norm, auto_stop,
              no_rand, on_disk):
    """Train libffm's field-aware factorization machine on TRAIN (libffm
    text, plain or compressed, or Parquet; '-' reads stdin when MODEL is
    given) and write MODEL in libffm's binary model format, which libffm's
    own ffm-predict reads.  [MODEL default: TRAIN's base name + .model, in
    the current directory]

    The model is libffm's: no bias, no linear terms, AdaGrad (accumulators
    starting at 1), weights initialised U(0,1)/sqrt(k), logistic loss, and
    the same options and defaults.  The same run is fm train --model ffm
    --no-bias --no-linear with -l -k -t -r -s -p given alike.
    """
    from ..atomic import check_writable, output_lock
    from ..safepaths import refuse_clobber
    from ..train import train as run_training

    if auto_stop and valid is None and folds is None:
        raise UsageError("--auto-stop needs a validation set: give -p FILE")
    cfg = Config(model="ffm", use_bias=False, use_linear=False, optimizer="adagrad", k=k, epochs=epochs,
                 learning_rate=eta, l2=l2, threads=threads, normalize=not no_norm, auto_stop=auto_stop,
                 shuffle=not no_rand, memory_budget=0 if on_disk else D.memory_budget)
    out = _Out(quiet)
    if folds is not None:
        if valid is not None or auto_stop or model_file is not None:
            raise UsageError("-v cross-validates on TRAIN alone and writes no model: leave out -p, "
                             "--auto-stop and MODEL")
        return _cross_validate(cfg.replace(auto_stop=False), train_file, folds, out)
    if model_file is None:
        from ..data.source import reads_once

        if reads_once(train_file) or any(c in train_file for c in "*?["):
            raise UsageError("training from stdin, a pipe or a glob needs MODEL")
        model_file = os.path.basename(train_file) + ".model"   # in the current directory, as libffm
    refuse_clobber({"the training file": train_file, "the validation file": valid}, {"MODEL": model_file})
    check_writable(model_file)
    from .. import libffm

    with output_lock(model_file, waits=False):
        model = run_training(cfg, [train_file], valid, on_epoch=EpochTable(out, valid is not None, auto_stop),
                             log=out.note)
        libffm.write_model(model, model_file, binary=True)


def _cross_validate(cfg: Config, train_file: str, folds: int, out: _Out) -> None:
    """libffm's -v: shuffle the rows (the seed's draw), cut them into `folds`
    parts, train on all but one and score that one, for each part; print
    each part's logloss and the mean over every row."""
    from ..data.batch import Batch
    from ..data.dataset import load_dataset
    from ..metrics import evaluate
    from ..predict import Scorer, with_slots
    from ..train import _data_options, train as run_training
    from ..config import available_cpus

    ds = load_dataset([train_file], task="binary", log=out.note, **_data_options(cfg))
    out.read(ds.name, ds.n_rows, ds.cached_from, ds.seconds)
    rows = ds.in_memory()
    if rows.n_rows < folds:
        raise UsageError(f"-v {folds}: {ds.name} has only {rows.n_rows} rows")
    order = np.random.default_rng(cfg.seed).permutation(rows.n_rows)
    parts = np.array_split(order, folds)
    out.line(f"{'fold':>4}{'logloss':>13}")
    total = 0.0
    for i, held in enumerate(parts):
        rest = np.concatenate([p for j, p in enumerate(parts) if j != i])
        if not cfg.shuffle:
            rest = np.sort(rest)        # --no-rand: the file's order
        model = run_training(cfg, _take(rows, rest), None, log=out.note)
        part: Batch = _take(rows, np.sort(held))
        ids = model.id_map()       # a model of compact ids scores slots
        scores = Scorer(model, available_cpus()).scores(part if ids is None else with_slots(part, ids))
        loss = evaluate("binary", part.labels, scores)["logloss"]
        total += loss * part.n_rows
        out.line(f"{i:4d}{loss:13.4f}")
    out.line("=" * 17)
    out.line(f"{'avg':>4}{total / rows.n_rows:13.4f}")


def _take(b, rows: np.ndarray):
    """The rows `rows` of batch `b`, in that order, as a new Batch."""
    from ..data.batch import Batch

    starts = b.indptr[rows]
    lengths = b.indptr[rows + 1] - starts
    indptr = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(lengths, out=indptr[1:])
    entries = np.repeat(starts - indptr[:-1], lengths) + np.arange(indptr[-1], dtype=np.int64)
    return Batch(labels=b.labels[rows], indptr=indptr, fields=b.fields[entries],
                 features=b.features[entries],
                 values=b.values[entries] if b.values.shape[0] else b.values,
                 lines=None if b.lines is None else b.lines[rows],
                 weights=None if b.weights is None else b.weights[rows])


# --------------------------------------------------------------------------
# model files of either kind, and ffm-predict's argument order
# --------------------------------------------------------------------------

def load_scoring_model(path: str, data=(), *, order: str = "fm"):
    """The model in `path`: an fmcli model file or a libffm one (text or
    binary).  When it is neither and the command line looks like the other
    command's argument order (see argument_order_hint; `data` are the other
    positional arguments), the error (a usage error, exit status 2) says so."""
    model, check = map_scoring_model(path, data, order=order)
    check.wait()
    return model


def map_scoring_model(path: str, data=(), *, order: str = "fm"):
    """load_scoring_model as (model, check), an fmcli model file's checksum
    and values being checked in the background (fmcli.libffm.map_any_model):
    nothing derived from the model may be written before check.wait()."""
    from .. import libffm

    try:
        return libffm.map_any_model(path)
    except ModelFormatError:
        hint = argument_order_hint(path, list(data), order)
        if hint is not None:
            raise UsageError(hint) from None
        raise


def argument_order_hint(model_arg: str, others: list[str], order: str = "fm") -> str | None:
    """The message for a command line in the other command's argument order,
    or None.  order "fm": fm predict MODEL DATA... was given TEST MODEL
    [OUTPUT]; "libffm": ffm-predict TEST MODEL OUTPUT was given MODEL TEST OUTPUT."""
    from .. import libffm

    if order == "fm":
        if not others or len(others) > 2 or not _looks_like_data(model_arg) or not libffm.looks_like_model(others[0]):
            return None
        fixed = f"fm predict {others[0]} {model_arg}" + (f" -o {others[1]}" if len(others) == 2 else "")
        return (f"'{' '.join([model_arg, *others])}' looks like ffm-predict's argument order TEST MODEL "
                f"OUTPUT; fm predict takes MODEL DATA... -o OUTPUT ({fixed}), or use ffm-predict")
    test = others[0]
    if not (_looks_like_data(model_arg) and libffm.looks_like_model(test)):
        return None
    return (f"{model_arg} is data and {test} a model: ffm-predict takes TEST MODEL OUTPUT "
            f"(ffm-predict {model_arg} {test} {' '.join(others[1:])})".rstrip())


_ROW = re.compile(rb"\s*[-+]?[0-9][^\s:]*(?::\S+)?(\s+[0-9]+:\S+)*\s*$")
_DATA_NAME = re.compile(r"\.(ffm|libffm|svm|libsvm|txt|parquet|pq|csv|tsv)(\.(gz|bz2|zst|zstd|lz4))?$", re.I)


def _looks_like_data(path: str) -> bool:
    """Whether `path` names a data file rather than a model: not a model file
    of either kind, and a data file's name or a first line such as
    ``1 0:3:1 1:7:1``.  Never opens a pipe or FIFO."""
    from .. import libffm
    from ..data.source import reads_once

    if reads_once(path) or not os.path.isfile(path) or libffm.looks_like_model(path):
        return False
    if _DATA_NAME.search(path):
        return True
    try:
        with open(path, "rb") as f:
            first = f.read(4096).split(b"\n", 1)[0]
    except OSError:
        return False
    return bool(first.strip()) and _ROW.match(first) is not None


# --------------------------------------------------------------------------
# ffm-predict
# --------------------------------------------------------------------------

@click.command("ffm-predict", cls=_Command, no_args_is_help=True,
               context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("test_file", metavar="TEST", type=InputPath("a data file", allow_dash=True))
@click.argument("model_file", metavar="MODEL", type=InputPath("a model file"))
@click.argument("output", metavar="OUTPUT", type=OutputPath(allow_dash=True))
def ffm_predict(test_file, model_file, output):
    """Score TEST with MODEL and write one probability per line to OUTPUT
    (6 significant digits; '-': stdout), then print 'logloss = X' on stdout
    (on stderr when OUTPUT is stdout).  MODEL is a libffm model file (binary
    from libffm 1.3 on or from ffm-train, or libffm's older text layout) or
    an fmcli model file of any kind.  OUTPUT is replaced only when every row
    was scored.
    """
    from ..atomic import atomic_output, check_writable
    from ..config import available_cpus
    from ..predict import HeldUntilChecked, UnseenIds, evaluate, format_predictions, iter_scores, to_predictions
    from ..safepaths import refuse_clobber

    refuse_clobber({"TEST": test_file, "MODEL": model_file}, {"OUTPUT": output})
    if output != "-":
        check_writable(output)
    # checked while the first blocks are scored (see fm predict)
    model, check = map_scoring_model(model_file, [test_file, output], order="libffm")
    task = model.spec.task
    unseen = UnseenIds(model)
    scores_all, labels_all = [], []
    with check.as_cause():    # a corrupt model file is the cause of what failed with it
        with contextlib.ExitStack() as stack:
            dest = sys.stdout if output == "-" else stack.enter_context(atomic_output(output, "w"))
            dest = HeldUntilChecked(dest, check)
            for scores, labels in iter_scores(model, [test_file], threads=available_cpus(), unseen=unseen,
                                              log=lambda msg: click.echo(msg, err=True)):
                dest.write(format_predictions(task, to_predictions(task, scores), model.spec.classes))
                scores_all.append(scores)
                labels_all.append(labels)
            dest.flush()
            ev = evaluate(task, np.concatenate(labels_all), np.concatenate(scores_all)) if scores_all else None
    if unseen.occurrences:
        click.echo(f"ignored {unseen.occurrences} feature occurrences in {unseen.rows} rows that the model "
                   f"has no weights for (first at {unseen.first})", err=True)
    if ev is not None:
        # libffm prints the logloss; a regression model's first metric is its RMSE
        name, value = next(iter(ev.metrics.items()))
        click.echo(f"{name} = " + ("n/a" if value != value else f"{value:.5f}"), err=output == "-")


# --------------------------------------------------------------------------
# entry points
# --------------------------------------------------------------------------

def _prepare_process() -> None:
    """What fm's main does for the process: SIGTERM unwinds like Ctrl-C
    (temporary files removed, status 143), writing past RLIMIT_FSIZE is an
    I/O error rather than a kill, large blocks go back to the system."""
    from ._process import map_large_blocks as _map_large_blocks

    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        def terminate(signum, frame):
            raise SignalExit(signum)

        signal.signal(signal.SIGTERM, terminate)
    _map_large_blocks()


def train_main() -> None:
    """The ``ffm-train`` command."""
    _prepare_process()
    ffm_train(prog_name="ffm-train")


def predict_main() -> None:
    """The ``ffm-predict`` command."""
    _prepare_process()
    ffm_predict(prog_name="ffm-predict")


if __name__ == "__main__":
    # python -m fmcli.cli.libffm_compat train|predict ARGS...
    commands = {"train": (ffm_train, "ffm-train"), "predict": (ffm_predict, "ffm-predict")}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        click.echo("usage: python -m fmcli.cli.libffm_compat train|predict ARGS...", err=True)
        sys.exit(2)
    command, prog = commands[sys.argv[1]]
    _prepare_process()
    command(args=sys.argv[2:], prog_name=prog)
