"""`fm serve`: score rows over HTTP with one or more models.

Routes (every answer is JSON but /metrics, which is Prometheus text):

    POST /v1/models/NAME/predict   score the body's rows with model NAME
    GET  /v1/models                the models: name, path, checksum, kind, task, ...
    GET  /v1/models/NAME           one of them
    GET  /healthz                  ok / degraded (a reload failed) / draining
    GET  /metrics                  requests, rows, errors, latency per model

A request body is one of (the format is the ``format`` query parameter, or
else follows the Content-Type):

* ``jsonl`` (application/json, application/x-ndjson): one JSON object per
  line, or one JSON array of such objects: ``{"features": [...],
  "fields": [...], "values": [...]}`` (fields default to 0, values to 1),
  ``{"row": "0:3:1 1:7:0.5"}`` (a libffm or libsvm row's entries), or
  ``{"raw": {"C1": "68fd1e64", ...}}`` / ``{"raw": [...]}`` (a raw row's
  columns by name, or in the spec's column order, through the model's
  preprocessing spec).
* ``text`` (text/plain): libffm or libsvm rows as in a data file; the label
  is ignored, and a libffm row may leave it out.
* ``raw`` (text/csv, text/tab-separated-values): raw rows as in the log
  the model's preprocessing spec was made from (a header first where the
  log has one); ``label=1`` says that headerless rows start with a label.

The answer names the model and the SHA-256 of the model file that scored
the rows (the sha256 that fm train --log-json records): ``{"model": NAME,
"checksum": HEX, "rows": N, "predictions": [...]}`` -- probabilities
(binary), values (regression) or one list of class probabilities per row
(multiclass, with ``"classes"``), the numbers fm predict prints.

Hot reload: a watcher thread looks at every model file each
``reload_interval`` seconds (and on :meth:`Service.reload_now`, SIGHUP in
the command).  A file that was replaced (``fm train -o`` renames a new file
over the old one) is read and checked in that thread, and only then put in
place, with one reference assignment.  A request takes the model once when
it starts and is scored by that model whatever happens meanwhile, so no
request fails or mixes two models.  A file that does not load (corrupt, cut
short, missing) leaves the previous model serving; the error is logged and
shown by /healthz until a good file replaces it.

Concurrency: connections are served by threads; at most ``threads``
requests are parsed and scored at once (each with one scoring thread), the
others wait up to ``timeout`` seconds and then get 503.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import socket
import stat
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np

from ._version import __version__
from .config import (SERVE_HOST, SERVE_MAX_REQUEST_BYTES, SERVE_PORT, SERVE_RELOAD_INTERVAL,
                     SERVE_TIMEOUT)
from .data.batch import Batch
from .data.text import ReadLimits, TextReader, sniff_format
from .errors import ConfigError, DataError, FMError, InputNotFoundError, ListenError, ModelFormatError, UsageError
from .model import Model
from .modelfile import MAGIC
from .predict import Scorer, to_predictions, with_slots
from .registry import kind as model_kind

__all__ = ["ServeOptions", "Service", "LoadedModel", "load_model_file", "parse_model_args", "FORMATS"]

DEFAULT_HOST = SERVE_HOST
DEFAULT_PORT = SERVE_PORT
DEFAULT_TIMEOUT = SERVE_TIMEOUT
DEFAULT_MAX_REQUEST_BYTES = SERVE_MAX_REQUEST_BYTES
DEFAULT_RELOAD_INTERVAL = SERVE_RELOAD_INTERVAL
# connections open at once beyond which a new one is answered 503 at once
MAX_CONNECTIONS = 512
# request formats (the ``format`` query parameter)
FORMATS = ("jsonl", "text", "libffm", "libsvm", "raw")
# Content-Type -> format, when the query does not say
_CONTENT_TYPES = {
    "application/json": "jsonl", "application/x-ndjson": "jsonl", "application/jsonl": "jsonl",
    "application/jsonlines": "jsonl", "application/x-jsonlines": "jsonl",
    "text/plain": "text", "application/x-libffm": "libffm", "application/x-libsvm": "libsvm",
    "text/csv": "raw", "text/tab-separated-values": "raw",
}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
_MAX_ID = 2**31 - 1
_F32_MAX = float(np.finfo(np.float32).max)
# latency histogram buckets (seconds) of /metrics
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_WINDOW = 1024   # the last requests whose latencies give the quantiles


@dataclass(frozen=True)
class ServeOptions:
    """How the server listens and what it accepts."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT             # 0: a free port (Service.port says which)
    threads: int = 4                     # requests parsed and scored at once
    timeout: float = DEFAULT_TIMEOUT     # seconds to send a request / wait for a worker / drain
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    reload_interval: float = DEFAULT_RELOAD_INTERVAL   # 0: reload on reload_now() only

    def __post_init__(self):
        if not (0 <= int(self.port) <= 65535):
            raise ConfigError(f"port must be 0..65535, got {self.port}")
        if int(self.threads) < 1:
            raise ConfigError(f"threads must be at least 1, got {self.threads}")
        if not (self.timeout > 0 and math.isfinite(self.timeout)):
            raise ConfigError(f"timeout must be a positive number of seconds, got {self.timeout}")
        if int(self.max_request_bytes) < 1:
            raise ConfigError(f"max request bytes must be at least 1, got {self.max_request_bytes}")
        if not (self.reload_interval >= 0 and math.isfinite(self.reload_interval)):
            raise ConfigError(f"reload interval must be >= 0 seconds, got {self.reload_interval}")


def parse_model_args(args: Sequence[str]) -> list[tuple[str, str]]:
    """(name, path) of each MODEL argument: NAME=PATH, or PATH named by its
    file's stem (``models/ctr.fm`` is ``ctr``).  An argument with ``=`` is
    NAME=PATH when the part before it is a valid name and the whole is not an
    existing file.  Names are letters, digits, '.', '_' and '-'; two models
    of one name are a UsageError."""
    out: list[tuple[str, str]] = []
    seen: dict[str, str] = {}
    for arg in args:
        name, eq, path = arg.partition("=")
        if not eq or not _NAME.match(name) or os.path.exists(arg):
            path = arg
            base = os.path.basename(path.rstrip("/"))
            name = base.rsplit(".", 1)[0] if "." in base.lstrip(".") else base
        if not path:
            raise UsageError(f"model argument {arg!r} names no file")
        if not _NAME.match(name):
            raise UsageError(f"model name {name!r} (from {arg!r}) must be letters, digits, '.', '_' or '-' "
                             "(up to 128, starting with a letter or digit); give NAME=PATH")
        if name in seen:
            raise UsageError(f"two models are named {name!r} ({seen[name]} and {path}); "
                             "give them names with NAME=PATH")
        seen[name] = path
        out.append((name, path))
    return out


# --------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class LoadedModel:
    """One model file as read: never changed once made (a reload makes a new one)."""

    model: Model
    scorer: Scorer
    checksum: str                 # SHA-256 of the file's bytes, hex
    identity: tuple               # (device, inode, size, mtime_ns) of the file read
    loaded_at: float              # time.time()
    spec: Any = None              # the preprocessing spec (fmcli.data.criteo.Spec) or None

    def info(self) -> dict[str, Any]:
        s = self.model.spec
        return {"checksum": self.checksum, "kind": s.kind, "task": s.task, "k": s.k,
                "n_features": s.n_features, "n_fields": s.n_fields,
                "classes": None if s.classes is None else list(s.classes),
                "raw_rows": self.spec is not None, "stored_dtype": self.model.stored_dtype,
                "loaded_at": _iso(self.loaded_at)}


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def load_model_file(path: str) -> LoadedModel:
    """Read a model file once (its bytes are what is checksummed and loaded,
    so a file replaced meanwhile cannot give a checksum of another file) and
    prepare its scorer.  An fmcli or a libffm model file, as fm predict
    reads; errors as fm predict's (InputNotFoundError, ModelFormatError)."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if stat.S_ISDIR(st.st_mode):
                raise InputNotFoundError(f"{path}: is a directory, expected a model file")
            data = f.read()
    except FileNotFoundError:
        raise InputNotFoundError(f"{path}: no such model file") from None
    except IsADirectoryError:
        raise InputNotFoundError(f"{path}: is a directory, expected a model file") from None
    except OSError as exc:
        raise InputNotFoundError(f"{path}: cannot read: {exc.strerror or exc}") from None
    identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    checksum = hashlib.sha256(data).hexdigest()
    if data[: len(MAGIC)] == MAGIC:
        try:
            model = Model.from_bytes(data)
        except ModelFormatError as exc:
            raise ModelFormatError(exc.message, path) from None
    else:
        model = _libffm_model(data, path)
    model.path = path
    spec = None
    if model.meta.get("spec"):
        from .data.criteo import model_spec

        try:
            spec = model_spec(model, path)
        except ConfigError as exc:
            raise ModelFormatError(str(exc), path) from None
    return LoadedModel(model, Scorer(model, 1), checksum, identity, time.time(), spec)


def _libffm_model(data: bytes, path: str) -> Model:
    """A libffm model file's model, read from the bytes already read."""
    import tempfile

    from . import libffm

    with tempfile.NamedTemporaryFile(prefix="fm-serve-", suffix=".model") as tmp:
        tmp.write(data)
        tmp.flush()
        try:
            return libffm.load_any_model(tmp.name)
        except ModelFormatError as exc:
            raise ModelFormatError(exc.message, path) from None


class ModelSlot:
    """A name's model: the one serving now, and the state of reloading its file."""

    def __init__(self, name: str, path: str, loaded: LoadedModel):
        self.name = name
        self.path = path
        self.current = loaded          # replaced whole, never changed in place
        self.error: str | None = None  # why the last reload failed (None: it did not)
        self.error_at: float | None = None
        self._failed: tuple | None = None  # identity of the file that failed, not retried
        self.reloads = 0
        self.reload_errors = 0

    def poll(self, log: Callable[[str], None]) -> bool:
        """Reload the file if it is not the one serving (nor one that failed);
        True when a new model was put in place."""
        try:
            st = os.stat(self.path)
            identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError as exc:
            identity = ("missing", exc.errno)
        if identity == self.current.identity:
            if self.error is not None:     # the file serving was put back
                self.error = self.error_at = self._failed = None
                log(f"model {self.name}: {self.path} is again the file serving; the reload error is cleared")
            return False
        if identity == self._failed:
            return False
        try:
            new = load_model_file(self.path)
        except (FMError, OSError, MemoryError) as exc:
            self._failed = identity
            self.error = str(exc)
            self.error_at = time.time()
            self.reload_errors += 1
            log(f"fm: warning: model {self.name}: keeping the model of checksum {self.current.checksum[:12]}; "
                f"reloading failed: {exc}")
            return False
        old = self.current
        self.current = new             # the swap: requests that started keep `old`
        self.error = self.error_at = self._failed = None
        if new.checksum != old.checksum:
            self.reloads += 1
            log(f"model {self.name}: reloaded {self.path} (checksum {new.checksum[:12]}, "
                f"was {old.checksum[:12]})")
        return new.checksum != old.checksum

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, **self.current.info(),
                "reloads": self.reloads, "reload_error": self.error,
                "reload_error_at": None if self.error_at is None else _iso(self.error_at)}


# --------------------------------------------------------------------------
# request bodies -> Batch
# --------------------------------------------------------------------------

class RequestError(Exception):
    """A request that cannot be answered: its HTTP status and a one-line reason."""

    def __init__(self, status: int, message: str, line: int | None = None):
        super().__init__(message)
        self.status = int(status)
        self.message = message
        self.line = line


_REQUEST = "request"   # the body's name in DataErrors


class _BodyTextReader(TextReader):
    """The text reader over a request body held in memory."""

    def __init__(self, body: bytes, fmt: str, label_mode: str, max_line: int):
        super().__init__(_REQUEST, fmt, label_mode, limits=ReadLimits(max_line_bytes=max_line),
                         track_lines=True)
        self._body = body

    def _blocks(self):
        self.lines = 0
        if self.fmt == "auto":
            self.fmt = sniff_format(self._body) or "auto"
        yield self._body, len(self._body), 0


def _raw_reader(spec, body: bytes | None, has_label: bool):
    """A RawReader through `spec` whose one input is `body` (None: none)."""
    from .data.criteo import RawReader

    class _BodyRawReader(RawReader):
        def _line_blocks(self, path, name):
            if body:
                yield (body if body.endswith(b"\n") else body + b"\n"), 0

    return _BodyRawReader(spec, [_REQUEST] if body is not None else [], has_label=has_label,
                          names={_REQUEST: _REQUEST})


def _data_error(exc: DataError, what: str = "line") -> RequestError:
    where = f"{what} {exc.line}: " if exc.line is not None else ""
    return RequestError(400, f"{where}{exc.message}", exc.line)


def _with_labels_optional(body: bytes) -> bytes:
    """libffm rows whose first token is an entry (two colons) get a 0 label
    in front; other rows are left as they are."""
    lines = body.split(b"\n")
    changed = False
    for i, line in enumerate(lines):
        head = line.split(None, 1)
        if head and head[0].count(b":") >= 2:
            lines[i] = b"0 " + line
            changed = True
    return b"\n".join(lines) if changed else body


def parse_text(body: bytes, loaded: LoadedModel, fmt: str) -> Batch:
    """libffm / libsvm rows (fmt text: told by the rows) as a Batch."""
    multiclass = loaded.model.spec.task == "multiclass"
    if body.startswith(b"\xef\xbb\xbf"):    # a UTF-8 byte-order mark, as a data file may start
        body = body[3:]
    body = _with_labels_optional(body)
    reader = _BodyTextReader(body, "auto" if fmt == "text" else fmt, "class" if multiclass else "real",
                             len(body) + 1)
    try:
        return reader.read_all()
    except DataError as exc:
        raise _data_error(exc) from None


def parse_raw(body: bytes, loaded: LoadedModel, has_label: bool) -> Batch:
    """Raw rows through the model's preprocessing spec."""
    if loaded.spec is None:
        raise RequestError(400, "the model has no preprocessing spec (fm train --spec): send libffm "
                                "rows or JSON features")
    if body.startswith(b"\xef\xbb\xbf"):
        body = body[3:]
    reader = _raw_reader(loaded.spec, body, has_label)
    try:
        batches = list(reader)
    except DataError as exc:
        raise _data_error(exc) from None
    return Batch.concat(batches) if batches else Batch.empty()


def _json_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _json_rows(body: bytes) -> list[tuple[int, Any]]:
    """(line or item number, object) of a JSON-lines body or a JSON array."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(400, f"the body is not UTF-8 text (byte {exc.start})") from None
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            items = json.loads(text, parse_constant=_json_constant)
        except ValueError as exc:
            raise RequestError(400, f"malformed JSON: {exc}") from None
        except RecursionError:
            raise RequestError(400, "malformed JSON: nested too deeply") from None
        if not isinstance(items, list):
            raise RequestError(400, "expected a JSON array of row objects")
        return list(enumerate(items, 1))
    rows = []
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            rows.append((number, json.loads(line, parse_constant=_json_constant)))
        except ValueError as exc:
            raise RequestError(400, f"line {number}: malformed JSON ({exc})", number) from None
        except RecursionError:
            raise RequestError(400, f"line {number}: malformed JSON (nested too deeply)", number) from None
    return rows


def _ints(value, what: str, where: str) -> list[int]:
    if not isinstance(value, list):
        raise RequestError(400, f"{where}: \"{what}\" must be a list of integers")
    for v in value:
        if type(v) is not int or not (0 <= v <= _MAX_ID):
            raise RequestError(400, f"{where}: \"{what}\" holds {json.dumps(v)[:40]}, expected an "
                                    "integer id in 0..2^31-1")
    return value


def _numbers(value, where: str) -> list[float]:
    if not isinstance(value, list):
        raise RequestError(400, f"{where}: \"values\" must be a list of numbers")
    for v in value:
        if type(v) not in (int, float) or not (abs(v) <= _F32_MAX):
            raise RequestError(400, f"{where}: \"values\" holds {json.dumps(v)[:40]}, expected a finite "
                                    "number within float32 range")
    return value


def _raw_text(v, where: str) -> bytes:
    """A raw JSON value as the text a log would hold."""
    if v is None:
        return b""
    if isinstance(v, str):
        return v.encode("utf-8")
    if type(v) is int:
        return str(v).encode()
    if type(v) is float:
        if not math.isfinite(v):
            raise RequestError(400, f"{where}: a raw value must be finite")
        return (str(int(v)) if v.is_integer() else repr(v)).encode()
    raise RequestError(400, f"{where}: a raw value must be a string, a number or null, "
                            f"found {json.dumps(v)[:40]}")


def parse_json(body: bytes, loaded: LoadedModel) -> Batch:
    """JSON rows (see the module's doc) as a Batch; every row of a request
    is of one kind (features, row or raw)."""
    items = _json_rows(body)
    what = "item" if body.lstrip().startswith(b"[") else "line"
    kinds = set()
    for number, obj in items:
        if not isinstance(obj, dict):
            raise RequestError(400, f"{what} {number}: expected a JSON object", number)
        keys = ("raw" in obj, "row" in obj, "features" in obj)
        if sum(keys) != 1:
            raise RequestError(400, f"{what} {number}: a row object has one of \"features\", \"row\" "
                                    "or \"raw\"", number)
        kinds.add(keys.index(True))
    if len(kinds) > 1:
        raise RequestError(400, "every row of a request is of one kind: features, row or raw")
    if not items:
        return Batch.empty()
    kind = kinds.pop()
    if kind == 0:
        return _json_raw(items, loaded, what)
    if kind == 1:
        texts = []
        for number, obj in items:
            row = obj["row"]
            if not isinstance(row, str) or "\n" in row or "\r" in row:
                raise RequestError(400, f"{what} {number}: \"row\" must be one line of libffm or libsvm "
                                        "entries", number)
            texts.append("0 " + row)
        try:
            return parse_text("\n".join(texts).encode("utf-8"), loaded, "text")
        except RequestError as exc:
            if exc.line is None:
                raise
            number = items[exc.line - 1][0]
            raise RequestError(400, f"{what} {number}: " + exc.message.split(": ", 1)[-1], number) from None
    return _json_features(items, loaded, what)


def _json_features(items, loaded: LoadedModel, what: str) -> Batch:
    needs_fields = model_kind(loaded.model.spec.kind).needs_fields
    indptr = np.zeros(len(items) + 1, np.int64)
    fields: list[int] = []
    features: list[int] = []
    values: list[float] = []
    for r, (number, obj) in enumerate(items):
        where = f"{what} {number}"
        unknown = set(obj) - {"features", "fields", "values", "id"}
        if unknown:
            raise RequestError(400, f"{where}: unknown key {sorted(unknown)[0]!r} (features, fields, "
                                    "values)", number)
        f = _ints(obj["features"], "features", where)
        n = len(f)
        if "fields" in obj:
            fl = _ints(obj["fields"], "fields", where)
            if len(fl) != n:
                raise RequestError(400, f"{where}: \"fields\" has {len(fl)} entries, \"features\" {n}", number)
        elif needs_fields:
            raise RequestError(400, f"{where}: a {loaded.model.spec.kind} model needs \"fields\"", number)
        else:
            fl = [0] * n
        if "values" in obj:
            v = _numbers(obj["values"], where)
            if len(v) != n:
                raise RequestError(400, f"{where}: \"values\" has {len(v)} entries, \"features\" {n}", number)
        else:
            v = [1.0] * n
        features += f
        fields += fl
        values += v
        indptr[r + 1] = len(features)
    return Batch(np.zeros(len(items), np.float32), indptr, np.asarray(fields, np.int32),
                 np.asarray(features, np.int32), np.asarray(values, np.float32),
                 np.array([n for n, _ in items], np.int64))


def _json_raw(items, loaded: LoadedModel, what: str) -> Batch:
    import pyarrow as pa

    spec = loaded.spec
    if spec is None:
        raise RequestError(400, "the model has no preprocessing spec (fm train --spec): send libffm "
                                "rows or JSON features")
    names = [c.name for c in spec.columns]
    position = {n: j for j, n in enumerate(names)}
    columns: list[list[bytes]] = [[] for _ in names]
    for number, obj in items:
        where = f"{what} {number}"
        raw = obj["raw"]
        if isinstance(raw, dict):
            row = [b""] * len(names)
            for key, value in raw.items():
                if key not in position:
                    if key == spec.label:
                        continue          # a label is allowed and ignored
                    raise RequestError(400, f"{where}: no column {key[:40]!r} in the model's spec", number)
                row[position[key]] = _raw_text(value, where)
        elif isinstance(raw, list):
            if len(raw) != len(names):
                raise RequestError(400, f"{where}: \"raw\" has {len(raw)} values, the spec {len(names)} "
                                        "columns", number)
            row = [_raw_text(value, where) for value in raw]
        else:
            raise RequestError(400, f"{where}: \"raw\" must be an object or a list", number)
        for j, text in enumerate(row):
            columns[j].append(text)
    reader = _raw_reader(spec, None, False)
    table = pa.table([pa.array(c, pa.binary()) for c in columns], names=[f"c{j}" for j in range(len(names))])
    block, bad = reader.transform_texts(table, _REQUEST)
    if bad:
        row, message = bad[0]
        number = items[row - 1][0]
        raise RequestError(400, f"{what} {number}: {message}", number)
    batch = reader.batch(block)
    return Batch(batch.labels, batch.indptr, batch.fields, batch.features, batch.values,
                 np.array([n for n, _ in items], np.int64))


def score(loaded: LoadedModel, batch: Batch) -> np.ndarray:
    """Predictions of a batch (fm predict's numbers), unseen ids ignored;
    a row that scores NaN or infinity is a RequestError naming it."""
    model = loaded.model
    if batch.n_rows == 0:
        s = model.spec
        return np.zeros((0, s.n_classes) if s.task == "multiclass" else 0)
    id_map = model.id_map()
    if id_map is not None:
        batch = with_slots(batch, id_map)
    scores = loaded.scorer.scores(batch)
    # as fmcli.predict.check_scores: a NaN or infinite score is refused, naming the row
    bad = ~np.isfinite(scores.reshape(batch.n_rows, -1)).all(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        line = int(batch.lines[row]) if batch.lines is not None else row + 1
        raise RequestError(400, f"line {line}: the model's score of this row is not a finite number "
                                "(its weights overflow on the row's values)", line)
    return to_predictions(model.spec.task, scores)


# --------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------

class _ModelStats:
    def __init__(self):
        self.codes: dict[int, int] = {}
        self.rows = 0
        self.errors = 0
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.seconds = 0.0
        self.count = 0
        self.window: deque[float] = deque(maxlen=_WINDOW)


class Metrics:
    """Counters and latencies, rendered as Prometheus text."""

    def __init__(self, names: Sequence[str]):
        self._lock = threading.Lock()
        self.models = {name: _ModelStats() for name in names}
        self.other: dict[int, int] = {}     # answers to no model's route (404, 405, ...) by status
        self.started = time.time()

    def observe(self, name: str | None, status: int, rows: int, seconds: float) -> None:
        with self._lock:
            stats = self.models.get(name) if name is not None else None
            if stats is None:
                self.other[status] = self.other.get(status, 0) + 1
                return
            stats.codes[status] = stats.codes.get(status, 0) + 1
            if status >= 400:
                stats.errors += 1
            else:
                stats.rows += rows
            i = 0
            while i < len(LATENCY_BUCKETS) and seconds > LATENCY_BUCKETS[i]:
                i += 1
            stats.buckets[i] += 1
            stats.seconds += seconds
            stats.count += 1
            stats.window.append(seconds)

    def render(self, slots: dict[str, ModelSlot], in_flight: int) -> str:
        out: list[str] = []

        def head(name: str, kind: str, text: str) -> None:
            out.append(f"# HELP {name} {text}")
            out.append(f"# TYPE {name} {kind}")

        with self._lock:
            models = {n: s for n, s in self.models.items()}
            head("fm_serve_requests_total", "counter", "Scoring requests answered, by model and HTTP status.")
            for n, s in models.items():
                for code in sorted(s.codes):
                    out.append(f'fm_serve_requests_total{{model="{n}",code="{code}"}} {s.codes[code]}')
            head("fm_serve_rows_total", "counter", "Rows scored.")
            for n, s in models.items():
                out.append(f'fm_serve_rows_total{{model="{n}"}} {s.rows}')
            head("fm_serve_errors_total", "counter", "Scoring requests answered with an error (4xx, 5xx).")
            for n, s in models.items():
                out.append(f'fm_serve_errors_total{{model="{n}"}} {s.errors}')
            head("fm_serve_request_seconds", "histogram",
                 "Time from a request's headers to its answer, ready to be sent.")
            for n, s in models.items():
                total = 0
                for bound, count in zip(LATENCY_BUCKETS + (math.inf,), s.buckets):
                    total += count
                    le = "+Inf" if bound == math.inf else repr(bound)
                    out.append(f'fm_serve_request_seconds_bucket{{model="{n}",le="{le}"}} {total}')
                out.append(f'fm_serve_request_seconds_sum{{model="{n}"}} {s.seconds!r}')
                out.append(f'fm_serve_request_seconds_count{{model="{n}"}} {s.count}')
            head("fm_serve_request_latency_seconds", "summary",
                 f"Latency quantiles over the last {_WINDOW} requests.")
            for n, s in models.items():
                window = np.fromiter(s.window, np.float64, len(s.window))
                for q in (0.5, 0.9, 0.99):
                    v = float(np.quantile(window, q)) if window.size else math.nan
                    out.append(f'fm_serve_request_latency_seconds{{model="{n}",quantile="{q}"}} '
                               + ("NaN" if v != v else repr(v)))
                out.append(f'fm_serve_request_latency_seconds_sum{{model="{n}"}} {float(window.sum())!r}')
                out.append(f'fm_serve_request_latency_seconds_count{{model="{n}"}} {window.size}')
            head("fm_serve_other_responses_total", "counter",
                 "Answers to requests for no model's route (unknown model or path, bad method), by status.")
            for code in sorted(self.other):
                out.append(f'fm_serve_other_responses_total{{code="{code}"}} {self.other[code]}')
        head("fm_serve_reloads_total", "counter", "Model files reloaded, by result.")
        for n, slot in slots.items():
            out.append(f'fm_serve_reloads_total{{model="{n}",result="ok"}} {slot.reloads}')
            out.append(f'fm_serve_reloads_total{{model="{n}",result="error"}} {slot.reload_errors}')
        head("fm_serve_model_info", "gauge", "The model serving under each name (its file's SHA-256).")
        for n, slot in slots.items():
            cur = slot.current
            out.append(f'fm_serve_model_info{{model="{n}",checksum="{cur.checksum}",kind="{cur.model.spec.kind}",'
                       f'task="{cur.model.spec.task}"}} 1')
        head("fm_serve_reload_failing", "gauge", "1 while the last reload of a model's file failed.")
        for n, slot in slots.items():
            out.append(f'fm_serve_reload_failing{{model="{n}"}} {int(slot.error is not None)}')
        head("fm_serve_in_flight", "gauge", "Requests being answered.")
        out.append(f"fm_serve_in_flight {in_flight}")
        head("fm_serve_uptime_seconds", "gauge", "Seconds since the server started.")
        out.append(f"fm_serve_uptime_seconds {time.time() - self.started:.3f}")
        return "\n".join(out) + "\n"


# --------------------------------------------------------------------------
# the server
# --------------------------------------------------------------------------

class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True          # an idle keep-alive connection never holds up the exit
    block_on_close = False
    service: "Service"

    def process_request(self, request, client_address):
        if not self.service._connection_opened():
            # too many connections: answer at once rather than start a thread
            try:
                body = b'{"error": "too many connections"}\n'
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                b"Connection: close\r\nContent-Length: " + str(len(body)).encode()
                                + b"\r\n\r\n" + body)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.service._connection_closed()

    def handle_error(self, request, client_address):
        # a connection reset by the client, say: not worth a traceback
        exc = sys.exc_info()[1]
        if not isinstance(exc, OSError):
            self.service.log(f"fm: warning: internal error answering {client_address[0]}: "
                             f"{type(exc).__name__}: {exc}")


class Service:
    """The models and the HTTP server that scores with them.

    ``Service(models, options, log).start()`` loads nothing more (the models
    are loaded by the constructor, so a bad file fails before a port is
    taken), binds the address and serves in background threads; ``stop()``
    drains the requests in flight."""

    def __init__(self, models: Sequence[tuple[str, str]], options: ServeOptions = ServeOptions(),
                 log: Callable[[str], None] | None = None):
        self.options = options
        self.log = log or (lambda msg: None)
        self.slots: dict[str, ModelSlot] = {}
        for name, path in models:
            if name in self.slots:
                raise UsageError(f"two models are named {name!r}")
            self.slots[name] = ModelSlot(name, path, load_model_file(path))
        self.metrics = Metrics(list(self.slots))
        self._workers = threading.Semaphore(int(options.threads))
        self._cond = threading.Condition()
        self._in_flight = 0
        self._connections = 0
        self.draining = False
        self._server: _HTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self._wake = threading.Event()
        self._stopped = threading.Event()

    # -- life cycle ----------------------------------------------------------
    def start(self) -> tuple[str, int]:
        """Bind, then serve and watch the model files in background threads;
        (host, port) listened on.  A port in use (or another reason not to
        listen) is a ListenError."""
        host, port = self.options.host, int(self.options.port)
        server_class = _HTTPServer
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise ListenError(f"cannot listen on {host}:{port}: unknown host ({exc.strerror})") from None
        family = infos[0][0]
        if family != socket.AF_INET:
            server_class = type("_HTTPServer6", (_HTTPServer,), {"address_family": family})
        handler = type("_BoundHandler", (_Handler,), {"service": self, "timeout": self.options.timeout})
        try:
            server = server_class((host, port), handler)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                why = "the address is already in use (another server has the port; give --port)"
            elif exc.errno == errno.EACCES:
                why = "permission denied (ports below 1024 need privileges)"
            else:
                why = exc.strerror or str(exc)
            raise ListenError(f"cannot listen on {host}:{port}: {why}") from None
        server.service = self
        self._server = server
        serve = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                 name="fm-serve-http", daemon=True)
        watch = threading.Thread(target=self._watch, name="fm-serve-reload", daemon=True)
        self._threads = [serve, watch]
        serve.start()
        watch.start()
        return self.address

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None
        addr = self._server.server_address
        return str(addr[0]), int(addr[1])

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def reload_now(self) -> None:
        """Look at the model files now (SIGHUP)."""
        self._wake.set()

    def poll(self) -> None:
        """One look at every model file (what the watcher does each interval)."""
        for slot in self.slots.values():
            slot.poll(self.log)

    def _watch(self) -> None:
        interval = self.options.reload_interval
        while not self._stopped.is_set():
            self._wake.wait(interval if interval > 0 else None)
            self._wake.clear()
            if self._stopped.is_set():
                return
            try:
                self.poll()
            except Exception as exc:   # never let the watcher die
                self.log(f"fm: warning: watching the model files: {type(exc).__name__}: {exc}")

    def stop(self, timeout: float | None = None) -> bool:
        """Stop accepting connections, wait up to `timeout` seconds (default:
        the options' timeout) for the requests in flight, close.  True when
        every request in flight was answered."""
        timeout = self.options.timeout if timeout is None else timeout
        self.draining = True
        server = self._server
        if server is not None:
            server.shutdown()          # the accept loop ends; connections already open go on
            server.socket.close()
        with self._cond:
            drained = self._cond.wait_for(lambda: self._in_flight == 0, timeout)
        self._stopped.set()
        self._wake.set()
        if server is not None:
            server.server_close()
        return drained

    # -- bookkeeping used by the handler -------------------------------------
    def _connection_opened(self) -> bool:
        with self._cond:
            if self._connections >= MAX_CONNECTIONS:
                return False
            self._connections += 1
            return True

    def _connection_closed(self) -> None:
        with self._cond:
            self._connections -= 1

    def _begin(self) -> None:
        with self._cond:
            self._in_flight += 1

    def _end(self) -> None:
        with self._cond:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._cond.notify_all()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    # -- answers ---------------------------------------------------------------
    def health(self) -> tuple[int, dict]:
        failing = {n: s.error for n, s in self.slots.items() if s.error is not None}
        status = "draining" if self.draining else "degraded" if failing else "ok"
        return (503 if self.draining else 200), {
            "status": status, "version": __version__,
            "models": {n: {"checksum": s.current.checksum, "path": s.path, "reload_error": s.error}
                       for n, s in self.slots.items()}}

    def predict(self, name: str, body: bytes, fmt: str, has_label: bool) -> tuple[dict, int]:
        """The answer to a scoring request (and its rows); RequestError otherwise."""
        slot = self.slots.get(name)
        if slot is None:
            raise RequestError(404, f"no model named {name[:64]!r} (see /v1/models)")
        loaded = slot.current          # this request's model, whatever reloads meanwhile
        if fmt == "jsonl":
            batch = parse_json(body, loaded)
        elif fmt == "raw":
            batch = parse_raw(body, loaded, has_label)
        else:
            batch = parse_text(body, loaded, fmt)
        preds = score(loaded, batch)
        spec = loaded.model.spec
        answer: dict[str, Any] = {"model": name, "checksum": loaded.checksum, "rows": int(batch.n_rows)}
        if spec.task == "multiclass":
            answer["classes"] = list(spec.classes)
        answer["predictions"] = preds.tolist()
        return answer, int(batch.n_rows)


class _Handler(BaseHTTPRequestHandler):
    """One connection: keep-alive HTTP/1.1, JSON answers."""

    protocol_version = "HTTP/1.1"
    # an answer's headers and body are two writes: without TCP_NODELAY the
    # second waits for the client's delayed ACK (tens of milliseconds)
    disable_nagle_algorithm = True
    server_version = f"fm-serve/{__version__}"
    service: Service           # set on the bound subclass

    def log_message(self, format, *args):   # no access log on stderr
        pass

    def send_error(self, code, message=None, explain=None):
        """http.server's own errors (a malformed request line, headers too
        long, an unsupported method) as JSON too."""
        self.service.metrics.observe(None, int(code), 0, 0.0)
        try:
            self._error(int(code), message or HTTPStatus(code).phrase, close=True)
        except OSError:
            self.close_connection = True

    # -- answers --------------------------------------------------------------------
    def _send(self, status: int, payload: dict | str, content_type: str = "application/json",
              close: bool = False) -> None:
        if isinstance(payload, str):
            data = payload.encode("utf-8")
        else:
            data = (json.dumps(payload, separators=(",", ":")) + "\n").encode("utf-8")
        if self.service.draining:
            close = True
        self.send_response(status)
        self.send_header("Content-Type", content_type + ("; charset=utf-8" if content_type.startswith("text/")
                                                         else ""))
        self.send_header("Content-Length", str(len(data)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _error(self, status: int, message: str, line: int | None = None, close: bool = False) -> None:
        payload: dict[str, Any] = {"error": message.replace("\n", " ")}
        if line is not None:
            payload["line"] = line
        self._send(status, payload, close=close)

    def _route(self) -> tuple[list[str], dict[str, list[str]]]:
        parts = urlsplit(self.path)
        segments = [unquote(p) for p in parts.path.split("/") if p]
        return segments, parse_qs(parts.query)

    # -- methods -------------------------------------------------------------------
    def do_GET(self):
        start = time.perf_counter()
        segments, _ = self._route()
        svc = self.service
        if segments == ["healthz"]:
            status, payload = svc.health()
            self._send(status, payload)
        elif segments == ["metrics"]:
            self._send(200, svc.metrics.render(svc.slots, svc.in_flight), "text/plain; version=0.0.4")
        elif segments == ["v1", "models"]:
            self._send(200, {"models": [s.info() for s in svc.slots.values()]})
        elif len(segments) == 3 and segments[:2] == ["v1", "models"] and segments[2] in svc.slots:
            self._send(200, svc.slots[segments[2]].info())
        elif len(segments) == 4 and segments[:2] == ["v1", "models"] and segments[3] == "predict":
            svc.metrics.observe(None, 405, 0, time.perf_counter() - start)
            self._error(405, "use POST to score rows")
        else:
            svc.metrics.observe(None, 404, 0, time.perf_counter() - start)
            self._error(404, f"no such path {self.path[:80]!r} (see /v1/models)")

    do_HEAD = do_GET

    def do_POST(self):
        start = time.perf_counter()
        svc = self.service
        svc._begin()
        try:
            name, status, payload, line, rows = self._answer()
            if status == 200:
                payload = json.dumps(payload, separators=(",", ":")) + "\n"
            # counted before the answer goes out: a client that reads /metrics
            # right after its answer sees its request
            svc.metrics.observe(name, status, rows, time.perf_counter() - start)
            if status == 200:
                self._send(200, payload)
            elif status == 499:      # the client went away: nothing can be sent
                self.close_connection = True
            else:
                # after an unread or partly read body the connection cannot go on
                self._error(status, payload, line, close=status in (408, 411, 413) or status >= 500)
        finally:
            svc._end()

    def _answer(self) -> tuple[str | None, int, Any, int | None, int]:
        """(model name, status, answer or error message, line of the error, rows) of a POST."""
        svc = self.service
        name: str | None = None
        try:
            segments, query = self._route()
            if not (len(segments) == 4 and segments[:2] == ["v1", "models"] and segments[3] == "predict"):
                raise RequestError(404, f"no such path {self.path[:80]!r}: POST /v1/models/NAME/predict")
            if segments[2] not in svc.slots:
                raise RequestError(404, f"no model named {segments[2][:64]!r} (see /v1/models)")
            name = segments[2]
            if svc.draining:
                raise RequestError(503, "the server is shutting down")
            fmt = self._format(query)
            has_label = query.get("label", ["0"])[-1].lower() in ("1", "true", "yes")
            body = self._body()
            if not svc._workers.acquire(timeout=svc.options.timeout):
                raise RequestError(503, f"busy: no worker free within {svc.options.timeout:g} s")
            try:
                answer, rows = svc.predict(name, body, fmt, has_label)
            finally:
                svc._workers.release()
            return name, 200, answer, None, rows
        except RequestError as exc:
            return name, exc.status, exc.message, exc.line, 0
        except FMError as exc:
            return name, 400, str(exc), None, 0
        except MemoryError:
            return name, 503, "out of memory", None, 0
        except OSError:
            return name, 499, None, None, 0
        except Exception as exc:   # a bug: answer 500, keep serving
            svc.log(f"fm: warning: internal error scoring for {name}: {type(exc).__name__}: {exc}")
            return name, 500, f"internal error: {type(exc).__name__}", None, 0

    def _format(self, query: dict[str, list[str]]) -> str:
        if "format" in query:
            fmt = query["format"][-1].lower()
            if fmt not in FORMATS:
                raise RequestError(400, f"format must be one of {', '.join(FORMATS)}, got {fmt[:40]!r}")
            return fmt
        ctype = (self.headers.get("Content-Type") or "text/plain").split(";")[0].strip().lower()
        fmt = _CONTENT_TYPES.get(ctype)
        if fmt is None:
            raise RequestError(415, f"Content-Type {ctype[:60]!r} is not one fm serve reads "
                                    "(application/json, text/plain, text/csv, or ?format=)")
        return fmt

    def _body(self) -> bytes:
        limit = self.service.options.max_request_bytes
        if self.headers.get("Transfer-Encoding"):
            raise RequestError(411, "send the body with a Content-Length (no chunked transfer encoding)")
        length = self.headers.get("Content-Length")
        if length is None:
            raise RequestError(411, "a Content-Length header is needed")
        try:
            n = int(length)
            if n < 0:
                raise ValueError
        except ValueError:
            raise RequestError(400, f"bad Content-Length {length[:40]!r}") from None
        if n > limit:
            raise RequestError(413, f"the body has {n} bytes, more than the limit of {limit} "
                                    "(--max-request-bytes)")
        try:
            data = self.rfile.read(n)
        except (socket.timeout, TimeoutError):
            raise RequestError(408, f"the body did not arrive within {self.service.options.timeout:g} s") from None
        if len(data) != n:
            raise RequestError(400, f"the body ended after {len(data)} of {n} bytes")
        return data
