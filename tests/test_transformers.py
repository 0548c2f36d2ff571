"""The scikit-learn transformers: the raw-log encoder (fm convert's recipe)
and bi-interaction pooling (an FM's pairwise interaction vector)."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("sklearn")

import scipy.sparse as sp
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks

from fmcli.config import Config
from fmcli.data.criteo import CRITEO_CATEGORICAL, CRITEO_COLUMNS, CRITEO_INTEGERS, load_spec, token_hash
from fmcli.data.inmemory import as_batch
from fmcli.model import load_model
from fmcli.predict import Scorer, with_slots
from fmcli.train import train
from fmcli.transformers import BiInteractionPooling, RawLogEncoder
from clirun import invoke, ok


def fid(column, token, space=10**6):
    return token_hash(column, token) % space


# -- raw rows, written here ----------------------------------------------------------------


def criteo_rows(n, seed):
    """Tab-separated Criteo rows as lists of strings: label, 13 integers
    (some empty or negative, some large), 26 hex values (some empty), a few
    values per column so that min_count matters."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        ints = []
        for _ in range(13):
            r = rng.random()
            ints.append("" if r < 0.15 else str(int(rng.integers(-2, 3))) if r < 0.4
                        else str(int(rng.geometric(0.01))))
        cats = ["" if rng.random() < 0.1 else "%08x" % (int(rng.zipf(1.7)) % 9 * 2654435761 % 2**32)
                for _ in range(26)]
        rows.append([str(int(rng.random() < 0.3))] + ints + cats)
    return rows


def write_tsv(path, rows):
    path.write_text("".join("\t".join(r) + "\n" for r in rows))


def read_ffm(path):
    """(labels, rows of (field, feature, value) triples) of a libffm file."""
    labels, rows = [], []
    for line in path.read_text().splitlines():
        parts = line.split()
        labels.append(float(parts[0]))
        rows.append([(int(f), int(j), float(v)) for f, j, v in (p.split(":") for p in parts[1:])])
    return labels, rows


def matrix_rows(enc, M):
    """The encoder's output as rows of (field, feature, value) triples, in stored order."""
    M = sp.csr_matrix(M)
    out = []
    for r in range(M.shape[0]):
        ids = M.indices[M.indptr[r]:M.indptr[r + 1]]
        vals = M.data[M.indptr[r]:M.indptr[r + 1]]
        out.append([(int(enc.fields_[j]), int(j), float(v)) for j, v in zip(ids, vals)])
    return out


@pytest.fixture(scope="module")
def criteo(tmp_path_factory):
    """A raw Criteo file, what fm convert made of it (min count 3), and its rows."""
    d = tmp_path_factory.mktemp("criteo")
    rows = criteo_rows(120, 1)
    write_tsv(d / "t.tsv", rows)
    ok(invoke("convert", "-q", "criteo", d / "t.tsv", "-o", d / "t.ffm", "--min-count", "3"))
    return d, rows


# -- the raw-log encoder: fm convert's recipe ------------------------------------------------


def test_encoder_gives_fm_convert_ids_and_spec(criteo):
    d, rows = criteo
    X = np.array([r[1:] for r in rows], dtype=object)          # the raw text, as read
    y = np.array([int(r[0]) for r in rows])
    enc = RawLogEncoder("criteo", min_count=3)
    M = enc.fit_transform(X, y)
    labels, expected = read_ffm(d / "t.ffm")
    assert sp.issparse(M) and M.shape == (120, 10**6) and M.dtype == np.float32
    got = matrix_rows(enc, M)
    assert got == expected                                       # ids, fields, values, order
    assert all(len(r) == 39 for r in got)
    # the spec is the one fm convert wrote (vocabularies, counts, everything)
    assert enc.spec_.to_json() == load_spec(d / "t.ffm.spec.json").to_json()
    assert any(c.kept is not None and 0 < c.kept.size for c in enc.spec_.columns)
    # the rare token is in use: a value seen fewer than 3 times
    rare_ids = {fid(c, "<rare>") for c in CRITEO_CATEGORICAL}
    assert any(j in rare_ids for r in got for _, j, _ in r)
    # fit then transform is fit_transform
    again = RawLogEncoder("criteo", min_count=3).fit(X, y).transform(X)
    assert (again != M).nnz == 0


def test_encoder_takes_numbers_and_missing_values_from_a_dataframe(criteo):
    pd = pytest.importorskip("pandas")
    d, rows = criteo
    df = pd.read_csv(d / "t.tsv", sep="\t", header=None, names=CRITEO_COLUMNS,
                     dtype={c: str for c in CRITEO_CATEGORICAL}).drop(columns="label")
    assert df["I1"].dtype.kind == "f" and df["I1"].isna().any()   # numbers, NaN for missing
    M = RawLogEncoder("criteo", min_count=3).fit_transform(df)
    assert matrix_rows(RawLogEncoder("criteo", min_count=3).fit(df), M) == read_ffm(d / "t.ffm")[1]
    # a numeric numpy array (integer columns only) is encoded too
    ints = df[CRITEO_INTEGERS].fillna(0).to_numpy(np.int64)
    enc = RawLogEncoder(min_count=1).fit(ints)
    out = enc.transform(ints)
    first = [fid(f"x{j}", f"v{v}" if v <= 2 else f"b{math.floor(math.log(v) ** 2)}")
             for j, v in enumerate(ints[0].tolist())]
    assert out.indices[: out.indptr[1]].tolist() == first
    # floats with a fraction are numbers under the csv kind, refused by Criteo's integer columns
    frac = df[CRITEO_INTEGERS].fillna(0).to_numpy(np.float64) + 0.5
    assert RawLogEncoder().fit_transform(frac).nnz == frac.size
    bad = df.copy()
    bad["I3"] = bad["I3"] + 0.25
    with pytest.raises(ValueError, match=r"row 0 of X: column 'I3': expected an integer"):
        RawLogEncoder("criteo").fit(bad)


def test_saved_spec_drives_fm_convert_and_fm_train(criteo, tmp_path):
    d, rows = criteo
    X = np.array([r[1:] for r in rows], dtype=object)
    enc = RawLogEncoder("criteo", min_count=3).fit(X, np.array([int(r[0]) for r in rows]))
    enc.save_spec(tmp_path / "enc.spec.json")
    json.loads((tmp_path / "enc.spec.json").read_text())
    assert (tmp_path / "enc.spec.json").read_text() == (d / "t.ffm.spec.json").read_text()
    # fm convert --spec applies it to other rows exactly as transform does
    new = criteo_rows(40, 2)
    write_tsv(tmp_path / "new.tsv", new)
    ok(invoke("convert", "-q", "--spec", tmp_path / "enc.spec.json", tmp_path / "new.tsv",
              "-o", tmp_path / "new.ffm"))
    M = enc.transform(np.array([r[1:] for r in new], dtype=object))
    assert matrix_rows(enc, M) == read_ffm(tmp_path / "new.ffm")[1]
    # and fm train --spec accepts it, storing it in the model
    ok(invoke("train", "-q", "--spec", tmp_path / "enc.spec.json", "--model", "fm", "-t", "1",
              d / "t.ffm", "-o", tmp_path / "m.fm"))
    assert load_model(tmp_path / "m.fm").meta["spec"]["kind"] == "criteo"


def test_encoder_csv_kind_equals_fm_convert_csv(tmp_path):
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({
        "city": ["Paris", "Oslo", "Oslo", None, "Rome", "Oslo", "Paris"],
        "age": [33, np.nan, 2, 7, -1, 100, 0.5],
        "code": [7, 7, 8, 7, 9, 8, 7],              # numbers, made categorical below
    })
    text = "y,city,age,code\n" + "".join(
        f"1,{'' if c is None else c},{'' if a != a else ('%g' % a)},{k}\n"
        for c, a, k in zip(df["city"], df["age"], df["code"]))
    (tmp_path / "g.csv").write_text(text)
    ok(invoke("convert", "-q", "csv", tmp_path / "g.csv", "-o", tmp_path / "g.ffm", "--label", "y",
              "--categorical", "city,code", "--numeric", "age", "--min-count", "2"))
    enc = RawLogEncoder(categorical_features=["city", "code"], min_count=2)
    M = enc.fit_transform(df)
    assert [c.type for c in enc.spec_.columns] == ["categorical", "numeric", "categorical"]
    assert matrix_rows(enc, M) == read_ffm(tmp_path / "g.ffm")[1]
    theirs = load_spec(tmp_path / "g.ffm.spec.json")
    assert [(c.name, c.type, None if c.kept is None else c.kept.tolist()) for c in theirs.columns] == \
           [(c.name, c.type, None if c.kept is None else c.kept.tolist()) for c in enc.spec_.columns]
    # from_dtype: strings categorical, numbers numeric; indices and masks choose the same way
    assert [c.type for c in RawLogEncoder().fit(df).spec_.columns] == ["categorical", "numeric", "numeric"]
    for chosen in ([0, 2], np.array([True, False, True])):
        assert [c.type for c in RawLogEncoder(categorical_features=chosen).fit(df).spec_.columns] == \
               ["categorical", "numeric", "categorical"]
    # an unseen value is rare; a missing value is the missing token
    out = enc.transform(pd.DataFrame({"city": ["Lima", None], "age": [np.nan, 3.0], "code": [7, 1]}))
    assert out.indices.tolist() == [fid("city", "<rare>"), fid("age", ""), fid("code", "7"),
                                    fid("city", "<rare>"), fid("age", "b1"), fid("code", "<rare>")]
    # the field of every id the columns produce
    assert enc.fields_[fid("city", "Oslo")] == 0 and enc.fields_[fid("code", "<rare>")] == 2
    assert enc.fields_.shape == (10**6,) and enc.fields_.dtype == np.int32
    # the value rule: the number itself, missing is no entry
    val = RawLogEncoder(numeric_rule="value", hash_space=1000).fit_transform(df[["age"]])
    assert val.indices.tolist() == [fid("age", "<value>", 1000)] * 6
    assert val.data.tolist() == [33, 2, 7, -1, 100, 0.5] and np.diff(val.indptr).tolist() == [1, 0, 1, 1, 1, 1, 1]


def test_encoder_reads_polars_like_pandas():
    pd = pytest.importorskip("pandas")
    pl = pytest.importorskip("polars")
    data = {"a": ["x", "y", None, "x"], "n": [1.5, None, 3.0, 40.0], "k": [1, 2, 3, 4]}
    a = RawLogEncoder(min_count=1).fit_transform(pd.DataFrame(data))
    b = RawLogEncoder(min_count=1).fit_transform(pl.DataFrame(data))
    assert (a != b).nnz == 0 and a.nnz == 12


def test_encoder_clone_float32_and_sparse_output():
    X = np.array([[0.1, 7.0], [0.1, 2.5], [3.0, np.nan]], np.float32)
    enc = RawLogEncoder(categorical_features=[0], min_count=1)
    out = enc.fit_transform(X)
    # a float32 value is its shortest text, as a file would hold it; NaN is missing
    assert out.indices.tolist() == [fid("x0", "0.1"), fid("x1", "b3"), fid("x0", "0.1"), fid("x1", "b0"),
                                    fid("x0", "3"), fid("x1", "")]
    twin = clone(enc)
    assert twin.get_params() == enc.get_params() and not hasattr(twin, "spec_")
    # the output is sparse (hash_space columns): no DataFrame output, and scikit-learn says so
    with pytest.raises(ValueError, match="sparse"):
        RawLogEncoder().set_output(transform="pandas").fit_transform(X)


def test_encoder_refuses_bad_use():
    X = np.array([["a", "1"], ["b", "2"]], dtype=object)
    with pytest.raises(NotFittedError):
        RawLogEncoder().transform(X)
    with pytest.raises(ValueError, match="39 feature columns"):
        RawLogEncoder("criteo").fit(X)
    with pytest.raises(ValueError, match="kind must be one of"):
        RawLogEncoder("avazu-ish").fit(X)
    with pytest.raises(ValueError, match="hash space"):
        RawLogEncoder(hash_space=0).fit(X)
    with pytest.raises(ValueError, match="'zz'"):
        RawLogEncoder(categorical_features=["zz"]).fit(X)
    enc = RawLogEncoder(min_count=1).fit(X)
    with pytest.raises(ValueError, match="X has 3 features"):
        enc.transform(np.array([["a", "1", "c"]], dtype=object))
    assert list(enc.get_feature_names_out()[:2]) == ["id0", "id1"]


# -- bi-interaction pooling -----------------------------------------------------------------


def small_data(seed=0, n=60, d=8):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * (rng.random((n, d)) < 0.6)
    y = (X[:, 0] + X[:, 1] * X[:, 2] > 0).astype(int)
    return X, y


def reference_pooling(model, X, ids=None):
    """The pooled vectors from the model's factors, row by row in float64,
    with the instance normalisation of tests/reference.py (x_i / ||x||)."""
    V = np.asarray(model.params["factors"], np.float64)
    slot = {} if model.feature_ids is None else {int(j): s for s, j in enumerate(model.feature_ids)}
    X = sp.csr_matrix(X)
    out = np.zeros((X.shape[0], V.shape[1]))
    for r in range(X.shape[0]):
        cols = X.indices[X.indptr[r]:X.indptr[r + 1]]
        vals = X.data[X.indptr[r]:X.indptr[r + 1]].astype(np.float32).astype(np.float64)
        norm = math.sqrt(float(np.sum(vals ** 2)))
        if model.spec.normalize and norm > 0:
            vals = vals / norm
        s = np.zeros(V.shape[1])
        sq = np.zeros(V.shape[1])
        for j, x in zip(cols.tolist(), vals.tolist()):
            j = slot.get(j, len(V)) if model.feature_ids is not None else j
            if j >= len(V):
                continue                          # unknown to the model: nothing
            s += x * V[j]
            sq += (x * V[j]) ** 2
        out[r] = 0.5 * (s * s - sq)
    return out


def pair_term(model, X):
    """The model's score minus its bias and linear terms: its pairwise part."""
    batch = as_batch(X)[0]
    if model.feature_ids is not None:
        batch = with_slots(batch, model.id_map())
    scores = Scorer(model).scores(batch)
    L = model.params["linear"]
    bias = float(model.params["bias"][0])
    lin = np.zeros(batch.n_rows)
    for r in range(batch.n_rows):
        lo, hi = batch.indptr[r], batch.indptr[r + 1]
        v = batch.values[lo:hi].astype(np.float64)
        scale = 1 / math.sqrt(float(np.sum(v * v))) if model.spec.normalize and np.any(v) else 1.0
        f = batch.features[lo:hi]
        known = f < model.spec.n_features
        lin[r] = float(np.sum(L[f[known]] * v[known] * scale))
    return scores - bias - lin


@pytest.mark.parametrize("normalize", [True, False])
def test_pooling_of_a_model_equals_numpy_and_the_pair_term(normalize):
    X, y = small_data()
    batch = as_batch(X, y)[0]
    model = train(Config(model="fm", k=5, epochs=3, normalize=normalize, init_scale=1.0), batch)
    pool = BiInteractionPooling(model, prefit=True)
    out = pool.transform(X)                    # prefit: no fit needed
    assert out.shape == (60, 5) and out.dtype == np.float64
    np.testing.assert_allclose(out, reference_pooling(model, X), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.sum(axis=1), pair_term(model, X), rtol=1e-4, atol=1e-5)
    assert np.abs(out).max() > 1e-3            # not trivially zero
    fitted = pool.fit(X)
    np.testing.assert_array_equal(fitted.transform(X), out)
    assert fitted.n_features_in_ == 8 and fitted.model_ is model
    assert list(fitted.get_feature_names_out()) == ["bi0", "bi1", "bi2", "bi3", "bi4"]


def test_pooling_through_an_id_map_of_hashed_ids():
    # an FM trained on the encoder's hashed ids has compact ids (a feature_ids map)
    X = np.array([[f"u{i % 7}", f"ad{i % 5}", str(i % 3)] for i in range(80)], dtype=object)
    y = np.arange(80) % 2
    M = RawLogEncoder(min_count=1).fit_transform(X)
    model = train(Config(model="fm", k=4, epochs=2), as_batch(M, y)[0])
    assert model.feature_ids is not None
    out = BiInteractionPooling(model, prefit=True).transform(M)
    np.testing.assert_allclose(out, reference_pooling(model, M), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.sum(axis=1), pair_term(model, M), rtol=1e-4, atol=1e-5)
    # an id the model never saw adds nothing (but counts in the norm)
    unseen = M[:2].copy().tolil()
    unseen[:, 12345] = 1.0
    unseen = unseen.tocsr()
    np.testing.assert_allclose(BiInteractionPooling(model, prefit=True).transform(unseen),
                               reference_pooling(model, unseen), rtol=1e-5, atol=1e-6)


def test_pooling_fits_its_own_fm_with_the_task_of_y():
    X, y = small_data()
    pool = BiInteractionPooling().fit(X, y)
    assert pool.task_ == "binary" and pool.model_.spec.kind == "fm"
    defaults = Config()
    assert pool.model_.spec.k == defaults.k and pool.model_.spec.normalize == defaults.normalize
    np.testing.assert_allclose(pool.transform(X), reference_pooling(pool.model_, X), rtol=1e-5, atol=1e-6)
    # the same as an FM trained directly with Config's defaults on labels 0/1
    direct = train(Config(model="fm", task="binary"), as_batch(X, y)[0])
    np.testing.assert_array_equal(pool.model_.params["factors"], direct.params["factors"])
    # two string classes are binary too; a numeric target with more values is a regression
    assert BiInteractionPooling().fit(X, np.where(y == 1, "yes", "no")).task_ == "binary"
    reg = BiInteractionPooling().fit(X, X[:, 0] * 2.0)
    assert reg.task_ == "regression"
    with pytest.raises(ValueError, match="not numbers"):
        BiInteractionPooling().fit(X, np.array(["a", "b", "c"] * 20))
    with pytest.raises(ValueError, match="requires y"):
        BiInteractionPooling().fit(X)
    # fit_transform is fit then transform
    np.testing.assert_array_equal(BiInteractionPooling().fit_transform(X, y), pool.transform(X))


def test_pooling_refuses_other_models_and_unfitted_ones():
    X, y = small_data()
    batch = as_batch(X, y)[0]
    for kind in ("ffm", "fwfm", "lr"):
        model = train(Config(model=kind, epochs=1), batch)
        with pytest.raises(ValueError, match=f"a {kind} model has none"):
            BiInteractionPooling(model, prefit=True).fit(X)
    fm = train(Config(model="fm", epochs=1), batch)
    with pytest.raises(ValueError, match="prefit=True"):
        BiInteractionPooling(fm).fit(X, y)
    with pytest.raises(NotFittedError):
        BiInteractionPooling(object(), prefit=True).transform(X)
    with pytest.raises(NotFittedError):
        BiInteractionPooling().transform(X)


def test_pooling_set_output_clone_and_pipeline():
    pd = pytest.importorskip("pandas")
    X, y = small_data()
    pool = BiInteractionPooling().set_output(transform="pandas")
    out = pool.fit_transform(X, y)
    assert isinstance(out, pd.DataFrame) and list(out.columns) == ["bi0", "bi1", "bi2", "bi3"]
    np.testing.assert_array_equal(out.to_numpy(), BiInteractionPooling().fit(X, y).transform(X))
    pl = pytest.importorskip("polars")
    assert isinstance(BiInteractionPooling().set_output(transform="polars").fit(X, y).transform(X), pl.DataFrame)
    twin = clone(pool)
    assert twin.get_params() == pool.get_params() and not hasattr(twin, "model_")
    pipe = make_pipeline(BiInteractionPooling(), LogisticRegression()).fit(X, y)
    assert pipe.predict_proba(X).shape == (60, 2)


def test_encoder_then_estimator_in_a_pipeline():
    est = pytest.importorskip("fmcli.estimators")
    rng = np.random.default_rng(3)
    X = np.array([[f"u{rng.integers(6)}", f"ad{rng.integers(4)}", float(rng.integers(0, 50))]
                  for _ in range(200)], dtype=object)
    y = np.array([int(r[0] in ("u1", "u2")) for r in X])
    pipe = make_pipeline(RawLogEncoder(min_count=1, hash_space=4096), est.FMClassifier())
    pipe.fit(X, y)
    proba = pipe.predict_proba(X)
    assert proba.shape == (200, 2) and np.allclose(proba.sum(axis=1), 1)
    # the pooled FM of the fitted pipeline's estimator
    pooled = BiInteractionPooling(pipe[-1], prefit=True).transform(pipe[0].transform(X))
    assert pooled.shape == (200, pipe[-1].model_.spec.k)


def test_pooling_of_fmcli_estimators():
    est = pytest.importorskip("fmcli.estimators")
    X, y = small_data(1)
    clf = est.FMClassifier(k=3, epochs=2).fit(X, y)
    out = BiInteractionPooling(clf, prefit=True).transform(X)
    np.testing.assert_allclose(out, reference_pooling(clf.model_, X), rtol=1e-5, atol=1e-6)
    # not prefit: a clone is fitted, the given estimator is left alone
    pool = BiInteractionPooling(est.FMRegressor(k=2, epochs=2)).fit(X, X[:, 0])
    assert pool.task_ == "regression" and pool.transform(X).shape == (60, 2)
    assert not hasattr(pool.estimator, "model_") and pool.estimator_.model_ is pool.model_
    with pytest.raises(ValueError, match="a ffm model has none"):
        BiInteractionPooling(est.FFMClassifier(epochs=1).fit(X, y), prefit=True).transform(X)
    # a DataFrame with strings: read as the estimator reads it (its fitted columns, by name)
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"user": [f"u{i % 7}" for i in range(60)], "x": X[:, 0]})
    clf = est.FMClassifier(k=3, epochs=2).fit(df, y)
    pool = BiInteractionPooling(clf, prefit=True).fit(df)
    out = pool.transform(df)
    assert out.shape == (60, 3) and np.abs(out).max() > 0
    with pytest.raises(ValueError, match="feature names"):
        pool.transform(df[["x", "user"]])


def test_without_scikit_learn_the_import_names_the_extra():
    code = ("import sys; sys.modules['sklearn'] = None\n"
            "try:\n    import fmcli.transformers\nexcept ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert "pip install 'fm-ctr[sklearn]'" in out.stdout


# -- scikit-learn's own checks, default arguments -----------------------------------------------


@parametrize_with_checks([RawLogEncoder(), BiInteractionPooling()])
def test_sklearn_compatible(estimator, check):
    check(estimator)
