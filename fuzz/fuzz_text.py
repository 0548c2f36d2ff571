"""Fuzz the libffm / libsvm text parser (see fuzz/README.md).

Each input is a chunk of "file" bytes.  It goes, in both formats and both
label modes, to

1. the compiled tokenizer ``fmcli._core._parse.parse_block``, with output
   arrays sized exactly as ``fmcli.data.text`` sizes them.  Any error code is
   an acceptable answer for bad text except E_CAPACITY (the sizing rule is
   supposed to make it impossible).  The output must be a well-formed CSR
   batch, and the call is repeated with the input embedded between different
   guard bytes: a parser that reads outside its buffer answers differently;
2. ``fmcli.data.text.TextReader`` (fed from memory), with several block
   sizes.  Only DataError may escape, its message must be printable ASCII
   starting with ``<stdin>:LINE: ``, the outcome must not depend on the
   block size and must agree with step 1.

Anything else (another exception, a failed check, a crash, a hang) is a bug.
Run it through ``make fuzz``, which builds fmcli with bounds checks on, or by
hand: ``python fuzz/fuzz_text.py CORPUS_DIR [libFuzzer flags]``; give it a
crash file instead of a directory to replay one input.
"""

from __future__ import annotations

import io
import os
import re
import sys

import atheris
import numpy as np

with atheris.instrument_imports(include=["fmcli"]):
    from fmcli._core import _parse
    from fmcli.data import text
    from fmcli.errors import DataError

E_CAPACITY = 8
MAX_ID = 2**31 - 1
BOM = b"\xef\xbb\xbf"
# Small blocks split lines, numbers and a leading byte-order mark; block size 1
# would make every input cost thousands of reads.
BLOCK_SIZES = (2, 61, text.DEFAULT_BLOCK_BYTES)
GUARDS = (b"\x009:1.5e", b"\n \t#\r-+")  # two different paddings around the input
PAD = 8

# Checks for bugs that are known and still open can be switched off while the
# rest is fuzzed: FUZZ_KNOWN_BUGS=inf-labels (comma-separated names).
KNOWN_BUGS = set(os.environ.get("FUZZ_KNOWN_BUGS", "").split(","))

FORMATS = ("libffm", "libsvm")
LABEL_MODES = ("binary", "real")
MESSAGE = re.compile(r"<stdin>:([0-9]+): [ -~]+\Z")
SEEDS = (
    b"1 0:1:0.5 2:3:1\n0 1:7:2\n",
    b"# comment\r\n1 0:1:0.5 2:3:1\r\n\r\n0\t\t1:7:2   3:8:4  # trailing\r\n-1\n1 0:0:1",
    b"1 qid:3 1:0.5 4:2\n0 qid:17 9:1\n-1 3:-1 qid:9\n",
    b"1 2147483647:2147483647:3.4028235e+38 0:0:1.17549435e-38 1:1:-0.0\n",
    b"0 1:2:1e-400 3:4:.5 5:6:5. 7:8:+3 9:10:00000000000000000000001.5e-0\n",
    b"0.25 0:0:1\n-7 1:1:1\n",
    b"1 1:2:1e400\n",
)


def _capacity(nbytes: int) -> tuple[int, int]:
    rule = getattr(text, "_capacity", None)
    if rule is not None:
        return rule(nbytes)
    return nbytes // 2 + 1, nbytes // 4 + 1


def _feedback(err: int, data: bytes, start: int) -> None:
    """Turn the compiled parser's answer into Python branches, so that
    libFuzzer (which sees only Python coverage) keeps inputs that reach a new
    error, or the same error after a new kind of byte."""
    c = data[start] if start < len(data) else -1
    cls = (
        "end" if c < 0 else
        "digit" if 48 <= c <= 57 else
        "sign" if c in (43, 45) else
        "dot" if c == 46 else
        "colon" if c == 58 else
        "e" if c in (101, 69) else
        "space" if c in (32, 9) else
        "cr" if c == 13 else
        "letter" if 65 <= c <= 122 else
        "other"
    )
    if err == 0:
        return
    if err == 1:
        _branch("label", cls)
    elif err == 2:
        _branch("label-value", cls)
    elif err == 3:
        _branch("token", cls)
    elif err == 4:
        _branch("negative", cls)
    elif err == 5:
        _branch("big", cls)
    elif err == 6:
        _branch("value", cls)
    elif err == 7:
        _branch("nonfinite", cls)
    else:
        _branch("other", cls)


def _branch(kind: str, cls: str) -> None:
    # One comparison per class: each (kind, class) pair is its own edge.
    if cls == "end":
        pass
    elif cls == "digit":
        pass
    elif cls == "sign":
        pass
    elif cls == "dot":
        pass
    elif cls == "colon":
        pass
    elif cls == "e":
        pass
    elif cls == "space":
        pass
    elif cls == "cr":
        pass
    elif cls == "letter":
        pass


def _parse_direct(data: bytes, fmt: str, label_mode: str, guard: bytes):
    """parse_block over `data`, which sits between guard bytes in memory."""
    n = len(data)
    padded = np.frombuffer(guard[:PAD].ljust(PAD, b"\0") + data + guard * 2, dtype=np.uint8)
    buf = padded[PAD : PAD + n]
    rows_cap, nnz_cap = _capacity(n)
    labels = np.full(rows_cap, np.nan, np.float32)
    indptr = np.zeros(rows_cap + 1, np.int64)
    fields = np.full(nnz_cap, -7, np.int32)
    features = np.full(nnz_cap, -7, np.int32)
    values = np.full(nnz_cap, np.nan, np.float32)
    weights = np.full(rows_cap, np.nan, np.float32)
    result = _parse.parse_block(buf, fmt, label_mode, labels, indptr, fields, features, values,
                                weights=weights)
    rows, nnz, lines, err, err_line, start, end = (int(x) for x in result[:7])
    return (rows, nnz, lines, err, err_line, start, end), (labels, indptr, fields, features, values, weights)


def _check_direct(data: bytes, fmt: str, label_mode: str):
    (rows, nnz, lines, err, err_line, start, end), arrays = _parse_direct(data, fmt, label_mode, GUARDS[0])
    labels, indptr, fields, features, values = arrays[:5]
    n = len(data)
    rows_cap, nnz_cap = _capacity(n)
    n_lines = data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
    assert err != E_CAPACITY, ("E_CAPACITY with arrays sized by the capacity rule", n, rows, nnz)
    assert 0 <= err < 64, err
    assert 0 <= rows <= rows_cap and 0 <= nnz <= nnz_cap, (rows, nnz, rows_cap, nnz_cap)
    assert indptr[0] == 0
    assert (np.diff(indptr[: rows + 1]) >= 0).all(), indptr[: rows + 1]
    assert indptr[rows] <= nnz
    done = int(indptr[rows])  # entries of complete rows
    assert (fields[:done] >= 0).all() and (features[:done] >= 0).all()
    assert (fields[:done] <= MAX_ID).all() and (features[:done] <= MAX_ID).all()
    if fmt == "libsvm":
        assert (fields[:done] == 0).all()
    assert np.isfinite(values[:done]).all(), values[:done]
    w = arrays[5]
    assert np.isfinite(w[:rows]).all() and (w[:rows] >= 0).all(), w[:rows]
    if "inf-labels" not in KNOWN_BUGS:  # real-mode labels beyond float32 range
        assert np.isfinite(labels[:rows]).all(), labels[:rows]
    if label_mode == "binary":
        assert np.isin(labels[:rows], (-1.0, 0.0, 1.0)).all(), labels[:rows]
    if err:
        assert 0 <= start <= end <= n, (start, end, n)
        assert 0 <= err_line < max(n_lines, 1), (err_line, n_lines)
        assert lines == err_line, (lines, err_line)
    else:
        assert lines == n_lines, (lines, n_lines)
        assert nnz == done, (nnz, done)
        assert rows <= n_lines
    _feedback(err, data, start)

    # Same answer whatever lies around the buffer (no reads outside it).
    again, arrays2 = _parse_direct(data, fmt, label_mode, GUARDS[1])
    assert again == (rows, nnz, lines, err, err_line, start, end), ("guard bytes changed the result",
                                                                     again)
    for a, b, size in zip(arrays, arrays2, (rows, rows + 1, done, done, done)):
        assert a[:size].tobytes() == b[:size].tobytes(), "guard bytes changed the output"
    return err, (labels[:rows], indptr[: rows + 1], fields[:done], features[:done], values[:done])


class _Stdin:
    def __init__(self, data: bytes):
        self.buffer = io.BytesIO(data)


def _read(data: bytes, fmt: str, label_mode: str, block_bytes: int):
    saved = sys.stdin
    sys.stdin = _Stdin(data)
    try:
        batch = text.TextReader("-", fmt=fmt, label_mode=label_mode, block_bytes=block_bytes).read_all()
    except DataError as exc:
        message = str(exc)
        match = MESSAGE.match(message)
        assert match, ("DataError message is not '<stdin>:LINE: printable text'", message)
        n_lines = data.count(b"\n") + 1
        assert 1 <= int(match.group(1)) <= n_lines, (message, n_lines)
        return "error", message
    finally:
        sys.stdin = saved
    return "ok", tuple(a.tobytes() for a in (batch.labels, batch.indptr, batch.fields,
                                              batch.features, batch.values))


def TestOneInput(data: bytes) -> None:
    for fmt in FORMATS:
        for label_mode in LABEL_MODES:
            err, arrays = _check_direct(data, fmt, label_mode)
            outcomes = {bb: _read(data, fmt, label_mode, bb) for bb in BLOCK_SIZES}
            first = outcomes[BLOCK_SIZES[-1]]
            assert all(o == first for o in outcomes.values()), ("block size changed the outcome", outcomes)
            if data.startswith(BOM):
                continue  # the reader drops a byte-order mark, parse_block does not
            # The reader parses what parse_block parses, and fails where it fails
            # (it may also refuse more, e.g. over-long lines).
            if first[0] == "ok":
                assert not err, ("reader accepted what parse_block refused", err)
                assert first[1] == tuple(a.tobytes() for a in arrays[:5]), "reader and parse_block differ"


def _self_check() -> None:
    """Refuse to run against a build without bounds checks: out-of-bounds
    writes would then corrupt memory silently instead of raising."""
    if os.environ.get("FUZZ_ALLOW_RELEASE_BUILD"):
        return
    buf = np.frombuffer(b"1 0:0:1\n", np.uint8)
    empty_i64 = np.zeros(0, np.int64)
    try:
        _parse.parse_block(buf, "libffm", "binary", np.zeros(4, np.float32), empty_i64,
                           np.zeros(4, np.int32), np.zeros(4, np.int32), np.zeros(4, np.float32))
    except IndexError:
        return
    sys.exit(f"{_parse.__file__} was built without bounds checks; build with FMCLI_DEBUG=1 "
             "(make fuzz does) or set FUZZ_ALLOW_RELEASE_BUILD=1")


def _write_seeds(argv: list[str]) -> None:
    """Fill an empty corpus directory with a few valid and invalid files."""
    dirs = [a for a in argv[1:] if not a.startswith("-") and os.path.isdir(a)]
    if not dirs or os.listdir(dirs[0]):
        return
    seeds = list(SEEDS)
    here = os.path.dirname(os.path.abspath(__file__))
    for name in ("valid40.ffm", "valid40.svm"):
        path = os.path.join(here, os.pardir, "tests", "fixtures", name)
        if os.path.exists(path):
            with open(path, "rb") as f:
                seeds.append(f.read())
    for i, seed in enumerate(seeds):
        with open(os.path.join(dirs[0], f"seed-{i:02d}"), "wb") as f:
            f.write(seed)


def main() -> None:
    _self_check()
    _write_seeds(sys.argv)
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
