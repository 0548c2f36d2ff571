"""fmcli.data.inmemory: arrays, sparse matrices and DataFrames as Batches."""

from __future__ import annotations

import numpy as np
import pytest

from fmcli.config import Config
from fmcli.data.batch import Batch
from fmcli.data.inmemory import FrameSchema, as_batch

sp = pytest.importorskip("scipy.sparse")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def same_batch(a: Batch, b: Batch, weights: bool = True) -> None:
    """Equal arrays, dtypes included."""
    for name in ("labels", "indptr", "fields", "features", "values"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype, name
        np.testing.assert_array_equal(x, y, err_msg=name)
    if weights:
        assert (a.weights is None) == (b.weights is None)
        if a.weights is not None:
            np.testing.assert_array_equal(a.weights, b.weights)


DENSE = np.array([[0.0, 1.5, 0.0, -2.0],
                  [3.0, 0.0, 0.0, 0.0],
                  [0.0, 0.0, 0.0, 0.0],
                  [0.25, 1.0, 7.0, 0.0]])


# ---------------------------------------------------------------------------
# arrays


def test_dense_rows_are_sparse_entries_without_zeros():
    batch, schema = as_batch(DENSE, np.array([1, 0, 1, 0]))
    assert schema is None
    np.testing.assert_array_equal(batch.indptr, [0, 2, 3, 3, 6])
    np.testing.assert_array_equal(batch.features, [1, 3, 0, 0, 1, 2])
    np.testing.assert_array_equal(batch.fields, [1, 3, 0, 0, 1, 2])     # one field per column
    np.testing.assert_array_equal(batch.values, [1.5, -2.0, 3.0, 0.25, 1.0, 7.0])
    np.testing.assert_array_equal(batch.labels, [1, 0, 1, 0])
    assert batch.indptr.dtype == np.int64
    assert batch.fields.dtype == batch.features.dtype == np.int32
    assert batch.values.dtype == batch.labels.dtype == np.float32
    assert batch.weights is None


@pytest.mark.parametrize("convert", [
    lambda X: X.tolist(),
    lambda X: X.astype(np.float32),
    sp.csr_matrix, sp.csc_matrix, sp.coo_matrix, sp.lil_matrix, sp.dok_matrix,
    sp.csr_array, sp.csc_array, sp.coo_array,
], ids=["list", "float32", "csr", "csc", "coo", "lil", "dok", "csr_array", "csc_array", "coo_array"])
def test_every_form_gives_the_dense_batch(convert):
    y = np.array([1.0, 0.0, 2.0, 0.5])
    w = np.array([1.0, 2.0, 0.0, 0.5])
    want, _ = as_batch(DENSE, y, sample_weight=w, fields=[0, 0, 1, 2])
    got, _ = as_batch(convert(DENSE), y, sample_weight=w, fields=[0, 0, 1, 2])
    same_batch(got, want)


def test_integer_and_boolean_arrays():
    X = np.array([[0, 3], [1, 0]], dtype=np.int64)
    batch, _ = as_batch(X)
    np.testing.assert_array_equal(batch.values, [3.0, 1.0])
    batch, _ = as_batch(X.astype(bool))
    np.testing.assert_array_equal(batch.values, [1.0, 1.0])     # explicit values kept
    np.testing.assert_array_equal(batch.features, [1, 0])
    np.testing.assert_array_equal(batch.labels, [0, 0])


def test_sparse_stored_zeros_and_duplicates_are_not_entries():
    data = np.array([1.0, 0.0, 2.0, 3.0], np.float32)
    indices = np.array([2, 0, 2, 1], np.int32)          # row 0: col 2 twice; a stored zero
    indptr = np.array([0, 3, 4], np.int32)
    X = sp.csr_matrix((data, indices, indptr), shape=(2, 3))
    before = X.data.copy()
    batch, _ = as_batch(X)
    np.testing.assert_array_equal(batch.indptr, [0, 1, 2])
    np.testing.assert_array_equal(batch.features, [2, 1])
    np.testing.assert_array_equal(batch.values, [3.0, 3.0])
    np.testing.assert_array_equal(X.data, before)       # the caller's matrix is left alone


def test_unsorted_csr_indices_are_sorted():
    X = sp.csr_matrix((np.array([1.0, 2.0]), np.array([2, 0]), np.array([0, 2])), shape=(1, 3))
    X.has_sorted_indices = False
    batch, _ = as_batch(X)
    np.testing.assert_array_equal(batch.features, [0, 2])
    np.testing.assert_array_equal(batch.values, [2.0, 1.0])


def test_float32_int32_csr_is_not_copied():
    X = sp.csr_matrix(DENSE.astype(np.float32))
    X.indices = X.indices.astype(np.int32)
    batch, _ = as_batch(X)
    assert np.shares_memory(batch.values, X.data)
    assert np.shares_memory(batch.features, X.indices)
    batch, _ = as_batch(sp.csr_array(X), fields=np.array([0, 0, 1, 1]))
    assert np.shares_memory(batch.values, X.data)
    np.testing.assert_array_equal(batch.fields, [0, 1, 0, 0, 0, 1])


def test_float64_csr_values_are_converted():
    X = sp.csr_matrix(DENSE)
    batch, _ = as_batch(X)
    assert batch.values.dtype == np.float32
    assert not np.shares_memory(batch.values, X.data)


def test_fields_array():
    batch, _ = as_batch(DENSE, fields=np.array([4, 4, 0, 1], np.int64))
    np.testing.assert_array_equal(batch.fields, [4, 1, 4, 4, 4, 0])
    batch, _ = as_batch(DENSE, fields=[0.0, 0.0, 1.0, 1.0])     # integral floats are integers
    np.testing.assert_array_equal(batch.fields, [0, 1, 0, 0, 0, 1])


def test_labels_and_weights():
    batch, _ = as_batch(DENSE, [0, 1, 2, 3], sample_weight=[1, 2, 3, 0])
    assert batch.labels.dtype == np.float32 and batch.weights.dtype == np.float32
    np.testing.assert_array_equal(batch.weights, [1, 2, 3, 0])
    batch, _ = as_batch(DENSE, np.array([True, False, True, True]))
    np.testing.assert_array_equal(batch.labels, [1, 0, 1, 1])


def test_empty_rows_and_columns():
    batch, _ = as_batch(np.zeros((3, 2)))
    assert batch.n_rows == 3 and batch.nnz == 0
    batch, _ = as_batch(np.zeros((0, 2)))
    assert batch.n_rows == 0 and batch.indptr.tolist() == [0]


@pytest.mark.parametrize("X, kwargs, match", [
    (np.array([[1.0, np.nan]]), {}, "Input X contains NaN"),
    (np.array([[1.0, np.inf]]), {}, "Input X contains infinity"),
    (np.array([[-np.inf]]), {}, "Input X contains infinity"),
    (np.array([[1e300]]), {}, "too large for dtype\\('float32'\\)"),
    (sp.csr_matrix(np.array([[0.0, np.nan]])), {}, "Input X contains NaN"),
    (sp.csr_matrix(np.array([[0.0, np.inf]])), {}, "Input X contains infinity"),
    (np.zeros(3), {}, "must be 2-D.*shape \\(3,\\).*reshape"),
    (np.zeros((2, 2, 2)), {}, "must be 2-D.*shape \\(2, 2, 2\\)"),
    (np.array([["a", "b"]]), {}, "must be numeric"),
    (np.array([[1 + 2j]]), {}, "must be numeric"),
    (DENSE, {"fields": [0, 1, 2]}, "one field per column of X \\(4\\)"),
    (DENSE, {"fields": [0, 1, 2, -1]}, "fields must be >= 0"),
    (DENSE, {"fields": [0, 1, 2, 0.5]}, "fields must be integers"),
    (DENSE, {"fields": ["a", "b", "c", "d"]}, "fields must be integers"),
    (DENSE, {"y": [0, 1]}, "y has 2 values but X has 4 rows"),
    (DENSE, {"y": np.zeros((4, 1))}, "y must be 1-D"),
    (DENSE, {"y": [0, 1, np.nan, 1]}, "Input y contains NaN"),
    (DENSE, {"sample_weight": [1, 1, -1, 1]}, "sample_weight must be >= 0"),
    (DENSE, {"sample_weight": [1, 1, 1]}, "sample_weight has 3 values but X has 4 rows"),
    (DENSE, {"sample_weight": [1, 1, np.inf, 1]}, "Input sample_weight contains infinity"),
])
def test_bad_input_is_one_clear_value_error(X, kwargs, match):
    kwargs = dict(kwargs)
    y = kwargs.pop("y", None)
    with pytest.raises(ValueError, match=match) as info:
        as_batch(X, y, **kwargs)
    assert "\n" not in str(info.value)


def test_object_arrays():
    batch, _ = as_batch(np.array([[1, 0], [0, 2.5]], dtype=object))
    np.testing.assert_array_equal(batch.values, [1.0, 2.5])
    X = np.array([[1, {"a": 1}]], dtype=object)
    with pytest.raises(TypeError):
        as_batch(X)


# ---------------------------------------------------------------------------
# DataFrames


def frame_data():
    """Columns of every kind: strings, categorical, integers, floats, nulls."""
    return {
        "city": ["paris", "rome", None, "paris", "oslo"],
        "device": ["phone", "tablet", "phone", None, "phone"],     # categorical below
        "slot": [1, 2, 3, 1, 2],
        "price": [0.5, None, 2.0, 0.0, 12.25],
        "hits": [3, None, 1, 1, 2],                               # nullable integers
        "flag": [True, False, True, None, False],
    }


LABELS = np.array([1, 0, 1, 0, 1], np.float32)


def pandas_frame():
    pd = pytest.importorskip("pandas")
    d = frame_data()
    return pd.DataFrame({
        "city": pd.array(d["city"], dtype="string"),
        "device": pd.Categorical(d["device"]),
        "slot": np.array(d["slot"], np.int64),
        "price": np.array([np.nan if v is None else v for v in d["price"]]),
        "hits": pd.array(d["hits"], dtype="Int64"),
        "flag": pd.array(d["flag"], dtype="boolean"),
    })


def polars_frame():
    pl = pytest.importorskip("polars")
    d = frame_data()
    return pl.DataFrame({
        "city": d["city"],
        "device": pl.Series(d["device"], dtype=pl.Categorical),
        "slot": d["slot"],
        "price": d["price"],
        "hits": d["hits"],
        "flag": d["flag"],
    })


def parquet_batch(tmp_path, table, labels, **options) -> tuple[Batch, dict]:
    """What fm's Parquet reader makes of `table` written as a file."""
    from fmcli.data.parquet import ParquetReader

    path = tmp_path / "frame.parquet"
    pq.write_table(table.append_column("label", pa.array(labels, pa.float32())), path)
    reader = ParquetReader(path, label_mode="real", **options)
    return reader.read_all(), reader.input_map


@pytest.mark.parametrize("make", [pandas_frame, polars_frame], ids=["pandas", "polars"])
@pytest.mark.parametrize("float_columns", [None, "bucket"])
def test_frame_is_encoded_as_wide_parquet(tmp_path, make, float_columns):
    frame = make()
    batch, schema = as_batch(frame, LABELS, float_columns=float_columns)
    table = (pa.Table.from_pandas(frame, preserve_index=False)
             if type(frame).__module__.startswith("pandas") else frame.to_arrow())
    want, want_map = parquet_batch(tmp_path, table, LABELS,
                                   float_columns=float_columns or Config().float_columns)
    same_batch(batch, want)
    assert schema.input_map == {**want_map, "weight_column": None}
    assert schema.feature_names == ("city", "device", "slot", "price", "hits", "flag")
    assert schema.input_map["kinds"] == ["categorical", "categorical", "categorical", "numeric",
                                         "categorical", "categorical"]
    # nulls are absent: row 1 has no price, no hits
    row1 = batch.fields[batch.indptr[1]:batch.indptr[2]].tolist()
    assert row1 == [0, 1, 2, 5]


def test_pandas_and_polars_agree():
    a, sa = as_batch(pandas_frame(), LABELS)
    b, sb = as_batch(polars_frame(), LABELS)
    same_batch(a, b)
    assert sa.to_map() == sb.to_map()


def test_frame_defaults_come_from_config():
    _, schema = as_batch(pandas_frame())
    assert schema.input_map["hash_bits"] == Config().hash_bits
    assert schema.input_map["float_columns"] == Config().float_columns
    batch, schema = as_batch(pandas_frame(), hash_bits=4)
    assert schema.input_map["hash_bits"] == 4
    assert batch.features.max() < 16


def test_frame_labels_and_weights():
    frame = pandas_frame()
    batch, _ = as_batch(frame, [0, 1, 2, 3, 4], sample_weight=[1, 0, 2, 1, 1])
    np.testing.assert_array_equal(batch.labels, [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(batch.weights, [1, 0, 2, 1, 1])
    batch, _ = as_batch(frame)
    np.testing.assert_array_equal(batch.labels, np.zeros(5))
    with pytest.raises(ValueError, match="y has 2 values but X has 5 rows"):
        as_batch(frame, [0, 1])


def test_frame_columns_called_label_and_weight_are_features():
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"label": ["a", "b"], "weight": [0.5, 2.0]})
    batch, schema = as_batch(frame, [1, 0])
    assert schema.columns == ["label", "weight"]
    assert schema.input_map["label_column"] not in ("label", "weight")
    assert batch.weights is None
    np.testing.assert_array_equal(batch.labels, [1, 0])
    np.testing.assert_array_equal(batch.fields, [0, 1, 0, 1])
    np.testing.assert_array_equal(batch.values, [1.0, 0.5, 1.0, 2.0])


def test_frame_fields_list_and_dict():
    frame = pandas_frame()
    batch, schema = as_batch(frame, fields=["price", "city"])
    assert schema.columns == ["price", "city"]
    assert schema.feature_names == tuple(frame.columns)
    assert schema.input_map["all_columns"] is False
    same, _ = as_batch(frame[["price", "city"]])
    same_batch(batch, same)
    by_dict, schema2 = as_batch(frame, fields={"city": 1, "price": 0})
    same_batch(by_dict, batch)
    assert schema2.columns == ["price", "city"]


@pytest.mark.parametrize("fields, match", [
    (["nope"], "column 'nope', which X does not have"),
    (["city", "city"], "more than once"),
    ([], "no column"),
    ({"city": 0, "price": 2}, "number the chosen columns 0, 1"),
    ({"city": 0, "price": 0}, "number the chosen columns 0, 1"),
    ("city", "not a string"),
    ([0, 1], "must name its columns"),
])
def test_frame_bad_fields(fields, match):
    with pytest.raises(ValueError, match=match):
        as_batch(pandas_frame(), fields=fields)


def test_frame_bad_input():
    pd = pytest.importorskip("pandas")
    with pytest.raises(ValueError, match="column names must be strings, found 0"):
        as_batch(pd.DataFrame(np.ones((2, 2))))
    with pytest.raises(ValueError, match="column 'x': expected a finite number"):
        as_batch(pd.DataFrame({"x": [1.0, np.inf]}))
    with pytest.raises(ValueError, match="column 't' must be a string, integer, boolean or floating"):
        as_batch(pd.DataFrame({"t": pd.to_datetime(["2024-01-01", "2024-01-02"])}))
    with pytest.raises(ValueError, match="cannot convert the DataFrame"):
        as_batch(pd.DataFrame({"m": ["a", 1.5]}))
    with pytest.raises(ValueError, match="without columns"):
        as_batch(pd.DataFrame(index=range(3)))
    with pytest.raises(ValueError, match="must be 2-D.*pandas Series"):
        as_batch(pd.Series([1.0, 2.0]))
    with pytest.raises(ValueError, match="hash bits must be between 1 and 31"):
        as_batch(pd.DataFrame({"x": [1.0]}), hash_bits=40)
    with pytest.raises(ValueError, match="float_columns must be 'value' or 'bucket'"):
        as_batch(pd.DataFrame({"x": [1.0]}), float_columns="nope")


# ---------------------------------------------------------------------------
# schemas: fit, then predict


def test_schema_round_trip():
    _, schema = as_batch(pandas_frame(), fields=["slot", "city"])
    m = schema.to_map()
    assert m["layout"] == "wide" and m["feature_names"] == list(pandas_frame().columns)
    import json

    again = FrameSchema.from_map(json.loads(json.dumps(m)))   # as stored in a model header
    assert again == schema
    assert again.to_map() == m
    with pytest.raises(ValueError, match="not a wide-column input map"):
        FrameSchema.from_map({"layout": "ids"})


def test_predict_frame_matched_by_name():
    frame = pandas_frame()
    fitted, schema = as_batch(frame, LABELS)
    reordered = frame[list(reversed(frame.columns))]
    batch, same_schema = as_batch(reordered, LABELS, schema=schema)
    assert same_schema is schema
    same_batch(batch, fitted)
    # a polars frame of the same columns reads the same by the pandas schema
    batch, _ = as_batch(polars_frame(), LABELS, schema=schema)
    same_batch(batch, fitted)


def test_predict_frame_missing_extra_or_retyped_column():
    frame = pandas_frame()
    _, schema = as_batch(frame)
    with pytest.raises(ValueError, match="lacks column 'price'"):
        as_batch(frame.drop(columns="price"), schema=schema)
    with pytest.raises(ValueError, match="has column 'more' not in"):
        as_batch(frame.assign(more=1.0), schema=schema)
    with pytest.raises(ValueError, match="column 'slot' is double \\(numeric\\) here but categorical"):
        as_batch(frame.assign(slot=frame["slot"].astype(float)), schema=schema)
    # chosen fields: other columns are not read
    _, schema = as_batch(frame, fields=["city", "price"])
    batch, _ = as_batch(frame.drop(columns="slot").assign(more=1.0), schema=schema)
    want, _ = as_batch(frame, fields=["city", "price"])
    same_batch(batch, want)


def test_predict_schema_settings_win():
    frame = pandas_frame()
    fitted, schema = as_batch(frame, hash_bits=8, float_columns="bucket")
    batch, _ = as_batch(frame, schema=schema)          # no hash_bits given: the schema's
    same_batch(batch, fitted)


def test_predict_array_by_a_frame_schema():
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"a": [0.5, 0.0, 2.0], "b": [1, 2, 3]})
    fitted, schema = as_batch(frame)
    batch, _ = as_batch(frame.to_numpy(), schema=schema)     # columns by position
    same_batch(batch, fitted)
    with pytest.raises(ValueError, match="X has 1 columns but the model was fitted on a DataFrame with 2"):
        as_batch(np.ones((2, 1)), schema=schema)
    with pytest.raises(ValueError, match="sparse matrix"):
        as_batch(sp.csr_matrix(np.ones((2, 2))), schema=schema)


def test_frame_through_parquet_file_matches_schema(tmp_path):
    """A Parquet file of the frame's columns, read by the frame's schema as
    fm predict reads it, gives the frame's batch."""
    from fmcli.data.parquet import ParquetReader

    frame = pandas_frame()
    fitted, schema = as_batch(frame, LABELS)
    reordered = pa.Table.from_pandas(frame[list(reversed(frame.columns))], preserve_index=False)
    path = tmp_path / "score.parquet"
    pq.write_table(reordered.append_column("label", pa.array(LABELS)), path)
    m = schema.to_map()
    reader = ParquetReader(path, label_mode="real", hash_bits=m["hash_bits"],
                           float_columns=m["float_columns"], match=m, label_column=m["label_column"])
    same_batch(reader.read_all(), fitted)


def test_pyarrow_table_is_a_frame():
    frame = pandas_frame()
    a, _ = as_batch(frame)
    b, _ = as_batch(pa.Table.from_pandas(frame, preserve_index=False))
    same_batch(a, b)
