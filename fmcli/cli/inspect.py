"""`fm inspect`: what a model file or a data file holds."""

from __future__ import annotations

import click

from ..config import FORMATS
from ..errors import FMError
from . import _render
from ._options import InputPath, read_limit_options

SAMPLE_ROWS = 1_000_000     # rows of --data read unless --rows says otherwise
_MODEL_ONLY = ("--top-interactions", "--field-pairs", "--features", "--data", "--class")


@click.command()
@click.argument("inputs", nargs=-1, required=True, metavar="MODEL | DATA...",
                type=InputPath("a model or data file", allow_dash=True))
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object on stdout (stable keys; see the manual page).")
@click.option("--top-interactions", type=click.IntRange(1), default=None, metavar="N",
              help="The N strongest learned pairwise interactions (FM, FFM, FwFM, FmFM; all but FM "
                   "need --data or a feature-to-field map in the model's preprocessing spec).")
@click.option("--field-pairs", is_flag=True,
              help="The field x field interaction-strength matrix (FwFM: |r_ab|; FmFM: "
                   "||M_ab||_F / sqrt(k), or with --data the mean pair strength in it; FFM and FM: "
                   "mean pair strength in --data).")
@click.option("--features", "top_features", type=click.IntRange(1), default=None, metavar="N",
              help="The N most important features by |linear weight| + factor norm.")
@click.option("--data", multiple=True, type=InputPath("a data file", allow_dash=True), metavar="FILE",
              help="Sample data for a model's analyses: which feature occurs in which field, "
                   "which pairs occur together (repeatable; globs and '-' allowed).")
@click.option("--rows", "max_rows", type=click.IntRange(1), default=None, metavar="N",
              help="Read at most N rows of DATA or of --data.  [default: all of DATA, "
                   f"{SAMPLE_ROWS:,} of --data]")
@click.option("--class", "class_label", default=None, metavar="LABEL",
              help="Multiclass models: analyse this class only (default: the largest strength over "
                   "classes).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="auto", show_default=True,
              help="Format of DATA and --data.")
@read_limit_options
def inspect(inputs, as_json, top_interactions, field_pairs, top_features, data, max_rows, class_label, fmt,
            max_bad_rows, max_line_bytes):
    """Show what a model file or data files hold.

    MODEL (a file written by fm train): kind, task, sizes, parameters and
    their memory, hyperparameters, optimizer, training provenance and
    per-epoch metrics, the search of a model chosen by fm tune,
    preprocessing spec; --top-interactions,
    --field-pairs and --features analyse the weights.

    DATA... (anything that is not a model file: libffm/libsvm text, plain
    or compressed, Parquet, quoted globs, '-' for stdin): rows, entries per
    row, distinct fields and features, largest ids, labels, weights and bad
    rows, read in one streaming pass.

    Tables and colour on a terminal; plain lines otherwise; --json for
    programs.
    """
    from ..data.source import reads_once, spooled

    # A pipe or FIFO by name (`fm inspect <(zcat m.fm.gz)`) cannot be peeked at to tell a model from
    # data: it is copied to a temporary file first (stdin, '-', is always read as data, in one pass).
    once = len(inputs) == 1 and inputs[0] != "-" and reads_once(inputs[0])
    with spooled(list(inputs), once) as (paths, names):
        try:
            _inspect(paths, as_json, top_interactions, field_pairs, top_features, data, max_rows, class_label,
                     fmt, max_bad_rows, max_line_bytes, names)
        except FMError as exc:
            for tmp, name in names.items():      # messages name the input as it was given
                exc.args = tuple(str(a).replace(tmp, name) for a in exc.args)
            raise


def _inspect(inputs, as_json, top_interactions, field_pairs, top_features, data, max_rows, class_label, fmt,
             max_bad_rows, max_line_bytes, names):
    from .. import inspect as ins
    from ..data.text import ReadLimits

    limits = ReadLimits(max_bad_rows=max_bad_rows, max_line_bytes=max_line_bytes)
    if not ins.is_model_file(inputs[0]):
        used = [opt for opt, value in zip(_MODEL_ONLY, (top_interactions, field_pairs, top_features, data,
                                                        class_label)) if value]
        if used:
            raise click.UsageError(f"{used[0]} applies to model files; {inputs[0]} is data")
        if any(ins.is_model_file(p) for p in inputs[1:]):
            raise click.UsageError("give one model file, or data files only")
        scanned = ins.scan_data(list(inputs), fmt=fmt, limits=limits, max_rows=max_rows)
        for f in scanned.get("files") or []:
            f["path"] = names.get(f.get("path"), f.get("path"))
        _render.inspect_data(scanned, as_json)
        return
    if len(inputs) > 1:
        raise click.UsageError("give one model file, or data files only")
    path = inputs[0]
    result = ins.summarize(path)
    result["path"] = names.get(result["path"], result["path"])
    if top_interactions or field_pairs or top_features:
        _analyse(result, path, top_interactions, field_pairs, top_features, data, max_rows, class_label, fmt,
                 limits)
    elif data or class_label:
        raise click.UsageError(f"{'--data' if data else '--class'} goes with --top-interactions, "
                               "--field-pairs or --features")
    _render.inspect_model(result, as_json)


def _analyse(result, path, top_interactions, field_pairs, top_features, data, max_rows, class_label, fmt, limits):
    from .. import inspect as ins
    from ..model import load_model
    from ..registry import kind as model_kind

    model = load_model(path)
    spec = model.spec
    kind = model_kind(spec.kind)
    names = ins.Names(result["spec"], result["hyperparameters"], getattr(model, "extras", None),
                      result.get("input"))
    class_index = None
    if class_label is not None:
        if spec.task != "multiclass":
            raise click.UsageError(f"--class applies to multiclass models; {path} is a {spec.task} model")
        if class_label not in spec.classes:
            shown = ", ".join(spec.classes[:10]) + (", ..." if len(spec.classes) > 10 else "")
            raise click.BadParameter(f"{class_label!r} is not one of the model's classes ({shown})",
                                     param_hint="'--class'")
        class_index = spec.classes.index(class_label)
    if not kind.factors and (top_interactions or field_pairs):
        raise click.UsageError(f"{path} is an {spec.kind} model: it has no pairwise interactions "
                               "(--features still applies)")
    if not data and not names.has_field_map:
        why = (f" ({names.map_note})" if names.map_note else
               " (the model has no preprocessing spec to map features to fields)")
        if top_interactions and kind.needs_fields:
            raise click.UsageError(
                f"--top-interactions on an {spec.kind} model needs --data FILE (a sample of the training "
                f"data) to know which feature occurs in which field{why}")
        if field_pairs and not kind.pairs:      # field-pair parameters are a figure of their own
            raise click.UsageError(
                f"--field-pairs on an {spec.kind} model needs --data FILE (a sample of the training data){why}")
    sample = None
    if data:
        sample = ins.read_sample(model, list(data), fmt=fmt, limits=limits,
                                 max_rows=SAMPLE_ROWS if max_rows is None else max_rows,
                                 pairs=field_pairs and ins.field_pairs_from_data(spec.kind),
                                 class_index=class_index)
        feats, _ = sample.feature_counts()
        result["sample"] = {"files": sample.files, "rows": sample.rows, "truncated": sample.truncated,
                            "distinct_features": int(feats.size),
                            "distinct_field_features": int(sample.unit_feature.size),
                            "entries_ignored": sample.ignored}
    if top_interactions:
        result["top_interactions"] = ins.top_interactions(model, top_interactions, sample=sample, names=names,
                                                          class_index=class_index)
    if field_pairs:
        result["field_pairs"] = ins.field_pairs(model, sample=sample, names=names, class_index=class_index)
    if top_features:
        result["top_features"] = ins.top_features(model, top_features, sample=sample, names=names,
                                                  class_index=class_index)
