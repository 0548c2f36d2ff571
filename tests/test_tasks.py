"""Tasks, optimizers and training controls end to end: the Python API and the
`fm` command line on small generated files."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from fmcli.config import Config
from fmcli.model import load_model
from fmcli.predict import predict
from fmcli.train import train
from fmcli.cli import cli
from fmcli.errors import ConfigError, DataError
from fmcli.metrics import accuracy
from fmcli.model import Model

N_FIELDS, PER_FIELD = 5, 8
CLASSES = ("bird", "cat", "dog")


def features(n_rows, seed):
    rng = np.random.default_rng(seed)
    return np.arange(N_FIELDS) * PER_FIELD + rng.integers(0, PER_FIELD, size=(n_rows, N_FIELDS))


def write(path, labels, feats, weights=None):
    lines = []
    for i, (y, row) in enumerate(zip(labels, feats)):
        label = f"{y}" if weights is None else f"{y}:{weights[i]:g}"
        lines.append(label + " " + " ".join(f"{f}:{j}:1" for f, j in enumerate(row)))
    path.write_text("\n".join(lines) + "\n")
    return path


def binary_file(path, n_rows, seed, weights=None):
    concept = np.random.default_rng(7).normal(0, 1.5, N_FIELDS * PER_FIELD)
    feats = features(n_rows, seed)
    rng = np.random.default_rng(seed + 100)
    y = (rng.random(n_rows) < 1 / (1 + np.exp(-concept[feats].sum(1)))).astype(int)
    return write(path, y, feats, weights)


def multiclass_file(path, n_rows, seed):
    """The class is decided by which of three feature groups dominates."""
    concept = np.random.default_rng(8).normal(0, 2.0, (3, N_FIELDS * PER_FIELD))
    feats = features(n_rows, seed)
    y = np.argmax(concept[:, feats].sum(2), axis=0)
    return write(path, [CLASSES[c] for c in y], feats)


def regression_file(path, n_rows, seed, w, b):
    feats = features(n_rows, seed)
    y = w[feats].sum(1) + b
    return write(path, [f"{v:.6f}" for v in y], feats)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("tasks")
    w = np.random.default_rng(5).normal(0, 1, N_FIELDS * PER_FIELD)
    return {
        "dir": d,
        "bin": binary_file(d / "bin.ffm", 1200, 1),
        "bin_va": binary_file(d / "bin_va.ffm", 400, 2),
        "multi": multiclass_file(d / "multi.ffm", 1500, 3),
        "multi_va": multiclass_file(d / "multi_va.ffm", 500, 4),
        "reg": regression_file(d / "reg.ffm", 1500, 5, w, 0.7),
        "reg_va": regression_file(d / "reg_va.ffm", 300, 6, w, 0.7),
        "w": w,
    }


def fm(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="fm")


def arrays_equal(a: Model, b: Model) -> bool:
    return a.params.keys() == b.params.keys() and all(
        np.array_equal(a.params[k], b.params[k]) for k in a.params)


# -- every cell of the matrix trains and predicts through the API -------------

@pytest.mark.parametrize("optimizer", ["sgd", "adagrad", "adam", "ftrl"])
@pytest.mark.parametrize("task", ["binary", "regression", "multiclass"])
@pytest.mark.parametrize("kind", ["lr", "fm", "ffm", "fwfm"])
def test_every_cell_trains_and_learns(files, kind, task, optimizer):
    key = {"binary": "bin", "regression": "reg", "multiclass": "multi"}[task]
    lr = {} if optimizer == "ftrl" else {"learning_rate": {"sgd": 0.05, "adagrad": 0.2, "adam": 0.01}[optimizer]}
    model = train(Config(model=kind, task=task, optimizer=optimizer, epochs=4, **lr), files[key],
                  files[key + "_va"])
    t = model.meta["training"]
    history = t["history"]
    assert model.spec.task == task and t["epochs_run"] == 4
    first, last = history[0], history[-1]
    assert all(np.isfinite(h["train_loss"]) for h in history)
    p = predict(model, files[key + "_va"])
    if task == "multiclass":
        assert p.shape == (400 + 100, 3)
        np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-6)
        assert model.spec.classes == CLASSES
        assert last["valid_accuracy"] > 0.6
    elif task == "binary":
        assert last["valid_auc"] > 0.7
    else:
        assert last["valid_rmse"] < 0.8 * first["valid_rmse"] or last["valid_rmse"] < 0.5


# -- regression ----------------------------------------------------------------

def test_regression_recovers_linear_weights(files):
    model = train(Config(model="lr", task="regression", optimizer="adagrad", learning_rate=0.5, epochs=60,
                         l2=0.0, normalize=False, seed=1), files["reg"])
    w_true, b_true = files["w"], 0.7
    # one-hot fields: the bias and one weight per field are only identified up to
    # a constant per field; compare predictions of the parameters instead
    lin = model.params["linear"].astype(np.float64)
    feats = features(200, 9)
    got = lin[feats].sum(1) + float(model.params["bias"][0])
    np.testing.assert_allclose(got, w_true[feats].sum(1) + b_true, atol=0.02)
    assert model.meta["training"]["history"][-1]["train_loss"] < 1e-4


def test_regression_predictions_are_values(files, tmp_path):
    out = tmp_path / "p.txt"
    assert fm("train", "--task", "regression", "--model", "lr", "--no-norm", "-t", "20", "-o",
              tmp_path / "r.fm", files["reg"]).exit_code == 0
    res = fm("predict", tmp_path / "r.fm", files["reg_va"], "-o", out)
    assert res.exit_code == 0, res.output
    assert "rmse = " in res.stderr and "mae = " in res.stderr
    values = np.loadtxt(out)
    truth = np.array([float(line.split()[0]) for line in files["reg_va"].read_text().splitlines()])
    assert values.shape == truth.shape and np.sqrt(np.mean((values - truth) ** 2)) < 0.5


# -- multiclass -----------------------------------------------------------------

def test_multiclass_cli_probabilities_and_top1(files, tmp_path):
    model_path = tmp_path / "m.fm"
    res = fm("train", "--task", "multiclass", "--model", "fm", "-t", "5", "-p", files["multi_va"], "-o",
             model_path, files["multi"])
    assert res.exit_code == 0, res.output
    assert "va_accuracy" in res.stderr
    header = json.loads(fm("inspect", "--json", model_path).stdout)["header"]
    assert header["model"]["classes"] == list(CLASSES) and header["model"]["n_classes"] == 3
    res = fm("predict", model_path, files["multi_va"])
    rows = np.array([[float(x) for x in line.split()] for line in res.stdout.splitlines()])
    assert rows.shape == (500, 3)
    np.testing.assert_allclose(rows.sum(1), 1.0, atol=1e-5)
    assert "accuracy = " in res.stderr
    top = fm("predict", "--top1", model_path, files["multi_va"]).stdout.split()
    truth = [line.split()[0] for line in files["multi_va"].read_text().splitlines()]
    assert top == [CLASSES[i] for i in rows.argmax(1)]
    assert np.mean(np.array(top) == np.array(truth)) > 0.7
    idx = np.array([CLASSES.index(t) for t in truth])
    assert accuracy(idx, rows) == pytest.approx(np.mean(np.array(top) == np.array(truth)))


def test_multiclass_unknown_label_is_a_data_error(files, tmp_path):
    bad = tmp_path / "bad.ffm"
    bad.write_text(files["multi_va"].read_text().replace("cat", "cow", 1))
    line = next(i for i, l in enumerate(bad.read_text().splitlines(), 1) if l.startswith("cow"))
    train(Config(model="lr", task="multiclass", epochs=1), files["multi"]).save(tmp_path / "m.fm")
    res = fm("predict", tmp_path / "m.fm", bad)
    assert res.exit_code == 65
    assert f"bad.ffm:{line}: label 'cow' is not one of the model's classes" in res.stderr
    with pytest.raises(DataError, match="is not one of the model's classes"):
        train(Config(model="lr", task="multiclass", epochs=1), files["multi"], bad)


def test_top1_needs_a_multiclass_model(files, tmp_path):
    train(Config(model="lr", epochs=1), files["bin"]).save(tmp_path / "b.fm")
    res = fm("predict", "--top1", tmp_path / "b.fm", files["bin_va"])
    assert res.exit_code == 2 and "multiclass" in res.stderr


def test_two_class_softmax_learns_like_logistic(files):
    """Softmax over two classes predicts about what the logistic model does."""
    multi = train(Config(model="fm", task="multiclass", epochs=6, seed=3), files["bin"], files["bin_va"])
    binary = train(Config(model="fm", task="binary", epochs=6, seed=3), files["bin"], files["bin_va"])
    assert multi.spec.classes == ("0", "1")
    p_multi = predict(multi, files["bin_va"])[:, 1]
    p_bin = predict(binary, files["bin_va"])
    assert np.corrcoef(p_multi, p_bin)[0, 1] > 0.95
    assert abs(multi.meta["training"]["valid_logloss"] - binary.meta["training"]["valid_logloss"]) < 0.03


# -- task detection ---------------------------------------------------------------

def test_task_auto(files, tmp_path):
    assert train(Config(model="lr", task="auto", epochs=1), files["bin"]).spec.task == "binary"
    assert train(Config(model="lr", task="auto", epochs=1), files["reg"]).spec.task == "regression"
    assert train(Config(model="lr", task="auto", epochs=1), files["multi"]).spec.task == "multiclass"
    three = write(tmp_path / "three.ffm", [0, 1, 2, 1], features(4, 1))
    res = fm("train", "--task", "auto", "--model", "lr", "-o", tmp_path / "x.fm", three)
    assert res.exit_code == 78 and "--task multiclass or --task regression" in res.stderr
    assert not (tmp_path / "x.fm").exists()


def test_binary_task_rejects_other_labels_with_file_and_line(files, tmp_path):
    three = write(tmp_path / "three.ffm", [0, 1, 2, 1], features(4, 1))
    res = fm("train", "--model", "lr", "-o", tmp_path / "x.fm", three)
    assert res.exit_code == 65 and "three.ffm:3:" in res.stderr


# -- weights ------------------------------------------------------------------------

def test_zero_weight_rows_are_no_ops_for_sgd(files, tmp_path):
    n = 1200
    weights = np.where(np.arange(n) % 3 == 0, 0.0, 1.0)
    text = files["bin"].read_text().splitlines()
    weighted = tmp_path / "w.ffm"
    weighted.write_text("\n".join(
        (line.split(" ", 1)[0] + f":{w:g} " + line.split(" ", 1)[1]) for line, w in zip(text, weights)) + "\n")
    kept = tmp_path / "kept.ffm"
    kept.write_text("\n".join(line for line, w in zip(text, weights) if w) + "\n")
    cfg = Config(model="ffm", optimizer="sgd", l2=0.0, epochs=2, shuffle=False, dtype="float64")
    a = train(cfg, weighted)
    b = train(cfg, kept)
    for name in a.params:
        np.testing.assert_allclose(a.params[name], b.params[name], rtol=1e-6, atol=1e-7)


def test_weights_file_equals_inline_weights(files, tmp_path):
    rng = np.random.default_rng(0)
    w = rng.uniform(0.1, 3, 1200).round(3)
    inline = binary_file(tmp_path / "inline.ffm", 1200, 1, weights=w)
    (tmp_path / "w.txt").write_text("\n".join(f"{x:g}" for x in w) + "\n")
    cfg = Config(model="fm", epochs=2)
    a = train(cfg, inline)
    b = train(cfg, files["bin"], weights=tmp_path / "w.txt")
    c = train(cfg, files["bin"])
    assert arrays_equal(a, b) and not arrays_equal(a, c)
    with pytest.raises(ConfigError, match="not both"):
        train(cfg, inline, weights=tmp_path / "w.txt")
    res = fm("train", "--model", "fm", "-t", "1", "--weights", tmp_path / "w.txt", "-o", tmp_path / "m.fm",
             files["bin_va"])
    assert res.exit_code == 65 and "1200 weights but" in res.stderr and "400 rows" in res.stderr


def test_class_weight_equals_row_weights(files, tmp_path):
    labels = np.array([int(l.split()[0]) for l in files["bin"].read_text().splitlines()])
    inline = binary_file(tmp_path / "cw.ffm", 1200, 1, weights=np.where(labels == 1, 2.5, 1.0))
    a = train(Config(model="fm", epochs=2, class_weight="1=2.5"), files["bin"])
    b = train(Config(model="fm", epochs=2), inline)
    assert arrays_equal(a, b)
    balanced = train(Config(model="fm", epochs=2, class_weight="balanced"), files["bin"])
    assert not arrays_equal(a, balanced)
    res = fm("train", "--model", "lr", "--task", "multiclass", "--class-weight", "cow=2", "-o",
             tmp_path / "m.fm", files["multi"])
    assert res.exit_code == 78 and "'cow' is not a class" in res.stderr


# -- FTRL, schedules and the other controls ---------------------------------------------

def test_ftrl_l1_zeros_are_counted_in_the_model_file(files, tmp_path):
    path = tmp_path / "f.fm"
    res = fm("train", "--model", "ffm", "--optimizer", "ftrl", "--l1", "100", "-t", "3", "-o", path, files["bin"])
    assert res.exit_code == 0, res.output
    model = load_model(path)
    zeros = model.meta["training"]["zero_weights"]
    assert np.count_nonzero(model.params["linear"] == 0) == N_FIELDS * PER_FIELD
    assert zeros == model.count_zeros() >= N_FIELDS * PER_FIELD
    assert "exactly 0" in fm("inspect", path).stdout
    light = train(Config(model="ffm", optimizer="ftrl", l1=0.0, epochs=3), files["bin"])
    assert np.count_nonzero(light.params["linear"] == 0) < N_FIELDS * PER_FIELD // 2


def test_every_hyperparameter_is_recorded(files, tmp_path):
    path = tmp_path / "m.fm"
    res = fm("train", "--model", "fwfm", "--optimizer", "adam", "--batch-size", "16", "--lr-schedule", "cosine",
             "--warmup-steps", "10", "--clip-norm", "1.5", "--label-smoothing", "0.05", "--l2-bias", "1e-4",
             "--l2-factors", "1e-3", "--adam-beta2", "0.99", "-r", "0.05", "-t", "3", "-p", files["bin_va"], "-o", path,
             files["bin"])
    assert res.exit_code == 0, res.output
    header = load_model(path).meta
    hp = header["hyperparameters"]
    assert set(Config().to_dict()) <= set(hp)
    assert (hp["batch_size"], hp["lr_schedule"], hp["warmup_steps"], hp["clip_norm"], hp["label_smoothing"],
            hp["l2_bias"], hp["l2_factors"], hp["adam_beta2"], hp["learning_rate"]) == (
        16, "cosine", 10, 1.5, 0.05, 1e-4, 1e-3, 0.99, 0.05)
    assert header["optimizer"] == {"name": "adam", "state": True, "slots": ["m", "v"], "steps": 3 * 75}
    assert load_model(path).state["factors"].shape == (2, N_FIELDS * PER_FIELD, 4)
    assert header["training"]["valid_auc"] > 0.7


def test_meaningless_combinations_are_refused(files, tmp_path):
    for args, text in ((["--optimizer", "ftrl", "-r", "0.1"], "--ftrl-alpha"),
                       (["--l1", "0.1"], "--optimizer ftrl"),
                       (["--optimizer", "ftrl", "--lr-schedule", "cosine"], "--lr-schedule"),
                       (["--task", "regression", "--label-smoothing", "0.1"], "not regression"),
                       (["--early-stopping-metric", "rmse", "-p", files["bin_va"], "--patience", "2"],
                        "not defined for the binary task")):
        res = fm("train", *args, "-o", tmp_path / "m.fm", files["bin"])
        assert res.exit_code == 78, (args, res.output)
        assert text in res.stderr and res.stderr.count("\n") == 1
        assert not (tmp_path / "m.fm").exists()


def test_patience_keeps_the_best_epoch_of_the_chosen_metric(files):
    history = []
    model = train(Config(model="ffm", learning_rate=0.5, epochs=12, patience=2, early_stopping_metric="auc"),
                  files["bin"], files["bin_va"], on_epoch=history.append)
    t = model.meta["training"]
    aucs = [h.valid["auc"] for h in history]
    best = int(np.argmax(aucs)) + 1
    assert t["model_epoch"] == best == t["best_epoch"] and t["early_stopping_metric"] == "auc"
    assert t["epochs_run"] == len(history)
    if len(history) < 12:
        assert len(history) - best == 2
    p = predict(model, files["bin_va"])
    labels = np.array([int(l.split()[0]) for l in files["bin_va"].read_text().splitlines()])
    from fmcli.metrics import auc
    assert auc(labels, p) == pytest.approx(aucs[best - 1], abs=1e-6)


# -- divergence ---------------------------------------------------------------------------

def test_divergence_names_the_row_and_keeps_the_old_model(files, tmp_path):
    path = tmp_path / "m.fm"
    assert fm("train", "--model", "lr", "-t", "1", "-o", path, files["bin"]).exit_code == 0
    before = path.read_bytes()
    res = fm("train", "--model", "ffm", "--optimizer", "sgd", "-r", "1e30", "--no-norm", "-t", "3", "-o", path,
             files["bin"])
    assert res.exit_code == 1
    assert "training diverged in epoch" in res.stderr and "bin.ffm:" in res.stderr
    assert "--on-nonfinite skip" in res.stderr and "Traceback" not in res.output
    assert path.read_bytes() == before


def test_nonfinite_rows_can_be_skipped_and_counted(tmp_path):
    lines = [f"{i % 2} 0:{i % 7}:1 1:{7 + i % 5}:1" for i in range(60)]
    lines[17] = "1 2:20:3e38"
    data = tmp_path / "huge.ffm"
    data.write_text("\n".join(lines) + "\n")
    cfg = Config(model="lr", optimizer="sgd", learning_rate=0.1, normalize=False, epochs=3, shuffle=False)
    with pytest.raises(Exception, match="huge.ffm:18: training diverged in epoch 2"):
        train(cfg, data)
    model = train(cfg.replace(on_nonfinite="skip"), data)
    assert model.meta["training"]["nonfinite_rows"] == 2
    assert np.isfinite(model.params["linear"]).all()
