"""`fm predict`: one probability per line, streamed; metrics on stderr."""

from __future__ import annotations

import contextlib
import sys

import click
import numpy as np

from .._version import DISTRIBUTION
from ..config import DEVICES, FORMATS, Config
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
@click.option("--output-dir", type=click.Path(file_okay=False), default=None, show_default=False,
              help="Write one file per input, DIR/NAME.txt for the input DATA/NAME (created when missing; "
                   "two inputs of the same name are refused), instead of -o.  Each file is replaced only "
                   "when its whole input was scored, in input order; no metrics are printed.")
@click.option("--scheduler", default=None, show_default=False,
              help="Score on Dask, each input file as one task: local:N (a cluster of N worker processes "
                   "on this machine, closed with the run) or a scheduler's address (tcp://HOST:8786, "
                   "tls://...).  The files must be readable under the same paths on every worker; stdin "
                   "cannot be scored so.  The output is the same as without it, in input order (to -o or "
                   "--output-dir); the metrics are not printed.  -s is then the threads of each task "
                   f"(default 1).  Needs pip install '{DISTRIBUTION}[dask]'.")
@click.option("--scheduler-file", type=InputPath("a scheduler file"), default=None, show_default=False,
              help="Score on Dask with the scheduler named in this file (dask scheduler --scheduler-file).")
@click.option("--scheduler-timeout", type=click.FloatRange(min=0, min_open=True),
              default=Config.scheduler_timeout,
              help="Seconds to wait for the scheduler and its first worker (or --min-workers) before giving up "
                   "(exit status 69).")
@click.option("--min-workers", type=click.IntRange(1), default=Config.min_workers,
              help="With --scheduler ADDRESS or --scheduler-file: wait (up to --scheduler-timeout) until this "
                   "many workers have joined before scoring.  local:N waits for its N.")
@_ops.predict_options
@click.option("-q", "--quiet", is_flag=True, help="Do not print the evaluation metrics.")
def predict(model_file, data, output, threads, device, fmt, strict_ids, max_bad_rows, max_line_bytes, top1,
            raw, no_label, allow_column_mismatch, input_schema, output_dir, scheduler, scheduler_file,
            scheduler_timeout, min_workers, quiet):
    """Score DATA... with MODEL_FILE: libffm/libsvm text (plain or .gz,
    .bz2, .zst, .lz4), Parquet, '-' for stdin; several files and quoted globs
    are scored in order.  An input may be a URL that fsspec reads
    ('gs://ctr/test.parquet'; needs the [dask] extra and the protocol's package).

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
    from .libffm_compat import map_scoring_model
    from ..data.text import ReadLimits
    from ..predict import HeldUntilChecked, UnseenIds, evaluate, format_predictions, iter_scores, to_predictions

    from ..config import available_cpus
    from ..safepaths import refuse_clobber

    distributed = scheduler is not None or scheduler_file is not None
    if min_workers != 1 and not distributed:
        from ..errors import ConfigError

        raise ConfigError("--min-workers applies to scoring on Dask (--scheduler or --scheduler-file)")
    if distributed or output_dir is not None:
        return _predict_per_file(model_file, data, output, output_dir, threads, device, fmt, strict_ids,
                                 max_bad_rows, max_line_bytes, top1, raw, no_label, allow_column_mismatch,
                                 input_schema, scheduler, scheduler_file, scheduler_timeout, min_workers, quiet)
    refuse_clobber({"the model file": model_file, "the data file": data,
                    "the --config file": click.get_current_context().meta.get("fm.config_file")},
                   {"-o": output})
    if output != "-":
        check_writable(output)
    threads = threads or available_cpus()
    # an fmcli or a libffm model file; given ffm-predict's order (TEST MODEL
    # OUTPUT), the error says so.  Its checksum is verified while the first
    # blocks are read and scored; nothing is written before that passed.
    model, check = map_scoring_model(model_file, data)
    with check.as_cause():    # a corrupt model file is the cause of what failed with it
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
            out = HeldUntilChecked(out, check)
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
            out.flush()     # (waits for the model's checks)
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


def _predict_per_file(model_file, data, output, output_dir, threads, device, fmt, strict_ids, max_bad_rows,
                      max_line_bytes, top1, raw, no_label, allow_column_mismatch, input_schema, scheduler,
                      scheduler_file, scheduler_timeout, min_workers, quiet):
    """fm predict scoring each input as a whole: as one Dask task per input
    (--scheduler, fmcli.distributed_predict.score_files), or one input after the
    other in this process (--output-dir alone); the outputs are written in
    input order, concatenated to -o or one file per input in --output-dir."""
    import os

    from ..atomic import atomic_output, check_writable
    from ..config import available_cpus
    from ..data.source import STDIN, expand_inputs
    from ..data.text import ReadLimits
    from ..errors import ConfigError, UsageError
    from ..safepaths import refuse_clobber
    from .libffm_compat import load_scoring_model

    distributed = scheduler is not None or scheduler_file is not None
    if output_dir is not None and output != "-":
        raise click.UsageError("give -o or --output-dir, not both")
    if (raw or no_label) and fmt != "auto":
        raise click.UsageError(f"--raw and --no-label read raw rows, not --format {fmt}")
    if distributed:
        # validates the scheduler options (local:N, an address, --device cpu)
        cluster_config = Config(scheduler=scheduler, scheduler_file=scheduler_file,
                                scheduler_timeout=scheduler_timeout, min_workers=min_workers, threads=1,
                                device=device)
    paths = expand_inputs(list(data))
    if STDIN in paths:
        raise ConfigError("'-' (stdin) cannot be scored " + ("on a Dask cluster (--scheduler)" if distributed
                                                             else "into --output-dir") + "; give files")
    outputs = {}
    if output_dir is not None:
        # DIR/NAME.txt for each input DATA/NAME: two inputs of one name would write one file
        names: dict[str, str] = {}
        for path in paths:
            name = os.path.basename(path) + ".txt"
            if name in names:
                raise UsageError(f"--output-dir {output_dir}: inputs {names[name]} and {path} would both "
                                 f"be written to {os.path.join(output_dir, name)}")
            names[name] = path
            outputs[path] = os.path.join(output_dir, name)
    refuse_clobber({"the model file": model_file, "the data file": paths,
                    "the --config file": click.get_current_context().meta.get("fm.config_file")},
                   {"-o": output, **{f"--output-dir ({p})": o for p, o in outputs.items()}})
    if output != "-":
        check_writable(output)
    if output_dir is not None:
        os.makedirs(output_dir, exist_ok=True)
        for target in outputs.values():
            check_writable(target)
    model = load_scoring_model(model_file, data)
    task = model.spec.task
    if top1 and task != "multiclass":
        raise click.UsageError(f"--top1 applies to multiclass models; {model_file} is a {task} model")
    options = dict(fmt=fmt, threads=threads or (1 if distributed else available_cpus()),
                   limits=ReadLimits(max_bad_rows=max_bad_rows, max_line_bytes=max_line_bytes),
                   device=device, raw=True if raw else None, has_label=not no_label,
                   input_schema=input_schema, allow_column_mismatch=allow_column_mismatch, top1=top1,
                   strict_ids=strict_ids)
    progress = _render.ScoreProgress(quiet or (output == "-" and output_dir is None and _render.stdout_is_tty()))
    occurrences = rows = scored = 0
    first = None
    with contextlib.ExitStack() as stack:
        stack.callback(progress.close)
        if distributed:
            from .. import distributed as dist
            from ..distributed_predict import score_files

            runner = dist.connect(cluster_config, lambda msg: _render.info(msg, quiet))
            stack.callback(runner.close)
            results = score_files(runner, model, paths, options)
        else:
            results = _score_here(model, paths, options)
        out = None
        if output_dir is None:
            out = sys.stdout if output == "-" else stack.enter_context(atomic_output(output, "w"))
        for path, result in results:
            for note in result["notes"]:
                _render.info(note, quiet and not note.startswith("fm: warning: "))
            if out is not None:
                out.write(result["text"])
            else:
                with atomic_output(outputs[path], "w") as f:
                    f.write(result["text"])
            n, r, at = result["unseen"]
            occurrences, rows, first = occurrences + n, rows + r, first or at
            scored += result["rows"]
            progress(scored)
        if out is not None:
            out.flush()
    if occurrences:
        _render.info(f"ignored {occurrences} feature occurrences in {rows} rows that the "
                     f"model has no weights for (first at {first}); --strict-ids makes this an error",
                     quiet)


def _score_here(model, paths, options):
    """(path, fmcli.distributed_predict.score_input's result) of each input in turn,
    scored in this process; the first input that fails raises its error."""
    from ..distributed_predict import remote_error, score_input

    data = model.to_bytes(include_state=False)
    for path in paths:
        result = score_input(data, model.path, path, options)
        if result["error"] is not None:
            raise remote_error(*result["error"])
        yield path, result
