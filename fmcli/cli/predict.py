"""`fm predict`: one probability per line, streamed; metrics on stderr."""

from __future__ import annotations

import contextlib
import sys

import click
import numpy as np

from ..config import DEVICES, FORMATS
from ..inputmap import INPUT_SCHEMAS
from . import _render
from . import _ops
from ._options import InputPath, OutputPath, read_limit_options


@click.command(context_settings={"show_default": True})
@click.argument("model_file", type=InputPath("a model file"))
@click.argument("data", nargs=-1, required=True, metavar="DATA...", type=InputPath("a data file", allow_dash=True))
@click.option("-o", "--output", type=OutputPath(allow_dash=True), default="-",
              help="Where to write probabilities ('-' is stdout).")
@click.option("-s", "--threads", type=click.IntRange(1), default=None, show_default=False,
              help="Scoring threads (results do not depend on it).  [default: all CPUs]")
@click.option("--device", type=click.Choice(DEVICES), default="cpu",
              help="Score on the cpu, a CUDA GPU (cuda; needs CuPy), or the GPU when one is usable (auto).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="auto", help="Input format.")
@click.option("--strict-ids", is_flag=True,
              help="Fail on a feature or field id the model has no weights for (default: ignore and count them).")
@read_limit_options
@click.option("--top1", is_flag=True, help="Multiclass: print the most probable class label instead of the probabilities.")
@click.option("--raw", is_flag=True,
              help="DATA is raw rows (Criteo TSV, Avazu or other CSV) to transform with the model's "
                   "preprocessing spec (fm train --spec).  [default: detected from the first lines when "
                   "the model has a spec; compressed stdin needs --raw]")
@click.option("--no-label", is_flag=True,
              help="Raw rows without a header have no label column (e.g. Criteo's test set); no metrics.")
@click.option("--allow-column-mismatch", is_flag=True,
              help="Wide Parquet, whose columns are matched to the model's by name: score a file that "
                   "lacks some of them or changed their kind (categorical/numeric) as if those were "
                   "empty, and ignore columns the model was not trained on, with a warning (default: "
                   "an error, exit status 65).")
@click.option("--input-schema", type=click.Choice(INPUT_SCHEMAS), default="model",
              help="model: DATA must have the layout the model was trained on -- wide Parquet (one "
                   "column per field) or feature ids (libffm, libsvm, sparse Parquet); any: score "
                   "either layout (e.g. libffm written from wide Parquet by fm convert).")
@_ops.predict_options
@click.option("-q", "--quiet", is_flag=True, help="Do not print the evaluation metrics.")
def predict(model_file, data, output, threads, device, fmt, strict_ids, max_bad_rows, max_line_bytes, top1,
            raw, no_label, allow_column_mismatch, input_schema, quiet):
    """Score DATA... with MODEL_FILE: libffm/libsvm text (plain or .gz,
    .bz2, .zst, .lz4), Parquet, '-' for stdin; several files and quoted globs
    are scored in order.

    Writes one line per row: the probability of the positive class (binary),
    the predicted value (regression), or the C class probabilities in the
    model's class order (multiclass; --top1 prints the most probable label).
    Prints the task's metrics to stderr (binary: logloss, AUC, normalized
    entropy, calibration error; regression: RMSE, MAE; multiclass: logloss,
    accuracy) when DATA's labels allow.  An output file is replaced only when
    every row was scored.

    A model trained with fm train --spec also scores raw rows (the logs fm
    convert read, e.g. Criteo TSV) through the same transform: such input is
    recognised by its first lines, or by --raw.

    MODEL_FILE may also be a model file written by libffm's ffm-train (or
    fmcli's ffm-train), in libffm's binary or text layout.
    """
    from ..atomic import atomic_output, check_writable
    from .libffm_compat import load_scoring_model
    from ..data.text import ReadLimits
    from ..predict import UnseenIds, evaluate, format_predictions, iter_scores, to_predictions

    from ..config import available_cpus
    from ..safepaths import refuse_clobber

    refuse_clobber({"the model file": model_file, "the data file": data,
                    "the --config file": click.get_current_context().meta.get("fm.config_file")},
                   {"-o": output})
    if output != "-":
        check_writable(output)
    threads = threads or available_cpus()
    # an fmcli or a libffm model file; given ffm-predict's order (TEST MODEL
    # OUTPUT), the error says so
    model = load_scoring_model(model_file, data)
    task = model.spec.task
    if top1 and task != "multiclass":
        raise click.UsageError(f"--top1 applies to multiclass models; {model_file} is a {task} model")
    all_scores, all_labels = [], []
    # rows scored and rows/s, on a terminal only (not when the predictions themselves go there)
    progress = _render.ScoreProgress(quiet or (output == "-" and _render.stdout_is_tty()))
    scored = 0
    with contextlib.ExitStack() as stack:
        stack.callback(progress.close)
        out = sys.stdout if output == "-" else stack.enter_context(atomic_output(output, "w"))
        unseen = UnseenIds(model, strict=strict_ids)
        limits = ReadLimits(max_bad_rows=max_bad_rows, max_line_bytes=max_line_bytes)
        if (raw or no_label) and fmt != "auto":
            raise click.UsageError(f"--raw and --no-label read raw rows, not --format {fmt}")
        for scores, labels in iter_scores(model, list(data), fmt=fmt, threads=threads, limits=limits,
                                          unseen=unseen, device=device,
                                          log=lambda msg: _render.info(msg, quiet),
                                          raw=True if raw else None, has_label=not no_label,
                                          input_schema=input_schema,
                                          allow_column_mismatch=allow_column_mismatch,
                                          warn=lambda msg: _render.info(f"fm: warning: {msg}")):
            out.write(format_predictions(task, to_predictions(task, scores), model.spec.classes, top1))
            all_scores.append(scores)
            all_labels.append(labels)
            scored += len(labels)
            progress(scored)
        out.flush()
        # The metrics too are computed before the output file is committed:
        # whatever fails leaves the previous file in place.
        ev = (evaluate(task, np.concatenate(all_labels), np.concatenate(all_scores))
              if not quiet and all_scores else None)
    if unseen.occurrences:
        _render.info(f"ignored {unseen.occurrences} feature occurrences in {unseen.rows} rows that the "
                     f"model has no weights for (first at {unseen.first}); --strict-ids makes this an error",
                     quiet)
    if ev is not None:
        _render.info("  ".join(f"{name} = " + ("n/a" if value != value else f"{value:.5f}")
                               for name, value in ev.metrics.items()) + f"  rows = {ev.rows}")
