"""Machine-readable run logs: ``fm train --log-json FILE``.

One JSON object per line, appended and flushed line by line, so that a log
shared by many runs stays readable while they write it and a crashed run
leaves every line it wrote.  Each object has ``event``, ``time`` (UTC, ISO
8601), ``run`` (an id shared by the lines of one run) and the event's
fields:

``run_start``
    ``versions`` (fmcli, python, numpy, platform), ``argv``, ``options``
    (every option's resolved value), ``sources`` (where each came from:
    cli, env, config or default), ``config`` (the training configuration,
    or null when it is invalid), ``seed``, ``inputs`` (train, valid,
    weights: path, size, mtime_ns and a hash of the first and last MiB of
    each file; stdin, a pipe or a FIFO has only its path) and ``output``.
``epoch``
    ``epoch``, ``rows``, ``skipped`` (rows with a non-finite score or loss),
    ``train_loss``, ``valid`` (the validation metrics, or null), ``seconds``.
``eval``
    a validation within an epoch (``--eval-every``): ``epoch``, ``rows``
    (of the epoch), ``rows_total`` (of the run), ``train_loss``, ``valid``.
``round``
    a synchronisation round of a distributed run (``--scheduler``), after
    its merge: ``epoch``, ``round`` (its number in the run), ``rows`` (all
    workers'), ``seconds`` (the round's wall time), ``merge_seconds``,
    ``bytes_moved`` (between the driver and the workers and among the
    workers, all directions) and ``workers``: one object per worker with
    ``worker`` (its address), ``rows``, ``seconds`` (its training) and
    ``rows_per_s``.
``checkpoint``
    ``path``, ``epoch``, ``rows_done``.
``run_end``
    ``status`` (ok, error or interrupted), ``exit_code``, ``seconds``; on
    success ``model`` and ``sha256``, otherwise ``error``.

Numbers that JSON cannot hold (NaN, infinity) are written as null.
"""

from __future__ import annotations

import datetime as _dt
import glob
import hashlib
import json
import math
import os
import platform
import sys
import time
from collections.abc import Iterable
from typing import Any

from .errors import OutputError

__all__ = ["RunLog", "input_fingerprints", "file_sha256", "versions", "json_safe"]


def json_safe(obj: Any) -> Any:
    """obj with non-finite floats as None and tuples as lists (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "tolist") and callable(obj.tolist):   # numpy scalars and arrays
        return json_safe(obj.tolist())
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    return str(obj)


def versions() -> dict[str, str]:
    from ._version import __version__

    try:
        import numpy

        np_version = numpy.__version__
    except ImportError:  # pragma: no cover
        np_version = None
    return {"fmcli": __version__, "python": platform.python_version(), "numpy": np_version,
            "platform": platform.platform()}


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def input_fingerprints(specs: Iterable[str] | str | None) -> list[dict[str, Any]]:
    """Fingerprints of the files that paths or globs name ('-': stdin, and
    pipes and FIFOs, which fingerprinting would consume: none)."""
    from .data.cache import fingerprint
    from .data.source import reads_once

    if specs is None:
        return []
    if isinstance(specs, (str, os.PathLike)):
        specs = [os.fspath(specs)]
    out: list[dict[str, Any]] = []
    for spec in specs:
        spec = os.fspath(spec)
        if spec == "-":
            out.append({"path": "-"})
            continue
        paths = [spec] if os.path.exists(spec) or not glob.has_magic(spec) else sorted(glob.glob(spec))
        if not paths:
            out.append({"path": spec, "error": "no file matches"})
        for path in paths:
            if reads_once(path):
                out.append({"path": path})
                continue
            try:
                out.append(fingerprint(path))
            except OSError as exc:
                out.append({"path": path, "error": exc.strerror or str(exc)})
    return out


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


class RunLog:
    """Appends one JSON object per event to a file, flushed per line.

    A failure to write a line (a full disk) is reported once through `warn`
    and ends the logging, not the run.
    """

    def __init__(self, path: str, warn=None):
        self.path = os.fspath(path)
        self.run_id = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.getpid()}"
        self._warn = warn or (lambda msg: print(f"fm: warning: {msg}", file=sys.stderr))
        try:
            self._file = open(self.path, "a", encoding="utf-8", newline="\n")
        except OSError as exc:
            raise OutputError(f"cannot open the run log {self.path}: {exc.strerror or exc}") from None

    @property
    def closed(self) -> bool:
        return self._file is None

    def write(self, event: str, **fields: Any) -> None:
        if self._file is None:
            return
        record = {"event": event, "time": _now(), "run": self.run_id, **json_safe(fields)}
        line = json.dumps(record, allow_nan=False, separators=(", ", ": ")) + "\n"
        try:
            self._file.write(line)
            self._file.flush()
        except OSError as exc:
            self._warn(f"cannot write the run log {self.path}: {exc.strerror or exc}; it ends here")
            self._close_quietly()

    def _close_quietly(self) -> None:
        f, self._file = self._file, None
        if f is not None:
            try:
                f.close()
            except OSError:
                pass

    def close(self) -> None:
        self._close_quietly()

    def __enter__(self) -> "RunLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
