"""ffm-train and ffm-predict: libffm's command lines on fmcli's core, and
fm predict's handling of libffm's model files and argument order."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from fmcli import libffm
from fmcli.cli import cli
from fmcli.cli.libffm_compat import ffm_predict, ffm_train, predict_main, train_main
from fmcli.model import load_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLES = os.path.join(ROOT, "data", "samples")
TRAIN = os.path.join(SAMPLES, "train.ffm")
VALID = os.path.join(SAMPLES, "valid.ffm")

HEADER_VA = "iter   tr_logloss   va_logloss      tr_time"
HEADER = "iter   tr_logloss      tr_time"
ROW_VA = re.compile(r"^[ 0-9]{3}[0-9] {4,}[0-9]+\.[0-9]{5} {4,}[0-9]+\.[0-9]{5} {4,}[0-9]+\.[0-9]$")
PROGRESS = re.compile(r"^\S.*: [0-9]+ rows .* \([0-9]+\.[0-9] seconds\)$")


def run_train(*args):
    return CliRunner().invoke(ffm_train, [str(a) for a in args], prog_name="ffm-train")


def run_predict(*args):
    return CliRunner().invoke(ffm_predict, [str(a) for a in args], prog_name="ffm-predict")


def run_fm(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="fm")


def one_line_error(result, prog="ffm-train"):
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), result.stderr
    return lines[0]


@pytest.fixture
def tiny(tmp_path):
    """A small data file of 6 fields written here: 400 rows, labels from a rule."""
    rng = np.random.default_rng(7)
    rows = []
    for _ in range(400):
        feats = [(f, int(rng.integers(0, 30)) + 30 * f) for f in range(6)]
        label = int((feats[0][1] + feats[1][1]) % 3 == 0)
        rows.append(f"{label} " + " ".join(f"{f}:{j}:1" for f, j in feats))
    path = tmp_path / "tiny.ffm"
    path.write_text("\n".join(rows) + "\n")
    return path


# --------------------------------------------------------------------------
# the same model as fm train in libffm's configuration
# --------------------------------------------------------------------------

@pytest.mark.parametrize("libffm_args, fm_args", [
    ([], []),
    (["-k", "2", "-l", "0.0001", "-r", "0.1", "--no-norm", "--no-rand"],
     ["-k", "2", "-l", "0.0001", "-r", "0.1", "--no-norm", "--no-shuffle"]),
])
def test_same_parameters_as_fm_train(tmp_path, libffm_args, fm_args):
    """ffm-train's defaults and options are fm train --model ffm --no-bias
    --no-linear's: with one thread the weights and AdaGrad accumulators are
    bit-for-bit the same (the same seed gives the same shuffles)."""
    model = tmp_path / "m.model"
    res = run_train(*libffm_args, "-t", "3", "-p", VALID, TRAIN, model)
    assert res.exit_code == 0, res.output + res.stderr
    ref = tmp_path / "m.fm"
    res2 = run_fm("train", "--model", "ffm", "--no-bias", "--no-linear", *fm_args, "-t", "3", "-p", VALID,
                  "-o", ref, TRAIN)
    assert res2.exit_code == 0, res2.stderr
    a, b = libffm.read_model(model), load_model(ref)
    assert a.spec.k == b.spec.k and a.spec.normalize == b.spec.normalize
    assert (a.spec.n_features, a.spec.n_fields) == (b.spec.n_features, b.spec.n_fields)
    assert np.array_equal(a.params["factors"], b.params["factors"])
    assert np.array_equal(a.state["factors"], b.state["factors"])
    # and the table's losses are fm train's
    rows = [line.split() for line in res.stdout.splitlines() if ROW_VA.match(line)]
    history = b.meta["training"]["history"]
    assert [r[0] for r in rows] == ["1", "2", "3"]
    for r, h in zip(rows, history):
        assert r[1] == f"{h['train_loss']:.5f}" and r[2] == f"{h['valid_logloss']:.5f}"


def test_model_file_is_libffm_binary_and_round_trips(tmp_path):
    """MODEL is libffm's binary layout (13-byte header, then for every
    feature and field 4 weights and 4 accumulators: k padded to 4), and
    reading then writing it gives the same bytes."""
    model = tmp_path / "m.model"
    assert run_train("-t", "2", "-k", "3", TRAIN, model).exit_code == 0
    raw = model.read_bytes()
    n, m, k = np.frombuffer(raw[:12], "<i4")
    assert (k, raw[12]) == (3, 1)
    assert len(raw) == 13 + n * m * 2 * 4 * 4
    blocks = np.frombuffer(raw[13:], "<f4").reshape(n * m, 2, 4)
    assert (blocks[:, 0, 3] == 0).all() and (blocks[:, 1, 3] == 1).all()   # padding
    assert (blocks[:, 1, :3] >= 1).all()                                    # AdaGrad's G
    again = tmp_path / "again.model"
    libffm.write_model(libffm.read_model(model), again, binary=True)
    assert again.read_bytes() == raw


def test_default_model_path_is_basename_dot_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = run_train("-t", "1", "--quiet", TRAIN)
    assert res.exit_code == 0, res.stderr
    assert res.stdout == ""
    assert (tmp_path / "train.ffm.model").exists()
    assert libffm.read_model(tmp_path / "train.ffm.model").spec.n_fields == 8


# --------------------------------------------------------------------------
# what ffm-train prints
# --------------------------------------------------------------------------

def test_epoch_table_and_progress_lines(tmp_path):
    res = run_train("-t", "3", "-p", VALID, TRAIN, tmp_path / "m")
    assert res.exit_code == 0
    lines = res.stdout.splitlines()
    assert PROGRESS.match(lines[0]) and "train.ffm: 5000 rows" in lines[0]
    assert PROGRESS.match(lines[1]) and "valid.ffm: 1000 rows" in lines[1]
    assert lines[2] == HEADER_VA
    assert all(ROW_VA.match(line) and len(line) == 43 for line in lines[3:]), lines
    assert len(lines) == 6
    times = [float(line.split()[3]) for line in lines[3:]]
    assert times == sorted(times)               # libffm's tr_time is cumulative
    assert res.stderr == ""


def test_table_without_validation_set(tmp_path):
    res = run_train("-t", "2", TRAIN, tmp_path / "m")
    lines = res.stdout.splitlines()
    assert lines[1] == HEADER
    assert [len(line) for line in lines[2:]] == [30, 30]


def test_auto_stop_keeps_the_best_epoch(tmp_path):
    """On the samples the validation logloss rises at epoch 6: the row of
    epoch 6 has no time, the next line names epoch 5, and the model is
    epoch 5's, as fm train --auto-stop keeps it."""
    model = tmp_path / "m"
    res = run_train("-p", VALID, "--auto-stop", TRAIN, model)
    assert res.exit_code == 0
    lines = res.stdout.splitlines()
    assert lines[-1] == "Auto-stop. Use model at 5th iteration."
    assert re.fullmatch(r"   6 +[0-9.]+ +[0-9.]+", lines[-2]) and len(lines[-2]) == 30
    assert "has not improved" not in res.stderr
    ref = tmp_path / "m.fm"
    run_fm("train", "--model", "ffm", "--no-bias", "--no-linear", "-p", VALID, "--auto-stop", "-o", ref, TRAIN)
    assert np.array_equal(libffm.read_model(model).params["factors"], load_model(ref).params["factors"])
    assert load_model(ref).meta["training"]["model_epoch"] == 5


def test_cross_validation_prints_folds_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = run_train("-v", "3", "-t", "2", TRAIN)
    assert res.exit_code == 0, res.stderr
    lines = res.stdout.splitlines()
    assert PROGRESS.match(lines[0])
    assert lines[1] == "fold      logloss"
    assert [line[:4] for line in lines[2:5]] == ["   0", "   1", "   2"]
    assert all(re.fullmatch(r" {4,}[0-9]\.[0-9]{4}", line[4:]) for line in lines[2:5])
    assert lines[5] == "=" * 17
    avg = float(lines[6].split()[1])
    assert lines[6].startswith(" avg") and min(float(x.split()[1]) for x in lines[2:5]) - 1e-4 <= avg
    assert os.listdir(tmp_path) == []


def test_on_disk_and_threads(tmp_path):
    """--on-disk (rows streamed from the binary cache, no memory budget) and
    -s 2 (Hogwild) train models as good as the default one, the table as usual."""
    a, b = tmp_path / "a", tmp_path / "b"
    res = run_train("-t", "3", "-p", VALID, "--on-disk", TRAIN, a)
    assert res.exit_code == 0 and HEADER_VA in res.stdout
    run_train("-t", "3", "-p", VALID, TRAIN, b)
    la = float(run_predict(VALID, a, tmp_path / "pa").stdout.split()[-1])
    lb = float(run_predict(VALID, b, tmp_path / "pb").stdout.split()[-1])
    assert abs(la - lb) < 0.02
    c = tmp_path / "c"
    res = run_train("-t", "3", "-s", "2", "-p", VALID, TRAIN, c)
    assert res.exit_code == 0 and len(res.stdout.splitlines()) == 6
    assert abs(float(run_predict(VALID, c, tmp_path / "pc").stdout.split()[-1]) - lb) < 0.02


# --------------------------------------------------------------------------
# argument errors
# --------------------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["-k", "0"], ["-k", "2.5"], ["-k", "2000"], ["-t", "0"], ["-t", "x"], ["-r", "0"], ["-r", "-0.1"],
    ["-r", "inf"], ["-l", "-1"], ["-l", "nan"], ["-s", "0"], ["-v", "1"], ["--no-such-option"],
    ["-p"],
])
def test_bad_option_values_are_usage_errors(tmp_path, args):
    res = run_train(*args, TRAIN, tmp_path / "m") if args != ["-p"] else run_train(TRAIN, "-p")
    assert res.exit_code == 2
    assert "Traceback" not in res.stderr and "Error:" in res.stderr
    assert not (tmp_path / "m").exists()


def test_positional_errors(tmp_path):
    assert run_train().exit_code == 2                              # usage
    res = run_train(TRAIN, tmp_path / "m", tmp_path / "extra")
    assert res.exit_code == 2 and "unexpected extra argument" in res.stderr.lower()


@pytest.mark.parametrize("args, code, text", [
    (["missing.ffm"], 66, "missing.ffm"),
    (["."], 66, "is a directory"),                         # refused while parsing the arguments
    (["-p", "missing_va.ffm", TRAIN], 66, "missing_va.ffm"),
    (["--auto-stop", TRAIN], 2, "--auto-stop needs a validation set"),
    (["-v", "3", "-p", VALID, TRAIN], 2, "-v cross-validates"),
    (["-v", "3", TRAIN, "model"], 2, "writes no model"),
    (["-", ], 2, "needs MODEL"),
    ([TRAIN, TRAIN], 2, "the training file"),
    ([TRAIN, "no/such/dir/m"], 73, "no/such/dir"),
])
def test_one_line_errors(tmp_path, monkeypatch, args, code, text):
    monkeypatch.chdir(tmp_path)
    res = run_train("-t", "1", *args)
    assert res.exit_code == code, res.stderr
    assert text in one_line_error(res)
    assert os.listdir(tmp_path) == []


def test_malformed_data_is_a_data_error(tmp_path):
    bad = tmp_path / "bad.ffm"
    bad.write_text("1 0:1:1 1:2:1\n0 0:x:1\n")
    res = run_train("-t", "1", bad, tmp_path / "m")
    assert res.exit_code == 65
    assert "bad.ffm:2" in one_line_error(res)
    assert not (tmp_path / "m").exists()


# --------------------------------------------------------------------------
# ffm-predict
# --------------------------------------------------------------------------

def _logloss(result) -> float:
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and re.fullmatch(r"logloss = [0-9]+\.[0-9]{5}", lines[0]), result.stdout
    return float(lines[0].split()[-1])


def test_predict_on_an_ffm_train_model(tmp_path):
    model, out = tmp_path / "m", tmp_path / "out"
    run_train("-t", "3", TRAIN, model)
    res = run_predict(VALID, model, out)
    assert res.exit_code == 0, res.stderr
    ll = _logloss(res)
    probs = out.read_text().splitlines()
    assert len(probs) == 1000
    assert all(re.fullmatch(r"[0-9.e-]+", p) and len(p.replace("0.", "", 1).lstrip("0")) <= 7 for p in probs)
    # fm predict reads the libffm file too, with the same probabilities and logloss
    fm = run_fm("predict", model, VALID, "-o", tmp_path / "fm_out")
    assert fm.exit_code == 0, fm.stderr
    assert (tmp_path / "fm_out").read_text() == out.read_text()
    assert f"logloss = {ll:.5f}" in fm.stderr


def test_predict_on_a_native_model(tmp_path):
    """An fmcli model of any kind (here FM with bias and linear terms)."""
    model = tmp_path / "m.fm"
    assert run_fm("train", "--model", "fm", "-t", "2", "-o", model, TRAIN).exit_code == 0
    res = run_predict(VALID, model, tmp_path / "out")
    assert res.exit_code == 0
    ll = _logloss(res)
    fm = run_fm("predict", model, VALID, "-o", tmp_path / "fm_out")
    assert (tmp_path / "fm_out").read_text() == (tmp_path / "out").read_text()
    assert f"logloss = {ll:.5f}" in fm.stderr


def test_predict_on_libffm_text_model_and_to_stdout(tmp_path):
    model, text = tmp_path / "m", tmp_path / "m.txt"
    run_train("-t", "2", TRAIN, model)
    libffm.write_model(libffm.read_model(model), text)
    binary = run_predict(VALID, model, tmp_path / "a")
    res = run_predict(VALID, text, "-")
    assert res.exit_code == 0
    assert res.stdout == (tmp_path / "a").read_text()      # probabilities on stdout...
    assert res.stderr.strip() == binary.stdout.strip()     # ...and the logloss on stderr


def test_predict_unseen_ids_are_skipped(tmp_path, tiny):
    model = tmp_path / "m"
    run_train("-t", "1", tiny, model)
    test = tmp_path / "t.ffm"
    test.write_text("1 0:5:1 7:99999:1\n0 1:40:1\n")
    res = run_predict(test, model, tmp_path / "out")
    assert res.exit_code == 0
    assert len((tmp_path / "out").read_text().splitlines()) == 2
    assert "ignored 1 feature occurrences" in res.stderr


@pytest.mark.parametrize("case, code, text", [
    ("two args", 2, None),
    ("missing test", 66, "nope.ffm"),
    ("missing model", 66, "nope.model"),
    ("garbage model", 65, "neither an fmcli model file"),
    ("swapped", 2, "ffm-predict takes TEST MODEL OUTPUT"),
    ("output is the model", 2, "OUTPUT"),
])
def test_predict_errors(tmp_path, case, code, text):
    model, out = tmp_path / "m", tmp_path / "out"
    run_train("-t", "1", TRAIN, model)
    garbage = tmp_path / "g.model"
    garbage.write_bytes(b"\x01\x02\x03" * 50)
    args = {"two args": [VALID, model],
            "missing test": ["nope.ffm", model, out],
            "missing model": [VALID, "nope.model", out],
            "garbage model": [VALID, garbage, out],
            "swapped": [model, VALID, out],
            "output is the model": [VALID, model, model]}[case]
    before = model.read_bytes()
    res = run_predict(*args)
    assert res.exit_code == code, res.stderr
    if text is not None:
        assert text in one_line_error(res, "ffm-predict")
    assert not out.exists() and model.read_bytes() == before


# --------------------------------------------------------------------------
# fm predict given ffm-predict's argument order
# --------------------------------------------------------------------------

@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("output", ["none", "new", "existing"])
def test_fm_predict_names_ffm_predicts_order(tmp_path, native, output):
    model = tmp_path / ("m.fm" if native else "m.model")
    if native:
        run_fm("train", "-t", "1", "-o", model, TRAIN)
    else:
        run_train("-t", "1", TRAIN, model)
    out = tmp_path / "out"
    if output == "existing":            # a script run before: its old output is kept
        out.write_text("0.5\n")
    with_output = output != "none"
    res = run_fm("predict", VALID, model, *([out] if with_output else []))
    assert res.exit_code == 2
    line = one_line_error(res, "fm")
    assert "looks like ffm-predict's argument order TEST MODEL OUTPUT" in line
    assert f"fm predict {model} {VALID}" + (f" -o {out}" if with_output else "") in line
    assert "or use ffm-predict" in line
    assert (out.read_text() == "0.5\n") if output == "existing" else not out.exists()


def test_fm_predict_other_bad_models_keep_their_error(tmp_path):
    """Not a model, and the data argument is no model either: no hint."""
    res = run_fm("predict", VALID, TRAIN)
    assert res.exit_code == 65
    line = one_line_error(res, "fm")
    assert "neither an fmcli model file" in line and "ffm-predict" not in line


# --------------------------------------------------------------------------
# entry points
# --------------------------------------------------------------------------

def test_entry_points_declared():
    try:
        import tomllib
    except ModuleNotFoundError:          # Python 3.10
        import tomli as tomllib
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    assert scripts["ffm-train"] == "fmcli.cli.libffm_compat:train_main"
    assert scripts["ffm-predict"] == "fmcli.cli.libffm_compat:predict_main"
    assert callable(train_main) and callable(predict_main)


def test_runs_as_a_module(tmp_path):
    """python -m fmcli.cli.libffm_compat train|predict: the processes that
    the entry points run, exit statuses included."""
    env = {**os.environ, "PYTHONPATH": ROOT}
    cmd = [sys.executable, "-m", "fmcli.cli.libffm_compat"]
    model, out = tmp_path / "m", tmp_path / "out"
    tr = subprocess.run(cmd + ["train", "-t", "2", "-p", VALID, TRAIN, str(model)], capture_output=True,
                        text=True, env=env, cwd=tmp_path)
    assert tr.returncode == 0, tr.stderr
    assert HEADER_VA in tr.stdout.splitlines()
    pr = subprocess.run(cmd + ["predict", VALID, str(model), str(out)], capture_output=True, text=True,
                        env=env, cwd=tmp_path)
    assert pr.returncode == 0 and pr.stdout.startswith("logloss = ")
    bad = subprocess.run(cmd + ["predict", VALID, "nope", str(out)], capture_output=True, text=True,
                         env=env, cwd=tmp_path)
    assert bad.returncode == 66 and bad.stderr.startswith("ffm-predict: error: ")
    assert subprocess.run(cmd + ["nothing"], capture_output=True, env=env).returncode == 2


def test_a_libffm_model_through_a_pipe_is_told_apart_and_loads(tmp_path):
    """A pipe cannot be peeked at: it is copied first, then read as a file."""
    import subprocess
    import sys

    data = os.path.join(SAMPLES, "valid.ffm")
    model = tmp_path / "m.model"
    run = subprocess.run([sys.executable, "-m", "fmcli.cli.libffm_compat", "train", "-t", "1", "--quiet",
                          data, str(model)], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    direct = subprocess.run([sys.executable, "-m", "fmcli.cli.libffm_compat", "predict", data, str(model),
                             str(tmp_path / "a.txt")], capture_output=True, text=True, cwd=tmp_path)
    piped = subprocess.run(["bash", "-c", f"{sys.executable} -m fmcli.cli.libffm_compat predict {data} "
                            f"<(cat {model}) {tmp_path / 'b.txt'}"], capture_output=True, text=True, cwd=tmp_path)
    assert direct.returncode == piped.returncode == 0, piped.stderr
    assert (tmp_path / "a.txt").read_bytes() == (tmp_path / "b.txt").read_bytes()
    bad = subprocess.run(["bash", "-c", f"{sys.executable} -m fmcli.cli.libffm_compat predict {data} "
                          f"<(head -c 100 {model}) {tmp_path / 'c.txt'}"], capture_output=True, text=True)
    assert bad.returncode == 65 and bad.stderr.count("\n") == 1 and "/dev/fd/" in bad.stderr
    assert not (tmp_path / "c.txt").exists()


def test_a_second_ffm_train_on_the_same_model_is_one_line_without_a_foreign_option(tmp_path):
    from fmcli.atomic import output_lock
    from fmcli.cli.libffm_compat import ffm_train

    model = tmp_path / "m.model"
    with output_lock(str(model)):        # another run is writing it
        result = CliRunner().invoke(ffm_train, ["-t", "1", os.path.join(SAMPLES, "valid.ffm"), str(model)])
    assert result.exit_code == 75
    line = result.output.strip().splitlines()[-1]
    assert "is being written by" in line and "--lock-timeout" not in line
    assert not model.exists()
