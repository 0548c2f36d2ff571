"""Scoring many files on a Dask cluster (``fm predict --scheduler``).

One pure task per input file: it loads the model from its file's bytes and
scores the file with fmcli.predict on the worker (the file must be readable
there under the same path), returning the output text that the
single-process ``fm predict`` would write.  The cluster comes from
fmcli.distributed.connect (which imports Dask); this module is scoring
orchestration, beside fmcli.predict.
"""

from __future__ import annotations

import uuid

from .distributed import DaskRunner
from .model import Model


def score_input(model_bytes: bytes, model_path: str | None, path: str, options: dict) -> dict:
    """Score one input file on a worker (a pure function of its arguments):
    the model file's bytes (Model.to_bytes), the name to give the model in
    messages, the input's path (readable on the worker) and iter_scores's
    keyword options.  Returns a dict: "text" (the input's output lines, as
    the single-process fm predict writes them; None on an error), "rows",
    "unseen" ((occurrences, rows, first) of ids the model has no weights
    for), "notes" (the messages and warnings the scoring printed, in order)
    and "error" (None, or (exit code, the one-line message) of the FMError
    that stopped it: sent back as text, to be raised on the driver)."""
    from .errors import FMError
    from .predict import UnseenIds, format_predictions, iter_scores, to_predictions

    notes: list[str] = []
    out = {"text": None, "rows": 0, "unseen": (0, 0, None), "notes": notes, "error": None}
    options = dict(options)
    top1 = options.pop("top1", False)
    strict = options.pop("strict_ids", False)
    try:
        model = Model.from_bytes(model_bytes)
        model.path = model_path
        task, classes = model.spec.task, model.spec.classes
        unseen = UnseenIds(model, strict=strict)
        parts = []
        for scores, labels in iter_scores(model, [path], unseen=unseen, log=notes.append,
                                          warn=lambda msg: notes.append(f"fm: warning: {msg}"), **options):
            parts.append(format_predictions(task, to_predictions(task, scores), classes, top1))
            out["rows"] += len(labels)
        out["text"] = "".join(parts)
        out["unseen"] = (unseen.occurrences, unseen.rows, unseen.first)
    except FMError as exc:
        out["error"] = (exc.exit_code, str(exc))
    return out


def remote_error(code: int, message: str):
    """An FMError with the worker's exit code and message."""
    from .errors import FMError

    exc = FMError(message)
    exc.exit_code = code
    return exc


def score_files(runner: DaskRunner, model: Model, paths: list[str], options: dict):
    """Score each of `paths` as one task of the cluster of `runner` (the
    model's bytes are shipped to every worker once); yields each input's
    (path, score_input's dict) in the order of `paths`, as soon as it and
    those before it are done.  The first input (in that order) whose task
    failed raises its error, after the tasks not yet done were cancelled."""
    client = runner.client
    data = model.to_bytes(include_state=False)
    [shared] = client.scatter([data], broadcast=True, hash=False)
    tag = uuid.uuid4().hex[:12]
    futures = [client.submit(score_input, shared, model.path, path, options, key=f"fmcli-score-{tag}-{j}",
                             pure=False, retries=3)
               for j, path in enumerate(paths)]
    runner.bytes_out += len(data) * len(runner.workers)
    try:
        for path, future in zip(paths, futures):
            result = future.result()
            future.release()
            if result["error"] is not None:
                raise remote_error(*result["error"])
            runner.bytes_back += len(result["text"])
            yield path, result
    finally:
        client.cancel(futures + [shared])
