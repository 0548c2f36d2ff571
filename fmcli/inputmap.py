"""Input maps: how a model's training rows were read, so that new data is
read the same way.

A model file's header holds the map as ``input`` (format 1.2, see
fm-model(5)).  There are two layouts:

* ``{"layout": "ids"}``: every row carries its own feature (and field) ids:
  libffm or libsvm text, sparse Parquet, a Batch.
* ``{"layout": "wide", ...}``: wide Parquet, one column per field
  (fmcli.data.parquet).  ``columns`` lists the column of each field, in
  field order, and ``kinds`` how each was read (``categorical``, ``numeric``
  or ``null``); ``all_columns`` says the fields were every column but the
  label and weight (no ``--columns``); ``hash_bits``, ``float_columns``,
  ``label_column`` and ``weight_column`` are the settings that turned a row
  into (field, feature, value) entries.

Wide files are then read by column name, never by position: a file whose
columns come in another order scores the same, and one that lacks a
column, has one the model never saw or has changed a column's kind is an
error (or, when asked, a warning).  Data of the other layout is refused
unless asked.  A model written before format 1.2 has no map: its wide
Parquet input is read as before, by position, with a warning.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

from .config import Config
from .errors import ConfigError, DataError

__all__ = ["INPUT_SCHEMAS", "run_map", "training_map", "scoring_options", "check_layout", "describe", "IDS"]

IDS = {"layout": "ids"}
INPUT_SCHEMAS = ("model", "any")   # fm predict --input-schema
PARQUET_SUFFIXES = (".parquet", ".pq")   # as fmcli.data.dataset.make_reader decides
PARQUET_KEYS = ("label_column", "weight_column", "columns", "hash_bits", "float_columns")

# appended to a column mismatch found by fm predict
PREDICT_HINT = ("; --allow-column-mismatch scores missing or retyped columns as absent and ignores "
                "extra ones")


def _is_parquet(path: str, fmt: str) -> bool:
    return fmt == "parquet" or (fmt == "auto" and str(path).lower().endswith(PARQUET_SUFFIXES))


def _shown(names: Sequence[str], limit: int = 8) -> str:
    text = ", ".join(names[:limit])
    return text + (f" and {len(names) - limit} more" if len(names) > limit else "")


def describe(m: dict | None) -> str:
    """A map's layout in words."""
    if isinstance(m, dict) and m.get("layout") == "wide":
        return f"wide Parquet (columns {_shown(list(m.get('columns') or []))})"
    return "feature ids (libffm or libsvm text, or sparse Parquet)"


_FROM_FILE = object()   # run_map's parent: read the --init-model's header


def _file_map(path: str, fmt: str, parquet: dict) -> dict:
    """One input's map (only a Parquet file's schema is read)."""
    if not _is_parquet(path, fmt):
        return dict(IDS)
    from .data.parquet import ParquetReader

    # the class mode takes every label type: the label is checked when the rows are read
    return ParquetReader(path, label_mode="class", **parquet).describe()


# --------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------


def training_map(inputs: Sequence[str], config: Config, parent: dict | None | object = _FROM_FILE) -> dict:
    """The map of a training run over `inputs` (training, then validation
    files; globs expanded): the first input's, which every other input must
    share, and with ``--init-model`` the parent model's, which the data must
    continue.  A wide map is handed to every reader (``match``), so each
    file is read by column name.

    Raises DataError when inputs (or the parent) differ in layout, and
    ConfigError when the parent hashed wide columns otherwise or
    ``--columns`` leaves out one of its columns."""
    parquet = config.parquet_options()
    first, ref = None, None
    for path in inputs:
        m = _file_map(path, config.format, parquet)
        if ref is None:
            first, ref = path, m
        elif m["layout"] != ref["layout"]:
            raise DataError(f"is {_data_words(m['layout'], path, config.format)} but {first} is "
                            f"{_data_words(ref['layout'], first, config.format)}; the inputs of a run "
                            "must have one layout", path)
    if ref is None:
        return dict(IDS)
    owner = f"the first input, {first}"
    if config.init_model:
        ref, continued = _continued(ref, first, config, parent), ref
        if ref is not continued:
            owner = f"--init-model {config.init_model}"
    if ref["layout"] == "wide":
        # every file matched by name before any row is read: a mismatch is
        # one line naming the file and the columns
        from .data.parquet import ParquetReader

        for path in inputs:
            ParquetReader(path, label_mode="class", **parquet, match=ref, map_owner=owner).describe()
    return ref


def _continued(ref: dict, first: str, config: Config, parent: dict | None | object = _FROM_FILE) -> dict:
    """The map of a warm start: the parent's (`parent`, or read from the
    --init-model file's header), with the columns this run adds."""
    from .model import inspect_header

    path = config.init_model
    if parent is _FROM_FILE:
        parent = inspect_header(path).get("input")
    if not isinstance(parent, dict):
        return ref          # a model from before format 1.2: nothing to check against
    if parent.get("layout") != ref["layout"]:
        raise DataError(f"is {_data_words(ref['layout'], first, config.format)} but --init-model "
                        f"{path} was trained on {describe(parent)}", first)
    if ref["layout"] != "wide":
        return ref
    for key, option in (("hash_bits", "--hash-bits"), ("float_columns", "--float-columns")):
        if parent.get(key) != ref[key]:
            raise ConfigError(f"{path}: --init-model read wide Parquet with {option} {parent.get(key)}, "
                              f"this run with {ref[key]}; give {option} {parent.get(key)}")
    columns, kinds = list(parent["columns"]), list(parent.get("kinds") or [])
    selected = config.columns is not None
    if selected:
        left_out = [c for c in columns if c not in ref["columns"]]
        if left_out:
            raise ConfigError(f"--columns leaves out {_shown(left_out)} of --init-model {path}; "
                              "a warm start keeps every field of the model it starts from")
        for name, kind in zip(ref["columns"], ref["kinds"]):
            if name not in columns:         # a new field, after the parent's
                columns.append(name)
                kinds.append(kind)
    return {**ref, "columns": columns, "kinds": kinds,
            "all_columns": bool(parent.get("all_columns")) and not selected}


def _data_words(layout: str, path: str, fmt: str) -> str:
    if layout == "wide":
        return "wide Parquet (one column per field)"
    return ("sparse Parquet (feature ids)" if _is_parquet(path, fmt)
            else "text (feature ids)")


# --------------------------------------------------------------------------
# scoring
# --------------------------------------------------------------------------


def scoring_options(model, *, lenient: bool = False,
                    on_warning: Callable[[str], None] | None = None) -> dict:
    """fmcli.data.parquet.ParquetReader's options to read data for `model`:
    its training settings and, with a wide map, the map to match columns
    by name (`lenient`: mismatches go to `on_warning`)."""
    hp = model.meta.get("hyperparameters") or {}
    known = {f.name for f in dataclasses.fields(Config)}
    options = Config.from_dict({k: v for k, v in hp.items() if k in known and k in PARQUET_KEYS}
                               ).parquet_options()
    m = model.meta.get("input")
    if isinstance(m, dict) and m.get("layout") == "wide":
        options.update(columns=None, hash_bits=int(m["hash_bits"]), float_columns=m["float_columns"],
                       match=m, lenient=lenient, on_warning=on_warning, mismatch_hint=PREDICT_HINT)
        if m.get("label_column") is not None:
            options["label_column"] = m["label_column"]
    return options


def check_layout(model, reader: Any, input_schema: str = "model",
                 warn: Callable[[str], None] | None = None) -> None:
    """Refuse to score data whose layout is not the one `model` was trained
    on (wide Parquet columns against feature ids), unless `input_schema` is
    "any".  A model without a map (before format 1.2) reading wide Parquet
    by position gets a warning."""
    fmt = getattr(reader, "fmt", None)
    if fmt == "raw":            # raw rows go through the model's own spec
        return
    parquet = fmt == "parquet"
    m = model.meta.get("input")
    if not isinstance(m, dict):
        hp = model.meta.get("hyperparameters") or {}
        if parquet and not hp.get("columns") and warn is not None and reader.layout() == "wide":
            warn(f"{reader.name}: the model stores no column map (model format before 1.2): its "
                 "columns are read by position, as in training; a file with its columns in another "
                 "order is misread (train again to have them matched by name)")
        return
    if input_schema == "any":
        return
    layout = reader.layout() if parquet else "ids"
    if layout != m.get("layout"):
        what = f"the model {model.path}" if getattr(model, "path", None) else "the model"
        raise DataError(f"is {_data_words(layout, reader.name, 'parquet' if parquet else 'text')}, "
                        f"but {what} was trained on {describe(m)}; --input-schema any scores it "
                        "anyway", reader.name)



def run_map(train_data, valid, config: Config, parent: dict | None | object = _FROM_FILE) -> dict:
    """The map of fm train's inputs (paths, globs, '-', lists of them, or a
    Batch): see :func:`training_map`.  parent: the --init-model's stored map
    when the caller has loaded it (a model read from a pipe cannot be read
    twice); by default it is read from the file's header."""
    from .data.batch import Batch
    from .data.source import expand_inputs

    if isinstance(train_data, Batch):
        return dict(IDS)
    paths: list[str] = []
    for source in (train_data, valid):
        if source is None or isinstance(source, Batch):
            continue
        specs = [source] if isinstance(source, (str, os.PathLike)) else list(source)
        paths += expand_inputs([os.fspath(s) for s in specs])
    return training_map(paths, config, parent)
