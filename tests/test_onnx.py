"""fm convert MODEL --to onnx: the exported graph, run by onnxruntime, scores
rows as fm predict does (every model kind and task, padding, unseen ids, id
maps, float16 and int8 files, the frozen fixture models), carries the
model's description, splits large weights into external data, and is
written atomically without touching the model file."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from fmcli import onnx_export  # noqa: E402
from fmcli.data.batch import Batch  # noqa: E402
from fmcli.model import Model, ModelSpec, load_model  # noqa: E402
from fmcli.predict import Scorer, predict, to_predictions  # noqa: E402
from fmcli.registry import MODELS  # noqa: E402
from clirun import invoke, ok  # noqa: E402
from synthdata import write_synth  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
TASKS = ("binary", "regression", "multiclass")
MAIN_OUTPUT = {"binary": "probabilities", "multiclass": "probabilities", "regression": "predictions"}
TOL = 1e-5


# ---------------------------------------------------------------------------
# helpers: models, rows, padded tensors, running a graph


def random_model(kind: str, task: str, *, n: int = 40, m: int = 4, k: int = 3, classes: int = 3,
                 use_bias: bool = True, use_linear: bool = True, normalize: bool = True,
                 seed: int = 0) -> Model:
    """A model with random parameters; FwFM's and FmFM's full (m, m) arrays
    are random on both triangles, so reading the wrong one shows."""
    multi = task == "multiclass"
    spec = ModelSpec(kind=kind, task=task, k=k, n_features=n, n_fields=m, use_bias=use_bias,
                     use_linear=use_linear, normalize=normalize, n_classes=classes if multi else 1,
                     classes=tuple(f"c{i}" for i in range(classes)) if multi else None)
    rng = np.random.default_rng(seed)
    params = {name: rng.normal(0, 0.5, shape).astype(np.float32) for name, shape in spec.shapes().items()}
    return Model(spec=spec, params=params)


def random_rows(n: int, m: int, seed: int = 1, rows: int = 40) -> list[list[tuple[int, int, float]]]:
    """Rows of 0..9 entries (an empty row too) with ids a little beyond the
    model's features and fields (unseen ones), and repeated features."""
    rng = np.random.default_rng(seed)
    out = [[]]
    for _ in range(rows):
        size = int(rng.integers(1, 10))
        out.append([(int(rng.integers(0, m + 1)), int(rng.integers(0, n + 5)),
                     float(rng.choice([1.0, rng.uniform(0.1, 2.0), -rng.uniform(0.1, 1.0)])))
                    for _ in range(size)])
    out.append([(0, 3, 1.0), (1, 3, 0.5)])     # one feature twice
    return out


def to_batch(rows) -> Batch:
    indptr = np.cumsum([0] + [len(r) for r in rows]).astype(np.int64)
    entries = [e for r in rows for e in r]
    return Batch(np.zeros(len(rows), np.float32), indptr,
                 np.array([e[0] for e in entries], np.int32), np.array([e[1] for e in entries], np.int32),
                 np.array([e[2] for e in entries], np.float32))


def padded(rows, width: int | None = None) -> dict[str, np.ndarray]:
    """The graph's inputs: padding is feature -1, field 0, value 0."""
    width = width or max(1, max(len(r) for r in rows))
    fields = np.zeros((len(rows), width), np.int64)
    features = np.full((len(rows), width), -1, np.int64)
    values = np.zeros((len(rows), width), np.float32)
    for i, row in enumerate(rows):
        for t, (f, j, v) in enumerate(row):
            fields[i, t], features[i, t], values[i, t] = f, j, v
    return {"fields": fields, "features": features, "values": values}


def run(graph, rows, width: int | None = None) -> dict[str, np.ndarray]:
    """Outputs by name of a graph (a ModelProto, or a path) on `rows`."""
    source = graph if isinstance(graph, (str, Path)) else graph.SerializeToString()
    session = ort.InferenceSession(str(source) if isinstance(source, Path) else source,
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, padded(rows, width))))


def fm_predict(model: Model, rows) -> tuple[np.ndarray, np.ndarray]:
    """(predictions, raw scores) of fmcli's own scorer (id map included)."""
    batch = to_batch(rows)
    scores = Scorer(model).scores(batch if model.id_map() is None else
                                  Batch(batch.labels, batch.indptr, batch.fields,
                                        model.id_map().lookup(batch.features), batch.values))
    return to_predictions(model.spec.task, scores), scores


def assert_parity(graph, model: Model, rows, width: int | None = None) -> None:
    want, scores = fm_predict(model, rows)
    got = run(graph, rows, width)
    main = MAIN_OUTPUT[model.spec.task]
    assert set(got) == {main, "scores"}
    assert got[main].shape == want.shape and got[main].dtype == np.float32
    np.testing.assert_allclose(got[main], want, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(got["scores"], scores, rtol=TOL, atol=TOL)


def read_rows(path: Path) -> list[list[tuple[int, int, float]]]:
    """libffm (field:feature:value) or libsvm (feature:value, field 0) rows."""
    rows = []
    for line in path.read_text().splitlines():
        row = []
        for token in line.split()[1:]:
            parts = token.split(":")
            if len(parts) == 2:
                parts = ["0"] + parts
            row.append((int(parts[0]), int(parts[1]), float(parts[2])))
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------
# parity with fm predict


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("kind", MODELS)
def test_every_kind_and_task_scores_as_fm_predict(kind, task, tmp_path):
    model = random_model(kind, task)
    path = tmp_path / "m.fm"
    model.save(path)
    model = load_model(path)
    out = tmp_path / "m.onnx"
    result = onnx_export.export_onnx(model, out)
    assert result.outputs == [str(out)] and result.data_path is None
    onnx.checker.check_model(str(out), full_check=True)
    rows = random_rows(40, 4)
    assert_parity(out, model, rows)
    # more padding than any row needs changes nothing
    assert_parity(out, model, rows, width=14)


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("flags", [dict(use_bias=False, use_linear=False, normalize=False),
                                   dict(use_bias=True, use_linear=False, normalize=True),
                                   dict(use_bias=False, use_linear=True, normalize=False)])
def test_without_bias_linear_or_normalization(kind, flags):
    model = random_model(kind, "binary", seed=3, **flags)
    assert_parity(onnx_export.to_onnx(model), model, random_rows(40, 4, seed=4))


def test_padding_and_unseen_ids_add_nothing():
    model = random_model("ffm", "binary")
    graph = onnx_export.to_onnx(model)
    row = [(0, 1, 1.0), (2, 7, 0.5)]
    base = run(graph, [row])["scores"]
    # padding (value 0, any ids, negative ones too) leaves the score as it was
    for pad in [(0, -1, 0.0), (3, 5, 0.0), (-4, -9, 0.0), (99, 10**12, 0.0)]:
        np.testing.assert_allclose(run(graph, [row + [pad] * 3])["scores"], base, rtol=1e-6)
    # an unseen feature (or an FFM field outside the model) adds no term, but
    # its value counts in the row's normalization, as in fm predict
    for unseen in [(1, 40, 1.0), (1, 10**9, 1.0), (4, 2, 1.0), (7, 45, 1.0)]:
        assert_parity(graph, model, [row, row + [unseen]])
    # negative ids (which fmcli's readers never produce) are unseen ones too
    beyond = run(graph, [row + [(1, 40, 1.0)]])["scores"]
    for negative in [(1, -3, 1.0), (-1, 2, 1.0), (-2, -2, 1.0)]:
        np.testing.assert_allclose(run(graph, [row + [negative]])["scores"], beyond, rtol=1e-6)
    # an empty row scores the bias alone
    np.testing.assert_allclose(run(graph, [[]], width=3)["scores"], model.params["bias"], rtol=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "int8"])
@pytest.mark.parametrize("kind", ["ffm", "fmfm"])
def test_float16_and_int8_files_export_as_float32(kind, dtype, tmp_path):
    path = tmp_path / "half.fm"
    random_model(kind, "binary").save(path, dtype=dtype)
    model = load_model(path)
    assert model.stored_dtype == dtype
    graph = onnx_export.to_onnx(model)
    assert {t.data_type for t in graph.graph.initializer if t.name in ("factors", "pairs", "linear")} \
        == {onnx.TensorProto.FLOAT}
    assert_parity(graph, model, random_rows(40, 4))


@pytest.mark.parametrize("kind,layout", [("fm", "spread"), ("ffm", "spread"), ("fwfm", "spread"),
                                         ("lr", "clustered"), ("ffm", "dense"), ("lr", "dense")])
def test_id_map_is_applied_in_the_graph(kind, layout):
    model = random_model(kind, "binary", n=30)
    rng = np.random.default_rng(5)
    if layout == "spread":      # hashed ids over a large space: a few per bucket of the search
        ids = rng.choice(10**7, 30, replace=False)
    elif layout == "clustered":     # all but one id in one bucket: a longer search
        ids = np.concatenate([10**6 + 3 * np.arange(29), [9 * 10**6]])
    else:                       # a small space: a table of every id's slot
        ids = rng.choice(10**5, 30, replace=False)
    graph_tables = {"spread": "id_map_buckets", "clustered": "id_map_buckets", "dense": "id_map_dense"}
    ids = rng.permutation(ids)
    model.feature_ids = ids.astype(np.int64)         # slots not in id order
    # known ids, ids between them, below and beyond them
    rows = [[(f, int(ids[j % 30]) if j % 4 else int(ids[j % 30]) + 1 if j % 3 else j * 1001 + j % 2 * 10**7,
              v) for f, j, v in r] for r in random_rows(30, 4, seed=6)]
    graph = onnx_export.to_onnx(model)
    assert graph_tables[layout] in {t.name for t in graph.graph.initializer}
    assert_parity(graph, model, rows)
    assert {p.key: p.value for p in graph.metadata_props}["fmcli.id_map"] == "true"


FROZEN = [("v1-lr.fm", "valid40.svm"), ("v1-fm.fm", "valid40.svm"), ("v1-ffm.fm", "valid40.ffm"),
          ("v1-ffm-libffm.fm", "valid40.ffm"), ("v1.3-fwfm.fm", "valid40.ffm"),
          ("v1.4-fmfm.fm", "valid40.ffm")]


@pytest.mark.parametrize("name,data", FROZEN)
def test_frozen_fixture_models(name, data, tmp_path):
    model = load_model(FIXTURES / name)
    out = tmp_path / "m.onnx"
    ok(invoke("convert", FIXTURES / name, "-o", out, "-q"))
    onnx.checker.check_model(str(out), full_check=True)
    rows = read_rows(FIXTURES / data)
    got = run(out, rows)["probabilities"]
    np.testing.assert_allclose(got, predict(model, FIXTURES / data), rtol=TOL, atol=TOL)
    expected = np.loadtxt(FIXTURES / name.replace(".fm", ".expected.txt"))
    np.testing.assert_allclose(got, expected, rtol=TOL, atol=TOL)


@pytest.mark.parametrize("kind,task", [("lr", "binary"), ("fm", "multiclass"), ("ffm", "binary"),
                                       ("fwfm", "regression"), ("fmfm", "binary")])
def test_trained_models_match_fm_predict_output(kind, task, tmp_path):
    """End to end: fm train, fm convert --to onnx, and fm predict's printed
    predictions (6 significant digits) against the graph's."""
    write_synth(tmp_path, rows=300, seed=2, fields=5)
    data = tmp_path / "tr.ffm"
    model = tmp_path / "m.fm"
    ok(invoke("train", "--model", kind, "--task", task, "-k", 3, "-t", 2, data, "-o", model, "-q"))
    ok(invoke("convert", model, "--to", "onnx", "-o", tmp_path / "m.graph", "-q"))
    printed = ok(invoke("predict", model, data, "-q")).stdout
    want = np.array([[float(x) for x in line.split()] for line in printed.splitlines()])
    got = run(tmp_path / "m.graph", read_rows(data))[MAIN_OUTPUT[task]]
    np.testing.assert_allclose(got.reshape(want.shape[0], -1), want, rtol=2e-5, atol=1e-5)


# ---------------------------------------------------------------------------
# the file: metadata, size limit, atomic output, the command line


def test_metadata_describes_the_model(tmp_path):
    path = tmp_path / "m.fm"
    random_model("fwfm", "multiclass", k=5).save(path)
    out = tmp_path / "m.onnx"
    ok(invoke("convert", path, "-o", out, "-q"))
    graph = onnx.load(str(out))
    assert graph.producer_name == "fmcli"
    from fmcli import __version__

    assert graph.producer_version == __version__
    assert graph.opset_import[0].version == onnx_export.OPSET
    props = {p.key: p.value for p in graph.metadata_props}
    assert props["fmcli.model_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (props["fmcli.kind"], props["fmcli.task"], props["fmcli.k"], props["fmcli.n_fields"],
            props["fmcli.n_classes"]) == ("fwfm", "multiclass", "5", "4", "3")
    assert props["fmcli.classes"] == '["c0", "c1", "c2"]'
    assert [i.name for i in graph.graph.input] == ["fields", "features", "values"]
    dims = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.graph.input]
    assert dims == [["N", "L"]] * 3


def test_large_weights_go_to_external_data(tmp_path, monkeypatch):
    path = tmp_path / "m.fm"
    model = random_model("ffm", "binary", n=300, k=8)
    model.save(path)
    model = load_model(path)
    out = tmp_path / "m.onnx"
    # forced small threshold: every export of this model is "large"
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD", 1000)
    result = ok(invoke("convert", path, "-o", out))
    data = tmp_path / "m.onnx.data"
    assert data.is_file() and f"the weights are in {data}" in result.stderr
    assert out.stat().st_size < 20_000 < data.stat().st_size
    onnx.checker.check_model(str(out), full_check=True)
    graph = onnx.load(str(out), load_external_data=False)
    external = [t for t in graph.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert {t.name for t in external} == {"factors", "linear"}    # the small ones stay inline
    for t in external:
        entry = {e.key: e.value for e in t.external_data}
        assert entry["location"] == "m.onnx.data" and int(entry["offset"]) % 65536 == 0
    assert_parity(out, model, random_rows(300, 4))
    # under the threshold: one self-contained file
    small = onnx_export.export_onnx(model, tmp_path / "small.onnx", external_threshold=10**9)
    assert small.data_path is None and not (tmp_path / "small.onnx.data").exists()


def test_output_never_replaces_the_model_file(tmp_path):
    path = tmp_path / "m.fm"
    random_model("fm", "binary").save(path)
    before = path.read_bytes()
    result = invoke("convert", path, "--to", "onnx", "-o", path)
    assert result.exit_code == 2 and "input" in result.stderr
    # nor its data file: a model file named like the graph's external data
    twin = tmp_path / "g.onnx.data"
    twin.write_bytes(before)
    result = invoke("convert", twin, "--from", "fm", "-o", tmp_path / "g.onnx")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert path.read_bytes() == before == twin.read_bytes()
    assert not (tmp_path / "g.onnx").exists()
    with pytest.raises(Exception, match="model file"):
        onnx_export.export_onnx(load_model(path), path)
    assert path.read_bytes() == before
    # no temporary files are left next to the outputs
    ok(invoke("convert", path, "-o", tmp_path / "ok.onnx", "-q"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.onnx.data", "m.fm", "ok.onnx"]


def test_cli_format_from_name_and_errors(tmp_path):
    path = tmp_path / "m.fm"
    random_model("lr", "regression").save(path)
    result = ok(invoke("convert", path, "-o", tmp_path / "M.ONNX"))
    assert "wrote" in result.stderr and (tmp_path / "M.ONNX").is_file()
    # --dtype is for fmcli model files
    result = invoke("convert", path, "-o", tmp_path / "x.onnx", "--dtype", "float16")
    assert result.exit_code == 78 and "float32" in result.stderr
    # data cannot become a graph
    result = invoke("convert", FIXTURES / "valid40.ffm", "--to", "onnx", "-o", tmp_path / "d.onnx")
    assert result.exit_code == 2 and "model files" in result.stderr
    assert "onnx" in ok(invoke("convert", "--help")).stdout


def test_missing_extra_is_one_line(tmp_path, monkeypatch):
    path = tmp_path / "m.fm"
    random_model("fm", "binary").save(path)
    # hide the onnx package: importing it fails as it does where it is not installed
    monkeypatch.setitem(sys.modules, "onnx", None)
    result = invoke("convert", path, "-o", tmp_path / "m.onnx")
    assert result.exit_code == 69
    assert result.stderr == ("fm: error: --to onnx needs the onnx package: "
                             "pip install 'fm-ctr[onnx]'\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.fm"]
    # other model conversions do not need (nor try) the extra
    ok(invoke("convert", path, "-o", tmp_path / "half.fm", "--dtype", "float16", "-q"))
    with pytest.raises(onnx_export.ExtraMissingError):
        onnx_export.to_onnx(load_model(path))


def test_libffm_model_file_to_onnx(tmp_path):
    """libffm's own model files export too (read as fm convert --from libffm-model reads them)."""
    model = load_model(FIXTURES / "v1-ffm-libffm.fm")
    ok(invoke("convert", FIXTURES / "v1-ffm-libffm.fm", "--to", "libffm-model", "-o", tmp_path / "m.model", "-q"))
    ok(invoke("convert", tmp_path / "m.model", "--from", "libffm-model", "-o", tmp_path / "m.onnx", "-q"))
    got = run(tmp_path / "m.onnx", read_rows(FIXTURES / "valid40.ffm"))["probabilities"]
    np.testing.assert_allclose(got, predict(model, FIXTURES / "valid40.ffm"), rtol=TOL, atol=TOL)


@pytest.mark.parametrize("name", ["out.onnx", "out.fmi"])
def test_data_input_to_a_model_format_names_the_reason(tmp_path, name):
    data = tmp_path / "d.ffm"
    data.write_text("1 0:1:1 1:2:1\n0 0:3:1\n")
    r = invoke("convert", data, "-o", tmp_path / name)
    assert r.exit_code == 78
    assert "names a model format" in r.output and "fmcli model file" in r.output
    assert not (tmp_path / name).exists()
