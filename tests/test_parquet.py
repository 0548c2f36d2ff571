"""Parquet input and output: round trips with the text reader, the wide
layout's hashed features, label modes, and every error a file can cause."""

import os
from pathlib import Path

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from fmcli.data.batch import Batch  # noqa: E402
from fmcli.data.parquet import (  # noqa: E402
    ParquetReader,
    _hash_strings,
    _list_parts,
    feature_hash,
    write_parquet,
)
from fmcli.data.text import ReadLimits, TextReader  # noqa: E402
from fmcli.errors import ConfigError, DataError, InputNotFoundError, OutputError  # noqa: E402

SAMPLES = Path(__file__).resolve().parent.parent / "data" / "samples"
ARRAYS = ("labels", "indptr", "fields", "features", "values")
DTYPES = {"labels": np.float32, "indptr": np.int64, "fields": np.int32,
          "features": np.int32, "values": np.float32}


def assert_same(a: Batch, b: Batch, lines: bool = False):
    for name in ARRAYS + (("lines",) if lines else ()):
        x, y = getattr(a, name), getattr(b, name)
        assert y.dtype == x.dtype, name
        np.testing.assert_array_equal(x, y, err_msg=name)
    if a.weights is None:
        assert b.weights is None
    else:
        assert b.weights is not None and b.weights.dtype == np.float32
        np.testing.assert_array_equal(a.weights, b.weights)


def assert_dtypes(batch: Batch):
    for name, dtype in DTYPES.items():
        assert getattr(batch, name).dtype == dtype, name


def write_table(tmp_path, columns: dict, name="x.parquet", schema=None, **kwargs) -> str:
    path = str(tmp_path / name)
    table = pa.table(columns, schema=schema)
    pq.write_table(table, path, **kwargs)
    return path


def error_of(path, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        ParquetReader(path, **kwargs).read_all()
    return str(info.value)


# --------------------------------------------------------------------------
# round trips through the text reader
# --------------------------------------------------------------------------

@pytest.mark.parametrize("sample", ["train.ffm", "train.svm"])
def test_round_trip_of_sample_files(tmp_path, sample):
    source = TextReader(SAMPLES / sample, track_lines=True).read_all()
    out = tmp_path / "train.parquet"
    assert write_parquet(source, out, row_group_rows=1000) == source.n_rows
    assert pq.ParquetFile(out).metadata.num_row_groups == 5
    reader = ParquetReader(out, batch_rows=7, track_lines=True)
    back = reader.read_all()
    assert_same(source, back, lines=True)   # text lines == 1-based rows: no blank lines
    assert reader.fmt == "parquet" and reader.kind == "sparse"
    assert reader.name == str(out)
    assert reader.bytes_read == os.path.getsize(out)
    assert reader.bad_rows == []
    for name in ARRAYS:
        assert getattr(back, name).flags.writeable


@pytest.mark.parametrize("sample", ["train.ffm", "train.svm"])
def test_streamed_batches_are_bounded_and_add_up(tmp_path, sample):
    source = TextReader(SAMPLES / sample).read_all()
    out = tmp_path / "x.parquet"
    write_parquet(TextReader(SAMPLES / sample, block_bytes=4096), out, row_group_rows=500)
    reader = ParquetReader(out, batch_rows=64, track_lines=True)
    parts = list(reader)
    assert len(parts) >= source.n_rows // 64
    assert all(0 < p.n_rows <= 64 for p in parts)
    np.testing.assert_array_equal(np.concatenate([p.lines for p in parts]),
                                  np.arange(1, source.n_rows + 1))
    assert_same(source, Batch.concat(parts))
    assert reader.bytes_read == os.path.getsize(out)


def test_round_trip_keeps_weights_and_values(tmp_path):
    text = tmp_path / "w.ffm"
    text.write_bytes(b"1:2.5 0:3:0.25 1:7:-2\n0 2:1:1e-3\n-1:0 \n1:1 5:9:4\n0 1:1:1\n")
    source = TextReader(text, label_mode="real").read_all()
    assert source.weights is not None
    out = tmp_path / "w.parquet"
    write_parquet(source, out)
    assert pq.ParquetFile(out).schema_arrow.names == ["label", "weight", "fields", "features",
                                                      "values"]
    assert_same(source, ParquetReader(out, label_mode="real", batch_rows=3).read_all())
    # batches of all-1 weights have none, as from the text reader
    parts = list(ParquetReader(out, label_mode="real", batch_rows=2))
    assert [p.weights is None for p in parts] == [False, False, True]


def test_write_parquet_from_an_iterator_writes_weights_that_read_back_as_none(tmp_path):
    out = tmp_path / "x.parquet"
    write_parquet(iter(TextReader(SAMPLES / "train.ffm", block_bytes=50_000)), out)
    assert "weight" in pq.ParquetFile(out).schema_arrow.names
    back = ParquetReader(out).read_all()
    assert back.weights is None
    assert_same(TextReader(SAMPLES / "train.ffm").read_all(), back)


def test_class_mode_round_trip_with_string_labels(tmp_path):
    text = tmp_path / "c.ffm"
    text.write_bytes(b"dog 0:1:1\ncat 0:2:1\nbird 1:3:1\ncat 0:4:1\ndog 1:5:1\n")
    reader = TextReader(text, label_mode="class")
    source = reader.read_all()
    out = tmp_path / "c.parquet"
    write_parquet(source, out, classes=reader.classes)
    assert pq.ParquetFile(out).schema_arrow.field("label").type == pa.string()
    back_reader = ParquetReader(out, label_mode="class", batch_rows=2)
    assert_same(source, back_reader.read_all())
    assert back_reader.classes == reader.classes == ["bird", "cat", "dog"]
    # iterating: classes in order of first appearance
    it_reader = ParquetReader(out, label_mode="class", batch_rows=2)
    labels = np.concatenate([b.labels for b in it_reader])
    assert it_reader.classes == ["dog", "cat", "bird"]
    np.testing.assert_array_equal(labels, [0, 1, 2, 1, 0])
    # fixed classes (a model's)
    fixed = ParquetReader(out, label_mode="class", classes=["cat", "dog", "bird"]).read_all()
    np.testing.assert_array_equal(fixed.labels, [1, 0, 2, 0, 1])


def test_class_mode_numbers_and_booleans(tmp_path):
    path = write_table(tmp_path, {"label": [10, 2, -1, 2], "features": [[1], [2], [3], [4]]})
    reader = ParquetReader(path, label_mode="class")
    batch = reader.read_all()
    assert reader.classes == ["-1", "2", "10"]   # numeric order, as the text reader's
    np.testing.assert_array_equal(batch.labels, [2, 1, 0, 1])
    path = write_table(tmp_path, {"label": [1.0, 0.5, 0.0], "features": [[1], [2], [3]]},
                       "f.parquet")
    reader = ParquetReader(path, label_mode="class")
    reader.read_all()
    assert reader.classes == ["0", "0.5", "1"]
    path = write_table(tmp_path, {"label": [True, False], "features": [[1], [2]]}, "b.parquet")
    reader = ParquetReader(path, label_mode="class")
    reader.read_all()
    assert reader.classes == ["0", "1"]


# --------------------------------------------------------------------------
# label modes
# --------------------------------------------------------------------------

def test_binary_labels_as_read_from_numbers_and_booleans(tmp_path):
    for name, labels in [("i.parquet", [1, -1, 1]), ("f.parquet", [1.0, 0.0, 0.0]),
                         ("b.parquet", [True, False, False])]:
        path = write_table(tmp_path, {"label": labels, "features": [[1], [2], [3]]}, name)
        batch = ParquetReader(path).read_all()
        np.testing.assert_array_equal(batch.labels, np.asarray(labels, np.float32))


def test_real_labels(tmp_path):
    path = write_table(tmp_path, {"label": [0.25, -3.0, 1e30], "features": [[1], [2], [3]]})
    batch = ParquetReader(path, label_mode="real").read_all()
    np.testing.assert_array_equal(batch.labels, np.array([0.25, -3.0, 1e30], np.float32))


@pytest.mark.parametrize("labels, mode, expected", [
    ([1, 2, 0], "binary", ":2: column 'label': expected a binary label (0/1 or -1/+1), found 2"),
    ([0, 1, -1], "binary", ":3: column 'label': binary labels use both 0 and -1"),
    ([1.0, float("inf")], "real", ":2: column 'label': expected a finite number within float32 "
                                  "range, found inf"),
    ([1.0, 1e39], "real", ":2: column 'label': expected a finite number within float32 range"),
    ([1, None], "binary", ":2: column 'label': expected a label, found null"),
    (["a", None], "class", ":2: column 'label': expected a label, found null"),
    (["a", "b c"], "class", ":2: column 'label': expected a class label"),
    (["a", ""], "class", ":2: column 'label': expected a class label"),
])
def test_bad_labels(tmp_path, labels, mode, expected):
    path = write_table(tmp_path, {"label": labels, "features": [[1]] * len(labels)})
    assert error_of(path, label_mode=mode).startswith(path + expected)


def test_all_null_class_labels(tmp_path):
    path = write_table(tmp_path, {"label": pa.array([None, None], pa.string()),
                                  "features": [[1], [2]]})
    assert error_of(path, label_mode="class") == (
        f"{path}:1: column 'label': expected a label, found null")


def test_dictionary_encoded_class_labels(tmp_path):
    labels = pa.array(["b", "a", None, "b"]).dictionary_encode()
    path = write_table(tmp_path, {"label": labels, "features": [[1], [2], [3], [4]]})
    reader = ParquetReader(path, label_mode="class", limits=ReadLimits(max_bad_rows=1),
                           track_lines=True)
    batch = reader.read_all()
    assert reader.classes == ["a", "b"]
    np.testing.assert_array_equal(batch.labels, [1, 0, 1])
    np.testing.assert_array_equal(batch.lines, [1, 2, 4])
    assert [e.line for e in reader.bad_rows] == [3]


def test_mixed_negative_labels_across_batches(tmp_path):
    path = write_table(tmp_path, {"label": [1, 0, 1, 1, -1], "features": [[1]] * 5})
    message = error_of(path, batch_rows=2)
    assert message.startswith(f"{path}:5: column 'label': binary labels use both 0 and -1")


def test_unknown_class_with_fixed_classes(tmp_path):
    path = write_table(tmp_path, {"label": ["a", "b", "zebra"], "features": [[1]] * 3})
    message = error_of(path, label_mode="class", classes=["a", "b"])
    assert message == (f"{path}:3: column 'label': label 'zebra' is not one of the model's "
                       "classes (a, b)")


def test_label_and_weight_column_names(tmp_path):
    path = write_table(tmp_path, {"y": [1, 0], "w": [2.0, 1.0], "features": [[1], [2]]})
    batch = ParquetReader(path, label_column="y", weight_column="w").read_all()
    np.testing.assert_array_equal(batch.labels, [1, 0])
    np.testing.assert_array_equal(batch.weights, [2, 1])


# --------------------------------------------------------------------------
# sparse layout: Arrow shapes
# --------------------------------------------------------------------------

def test_sparse_defaults_nulls_and_wide_integer_types(tmp_path):
    schema = pa.schema([("label", pa.int8()), ("features", pa.large_list(pa.int64()))])
    path = write_table(tmp_path, {"label": [1, 0, 1, 0],
                                  "features": [[5, 7], None, [], [2**31 - 1]]}, schema=schema)
    batch = ParquetReader(path).read_all()
    assert_dtypes(batch)
    np.testing.assert_array_equal(batch.indptr, [0, 2, 2, 2, 3])
    np.testing.assert_array_equal(batch.features, [5, 7, 2**31 - 1])
    np.testing.assert_array_equal(batch.fields, [0, 0, 0])     # no fields: field 0
    np.testing.assert_array_equal(batch.values, [1, 1, 1])     # no values: 1.0


def test_sparse_columns_in_any_order_with_other_columns_ignored(tmp_path):
    path = write_table(tmp_path, {"id": ["a", "b"], "values": [[0.5, 2.0], [3]],
                                  "features": [[1, 2], [3]], "label": [1.0, 0.0],
                                  "fields": pa.array([[0, 1], [4]], pa.list_(pa.uint8()))})
    batch = ParquetReader(path).read_all()
    assert_dtypes(batch)
    np.testing.assert_array_equal(batch.fields, [0, 1, 4])
    np.testing.assert_array_equal(batch.features, [1, 2, 3])
    np.testing.assert_array_equal(batch.values, [0.5, 2.0, 3.0])


def test_list_parts_of_sliced_arrays_with_nulls():
    arr = pa.array([[1, 2], [3], None, [4, 5, 6], []], pa.list_(pa.int32()))
    indptr, flat = _list_parts(arr.slice(1, 3))
    np.testing.assert_array_equal(indptr, [0, 1, 1, 4])
    assert flat.to_pylist() == [3, 4, 5, 6]
    indptr, flat = _list_parts(arr.slice(3, 2))
    np.testing.assert_array_equal(indptr, [0, 3, 3])
    assert flat.to_pylist() == [4, 5, 6]


def test_many_row_groups_and_small_batches(tmp_path):
    rng = np.random.default_rng(0)
    n = 103
    lengths = rng.integers(0, 5, n)
    features = [rng.integers(0, 1000, k).tolist() for k in lengths]
    path = write_table(tmp_path, {"label": rng.integers(0, 2, n), "features": features},
                       row_group_size=10)
    parts = list(ParquetReader(path, batch_rows=7))
    assert all(p.n_rows <= 7 for p in parts)
    batch = Batch.concat(parts)
    np.testing.assert_array_equal(batch.indptr, np.concatenate([[0], np.cumsum(lengths)]))
    np.testing.assert_array_equal(batch.features, np.concatenate([np.array(f, np.int64)
                                                                  for f in features]))


# --------------------------------------------------------------------------
# wide layout
# --------------------------------------------------------------------------

def blake(data: bytes, bits: int = 22) -> int:
    """The documented hash, written out independently: FNV-1a 64, then
    MurmurHash3's fmix64, modulo 2**bits."""
    h = 0xCBF29CE484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) % 2**64
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) % 2**64
    h ^= h >> 33
    h = (h * 0xC4CEB93FE53BE185) % 2**64
    h ^= h >> 33
    return h % 2**bits


def test_feature_hash_is_the_documented_one_and_stable():
    assert feature_hash("site", "abc") == blake(b"site\0abc")
    assert feature_hash("price") == blake(b"price")
    assert feature_hash("site", "abc", hash_bits=31) == blake(b"site\0abc", 31)
    # pinned: ids must not change between runs, versions or machines
    assert feature_hash("site", "abc") == 1846078
    assert feature_hash("price") == 3907121


def test_vectorised_hash_equals_the_reference():
    rng = np.random.default_rng(1)
    words = ["", "a", "ü", "日本", "x" * 255, "y" * 256, "z" * 257, "w" * 1000 + "q"]
    words += ["".join(rng.choice(list("abc01é"), rng.integers(0, 20))) for _ in range(300)]
    arr = pa.array(words)
    for strings in (arr, arr.slice(3), arr.cast(pa.large_string())):
        got = _hash_strings("col", strings, 20)
        assert got.dtype == np.int32
        assert got.tolist() == [blake(b"col\0" + w.encode(), 20) for w in strings.to_pylist()]


def test_integers_hash_as_their_decimal_text(tmp_path):
    values = [0, -1, 7, 2**63 - 1, -(2**63), 123456789]
    path = write_table(tmp_path, {"label": [1] * len(values), "n": values})
    batch = ParquetReader(path).read_all()
    assert batch.features.tolist() == [blake(b"n\0" + str(v).encode()) for v in values]


def test_wide_rows(tmp_path):
    path = write_table(tmp_path, {
        "label": [1, 0, 1],
        "site": ["a.com", None, "a.com"],
        "hour": pa.array([7, 23, None], pa.int16()),
        "price": [0.5, None, float("nan")],
        "nothing": pa.array([None, None, None], pa.null()),
        "flag": [True, False, None],
    })
    reader = ParquetReader(path, batch_rows=2)
    batch = reader.read_all()
    assert reader.kind == "wide"
    assert_dtypes(batch)
    site_a = blake(b"site\0a.com")
    # field = column position: site 0, hour 1, price 2, nothing 3, flag 4
    np.testing.assert_array_equal(batch.indptr, [0, 4, 6, 7])
    np.testing.assert_array_equal(batch.fields, [0, 1, 2, 4, 1, 4, 0])
    np.testing.assert_array_equal(batch.features, [
        site_a, blake(b"hour\x007"), blake(b"price"), blake(b"flag\x001"),
        blake(b"hour\x0023"), blake(b"flag\x000"),
        site_a])
    np.testing.assert_array_equal(batch.values, [1, 1, 0.5, 1, 1, 1, 1])
    assert batch.features[0] == batch.features[6]   # equal values, equal ids across batches
    # the same data read again hashes the same
    assert_same(batch, ParquetReader(path).read_all())


def test_wide_all_null_columns_give_no_entries(tmp_path):
    path = write_table(tmp_path, {"label": [1, 0], "s": pa.array([None, None], pa.string()),
                                  "f": pa.array([None, None], pa.float64())})
    batch = ParquetReader(path).read_all()
    np.testing.assert_array_equal(batch.indptr, [0, 0, 0])
    assert batch.nnz == 0


def test_wide_columns_selected_in_order_and_hash_bits(tmp_path):
    path = write_table(tmp_path, {"label": [1], "a": ["x"], "b": [3], "c": [2.0]})
    batch = ParquetReader(path, columns=["c", "a"], hash_bits=8).read_all()
    np.testing.assert_array_equal(batch.fields, [0, 1])
    np.testing.assert_array_equal(batch.features, [blake(b"c", 8), blake(b"a\0x", 8)])
    np.testing.assert_array_equal(batch.values, [2.0, 1.0])


def test_wide_integer_and_string_values_hash_alike(tmp_path):
    a = write_table(tmp_path, {"label": [1], "k": [42]}, "a.parquet")
    b = write_table(tmp_path, {"label": [1], "k": ["42"]}, "b.parquet")
    d = write_table(tmp_path, {"label": [1, 0], "k": pa.array(["42", "x"]).dictionary_encode()},
                    "d.parquet")
    ids = [ParquetReader(p).read_all().features[0] for p in (a, b, d)]
    assert ids[0] == ids[1] == ids[2] == blake(b"k\x0042")


def test_wide_errors(tmp_path):
    path = write_table(tmp_path, {"label": [1, 1], "x": [1.0, float("inf")]})
    assert error_of(path) == (f"{path}:2: column 'x': expected a finite number within float32 "
                              "range, found inf")
    path = write_table(tmp_path, {"label": [1], "t": pa.array([b"\x00"], pa.binary())}, "b.parquet")
    assert error_of(path) == (f"{path}: column 't' must be a string, integer, boolean or "
                              "floating-point column, found binary")
    path = write_table(tmp_path, {"label": [1], "a": ["x"]}, "c.parquet")
    assert error_of(path, columns=["a", "zz"]).startswith(f"{path}: no column 'zz'")
    with pytest.raises(ConfigError, match="label column"):
        ParquetReader(path, columns=["label", "a"])
    path = write_table(tmp_path, {"label": [1], "features": [[1]]}, "d.parquet")
    with pytest.raises(ConfigError, match="wide"):
        ParquetReader(path, columns=["features"]).read_all()


# --------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------

def test_missing_file_and_not_parquet(tmp_path):
    with pytest.raises(InputNotFoundError, match="no such file"):
        ParquetReader(tmp_path / "nope.parquet").read_all()
    text = tmp_path / "t.parquet"
    text.write_bytes(b"1 0:1:1\n" * 10)
    with pytest.raises(DataError, match="not a Parquet file") as info:
        ParquetReader(text).read_all()
    assert str(info.value).startswith(f"{text}: not a Parquet file")
    empty = tmp_path / "e.parquet"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="not a Parquet file"):
        ParquetReader(empty).read_all()


@pytest.mark.parametrize("columns, expected", [
    ({"y": [1], "features": [[1]]}, "no label column 'label'"),
    ({"label": ["1"], "features": [[1]]},
     "column 'label' must be numeric or boolean (binary labels), found string"),
    ({"label": [1], "features": [["a"]]},
     "column 'features' must be a list of integers, found list<string>"),
    ({"label": [1], "features": [[1]], "fields": [[0.5]]},
     "column 'fields' must be a list of integers, found list<double>"),
    ({"label": [1], "features": [[1]], "fields": [0]},
     "column 'fields' must be a list of integers, found int64"),
    ({"label": [1], "features": [[1]], "values": [["x"]]},
     "column 'values' must be a list of numbers, found list<string>"),
    ({"label": [1], "features": [[1]], "weight": ["x"]},
     "column 'weight' must be numeric (row weights), found string"),
])
def test_schema_errors(tmp_path, columns, expected):
    path = write_table(tmp_path, columns)
    assert error_of(path).startswith(f"{path}: {expected}")


def test_weight_column_must_exist(tmp_path):
    path = write_table(tmp_path, {"label": [1], "features": [[1]]})
    assert error_of(path, weight_column="w") == f"{path}: no weight column 'w'"


I64 = pa.list_(pa.int64())


@pytest.mark.parametrize("columns, schema, expected", [
    ({"features": [[1], [2, -3]]}, None,
     ":2: column 'features': expected a non-negative id, found -3"),
    ({"features": [[1], [2**31]]}, None,
     ":2: column 'features': expected an id below 2^31, found 2147483648"),
    ({"features": [[1], [2]], "fields": [[0], [-1]]}, None,
     ":2: column 'fields': expected a non-negative id, found -1"),
    ({"features": [[1], [2]], "fields": [[0], [2**40]]}, None,
     ":2: column 'fields': expected an id below 2^31, found 1099511627776"),
    ({"features": [[1], [2, None]]}, None,
     ":2: column 'features': expected a number, found null"),
    ({"features": [[1], [2]], "values": [[1.0], [float("nan")]]}, None,
     ":2: column 'values': expected a finite number within float32 range, found nan"),
    ({"features": [[1], [2]], "values": [[1.0], [1e39]]}, None,
     ":2: column 'values': expected a finite number within float32 range, found 1e+39"),
    ({"features": [[1], [2, 3]], "values": [[1.0], [1.0]]}, None,
     ":2: column 'values' has 1 entries in this row, column 'features' has 2"),
    ({"features": [[1, 2], [3]], "fields": [[0, 1], [0, 1]]}, None,
     ":2: column 'fields' has 2 entries in this row, column 'features' has 1"),
    ({"features": [[1], [2]], "weight": [1.0, -2.0]}, None,
     ":2: column 'weight': expected a row weight >= 0, found -2.0"),
    ({"features": [[1], [2]], "weight": [1.0, None]}, None,
     ":2: column 'weight': expected a row weight, found null"),
    ({"features": [[1], [2]], "weight": [1.0, float("inf")]}, None,
     ":2: column 'weight': expected a finite row weight within float32 range, found inf"),
])
def test_row_errors_name_file_row_and_column(tmp_path, columns, schema, expected):
    path = write_table(tmp_path, {"label": [1, 0], **columns})
    assert error_of(path, batch_rows=1) == path + expected


def test_max_feature_id(tmp_path):
    path = write_table(tmp_path, {"label": [1, 0], "features": [[1], [100]]})
    limits = ReadLimits(max_feature_id=50)
    assert error_of(path, limits=limits) == (
        f"{path}:2: column 'features': expected a feature id at most 50 (--max-feature-id), "
        "found 100")


def test_bad_rows_are_skipped_up_to_max_bad_rows(tmp_path):
    path = write_table(tmp_path, {"label": [1, 7, 0, 1, 1],
                                  "features": [[1], [2], [3, -1], [4], [5]],
                                  "values": [[1.0], [1.0], [1.0, 1.0], [1.0, 2.0], [0.5]]})
    reader = ParquetReader(path, limits=ReadLimits(max_bad_rows=3), track_lines=True, batch_rows=2)
    batch = reader.read_all()
    np.testing.assert_array_equal(batch.lines, [1, 5])
    np.testing.assert_array_equal(batch.labels, [1, 1])
    np.testing.assert_array_equal(batch.indptr, [0, 1, 2])
    np.testing.assert_array_equal(batch.features, [1, 5])
    np.testing.assert_array_equal(batch.values, [1.0, 0.5])
    assert [e.line for e in reader.bad_rows] == [2, 3, 4]
    assert "binary label" in reader.bad_rows[0].message
    assert "non-negative id" in reader.bad_rows[1].message
    assert "column 'values' has 2 entries" in reader.bad_rows[2].message
    with pytest.raises(DataError, match=r":4: .*\(more than --max-bad-rows 2 bad rows\)"):
        ParquetReader(path, limits=ReadLimits(max_bad_rows=2)).read_all()


# --------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------

def test_write_parquet_is_atomic(tmp_path):
    batch = TextReader(SAMPLES / "valid.ffm").read_all()
    with pytest.raises(OutputError):
        write_parquet(batch, tmp_path / "missing" / "x.parquet")
    out = tmp_path / "x.parquet"
    out.write_bytes(b"old")

    def failing():
        yield batch
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_parquet(failing(), out)
    assert out.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["x.parquet"]
    write_parquet([batch, Batch.empty(), batch], out, row_group_rows=300)
    assert pq.ParquetFile(out).metadata.num_row_groups == 7
    assert_same(Batch.concat([batch, batch]), ParquetReader(out).read_all())


def test_wide_float_columns_can_be_bucketed(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fmcli.data.parquet import ParquetReader, feature_hash

    x = [0.5, 1.0, 2.0, 3.0, 100.0, -2.0, None]
    pq.write_table(pa.table({"label": [1, 0, 1, 0, 1, 0, 1], "x": x}), tmp_path / "f.parquet")
    batch = ParquetReader(tmp_path / "f.parquet", float_columns="bucket", hash_bits=20).read_all()
    # floor(ln(3)^2) = 1, floor(ln(100)^2) = 21; 2 and below: floor(x)
    expected = [feature_hash("x", f"b{b}", 20) for b in (0, 1, 2, 1, 21, -2)]
    assert batch.features.tolist() == expected and batch.values.tolist() == [1.0] * 6
    assert batch.indptr.tolist() == [0, 1, 2, 3, 4, 5, 6, 6]
    plain = ParquetReader(tmp_path / "f.parquet", hash_bits=20).read_all()
    assert set(plain.features.tolist()) == {feature_hash("x", None, 20)} and plain.values[4] == 100.0
