"""Wide Parquet is read by column name: the model file keeps the column map
(header key "input", format 1.2) and scoring, warm starts and validation
match new files against it; data of the other layout (feature ids against
wide columns) is refused unless asked."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from fmcli.cli import cli  # noqa: E402
from fmcli.data.parquet import ParquetReader  # noqa: E402
from fmcli.model import load_model  # noqa: E402
from fmcli.modelfile import FORMAT_MAJOR, FORMAT_MINOR, read_header  # noqa: E402
from fmcli.predict import Scorer  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
N = 600


def run(args, cwd):
    runner = CliRunner()
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)
    finally:
        os.chdir(old)


def one_error_line(result, code=65):
    assert result.exit_code == code, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("fm: error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def scores_of(text: str) -> np.ndarray:
    return np.array([float(x) for x in text.split()])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Wide files with a learnable signal, a model trained on them (FFM: the
    field of each column matters), and a text model."""
    d = tmp_path_factory.mktemp("wide")
    rng = np.random.default_rng(7)
    a, b = rng.integers(0, 6, N), rng.integers(0, 6, N)
    x = rng.normal(size=N)
    logit = 1.5 * (a - 2.5) * (b == 2) - 1.2 * (b - 2.5) * (a == 1) + x
    y = (rng.random(N) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    table = pa.table({"label": y, "colour": [f"c{v}" for v in a], "size": b, "score": x})
    pq.write_table(table, d / "train.parquet")
    pq.write_table(table.select(["score", "size", "label", "colour"]), d / "reordered.parquet")
    pq.write_table(table.select(["label", "colour", "score"]), d / "missing.parquet")
    pq.write_table(table.append_column("extra", pa.array(rng.integers(0, 3, N))), d / "extra.parquet")
    retyped = table.set_column(3, "score", pa.array([f"{v:.1f}" for v in x]))
    pq.write_table(retyped, d / "retyped.parquet")
    with open(d / "train.ffm", "w") as f:
        for i in range(N):
            f.write(f"{y[i]} 0:{a[i]}:1 1:{6 + b[i]}:1 2:12:{x[i]:.4f}\n")
    common = ["--model", "ffm", "-t", "4", "--hash-bits", "12", "-s", "1", "-q", "--no-cache"]
    r = run(["train", *common, "train.parquet", "-o", "wide.fm"], d)
    assert r.exit_code == 0, r.output
    r = run(["train", "--model", "ffm", "-t", "2", "-q", "--no-cache", "train.ffm", "-o", "text.fm"], d)
    assert r.exit_code == 0, r.output
    return d


def predict_ok(d, *args):
    r = run(["predict", "-q", *args], d)
    assert r.exit_code == 0, r.output
    return scores_of(r.stdout), r.stderr


def test_model_header_keeps_the_column_map(data):
    header = read_header(data / "wide.fm")
    assert header["format"] == f"{FORMAT_MAJOR}.{FORMAT_MINOR}" == "1.3"
    assert header["input"] == {
        "layout": "wide", "columns": ["colour", "size", "score"],
        "kinds": ["categorical", "categorical", "numeric"], "all_columns": True, "hash_bits": 12,
        "float_columns": "value", "label_column": "label", "weight_column": None}
    assert read_header(data / "text.fm")["input"] == {"layout": "ids"}


def test_a_same_file_scores_as_read_by_position(data):
    """(a) the training file: the scores the positional reader gives."""
    got, err = predict_ok(data, "wide.fm", "train.parquet")
    model = load_model(data / "wide.fm")
    batch = ParquetReader(data / "train.parquet", label_mode="real", hash_bits=12).read_all()
    expected = 1 / (1 + np.exp(-Scorer(model).scores(batch)))
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-6)
    assert err == ""


def test_b_reordered_columns_score_identically(data):
    same, _ = predict_ok(data, "wide.fm", "train.parquet")
    reordered, err = predict_ok(data, "wide.fm", "reordered.parquet")
    np.testing.assert_array_equal(same, reordered)
    assert err == ""
    # the Python API as well, and an absolute path
    from fmcli.predict import predict

    model = load_model(data / "wide.fm")
    np.testing.assert_array_equal(predict(model, str(data / "reordered.parquet")),
                                  predict(model, str(data / "train.parquet")))


def test_c_a_missing_column_is_an_error_or_with_the_flag_a_warning(data, tmp_path):
    line = one_error_line(run(["predict", "wide.fm", "missing.parquet", "-o", tmp_path / "p.txt"], data))
    assert "missing.parquet" in line and "'size'" in line and "--allow-column-mismatch" in line
    assert not (tmp_path / "p.txt").exists()
    got, err = predict_ok(data, "wide.fm", "missing.parquet", "--allow-column-mismatch")
    assert "fm: warning: missing.parquet" in err and "'size'" in err and "absent" in err
    assert got.shape == (N,)
    # the column scored as absent: as a file whose column is all null
    table = pq.read_table(data / "train.parquet")
    nulls = table.set_column(2, "size", pa.nulls(N, pa.int64()))
    pq.write_table(nulls, tmp_path / "nulls.parquet")
    r = run(["predict", "-q", data / "wide.fm", "nulls.parquet"], tmp_path)
    np.testing.assert_array_equal(got, scores_of(r.stdout))


def test_d_an_extra_column_is_an_error_or_with_the_flag_a_warning(data):
    line = one_error_line(run(["predict", "wide.fm", "extra.parquet"], data))
    assert "extra.parquet" in line and "'extra'" in line
    got, err = predict_ok(data, "wide.fm", "extra.parquet", "--allow-column-mismatch")
    assert "fm: warning: extra.parquet" in err and "'extra'" in err and "ignored" in err
    np.testing.assert_array_equal(got, predict_ok(data, "wide.fm", "train.parquet")[0])


def test_a_column_of_another_kind_is_an_error(data):
    line = one_error_line(run(["predict", "wide.fm", "retyped.parquet"], data))
    assert "retyped.parquet" in line and "'score'" in line and "numeric" in line


def test_e_text_with_a_wide_model_is_refused_unless_asked(data, tmp_path):
    line = one_error_line(run(["predict", "wide.fm", "train.ffm"], data))
    assert "train.ffm" in line and "wide Parquet" in line and "--input-schema any" in line
    # sparse Parquet carries feature ids too
    r = run(["convert", "train.ffm", "-o", tmp_path / "sparse.parquet"], data)
    assert r.exit_code == 0, r.output
    line = one_error_line(run(["predict", data / "wide.fm", "sparse.parquet"], tmp_path))
    assert "sparse.parquet" in line and "sparse Parquet" in line
    got, _ = predict_ok(data, "wide.fm", "train.ffm", "--input-schema", "any")
    assert got.shape == (N,)


def test_f_wide_parquet_with_a_text_model_is_refused_unless_asked(data, tmp_path):
    line = one_error_line(run(["predict", "text.fm", "train.parquet"], data))
    assert "train.parquet" in line and "feature ids" in line
    predict_ok(data, "text.fm", "train.parquet", "--input-schema", "any")
    # sparse Parquet with a text model is the same layout
    run(["convert", "train.ffm", "-o", tmp_path / "sparse.parquet"], data)
    text, _ = predict_ok(data, "text.fm", "train.ffm")
    sparse, _ = predict_ok(data, "text.fm", tmp_path / "sparse.parquet")
    np.testing.assert_array_equal(text, sparse)


def test_g_inspect_shows_the_columns(data):
    r = run(["inspect", "wide.fm", "--json"], data)
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["input"]["columns"] == ["colour", "size", "score"]
    assert doc["input"]["hash_bits"] == 12 and doc["header"]["input"] == doc["input"]
    r = run(["inspect", "wide.fm"], data)
    assert "colour (categorical), size (categorical), score (numeric)" in r.stdout
    assert "hash bits 12" in r.stdout


def test_h_old_models_still_load_and_score(data, tmp_path):
    # a frozen format 1.0 model scores its text file as it always did
    r = run(["predict", "-q", FIXTURES / "v1-ffm.fm", FIXTURES / "valid40.ffm"], tmp_path)
    assert r.exit_code == 0, r.output
    expected = np.loadtxt(FIXTURES / "v1-ffm.expected.txt")
    np.testing.assert_allclose(scores_of(r.stdout), expected, rtol=1e-5)
    assert r.stderr == ""
    # and wide Parquet, by position, with a warning
    r = run(["predict", "-q", FIXTURES / "v1-ffm.fm", data / "train.parquet"], tmp_path)
    assert r.exit_code == 0, r.output
    assert "no column map" in r.stderr and "by position" in r.stderr
    # a wide model without the map (as written before 1.2) reads by position as before
    model = load_model(data / "wide.fm", mmap=False)
    del model.meta["input"]
    model.save(tmp_path / "old.fm")
    same, _ = predict_ok(data, "wide.fm", "train.parquet")
    old, err = predict_ok(tmp_path, "old.fm", data / "train.parquet")
    np.testing.assert_array_equal(same, old)
    assert "by position" in err


def test_validation_and_later_training_files_are_matched_by_name(data, tmp_path):
    common = ["--model", "ffm", "-t", "2", "--hash-bits", "12", "-s", "1", "--no-cache"]
    r = run(["train", *common, data / "train.parquet", "-p", data / "reordered.parquet",
             "-o", "a.fm"], tmp_path)
    assert r.exit_code == 0, r.output
    r2 = run(["train", *common, data / "train.parquet", "-p", data / "train.parquet", "-o", "b.fm"],
             tmp_path)
    assert r2.exit_code == 0, r2.output
    metrics = read_header(tmp_path / "a.fm")["training"]["valid_metrics"]
    assert metrics["auc"] > 0.7
    assert metrics == read_header(tmp_path / "b.fm")["training"]["valid_metrics"]
    line = one_error_line(run(["train", *common, "-q", data / "train.parquet", "-p", data / "extra.parquet",
                               "-o", "c.fm"], tmp_path))
    assert "extra.parquet" in line and "'extra'" in line
    assert not (tmp_path / "c.fm").exists()
    line = one_error_line(run(["train", *common, "-q", data / "train.parquet", data / "train.ffm",
                               "-o", "d.fm"], tmp_path))
    assert "train.ffm" in line


def test_warm_start_follows_the_parent_columns(data, tmp_path):
    common = ["--model", "ffm", "-t", "1", "-s", "1", "-q", "--no-cache"]
    r = run(["train", *common, "--hash-bits", "12", "--init-model", data / "wide.fm",
             data / "reordered.parquet", "-o", "warm.fm"], tmp_path)
    assert r.exit_code == 0, r.output
    assert read_header(tmp_path / "warm.fm")["input"]["columns"] == ["colour", "size", "score"]
    line = one_error_line(run(["train", *common, "--hash-bits", "12", "--init-model", data / "wide.fm",
                               data / "missing.parquet", "-o", "x.fm"], tmp_path))
    assert "missing.parquet" in line and "'size'" in line
    line = one_error_line(run(["train", *common, "--init-model", data / "wide.fm",
                               data / "train.parquet", "-o", "x.fm"], tmp_path), code=78)
    assert "--hash-bits 12" in line
    line = one_error_line(run(["train", *common, "--init-model", data / "text.fm",
                               data / "train.parquet", "-o", "x.fm"], tmp_path))
    assert "train.parquet" in line and "text.fm" in line
    assert not (tmp_path / "x.fm").exists()
