"""fm inspect: model summaries, interaction and feature analyses, data statistics."""

import gzip
import io
import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from fmcli import Config
from fmcli import inspect as ins
from fmcli.cli import _render, cli
from fmcli.model import Model, ModelSpec, load_model
from fmcli.train import train

N_FIELDS, PER_FIELD = 5, 10
A, B = 3, PER_FIELD + 7          # the planted pair: value 3 of field 0, value 7 of field 1


def fm(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="fm")


def write_planted(path, n=4000, seed=0):
    """One-hot fields; the label is 1 exactly when features A and B occur together."""
    rng = np.random.default_rng(seed)
    vals = rng.integers(0, PER_FIELD, size=(n, N_FIELDS))
    vals[:, 0] = np.where(rng.random(n) < 0.5, A, vals[:, 0])
    vals[:, 1] = np.where(rng.random(n) < 0.5, B - PER_FIELD, vals[:, 1])
    ids = vals + np.arange(N_FIELDS) * PER_FIELD
    y = ((ids[:, 0] == A) & (ids[:, 1] == B)).astype(int)
    path.write_text("".join(f"{label} " + " ".join(f"{f}:{j}:1" for f, j in enumerate(row)) + "\n"
                            for label, row in zip(y, ids)))
    return path


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    d = tmp_path_factory.mktemp("planted")
    data = write_planted(d / "p.ffm")
    models = {}
    for kind in ("fm", "ffm", "fwfm"):
        path = d / f"{kind}.fm"
        train(Config(model=kind, k=4, epochs=5, seed=1, cache=False), str(data)).save(path)
        models[kind] = path
    return data, models


# -- the planted pair is found -----------------------------------------------------------------

@pytest.mark.parametrize("kind", ["fm", "ffm", "fwfm"])
def test_planted_pair_is_the_top_interaction(planted, kind):
    data, models = planted
    model = load_model(models[kind])
    sample = None if kind == "fm" else ins.read_sample(model, str(data))
    pairs = ins.top_interactions(model, 3, sample=sample)["pairs"]
    top = pairs[0]
    assert (top["a"]["feature"], top["b"]["feature"]) == (A, B)
    assert top["strength"] > 2 * pairs[1]["strength"]
    if kind != "fm":
        assert (top["a"]["field"], top["b"]["field"]) == (0, 1)


def test_planted_pair_from_the_command_line(planted):
    data, models = planted
    res = fm("inspect", "--json", "--top-interactions", "2", "--data", data, models["ffm"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    top = doc["top_interactions"]["pairs"][0]
    assert (top["a"]["name"], top["b"]["name"]) == (f"0:{A}", f"1:{B}")
    assert doc["sample"]["rows"] == 4000
    res = fm("inspect", "--top-interactions", "1", models["fm"])
    assert res.exit_code == 0, res.output
    line = res.stdout.splitlines()[-1].split()
    assert line[:3] == ["1", str(A), str(B)]


def test_fm_with_data_skips_pairs_of_one_hot_fields(planted):
    data, models = planted
    model = load_model(models["fm"])
    sample = ins.read_sample(model, str(data))
    for p in ins.top_interactions(model, 20, sample=sample)["pairs"]:
        assert p["a"]["feature"] // PER_FIELD != p["b"]["feature"] // PER_FIELD


def test_ffm_and_fwfm_need_fields(planted):
    _, models = planted
    for kind in ("ffm", "fwfm"):
        res = fm("inspect", "--top-interactions", "3", models[kind])
        assert res.exit_code == 2 and "--data" in res.stderr
    res = fm("inspect", "--field-pairs", models["ffm"])
    assert res.exit_code == 2 and "--data" in res.stderr
    assert fm("inspect", "--field-pairs", models["fwfm"]).exit_code == 0


# -- exactness against brute force ------------------------------------------------------------

def random_model(kind, n, m, k, classes=None, seed=0):
    rng = np.random.default_rng(seed)
    C = len(classes) if classes else 1
    spec = ModelSpec(kind=kind, task="multiclass" if classes else "binary", k=k, n_features=n, n_fields=m,
                     use_bias=True, use_linear=True, normalize=True, n_classes=C,
                     classes=tuple(classes) if classes else None)
    params = {}
    for name, shape in spec.shapes().items():
        a = rng.normal(0, 1, shape).astype(np.float32)
        if name == "field_weights":                           # symmetric, as training keeps them
            a = (a + np.swapaxes(a, -1, -2)) / 2
        if name in ("factors", "linear"):
            # norms spread over orders of magnitude, so that pruning matters
            scale = np.exp(rng.normal(0, 1.5, (C, n) if classes else (n,))).astype(np.float32)
            a *= scale.reshape(scale.shape + (1,) * (a.ndim - scale.ndim))
        params[name] = a
    return Model(spec=spec, params=params)


def random_rows(n_rows, n, m, seed, multi_valued=(), extra=0, drop=0.0):
    """libffm-like rows: one feature per field (two in `multi_valued` fields),
    a field left out with probability `drop`; `extra` ids beyond the model."""
    rng = np.random.default_rng(seed)
    from fmcli.data.batch import Batch
    rows = []
    for _ in range(n_rows):
        entries = []
        for f in range(m):
            if rng.random() < drop:
                continue
            for _ in range(2 if f in multi_valued else 1):
                entries.append((f, int(rng.integers(0, n + extra))))
        rows.append(entries)
    indptr = np.cumsum([0] + [len(r) for r in rows])
    flat = [e for r in rows for e in r]
    return rows, Batch(np.zeros(n_rows, np.float32), indptr.astype(np.int64),
                       np.array([f for f, _ in flat], np.int32), np.array([j for _, j in flat], np.int32),
                       np.ones(len(flat), np.float32))


def write_rows(path, rows):
    path.write_text("".join("1 " + " ".join(f"{f}:{j}:1" for f, j in r) + "\n" for r in rows))
    return path


def brute_top(model, units, allowed, n):
    """Every candidate pair of `units` ((feature, field) list) scored directly."""
    s = model.spec
    C = s.n_classes if s.task == "multiclass" else 1
    F = np.asarray(model.params["factors"], np.float64).reshape((C,) + s.factor_shape())
    feats = np.array([u[0] for u in units])
    flds = np.array([u[1] for u in units])
    if s.kind == "ffm":
        G = F[:, feats][:, :, flds]                          # [c, x, y] = w_{i_x, f_y}
        S = np.einsum("cxyk,cyxk->cxy", G, G)
    else:
        V = F[:, feats]
        S = np.einsum("cxk,cyk->cxy", V, V)
        if s.kind == "fwfm":
            R = np.asarray(model.params["field_weights"], np.float64).reshape(C, s.n_fields, s.n_fields)
            S = S * R[:, flds][:, :, flds]
    S = np.abs(S).max(axis=0)
    ok = np.triu(np.ones(S.shape, bool), 1)
    ok &= np.array([[allowed(u, v) for v in units] for u in units])
    return np.sort(S[ok])[::-1][:n]


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks small enough that the test models span many of them."""
    monkeypatch.setattr(ins, "_ROW_BLOCK", 16)
    monkeypatch.setattr(ins, "_COL_BLOCK", 64)


@pytest.mark.parametrize("classes", [None, ["x", "y", "z"]])
def test_fm_top_interactions_are_exact(classes, small_blocks):
    n = 700
    model = random_model("fm", n, 1, 3, classes, seed=1)
    got = ins.top_interactions(model, 25)
    assert got["candidates"] == n
    C = len(classes) if classes else 1
    F = np.asarray(model.params["factors"], np.float64).reshape(C, n, 3)
    S = np.abs(np.einsum("cik,cjk->cij", F, F)).max(axis=0)
    S[np.tril_indices(n)] = -1
    want = np.sort(S.reshape(-1))[::-1][:25]
    np.testing.assert_allclose([p["strength"] for p in got["pairs"]], want, rtol=1e-9)
    assert got["pairs_scored"] < n * (n - 1) // 2      # Cauchy-Schwarz pruned some blocks
    i, j = np.unravel_index(np.argmax(S), S.shape)
    assert {got["pairs"][0]["a"]["feature"], got["pairs"][0]["b"]["feature"]} == {int(i), int(j)}


@pytest.mark.parametrize("kind", ["ffm", "fwfm"])
@pytest.mark.parametrize("classes", [None, ["a", "b"]])
def test_fielded_top_interactions_are_exact(tmp_path, kind, classes, small_blocks):
    n, m = 150, 4
    model = random_model(kind, n, m, 4, classes, seed=2)
    rows, _ = random_rows(400, n, m, seed=3, multi_valued=(2,), extra=5)
    sample = ins.read_sample(model, str(write_rows(tmp_path / "s.ffm", rows)))
    assert sample.ignored > 0          # ids beyond the model are left out
    units = sorted({(j, f) for r in rows for f, j in r if j < n})
    got = ins.top_interactions(model, 30, sample=sample)
    assert got["candidates"] == len(units)
    want = brute_top(model, units, lambda u, v: u[1] != v[1] or u[1] == 2, 30)
    np.testing.assert_allclose([p["strength"] for p in got["pairs"]], want, rtol=1e-9)


def test_row_pairs_cover_every_pair_once():
    indptr = np.array([0, 3, 3, 4, 40, 42], np.int64)
    want = {(s + p, s + q) for s, e in zip(indptr[:-1], indptr[1:]) for p in range(e - s) for q in range(p + 1, e - s)}
    for limit in (1, 7, 1000):
        got = [(int(p), int(q)) for P, Q in ins._row_pairs(indptr, limit) for p, q in zip(P, Q)]
        assert len(got) == len(want) and set(got) == want


# -- field pairs and features ----------------------------------------------------------------

def test_field_pairs_fwfm_are_the_pair_weights():
    model = random_model("fwfm", 50, 4, 3, seed=4)
    got = ins.field_pairs(model)
    np.testing.assert_allclose(got["matrix"], np.abs(model.params["field_weights"]), rtol=1e-6)
    assert got["fields"] == [0, 1, 2, 3]


@pytest.mark.parametrize("kind", ["ffm", "fm"])
@pytest.mark.parametrize("drop, layouts", [(0.0, 8), (0.05, 1), (0.3, 1)])
def test_field_pairs_from_co_occurring_pairs(tmp_path, monkeypatch, kind, drop, layouts):
    # rows with one sequence of fields are scored by rows, the others pair by pair
    monkeypatch.setattr(ins, "_LAYOUTS", layouts)
    n, m = 60, 3
    model = random_model(kind, n, m, 3, seed=5)
    rows, _ = random_rows(200, n + 2, m, seed=6, multi_valued=(1,), drop=drop)
    path = write_rows(tmp_path / "s.ffm", rows)
    got = ins.field_pairs(model, sample=ins.read_sample(model, str(path), pairs=True))
    F = np.asarray(model.params["factors"], np.float64)
    sums, counts = np.zeros((m, m)), np.zeros((m, m))
    for r in rows:
        for x in range(len(r)):
            for y in range(x + 1, len(r)):
                (a, i), (b, j) = r[x], r[y]
                if i >= n or j >= n:
                    continue
                v = abs(F[i, b] @ F[j, a]) if kind == "ffm" else abs(F[i] @ F[j])
                for p, q in {(a, b), (b, a)}:
                    sums[p, q] += v
                    counts[p, q] += 1
    want = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    np.testing.assert_allclose(np.array(got["matrix"], dtype=float), want, rtol=1e-6)
    assert got["pairs"][1][1] == counts[1, 1] > 0 and got["pairs"][0][0] == 0


def test_top_features_score():
    model = random_model("ffm", 80, 3, 2, seed=7)
    got = ins.top_features(model, 5)
    w = model.params["linear"].astype(np.float64)
    F = model.params["factors"].astype(np.float64)
    score = np.abs(w) + np.sqrt((F ** 2).sum(axis=(1, 2)))
    assert [f["feature"] for f in got["features"]] == np.argsort(-score)[:5].tolist()
    np.testing.assert_allclose([f["score"] for f in got["features"]], np.sort(score)[::-1][:5], rtol=1e-6)
    assert got["features"][0]["linear"] == pytest.approx(float(w[got["features"][0]["feature"]]))


def test_features_never_trained_are_left_out(tmp_path):
    # ids 0..49 occur; 100..199 exist only because id 199 does once, in field 1 of one row
    rng = np.random.default_rng(0)
    lines = [f"{rng.integers(0, 2)} 0:{rng.integers(0, 50)}:1 1:{50 + rng.integers(0, 50)}:1" for _ in range(300)]
    lines.append("1 0:1:1 1:199:1")
    (tmp_path / "t.ffm").write_text("\n".join(lines) + "\n")
    train(Config(model="fm", k=2, epochs=1, cache=False), str(tmp_path / "t.ffm")).save(tmp_path / "m.fm")
    model = load_model(tmp_path / "m.fm")
    got = ins.top_features(model, 500)
    assert {f["feature"] for f in got["features"]} == set(range(100)) | {199}
    assert "training updated" in got["candidates_are"]
    assert ins.top_interactions(model, 3)["candidates"] == 101


# -- names from a preprocessing spec ---------------------------------------------------------

def spec_model(tmp_path, keep_all=False):
    """An FFM model over a hashed space with fm convert's spec of three columns."""
    criteo = pytest.importorskip("fmcli.data.criteo")
    spec = criteo.Spec.csv(["label", "site", "hour", "price"], "label", ["site", "hour"], ["price"],
                           hash_space=997)
    for c in spec.columns:
        if c.type == "categorical" and not (keep_all and c.name == "hour"):
            values = ["a.com", "b.com", "c.com"] if c.name == "site" else ["7", "8"]
            c.kept = np.sort(np.array([criteo.token_hash(c.name, v) for v in values], np.uint64))
    header, arrays = spec.to_header()
    model = random_model("ffm", 997, 3, 2, seed=8)
    model.meta["spec"] = header
    model.extras = arrays
    model.save(tmp_path / "m.fm")
    return tmp_path / "m.fm", criteo


def test_spec_names_and_field_map(tmp_path):
    path, criteo = spec_model(tmp_path)
    res = fm("inspect", "--json", "--top-interactions", "40", "--field-pairs", path)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["spec"]["kind"] == "csv"
    assert doc["memory"]["spec_bytes"] == 5 * 8
    assert doc["n_parameters"] == load_model(path).n_parameters
    # every (feature, field) the spec can produce, checked by brute force over them
    model = load_model(path)
    names = ins.Names(model.meta["spec"], None, model.extras)
    units = sorted(zip(names.map_feature.tolist(), names.map_field.tolist()))
    site = [int(criteo.token_hash("site", v) % 997) for v in ("a.com", "b.com", "c.com", "", "<rare>")]
    assert {j for j, f in units if f == 0} == set(site)
    want = brute_top(model, units, lambda u, v: u[1] != v[1], 40)
    pairs = doc["top_interactions"]["pairs"]
    np.testing.assert_allclose([p["strength"] for p in pairs], want, rtol=1e-9)
    assert doc["top_interactions"]["candidates"] == len(units)
    shown = {p["a"]["name"] for p in pairs} | {p["b"]["name"] for p in pairs}
    assert any(n.startswith("price=b") or n.startswith("price=v") for n in shown)
    assert all(n.split("=")[0].split(":")[0] in ("site", "hour", "price") for n in shown)
    assert names.feature(site[4], 0) == "site=<rare>" and names.feature(site[0], 0) == f"site:{site[0]}"
    fp = doc["field_pairs"]
    assert fp["field_names"] == ["site", "hour", "price"] and fp["matrix"][0][0] is None
    F = model.params["factors"].astype(np.float64)
    hours = [j for j, f in units if f == 1]
    want = np.mean([abs(F[i, 1] @ F[j, 0]) for i in site for j in hours])
    assert fp["matrix"][0][1] == pytest.approx(want) and fp["pairs"][0][1] == len(site) * len(hours)
    assert "csv, 3 fields (site, hour, price)" in fm("inspect", path).stdout


def test_spec_without_vocabulary_needs_data(tmp_path):
    path, _ = spec_model(tmp_path, keep_all=True)
    res = fm("inspect", "--top-interactions", "3", path)
    assert res.exit_code == 2 and "column hour keeps every value" in res.stderr


def test_simple_spec_shapes():
    names = ins.Names({"columns": ["site", {"name": "hour", "field": 1}], "feature_fields": {"4": 1, "2": 0},
                       "feature_names": {"4": "hour=7"}}, None)
    assert names.field(1) == "hour" and names.feature(4) == "hour=7" and names.feature(9, 0) == "site:9"
    assert sorted(zip(names.map_feature.tolist(), names.map_field.tolist())) == [(2, 0), (4, 1)]
    names = ins.Names({"columns": "not a list", "feature_fields": 7}, {"columns": "a,b"})
    assert not names.has_field_map and names.field(1) == "b" and names.feature(5, 2) == "2:5"


# -- the summary --------------------------------------------------------------------------------

def test_summary_plain_json_and_terminal(planted):
    _, models = planted
    path = models["fwfm"]
    res = fm("inspect", path)
    assert res.exit_code == 0
    lines = {line.split(None, 1)[0]: line.split(None, 1)[1] for line in res.stdout.splitlines() if line.strip()}
    assert lines["model"].startswith("fwfm (binary), k=4")
    assert lines["memory"].startswith("parameters ") and "optimizer state" in lines["memory"]
    assert lines["optimizer"].startswith("adagrad: 1 state slot (G)")
    assert "rows, on cpu" in lines["trained"]
    assert "history (* the epoch the model is from):" in res.stdout
    doc = json.loads(fm("inspect", "--json", path).stdout)
    assert doc["schema"] == "fmcli.inspect/1" and doc["type"] == "model"
    assert [h["epoch"] for h in doc["history"]] == [1, 2, 3, 4, 5]
    assert doc["memory"]["optimizer_state_bytes"] == doc["memory"]["parameter_bytes"]
    assert doc["training"]["device"] == "cpu" and doc["training"]["train_rows"] == 4000
    assert doc["spec"] is None and doc["header"]["model"]["kind"] == "fwfm"

    from rich.console import Console
    result = ins.summarize(path)
    model = load_model(path)
    result["field_pairs"] = ins.field_pairs(model)
    result["top_features"] = ins.top_features(model, 3)
    console = Console(file=io.StringIO(), force_terminal=True, color_system="truecolor", width=160)
    _render.inspect_model(result, False, console=console)
    out = console.file.getvalue()
    assert "\x1b[" in out and "field pairs" in out and "top features" in out and "rgb" not in out


def test_json_has_no_nan():
    assert json.loads(json.dumps(_render._jsonable({"x": [float("nan"), np.float32(1.5), math.inf]}),
                                 allow_nan=False)) == {"x": [None, 1.5, None]}


def test_usage_errors(planted, tmp_path):
    data, models = planted
    res = fm("inspect", "--top-interactions", "3", data)
    assert res.exit_code == 2 and "applies to model files" in res.stderr
    res = fm("inspect", "--class", "x", "--features", "2", models["fm"])
    assert res.exit_code == 2 and "multiclass" in res.stderr
    res = fm("inspect", models["fm"], models["ffm"])
    assert res.exit_code == 2
    lr = tmp_path / "lr.fm"
    train(Config(model="lr", epochs=1, cache=False), str(data)).save(lr)
    res = fm("inspect", "--top-interactions", "3", lr)
    assert res.exit_code == 2 and "no pairwise" in res.stderr
    res = fm("inspect", "--json", "--features", "3", lr)
    assert res.exit_code == 0 and len(json.loads(res.stdout)["top_features"]["features"]) == 3


def test_multiclass_class_option(tmp_path):
    rng = np.random.default_rng(1)
    (tmp_path / "m.svm").write_text("".join(f"{'cat dog bird'.split()[i % 3]} {i % 3}:1 {3 + rng.integers(0, 5)}:1\n"
                                            for i in range(300)))
    train(Config(model="fm", task="multiclass", k=2, epochs=2, cache=False), str(tmp_path / "m.svm")).save(
        tmp_path / "m.fm")
    doc = json.loads(fm("inspect", "--json", "--top-interactions", "2", "--class", "dog", tmp_path / "m.fm").stdout)
    assert doc["top_interactions"]["class"] == "dog"
    assert {p["class"] for p in doc["top_interactions"]["pairs"]} == {"dog"}
    res = fm("inspect", "--top-interactions", "2", "--class", "cow", tmp_path / "m.fm")
    assert res.exit_code == 2 and "cow" in res.stderr


# -- data files -------------------------------------------------------------------------------

def test_data_statistics(planted, tmp_path):
    data, _ = planted
    gz = tmp_path / "p.ffm.gz"
    gz.write_bytes(gzip.compress(data.read_bytes()))
    res = fm("inspect", "--json", gz)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["schema"] == "fmcli.inspect.data/1" and doc["format"] == "libffm"
    assert doc["files"][0]["compression"] == "gzip"
    assert doc["rows"] == 4000 and doc["entries"] == 4000 * N_FIELDS
    assert doc["entries_per_row"] == {"min": N_FIELDS, "mean": N_FIELDS, "max": N_FIELDS}
    assert doc["features"] == {"distinct": N_FIELDS * PER_FIELD, "exact": True, "max_id": N_FIELDS * PER_FIELD - 1}
    assert doc["fields"]["distinct"] == N_FIELDS
    labels = doc["labels"]
    ids = [line.split() for line in data.read_text().splitlines()]
    positives = sum(line[0] == "1" for line in ids)
    assert labels["task"] == "binary" and labels["positives"] == positives
    # the same data twice through a glob, and a row limit
    doc = json.loads(fm("inspect", "--json", "--rows", "5000", str(tmp_path / "*.gz"), data).stdout)
    assert doc["rows"] == 5000 and doc["truncated"] and len(doc["files"]) == 2


def test_data_labels_bad_rows_and_parquet(tmp_path):
    reg = tmp_path / "r.svm"
    reg.write_text("0.5 1:1 2:3.5\n1.25 7:1\n-2 1:1\nbad line here\n3 2:1\n")
    res = fm("inspect", reg)
    assert res.exit_code == 65 and "r.svm:4" in res.stderr
    res = fm("inspect", "--json", "--max-bad-rows", "1", reg)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["bad_rows"]["count"] == 1 and "r.svm:4" in doc["bad_rows"]["first"][0]
    assert doc["labels"]["task"] == "regression"
    assert (doc["labels"]["min"], doc["labels"]["max"]) == (-2, 3)
    assert doc["values_other_than_1"] == 1 and doc["format"] == "libsvm"
    multi = tmp_path / "m.svm"
    multi.write_text("cat 1:1\ndog 2:1\ncat 3:1\n")
    doc = json.loads(fm("inspect", "--json", multi).stdout)
    assert doc["labels"]["classes"] == {"cat": 2, "dog": 1}
    assert "multiclass, 2 classes: cat 2, dog 1" in fm("inspect", multi).stdout

    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    table = pa.table({"label": [0, 1, 1, 0], "site": ["a", "b", "a", None], "price": [1.0, 2.5, None, 4.0]})
    pq.write_table(table, tmp_path / "w.parquet")
    doc = json.loads(fm("inspect", "--json", tmp_path / "w.parquet").stdout)
    assert doc["format"] == "parquet (wide)" and doc["rows"] == 4 and doc["entries"] == 6
    assert doc["fields"]["distinct"] == 2 and doc["labels"]["positives"] == 2


def test_data_from_stdin():
    res = CliRunner().invoke(cli, ["inspect", "-"], input="1 0:1:1 1:2:1\n0 0:3:1\n")
    assert res.exit_code == 0, res.output
    assert "binary: 1 positive (50.00%), 1 negative" in res.stdout


def test_distinct_counter_exact_and_estimated():
    rng = np.random.default_rng(0)
    exact = ins.DistinctCounter()
    ids = rng.integers(0, 1 << 20, 300_000)
    for part in np.array_split(ids, 7):
        exact.add(part)
    assert exact.exact and exact.count() == np.unique(ids).size
    bits = ins.DistinctCounter(byte_limit=1 << 10)        # a byte per id, then a bit per id
    bits.add(ids[ids < 1000])
    bits.add(ids)
    assert bits.exact and bits.flags is None and bits.count() == np.unique(ids).size
    approx = ins.DistinctCounter(exact_limit=1 << 16)
    first = rng.integers(0, 1 << 15, 1000)
    approx.add(first)                                  # exact so far, then moved to the sketch
    approx.add(ids)
    both = np.concatenate([ids, first])
    assert not approx.exact
    assert abs(approx.count() / np.unique(both).size - 1) < 0.03


def test_wide_field_pairs_become_a_heat_map_on_a_terminal():
    from rich.console import Console
    model = random_model("fwfm", 20, 60, 2, seed=9)
    result = {"field_pairs": ins.field_pairs(model)}
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    _render._show([("model", "fwfm")], _render._model_tables(result), console)
    out = console.file.getvalue()
    assert "strongest field pairs" in out and "…" not in out
    r = np.abs(model.params["field_weights"])
    a, b = np.unravel_index(np.argmax(np.triu(r, 1)), r.shape)
    assert f"{r[a, b]:.3f}" in out
