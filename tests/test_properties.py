"""Property tests of the text parser and the model loader (hypothesis).

* Writing random rows in libffm / libsvm syntax, with random whitespace,
  line endings, blank and comment lines, and parsing them back gives exactly
  the rows, whatever the reader's block size; so do row weights
  (LABEL:WEIGHT) and class labels.
* Arbitrary bytes, and mutations of a valid data file, either parse or raise
  DataError whose message is printable ASCII and starts with FILE:LINE; the
  outcome does not depend on the block size.  Skipping bad rows
  (ReadLimits.max_bad_rows) gives the rows of the file without those lines.
* Mutations of real model files (tests/fixtures), and nonsense model
  descriptions in sound containers, raise only ModelFormatError.
"""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from model_loading import load_every_way

from fmcli.data.batch import Batch
from fmcli.data.text import DEFAULT_BLOCK_BYTES, ReadLimits, TextReader, sort_classes
from fmcli.errors import DataError, ModelFormatError
from fmcli.model import load_model
from fmcli.modelfile import read_header, read_model_file, write_model_file
from fmcli.predict import predict

FIXTURES = Path(__file__).parent / "fixtures"
BLOCK_SIZES = [1, 3, 17, 256, DEFAULT_BLOCK_BYTES]
COLUMNS = ("labels", "indptr", "fields", "features", "values")
DTYPES = {"labels": np.float32, "indptr": np.int64, "fields": np.int32,
          "features": np.int32, "values": np.float32}

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                      HealthCheck.too_slow])


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory reused by every example (hypothesis reruns the test body)."""
    return tmp_path_factory.mktemp("props")


def _read(path: Path, block_bytes: int, fmt: str = "auto") -> Batch:
    return TextReader(path, fmt=fmt, block_bytes=block_bytes).read_all()


def _stream(path: Path, block_bytes: int, fmt: str = "auto") -> Batch:
    return Batch.concat(list(TextReader(path, fmt=fmt, block_bytes=block_bytes)))


def _assert_same(got: Batch, want: dict[str, np.ndarray], context: str) -> None:
    for name in COLUMNS:
        a, b = getattr(got, name), want[name]
        assert a.dtype == DTYPES[name], (context, name, a.dtype)
        assert a.shape == b.shape, (context, name, a, b)
        if a.dtype == np.float32:  # bit for bit: -0.0 is not 0.0 here
            assert np.array_equal(a.view(np.uint32), b.view(np.uint32)), (context, name, a, b)
        else:
            assert np.array_equal(a, b), (context, name, a, b)


# --------------------------------------------------------------------------
# parse(format(rows)) == rows
# --------------------------------------------------------------------------

FLOAT32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
# (text, float32 value): shortest repr of a float32 or a plain integer.
VALUES = st.one_of(
    FLOAT32.map(lambda v: (repr(float(np.float32(v))), np.float32(v))),
    st.integers(-(2**40), 2**40).map(lambda i: (str(i), np.float32(i))),
)
ENTRY = st.tuples(st.integers(0, 50), st.integers(0, 2**31 - 1), VALUES)
ROW = st.tuples(st.sampled_from([0, 1]), st.lists(ENTRY, max_size=6))
SEP = st.sampled_from([" ", "  ", "\t", "\t\t", " \t", "\t  "])
EDGE = st.sampled_from(["", "", "", " ", "\t", " \t "])  # leading / trailing whitespace
COMMENT_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=20)
FILLER = st.one_of(
    st.builds(lambda e: e, EDGE),                                  # blank line
    st.builds(lambda e, t: f"{e}#{t}", EDGE, COMMENT_TEXT),        # comment line
)


@st.composite
def text_files(draw: st.DrawFn, fmt: str) -> tuple[bytes, dict[str, np.ndarray]]:
    rows = draw(st.lists(ROW, max_size=25))
    lines: list[str] = []
    for label, entries in rows:
        lines.extend(draw(st.lists(FILLER, max_size=2)))
        parts = [str(label)]
        for field, feature, (text, _) in entries:
            parts.append(f"{field}:{feature}:{text}" if fmt == "libffm" else f"{feature}:{text}")
        line = draw(EDGE) + parts[0]
        for part in parts[1:]:
            line += draw(SEP) + part
        line += draw(EDGE)
        if draw(st.booleans()) and draw(st.booleans()):
            line += draw(SEP) + "#" + draw(COMMENT_TEXT)
        lines.append(line)
    lines.extend(draw(st.lists(FILLER, max_size=2)))
    crlf = draw(st.booleans())
    mixed = draw(st.booleans())  # then each line ending is drawn on its own
    ends = [draw(st.sampled_from(["\n", "\r\n"])) if mixed else ("\r\n" if crlf else "\n")
            for _ in lines]
    text = "".join(line + end for line, end in zip(lines, ends))
    if lines and draw(st.booleans()):
        text = text[: -len(ends[-1])]  # no final newline
    entries = [e for _, es in rows for e in es]
    want = {
        "labels": np.array([label for label, _ in rows], np.float32),
        "indptr": np.cumsum([0] + [len(es) for _, es in rows]).astype(np.int64),
        "fields": np.array([f if fmt == "libffm" else 0 for f, _, _ in entries], np.int32),
        "features": np.array([j for _, j, _ in entries], np.int32),
        "values": np.array([v for _, _, (_, v) in entries], np.float32),
    }
    return text.encode("ascii"), want


@pytest.mark.parametrize("fmt, ext", [("libffm", "ffm"), ("libsvm", "svm")])
@settings(max_examples=60, **SETTINGS)
@given(data=st.data())
def test_parse_of_formatted_rows_gives_the_rows(scratch: Path, fmt: str, ext: str,
                                                data: st.DataObject) -> None:
    content, want = data.draw(text_files(fmt))
    path = scratch / f"rows.{ext}"
    path.write_bytes(content)
    for block_bytes in BLOCK_SIZES:
        _assert_same(_read(path, block_bytes), want, f"read_all block_bytes={block_bytes}")
        _assert_same(_stream(path, block_bytes), want, f"iter block_bytes={block_bytes}")
    # The content decides the format when the name does not.
    other = scratch / "rows.txt"
    other.write_bytes(content)
    reader = TextReader(other)
    _assert_same(reader.read_all(), want, "sniffed")
    if want["features"].size:
        assert reader.fmt == fmt


# Class labels: any text without whitespace, ':', '#' or control characters.
CLASS_TOKENS = st.one_of(
    st.integers(-20, 20).map(str),
    st.sampled_from(["a", "b", "cat", "Dog", "+1", "01", "1.5", "-", "x" * 20, "\u00e9t\u00e9"]),
    st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF, exclude_characters=":#\x7f"),
            min_size=1, max_size=24),
)
# (text, float32 value) of a row weight >= 0.
WEIGHTS = st.one_of(
    st.floats(0, float(np.finfo(np.float32).max), width=32).map(
        lambda v: (repr(float(np.float32(v))), np.float32(v) + np.float32(0))),
    st.integers(0, 2**30).map(lambda i: (str(i), np.float32(i))),
    st.just(("1", np.float32(1))),
)


@st.composite
def labelled_files(draw: st.DrawFn, fmt: str, mode: str) -> tuple[bytes, list[str], np.ndarray, dict]:
    """(file, label token per row, weight per row, CSR columns but labels)."""
    label = CLASS_TOKENS if mode == "class" else st.sampled_from(["0", "1"])
    rows = draw(st.lists(st.tuples(label, st.one_of(st.none(), WEIGHTS), st.lists(ENTRY, max_size=3)),
                         max_size=25))
    lines: list[str] = []
    for token, weight, entries in rows:
        lines.extend(draw(st.lists(FILLER, max_size=1)))
        parts = [token if weight is None else f"{token}:{weight[0]}"]
        for field, feature, (text, _) in entries:
            parts.append(f"{field}:{feature}:{text}" if fmt == "libffm" else f"{feature}:{text}")
        lines.append(draw(EDGE) + draw(SEP).join(parts) + draw(EDGE))
    end = draw(st.sampled_from(["\n", "\r\n"]))
    text = "".join(line + end for line in lines)
    entries = [e for _, _, es in rows for e in es]
    want = {
        "indptr": np.cumsum([0] + [len(es) for _, _, es in rows]).astype(np.int64),
        "fields": np.array([f if fmt == "libffm" else 0 for f, _, _ in entries], np.int32),
        "features": np.array([j for _, j, _ in entries], np.int32),
        "values": np.array([v for _, _, (_, v) in entries], np.float32),
    }
    weights = np.array([1 if w is None else w[1] for _, w, _ in rows], np.float32)
    return text.encode("utf-8"), [t for t, _, _ in rows], weights, want


def _assert_weights(got: np.ndarray | None, want: np.ndarray, context: str) -> None:
    if (want == 1).all():
        assert got is None, (context, got)
    else:
        assert got is not None and got.dtype == np.float32, (context, got)
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), (context, got, want)


@pytest.mark.parametrize("fmt, ext", [("libffm", "ffm"), ("libsvm", "svm")])
@pytest.mark.parametrize("mode", ["binary", "class"])
@settings(max_examples=60, **SETTINGS)
@given(data=st.data())
def test_weights_and_class_labels_survive_format_and_parse(scratch: Path, fmt: str, ext: str,
                                                           mode: str, data: st.DataObject) -> None:
    content, tokens, weights, want = data.draw(labelled_files(fmt, mode))
    path = scratch / f"labelled.{ext}"
    path.write_bytes(content)
    classes = sort_classes(list(set(tokens)))
    for block_bytes in BLOCK_SIZES:
        context = f"{mode} block_bytes={block_bytes}"
        reader = TextReader(path, label_mode=mode, block_bytes=block_bytes)
        batch = reader.read_all()
        _assert_same(batch, {**want, "labels": batch.labels}, context)
        _assert_weights(batch.weights, weights, context)
        stream = TextReader(path, label_mode=mode, block_bytes=block_bytes)
        streamed = Batch.concat(list(stream))
        _assert_same(streamed, {**want, "labels": streamed.labels}, "iter " + context)
        _assert_weights(streamed.weights, weights, "iter " + context)
        if mode == "class":
            assert reader.classes == classes, context
            assert [classes[int(i)] for i in batch.labels] == tokens, context
            assert [stream.classes[int(i)] for i in streamed.labels] == tokens, context
            fixed = TextReader(path, label_mode=mode, block_bytes=block_bytes,
                               classes=classes[::-1]).read_all()
            assert [classes[::-1][int(i)] for i in fixed.labels] == tokens, context
        else:
            assert batch.labels.tolist() == [float(t) for t in tokens], context
            assert streamed.labels.tolist() == [float(t) for t in tokens], context


# --------------------------------------------------------------------------
# Bad input: DataError only, with FILE:LINE, the same for every block size
# --------------------------------------------------------------------------


def _outcome(path: Path, block_bytes: int) -> tuple[str, object]:
    """("ok", column tuple) or ("error", message); anything else propagates."""
    try:
        batch = _read(path, block_bytes)
    except DataError as exc:
        return "error", str(exc)
    return "ok", tuple(getattr(batch, name).tobytes() for name in COLUMNS)


def _check_bytes(path: Path, content: bytes) -> None:
    path.write_bytes(content)
    outcomes = {bb: _outcome(path, bb) for bb in (1, 2, 7, 64, DEFAULT_BLOCK_BYTES)}
    kind, value = outcomes[DEFAULT_BLOCK_BYTES]
    assert set(outcomes.values()) == {(kind, value)}, outcomes
    if kind == "ok":
        return
    message = value
    assert isinstance(message, str)
    assert all(32 <= ord(c) < 127 for c in message), message
    match = re.match(re.escape(str(path)) + r":(\d+): \S", message)
    assert match, message
    line = int(match.group(1))
    lines = content.split(b"\n")
    assert 1 <= line <= len(lines), (line, message)
    # Everything before the bad line is fine on its own.
    prefix = b"".join(x + b"\n" for x in lines[: line - 1])
    path.write_bytes(prefix)
    assert _outcome(path, DEFAULT_BLOCK_BYTES)[0] == "ok", (prefix, message)


@pytest.mark.parametrize("ext", ["ffm", "svm", "txt"])
@settings(max_examples=100, **SETTINGS)
@given(content=st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_data_error(scratch: Path, ext: str, content: bytes) -> None:
    _check_bytes(scratch / f"bytes.{ext}", content)


# Bytes that matter to the grammar, so that random text gets somewhere.
GRAMMAR = b"0123456789:: \t\n\r#.-+eE"


@pytest.mark.parametrize("ext", ["ffm", "svm"])
@settings(max_examples=100, **SETTINGS)
@given(content=st.lists(st.sampled_from(list(GRAMMAR)), max_size=200).map(bytes))
def test_grammar_soup_raises_only_data_error(scratch: Path, ext: str, content: bytes) -> None:
    _check_bytes(scratch / f"soup.{ext}", content)


@pytest.mark.parametrize("content", [b"\xef\xbb\xbf", b"\xef\xbb\xbf1 0:1:1\n0 2:3:1\n"])
def test_bom_is_handled_alike_for_every_block_size(scratch: Path, content: bytes) -> None:
    path = scratch / "bom.ffm"
    path.write_bytes(content)
    want = _outcome(path, DEFAULT_BLOCK_BYTES)
    for block_bytes in (1, 2):
        assert _outcome(path, block_bytes) == want


MUTATION = st.tuples(
    st.sampled_from(["insert", "delete", "flip", "replace"]),
    st.floats(0, 1, exclude_max=True),  # where, as a fraction of the length
    st.integers(0, 255),
)


def _mutate(content: bytes, mutations: list[tuple[str, float, int]]) -> bytes:
    data = bytearray(content)
    for op, where, byte in mutations:
        pos = int(where * (len(data) + (op == "insert")))
        if op == "insert":
            data.insert(pos, byte)
        elif not data:
            continue
        elif op == "delete":
            del data[pos]
        elif op == "flip":
            data[pos] ^= 1 << (byte % 8)
        else:
            data[pos] = byte
    return bytes(data)


@pytest.mark.parametrize("ext", ["ffm", "svm"])
@settings(max_examples=100, **SETTINGS)
@given(mutations=st.lists(MUTATION, min_size=1, max_size=6),
       cut=st.integers(200, 3000))
def test_mutated_data_file_raises_only_data_error(scratch: Path, ext: str,
                                                  mutations: list[tuple[str, float, int]],
                                                  cut: int) -> None:
    valid = (FIXTURES / f"valid40.{ext}").read_bytes()[:cut]
    _check_bytes(scratch / f"mutated.{ext}", _mutate(valid, mutations))


LINES = st.sampled_from([b"1 0:1:2", b"0 3:4:5", b"-1 1:1:1", b"2.5 7:7:7", b"x", b"1 1:1", b"1 1:2:x",
                         b"\r", b"1 2:3:4e99", b"#c", b"", b" ", b"1234567890 1:1:1", b"1 5:5:5\r",
                         b"0.5:2 1:1:1", b"1:-1 2:2:2", b"3:x", b"1:0 4:4:4"])


@settings(max_examples=100, **SETTINGS)
@given(content=st.one_of(st.lists(LINES, max_size=10).map(b"\n".join),
                         st.lists(st.sampled_from(list(GRAMMAR)), max_size=120).map(bytes)),
       max_line=st.sampled_from([0, 4, 9, 20]))
def test_skipping_bad_rows_is_deleting_them(scratch: Path, content: bytes, max_line: int) -> None:
    """With --max-bad-rows, the rows read are those of the file without its bad
    lines, for every block size, and the (n+1)-th bad line is where reading
    with max_bad_rows=n stops.  (Real labels: with binary ones, see
    test_skipped_row_does_not_decide_the_negative_label.)"""
    path = scratch / "skip.ffm"

    def read(data: bytes, block_bytes: int, max_bad_rows: int) -> tuple[object, list[int]]:
        path.write_bytes(data)
        limits = ReadLimits(max_bad_rows=max_bad_rows, max_line_bytes=max_line)
        reader = TextReader(path, label_mode="real", block_bytes=block_bytes, limits=limits)
        try:
            batch = reader.read_all()
        except DataError as exc:
            return str(exc), [e.line for e in reader.bad_rows]
        weights = None if batch.weights is None else batch.weights.tobytes()
        columns = tuple(getattr(batch, name).tobytes() for name in COLUMNS) + (weights,)
        return columns, [e.line for e in reader.bad_rows]

    got, bad = read(content, DEFAULT_BLOCK_BYTES, 10**9)
    assert not isinstance(got, str), got
    assert bad == sorted(set(bad))
    for block_bytes in (1, 5, 64):
        assert read(content, block_bytes, 10**9) == (got, bad), block_bytes
    kept = b"\n".join(x for i, x in enumerate(content.split(b"\n")) if i + 1 not in bad)
    assert read(kept, DEFAULT_BLOCK_BYTES, 0) == (got, [])
    if bad:
        message, _ = read(content, 5, len(bad) - 1)
        assert isinstance(message, str) and message.startswith(f"{path}:{bad[-1]}: "), (message, bad)


CLASS_SOUP = list(GRAMMAR + b"abc\xff\x01\x7f")


@settings(max_examples=100, **SETTINGS)
@given(content=st.one_of(st.binary(max_size=200),
                         st.lists(st.sampled_from(CLASS_SOUP), max_size=150).map(bytes)),
       fixed=st.booleans(), max_bad_rows=st.sampled_from([0, 3]))
def test_class_mode_outcome_does_not_depend_on_block_size(scratch: Path, content: bytes, fixed: bool,
                                                          max_bad_rows: int) -> None:
    path = scratch / "classes.ffm"
    path.write_bytes(content)

    def outcome(block_bytes: int) -> tuple:
        reader = TextReader(path, label_mode="class", block_bytes=block_bytes,
                            classes=["0", "1", "a", "b"] if fixed else None,
                            limits=ReadLimits(max_bad_rows=max_bad_rows))
        try:
            batch = reader.read_all()
        except DataError as exc:
            return "error", str(exc)
        weights = None if batch.weights is None else batch.weights.tobytes()
        assert reader.classes is not None
        assert ((batch.labels >= 0) & (batch.labels < len(reader.classes))).all()
        return ("ok", tuple(reader.classes), weights, tuple(e.line for e in reader.bad_rows),
                *(getattr(batch, name).tobytes() for name in COLUMNS))

    outcomes = {bb: outcome(bb) for bb in (1, 2, 7, 64, DEFAULT_BLOCK_BYTES)}
    first = outcomes[DEFAULT_BLOCK_BYTES]
    assert set(outcomes.values()) == {first}, outcomes
    if first[0] == "error":
        message = first[1]
        assert all(32 <= ord(c) < 127 for c in message), message
        assert re.match(re.escape(str(path)) + r":(\d+): \S", message), message


def test_skipped_row_does_not_decide_the_negative_label(scratch: Path) -> None:
    path = scratch / "mixed.ffm"
    path.write_bytes(b"0 x:1:1\n-1 1:1:1\n")
    reader = TextReader(path, limits=ReadLimits(max_bad_rows=5))
    batch = reader.read_all()
    assert [e.line for e in reader.bad_rows] == [1]
    assert batch.labels.tolist() == [-1.0]


# --------------------------------------------------------------------------
# Model files: mutations raise ModelFormatError only
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_models() -> dict[str, bytes]:
    return {name: (FIXTURES / f"v1-{name}.fm").read_bytes() for name in ("lr", "fm")}


@settings(max_examples=120, **SETTINGS)
@given(name=st.sampled_from(["lr", "fm"]), mutations=st.lists(MUTATION, min_size=1, max_size=4),
       head_only=st.booleans())
def test_mutated_model_file_raises_only_model_format_error(
    scratch: Path, small_models: dict[str, bytes], name: str,
    mutations: list[tuple[str, float, int]], head_only: bool,
) -> None:
    valid = small_models[name]
    if head_only:
        # Mutate the prefix and JSON header, where the structure lives ...
        (header_len,) = struct.unpack_from("<Q", valid, 16)
        cut = 24 + header_len
        content = _mutate(valid[:cut], mutations) + valid[cut:]
    else:
        content = _mutate(valid, mutations)  # ... or anywhere, trailer included
    assume(content != valid)
    path = scratch / "mutated.fm"
    path.write_bytes(content)
    load_every_way(path)
    with pytest.raises(ModelFormatError):  # the checksum catches what the structure misses
        read_model_file(path)


def _rewrite(path: Path, valid: bytes, model: dict) -> None:
    """Write `valid` to `path` again with header["model"] replaced: a sound
    container (layout, checksum) whose model description may be nonsense."""
    path.write_bytes(valid)
    header, arrays = read_model_file(path)
    header = {k: v for k, v in header.items() if k not in ("arrays", "format")}
    write_model_file(path, {**header, "model": model}, arrays)


def _fix_checksum(content: bytes) -> bytes:
    body = content[:-24]
    return body + struct.pack("<8sQII", b"FMMEND\0\0", len(body), zlib.crc32(body), 0)


JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=5),
)
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner, max_size=3)),
    max_leaves=6)
MODEL_KEYS = ["kind", "task", "k", "n_features", "n_fields", "use_bias", "use_linear", "normalize"]


@settings(max_examples=120, **SETTINGS)
@given(name=st.sampled_from(["lr", "fm"]),
       changes=st.dictionaries(st.sampled_from(MODEL_KEYS + ["extra"]),
                               st.one_of(JSON_VALUES, st.sampled_from(["ffm", "fm", "fwfm", "lr", 0, 1, -1])),
                               min_size=1, max_size=3),
       drop=st.lists(st.sampled_from(MODEL_KEYS), max_size=2))
def test_model_description_with_valid_checksum_raises_only_model_format_error(
    scratch: Path, small_models: dict[str, bytes], name: str, changes: dict, drop: list[str],
) -> None:
    valid = small_models[name]
    path = scratch / "described.fm"
    path.write_bytes(valid)
    model = dict(read_header(path)["model"])
    model.update(changes)
    for key in drop:
        model.pop(key, None)
    _rewrite(path, valid, model)
    read_model_file(path)  # the container itself stays valid
    load_every_way(path)


def test_model_k_too_large_for_an_integer_is_a_format_error(scratch: Path,
                                                            small_models: dict[str, bytes]) -> None:
    valid = small_models["lr"]
    path = scratch / "huge-k.fm"
    path.write_bytes(valid)
    model = {**read_header(path)["model"], "k": 12345}
    _rewrite(path, valid, model)
    # JSON has no infinity, but the number 1e999 reads back as float("inf").
    content = path.read_bytes()
    assert content.count(b'"k":12345,') == 1
    path.write_bytes(_fix_checksum(content.replace(b'"k":12345,', b'"k":1e999,')))
    assert read_header(path)["model"]["k"] == float("inf")
    with pytest.raises(ModelFormatError):
        load_model(path)


@pytest.mark.parametrize("label", [b"1e39", b"-3.5e38", b"81e39"])
def test_real_label_beyond_float32_range_is_a_data_error(scratch: Path, label: bytes) -> None:
    path = scratch / "label.ffm"
    path.write_bytes(label + b" 0:0:1\n")
    with pytest.raises(DataError) as info:
        TextReader(path, label_mode="real").read_all()
    assert str(info.value).startswith(f"{path}:1: ")


@pytest.mark.parametrize("label", [b"3.4028235e+38", b"-3.4028235e38", b"1e-50"])
def test_real_label_that_rounds_into_float32_range_is_accepted(scratch: Path, label: bytes) -> None:
    path = scratch / "label.ffm"
    path.write_bytes(label + b" 0:0:1\n")
    got = TextReader(path, label_mode="real").read_all().labels
    assert got.tolist() == [np.float32(float(label))]


@pytest.mark.parametrize("name, change", [
    ("lr", {"k": 10**20}),          # lr has no factors, so no array shape limits k
    ("lr", {"k": 2**40}),
    ("fm", {"n_fields": 10**20}),   # fm factors do not depend on n_fields
])
def test_loaded_model_with_out_of_range_sizes_can_be_scored_or_is_refused(
    scratch: Path, small_models: dict[str, bytes], name: str, change: dict,
) -> None:
    valid = small_models[name]
    path = scratch / "sizes.fm"
    path.write_bytes(valid)
    _rewrite(path, valid, {**read_header(path)["model"], **change})
    try:
        model = load_model(path)
    except ModelFormatError:
        return
    assert predict(model, FIXTURES / "valid40.svm").shape == (40,)
