"""`fm convert`: between sparse formats, raw click logs to sparse rows, and
model files (smaller ones, libffm's)."""

from __future__ import annotations

import contextlib
import os

import click

from ..safepaths import refuse_clobber
from . import _ops, _render
from ._options import InputPath, OutputPath, read_limit_options

RAW_KINDS = ("criteo", "avazu", "csv")
SOURCES = ("auto", "libffm", "libsvm", "parquet") + RAW_KINDS + ("fm", "libffm-model")
TARGETS = ("libffm", "libsvm", "parquet", "fm", "libffm-model", "libffm-bin-model", "onnx", "inference")
_MODEL_MAGIC = b"\x89FMM"


class _Progress:
    """A progress bar on a terminal (bytes read of the inputs, rows so far and
    MB/s, per pass)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._progress = None
        self._tasks: dict[str, int] = {}

    def __call__(self, stage: str, done: int, total: int | None, rows: int | None = None) -> None:
        if not self.enabled:
            return
        if self._progress is None:
            from rich.console import Console
            from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn, TransferSpeedColumn)

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                      TextColumn("{task.fields[rows]}"), TransferSpeedColumn(),
                                      TimeElapsedColumn(), TimeRemainingColumn(),
                                      console=Console(stderr=True, highlight=False), transient=True,
                                      refresh_per_second=4)
            self._progress.start()
            _render._live = self._progress
        shown = "" if rows is None else f"{rows:,} rows"
        if stage not in self._tasks:
            self._tasks[stage] = self._progress.add_task(stage, total=total, rows=shown)
        self._progress.update(self._tasks[stage], completed=done, total=total, rows=shown)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            if _render._live is self._progress:
                _render._live = None
            self._progress = None


def _size(n: int) -> str:
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} bytes"


def _is_fm_model(path: str) -> bool:
    if path == "-" or not os.path.isfile(path):
        return False
    try:
        with open(path, "rb") as f:
            return f.read(4) == _MODEL_MAGIC
    except OSError:
        return False


def _columns(value: str | None) -> list[str]:
    return [c.strip() for c in value.split(",") if c.strip()] if value else []


@click.command(context_settings={"show_default": True})
@click.argument("inputs", nargs=-1, required=True, metavar="[criteo|avazu|csv] INPUT...")
@click.option("-o", "--output", required=True, type=OutputPath(allow_dash=True),
              help="File to write ('-': stdout).  Its name gives the format (.ffm/.libffm, .svm/.libsvm, "
                   ".parquet/.pq, .fm, .onnx, .fmi) and compression (.gz, .bz2, .zst, .lz4) unless --to says.")
@click.option("--from", "src", type=click.Choice(SOURCES), default="auto",
              help="Input format.  auto: an fmcli model by its magic bytes, Parquet by name, libffm or "
                   "libsvm by name or first row; a raw log kind may also be given as the first "
                   "argument.  libffm-model: a model file written by libffm's ffm-train (text or binary).")
@click.option("--to", type=click.Choice(TARGETS), default=None, show_default=False,
              help="Output format.  [default: from -o's name; fm for models]  libffm-model: libffm's "
                   "text model file (libffm <= 1.21); libffm-bin-model: its binary one (libffm >= 1.3, "
                   "SSE build).  Only FFM models without bias and linear terms can be written so.  onnx: an "
                   "ONNX graph (opset 17) taking padded int64 fields and features and float32 values "
                   "[rows, entries] (padding: value 0), giving probabilities (regression: "
                   "predictions) and raw scores; parameters over 1 GiB go to OUTPUT.data.  Needs "
                   "the onnx extra: pip install 'fm-ctr[onnx]'.  inference: the weights alone for "
                   "the C scorer (python -m fmcli.inference --include-dir; .fmi, see fm-model(5)); "
                   "--dtype float16 or int8 makes it smaller.")
@click.option("--fields", "fields_file", type=InputPath("a fields file"), default=None,
              show_default=False,
              help="Field of each feature for libffm output, one 'FEATURE FIELD' or 'LO-HI FIELD' "
                   "(inclusive) per line; a feature it does not cover is an error.  Without it, "
                   "libsvm rows keep field 0 for every feature (what fm train assumes for libsvm), "
                   "which makes FFM an FM.")
@click.option("--class-labels", is_flag=True,
              help="Labels are class names (any token without ':'), kept as text; by default they "
                   "must be numbers.")
@read_limit_options
@click.option("--min-count", type=click.IntRange(1), default=10,
              help="Raw logs: a categorical value seen fewer times than this in the training rows "
                   "becomes its column's rare token (1: keep every value, one pass).")
@click.option("--hash-space", type=click.IntRange(1, 2**31), default=10**6,
              help="Raw logs: feature ids are H(column, token) mod this (H: 64-bit FNV-1a of "
                   "'column\\0token' then MurmurHash3's finaliser).")
@click.option("--numeric-rule", type=click.Choice(["log-square", "value"]), default="log-square",
              help="Raw logs: numeric columns as tokens (x > 2: floor(ln(x)^2), x <= 2: floor(x), "
                   "missing: its own token) or as one feature whose value is the number.")
@click.option("--split", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              show_default=False,
              help="Raw logs: send rows whose 64-bit hash of label and tokens falls below this share to "
                   "OUTPUT and the others to OUTPUT's sibling with '.valid' before the extension "
                   "(train.ffm -> train.valid.ffm); rare values are counted on the former only.")
@click.option("--spec-out", type=OutputPath(), default=None, show_default=False,
              help="Raw logs: where to write the preprocessing spec (JSON) for fm train --spec.  "
                   "[default: OUTPUT + '.spec.json'; none for -o -]")
@click.option("--spec", "spec_file", type=InputPath("a spec file"), default=None, show_default=False,
              help="Raw logs: apply this spec, written by an earlier fm convert (e.g. of the training "
                   "logs), instead of making one: the same vocabulary and hashing, no counting pass.  "
                   "The log kind may then be left out.")
@click.option("--no-label", is_flag=True,
              help="Raw logs: the rows have no label column (e.g. Criteo's test set); the label "
                   "written is 0.  Avazu and CSV input without the label column need no flag.")
@click.option("--label", "label_column", default=None, show_default=False,
              help="fm convert csv: the label column (numbers, e.g. 0/1).")
@click.option("--categorical", default=None, show_default=False,
              help="fm convert csv: categorical columns, comma-separated.")
@click.option("--numeric", default=None, show_default=False,
              help="fm convert csv: numeric columns, comma-separated.")
@click.option("--delimiter", default=",",
              help="fm convert csv: the column separator (one character; 'tab' for a tab).")
@click.option("--dtype", type=click.Choice(["float32", "float16", "int8"]), default=None,
              show_default=False,
              help="Models: store the parameters as float16 (half the size), or the factors as int8 "
                   "with a float16 scale per k-vector and the rest as float16; they are float32 again "
                   "for scoring.  [default: as the input stores them]")
@click.option("--strip-state", is_flag=True,
              help="Models: leave the optimizer state out (smaller; serving needs no state, warm "
                   "starts do).")
@_ops.config_option("convert", "min-count = 20")
@_ops.lock_timeout_option
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
def convert(inputs, output, src, to, fields_file, class_labels, max_bad_rows, max_line_bytes, min_count,
            hash_space, numeric_rule, split, spec_out, spec_file, no_label, label_column, categorical,
            numeric, delimiter, dtype, strip_state, lock_timeout, quiet):
    """Convert data or model files.

    \b
      fm convert tr.ffm -o tr.parquet               between libffm, libsvm, Parquet
      fm convert criteo train.txt.gz -o tr.ffm      raw Criteo TSV (also: avazu, csv)
      fm convert ctr.fm -o small.fm --dtype float16 --strip-state
      fm convert m.model --from libffm-model -o m.fm     libffm's model file
      fm convert ctr.fm -o ctr.onnx                 an ONNX graph (fm-ctr[onnx])
      fm convert ctr.fm -o ctr.fmi                  the C scorer's file (--to inference)

    Sparse data are streamed in bounded memory; several inputs are read one
    after another into one output; '-' is stdin or stdout.  Numbers are
    written in their shortest exact form, so libffm -> Parquet -> libffm
    gives back the same bytes.  libsvm to libffm puts every feature in field
    0 unless --fields says otherwise.

    Raw logs (criteo: label, 13 integer and 26 categorical columns,
    tab-separated, trailing empty columns may be missing; avazu: the CSV with
    a header, id dropped, click the label, hour as hour of day; csv: a
    header and --label/--categorical/--numeric) become one field per column
    with value 1: integers > 2 the token floor(ln(v)^2), others their own
    token, missing its own token, categorical values seen fewer than
    --min-count times a rare token, every token hashed into --hash-space ids.
    Counting needs a first pass over the inputs (stdin, a pipe or a FIFO is
    spooled to a temporary file, removed afterwards).  The exact transform is written as a JSON spec for fm
    train --spec, which lets fm predict score raw rows the same way.

    Every output is written atomically; a bad row stops the run with
    FILE:LINE (exit status 65) unless --max-bad-rows allows it.
    """
    from ..convert import convert_data, convert_model, convert_raw, valid_sibling
    from ..data.text import ReadLimits

    inputs = list(inputs)
    kind = src
    if inputs[0] in RAW_KINDS:
        word = inputs.pop(0)
        if src not in ("auto", word):
            raise click.UsageError(f"the input is given as {word} but --from says {src}")
        kind = word
        if not inputs:
            raise click.UsageError(f"Missing argument 'INPUT...' after {word}.")
    spec = None
    if spec_file is not None:
        from ..data.criteo import load_spec

        spec = load_spec(spec_file)
        if kind == "auto":
            kind = spec.kind
        elif kind != spec.kind:
            raise click.UsageError(f"{spec_file} is a spec for {spec.kind} logs, not {kind}")
        ctx = click.get_current_context()
        fixed = [p for p in ("min_count", "hash_space", "numeric_rule", "label_column", "categorical",
                             "numeric", "delimiter")
                 if ctx.get_parameter_source(p) == click.core.ParameterSource.COMMANDLINE]
        if fixed:
            raise click.UsageError(f"--{fixed[0].replace('_column', '').replace('_', '-')} is set by "
                                   f"the spec ({spec_file})")
    if delimiter.lower() in ("tab", "\\t"):
        delimiter = "\t"
    limits = ReadLimits(max_bad_rows=max_bad_rows, max_line_bytes=max_line_bytes)
    raw_options = {"--label": label_column, "--categorical": categorical, "--numeric": numeric,
                   "--split": split, "--spec-out": spec_out}
    if kind not in RAW_KINDS:
        given = [k for k, v in raw_options.items() if v is not None] + (["--no-label"] if no_label else [])
        if given:
            raise click.UsageError(f"{given[0]} applies to raw logs (fm convert criteo|avazu|csv ...)")
    model_mode = kind in ("fm", "libffm-model") or (kind == "auto" and len(inputs) == 1
                                                   and _is_fm_model(inputs[0]))
    if not model_mode and (dtype is not None or strip_state):
        raise click.UsageError("--dtype and --strip-state apply to model files")
    if model_mode and to in ("libffm", "libsvm", "parquet"):
        raise click.UsageError(f"a model cannot be written as {to} data")
    if not model_mode and to in ("fm", "libffm-model", "libffm-bin-model", "onnx", "inference"):
        raise click.UsageError(f"--to {to} is for model files; {inputs[0]} is data")
    if model_mode and to is None and output.lower().endswith(".onnx"):
        to = "onnx"     # the output's name says it
    if model_mode and to is None and output.lower().endswith(".fmi"):
        to = "inference"    # the C scorer's file (fmcli.inference)
    if model_mode and to is None and output != "-":
        from ..convert import output_format

        try:
            named = output_format(output, None)
        except Exception:
            named = None
        if named is not None:
            raise click.UsageError(f"{output} names {named} data but {inputs[0]} is a model; "
                                   "name the output .fm (or give --to)")

    outputs = [output]
    if kind in RAW_KINDS and split is not None and output != "-":
        outputs.append(valid_sibling(output))
    # No output may be an input (nor two outputs one file); the spec is
    # written next to the output unless one was given (see convert_raw).
    written_spec = spec_out
    if kind in RAW_KINDS and spec_out is None and spec is None and output != "-":
        written_spec = output + ".spec.json"
    refuse_clobber({"the input file": inputs, "the --fields file": fields_file, "the --spec file": spec_file,
                    "the --config file": click.get_current_context().meta.get("fm.config_file")},
                   {"-o": output, "--split": outputs[1] if len(outputs) > 1 else None,
                    "--spec-out": written_spec,
                    "--to onnx's data file": output + ".data" if model_mode and to == "onnx" else None})
    progress = _Progress(enabled=not quiet and _render.stderr_is_tty())
    say = lambda msg: _render.info(msg, quiet)  # noqa: E731
    with contextlib.ExitStack() as stack:
        from ..atomic import check_writable, output_lock

        for path in outputs:
            if path != "-":
                check_writable(path)
                stack.enter_context(output_lock(path, lock_timeout))
        stack.callback(progress.close)
        if model_mode:
            if len(inputs) != 1:
                raise click.UsageError("convert one model file at a time")
            if output == "-":
                raise click.UsageError("model files are written to a file: give -o FILE")
            src_model = "libffm-model" if kind == "libffm-model" else "fm"
            stats = convert_model(inputs[0], output, src=src_model, to=to or "fm", dtype=dtype,
                                  strip_state=strip_state)
            what = [x for x in (dtype, "no optimizer state" if strip_state else None) if x]
            say(f"wrote {output}: {_size(stats.bytes_in)} -> {_size(stats.bytes_out)}"
                + (f" ({', '.join(what)})" if what else "")
                + (f" ({stats.bytes_out / stats.bytes_in:.0%})" if stats.bytes_in and not what else ""))
            if to == "onnx" and len(stats.outputs) > 1:
                say(f"the weights are in {stats.outputs[0]}: keep it next to {output}")
            return
        if kind in RAW_KINDS:
            stats = convert_raw(kind, inputs, output, to=to if to in ("libffm", "libsvm", "parquet") else None,
                                min_count=min_count, hash_space=hash_space, numeric_rule=numeric_rule,
                                split=split, spec_out=spec_out, has_label=not no_label,
                                label=label_column, categorical=_columns(categorical),
                                numeric=_columns(numeric), delimiter=delimiter, limits=limits,
                                spec=spec, on_progress=progress)
            progress.close()
            rate = stats.rows + stats.valid_rows
            where = f"{stats.outputs[0] if output != '-' else '<stdout>'}: {stats.rows:,} rows"
            if split is not None:
                where += f", {stats.outputs[1]}: {stats.valid_rows:,} rows"
            say(f"wrote {where} in {stats.seconds:.1f} s ({rate / max(stats.seconds, 1e-9):,.0f} rows/s, "
                f"{stats.passes} pass{'es' if stats.passes > 1 else ''})")
            if stats.distinct:
                distinct = sum(d for d, _ in stats.distinct.values())
                kept = sum(k for _, k in stats.distinct.values())
                say(f"categorical values: kept {kept:,} of {distinct:,} distinct (seen >= {min_count} "
                    f"times); the others are their column's rare token")
            if stats.spec_path:
                say(f"spec: {stats.spec_path} (fm train --spec {stats.spec_path} ...)")
        else:
            if kind == "auto" and any(_is_fm_model(p) for p in inputs):
                raise click.UsageError("convert one model file at a time")
            stats = convert_data(inputs, output, src=kind, to=to, fields=fields_file,
                                 class_labels=class_labels, limits=limits, on_progress=progress)
            progress.close()
            say(f"wrote {output if output != '-' else '<stdout>'}: {stats.rows:,} rows in "
                f"{stats.seconds:.1f} s")
        for note in stats.notes:
            say(f"note: {note}")
        if stats.bad_rows:
            say(f"skipped {stats.bad_rows} bad rows (--max-bad-rows {max_bad_rows}); first: {stats.first_bad}")
