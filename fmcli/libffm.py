"""libffm's model files, read into and written from fmcli models.

libffm's ``ffm-train`` has written two layouts over its history:

* **text** (libffm up to 1.21)::

      n N
      m M
      k K
      normalization 0|1
      w0,0 v1 v2 ... vK 
      w0,1 ...

  one line per feature j and field f, in the order j = 0..N-1, f =
  0..M-1 (``w{j},{f}``, then the K factors of feature j towards field f,
  each followed by a space); libffm prints 6 significant digits.

* **binary** (libffm 1.3 and later, the current one): int32 n, int32 m,
  int32 k, one byte normalization, then n * m * 2 * k_aligned float32
  (little-endian): for each (j, f), blocks of ALIGN weights followed by ALIGN
  AdaGrad accumulators, where ALIGN is 4 when libffm was built with SSE
  (its Makefile's default) and 1 otherwise, and k_aligned is k rounded up to
  a multiple of ALIGN (padding weights are 0, padding accumulators 1).

Either holds libffm's FFM: no bias, no linear term, instance normalization
on or off.  fmcli reads both (the binary layout's ALIGN is told from the
file's size and, when both fit, from where the accumulators are: they are
never below 1); it writes the text layout with shortest round-trip numbers,
or the binary one in the SSE layout.
"""

from __future__ import annotations

import os
import re
import struct
import time

import numpy as np

from .errors import ConfigError, InputNotFoundError, ModelFormatError, OutputError
from .numtext import format_float32

__all__ = ["read_model", "write_model", "load_any_model", "looks_like_model"]

_HEAD = struct.Struct("<iii?")
_TEXT_HEAD = re.compile(rb"\s*n\s+(\d+)\s+m\s+(\d+)\s+k\s+(\d+)\s+normalization\s+([01])[ \t\r]*\n")
_CHUNK_ROWS = 1 << 16


def read_model(path: str | os.PathLike):
    """A libffm model file (text or binary) as an fmcli FFM model."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except FileNotFoundError:
        raise InputNotFoundError(f"{path}: no such model file") from None
    except OSError as exc:
        raise InputNotFoundError(f"{path}: cannot open model file: {exc.strerror or exc}") from None
    m = _TEXT_HEAD.match(head)
    if m:
        return _read_text(path, m)
    return _read_binary(path)


def _fmcli_magic(head: bytes) -> bool:
    from .modelfile import MAGIC

    return head[:4] == MAGIC[:4]


def _binary_sizes_fit(head: bytes, size: int) -> bool:
    """Whether a file of `size` bytes starting with `head` has the shape of
    libffm's binary layout (header, then n * m * 2 * k_aligned floats)."""
    if len(head) < _HEAD.size:
        return False
    n, m, k, _ = _HEAD.unpack(head[: _HEAD.size])
    if n < 0 or m < 0 or not 1 <= k <= 1024 or head[12] not in (0, 1):
        return False
    return any(_HEAD.size + 4 * n * m * 2 * (-(-k // a) * a) == size for a in (4, 1))


def looks_like_model(path: str | os.PathLike) -> bool:
    """Whether `path` is, by its first bytes and size, a model file: fmcli's
    (magic bytes) or libffm's (text header, or binary header matching the
    file's size).  Cheap; never opens a pipe or FIFO; False when unreadable."""
    from .data.source import reads_once

    path = os.fspath(path)
    if reads_once(path):
        return False
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError:
        return False
    return _fmcli_magic(head) or bool(_TEXT_HEAD.match(head)) or _binary_sizes_fit(head, size)


def load_any_model(path: str | os.PathLike):
    """A model file of either kind: fmcli's own (told by its magic bytes) or
    libffm's (text or binary layout, see read_model).  A pipe or FIFO is
    copied to a temporary file first, so that it can be told apart too."""
    model, check = map_any_model(path)
    check.wait()
    return model


def map_any_model(path: str | os.PathLike):
    """load_any_model that returns (model, check) as soon as the model can be
    used, with an fmcli model file's checksum and values checked in the
    background (fmcli.model.map_model): nothing derived from the model may be
    written before check.wait() has returned."""
    from .data.source import reads_once, spooled
    from .model import load_model, map_model
    from .modelfile import PendingCheck

    path = os.fspath(path)
    if reads_once(path):
        with spooled([path], True) as (paths, names):
            try:
                return load_any_model(paths[0]), PendingCheck()
            except ModelFormatError as exc:
                raise ModelFormatError(exc.message, names[paths[0]]) from None
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return load_model(path), PendingCheck()          # it says why in its own words
    if _fmcli_magic(head):
        return map_model(path)
    try:
        return read_model(path), PendingCheck()
    except ModelFormatError as exc:
        detail = exc.message
        if detail.startswith("not a libffm model file"):
            detail = detail[len("not a libffm model file"):]
        if not detail.startswith((" (", ":")):
            detail = f" ({detail})"
        raise ModelFormatError(f"neither an fmcli model file (bad magic) nor a libffm one{detail}",
                               path) from None


def _model(n: int, m: int, k: int, normalize: bool, factors: np.ndarray, state: np.ndarray | None,
           path: str, layout: str):
    from .model import Model, ModelSpec

    spec = ModelSpec(kind="ffm", task="binary", k=k, n_features=n, n_fields=m, use_bias=False,
                     use_linear=False, normalize=normalize)
    meta = {
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(
            int(os.environ.get("SOURCE_DATE_EPOCH", time.time())))),
        "imported": {"from": "libffm", "layout": layout, "file": os.path.basename(path)},
        "optimizer": {"name": "adagrad", "state": state is not None, "slots": ["G"], "steps": 0},
    }
    if k < 1 or k > 1024:
        raise ModelFormatError(f"libffm model with k={k}: fmcli takes k in 1..1024", path)
    return Model(spec=spec, params={"factors": factors},
                 state={} if state is None else {"factors": state}, meta=meta)


def _read_text(path: str, head: re.Match):
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pcsv

    n, m, k, norm = (int(x) for x in head.groups())
    rows = n * m
    factors = np.empty((rows, k), np.float32)
    names = ["w"] + [f"v{d}" for d in range(k)]
    done = 0
    line = 5
    with open(path, "rb") as f:
        f.seek(head.end())
        carry = b""
        while True:
            block = f.read(16 << 20)
            buf = carry + block
            if block:
                cut = buf.rfind(b"\n") + 1
                buf, carry = buf[:cut], buf[cut:]
            else:
                carry = b""
                if buf and not buf.endswith(b"\n"):
                    buf += b"\n"
            if buf:
                # libffm ends each value with a space: drop a line's trailing blanks
                buf = re.sub(rb"[ \t\r]+\n", b"\n", buf)
                try:
                    table = pcsv.read_csv(
                        pa.BufferReader(buf),
                        read_options=pcsv.ReadOptions(column_names=names, block_size=len(buf) + 1),
                        parse_options=pcsv.ParseOptions(delimiter=" ", quote_char=False),
                        convert_options=pcsv.ConvertOptions(
                            column_types={"w": pa.string(), **{c: pa.float32() for c in names[1:]}}))
                except pa.ArrowInvalid as exc:
                    raise ModelFormatError(f"not a libffm text model near line {line} "
                                           f"(expected 'w{{j}},{{f}}' and {k} numbers per line: "
                                           f"{str(exc).splitlines()[0]})", path) from None
                got = table.num_rows
                if done + got > rows:
                    raise ModelFormatError(f"more than n*m = {rows} weight lines", path)
                ids = pc.extract_regex(table.column("w"), r"^w(?P<j>[0-9]+),(?P<f>[0-9]+)$")
                jj = pc.struct_field(ids, "j")
                if jj.null_count:
                    raise ModelFormatError(f"expected 'w{{j}},{{f}}' at the start of line "
                                           f"{line + int(pc.index(pc.is_null(jj), True).as_py())}", path)
                j = pc.cast(jj, pa.int64()).to_numpy(zero_copy_only=False)
                fl = pc.cast(pc.struct_field(ids, "f"), pa.int64()).to_numpy(zero_copy_only=False)
                want = np.arange(done, done + got)
                wrong = np.flatnonzero((j != want // max(m, 1)) | (fl != want % max(m, 1)))
                if wrong.size:
                    r = int(wrong[0])
                    raise ModelFormatError(f"line {line + r}: expected w{(done + r) // m},{(done + r) % m}",
                                           path)
                for d in range(k):
                    col = table.column(names[1 + d])
                    if col.null_count:
                        raise ModelFormatError(f"a factor is missing near line {line}", path)
                    factors[done : done + got, d] = col.to_numpy()
                done += got
                line += got
            if not block:
                break
    if done != rows:
        raise ModelFormatError(f"the file ends after {done} of n*m = {rows} weight lines", path)
    if not np.isfinite(factors).all():
        raise ModelFormatError("the model holds NaN or infinite weights", path)
    return _model(n, m, k, bool(norm), factors.reshape(n, m, k), None, path, "text")


def _read_binary(path: str):
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(_HEAD.size)
        if len(head) < _HEAD.size:
            raise ModelFormatError("not a libffm model file (too short)", path)
        n, m, k, norm = _HEAD.unpack(head)
        if n < 0 or m < 0 or not 1 <= k <= 1024 or head[12] not in (0, 1):
            raise ModelFormatError("not a libffm model file (neither its text nor its binary layout)",
                                   path)
        candidates = []
        for align in (4, 1):
            k_al = -(-k // align) * align
            if _HEAD.size + 4 * n * m * 2 * k_al == size and align not in [c[0] for c in candidates]:
                candidates.append((align, k_al))
        if not candidates:
            raise ModelFormatError(f"not a libffm model file: {size} bytes do not hold n={n}, m={m}, "
                                   f"k={k} (neither its text nor its binary layout)", path)
        w = np.fromfile(f, dtype="<f4", count=(size - _HEAD.size) // 4)
    picked = None
    for align, k_al in candidates:
        blocks = w.reshape(n * m, k_al // align, 2, align)
        if (blocks[:, :, 1, :] >= 1).all():
            picked = (align, k_al, blocks)
            break
    if picked is None:
        raise ModelFormatError("not a libffm model file: no AdaGrad accumulators where libffm keeps them",
                               path)
    align, k_al, blocks = picked
    factors = np.ascontiguousarray(blocks[:, :, 0, :].reshape(n * m, k_al)[:, :k]).reshape(n, m, k)
    state = np.ascontiguousarray(blocks[:, :, 1, :].reshape(n * m, k_al)[:, :k]).reshape(n, m, k)
    if not (np.isfinite(factors).all() and np.isfinite(state).all()):
        raise ModelFormatError("the model holds NaN or infinite weights", path)
    return _model(n, m, k, bool(norm), factors, state, path, f"binary, align {align}")


def _exportable(model) -> None:
    s = model.spec
    problems = []
    if s.kind != "ffm":
        problems.append(f"it is {s.kind}, not ffm")
    if s.task != "binary":
        problems.append(f"its task is {s.task}")
    if s.use_bias:
        problems.append("it has a bias term")
    if s.use_linear:
        problems.append("it has linear weights")
    if problems:
        raise ConfigError("only FFM models without bias and linear terms (fm train --model ffm "
                          "--no-bias --no-linear) can be written as libffm models; this one "
                          "cannot: " + ", ".join(problems))


def write_model(model, path: str | os.PathLike, binary: bool = False, include_state: bool = True) -> None:
    """Write an FFM model (no bias, no linear term, binary task) in libffm's
    text layout, or with `binary` in its binary layout (SSE build: ALIGN 4;
    the AdaGrad accumulators are the model's when it has AdaGrad state and
    `include_state`, else 1).

    A model of compact ids (fmcli.data.idmap) is written in the dense
    layout libffm reads: a row per original id up to the largest, the slots'
    weights at their ids and zero weights (AdaGrad accumulators of 1) for
    the ids it has no slot for -- which add nothing to a score, as in fmcli."""
    from .atomic import atomic_output

    _exportable(model)
    s = model.spec
    slots, m, k = s.n_features, s.n_fields, s.k
    factors = model.params["factors"].reshape(slots * m, k)
    id_map = model.id_map()
    n = slots if id_map is None else id_map.space     # features in the file

    def rows(a: np.ndarray, r0: int, r1: int, fill: float) -> np.ndarray:
        """Rows r0..r1 of (n * m, k) array `a` in the dense layout."""
        if id_map is None:
            return a[r0:r1]
        r = np.arange(r0, r1, dtype=np.int64)
        slot = id_map.lookup(r // m).astype(np.int64)
        out = np.full((r1 - r0, k), fill, np.float32)
        has = slot < slots
        out[has] = a[slot[has] * m + r[has] % m]
        return out

    path = os.fspath(path)
    try:
        with atomic_output(path, "wb") as f:
            if binary:
                f.write(_HEAD.pack(n, m, k, bool(s.normalize)))
                k_al = -(-k // 4) * 4
                state = None
                if include_state and (model.meta.get("optimizer") or {}).get("name") == "adagrad":
                    st = model.state.get("factors")
                    if st is not None and st.size == factors.size:
                        state = np.asarray(st).reshape(slots * m, k)
                for r0 in range(0, n * m, _CHUNK_ROWS):
                    r1 = min(r0 + _CHUNK_ROWS, n * m)
                    out = np.zeros((r1 - r0, k_al // 4, 2, 4), "<f4")
                    wpart = np.zeros((r1 - r0, k_al), np.float32)
                    wpart[:, :k] = rows(factors, r0, r1, 0.0)
                    gpart = np.ones((r1 - r0, k_al), np.float32)
                    if state is not None:
                        gpart[:, :k] = rows(state, r0, r1, 1.0)
                    out[:, :, 0, :] = wpart.reshape(r1 - r0, k_al // 4, 4)
                    out[:, :, 1, :] = gpart.reshape(r1 - r0, k_al // 4, 4)
                    f.write(out.tobytes())
                return
            f.write(f"n {n}\nm {m}\nk {k}\nnormalization {int(bool(s.normalize))}\n".encode())
            for r0 in range(0, n * m, _CHUNK_ROWS):
                r1 = min(r0 + _CHUNK_ROWS, n * m)
                block = np.asarray(rows(factors, r0, r1, 0.0), np.float32)
                vals = format_float32(block.reshape(-1)).reshape(r1 - r0, k)
                lines = []
                for r, row in zip(range(r0, r1), vals.tolist()):
                    lines.append(b"w%d,%d " % (r // m, r % m) + b" ".join(row) + b" \n")
                f.write(b"".join(lines))
    except OSError as exc:
        raise OutputError(f"cannot write output {path}: {exc.strerror or exc}") from exc
