"""The scikit-learn estimators (fmcli.estimators): parameters from Config,
scikit-learn's meta-estimators, pickling, partial_fit, weights, early
stopping, fields, DataFrames, and the model file shared with the CLI."""

from __future__ import annotations

import dataclasses
import inspect
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("sklearn")

import scipy.sparse as sp  # noqa: E402
from sklearn.base import clone  # noqa: E402
from sklearn.calibration import CalibratedClassifierCV  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from clirun import invoke, ok  # noqa: E402
from fmcli import estimators  # noqa: E402
from fmcli.config import Config  # noqa: E402
from fmcli.estimators import (FFMClassifier, FFMRegressor, FMClassifier, FMRegressor,  # noqa: E402
                              FwFMClassifier, LRClassifier, LRRegressor)
from fmcli.model import Model, load_model  # noqa: E402
from fmcli.predict import format_predictions, iter_scores  # noqa: E402
from fmcli.registry import KINDS, OPTIMIZERS  # noqa: E402


def data(n=200, d=5, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = (X[:, 0] + X[:, 1] * X[:, 2] > 0).astype(int)
    return X, y


def multiclass_data(n=240, seed=1):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    y = np.array(["cat", "dog", "owl"])[(X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5)]
    return X, y


def params_equal(a: Model, b: Model) -> None:
    assert a.params.keys() == b.params.keys()
    for name in a.params:
        np.testing.assert_array_equal(a.params[name], b.params[name], err_msg=name)
    assert a.state.keys() == b.state.keys()
    for name in a.state:
        np.testing.assert_array_equal(a.state[name], b.state[name], err_msg=f"{name} state")


# -- parameters ----------------------------------------------------------------------

def test_defaults_are_configs():
    cfg = Config()
    config_fields = {f.name for f in dataclasses.fields(Config)}
    for cls in estimators.CLASSES.values():
        sig = inspect.signature(cls)
        names = list(sig.parameters)
        # every Config field is a parameter or deliberately left out
        assert config_fields - estimators.NOT_PARAMETERS <= set(names)
        # (class_weight is scikit-learn's, in its own form)
        assert set(names) & estimators.NOT_PARAMETERS <= {"class_weight"}
        for name, p in sig.parameters.items():
            assert p.kind is inspect.Parameter.KEYWORD_ONLY
            if name in config_fields:
                assert p.default == getattr(cfg, name), (cls.__name__, name)
        extras = set(names) - config_fields
        assert extras == {"fields", "warm_start", "validation_fraction", "random_state", "n_jobs", "verbose"}
        assert ("class_weight" in names) == cls.__name__.endswith("Classifier")


def test_classes_follow_the_registry():
    for kind in KINDS:
        for family in ("Classifier", "Regressor"):
            cls = getattr(estimators, estimators.class_prefix(kind) + family)
            assert cls._kind == kind
            assert cls.__module__ == "fmcli.estimators"
    assert [estimators.class_prefix(k) for k in ("lr", "fm", "ffm", "fwfm", "fmfm")] == \
        ["LR", "FM", "FFM", "FwFM", "FmFM"]


def test_init_stores_only_and_fit_validates_through_config():
    clf = FFMClassifier(k=0, optimizer="nope")      # no error yet (scikit-learn's rule)
    assert clf.k == 0
    X, y = data()
    with pytest.raises(ValueError, match="optimizer must be one of"):
        clf.fit(X, y)
    with pytest.raises(ValueError, match="k must be between 1"):
        FFMClassifier(k=0).fit(X, y)
    with pytest.raises(ValueError, match="--l1 needs --optimizer ftrl"):
        FMClassifier(l1=0.1).fit(X, y)
    with pytest.raises(ValueError, match="validation_fraction"):
        FMClassifier(validation_fraction=1.5).fit(X, y)
    with pytest.raises(ValueError, match="n_jobs"):
        FMClassifier(n_jobs=0).fit(X, y)


def test_random_state_and_n_jobs():
    X, y = data()
    a = FMClassifier().fit(X, y)
    b = FMClassifier(random_state=0).fit(X, y)
    c = FMClassifier(random_state=3).fit(X, y)
    params_equal(a.model_, b.model_)       # None means seed 0
    assert not np.array_equal(a.model_.params["factors"], c.model_.params["factors"])
    assert b.model_.meta["hyperparameters"]["seed"] == 0
    assert c.model_.meta["hyperparameters"]["seed"] == 3
    d = FMClassifier(n_jobs=-1).fit(X, y)
    assert d.model_.meta["hyperparameters"]["threads"] >= 1
    np.testing.assert_allclose(d.predict_proba(X), a.predict_proba(X), atol=0.2)


# -- scikit-learn's tools --------------------------------------------------------------

def test_clone_pipeline_and_grid_search():
    X, y = data()
    clf = FFMClassifier(k=2, epochs=3)
    twin = clone(clf)
    assert twin.get_params() == clf.get_params() and twin is not clf
    pipe = make_pipeline(StandardScaler(), FMClassifier(epochs=5)).fit(X, y)
    assert pipe.score(X, y) > 0.8
    grid = GridSearchCV(FMClassifier(epochs=3), {"k": [2, 4], "learning_rate": [0.05, 0.2]}, cv=3).fit(X, y)
    assert set(grid.best_params_) == {"k", "learning_rate"}
    assert len(grid.cv_results_["params"]) == 4
    assert grid.predict(X).shape == (len(y),)


@pytest.mark.parametrize("method", ["sigmoid", "isotonic"])
def test_calibrated_classifier(method):
    X, y = data(300)
    cal = CalibratedClassifierCV(FMClassifier(epochs=5), method=method, cv=3).fit(X, y)
    p = cal.predict_proba(X)
    assert p.shape == (300, 2)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    assert cal.score(X, y) > 0.8


def test_pickle_round_trip():
    X, y = multiclass_data()
    clf = FwFMClassifier(k=3, epochs=3, n_jobs=1).fit(X, y)
    state = clf.__getstate__()
    # the model travels as its file's bytes, with the constructor parameters
    assert set(state) == set(clf.get_params()) | {"_model_file"}
    assert isinstance(state["_model_file"], bytes)
    back = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(back.predict_proba(X), clf.predict_proba(X))
    np.testing.assert_array_equal(back.predict(X), clf.predict(X))
    assert back.classes_.tolist() == ["cat", "dog", "owl"] and back.n_features_in_ == 4
    params_equal(back.model_, clf.model_)
    unfitted = pickle.loads(pickle.dumps(FMRegressor(k=7)))
    assert unfitted.k == 7 and not hasattr(unfitted, "model_")
    # and it goes on training where it stopped
    more = pickle.loads(pickle.dumps(clf)).partial_fit(X, y)
    assert clf.model_.meta["optimizer"]["steps"] == 3 * len(y)
    assert more.model_.meta["optimizer"]["steps"] == 4 * len(y)


def test_model_bytes_round_trip():
    X, y = data()
    model = FFMClassifier(epochs=2).fit(X, y).model_
    again = Model.from_bytes(model.to_bytes())
    params_equal(model, again)
    assert again.spec == model.spec and again.path is None
    assert Model.from_bytes(model.to_bytes(include_state=False)).state == {}
    with pytest.raises(Exception, match="model"):
        Model.from_bytes(b"not a model file")


# -- partial_fit and warm starts -------------------------------------------------------

@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_partial_fit_equals_one_fit(optimizer):
    X, y = data(300)
    kw = dict(k=4, epochs=1, shuffle=False, n_jobs=1, lr_schedule="constant", optimizer=optimizer)
    whole = FFMClassifier(**kw).fit(X, y)
    parts = FFMClassifier(**kw)
    for rows in np.array_split(np.arange(300), 4):
        parts.partial_fit(X[rows], y[rows], classes=[0, 1])
    params_equal(whole.model_, parts.model_)
    np.testing.assert_array_equal(whole.decision_function(X), parts.decision_function(X))
    assert parts.model_.meta["optimizer"]["steps"] == whole.model_.meta["optimizer"]["steps"] == 300


def test_partial_fit_multiclass_and_regression():
    X, y = multiclass_data()
    kw = dict(epochs=1, shuffle=False)
    whole = FMClassifier(**kw).fit(X, y)
    parts = FMClassifier(**kw)
    chunks = np.array_split(np.arange(len(y)), 3)
    with pytest.raises(ValueError, match="classes must be passed"):
        FMClassifier(**kw).partial_fit(X[:10], y[:10])
    # a part may lack a class: the classes of the first call hold
    first = chunks[0][y[chunks[0]] != "owl"]
    parts.partial_fit(X[first], y[first], classes=["owl", "cat", "dog"])
    rest = np.setdiff1d(np.arange(len(y)), first)
    parts.partial_fit(X[rest], y[rest])
    assert parts.classes_.tolist() == ["cat", "dog", "owl"]
    assert parts.predict_proba(X).shape == (len(y), 3)
    whole2 = FMClassifier(**kw).fit(np.concatenate([X[first], X[rest]]), np.concatenate([y[first], y[rest]]))
    params_equal(whole2.model_, parts.model_)
    with pytest.raises(ValueError, match="differ"):
        parts.partial_fit(X, y, classes=["cat", "dog"])
    with pytest.raises(ValueError, match="not one of the classes"):
        parts.partial_fit(X[:3], np.array(["emu", "cat", "dog"]))

    Xr, _ = data()
    yr = Xr[:, 0] * 2 - Xr[:, 1]
    whole = LRRegressor(**kw).fit(Xr, yr)
    parts = LRRegressor(**kw)
    for rows in np.array_split(np.arange(len(yr)), 5):
        parts.partial_fit(Xr[rows], yr[rows])
    params_equal(whole.model_, parts.model_)
    assert parts.n_iter_ == 1


def test_warm_start():
    X, y = data()
    kw = dict(shuffle=False, optimizer="adagrad")
    two = FFMClassifier(epochs=2, **kw).fit(X, y)
    warm = FFMClassifier(epochs=1, warm_start=True, **kw).fit(X, y)
    first = warm.model_
    warm.fit(X, y)        # continues: two epochs in all
    params_equal(two.model_, warm.model_)
    assert warm.model_.meta["parent"]["sha256"] is None   # a parent from memory
    cold = FFMClassifier(epochs=1, **kw).fit(X, y)
    cold.fit(X, y)        # starts over
    params_equal(first, cold.model_)


# -- weights ---------------------------------------------------------------------------

def test_sample_weight_equals_repeated_rows_for_full_batch_sgd():
    # SGD on one batch of every row, no L2: the gradient of a row of weight w
    # is w times its gradient, as w copies of the row give; the batch's mean
    # is over rows, hence the step sizes in the ratio of the row counts
    X, y = data(60, 4)
    w = np.random.default_rng(5).integers(0, 4, size=60)
    w[:2] = (1, 2)
    kw = dict(optimizer="sgd", epochs=1, shuffle=False, batch_size=10_000, l2=0.0, normalize=False)
    weighted = LRClassifier(learning_rate=0.1 * len(y) / w.sum(), **kw).fit(X, y, sample_weight=w)
    repeated = LRClassifier(learning_rate=0.1, **kw).fit(np.repeat(X, w, axis=0), np.repeat(y, w))
    for name in ("bias", "linear"):
        np.testing.assert_allclose(weighted.model_.params[name], repeated.model_.params[name], atol=1e-6)
    unweighted = LRClassifier(learning_rate=0.1 * len(y) / w.sum(), **kw).fit(X, y)
    assert not np.allclose(unweighted.model_.params["linear"], weighted.model_.params["linear"], atol=1e-4)


def test_class_weight():
    X, y = data()
    kw = dict(epochs=2, shuffle=False)
    a = FMClassifier(class_weight={1: 3.0}, **kw).fit(X, y)
    b = FMClassifier(**kw).fit(X, y, sample_weight=np.where(y == 1, 3.0, 1.0))
    params_equal(a.model_, b.model_)
    assert a.model_.meta["hyperparameters"]["class_weight"] == "1=3.0"
    from sklearn.utils.class_weight import compute_sample_weight

    Xm, ym = multiclass_data()
    c = FMClassifier(class_weight="balanced", **kw).fit(Xm, ym)
    d = FMClassifier(**kw).fit(Xm, ym, sample_weight=compute_sample_weight("balanced", ym))
    for name in c.model_.params:
        np.testing.assert_allclose(c.model_.params[name], d.model_.params[name], rtol=1e-5, atol=1e-6)
    e = FMClassifier(class_weight={"owl": 0.5}, **kw).fit(Xm, ym)
    assert e.model_.meta["hyperparameters"]["class_weight"] == "owl=0.5"
    with pytest.raises(ValueError, match="not one of the classes"):
        FMClassifier(class_weight={"emu": 2}).fit(Xm, ym)
    with pytest.raises(ValueError, match="partial_fit"):
        FMClassifier(class_weight="balanced").partial_fit(X, y, classes=[0, 1])
    with pytest.raises(ValueError, match="class_weight must be"):
        FMClassifier(class_weight="heavy").fit(X, y)
    with pytest.raises(ValueError, match="weight"):
        FMClassifier().fit(X, y, sample_weight=np.zeros(len(y)))


# -- validation and early stopping -----------------------------------------------------

def test_eval_set_and_early_stopping():
    X, y = data(400)
    Xv, yv = data(200, seed=9)
    clf = FFMClassifier(epochs=30, patience=2, learning_rate=0.5).fit(X, y, eval_set=(Xv, yv))
    training = clf.model_.meta["training"]
    assert training["valid_rows"] == 200
    assert clf.n_iter_ == training["epochs_run"] < 30
    assert clf.best_iteration_ == training["best_epoch"] <= clf.n_iter_
    same = FFMClassifier(epochs=30, patience=2, learning_rate=0.5).fit(X, y, eval_set=[(Xv, yv)])
    params_equal(clf.model_, same.model_)
    with pytest.raises(ValueError, match="eval_set or set validation_fraction"):
        FFMClassifier(patience=1).fit(X, y)
    with pytest.raises(ValueError, match="not both"):
        FFMClassifier(validation_fraction=0.2).fit(X, y, eval_set=(Xv, yv))
    with pytest.raises(ValueError, match="list of one"):
        FFMClassifier().fit(X, y, eval_set=[(Xv, yv), (Xv, yv)])
    # no early stopping without patience: every epoch runs, validated
    plain = FFMClassifier(epochs=3).fit(X, y, eval_set=(Xv, yv))
    assert plain.n_iter_ == 3 and plain.best_iteration_ is None
    assert "valid_logloss" in plain.model_.meta["training"]["history"][-1]


def test_validation_fraction():
    X, y = data(400)
    clf = FMClassifier(epochs=20, patience=1, validation_fraction=0.25, learning_rate=0.5).fit(X, y)
    training = clf.model_.meta["training"]
    assert training["valid_rows"] == 100 and training["train_rows"] == 300
    assert clf.n_iter_ <= 20 and clf.best_iteration_ is not None
    reg = FMRegressor(epochs=4, validation_fraction=0.1).fit(X, X[:, 0])
    assert reg.model_.meta["training"]["valid_rows"] == 40


# -- tasks -----------------------------------------------------------------------------

def test_multiclass():
    X, y = multiclass_data()
    clf = FFMClassifier(epochs=10).fit(X, y)
    assert clf.classes_.tolist() == ["cat", "dog", "owl"]
    assert clf.model_.spec.task == "multiclass" and clf.model_.spec.classes == ("cat", "dog", "owl")
    p = clf.predict_proba(X)
    assert p.shape == (len(y), 3)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    d = clf.decision_function(X)
    assert d.shape == (len(y), 3)
    np.testing.assert_array_equal(clf.predict(X), clf.classes_[np.argmax(d, axis=1)])
    assert clf.score(X, y) > 0.8
    # binary with labels other than 0/1: classes_[1] is the positive class
    yb = np.where(y == "cat", -5, 7)
    b = FFMClassifier(epochs=5).fit(X, yb)
    assert b.classes_.tolist() == [-5, 7] and b.model_.spec.task == "binary"
    np.testing.assert_array_equal(b.predict(X), np.where(b.decision_function(X) > 0, 7, -5))
    with pytest.raises(ValueError, match="one class"):
        FFMClassifier().fit(X, np.ones(len(y)))


def test_regression():
    X, _ = data(400)
    y = 1.5 * X[:, 0] - X[:, 1] + 0.5 * X[:, 2] * X[:, 3] + 3.0
    for cls in (LRRegressor, FMRegressor, FFMRegressor):
        reg = cls(epochs=30, normalize=False, learning_rate=0.1).fit(X, y)
        assert reg.model_.spec.task == "regression"
        assert reg.predict(X).shape == (400,)
        assert reg.score(X, y) > 0.8, cls.__name__
    with pytest.raises(ValueError):
        FMRegressor().fit(X, np.array(["a"] * 400))


# -- fields and sparse input -----------------------------------------------------------

def one_hot(n=400, seed=2):
    """Three categorical variables (4, 3, 5 values) one-hot encoded as CSR
    (float32 values, int32 indices), the field of every column, and labels."""
    rng = np.random.default_rng(seed)
    sizes = (4, 3, 5)
    codes = np.stack([rng.integers(0, s, size=n) for s in sizes], axis=1)
    offsets = np.cumsum((0,) + sizes[:-1])
    cols = (codes + offsets).astype(np.int32).reshape(-1)
    X = sp.csr_matrix((np.ones(cols.size, np.float32), cols, np.arange(0, cols.size + 1, 3)),
                      shape=(n, sum(sizes)))
    fields = np.repeat(np.arange(3), sizes)
    y = ((codes[:, 0] == 1) ^ (codes[:, 2] > 2)).astype(int)
    return X, fields, y


def test_fields_on_one_hot_csr():
    from fmcli.data.batch import Batch
    from fmcli.train import train

    X, fields, y = one_hot()
    clf = FFMClassifier(fields=fields, epochs=4, shuffle=False).fit(X, y)
    assert clf.model_.spec.n_fields == 3 and clf.model_.spec.n_features == X.shape[1]
    assert clf.model_.meta["estimator"]["fields"] == fields.tolist()
    # the same rows as a Batch of (field, feature, value) entries train the same model
    batch = Batch(y.astype(np.float32), X.indptr.astype(np.int64), fields[X.indices].astype(np.int32),
                  X.indices, X.data)
    direct = train(Config(model="ffm", epochs=4, shuffle=False, cache=False), batch)
    for name in direct.params:
        np.testing.assert_array_equal(direct.params[name], clf.model_.params[name])
    assert clf.score(X, y) > 0.9
    # one field per column otherwise
    plain = FFMClassifier(epochs=1).fit(X, y)
    assert plain.model_.spec.n_fields == X.shape[1]
    # the fields survive save/load and pickling
    again = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(again.decision_function(X), clf.decision_function(X))
    with pytest.raises(ValueError, match="one field per column"):
        FFMClassifier(fields=fields[:-1]).fit(X, y)
    # every sparse format, dense too, scores alike
    for form in (X.tocsc(), X.tocoo(), X.toarray()):
        np.testing.assert_array_equal(clf.decision_function(form), clf.decision_function(X))


# -- DataFrames ------------------------------------------------------------------------

def frame(n=300, seed=4):
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"city": rng.choice(["paris", "oslo", "lima"], size=n),
                       "price": rng.normal(size=n), "clicks": rng.integers(0, 4, size=n)})
    y = ((df["city"] == "oslo") | (df["price"] > 0.5)).astype(int).to_numpy()
    return df, y


def test_dataframe_input(tmp_path):
    df, y = frame()
    clf = FFMClassifier(epochs=8).fit(df, y)
    assert clf.feature_names_in_.tolist() == ["city", "price", "clicks"] and clf.n_features_in_ == 3
    assert clf.model_.meta["input"]["layout"] == "wide"
    assert clf.score(df, y) > 0.9
    with pytest.raises(ValueError, match="same order"):
        clf.predict(df[["price", "city", "clicks"]])
    with pytest.raises(ValueError, match="missing"):
        clf.predict(df[["city", "price"]])
    # pickling and save/load keep the schema
    again = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(again.decision_function(df), clf.decision_function(df))
    path = tmp_path / "frame.fm"
    clf.save(path)
    loaded = FFMClassifier.load(path)
    assert loaded.feature_names_in_.tolist() == ["city", "price", "clicks"]
    np.testing.assert_array_equal(loaded.decision_function(df), clf.decision_function(df))
    # fields as column names; polars frames read the same way
    sub = FFMClassifier(epochs=8, fields=["price", "city"]).fit(df, y)
    assert sub.model_.spec.n_fields == 2
    assert pickle.loads(pickle.dumps(sub)).fields == ["price", "city"]
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(sub)).predict(df), sub.predict(df))
    pl = pytest.importorskip("polars")
    polar = FFMClassifier(epochs=8).fit(pl.from_pandas(df), y)
    np.testing.assert_array_equal(polar.decision_function(pl.from_pandas(df)), clf.decision_function(df))
    # and a Parquet file of the same columns scores the same with the CLI's reader
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    table = pa.Table.from_pandas(df.assign(label=y.astype(np.float32)), preserve_index=False)
    pq.write_table(table.select(["clicks", "label", "city", "price"]), tmp_path / "rows.parquet")
    scores = np.concatenate([s for s, _ in iter_scores(load_model(path), str(tmp_path / "rows.parquet"))])
    np.testing.assert_allclose(scores, clf.decision_function(df), rtol=0, atol=1e-6)


# -- the model file shared with the command line ---------------------------------------

def write_libffm(path, X, labels, fields=None):
    """Dense rows as libffm text at full float32 precision (zeros left out)."""
    X = X.astype(np.float32)
    with open(path, "w") as f:
        for row, label in zip(X, labels):
            cols = np.flatnonzero(row)
            entries = " ".join(f"{j if fields is None else fields[j]}:{j}:{float(row[j])!r}" for j in cols)
            f.write(f"{label} {entries}\n")


@pytest.mark.parametrize("cls", [FFMClassifier, FwFMClassifier, LRRegressor])
def test_predictions_equal_the_clis(tmp_path, cls):
    X, y = data(150)
    target = y if cls is not LRRegressor else X[:, 0] - X[:, 3]
    est = cls(epochs=3).fit(X, target)
    model_path = tmp_path / "m.fm"
    est.save(model_path)
    rows = tmp_path / "rows.ffm"
    write_libffm(rows, X, target)
    scores = np.concatenate([s for s, _ in iter_scores(load_model(model_path), str(rows))])
    raw = est.decision_function(X) if cls is not LRRegressor else est.predict(X)
    np.testing.assert_allclose(scores, raw, rtol=0, atol=1e-6)
    out = ok(invoke("predict", model_path, rows)).stdout
    task = est.model_.spec.task
    expected = est.predict_proba(X)[:, 1] if task == "binary" else est.predict(X)
    assert out == format_predictions(task, expected)
    assert ok(invoke("inspect", model_path)).stdout


def test_multiclass_predictions_equal_the_clis(tmp_path):
    X, y = multiclass_data(90)
    est = FMClassifier(epochs=3).fit(X, y)
    est.save(tmp_path / "m.fm")
    write_libffm(tmp_path / "rows.ffm", X, y)
    scores = np.concatenate([s for s, _ in iter_scores(load_model(tmp_path / "m.fm"), str(tmp_path / "rows.ffm"))])
    np.testing.assert_allclose(scores, est.decision_function(X), rtol=0, atol=1e-6)
    out = ok(invoke("predict", tmp_path / "m.fm", tmp_path / "rows.ffm")).stdout
    assert out == format_predictions("multiclass", est.predict_proba(X))


def test_cli_trained_model_loads_as_an_estimator(tmp_path):
    X, y = data(200)
    fields = np.array([0, 0, 1, 1, 2])
    write_libffm(tmp_path / "train.ffm", X, y, fields)
    ok(invoke("train", "--model", "ffm", "-k", "4", "-t", "3", "--no-cache", tmp_path / "train.ffm",
              "-o", tmp_path / "cli.fm"))
    est = estimators.load(tmp_path / "cli.fm", fields=fields)
    assert type(est) is FFMClassifier
    np.testing.assert_array_equal(est.fields, fields)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(est)).decision_function(X), est.decision_function(X))
    assert est.classes_.tolist() == [0, 1] and est.n_features_in_ == 5
    assert est.get_params()["epochs"] == 3 and est.get_params()["k"] == 4
    expected = np.concatenate([s for s, _ in iter_scores(load_model(tmp_path / "cli.fm"),
                                                         str(tmp_path / "train.ffm"))])
    np.testing.assert_allclose(est.decision_function(X), expected, rtol=0, atol=1e-6)
    same = FFMClassifier.load(tmp_path / "cli.fm", fields=fields)
    np.testing.assert_array_equal(same.predict(X), est.predict(X))
    # it keeps training from the file's weights and optimizer state
    est.partial_fit(X, y)
    assert est.model_.meta["optimizer"]["steps"] == 4 * 200
    with pytest.raises(ValueError, match="FFMClassifier.load"):
        FMRegressor.load(tmp_path / "cli.fm")
    # a fitted, saved estimator comes back as itself
    reg = FMRegressor(epochs=2, k=3).fit(X, X[:, 0])
    reg.save(tmp_path / "reg.fm")
    back = estimators.load(tmp_path / "reg.fm")
    assert type(back) is FMRegressor and back.k == 3
    np.testing.assert_array_equal(back.predict(X), reg.predict(X))


def test_verbose(capsys):
    X, y = data()
    FMClassifier(epochs=2).fit(X, y)
    assert capsys.readouterr().err == ""
    FMClassifier(epochs=2, verbose=1).fit(X, y, eval_set=(X, y))
    err = capsys.readouterr().err.splitlines()
    assert [line.split(":")[0] for line in err if line.startswith("epoch")] == ["epoch 1", "epoch 2"]
    assert "valid_logloss" in err[-1]


def test_save_needs_a_fitted_estimator(tmp_path):
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        FMClassifier().save(tmp_path / "x.fm")


@pytest.mark.gpu
def test_device_cuda_trains_on_the_gpu(cuda):
    X, y = data()
    gpu = FFMClassifier(device="cuda", epochs=3, shuffle=False).fit(X, y)
    cpu = FFMClassifier(device="cpu", epochs=3, shuffle=False).fit(X, y)
    assert gpu.model_.meta["training"]["device"] == "cuda"
    np.testing.assert_allclose(gpu.predict_proba(X), cpu.predict_proba(X), atol=0.05)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(gpu)).predict(X), gpu.predict(X))


# -- without scikit-learn ---------------------------------------------------------------

def test_without_scikit_learn_one_clear_error():
    script = textwrap.dedent("""
        import sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "sklearn" or name.startswith("sklearn."):
                    raise ImportError(f"No module named {name!r}")
                return None

        sys.meta_path.insert(0, Block())
        import fmcli.cli            # the command line never needs it
        import fmcli, fmcli.train, fmcli.predict
        try:
            import fmcli.estimators
        except ImportError as exc:
            print("ERROR", exc)
        else:
            print("imported")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines == ["ERROR the fmcli estimators need scikit-learn, an optional extra: "
                     "pip install 'fm-ctr[sklearn]'"]


@pytest.mark.slow
def test_the_example_script_runs():
    """examples/sklearn_ctr.py, as the README points to it."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "examples" / "sklearn_ctr.py"
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "same predictions: True" in run.stdout and "FFM on the DataFrame" in run.stdout
