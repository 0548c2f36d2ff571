"""The `fm` command line, driven through click's CliRunner."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from fmcli import __version__
from fmcli.cli import cli
from fmcli.model import load_model
from fmcli.predict import predict as api_predict


def write_ffm(path, n_rows, seed, n_fields=6, per_field=33):
    """Small libffm file, labels from a fixed planted linear + pairwise model."""
    concept = np.random.default_rng(99)
    w = concept.normal(0, 1.5, n_fields * per_field)
    V = concept.normal(0, 0.7, (n_fields * per_field, 3))
    rng = np.random.default_rng(seed)
    feats = np.arange(n_fields) * per_field + rng.integers(0, per_field, size=(n_rows, n_fields))
    Vs = V[feats]
    logits = w[feats].sum(1) + 0.5 * ((Vs.sum(1) ** 2).sum(1) - (Vs ** 2).sum((1, 2)))
    labels = (rng.random(n_rows) < 1 / (1 + np.exp(-logits))).astype(int)
    lines = [f"{y} " + " ".join(f"{f}:{j}:1" for f, j in enumerate(row)) for y, row in zip(labels, feats)]
    path.write_text("\n".join(lines) + "\n")
    return path


def ffm_to_svm(src, dst):
    out = []
    for line in src.read_text().splitlines():
        label, *toks = line.split()
        out.append(" ".join([label] + [t.split(":", 1)[1] for t in toks]))
    dst.write_text("\n".join(out) + "\n")
    return dst


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("clidata")
    return {"train": write_ffm(d / "tr.ffm", 1500, 1), "valid": write_ffm(d / "va.ffm", 500, 2)}


@pytest.fixture
def runner():
    return CliRunner()


def fm(runner, *args, **kwargs):
    return runner.invoke(cli, [str(a) for a in args], prog_name="fm", **kwargs)


def no_traceback(result):
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception


# --------------------------------------------------------------------------
# end to end
# --------------------------------------------------------------------------

def test_train_predict_inspect(runner, data, tmp_path):
    model = tmp_path / "m.fm"
    res = fm(runner, "train", "-t", "3", "-p", data["valid"], "-o", model, data["train"])
    assert res.exit_code == 0, res.stderr
    assert res.stdout == ""
    assert model.is_file()
    err_lines = res.stderr.splitlines()
    header = next(i for i, line in enumerate(err_lines) if line.split()[:3] == ["epoch", "tr_logloss", "va_logloss"])
    epochs = err_lines[header + 1 : header + 4]
    assert [int(line.split()[0]) for line in epochs] == [1, 2, 3]
    for line in epochs:
        tr_loss, va_loss, va_auc = map(float, line.split()[1:4])
        assert 0 < tr_loss < 1 and 0 < va_loss < 1 and 0.5 < va_auc <= 1
    assert f"wrote {model}" in res.stderr

    out = tmp_path / "out.txt"
    res = fm(runner, "predict", model, data["valid"], "-o", out)
    assert res.exit_code == 0, res.stderr
    assert res.stdout == ""
    probs = [float(x) for x in out.read_text().splitlines()]
    assert len(probs) == 500
    assert all(0 < p < 1 for p in probs)
    expected = api_predict(load_model(model), data["valid"])
    np.testing.assert_allclose(probs, expected, rtol=1e-5)
    assert "logloss = " in res.stderr
    logged = float(res.stderr.split("logloss = ")[1].split()[0])
    last_va = float(epochs[-1].split()[2])
    assert abs(logged - last_va) < 1e-4

    res = fm(runner, "inspect", model)
    assert res.exit_code == 0, res.stderr
    assert "ffm (binary), k=4" in res.stdout
    fields = {line.split(None, 1)[0]: line.split(None, 1)[1] for line in res.stdout.splitlines() if line.strip()}
    assert fields["features"] == "198"
    assert fields["fields"] == "6"
    assert fields["terms"] == "bias, linear, pairwise"
    assert "3 run, model from epoch 3" in fields["epochs"]

    res = fm(runner, "inspect", "--json", model)
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    m = doc["header"]["model"]
    assert m["kind"] == "ffm" and m["k"] == 4 and m["n_features"] == 198 and m["n_fields"] == 6
    assert doc["has_optimizer_state"] is True
    names = {a["name"] for a in doc["header"]["arrays"]}
    assert names == {"bias", "linear", "factors", "bias_state", "linear_state", "factors_state"}


def test_predict_stdout_and_stdin(runner, data, tmp_path):
    model = tmp_path / "m.fm"
    assert fm(runner, "train", "-t", "2", "-o", model, "-q", data["train"]).exit_code == 0
    res_file = fm(runner, "predict", model, data["valid"], "-o", tmp_path / "out.txt")
    assert res_file.exit_code == 0
    expected = (tmp_path / "out.txt").read_text()

    res = fm(runner, "predict", model, data["valid"])
    assert res.exit_code == 0, res.stderr
    assert res.stdout == expected
    assert "logloss = " in res.stderr

    res = fm(runner, "predict", model, "-", input=data["valid"].read_bytes())
    assert res.exit_code == 0, res.stderr
    assert res.stdout == expected
    assert "rows = 500" in res.stderr

    res = fm(runner, "predict", "-q", model, "-", input=data["valid"].read_bytes())
    assert res.exit_code == 0
    assert res.stdout == expected and res.stderr == ""


def test_predict_without_binary_labels_prints_no_metrics(runner, data, tmp_path):
    model = tmp_path / "m.fm"
    assert fm(runner, "train", "-t", "1", "-q", "-o", model, data["train"]).exit_code == 0
    res = fm(runner, "predict", model, "-", input=b"0.5 0:1:1\n7 1:40:1\n")
    assert res.exit_code == 0, res.stderr
    assert len(res.stdout.splitlines()) == 2
    assert "logloss" not in res.stderr


def test_train_quiet_prints_nothing(runner, data, tmp_path):
    res = fm(runner, "train", "-q", "-t", "2", "-p", data["valid"], "-o", tmp_path / "m.fm", data["train"])
    assert res.exit_code == 0
    assert res.stdout == "" and res.stderr == ""


def test_train_from_stdin(runner, data, tmp_path):
    res = fm(runner, "train", "-t", "1", "-o", tmp_path / "m.fm", "-", input=data["train"].read_bytes())
    assert res.exit_code == 0, res.stderr
    assert load_model(tmp_path / "m.fm").spec.n_features == 198
    res = fm(runner, "train", "-t", "1", "-", input=data["train"].read_bytes())
    assert res.exit_code == 2
    assert "-o" in res.stderr


@pytest.mark.parametrize("kind, arrays", [
    ("lr", {"bias", "linear"}),
    ("fm", {"bias", "linear", "factors"}),
])
def test_other_model_kinds(runner, data, tmp_path, kind, arrays):
    model = tmp_path / f"{kind}.fm"
    res = fm(runner, "train", "--model", kind, "-k", "3", "-t", "3", "-p", data["valid"], "-o", model, data["train"])
    assert res.exit_code == 0, res.stderr
    res = fm(runner, "predict", model, data["valid"])
    assert res.exit_code == 0
    probs = np.array([float(x) for x in res.stdout.splitlines()])
    assert probs.shape == (500,) and np.all((probs > 0) & (probs < 1))
    logged = float(res.stderr.split("logloss = ")[1].split()[0])
    assert logged < 0.65
    doc = json.loads(fm(runner, "inspect", "--json", model).stdout)
    assert doc["header"]["model"]["kind"] == kind
    assert {a["name"] for a in doc["header"]["arrays"] if not a["name"].endswith("_state")} == arrays


def test_libffm_exact_flags(runner, data, tmp_path):
    model = tmp_path / "m.fm"
    res = fm(runner, "train", "--no-bias", "--no-linear", "-t", "2", "-o", model, data["train"])
    assert res.exit_code == 0, res.stderr
    res = fm(runner, "inspect", model)
    assert res.exit_code == 0
    terms = [line for line in res.stdout.splitlines() if line.split()[:1] == ["terms"]]
    assert [t.split(None, 1)[1] for t in terms] == ["pairwise"]
    doc = json.loads(fm(runner, "inspect", "--json", model).stdout)
    assert {a["name"] for a in doc["header"]["arrays"]} == {"factors", "factors_state"}
    assert doc["header"]["model"]["use_bias"] is False
    assert doc["header"]["model"]["use_linear"] is False


def test_no_optimizer_state(runner, data, tmp_path):
    model = tmp_path / "m.fm"
    assert fm(runner, "train", "--no-optimizer-state", "-t", "1", "-o", model, data["train"]).exit_code == 0
    doc = json.loads(fm(runner, "inspect", "--json", model).stdout)
    assert doc["has_optimizer_state"] is False
    assert {a["name"] for a in doc["header"]["arrays"]} == {"bias", "linear", "factors"}


def test_options_reach_the_model(runner, data, tmp_path):
    model = tmp_path / "m.fm"
    res = fm(runner, "train", "--model", "fm", "-k", "7", "-t", "2", "-r", "0.05", "-l", "0.001",
             "--optimizer", "sgd", "--no-norm", "--seed", "3", "-o", model, data["train"])
    assert res.exit_code == 0, res.stderr
    loaded = load_model(model)
    assert (loaded.spec.kind, loaded.spec.k, loaded.spec.normalize) == ("fm", 7, False)
    hp = loaded.meta["hyperparameters"]
    assert (hp["learning_rate"], hp["l2"], hp["optimizer"], hp["seed"], hp["epochs"]) == (0.05, 0.001, "sgd", 3, 2)


def test_default_output_name(runner, data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "xyz.ffm").write_bytes(data["train"].read_bytes())
    res = fm(runner, "train", "-t", "1", "xyz.ffm")
    assert res.exit_code == 0, res.stderr
    assert sorted(os.listdir(tmp_path)) == ["xyz.ffm", "xyz.fm"]
    assert load_model(tmp_path / "xyz.fm").spec.kind == "ffm"


# --------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------

def test_bad_training_data(runner, tmp_path):
    bad = tmp_path / "bad.ffm"
    bad.write_text("1 0:0:1\n# comment\n0 0:1:x\n1 0:0:1\n")
    model = tmp_path / "m.fm"
    res = fm(runner, "train", "-o", model, bad)
    assert res.exit_code == 65
    no_traceback(res)
    assert f"fm: error: {bad}:3: expected a number as the value, found '0:1:x'" in res.stderr
    assert res.stdout == ""
    assert not model.exists()
    assert sorted(os.listdir(tmp_path)) == ["bad.ffm"]  # no temporary files left behind


def test_failed_training_keeps_existing_model(runner, data, tmp_path):
    model = tmp_path / "m.fm"
    assert fm(runner, "train", "-t", "1", "-o", model, data["train"]).exit_code == 0
    before = model.read_bytes()
    bad = tmp_path / "bad.ffm"
    bad.write_bytes(data["train"].read_bytes() + b"1 0:0:nan\n")
    res = fm(runner, "train", "-t", "1", "-o", model, bad)
    assert res.exit_code == 65
    assert f"{bad}:1501:" in res.stderr
    assert model.read_bytes() == before
    # bad validation data, too
    res = fm(runner, "train", "-t", "1", "-p", bad, "-o", model, data["train"])
    assert res.exit_code == 65
    assert model.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["bad.ffm", "m.fm"]


def test_divergence_writes_nothing(runner, data, tmp_path):
    model = tmp_path / "m.fm"
    res = fm(runner, "train", "--optimizer", "sgd", "-r", "1e30", "--no-norm", "-t", "2", "-o", model, data["train"])
    assert res.exit_code != 0
    no_traceback(res)
    assert "diverged" in res.stderr
    assert not model.exists()


def test_missing_inputs(runner, data, tmp_path):
    res = fm(runner, "train", "-o", tmp_path / "m.fm", tmp_path / "nope.ffm")
    assert res.exit_code == 66
    assert "nope.ffm" in res.stderr and res.stderr.startswith("fm: error: ")
    no_traceback(res)
    res = fm(runner, "train", "-o", tmp_path / "m.fm", "-p", tmp_path / "nope.ffm", data["train"])
    assert res.exit_code == 66
    assert not (tmp_path / "m.fm").exists()
    res = fm(runner, "predict", tmp_path / "nope.fm", data["valid"])
    assert res.exit_code == 66
    no_traceback(res)
    res = fm(runner, "inspect", tmp_path / "nope.fm")
    assert res.exit_code == 66
    assert res.stderr.startswith("fm: error: ") and "nope.fm" in res.stderr
    res = fm(runner, "train", "-o", tmp_path / "m.fm", tmp_path)
    assert res.exit_code == 66 and "is a directory" in res.stderr


@pytest.mark.parametrize("args", [
    ["train", "--bogus", "x.ffm"],
    ["train", "--model", "xx", "x.ffm"],
    ["train", "--optimizer", "rmsprop", "x.ffm"],
    ["train", "--task", "ranking", "x.ffm"],
    ["train", "--lr-schedule", "step", "x.ffm"],
    ["train", "--batch-size", "0", "x.ffm"],
    ["train", "-k", "0", "x.ffm"],
    ["train", "-t", "0", "x.ffm"],
    ["train", "-s", "abc", "x.ffm"],
    ["train"],
    ["predict", "m.fm"],
    ["predict", "--format", "csv", "m.fm", "x.ffm"],
    ["nosuchcommand"],
])
def test_usage_errors(runner, args):
    res = fm(runner, *args)
    assert res.exit_code == 2
    assert "Usage:" in res.stderr or "Error:" in res.stderr
    assert res.stdout == ""


def test_bad_hyperparameter_value_is_config_error(runner, data, tmp_path):
    res = fm(runner, "train", "-r", "-1", "-o", tmp_path / "m.fm", data["train"])
    assert res.exit_code == 78
    assert res.stderr.startswith("fm: error: ") and "learning rate" in res.stderr
    assert not (tmp_path / "m.fm").exists()


def test_bad_model_file(runner, data, tmp_path):
    junk = tmp_path / "junk.fm"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    out = tmp_path / "out.txt"
    for args in (["predict", junk, data["valid"]], ["predict", junk, data["valid"], "-o", out], ["inspect", junk]):
        res = fm(runner, *args)
        assert res.exit_code == 65, args
        no_traceback(res)
        assert res.stderr.startswith(f"fm: error: {junk}")
        assert len(res.stderr.splitlines()) == 1
        assert res.stdout == ""
    assert not out.exists()


def test_failed_predict_keeps_existing_output(runner, data, tmp_path):
    model = tmp_path / "m.fm"
    assert fm(runner, "train", "-t", "1", "-o", model, data["train"]).exit_code == 0
    out = tmp_path / "out.txt"
    out.write_text("previous\n")
    bad = tmp_path / "bad.ffm"
    bad.write_bytes(data["valid"].read_bytes() + b"1 0:0\n")
    res = fm(runner, "predict", model, bad, "-o", out)
    assert res.exit_code == 65
    assert f"{bad}:501:" in res.stderr
    assert out.read_text() == "previous\n"
    assert sorted(os.listdir(tmp_path)) == ["bad.ffm", "m.fm", "out.txt"]


def test_ffm_on_libsvm_is_config_error(runner, data, tmp_path):
    svm = ffm_to_svm(data["train"], tmp_path / "tr.svm")
    model = tmp_path / "m.fm"
    res = fm(runner, "train", "--model", "ffm", "-o", model, svm)
    assert res.exit_code == 78
    no_traceback(res)
    assert "fm: error:" in res.stderr and "libsvm" in res.stderr and "--model fm" in res.stderr
    assert not model.exists()
    res = fm(runner, "train", "--model", "fm", "-t", "2", "-o", model, svm)
    assert res.exit_code == 0, res.stderr
    res = fm(runner, "predict", model, ffm_to_svm(data["valid"], tmp_path / "va.svm"))
    assert res.exit_code == 0 and len(res.stdout.splitlines()) == 500


def test_output_in_missing_directory(runner, data, tmp_path):
    res = fm(runner, "train", "-t", "1", "-o", tmp_path / "no" / "m.fm", data["train"])
    assert res.exit_code == 73
    assert "does not exist" in res.stderr
    assert res.stderr.count("epoch") == 0  # failed before training


# --------------------------------------------------------------------------
# entry points
# --------------------------------------------------------------------------

def test_version(runner):
    res = fm(runner, "--version")
    assert res.exit_code == 0
    assert res.stdout.strip() == f"fm, version {__version__}"


def test_help(runner):
    res = fm(runner, "--help")
    assert res.exit_code == 0
    for command in ("train", "predict", "inspect"):
        assert command in res.stdout
    res = fm(runner, "train", "-h")
    assert res.exit_code == 0 and "--learning-rate" in res.stdout


def test_python_dash_m(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "fmcli", "--help"], capture_output=True, text=True, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Usage:" in proc.stdout and "train" in proc.stdout
