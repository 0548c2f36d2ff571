"""The libffm / libsvm text reader: grammar, block boundaries, error reports."""

import io
import sys

import numpy as np
import pytest

from fmcli.data.batch import Batch
from fmcli.data.text import (
    DEFAULT_BLOCK_BYTES,
    TextReader,
    format_from_name,
    read_text,
    sniff_format,
)
from fmcli.errors import DataError, InputNotFoundError

BLOCK_SIZES = [1, 3, 7, 64, DEFAULT_BLOCK_BYTES]


def write(tmp_path, name, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def assert_batch(batch, labels, indptr, fields, features, values):
    assert batch.labels.dtype == np.float32
    assert batch.indptr.dtype == np.int64
    assert batch.fields.dtype == np.int32
    assert batch.features.dtype == np.int32
    assert batch.values.dtype == np.float32
    np.testing.assert_array_equal(batch.labels, np.asarray(labels, np.float32))
    np.testing.assert_array_equal(batch.indptr, np.asarray(indptr, np.int64))
    np.testing.assert_array_equal(batch.fields, np.asarray(fields, np.int32))
    np.testing.assert_array_equal(batch.features, np.asarray(features, np.int32))
    np.testing.assert_array_equal(batch.values, np.asarray(values, np.float32))


def is_printable_ascii(text: str) -> bool:
    return all(32 <= ord(c) < 127 for c in text)


# --------------------------------------------------------------------------
# good input
# --------------------------------------------------------------------------

def test_libffm_rows_parse_exactly(tmp_path):
    path = write(tmp_path, "a.ffm", b"1 0:1:0.5 2:3:1\n0 1:7:2\n0.0 4:4:-3\n+1 0:0:1\n1.0 5:6:7\n")
    batch, fmt = read_text(path)
    assert fmt == "libffm"
    assert_batch(
        batch,
        labels=[1, 0, 0, 1, 1],
        indptr=[0, 2, 3, 4, 5, 6],
        fields=[0, 2, 1, 4, 0, 5],
        features=[1, 3, 7, 4, 0, 6],
        values=[0.5, 1, 2, -3, 1, 7],
    )


def test_minus_one_plus_one_labels(tmp_path):
    path = write(tmp_path, "a.ffm", b"-1 0:1:1\n+1 0:2:1\n1 0:3:1\n-1.0 0:4:1\n")
    batch, _ = read_text(path)
    np.testing.assert_array_equal(batch.labels, [-1, 1, 1, -1])


def test_mixing_zero_and_minus_one_labels_is_an_error(tmp_path):
    path = write(tmp_path, "a.ffm", b"1 0:1:1\n0 0:2:1\n1 0:3:1\n-1 0:4:1\n")
    with pytest.raises(DataError) as info:
        read_text(path)
    assert str(info.value).startswith(f"{path}:4: binary labels use both 0 and -1")


def test_libsvm_rows_parse_exactly_and_skip_qid(tmp_path):
    path = write(tmp_path, "a.svm", b"1 qid:3 1:0.5 4:2\n0 qid:17 9:1\n0 3:-1 qid:9\n")
    batch, fmt = read_text(path)
    assert fmt == "libsvm"
    assert_batch(
        batch,
        labels=[1, 0, 0],
        indptr=[0, 2, 3, 4],
        fields=[0, 0, 0, 0],
        features=[1, 4, 9, 3],
        values=[0.5, 2, 1, -1],
    )


def test_whitespace_comments_crlf_and_missing_final_newline(tmp_path):
    data = (
        b"# a header comment\r\n"
        b"1 0:1:0.5 2:3:1\r\n"
        b"\r\n"
        b"   \t  \n"
        b"\n"
        b"0\t\t1:7:2   3:8:4  # trailing comment 9:9:9\r\n"
        b"  # indented comment\n"
        b"\t0.0  4:4:-3\t\n"
        b"1 0:0:1"  # no final newline
    )
    batch, _ = read_text(write(tmp_path, "a.ffm", data))
    assert_batch(
        batch,
        labels=[1, 0, 0, 1],
        indptr=[0, 2, 4, 5, 6],
        fields=[0, 2, 1, 3, 4, 0],
        features=[1, 3, 7, 8, 4, 0],
        values=[0.5, 1, 2, 4, -3, 1],
    )


def test_row_with_label_and_no_features(tmp_path):
    batch, _ = read_text(write(tmp_path, "a.ffm", b"1\n0 # nothing here\n1 2:3:4\n0   \n"))
    assert_batch(
        batch, labels=[1, 0, 1, 0], indptr=[0, 0, 0, 1, 1],
        fields=[2], features=[3], values=[4],
    )


@pytest.mark.parametrize(
    "text, expected",
    [
        ("0.5", 0.5),
        ("1e-3", 1e-3),
        ("-2.5E+2", -250.0),
        (".5", 0.5),
        ("5.", 5.0),
        ("+3", 3.0),
        ("-0", 0.0),
        ("1e-400", 0.0),
        ("00000000000000000000001.5e-0", 1.5),
        ("0.12345678901234567890123456789", 0.12345678901234567890123456789),
        ("12345678901234567890123456789", 12345678901234567890123456789.0),
        ("3.4028234e38", 3.4028234e38),
        ("1.17549435e-38", 1.17549435e-38),
    ],
)
def test_number_forms(tmp_path, text, expected):
    batch, _ = read_text(write(tmp_path, "a.ffm", f"1 0:0:{text}\n".encode()))
    assert batch.values.tolist() == [np.float32(expected)]


def test_numbers_round_like_python_float_then_float32(tmp_path):
    rng = np.random.default_rng(7)
    tokens = []
    for i in range(3000):
        mag = 10.0 ** int(rng.integers(-30, 30))
        if i % 3 == 0:
            tokens.append(repr(float(rng.normal() * mag)))
        elif i % 3 == 1:
            tokens.append("%.*e" % (int(rng.integers(0, 25)), rng.normal() * mag))
        else:
            digits = rng.choice(list("0123456789"), int(rng.integers(1, 30)))
            cut = int(rng.integers(0, len(digits) + 1))
            tokens.append("".join(digits[:cut]) + "." + "".join(digits[cut:]))
    path = write(tmp_path, "n.ffm", "".join(f"1 0:0:{t}\n" for t in tokens).encode())
    batch, _ = read_text(path)
    expected = np.array([np.float32(float(t)) for t in tokens], np.float32)
    mismatch = np.nonzero(batch.values != expected)[0]
    assert mismatch.size == 0, [tokens[i] for i in mismatch[:5]]


def test_float32_max_as_printed_by_numpy_is_accepted(tmp_path):
    text = str(np.finfo(np.float32).max)  # '3.4028235e+38'
    batch, _ = read_text(write(tmp_path, "a.ffm", f"1 0:0:{text}\n".encode()))
    assert batch.values.tolist() == [np.finfo(np.float32).max]


def test_largest_ids(tmp_path):
    batch, _ = read_text(write(tmp_path, "a.ffm", b"1 2147483647:2147483647:1 0:0000000000002147483647:2\n"))
    assert batch.fields.tolist() == [2147483647, 0]
    assert batch.features.tolist() == [2147483647, 2147483647]
    batch, _ = read_text(write(tmp_path, "a.svm", b"1 2147483647:1\n"))
    assert batch.features.tolist() == [2147483647]


def test_label_modes(tmp_path):
    path = write(tmp_path, "a.ffm", b"0.25 0:0:1\n-7 1:1:1\n")
    with pytest.raises(DataError):
        read_text(path)
    batch, _ = read_text(path, label_mode="real")
    assert batch.labels.tolist() == [0.25, -7.0]


def test_empty_and_comment_only_files(tmp_path):
    for data in (b"", b"\n\n", b"# only a comment\n  \r\n"):
        batch, _ = read_text(write(tmp_path, "e.ffm", data))
        assert batch.n_rows == 0 and batch.nnz == 0
        assert batch.indptr.tolist() == [0]


def test_stdin(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"1 0:1:2\n0 3:4:5\n")))
    batch, fmt = read_text("-")
    assert fmt == "libffm"
    assert batch.features.tolist() == [1, 4]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"1 0:1:2\nx 3:4:5\n")))
    with pytest.raises(DataError) as info:
        read_text("-")
    assert str(info.value).startswith("<stdin>:2: ")


# --------------------------------------------------------------------------
# block boundaries
# --------------------------------------------------------------------------

GOOD_MIXED = (
    b"# header\r\n"
    b"1 0:1:0.5 2:3:1\r\n"
    b"\r\n"
    b"0 1:12345:2.25 # comment 1:2:3\n"
    b"   \t \n"
    b"0\n"
    b"1 5:6:7 5:7:8 5:8:9 5:9:10 5:10:11 5:11:12 5:12:13\r\n"
    b"# another comment\n"
    b"0 0:0:1e-3"
)


def _read_all(path, block_bytes):
    reader = TextReader(path, block_bytes=block_bytes)
    batches = list(reader)
    return batches, reader


@pytest.mark.parametrize("block_bytes", BLOCK_SIZES)
def test_block_size_does_not_change_result(tmp_path, block_bytes):
    path = write(tmp_path, "a.ffm", GOOD_MIXED)
    ref, _ = read_text(path)
    batches, reader = _read_all(path, block_bytes)
    assert reader.bytes_read == len(GOOD_MIXED)
    if block_bytes < 16:
        assert len(batches) > 1  # really split into several blocks
    got, _ = read_text(path, block_bytes=block_bytes)
    streamed = Batch.concat(batches)
    for name in ("labels", "indptr", "fields", "features", "values"):
        np.testing.assert_array_equal(getattr(got, name), getattr(ref, name))
        np.testing.assert_array_equal(getattr(streamed, name), getattr(ref, name))
    assert got.n_rows == 5
    assert got.indptr.tolist() == [0, 2, 3, 3, 10, 11]


def test_random_file_same_for_every_block_size(tmp_path):
    rng = np.random.default_rng(3)
    lines = []
    for _ in range(300):
        n = int(rng.integers(0, 6))
        toks = [f"{rng.integers(0, 6)}:{rng.integers(0, 200)}:{rng.random():.4g}" for _ in range(n)]
        sep = " " if rng.random() < 0.7 else "\t"
        lines.append(str(rng.choice(["0", "1", "0.0", "+1"])) + (sep + sep.join(toks) if toks else ""))
        if rng.random() < 0.1:
            lines.append("# comment")
        if rng.random() < 0.1:
            lines.append("")
    data = "\r\n".join(lines).encode()
    path = write(tmp_path, "r.ffm", data)
    ref, _ = read_text(path)
    assert ref.n_rows == 300
    for bb in [1, 2, 5, 13, 64, 1000]:
        got, _ = read_text(path, block_bytes=bb)
        streamed = Batch.concat(list(TextReader(path, block_bytes=bb)))
        for name in ("labels", "indptr", "fields", "features", "values"):
            np.testing.assert_array_equal(getattr(got, name), getattr(ref, name), err_msg=f"{name} bb={bb}")
            np.testing.assert_array_equal(getattr(streamed, name), getattr(ref, name), err_msg=f"{name} bb={bb}")


BAD_AT_LINE_9 = (
    b"# header\r\n"                 # 1
    b"1 0:1:0.5 2:3:1\r\n"          # 2
    b"\r\n"                         # 3
    b"   \t\r\n"                    # 4
    b"0 2:3:1 # trailing\r\n"       # 5
    b"# another\n"                  # 6
    b"0 0:0:1\n"                    # 7
    b"\n"                           # 8
    b"1 0:0:1 1:5:abc 2:2:2\r\n"    # 9
    b"1 0:0:1\n"                    # 10
)


@pytest.mark.parametrize("block_bytes", BLOCK_SIZES)
def test_error_line_is_counted_across_blocks(tmp_path, block_bytes):
    path = write(tmp_path, "bad.ffm", BAD_AT_LINE_9)
    with pytest.raises(DataError) as info:
        read_text(path, block_bytes=block_bytes)
    assert info.value.line == 9
    assert str(info.value) == f"{path}:9: expected a number as the value, found '1:5:abc'"


@pytest.mark.parametrize("block_bytes", BLOCK_SIZES)
def test_error_on_last_line_without_newline(tmp_path, block_bytes):
    path = write(tmp_path, "bad.ffm", b"1 0:0:1\r\n\r\n# c\n0 1:1:1e999")
    with pytest.raises(DataError) as info:
        read_text(path, block_bytes=block_bytes)
    assert str(info.value) == f"{path}:4: expected a finite number within float32 range, found '1:1:1e999'"


@pytest.mark.parametrize("block_bytes", BLOCK_SIZES)
def test_line_longer_than_block(tmp_path, block_bytes):
    toks = " ".join(f"{i % 5}:{i}:{i}.5" for i in range(500))
    data = f"1 {toks}\n0 {toks}\n1 0:0:x\n".encode()
    path = write(tmp_path, "long.ffm", data)
    with pytest.raises(DataError) as info:
        read_text(path, block_bytes=block_bytes)
    assert info.value.line == 3
    good, _ = read_text(write(tmp_path, "long2.ffm", data[: data.rindex(b"1 0:0:x")]), block_bytes=block_bytes)
    assert good.n_rows == 2 and good.nnz == 1000
    assert good.features[:500].tolist() == list(range(500))


# --------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------

FFM_SHAPE = "expected field:feature:value"
SVM_SHAPE = "expected feature:value"
NUMBER = "expected a number as the value"
NONFINITE = "expected a finite number within float32 range"
NEG = "expected a non-negative id"
BIG = "expected an id below 2^31"
LABEL = "expected a numeric label"
BINARY = "expected a binary label (0/1 or -1/+1)"

# (extension, bad line, message after "PATH:LINE: ")
BAD_CASES = [
    ("ffm", b"1 1:2", f"{FFM_SHAPE}, found '1:2'"),
    ("ffm", b"1 a:b:c", f"{FFM_SHAPE}, found 'a:b:c'"),
    ("ffm", b"1 1::0.5", f"{FFM_SHAPE}, found '1::0.5'"),
    ("ffm", b"1 1:2:", f"{FFM_SHAPE}, found '1:2:'"),
    ("ffm", b"1 1:2: 3:4:5", f"{FFM_SHAPE}, found '1:2:'"),
    ("ffm", b"1 1:2:3:4", f"{FFM_SHAPE}, found '1:2:3:4'"),
    ("ffm", b"1 :1:2", f"{FFM_SHAPE}, found ':1:2'"),
    ("ffm", b"1 -1:2:3", f"{NEG}, found '-1:2:3'"),
    ("ffm", b"1 1:-2:3", f"{NEG}, found '1:-2:3'"),
    ("ffm", b"1 2147483648:1:1", f"{BIG}, found '2147483648:1:1'"),
    ("ffm", b"1 1:2147483648:1", f"{BIG}, found '1:2147483648:1'"),
    ("ffm", b"1 1:99999999999:1", f"{BIG}, found '1:99999999999:1'"),
    ("ffm", b"1 1:2:nan", f"{NUMBER}, found '1:2:nan'"),
    ("ffm", b"1 1:2:inf", f"{NUMBER}, found '1:2:inf'"),
    ("ffm", b"1 1:2:-inf", f"{NUMBER}, found '1:2:-inf'"),
    ("ffm", b"1 1:2:1e400", f"{NONFINITE}, found '1:2:1e400'"),
    ("ffm", b"1 1:2:-1e39", f"{NONFINITE}, found '1:2:-1e39'"),
    ("ffm", b"1 1:2:0x1p3", f"{NUMBER}, found '1:2:0x1p3'"),
    ("ffm", b"1 1:2:abc", f"{NUMBER}, found '1:2:abc'"),
    ("ffm", b"1 1:2:1e", f"{NUMBER}, found '1:2:1e'"),
    ("ffm", b"1 1:2:3\x00", f"{NUMBER}, found '1:2:3\\x00'"),
    ("ffm", b"1 1:2:\xff\xfe", f"{NUMBER}, found '1:2:\\xff\\xfe'"),
    ("ffm", b"1 \x00:1:1", f"{FFM_SHAPE}, found '\\x00:1:1'"),
    ("ffm", b"1 1:2:3\x1b[31m", f"{NUMBER}, found '1:2:3\\x1b[31m'"),
    ("ffm", b"1 1:\xc3\xa9:1", f"{FFM_SHAPE}, found '1:\\xc3\\xa9:1'"),
    ("ffm", b"yes 1:2:3", f"{LABEL}, found 'yes'"),
    ("ffm", b"nan 1:2:3", f"{LABEL}, found 'nan'"),
    ("ffm", b"\xff 1:2:3", f"{LABEL}, found '\\xff'"),
    ("ffm", b"1x 1:2:3", f"{LABEL}, found '1x'"),
    ("ffm", b"2 1:2:3", f"{BINARY}, found '2'"),
    ("ffm", b"0.5 1:2:3", f"{BINARY}, found '0.5'"),
    ("ffm", b"1e400 1:2:3", f"{NONFINITE}, found '1e400'"),
    ("ffm", b"1 " + b"9" * 60 + b":1:1", f"{BIG}, found '{'9' * 40}...'"),
    ("svm", b"1 1:2:3", f"{SVM_SHAPE}, found '1:2:3'"),
    ("svm", b"1 abc:1", f"{SVM_SHAPE}, found 'abc:1'"),
    ("svm", b"1 3:", f"{SVM_SHAPE}, found '3:'"),
    ("svm", b"1 -3:1", f"{NEG}, found '-3:1'"),
    ("svm", b"1 2147483648:1", f"{BIG}, found '2147483648:1'"),
    ("svm", b"1 3:nan", f"{NUMBER}, found '3:nan'"),
    ("svm", b"1 3:1e400", f"{NONFINITE}, found '3:1e400'"),
    ("svm", b"-2 3:1", f"{BINARY}, found '-2'"),
]


@pytest.mark.parametrize("ext, bad, message", BAD_CASES, ids=[repr(c[1])[2:-1] for c in BAD_CASES])
@pytest.mark.parametrize("crlf", [False, True])
def test_bad_input_is_reported_with_file_and_line(tmp_path, ext, bad, message, crlf):
    good = b"1 0:0:1 1:1:1" if ext == "ffm" else b"1 0:1 1:1"
    nl = b"\r\n" if crlf else b"\n"
    data = nl.join([good, b"# comment", b"", b"  ", good, bad, good]) + nl
    path = write(tmp_path, f"data.{ext}", data)
    with pytest.raises(DataError) as info:
        read_text(path)
    err = info.value
    assert err.exit_code == 65
    assert err.line == 6
    assert err.path == str(path)
    assert err.message == message
    assert str(err) == f"{path}:6: {message}"
    assert is_printable_ascii(str(err))


@pytest.mark.parametrize("ext, data, message", [
    ("ffm", b"1 abc\n", f"{FFM_SHAPE}, found 'abc'"),
    ("svm", b"1 5 6\n", f"{SVM_SHAPE}, found '5'"),
])
def test_token_without_colon_in_block_without_colons(tmp_path, ext, data, message):
    path = write(tmp_path, f"data.{ext}", data)
    with pytest.raises(DataError) as info:
        read_text(path)
    assert info.value.message == message


def test_token_without_colon_message_independent_of_block_size(tmp_path):
    path = write(tmp_path, "data.ffm", b"1 0:0:1\n0 5\n")
    messages = set()
    for bb in BLOCK_SIZES:
        with pytest.raises(DataError) as info:
            read_text(path, block_bytes=bb)
        messages.add(str(info.value))
    assert messages == {f"{path}:2: {FFM_SHAPE}, found '5'"}


def test_error_message_uses_given_path_and_stops_at_first_error(tmp_path):
    path = write(tmp_path, "data.ffm", b"1 0:0:1\n0 x:1:1\n0 y:1:1\n")
    with pytest.raises(DataError) as info:
        read_text(path)
    assert info.value.line == 2
    assert "'x:1:1'" in str(info.value)


# --------------------------------------------------------------------------
# format sniffing, missing inputs
# --------------------------------------------------------------------------

def test_extension_decides_format(tmp_path):
    # libsvm-looking content in a .ffm file is parsed as libffm (and fails) ...
    with pytest.raises(DataError, match="expected field:feature:value"):
        read_text(write(tmp_path, "a.ffm", b"1 3:1 4:1\n"))
    # ... and libffm content in a .svm file is parsed as libsvm.
    with pytest.raises(DataError, match="expected feature:value"):
        read_text(write(tmp_path, "a.svm", b"1 0:3:1\n"))
    assert read_text(write(tmp_path, "b.libsvm", b"1 3:1\n"))[1] == "libsvm"
    assert read_text(write(tmp_path, "b.libffm", b"1 0:3:1\n"))[1] == "libffm"
    assert format_from_name("x.ffm") == "libffm"
    assert format_from_name("x.svm") == "libsvm"
    assert format_from_name("x.txt") is None


def test_explicit_format_overrides_extension(tmp_path):
    batch, fmt = read_text(write(tmp_path, "a.ffm", b"1 3:1 4:2\n"), fmt="libsvm")
    assert fmt == "libsvm"
    assert batch.features.tolist() == [3, 4]
    with pytest.raises(ValueError):
        TextReader(tmp_path / "a.ffm", fmt="csv")


@pytest.mark.parametrize("data, fmt", [
    (b"1 0:3:1\n", "libffm"),
    (b"1 3:1\n", "libsvm"),
    (b"# 1 1:1\n\n1\n0 2:5:1\n", "libffm"),
    (b"# 1 1:1:1\n\n1\n0 qid:4 2:1\n", "libsvm"),
    (b"1 3:1 # 4:5:6\n", "libsvm"),
])
def test_content_decides_format_without_known_extension(tmp_path, data, fmt):
    batch, got = read_text(write(tmp_path, "data.txt", data))
    assert got == fmt
    assert sniff_format(data) == fmt
    assert batch.n_rows >= 1


@pytest.mark.parametrize("data", [b"# comment\n1 3:1\n", b"1\n0 3:1\n"])
def test_sniffing_independent_of_block_size(tmp_path, data):
    path = write(tmp_path, "data.txt", data)
    assert read_text(path)[1] == "libsvm"
    assert read_text(path, block_bytes=1)[1] == "libsvm"


def test_missing_file(tmp_path):
    with pytest.raises(InputNotFoundError) as info:
        read_text(tmp_path / "nope.ffm")
    assert info.value.exit_code == 66
    assert "nope.ffm" in str(info.value)


def test_directory_is_not_a_data_file(tmp_path):
    (tmp_path / "d.ffm").mkdir()
    with pytest.raises(InputNotFoundError) as info:
        read_text(tmp_path / "d.ffm")
    assert info.value.exit_code == 66
    assert "directory" in str(info.value)
