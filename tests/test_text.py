"""The libffm / libsvm text reader: grammar, block boundaries, error reports."""

import io
import sys

import numpy as np
import pytest

from fmcli._core import _parse
from fmcli.data import text as text_module
from fmcli.data.batch import Batch
from fmcli.data.text import (
    DEFAULT_BLOCK_BYTES,
    ReadLimits,
    TextReader,
    detect_task,
    format_from_name,
    read_text,
    sniff_format,
    sort_classes,
)
from fmcli.data.weights import read_weights
from fmcli.errors import ConfigError, DataError, InputNotFoundError

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


def parse_bytes(text: bytes, fmt: str = "libffm"):
    """_parse.parse_block over `text` alone: (result tuple, features, fields)."""
    data = np.frombuffer(text, np.uint8)
    labels, indptr = np.zeros(4, np.float32), np.zeros(5, np.int64)
    fields, features, values = np.zeros(8, np.int32), np.zeros(8, np.int32), np.zeros(8, np.float32)
    result = _parse.parse_block(data, fmt, "real", labels, indptr, fields, features, values)
    return result, features, fields


@pytest.mark.parametrize("fmt", ["libffm", "libsvm"])
def test_ids_of_every_length_anywhere_in_the_buffer(fmt):
    # Ids of up to seven digits with eight readable bytes are read as a word
    # (digits.h); longer ones, and those near the buffer's end, byte by byte.
    # Every length (leading zeros included), followed by each kind of byte
    # that can end an id, at each distance from the buffer's end, must read
    # as int() reads it.
    rng = np.random.default_rng(5)
    ids = ["0", "7", "00", "000000", "0000007", "00000000", "0000000000012", "9999999", "10000000",
           "2147483647", "0002147483647"]
    ids += [str(int(rng.integers(10 ** (n - 1), 10 ** n))) for n in range(1, 10) for _ in range(3)]
    nxt = "4:5:1" if fmt == "libffm" else "5:1"
    for ident in ids:
        token = f"3:{ident}:1" if fmt == "libffm" else f"{ident}:1"
        for tail in ["", " ", "\t", "#x", "\r\n", "\n", " " + nxt]:
            for pad in range(10):
                text = f"1 {token}{tail}{' ' * pad}".encode()
                (rows, nnz, _, err, *_), features, fields = parse_bytes(text, fmt)
                assert err == 0 and rows == 1, (text, err)
                assert features[0] == int(ident), text
                assert fmt == "libsvm" or fields[0] == 3
                assert nnz == (2 if tail.endswith(nxt) else 1), text
                assert nnz == 1 or features[1] == 5


def test_id_digits_run_into_an_overflow_or_a_bad_byte():
    # the word path must hand every id it cannot read to the byte loop,
    # which reports exactly what it did before
    for text, code in [(b"1 0:2147483648:1 0:0:1\n", 5), (b"1 0:12345678901:1  \n", 5),
                       (b"1 0:-5:1         \n", 4), (b"1 0:+5:1         \n", 3),
                       (b"1 0:12x4:1       \n", 3), (b"1 0::1           \n", 3)]:
        assert parse_bytes(text)[0][3] == code, text


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


def test_streamed_blocks_denser_than_the_first_grow_their_arrays(tmp_path):
    # A block's arrays are sized from the densest block before it: a later
    # block of many short rows (or many more entries per byte) outgrows them
    # and must come out whole, with the right line numbers.
    wide = " ".join(f"{j % 7}:{1000000 + j}:0.123456" for j in range(60))
    lines = [f"1 {wide}"] * 40 + ["0"] * 3000 + ["1 1:1:1 2:2:1 3:3:1"] * 3000 + [f"0 {wide}"] * 5
    path = write(tmp_path, "dense.ffm", ("\n".join(lines) + "\n").encode())
    ref, _ = read_text(path)
    for bb in (4096, 20000, 1 << 16):
        batches = list(TextReader(path, block_bytes=bb, track_lines=True))
        streamed = Batch.concat(batches)
        for name in ("labels", "indptr", "fields", "features", "values"):
            np.testing.assert_array_equal(getattr(streamed, name), getattr(ref, name), err_msg=f"{name} bb={bb}")
        np.testing.assert_array_equal(np.concatenate([b.lines for b in batches]), np.arange(1, len(lines) + 1),
                                      err_msg=f"lines bb={bb}")


def test_block_capacity_is_bounded_by_the_worst_case():
    # the first block gets _FIRST_CAPACITY, later ones a quarter more than
    # the densest so far; never more than a block's bytes allow
    assert text_module._block_capacity(10, None) == text_module._capacity(10)
    assert text_module._block_capacity(8 << 20, None) == text_module._FIRST_CAPACITY
    rows, nnz = text_module._block_capacity(8 << 20, (0.001, 0.05))
    assert rows == int(0.001 * (8 << 20) * 1.25) + 1024 and nnz == int(0.05 * (8 << 20) * 1.25) + (1 << 16)


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
W_NUMBER = "expected a number as the row weight after 'LABEL:'"
W_NEG = "expected a row weight >= 0 after 'LABEL:'"
W_RANGE = "expected a finite row weight within float32 range after 'LABEL:'"

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
    # row weights
    ("ffm", b"1:abc 1:2:3", f"{W_NUMBER}, found '1:abc'"),
    ("ffm", b"1: 1:2:3", f"{W_NUMBER}, found '1:'"),
    ("ffm", b"1:nan 1:2:3", f"{W_NUMBER}, found '1:nan'"),
    ("ffm", b"1:inf 1:2:3", f"{W_NUMBER}, found '1:inf'"),
    ("ffm", b"1:0x10 1:2:3", f"{W_NUMBER}, found '1:0x10'"),
    ("ffm", b"1:2:3 1:2:3", f"{W_NUMBER}, found '1:2:3'"),
    ("ffm", b"1:1e 1:2:3", f"{W_NUMBER}, found '1:1e'"),
    ("ffm", b"1::1 1:2:3", f"{W_NUMBER}, found '1::1'"),
    ("ffm", b"1:-1 1:2:3", f"{W_NEG}, found '1:-1'"),
    ("ffm", b"0:-0.5 1:2:3", f"{W_NEG}, found '0:-0.5'"),
    ("ffm", b"1:-1e-50 1:2:3", f"{W_NEG}, found '1:-1e-50'"),
    ("ffm", b"1:-inf 1:2:3", f"{W_NUMBER}, found '1:-inf'"),
    ("ffm", b"1:1e39 1:2:3", f"{W_RANGE}, found '1:1e39'"),
    ("ffm", b"1:1e400 1:2:3", f"{W_RANGE}, found '1:1e400'"),
    ("ffm", b":1 1:2:3", f"{LABEL}, found ':1'"),
    ("ffm", b"x:1 1:2:3", f"{LABEL}, found 'x:1'"),
    ("ffm", b"2:1 1:2:3", f"{BINARY}, found '2:1'"),
    ("ffm", b"1e400:1 1:2:3", f"{NONFINITE}, found '1e400:1'"),
    ("svm", b"1:x 3:1", f"{W_NUMBER}, found '1:x'"),
    ("svm", b"0:-2 3:1", f"{W_NEG}, found '0:-2'"),
    ("svm", b"1:3.5e38 3:1", f"{W_RANGE}, found '1:3.5e38'"),
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


# --------------------------------------------------------------------------
# row weights: LABEL:WEIGHT
# --------------------------------------------------------------------------

def test_row_weights_libffm(tmp_path):
    path = write(tmp_path, "w.ffm", b"1:0.5 3:17:1\n0 1:2:3\n-1:2 0:0:1\n0:0 4:4:4\n+1:1e-3\n")
    with pytest.raises(DataError, match="binary labels use both 0 and -1"):
        read_text(path)
    path = write(tmp_path, "w.ffm", b"1:0.5 3:17:1\n0 1:2:3\n0:2 0:0:1\n0:0 4:4:4\n+1:1e-3\n")
    batch, fmt = read_text(path)
    assert fmt == "libffm"
    assert_batch(batch, labels=[1, 0, 0, 0, 1], indptr=[0, 1, 2, 3, 4, 4],
                 fields=[3, 1, 0, 4], features=[17, 2, 0, 4], values=[1, 3, 1, 4])
    assert batch.weights.dtype == np.float32
    np.testing.assert_array_equal(batch.weights, np.array([0.5, 1, 2, 0, 1e-3], np.float32))


def test_row_weights_libsvm_and_real_labels(tmp_path):
    path = write(tmp_path, "w.svm", b"0:2 5:1.0\n1 qid:3 2:1\n1:0.25\n")
    batch, fmt = read_text(path)
    assert fmt == "libsvm"
    assert_batch(batch, labels=[0, 1, 1], indptr=[0, 1, 2, 2], fields=[0, 0],
                 features=[5, 2], values=[1, 1])
    np.testing.assert_array_equal(batch.weights, [2, 1, 0.25])
    path = write(tmp_path, "r.svm", b"-2.5:3 1:1\n1e3 2:2\n0.5:1.5\n")
    batch, _ = read_text(path, label_mode="real")
    assert batch.labels.tolist() == [-2.5, 1000, 0.5]
    assert batch.weights.tolist() == [3, 1, 1.5]


def test_weight_forms(tmp_path):
    weights = ["0", "-0", "+2", ".5", "5.", "1e-400", "3.4028235e+38", "1E2", "0.1"]
    data = "".join(f"1:{w} 0:0:1\n" for w in weights).encode()
    batch, _ = read_text(write(tmp_path, "w.ffm", data))
    want = np.array([float(w) for w in weights], np.float32)
    np.testing.assert_array_equal(batch.weights, want)
    assert not np.signbit(batch.weights).any()  # -0 is read as 0


def test_weights_none_when_every_row_weighs_one(tmp_path):
    for data in (b"1 0:0:1\n0 1:1:1\n", b"1:1 0:0:1\n0:1.0 1:1:1\n", b"", b"# c\n"):
        path = write(tmp_path, "a.ffm", data)
        assert read_text(path)[0].weights is None
        assert all(b.weights is None for b in TextReader(path, block_bytes=3))


@pytest.mark.parametrize("block_bytes", BLOCK_SIZES)
def test_weights_of_mixed_rows_across_blocks(tmp_path, block_bytes):
    data = (b"# header\r\n1 0:1:1\r\n0:3 1:1:1\n\n1 2:2:2 # c 1:1\n0\n1:0.5\n"
            b"0 3:3:3\n0 4:4:4\n1:7 5:5:5 6:6:6")
    path = write(tmp_path, "m.ffm", data)
    want = np.array([1, 3, 1, 1, 0.5, 1, 1, 7], np.float32)
    got, _ = read_text(path, block_bytes=block_bytes)
    np.testing.assert_array_equal(got.weights, want)
    assert got.labels.tolist() == [1, 0, 1, 0, 1, 0, 0, 1]
    batches = list(TextReader(path, block_bytes=block_bytes))
    if block_bytes < 16:
        assert any(b.weights is None for b in batches)  # blocks without weights stay light
    streamed = Batch.concat(batches)
    np.testing.assert_array_equal(streamed.weights, want)
    assert streamed.weights.dtype == np.float32


@pytest.mark.parametrize("block_bytes", BLOCK_SIZES)
def test_bad_weight_line_is_counted_across_blocks(tmp_path, block_bytes):
    data = b"1:2 0:0:1\r\n\r\n# c\n0 1:1:1\n1:-3 0:0:1\n"
    path = write(tmp_path, "w.ffm", data)
    with pytest.raises(DataError) as info:
        read_text(path, block_bytes=block_bytes)
    assert str(info.value) == f"{path}:5: {W_NEG}, found '1:-3'"


def test_bad_weight_rows_can_be_skipped(tmp_path):
    path = write(tmp_path, "w.ffm", b"1:2 0:0:1\n0:x 1:1:1\n1:3 2:2:2\n")
    reader = TextReader(path, limits=ReadLimits(max_bad_rows=1))
    batch = reader.read_all()
    assert [e.line for e in reader.bad_rows] == [2]
    assert batch.weights.tolist() == [2, 3]
    assert batch.features.tolist() == [0, 2]


def test_concat_carries_weights():
    def batch(n, weights):
        return Batch(np.zeros(n, np.float32), np.zeros(n + 1, np.int64), np.zeros(0, np.int32),
                     np.zeros(0, np.int32), np.zeros(0, np.float32),
                     weights=None if weights is None else np.asarray(weights, np.float32))

    assert Batch.concat([batch(2, None), batch(1, None)]).weights is None
    joined = Batch.concat([batch(2, None), batch(2, [0.5, 2]), batch(1, None)])
    assert joined.weights.dtype == np.float32
    assert joined.weights.tolist() == [1, 1, 0.5, 2, 1]
    assert Batch.empty().weights is None


def _parse_direct(data: bytes, label_mode="binary", weights=True, spans=False):
    buf = np.frombuffer(data, np.uint8)
    cap = len(data) // 2 + 1
    out = dict(
        labels=np.zeros(cap, np.float32), indptr=np.zeros(cap + 1, np.int64),
        fields=np.zeros(cap * 2, np.int32), features=np.zeros(cap * 2, np.int32),
        values=np.zeros(cap * 2, np.float32),
    )
    w = np.full(cap, -5, np.float32) if weights else None
    sp = np.full(2 * cap, -5, np.int64) if spans else None
    result = _parse.parse_block(buf, "libffm", label_mode, out["labels"], out["indptr"], out["fields"],
                                out["features"], out["values"], weights=w, label_spans=sp)
    return result, w, sp


def test_parse_block_weights_argument():
    (rows, _, _, err, *_, weighted), w, _ = _parse_direct(b"1 0:0:1\n0:2.5 1:1:1\n")
    assert (rows, err, weighted) == (2, 0, True)
    assert w[:2].tolist() == [1, 2.5]
    (rows, _, _, err, *_, weighted), w, _ = _parse_direct(b"1 0:0:1\n0 1:1:1\n")
    assert (rows, err, weighted) == (2, 0, False)
    assert w[:2].tolist() == [1, 1]
    # Without a weights array a ':' in the label is a bad label.
    (rows, _, _, err, err_line, start, end, *_), _, _ = _parse_direct(b"1 0:0:1\n0:2.5 1:1:1\n",
                                                                     weights=False)
    assert (rows, err, err_line, start, end) == (1, 1, 1, 8, 13)
    with pytest.raises(ValueError):
        _parse_direct(b"a 0:0:1\n", label_mode="class")
    with pytest.raises(ValueError):
        _parse.parse_block(np.frombuffer(b"1\n", np.uint8), "libffm", "binary", np.zeros(2, np.float32),
                           np.zeros(3, np.int64), np.zeros(1, np.int32), np.zeros(1, np.int32),
                           np.zeros(1, np.float32), weights=np.zeros(1, np.float32))


# --------------------------------------------------------------------------
# class labels
# --------------------------------------------------------------------------

def test_parse_block_records_class_label_spans():
    data = b"cat 0:0:1\n  dog:2 1:1:1\n# c\n\xc3\xa9\t2:2:2\n"
    (rows, nnz, lines, err, *_), w, spans = _parse_direct(data, label_mode="class", spans=True)
    assert (rows, nnz, lines, err) == (3, 3, 4, 0)
    assert spans[:6].tolist() == [0, 3, 12, 3, 28, 2]
    assert w[:3].tolist() == [1, 2, 1]


def read_classes(path, block_bytes=DEFAULT_BLOCK_BYTES, **kw):
    reader = TextReader(path, label_mode="class", block_bytes=block_bytes, **kw)
    batch = reader.read_all()
    return reader, batch


def tokens_of(reader, batch):
    return [reader.classes[int(i)] for i in batch.labels]


def test_integer_classes_in_numeric_order(tmp_path):
    path = write(tmp_path, "c.ffm", b"10 0:0:1\n2 0:1:1\n-1\n0 1:1:1\n2\n+3\n")
    reader, batch = read_classes(path)
    assert reader.classes == ["-1", "0", "2", "+3", "10"]
    assert batch.labels.dtype == np.float32
    assert batch.labels.tolist() == [4, 2, 0, 1, 2, 3]
    assert batch.weights is None
    assert batch.indptr.tolist() == [0, 1, 2, 2, 3, 3, 3]


def test_string_classes_in_code_point_order(tmp_path):
    data = "dog 0:0:1\ncat:0.5 1:1:1\nZebra\n10\n2\ncat\n\u00e9l\u00e8ve\n".encode()
    path = write(tmp_path, "c.ffm", data)
    reader, batch = read_classes(path)
    assert reader.classes == ["10", "2", "Zebra", "cat", "dog", "\u00e9l\u00e8ve"]
    assert tokens_of(reader, batch) == ["dog", "cat", "Zebra", "10", "2", "cat", "\u00e9l\u00e8ve"]
    assert batch.weights.tolist() == [1, 0.5, 1, 1, 1, 1, 1]


def test_sort_classes():
    assert sort_classes(["10", "2", "-1", "0", "1"]) == ["-1", "0", "1", "2", "10"]
    assert sort_classes(["1", "01", "+1", "0"]) == ["0", "+1", "01", "1"]
    assert sort_classes(["10", "2", "1.5"]) == ["1.5", "10", "2"]
    assert sort_classes(["b", "a", "B", "\u00e9"]) == ["B", "a", "b", "\u00e9"]
    assert sort_classes([]) == []


def test_class_labels_with_libsvm(tmp_path):
    path = write(tmp_path, "c.svm", b"spam:2 qid:1 3:1\nham 4:1\n")
    reader, batch = read_classes(path)
    assert reader.classes == ["ham", "spam"]
    assert batch.labels.tolist() == [1, 0]
    assert batch.weights.tolist() == [2, 1]
    assert batch.features.tolist() == [3, 4]


def test_long_and_short_class_labels(tmp_path, monkeypatch):
    long_a, long_b = "a" * 40, "b" * 17
    labels = ["x", long_a, "y", long_b, "x", long_a, "zz"] * 5
    data = "".join(f"{c} 0:{i}:1\n" for i, c in enumerate(labels)).encode()
    path = write(tmp_path, "c.ffm", data)
    for chunk in (1, 3, 1 << 16):
        monkeypatch.setattr(text_module, "_CLASS_CHUNK", chunk)
        for block_bytes in BLOCK_SIZES:
            reader, batch = read_classes(path, block_bytes)
            assert reader.classes == sorted(set(labels))
            assert tokens_of(reader, batch) == labels


@pytest.mark.parametrize("block_bytes", BLOCK_SIZES)
def test_classes_across_blocks(tmp_path, block_bytes):
    data = b"# h\r\nb 0:0:1\r\n\r\na:3 1:1:1\nc\n  b:0.5 # x:1\n10 2:2:2\na"
    path = write(tmp_path, "c.ffm", data)
    reader, batch = read_classes(path, block_bytes)
    assert reader.classes == ["10", "a", "b", "c"]
    assert tokens_of(reader, batch) == ["b", "a", "c", "b", "10", "a"]
    assert batch.weights.tolist() == [1, 3, 1, 0.5, 1, 1]
    # Streaming: labels index the classes in order of first appearance.
    stream = TextReader(path, label_mode="class", block_bytes=block_bytes)
    joined = Batch.concat(list(stream))
    assert stream.classes == ["b", "a", "c", "10"]
    assert [stream.classes[int(i)] for i in joined.labels] == ["b", "a", "c", "b", "10", "a"]
    np.testing.assert_array_equal(joined.weights, batch.weights)
    # Reading again starts afresh.
    assert reader.read_all().labels.tolist() == batch.labels.tolist()
    assert reader.classes == ["10", "a", "b", "c"]


@pytest.mark.parametrize("block_bytes", BLOCK_SIZES)
def test_fixed_classes(tmp_path, block_bytes):
    path = write(tmp_path, "c.ffm", b"b 0:0:1\nc:2 1:1:1\na\nb\n")
    reader, batch = read_classes(path, block_bytes, classes=["c", "b", "a"])
    assert reader.classes == ["c", "b", "a"]  # as given: not reordered
    assert batch.labels.tolist() == [1, 0, 2, 1]
    assert batch.weights.tolist() == [1, 2, 1, 1]
    # A subset of the classes is fine.
    reader, batch = read_classes(path, block_bytes, classes=["a", "b", "c", "d"])
    assert batch.labels.tolist() == [1, 2, 0, 1]


@pytest.mark.parametrize("block_bytes", BLOCK_SIZES)
def test_label_outside_fixed_classes(tmp_path, block_bytes):
    path = write(tmp_path, "c.ffm", b"b 0:0:1\r\n\r\n# x\nc:2 1:1:1\nx 2:2:2\na\n")
    with pytest.raises(DataError) as info:
        read_classes(path, block_bytes, classes=["a", "b", "c"])
    assert str(info.value) == f"{path}:5: label 'x' is not one of the model's classes (a, b, c)"
    assert info.value.exit_code == 65
    many = [str(i) for i in range(12)]
    with pytest.raises(DataError) as info:
        read_classes(path, block_bytes, classes=many)
    assert info.value.line == 1
    assert info.value.message == ("label 'b' is not one of the model's classes "
                                  "(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, ...)")


def test_rows_outside_fixed_classes_can_be_skipped(tmp_path):
    data = b"a 0:0:1\nx 1:1:1\nb:2 2:2:2\nyy 3:3:3\n" + b"a 4:4:4\n" * 3
    path = write(tmp_path, "c.ffm", data)
    for block_bytes in BLOCK_SIZES:
        reader = TextReader(path, label_mode="class", classes=["a", "b"], block_bytes=block_bytes,
                            limits=ReadLimits(max_bad_rows=2))
        batch = reader.read_all()
        assert [e.line for e in reader.bad_rows] == [2, 4]
        assert batch.labels.tolist() == [0, 1, 0, 0, 0]
        assert batch.features.tolist() == [0, 2, 4, 4, 4]
        assert batch.indptr.tolist() == [0, 1, 2, 3, 4, 5]
        assert batch.weights.tolist() == [1, 2, 1, 1, 1]
    reader = TextReader(path, label_mode="class", classes=["a", "b"], limits=ReadLimits(max_bad_rows=1))
    with pytest.raises(DataError) as info:
        reader.read_all()
    assert info.value.line == 4
    assert "more than --max-bad-rows 1" in str(info.value)


CLASS = "expected a class label (text without ':' or control characters)"


@pytest.mark.parametrize("bad, message", [
    (b":2 0:0:1", f"{CLASS}, found ':2'"),
    (b"a\x01b 0:0:1", f"{CLASS}, found 'a\\x01b'"),
    (b"\x00 0:0:1", f"{CLASS}, found '\\x00'"),
    (b"a\x7f 0:0:1", f"{CLASS}, found 'a\\x7f'"),
    (b"a:b 0:0:1", f"{W_NUMBER}, found 'a:b'"),
    (b"a:1:2 0:0:1", f"{W_NUMBER}, found 'a:1:2'"),
    (b"a:-1 0:0:1", f"{W_NEG}, found 'a:-1'"),
    (b"a:1e39 0:0:1", f"{W_RANGE}, found 'a:1e39'"),
    (b"\xff\xfe 0:0:1", "expected a UTF-8 class label, found '\\xff\\xfe'"),
    (b"a 0:0:x", f"{NUMBER}, found '0:0:x'"),
])
@pytest.mark.parametrize("block_bytes", [1, DEFAULT_BLOCK_BYTES])
def test_bad_class_labels(tmp_path, bad, message, block_bytes):
    path = write(tmp_path, "c.ffm", b"a 0:0:1\nb 1:1:1\n" + bad + b"\nc 0:0:1\n")
    with pytest.raises(DataError) as info:
        read_classes(path, block_bytes)
    assert str(info.value) == f"{path}:3: {message}"
    assert is_printable_ascii(str(info.value))


def test_class_mode_arguments(tmp_path):
    path = write(tmp_path, "c.ffm", b"a\n")
    with pytest.raises(ValueError):
        TextReader(path, label_mode="binary", classes=["a"])
    with pytest.raises(ValueError):
        TextReader(path, label_mode="class", classes=["a", "a"])
    with pytest.raises(ValueError):
        TextReader(path, label_mode="classes")
    assert TextReader(path).classes is None
    reader, batch = read_classes(write(tmp_path, "e.ffm", b"# nothing\n"))
    assert reader.classes == [] and batch.n_rows == 0


def test_many_rows_of_few_classes(tmp_path):
    rng = np.random.default_rng(5)
    names = np.array(["neg", "pos", "unk", "-"])
    idx = rng.integers(0, 4, 50_000)
    data = "".join(f"{names[i]} 0:{j}:1\n" for j, i in enumerate(idx)).encode()
    path = write(tmp_path, "c.ffm", data)
    reader, batch = read_classes(path, block_bytes=1 << 16)
    assert reader.classes == ["-", "neg", "pos", "unk"]
    order = np.argsort(names)  # class index -> name index
    np.testing.assert_array_equal(order[batch.labels.astype(int)], idx)


# --------------------------------------------------------------------------
# --task auto
# --------------------------------------------------------------------------

@pytest.mark.parametrize("labels, task", [
    (["0", "1"], "binary"),
    (["1", "0"], "binary"),
    (["-1", "1"], "binary"),
    (["-1", "+1"], "binary"),
    (["0.0", "1.0"], "binary"),
    (["0", "1", "1.0", "+1", "1e0"], "binary"),
    (["-1", "1", "-1.0"], "binary"),
    (["0", "0.5", "1"], "regression"),
    (["1.5", "2"], "regression"),
    (["-3.25", "7", "1e-3"], "regression"),
    (["cat", "dog"], "multiclass"),
    (["0", "1", "cat"], "multiclass"),
    (["1", "2", "nan"], "multiclass"),
    (["1", "inf"], "multiclass"),
    (["0x1", "1"], "multiclass"),
])
def test_detect_task(labels, task):
    assert detect_task(labels) == task


@pytest.mark.parametrize("labels, fragment", [
    (["0", "1", "2"], "labels 0, 1, 2 are integers but not 0/1 or -1/+1: "
                      "pass --task multiclass or --task regression"),
    (["-1", "0", "1"], "labels -1, 0, 1 are integers"),
    (["1", "2"], "labels 1, 2 are integers"),
    (["0", "2.0"], "labels 0, 2.0 are integers"),
    ([str(i) for i in range(20)], "labels 0, 1, 2, 3, 4, ... are integers"),
    (["1"], "every label has the same value (1): the task cannot be told from one label value; "
            "pass --task"),
    (["1", "1.0"], "every label has the same value (1, 1.0): the task cannot be told"),
    (["1", "1.0", "+1"], "the task cannot be told from one label value"),
    (["cat"], "every label has the same value (cat): the task cannot be told"),
    ([], "no labels"),
])
def test_detect_task_refuses(labels, fragment):
    with pytest.raises(ConfigError) as info:
        detect_task(labels)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)
    assert info.value.exit_code == 78


def test_detect_task_from_file(tmp_path):
    reader, _ = read_classes(write(tmp_path, "t.ffm", b"1 0:0:1\n0:2 1:1:1\n1.0\n"))
    assert detect_task(reader.classes) == "binary"


# --------------------------------------------------------------------------
# --weights FILE
# --------------------------------------------------------------------------

def test_read_weights(tmp_path):
    path = write(tmp_path, "w.txt", b"1\n 2.5 \r\n0\n-0\n\t1e-3\t\n3.4028235e38\n+.5\n")
    got = read_weights(path, 7, "d.ffm")
    assert got.dtype == np.float32
    want = np.array([1, 2.5, 0, 0, 1e-3, 3.4028235e38, 0.5], np.float32)
    np.testing.assert_array_equal(got, want)
    assert not np.signbit(got).any()
    assert read_weights(write(tmp_path, "n.txt", b"1\n2"), 2, "d.ffm").tolist() == [1, 2]
    assert read_weights(write(tmp_path, "e.txt", b""), 0, "d.ffm").shape == (0,)
    assert read_weights(write(tmp_path, "b.txt", b"\xef\xbb\xbf4\r\n"), 1, "d.ffm").tolist() == [4]


def test_read_weights_large_file_in_chunks(tmp_path, monkeypatch):
    from fmcli.data import weights as weights_module
    values = np.random.default_rng(1).random(5000).astype(np.float32)
    path = write(tmp_path, "w.txt", "".join(f"{v!r}\n" for v in values.tolist()).encode())
    for chunk in (1, 7, 4096, 8 << 20):
        monkeypatch.setattr(weights_module, "_CHUNK_BYTES", chunk)
        np.testing.assert_array_equal(read_weights(path, 5000, "d.ffm"), values)
    bad = write(tmp_path, "bad.txt", b"1\n" * 3999 + b"1e39\n" + b"1\n")
    for chunk in (1, 7, 4096, 8 << 20):
        monkeypatch.setattr(weights_module, "_CHUNK_BYTES", chunk)
        with pytest.raises(DataError) as info:
            read_weights(bad, 4001, "d.ffm")
        assert info.value.line == 4000


@pytest.mark.parametrize("content, line, message", [
    (b"1\nabc\n2\n", 2, "expected a number as the row weight, found 'abc'"),
    (b"1\n2 3\n", 2, "expected one row weight per line, found '2 3'"),
    (b"1\n\n2\n", 2, "expected one row weight per line, found an empty line"),
    (b"1\n2\n\n", 3, "expected one row weight per line, found an empty line"),
    (b"\n1\n2\n", 1, "expected one row weight per line, found an empty line"),
    (b"1\n   \n2\n", 2, "expected one row weight per line, found an empty line"),
    (b"1\n#c\n", 2, "expected a number as the row weight, found '#c'"),
    (b"1 2\n\n3\n", 1, "expected one row weight per line, found '1 2'"),
    (b"1\n2-3\n", 2, "expected a number as the row weight, found '2-3'"),
    (b"1\n# c\n", 2, "expected one row weight per line, found '# c'"),
    (b"1\n1,5\n", 2, "expected a number as the row weight, found '1,5'"),
    (b"1\n1.2.3\n", 2, "expected a number as the row weight, found '1.2.3'"),
    (b"1\n1e\n", 2, "expected a number as the row weight, found '1e'"),
    (b"1\nnan\n", 2, "expected a number as the row weight, found 'nan'"),
    (b"1\ninf\n", 2, "expected a number as the row weight, found 'inf'"),
    (b"1\n1_0\n", 2, "expected a number as the row weight, found '1_0'"),
    (b"1\n0x10\n", 2, "expected a number as the row weight, found '0x10'"),
    (b"1\n\xff\n", 2, "expected a number as the row weight, found '\\xff'"),
    (b"1\n2\r3\n", 2, "expected one row weight per line, found '2\\r3'"),
    (b"1\n-1\n", 2, "expected a row weight >= 0, found '-1'"),
    (b"1\n2\n-1e-50\n", 3, "expected a row weight >= 0, found '-1e-50'"),
    (b"1\n1e39\n", 2, "expected a finite row weight within float32 range, found '1e39'"),
    (b"1\r\n1e400\r\n", 2, "expected a finite row weight within float32 range, found '1e400'"),
])
def test_read_weights_bad_line(tmp_path, content, line, message):
    path = write(tmp_path, "w.txt", content)
    with pytest.raises(DataError) as info:
        read_weights(path, content.count(b"\n"), "d.ffm")
    assert str(info.value) == f"{path}:{line}: {message}"
    assert info.value.exit_code == 65


def test_read_weights_count_mismatch(tmp_path):
    path = write(tmp_path, "w.txt", b"1\n2\n3\n")
    with pytest.raises(DataError) as info:
        read_weights(path, 4, "data.ffm")
    assert str(info.value) == f"{path}: 3 weights but data.ffm has 4 rows"
    with pytest.raises(DataError, match="3 weights but data.ffm has 2 rows"):
        read_weights(path, 2, "data.ffm")


def test_read_weights_missing_file(tmp_path):
    with pytest.raises(InputNotFoundError):
        read_weights(tmp_path / "nope.txt", 1, "d.ffm")


@pytest.mark.parametrize("mode", ["binary", "class"])
@pytest.mark.parametrize("first", [(1, 1), (3, 5), (2, 1000), (1000, 4)])
def test_read_all_grows_full_arrays_and_resumes_at_the_line(tmp_path, monkeypatch, mode, first):
    """read_all starts small and lets the first block grow the arrays: where
    they are full the parser stops, they grow, and parsing resumes at the
    start of that line.  The result is that of the streaming reader, with
    the same line numbers, weights, bad rows and classes."""
    rng = np.random.default_rng(7)
    lines = []
    for i in range(300):
        n = int(rng.integers(0, 12))
        label = ["0", "1"][i % 2] if mode == "binary" else ["a", "b", "c"][i % 3]
        if i % 7 == 0:
            label += ":2.5"
        toks = [f"{rng.integers(0, 9)}:{rng.integers(0, 500)}:{rng.random():.3f}" for _ in range(n)]
        lines.append(" ".join([label] + toks))
        if i % 50 == 3:
            lines.append("# a comment")
        if i % 61 == 5:
            lines.append("1 oops")   # a bad row (skipped)
    path = tmp_path / "rows.ffm"
    path.write_text("\n".join(lines) + "\n")
    limits = ReadLimits(max_bad_rows=100)

    def reader(block_bytes):
        return TextReader(path, label_mode=mode, limits=limits, track_lines=True, block_bytes=block_bytes)

    want_reader = reader(1 << 20)
    want = Batch.concat(list(want_reader))
    monkeypatch.setattr(text_module, "_FIRST_CAPACITY", first)
    for block_bytes in (1 << 20, 1000, 97):
        r = reader(block_bytes)
        got = r.read_all()
        for name in ("labels", "indptr", "fields", "features", "values", "lines", "weights"):
            np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=f"{name} {block_bytes}")
        assert [e.line for e in r.bad_rows] == [e.line for e in want_reader.bad_rows]
        assert r.lines == want_reader.lines == len(lines)
        assert r.classes == (sorted(want_reader.classes) if mode == "class" else None)


def test_count_newlines_counts_as_bytes_count_does():
    rng = np.random.default_rng(3)
    data = bytearray(rng.choice(np.frombuffer(b"ab\n \t", np.uint8), 5000).tobytes())
    for end in [0, 1, 2, 254, 255, 256, 510, 511, 4999, 5000, 6000]:
        assert _parse.count_newlines(data, end) == data.count(b"\n", 0, end), end
    assert _parse.count_newlines(b"\n" * 1000, 1000) == 1000   # a byte-wide count per 255 bytes
    assert _parse.count_newlines(b"", 0) == 0
