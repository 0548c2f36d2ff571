"""Training through the Python API: fmcli.config, fmcli.train, fmcli.predict, fmcli.model."""

import math

import numpy as np
import pytest

from fmcli.config import Config
from fmcli.errors import DataError, ConfigError, DivergenceError
from fmcli.metrics import logloss
from fmcli.model import inspect_header, load_model
from fmcli.modelfile import read_model_file
from fmcli.predict import predict
from fmcli.train import train

N_FIELDS = 6
PER_FIELD = 33  # 198 features


def planted_rows(n_rows: int, seed: int, strength: float = 1.5):
    """Rows with one feature per field and labels drawn from a fixed planted FM."""
    concept = np.random.default_rng(1234)
    w = concept.normal(0, 1.0, N_FIELDS * PER_FIELD)
    V = concept.normal(0, 0.7, (N_FIELDS * PER_FIELD, 3))
    rng = np.random.default_rng(seed)
    feats = np.arange(N_FIELDS) * PER_FIELD + rng.integers(0, PER_FIELD, size=(n_rows, N_FIELDS))
    Vs = V[feats]  # (n, fields, 3)
    pair = 0.5 * ((Vs.sum(1) ** 2).sum(1) - (Vs ** 2).sum((1, 2)))
    logits = strength * w[feats].sum(1) + pair
    labels = (rng.random(n_rows) < 1 / (1 + np.exp(-logits))).astype(int)
    return labels, feats


def write_ffm(path, n_rows, seed, value="1"):
    labels, feats = planted_rows(n_rows, seed)
    lines = [
        f"{y} " + " ".join(f"{f}:{j}:{value}" for f, j in enumerate(row))
        for y, row in zip(labels, feats)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    return {
        "train": write_ffm(d / "tr.ffm", 2000, 1),
        "valid": write_ffm(d / "va.ffm", 1000, 2),
        "tiny": write_ffm(d / "tiny.ffm", 100, 3),
        "dir": d,
    }


def labels_of(path):
    return np.array([float(line.split()[0]) for line in path.read_text().splitlines()])


def constant_logloss(train_path, valid_path):
    p = labels_of(train_path).mean()
    y = labels_of(valid_path)
    return logloss(y, np.full(y.shape, p))


def all_arrays(model):
    return {**{k: np.asarray(v) for k, v in model.params.items()},
            **{k + "_state": np.asarray(v) for k, v in model.state.items()}}


# --------------------------------------------------------------------------
# reproducibility
# --------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["lr", "fm", "ffm"])
def test_one_thread_is_bit_for_bit_reproducible(data, kind):
    cfg = Config(model=kind, epochs=3, seed=5, threads=1)
    a = train(cfg, data["train"], data["valid"])
    b = train(cfg, data["train"], data["valid"])
    arrays_a, arrays_b = all_arrays(a), all_arrays(b)
    assert arrays_a.keys() == arrays_b.keys()
    assert "bias" in arrays_a and "linear" in arrays_a
    for name in arrays_a:
        assert arrays_a[name].tobytes() == arrays_b[name].tobytes(), name
    ha, hb = a.meta["training"]["history"], b.meta["training"]["history"]
    assert [h["train_loss"] for h in ha] == [h["train_loss"] for h in hb]
    assert [h["valid_logloss"] for h in ha] == [h["valid_logloss"] for h in hb]


def test_different_seeds_differ(data):
    a = train(Config(epochs=2, seed=1), data["train"])
    b = train(Config(epochs=2, seed=2), data["train"])
    assert not np.array_equal(a.params["factors"], b.params["factors"])


def test_shuffle_off_still_depends_on_seed_only_through_init(data):
    a = train(Config(model="lr", epochs=2, seed=1, shuffle=False), data["train"])
    b = train(Config(model="lr", epochs=2, seed=2, shuffle=False), data["train"])
    # LR has no random initialisation: without shuffling the seed changes nothing.
    assert a.params["linear"].tobytes() == b.params["linear"].tobytes()
    c = train(Config(model="lr", epochs=2, seed=1, shuffle=True), data["train"])
    assert not np.array_equal(a.params["linear"], c.params["linear"])


def test_source_date_epoch_sets_created_at(data, tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    model = train(Config(epochs=1), data["train"])
    assert model.meta["created_at"] == "2023-11-14T22:13:20+00:00"
    model.save(tmp_path / "m.fm")
    assert inspect_header(tmp_path / "m.fm")["created_at"] == "2023-11-14T22:13:20+00:00"


def test_saved_files_are_identical_with_source_date_epoch(data, tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    cfg = Config(epochs=3, seed=5, threads=1)
    train(cfg, data["train"], data["valid"]).save(tmp_path / "a.fm")
    train(cfg, data["train"], data["valid"]).save(tmp_path / "b.fm")
    assert (tmp_path / "a.fm").read_bytes() == (tmp_path / "b.fm").read_bytes()


# --------------------------------------------------------------------------
# learning
# --------------------------------------------------------------------------

@pytest.mark.parametrize("optimizer, lr", [("adagrad", 0.2), ("sgd", 0.1)])
@pytest.mark.parametrize("kind", ["lr", "fm", "ffm"])
def test_training_learns(data, kind, optimizer, lr):
    history = []
    model = train(
        Config(model=kind, optimizer=optimizer, learning_rate=lr, epochs=5, seed=0),
        data["train"], data["valid"], on_epoch=history.append,
    )
    losses = [h.train_loss for h in history]
    assert [h.epoch for h in history] == [1, 2, 3, 4, 5]
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < losses[0] - 0.05
    base = constant_logloss(data["train"], data["valid"])
    t = model.meta["training"]
    assert t["valid_logloss"] < base - 0.05
    assert t["valid_auc"] > 0.7
    assert t["epochs_run"] == 5 and t["model_epoch"] == 5
    assert t["train_rows"] == 2000 and t["valid_rows"] == 1000
    # The logged validation loss is the model's loss on the validation file.
    p = predict(model, data["valid"])
    assert abs(logloss(labels_of(data["valid"]), p) - t["valid_logloss"]) < 1e-6
    assert model.meta["optimizer"] == {"name": optimizer, "state": optimizer == "adagrad",
                                       "slots": ["G"] if optimizer == "adagrad" else [], "steps": 5 * 2000}
    assert model.spec.n_features == N_FIELDS * PER_FIELD
    assert model.spec.n_fields == N_FIELDS


def test_kinds_have_the_right_arrays(data):
    shapes = {
        kind: {n: a.shape for n, a in train(Config(model=kind, k=3, epochs=1), data["train"]).params.items()}
        for kind in ("lr", "fm", "ffm")
    }
    n = N_FIELDS * PER_FIELD
    assert shapes["lr"] == {"bias": (1,), "linear": (n,)}
    assert shapes["fm"] == {"bias": (1,), "linear": (n,), "factors": (n, 3)}
    assert shapes["ffm"] == {"bias": (1,), "linear": (n,), "factors": (n, N_FIELDS, 3)}


def test_libffm_exact_model_has_only_factors(data, tmp_path):
    model = train(Config(model="ffm", use_bias=False, use_linear=False, epochs=2), data["train"])
    assert set(model.params) == {"factors"}
    model.save(tmp_path / "m.fm")
    _, arrays = read_model_file(str(tmp_path / "m.fm"))
    assert set(arrays) == {"factors", "factors_state"}
    loaded = load_model(tmp_path / "m.fm")
    assert not loaded.spec.use_bias and not loaded.spec.use_linear
    np.testing.assert_array_equal(predict(loaded, data["valid"]), predict(model, data["valid"]))


def test_sgd_has_no_optimizer_state(data, tmp_path):
    model = train(Config(model="fm", optimizer="sgd", learning_rate=0.05, epochs=1), data["train"])
    assert model.state == {}
    model.save(tmp_path / "m.fm")
    _, arrays = read_model_file(str(tmp_path / "m.fm"))
    assert set(arrays) == {"bias", "linear", "factors"}


# --------------------------------------------------------------------------
# auto-stop
# --------------------------------------------------------------------------

def test_auto_stop_keeps_best_epoch(data):
    cfg = Config(model="ffm", k=8, epochs=30, learning_rate=1.0, auto_stop=True, seed=0)
    logs = []
    model = train(cfg, data["tiny"], data["valid"], log=logs.append)
    t = model.meta["training"]
    history = t["history"]
    va = [h["valid_logloss"] for h in history]
    best = t["best_epoch"]
    # Validation loss rose (this setting overfits quickly), so training stopped early.
    assert 1 < best and t["epochs_run"] == best + 1 < 30
    assert va[-1] >= va[best - 1]
    assert best == int(np.argmin(va)) + 1
    assert t["model_epoch"] == best
    assert t["valid_logloss"] == va[best - 1]
    assert any("keeping epoch" in m for m in logs)
    # The model is the best epoch's: its validation loss is the logged best ...
    p = predict(model, data["valid"])
    assert abs(logloss(labels_of(data["valid"]), p) - va[best - 1]) < 1e-6
    # ... and it is exactly the model a run of `best` epochs produces.
    plain = train(cfg.replace(auto_stop=False, epochs=best), data["tiny"], data["valid"])
    for name, a in all_arrays(plain).items():
        assert all_arrays(model)[name].tobytes() == a.tobytes(), name


def test_snapshot_is_written_over_an_earlier_one():
    # Early stopping keeps the best epoch's arrays; a later best overwrites
    # them in place (fresh memory costs page faults on every copy).
    from fmcli.cpu import CpuBackend

    backend = CpuBackend(Config(k=4), 50, 3, np.random.default_rng(0))
    first = backend.snapshot()
    assert all(s is not a and np.array_equal(s, a) for s, a in zip(first, backend.arrays()))
    backend.F[...] += 1.0
    again = backend.snapshot(first)
    assert again is first and np.array_equal(first[2], backend.F)
    backend.F[...] += 1.0   # the snapshot is a copy, not a view
    assert not np.array_equal(first[2], backend.F)
    # an `into` of other shapes is not written to
    other = CpuBackend(Config(k=8), 50, 3, np.random.default_rng(0)).snapshot()
    before = [a.copy() for a in other]
    fresh = backend.snapshot(other)
    assert fresh is not other and all(np.array_equal(a, b) for a, b in zip(other, before))
    assert np.array_equal(fresh[2], backend.F)


def test_auto_stop_on_first_epoch_rise(data):
    # Stopping right after epoch 2 keeps epoch 1's weights.
    cfg = Config(model="ffm", k=8, epochs=30, learning_rate=4.0, auto_stop=True, seed=0)
    model = train(cfg, data["tiny"], data["valid"])
    t = model.meta["training"]
    assert (t["best_epoch"], t["model_epoch"], t["epochs_run"]) == (1, 1, 2)
    plain = train(cfg.replace(auto_stop=False, epochs=1), data["tiny"])
    assert model.params["factors"].tobytes() == plain.params["factors"].tobytes()
    assert model.params["linear"].tobytes() == plain.params["linear"].tobytes()


def test_auto_stop_without_rise_runs_all_epochs(data):
    model = train(Config(epochs=3, auto_stop=True, learning_rate=0.05), data["train"], data["valid"])
    t = model.meta["training"]
    assert t["epochs_run"] == 3 and t["model_epoch"] == 3 == t["best_epoch"]


def test_auto_stop_needs_validation(data):
    with pytest.raises(ConfigError):
        train(Config(auto_stop=True), data["train"])


# --------------------------------------------------------------------------
# persistence
# --------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["lr", "fm", "ffm"])
def test_save_load_predict_roundtrip(data, tmp_path, kind):
    model = train(Config(model=kind, k=5, epochs=2), data["train"])
    path = tmp_path / "m.fm"
    model.save(path)
    loaded = load_model(path)
    assert loaded.spec == model.spec
    for name in model.params:
        np.testing.assert_array_equal(np.asarray(loaded.params[name]), model.params[name])
    for name in model.state:
        np.testing.assert_array_equal(np.asarray(loaded.state[name]), model.state[name])
    assert set(loaded.state) == set(model.state) and model.state
    expected = predict(model, data["valid"])
    got = predict(loaded, data["valid"])
    np.testing.assert_array_equal(got, expected)
    assert got.shape == (1000,) and np.all((got > 0) & (got < 1))
    np.testing.assert_array_equal(predict(load_model(path, mmap=False), data["valid"]), expected)
    assert loaded.meta["training"]["epochs_run"] == 2


def test_save_without_state(data, tmp_path):
    model = train(Config(model="ffm", epochs=1), data["train"])
    model.save(tmp_path / "with.fm")
    model.save(tmp_path / "without.fm", include_state=False)
    _, with_state = read_model_file(str(tmp_path / "with.fm"))
    _, without = read_model_file(str(tmp_path / "without.fm"))
    assert set(with_state) == {"bias", "linear", "factors", "bias_state", "linear_state", "factors_state"}
    assert set(without) == {"bias", "linear", "factors"}
    assert load_model(tmp_path / "without.fm").state == {}
    assert (tmp_path / "without.fm").stat().st_size < (tmp_path / "with.fm").stat().st_size
    np.testing.assert_array_equal(
        predict(load_model(tmp_path / "without.fm"), data["valid"]), predict(model, data["valid"])
    )


@pytest.mark.parametrize("kind", ["lr", "fm", "ffm"])
def test_unseen_ids_contribute_nothing(data, tmp_path, kind):
    model = train(Config(model=kind, epochs=2, normalize=False), data["train"])
    n = model.spec.n_features
    base = ["1 0:3:1 1:40:0.5 3:120:2", "0 2:70:1", "1"]
    extra = [
        f"1 0:3:1 1:40:0.5 3:120:2 4:{n}:1",
        f"0 2:70:1 5:{n + 1000}:3 0:2147483647:1",
        f"1 1:{n}:1",
    ]
    if kind == "ffm":
        # a field beyond the model's fields, with a known feature
        extra[0] += f" {N_FIELDS}:5:1"
        extra[1] += " 2147483647:6:1"
    (tmp_path / "base.ffm").write_text("\n".join(base) + "\n")
    (tmp_path / "extra.ffm").write_text("\n".join(extra) + "\n")
    p_base = predict(model, tmp_path / "base.ffm")
    p_extra = predict(model, tmp_path / "extra.ffm")
    assert np.all(np.isfinite(p_extra))
    np.testing.assert_array_equal(p_extra, p_base)
    # A validation file with unseen ids does not break training either.
    model = train(Config(model=kind, epochs=1), data["train"], tmp_path / "extra.ffm")
    assert math.isfinite(model.meta["training"]["valid_logloss"])


def test_unseen_feature_changes_score_when_seen(data, tmp_path):
    # Control for the test above: a known feature does change the score.
    model = train(Config(model="ffm", epochs=2, normalize=False), data["train"])
    (tmp_path / "a.ffm").write_text("1 0:3:1\n1 0:3:1 4:140:1\n")
    p = predict(model, tmp_path / "a.ffm")
    assert p[0] != p[1]


# --------------------------------------------------------------------------
# divergence and configuration errors
# --------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["lr", "fm", "ffm"])
def test_divergence_raises(data, tmp_path, kind):
    big = write_ffm(tmp_path / "big.ffm", 300, 4, value="1000")
    before = sorted(p.name for p in tmp_path.iterdir())
    cfg = Config(model=kind, optimizer="sgd", learning_rate=1e30, normalize=False, epochs=3)
    with pytest.raises(DivergenceError, match="diverged in epoch 1"):
        train(cfg, big)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("changes", [
    {"k": 0},
    {"k": -1},
    {"k": 1025},
    {"epochs": 0},
    {"learning_rate": -0.1},
    {"learning_rate": 0.0},
    {"learning_rate": float("nan")},
    {"learning_rate": float("inf")},
    {"l2": -1e-5},
    {"model": "svm"},
    {"optimizer": "rmsprop"},
    {"task": "ranking"},
    {"optimizer": "ftrl", "learning_rate": 0.1},
    {"l1": 0.1},
    {"optimizer": "ftrl", "lr_schedule": "cosine"},
    {"optimizer": "ftrl", "warmup_steps": 10},
    {"optimizer": "ftrl", "ftrl_alpha": 0.0},
    {"task": "regression", "label_smoothing": 0.1},
    {"task": "regression", "class_weight": "balanced"},
    {"label_smoothing": 1.0},
    {"batch_size": 0},
    {"class_weight": "1=x"},
    {"class_weight": "1=-2"},
    {"early_stopping_metric": "rmse"},
    {"task": "multiclass", "early_stopping_metric": "auc"},
    {"early_stopping_metric": "f1"},
    {"auto_stop": True, "patience": 2},
    {"exact_adagrad": True, "optimizer": "sgd"},
    {"adam_beta1": 1.0},
    {"clip_norm": -1.0},
    {"lr_schedule": "step"},
    {"on_nonfinite": "ignore"},
    {"format": "csv"},
    {"threads": -1},   # 0 is auto (fmcli.config.threads_for)
    {"seed": -1},
    {"init_scale": -1.0},
    {"dtype": "float16"},
])
def test_config_validation(changes):
    with pytest.raises(ConfigError) as info:
        Config(**changes)
    assert info.value.exit_code == 78
    with pytest.raises(ConfigError):
        Config().replace(**changes)


def test_config_roundtrip_and_defaults():
    cfg = Config(model="fm", k=8, learning_rate=0.05)
    assert Config.from_dict({**cfg.to_dict(), "unknown_key": 1}) == cfg
    d = Config()
    assert (d.model, d.k, d.epochs, d.step_size, d.optimizer) == ("ffm", 4, 15, 0.2, "adagrad")


def test_empty_training_file(tmp_path):
    (tmp_path / "empty.ffm").write_text("# nothing\n")
    with pytest.raises(DataError, match="no data rows") as info:
        train(Config(epochs=1), tmp_path / "empty.ffm")
    assert info.value.exit_code == 65


def test_ffm_needs_fields(tmp_path):
    (tmp_path / "a.svm").write_text("1 1:1 2:1\n0 3:1\n")
    with pytest.raises(ConfigError, match="libsvm"):
        train(Config(model="ffm", epochs=1), tmp_path / "a.svm")
    model = train(Config(model="fm", epochs=1), tmp_path / "a.svm")
    assert model.spec.n_features == 4 and model.spec.n_fields == 1


# --------------------------------------------------------------------------
# threads
# --------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["fm", "ffm"])
def test_two_threads_close_to_one(data, kind):
    one = train(Config(model=kind, threads=1, epochs=5), data["train"], data["valid"])
    two = train(Config(model=kind, threads=2, epochs=5), data["train"], data["valid"])
    l1 = one.meta["training"]["valid_logloss"]
    l2 = two.meta["training"]["valid_logloss"]
    assert math.isfinite(l2)
    assert abs(l2 - l1) <= 0.02 * l1
    np.testing.assert_allclose(
        predict(two, data["valid"], threads=2), predict(two, data["valid"], threads=1), rtol=1e-6
    )


def test_public_api_functions_stay_callable(data):
    import subprocess
    import sys

    code = (
        "import fmcli.predict, fmcli.train\n"       # submodules imported first
        "import fmcli\n"
        f"m = fmcli.train(fmcli.Config(model='lr', epochs=1, cache=False), {str(data['train'])!r})\n"
        f"a = fmcli.predict(m, {str(data['valid'])!r})\n"
        f"b = fmcli.predict(m, {str(data['valid'])!r})\n"
        "assert (a == b).all() and a.size > 0\n"
        "from fmcli import predict, train\n"
        "assert callable(predict) and callable(train)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
