"""fm inspect on FmFM models: field-pair strengths from the learned matrices,
top interactions |v_i^T M_ab v_j|, the CLI and its JSON.

The models are built by hand (fmcli.model.Model), so that every figure can
be worked out on paper or by brute force."""

import json
import math

import numpy as np
import pytest

from clirun import invoke, ok
from fmcli import inspect as ins
from fmcli.model import Model, ModelSpec, load_model

# -- a tiny model whose figures are worked out by hand ---------------------------------------------
#
# k = 2, three fields, two features per field: 0, 1 in field 0; 2, 3 in field 1; 4, 5 in field 2.

V = np.array([[1, 0], [0, 1],          # field 0
              [1, 1], [2, 0],          # field 1
              [0, 2], [1, -1]],        # field 2
             np.float32)
UPPER = {                              # M_ab for a <= b; M_ba = M_ab^T
    (0, 0): [[1, 2], [0, 1]],          # acts as its symmetric part [[1, 1], [1, 1]]
    (0, 1): [[1, 2], [0, 1]],
    (0, 2): [[0, 1], [1, 0]],
    (1, 1): [[1, 0], [0, 1]],
    (1, 2): [[2, 0], [0, -1]],
    (2, 2): [[3, 0], [0, 3]],
}

# v_i^T M_ab v_j of every pair of the tiny model (i in field a <= b, j in field b), by hand:
# M_01 v_2 = (3, 1), M_01 v_3 = (2, 0), M_02 v_4 = (2, 0), M_02 v_5 = (-1, 1),
# M_12 v_4 = (0, -2), M_12 v_5 = (2, 1), v_0^T S_00 v_1 = 1.
HAND = {(0, 2): 3, (0, 3): 2, (1, 2): 1, (1, 3): 0,
        (0, 4): 2, (0, 5): -1, (1, 4): 0, (1, 5): 1,
        (2, 4): -2, (2, 5): 3, (3, 4): 0, (3, 5): 4,
        (0, 1): 1}
FIELD = [0, 0, 1, 1, 2, 2]

# Sample rows: the first lists its fields from the highest (the lower field still comes first
# in the strength); field 0 holds two features in the third.
ROWS = [[(2, 5), (1, 2), (0, 0)],
        [(0, 1), (1, 3), (2, 4)],
        [(0, 0), (0, 1), (1, 3), (2, 5)]]


def full_matrices(upper, m, k):
    """The (m, m, k, k) array a model file holds: the upper triangle, mirrored transposed."""
    M = np.zeros((m, m, k, k), np.float32)
    for (a, b), P in upper.items():
        M[a, b] = P
        M[b, a] = np.asarray(P, np.float32).T
    return M


def fmfm_model(factors, matrices, classes=None, linear=None, seed=0):
    rng = np.random.default_rng(seed)
    C = len(classes) if classes else 1
    n, k = factors.shape[-2:]
    m = matrices.shape[-3]
    spec = ModelSpec(kind="fmfm", task="multiclass" if classes else "binary", k=k, n_features=n, n_fields=m,
                     use_bias=True, use_linear=True, normalize=False, n_classes=C,
                     classes=tuple(classes) if classes else None)
    lead = (C,) if classes else ()
    params = {"bias": rng.normal(0, 1, lead or (1,)).astype(np.float32),
              "linear": (rng.normal(0, 1, lead + (n,)) if linear is None else linear).astype(np.float32),
              "factors": np.asarray(factors, np.float32), "field_matrices": np.asarray(matrices, np.float32)}
    model = Model(spec=spec, params=params)
    assert {name: a.shape for name, a in params.items()} == spec.shapes()
    return model


def tiny_model():
    return fmfm_model(V, full_matrices(UPPER, 3, 2))


def write_rows(path, rows):
    path.write_text("".join("1 " + " ".join(f"{f}:{j}:1" for f, j in r) + "\n" for r in rows))
    return path


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.fm"
    tiny_model().save(path)
    return path, write_rows(tmp_path / "rows.ffm", ROWS)


# -- the tiny model, by hand -----------------------------------------------------------------------

def test_field_pairs_without_data_are_the_matrix_sizes():
    got = ins.field_pairs(tiny_model())
    # ||M_ab||_F / sqrt(2); a = b: of the symmetric part (S_00 = [[1, 1], [1, 1]])
    want = [[math.sqrt(2), math.sqrt(3), 1.0],
            [math.sqrt(3), 1.0, math.sqrt(2.5)],
            [1.0, math.sqrt(2.5), 3.0]]
    np.testing.assert_allclose(np.array(got["matrix"], float), want, rtol=1e-12)
    assert got["fields"] == [0, 1, 2] and got["pairs"] is None
    assert got["statistic"].startswith("||M_ab||_F / sqrt(k)") and "|r| for M = r I" in got["statistic"]
    assert got["source"] == "the model's field-pair matrices"


@pytest.mark.parametrize("by_rows", [True, False])
def test_field_pairs_with_data_are_mean_pair_strengths(tiny, monkeypatch, by_rows):
    path, rows = tiny
    if not by_rows:          # every row pair by pair instead of by layouts of fields
        monkeypatch.setattr(ins, "_BLOCK_ROW_PAIRS", 1)
    model = load_model(path)
    got = ins.field_pairs(model, sample=ins.read_sample(model, str(rows), pairs=True))
    # (0,1): |3|, |0|, |2|, |0|; (0,2): |-1|, |0|, |-1|, |1|; (1,2): |3|, |0|, |4|; (0,0): |1|
    want = [[1.0, 1.25, 0.75], [1.25, None, 7 / 3], [0.75, 7 / 3, None]]
    assert got["fields"] == [0, 1, 2]
    for row, want_row in zip(got["matrix"], want):
        assert row == [None if x is None else pytest.approx(x, rel=1e-12) for x in want_row]
    assert got["pairs"] == [[1, 4, 4], [4, 0, 3], [4, 3, 0]]
    assert got["statistic"].startswith("|v_i^T M_ab v_j|, mean over the feature pairs")


def test_top_interactions_by_hand(tiny):
    path, rows = tiny
    model = load_model(path)
    got = ins.top_interactions(model, 6, sample=ins.read_sample(model, str(rows)))
    pairs = [(p["a"]["feature"], p["b"]["feature"], p["value"]) for p in got["pairs"]]
    # ties in strength: by the first feature's field, then id
    assert pairs == [(3, 5, 4.0), (0, 2, 3.0), (2, 5, 3.0), (0, 3, 2.0), (0, 4, 2.0), (2, 4, -2.0)]
    for p in got["pairs"]:
        i, j = p["a"]["feature"], p["b"]["feature"]
        assert (p["a"]["field"], p["b"]["field"]) == (FIELD[i], FIELD[j])
        assert p["strength"] == abs(HAND[i, j])
    assert got["pairs"][0]["field_matrix_norm"] == pytest.approx(math.sqrt(2.5), rel=1e-12)
    assert got["candidates"] == 6
    assert got["definition"].startswith("|v_i^T M_ab v_j| for feature i in field a, j in field b")
    # every candidate pair: the three cross-field blocks and field 0's pairs (it holds two features in a row)
    everything = ins.top_interactions(model, 100, sample=ins.read_sample(model, str(rows)))["pairs"]
    assert {(p["a"]["feature"], p["b"]["feature"]): p["value"] for p in everything} == HAND


def test_top_interactions_from_a_field_map(tmp_path):
    # without data, the spec's feature-to-field map gives the fields (and no field holds two features)
    model = tiny_model()
    model.meta["spec"] = {"columns": ["x", "y", "z"], "feature_fields": {str(i): f for i, f in enumerate(FIELD)}}
    names = ins.Names(model.meta["spec"])
    got = ins.top_interactions(model, 100, names=names)
    assert {(p["a"]["feature"], p["b"]["feature"]): p["value"] for p in got["pairs"]} == \
        {pair: v for pair, v in HAND.items() if FIELD[pair[0]] != FIELD[pair[1]]}
    assert got["candidates_are"] == "features of the preprocessing spec"
    model.save(tmp_path / "spec.fm")
    doc = json.loads(ok(invoke("inspect", tmp_path / "spec.fm", "--top-interactions", "1", "--json")).stdout)
    assert [(p["a"]["name"], p["b"]["name"], p["value"]) for p in doc["top_interactions"]["pairs"]] == \
        [("y:3", "z:5", 4.0)]


def test_only_the_upper_triangle_is_read(tiny):
    # the model is M_ab for a <= b: whatever the lower triangle holds does not change a figure
    _, rows = tiny
    model = tiny_model()
    mangled = tiny_model()
    M = mangled.params["field_matrices"]
    M[np.tril_indices(3, -1)] = 99.0

    def figures(which):
        return (ins.field_pairs(which),
                ins.field_pairs(which, sample=ins.read_sample(which, str(rows), pairs=True)),
                ins.top_interactions(which, 20, sample=ins.read_sample(which, str(rows)))["pairs"])

    a, b = figures(model), figures(mangled)
    assert a[0]["matrix"] == b[0]["matrix"] and a[1]["matrix"] == b[1]["matrix"]
    assert [(p["a"], p["b"], p["value"]) for p in a[2]] == [(p["a"], p["b"], p["value"]) for p in b[2]]


# -- FmFM with M = r I is FwFM ---------------------------------------------------------------------

def random_rows(n_rows, n, m, seed, multi_valued=(), extra=0):
    """Rows of (field, feature): one feature per field (two in `multi_valued`
    fields), ids up to n + extra (those from n on are beyond the model)."""
    rng = np.random.default_rng(seed)
    return [[(f, int(rng.integers(0, n + extra))) for f in range(m) for _ in range(2 if f in multi_valued else 1)]
            for _ in range(n_rows)]


def fwfm_twin(n, m, k, classes=None, seed=0):
    """An FwFM model with random factors and field weights r = +-2^e, and the
    FmFM model with the same factors and M_ab = r_ab I (powers of two keep
    the products exact, so both models' figures agree to the last bit)."""
    rng = np.random.default_rng(seed)
    C = len(classes) if classes else 1
    lead = (C,) if classes else ()
    F = (rng.normal(0, 1, lead + (n, k)) * np.exp(rng.normal(0, 1, lead + (n, 1)))).astype(np.float32)
    r = (rng.choice([-1.0, 1.0], (C, m, m)) * 2.0 ** rng.integers(-3, 4, (C, m, m))).astype(np.float32)
    r = np.triu(r) + np.swapaxes(np.triu(r, 1), 1, 2)          # symmetric, as training keeps it
    fmfm = fmfm_model(F, (r[..., None, None] * np.eye(k, dtype=np.float32)).reshape(lead + (m, m, k, k)),
                      classes, seed=seed)
    spec = ModelSpec(**{**fmfm.spec.__dict__, "kind": "fwfm"})
    fwfm = Model(spec=spec, params={**{a: fmfm.params[a] for a in ("bias", "linear", "factors")},
                                    "field_weights": r.reshape(lead + (m, m))})
    return fwfm, fmfm


@pytest.mark.parametrize("classes", [None, ["x", "y"]])
def test_scaled_identity_gives_fwfm_figures(tmp_path, monkeypatch, classes):
    monkeypatch.setattr(ins, "_ROW_BLOCK", 16)
    monkeypatch.setattr(ins, "_COL_BLOCK", 32)
    n, m, k = 120, 4, 4
    fwfm, fmfm = fwfm_twin(n, m, k, classes, seed=3)
    rows = write_rows(tmp_path / "s.ffm", random_rows(300, n, m, seed=4, multi_valued=(2,), extra=3))
    # field pairs: |r_ab| against ||r_ab I||_F / sqrt(k)
    assert ins.field_pairs(fmfm)["matrix"] == ins.field_pairs(fwfm)["matrix"]
    for cls in (None, 1) if classes else (None,):
        a = ins.top_interactions(fwfm, 40, sample=ins.read_sample(fwfm, str(rows)), class_index=cls)
        b = ins.top_interactions(fmfm, 40, sample=ins.read_sample(fmfm, str(rows)), class_index=cls)
        assert len(b["pairs"]) == 40 and b["candidates"] == a["candidates"]
        assert ([(p["a"], p["b"], p["class"], p["strength"], p["value"]) for p in b["pairs"]]
                == [(p["a"], p["b"], p["class"], p["strength"], p["value"]) for p in a["pairs"]])
        assert [p["field_matrix_norm"] for p in b["pairs"]] == [abs(p["field_weight"]) for p in a["pairs"]]


def test_scaled_identity_with_data_is_fm_times_r(tmp_path):
    # with data, the mean |v_i^T (r I) v_j| of a field pair is |r| times FM's mean |<v_i, v_j>|
    n, m, k = 50, 3, 4
    fwfm, fmfm = fwfm_twin(n, m, k, seed=5)
    fm = Model(spec=ModelSpec(**{**fmfm.spec.__dict__, "kind": "fm"}),
               params={a: fmfm.params[a] for a in ("bias", "linear", "factors")})
    rows = write_rows(tmp_path / "s.ffm", random_rows(200, n, m, seed=6, multi_valued=(1,)))
    got = ins.field_pairs(fmfm, sample=ins.read_sample(fmfm, str(rows), pairs=True))
    base = ins.field_pairs(fm, sample=ins.read_sample(fm, str(rows), pairs=True))
    assert got["pairs"] == base["pairs"]
    r = np.abs(fwfm.params["field_weights"])
    want = np.array(base["matrix"], float) * r
    np.testing.assert_allclose(np.array(got["matrix"], float), want, rtol=1e-6)


# -- exact against brute force, general matrices -----------------------------------------------------

def random_fmfm(n, m, k, classes=None, seed=0):
    rng = np.random.default_rng(seed)
    C = len(classes) if classes else 1
    F = rng.normal(0, 1, (C, n, k)) * np.exp(rng.normal(0, 1.5, (C, n, 1)))   # norms over magnitudes
    M = np.zeros((C, m, m, k, k))
    for c in range(C):
        upper = {(a, b): rng.normal(0, 1, (k, k)) * rng.choice([0.05, 1, 5]) for a in range(m) for b in range(a, m)}
        M[c] = full_matrices(upper, m, k)
    if not classes:
        F, M = F[0], M[0]
    return fmfm_model(F.astype(np.float32), M.astype(np.float32), classes, seed=seed)


def brute_strength(model, i, a, j, b):
    """max over classes of |v_i^T P v_j|, P = M_ab, M_ba^T or (M_aa + M_aa^T) / 2, in float64."""
    s = model.spec
    C = s.n_classes if s.task == "multiclass" else 1
    F = np.asarray(model.params["factors"], np.float64).reshape(C, s.n_features, s.k)
    M = np.asarray(model.params["field_matrices"], np.float64).reshape(C, s.n_fields, s.n_fields, s.k, s.k)
    out = []
    for c in range(C):
        P = M[c, a, b] if a < b else M[c, b, a].T if a > b else (M[c, a, a] + M[c, a, a].T) / 2
        out.append(abs(F[c, i] @ P @ F[c, j]))
    return max(out)


@pytest.mark.parametrize("classes", [None, ["a", "b", "c"]])
def test_top_interactions_are_exact(tmp_path, monkeypatch, classes):
    monkeypatch.setattr(ins, "_ROW_BLOCK", 16)
    monkeypatch.setattr(ins, "_COL_BLOCK", 64)
    n, m, k = 160, 4, 3
    model = random_fmfm(n, m, k, classes, seed=7)
    rows = random_rows(400, n, m, seed=8, multi_valued=(2,), extra=5)
    sample = ins.read_sample(model, str(write_rows(tmp_path / "s.ffm", rows)))
    units = sorted({(j, f) for r in rows for f, j in r if j < n})
    want = sorted((brute_strength(model, i, a, j, b) for x, (i, a) in enumerate(units) for (j, b) in units[x + 1:]
                   if a != b or a == 2), reverse=True)[:30]
    got = ins.top_interactions(model, 30, sample=sample)
    assert got["candidates"] == len(units)
    np.testing.assert_allclose([p["strength"] for p in got["pairs"]], want, rtol=1e-9)
    assert got["pairs_scored"] < len(units) ** 2 // 2            # the spectral bound pruned some blocks
    for p in got["pairs"]:
        assert p["a"]["field"] <= p["b"]["field"]
        assert p["strength"] == pytest.approx(brute_strength(model, p["a"]["feature"], p["a"]["field"],
                                                             p["b"]["feature"], p["b"]["field"]), rel=1e-12)


@pytest.mark.parametrize("by_rows", [True, False])
def test_field_pairs_with_data_are_exact(tmp_path, monkeypatch, by_rows):
    if not by_rows:
        monkeypatch.setattr(ins, "_BLOCK_ROW_PAIRS", 1)
    n, m, k = 40, 3, 3
    model = random_fmfm(n, m, k, ["p", "q"], seed=9)
    rows = random_rows(120, n, m, seed=10, multi_valued=(0,), extra=2)
    rows = [r[::-1] if x % 2 else r for x, r in enumerate(rows)]           # fields in either order
    got = ins.field_pairs(model, sample=ins.read_sample(model, str(write_rows(tmp_path / "s.ffm", rows)),
                                                        pairs=True))
    sums, counts = np.zeros((2, m, m)), np.zeros((m, m))
    s = model.spec
    for r in rows:
        for x in range(len(r)):
            for y in range(x + 1, len(r)):
                (a, i), (b, j) = r[x], r[y]
                if i >= n or j >= n:
                    continue
                for c in range(2):
                    one = Model(spec=ModelSpec(**{**s.__dict__, "task": "binary", "n_classes": 1, "classes": None}),
                                params={"factors": model.params["factors"][c],
                                        "field_matrices": model.params["field_matrices"][c]})
                    v = brute_strength(one, i, a, j, b)
                    for p, q in {(a, b), (b, a)}:
                        sums[c, p, q] += v
                for p, q in {(a, b), (b, a)}:
                    counts[p, q] += 1
    want = np.where(counts > 0, (sums / np.maximum(counts, 1)).max(axis=0), np.nan)
    np.testing.assert_allclose(np.array(got["matrix"], float), want, rtol=1e-5)
    assert got["statistic"].endswith("(largest over classes)")


# -- trained features, features, summary ------------------------------------------------------------

def test_untrained_features_are_left_out(tmp_path):
    # row-wise AdaGrad: one accumulator per factor vector (and matrix row); 1.0 = never updated
    model = tiny_model()
    G = np.ones(6, np.float32)
    G[[0, 2, 5]] = 2.5
    model.state = {"factors": G, "linear": np.ones(6, np.float32),
                   "field_matrices": np.ones((3, 3, 2), np.float32)}
    model.meta = {"optimizer": {"name": "rowwise-adagrad", "slots": ["G"]}}
    model.save(tmp_path / "m.fm")
    loaded = load_model(tmp_path / "m.fm")
    assert set(loaded.state) == {"factors", "linear", "field_matrices"}
    feats = ins.top_features(loaded, 10)
    assert sorted(f["feature"] for f in feats["features"]) == [0, 2, 5]
    assert "training updated" in feats["candidates_are"]


def test_top_features_and_summary(tiny):
    path, _ = tiny
    model = load_model(path)
    got = ins.top_features(model, 6)
    w = model.params["linear"].astype(np.float64)
    score = np.abs(w) + np.linalg.norm(V.astype(np.float64), axis=1)
    assert [f["score"] for f in got["features"]] == pytest.approx(sorted(score, reverse=True), rel=1e-6)
    assert "FFM" not in got["score"]
    doc = ins.summarize(path)
    assert doc["model"]["kind"] == "fmfm"
    assert doc["n_parameters"] == 1 + 6 + 6 * 2 + 3 * 3 * 2 * 2
    assert doc["memory"]["parameter_bytes"] == 4 * doc["n_parameters"]


# -- the command line ------------------------------------------------------------------------------

def test_cli_field_pairs(tiny):
    path, rows = tiny
    res = ok(invoke("inspect", path, "--field-pairs"))
    assert "||M_ab||_F / sqrt(k)" in res.stdout and "field-pair matrices" in res.stdout
    assert "1.732" in res.stdout and "1.581" in res.stdout           # sqrt(3), sqrt(2.5)
    doc = json.loads(ok(invoke("inspect", path, "--field-pairs", "--json")).stdout)
    assert doc["model"]["kind"] == "fmfm"
    assert doc["field_pairs"]["matrix"][0][1] == pytest.approx(math.sqrt(3), rel=1e-12)
    doc = json.loads(ok(invoke("inspect", path, "--field-pairs", "--data", rows, "--json")).stdout)
    assert doc["field_pairs"]["matrix"][1][2] == pytest.approx(7 / 3, rel=1e-12)
    assert doc["field_pairs"]["pairs"][0][1] == 4 and doc["sample"]["rows"] == 3


def test_cli_top_interactions(tiny):
    path, rows = tiny
    res = invoke("inspect", path, "--top-interactions", "3")
    assert res.exit_code == 2 and "--data" in res.stderr and "fmfm" in res.stderr
    res = ok(invoke("inspect", path, "--top-interactions", "3", "--data", rows))
    assert "|v_i^T M_ab v_j|" in res.stdout
    lines = [line.split() for line in res.stdout.splitlines() if line.split()[:1] in (["1"], ["2"], ["3"])]
    assert [line[:3] for line in lines] == [["1", "1:3", "2:5"], ["2", "0:0", "1:2"], ["3", "1:2", "2:5"]]
    doc = json.loads(ok(invoke("inspect", path, "--top-interactions", "3", "--data", rows, "--json",
                               "--features", "2")).stdout)
    ti = doc["top_interactions"]
    assert [(p["a"]["name"], p["b"]["name"], p["strength"]) for p in ti["pairs"]] == \
        [("1:3", "2:5", 4.0), ("0:0", "1:2", 3.0), ("1:2", "2:5", 3.0)]
    assert ti["definition"].startswith("|v_i^T M_ab v_j|") and "class" not in ti["definition"]
    assert len(doc["top_features"]["features"]) == 2


def test_cli_multiclass_class(tmp_path):
    model = random_fmfm(30, 3, 2, ["cat", "dog"], seed=11)
    path = tmp_path / "multi.fm"
    model.save(path)
    rows = write_rows(tmp_path / "rows.ffm", random_rows(50, 30, 3, seed=12))
    doc = json.loads(ok(invoke("inspect", path, "--json", "--field-pairs", "--top-interactions", "4",
                               "--data", rows, "--class", "dog")).stdout)
    assert doc["top_interactions"]["class"] == "dog"
    assert all(p["class"] == "dog" for p in doc["top_interactions"]["pairs"])
    one = Model(spec=ModelSpec(**{**model.spec.__dict__, "task": "binary", "n_classes": 1, "classes": None}),
                params={"factors": model.params["factors"][1], "field_matrices": model.params["field_matrices"][1]})
    for p in doc["top_interactions"]["pairs"]:
        assert p["strength"] == pytest.approx(brute_strength(one, p["a"]["feature"], p["a"]["field"],
                                                             p["b"]["feature"], p["b"]["field"]), rel=1e-12)
    dog = json.loads(ok(invoke("inspect", path, "--json", "--field-pairs", "--class", "dog")).stdout)
    both = json.loads(ok(invoke("inspect", path, "--json", "--field-pairs")).stdout)["field_pairs"]
    assert both["statistic"].endswith("(largest over classes)")
    assert not dog["field_pairs"]["statistic"].endswith("(largest over classes)")
    M = model.params["field_matrices"].astype(np.float64)
    np.testing.assert_allclose(dog["field_pairs"]["matrix"][0][1], np.linalg.norm(M[1, 0, 1]) / math.sqrt(2),
                               rtol=1e-12)
    assert np.all(np.array(both["matrix"]) >= np.array(dog["field_pairs"]["matrix"]))
    assert doc["field_pairs"]["source"].startswith("50 rows of")


# -- a trained model ------------------------------------------------------------------------------

def test_trained_model_finds_the_planted_pair(tmp_path):
    # one-hot fields; the label is 1 exactly when feature 3 of field 0 and 17 of field 1 occur together
    from fmcli import Config
    from fmcli.train import train

    rng = np.random.default_rng(0)
    ids = rng.integers(0, 10, (3000, 4)) + np.arange(4) * 10
    ids[:, 0] = np.where(rng.random(3000) < 0.5, 3, ids[:, 0])
    ids[:, 1] = np.where(rng.random(3000) < 0.5, 17, ids[:, 1])
    y = (ids[:, 0] == 3) & (ids[:, 1] == 17)
    data = tmp_path / "planted.ffm"
    data.write_text("".join(f"{int(t)} " + " ".join(f"{f}:{j}:1" for f, j in enumerate(r)) + "\n"
                            for t, r in zip(y, ids)))
    train(Config(model="fmfm", k=4, epochs=5, seed=1, cache=False), str(data)).save(tmp_path / "m.fm")
    model = load_model(tmp_path / "m.fm")
    pairs = ins.top_interactions(model, 2, sample=ins.read_sample(model, str(data)))["pairs"]
    assert [(p["a"]["feature"], p["b"]["feature"]) for p in pairs[:1]] == [(3, 17)]
    assert pairs[0]["strength"] > 2 * pairs[1]["strength"]
    matrix = np.array(ins.field_pairs(model)["matrix"])
    assert np.unravel_index(np.argmax(np.triu(matrix, 1)), matrix.shape) == (0, 1)
