"""Operations: configuration files and FM_* variables, --dry-run, output
locks, I/O errors, exit statuses, signals and --log-json."""

import json
import os
import platform
import resource
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from click.testing import CliRunner

from fmcli.atomic import lock_path, output_lock
from fmcli.cli import cli
from fmcli.errors import Interrupted
from fmcli.model import load_model
from test_cli import write_ffm

FM = [sys.executable, "-m", "fmcli"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("opsdata")
    return {"train": write_ffm(d / "tr.ffm", 600, 1), "valid": write_ffm(d / "va.ffm", 200, 2)}


@pytest.fixture(scope="module")
def model(data, tmp_path_factory):
    path = tmp_path_factory.mktemp("opsmodel") / "m.fm"
    res = fm("train", "-q", "-t", "1", "-o", path, data["train"])
    assert res.exit_code == 0, res.stderr
    return path


def fm(*args, env=None, **kwargs):
    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="fm", env=env, **kwargs)


def header(path):
    return load_model(path).meta


def one_line_error(res, code, *needles):
    assert res.exit_code == code, (res.exit_code, res.stderr)
    lines = [line for line in res.stderr.splitlines() if line.startswith("fm: ")]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# --------------------------------------------------------------------------
# configuration: file, environment, command line
# --------------------------------------------------------------------------

def test_precedence_cli_over_env_over_file_over_defaults(data, tmp_path):
    conf = tmp_path / "fm.toml"
    conf.write_text('[train]\nepochs = 3\nlearning_rate = 0.05\nnorm = false\nl2-bias = 0.5\n'
                    '[predict]\nthreads = 2\n')
    out = tmp_path / "m.fm"
    res = fm("train", "--config", conf, "-q", "-r", "0.3", "-o", out, data["train"],
             env={"FM_TRAIN_EPOCHS": "2", "FM_TRAIN_SEED": "7"})
    assert res.exit_code == 0, res.stderr
    meta = header(out)
    hp = meta["hyperparameters"]
    assert (hp["epochs"], hp["learning_rate"], hp["normalize"], hp["l2_bias"], hp["seed"], hp["k"]) == \
        (2, 0.3, False, 0.5, 7, 4)
    src = meta["config_sources"]
    assert src["epochs"] == "env" and src["seed"] == "env"
    assert src["learning-rate"] == "cli" and src["output"] == "cli" and src["quiet"] == "cli"
    assert src["norm"] == "config" and src["l2-bias"] == "config"
    assert src["factors"] == "default" and src["model"] == "default"
    assert "config" not in src and set(src.values()) <= {"cli", "env", "config", "default"}


def test_predict_reads_its_own_table(model, data, tmp_path):
    conf = tmp_path / "fm.toml"
    conf.write_text('[train]\nepochs = 99\n[predict]\nquiet = true\noutput = "p.txt"\n')
    out = tmp_path / "p.txt"
    res = fm("predict", "--config", conf, "-o", out, model, data["valid"])
    assert res.exit_code == 0, res.stderr
    assert res.stderr == "" and len(out.read_text().splitlines()) == 200


@pytest.mark.parametrize("text, needles", [
    ("[train]\nepoch = 3\n", ["[train] unknown option 'epoch'", "did you mean 'epochs'"]),
    ("[train]\nepochs = 0\n", ["[train] epochs:", "range"]),
    ("[train]\nepochs = 2.5\n", ["[train] epochs: expected an integer"]),
    ("[train]\nepochs = true\n", ["[train] epochs: expected an integer"]),
    ("[train]\nnorm = \"no\"\n", ["[train] norm: expected true or false"]),
    ("[train]\nmodel = \"svm\"\n", ["[train] model:", "svm"]),
    ("[train]\nfactors = [1, 2]\n", ["[train] factors: expected an integer, found a TOML array"]),
    ("[train]\nepochs = 2\nepochs_ = 1\n", ["unknown option"]),
    ("[train]\nlearning-rate = 0.1\nlearning_rate = 0.2\n", ["learning-rate is set twice"]),
    ("[trian]\nepochs = 3\n", ["unknown table [trian]"]),
    ("[train\nepochs = 3\n", ["invalid TOML"]),
    ("[train]\nlearning-rate = -1\n", ["learning rate must be a positive number", "learning-rate in"]),
])
def test_bad_configuration_files_exit_78_naming_file_and_key(data, tmp_path, text, needles):
    conf = tmp_path / "bad.toml"
    conf.write_text(text)
    res = fm("train", "--config", conf, "-o", tmp_path / "m.fm", data["train"])
    one_line_error(res, 78, str(conf), *needles)
    assert not (tmp_path / "m.fm").exists()


def test_missing_configuration_file_is_66(data, tmp_path):
    res = fm("train", "--config", tmp_path / "none.toml", data["train"])
    one_line_error(res, 66, "none.toml")


def test_bad_environment_value_exits_78_naming_the_variable(data, tmp_path):
    res = fm("train", "-o", tmp_path / "m.fm", data["train"], env={"FM_TRAIN_EPOCHS": "many"})
    one_line_error(res, 78, "FM_TRAIN_EPOCHS", "many")


# --------------------------------------------------------------------------
# --dry-run
# --------------------------------------------------------------------------

def test_dry_run_plans_without_training_or_writing(data, tmp_path):
    out = tmp_path / "m.fm"
    args = ["--model", "fwfm", "-k", "3", "--optimizer", "adam", "-t", "1", "-o", out, data["train"]]
    res = fm("train", "--dry-run", "--log-json", tmp_path / "log.jsonl", *args)
    assert res.exit_code == 0, res.stderr
    assert not out.exists() and not (tmp_path / "log.jsonl").exists()
    assert not os.path.exists(lock_path(out))
    plan = dict(line.strip().split("  ", 1) for line in res.stdout.splitlines()[1:])
    assert res.stdout.startswith("dry run:")
    res = fm("train", "-q", *args)
    assert res.exit_code == 0, res.stderr
    trained = load_model(out)
    assert int(plan["parameters"].replace(",", "")) == trained.n_parameters
    from fmcli.config import Config
    from fmcli.backend import bytes_needed

    need = bytes_needed(Config(model="fwfm", k=3, optimizer="adam"), trained.spec.n_features,
                                   trained.spec.n_fields)
    assert f"({need:,} bytes)" in plan["memory"]


# --------------------------------------------------------------------------
# locks
# --------------------------------------------------------------------------

def test_a_locked_output_exits_75_naming_the_holder(model, data, tmp_path):
    out = tmp_path / "m.fm"
    out.write_bytes(b"old")
    with output_lock(out):
        res = fm("train", "-t", "1", "-o", out, data["train"])
        one_line_error(res, 75, str(out), f"process {os.getpid()}", "--lock-timeout")
        res = fm("predict", "-o", out, model, data["valid"])
        one_line_error(res, 75, f"process {os.getpid()}")
    assert out.read_bytes() == b"old"
    assert not os.path.exists(lock_path(out))


def test_lock_timeout_waits_for_the_holder(data, tmp_path):
    out = tmp_path / "m.fm"
    held = threading.Event()

    def hold():
        with output_lock(out):
            held.set()
            time.sleep(0.4)

    t = threading.Thread(target=hold)
    t.start()
    held.wait()
    t0 = time.monotonic()
    res = fm("train", "-q", "-t", "1", "--lock-timeout", "20", "-o", out, data["train"])
    t.join()
    assert res.exit_code == 0, res.stderr
    assert time.monotonic() - t0 >= 0.3 and out.exists()
    assert not os.path.exists(lock_path(out))


def test_two_concurrent_runs_one_waits_or_fails(data, tmp_path):
    out = tmp_path / "m.fm"
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    with output_lock(out):
        proc = subprocess.run(FM + ["train", "-q", "-t", "1", "-o", str(out), str(data["train"])],
                              capture_output=True, text=True, env=env)
    assert proc.returncode == 75, proc.stderr
    assert f"process {os.getpid()}" in proc.stderr and not out.exists()


# --------------------------------------------------------------------------
# I/O errors
# --------------------------------------------------------------------------

def test_file_size_limit_is_an_io_error_and_keeps_the_old_model(model, data, tmp_path):
    out = tmp_path / "m.fm"
    out.write_bytes(model.read_bytes())
    before = out.read_bytes()
    limit = len(before) // 4

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run(FM + ["train", "-q", "-t", "1", "--no-cache", "-o", str(out), str(data["train"])],
                          capture_output=True, text=True, env=env, preexec_fn=small_files)
    assert proc.returncode == 74, proc.stderr
    assert proc.stderr.count("\n") == 1 and "File too large" in proc.stderr and str(out) in proc.stderr
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.fm"]   # no temporary or lock file left


def test_disk_full_while_writing_predictions_is_74(model, data, tmp_path, monkeypatch):
    import errno

    out = tmp_path / "p.txt"
    out.write_text("old\n")
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, f):
            self._f = f

        def write(self, s):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self._f, name)

    monkeypatch.setattr(os, "fdopen", lambda *a, **k: Full(real_fdopen(*a, **k)))
    res = fm("predict", "-o", out, model, data["valid"])
    one_line_error(res, 74, "No space left on device", "previous file is unchanged")
    assert out.read_text() == "old\n"


# --------------------------------------------------------------------------
# exit statuses
# --------------------------------------------------------------------------

def test_exit_statuses(model, data, tmp_path, monkeypatch):
    bad = tmp_path / "bad.ffm"
    bad.write_text("1 0:1:x\n")
    assert fm("train", "-q", "-t", "1", "-o", tmp_path / "ok.fm", data["train"]).exit_code == 0
    assert fm("train", "--no-such-option", data["train"]).exit_code == 2
    assert fm("train", "-q", "-o", tmp_path / "b.fm", bad).exit_code == 65
    assert fm("train", "-q", "-o", tmp_path / "b.fm", tmp_path / "missing.ffm").exit_code == 66
    assert fm("train", "-q", "-o", tmp_path / "no" / "dir.fm", data["train"]).exit_code == 73
    assert fm("train", "-q", "-r", "-1", data["train"]).exit_code == 78
    assert fm("train", "-q", "-r", "1e30", "--optimizer", "sgd", "--no-norm", "-o", tmp_path / "d.fm",
              data["train"]).exit_code == 1
    import importlib

    # the module itself: fmcli.train is also the name of the public function
    train_module = importlib.import_module("fmcli.train")

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(train_module, "train", broken)
    res = fm("train", "-q", "-o", tmp_path / "x.fm", data["train"])
    one_line_error(res, 70, "internal error", "a bug")


def test_closed_stdout_is_141(model, data):
    proc = subprocess.Popen(FM + ["predict", "-q", str(model), str(data["valid"])], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 141, err
    assert err == b""


# --------------------------------------------------------------------------
# signals: the first asks training to stop, the second abandons the run
# --------------------------------------------------------------------------

def _fake_train(signals):
    """A stand-in for fmcli.train.train that sends itself `signals` and then
    stops the way the real one does when should_stop() says so."""

    def train(config, train_data, valid=None, *, on_progress=None, should_stop=None, **kwargs):
        for signum in signals:
            os.kill(os.getpid(), signum)
            time.sleep(0.01)   # let the handler run
        on_progress(1, 10, 100)
        stop = should_stop()
        if stop:
            raise Interrupted(stop)
        raise AssertionError("should_stop() did not report the signal")

    return train


@pytest.mark.parametrize("signals, code", [
    ([signal.SIGINT], 130),
    ([signal.SIGTERM], 143),
    ([signal.SIGINT, signal.SIGINT], 130),
    ([signal.SIGTERM, signal.SIGTERM], 143),
])
def test_signals_during_training(data, tmp_path, monkeypatch, signals, code):
    import importlib

    monkeypatch.setattr(importlib.import_module("fmcli.train"), "train", _fake_train(signals))
    log, out = tmp_path / "log.jsonl", tmp_path / "m.fm"
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    res = fm("train", "-o", out, "--log-json", log, data["train"])
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    assert res.exit_code == code, res.stderr
    assert res.stderr.count("stopping after the current chunk (signal again to abort)") == 1
    assert not out.exists() and not os.path.exists(lock_path(out))
    end = json.loads(log.read_text().splitlines()[-1])
    assert end["event"] == "run_end" and end["status"] == "interrupted" and end["exit_code"] == code


# --------------------------------------------------------------------------
# --log-json
# --------------------------------------------------------------------------

def read_log(path):
    lines = path.read_text().splitlines()
    events = [json.loads(line) for line in lines]
    assert all(e["run"] == events[0]["run"] for e in events)
    return events


def test_log_json_of_a_successful_run(data, tmp_path, monkeypatch):
    log, out = tmp_path / "log.jsonl", tmp_path / "m.fm"
    conf = tmp_path / "fm.toml"
    conf.write_text("[train]\nseed = 5\n")
    res = fm("train", "-q", "-t", "2", "--config", conf, "-p", data["valid"], "-o", out, "--log-json", log,
             data["train"])
    assert res.exit_code == 0, res.stderr
    events = read_log(log)
    assert [e["event"] for e in events] == ["run_start", "epoch", "epoch", "run_end"]
    start, e1, e2, end = events
    import fmcli

    assert start["versions"]["fmcli"] == fmcli.__version__ and start["versions"]["numpy"] == np.__version__
    assert start["versions"]["python"] == platform.python_version()
    assert start["seed"] == 5 and start["config"]["seed"] == 5 and start["sources"]["seed"] == "config"
    assert start["config"]["epochs"] == 2 and start["options"]["epochs"] == 2
    (tr,) = start["inputs"]["train"]
    assert tr["path"] == str(data["train"]) and tr["size"] == data["train"].stat().st_size
    assert len(tr["sha256_head_tail"]) == 64 and start["inputs"]["valid"][0]["path"] == str(data["valid"])
    assert start["output"] == str(out)
    assert (e1["epoch"], e2["epoch"]) == (1, 2) and e1["rows"] == 600 and e1["skipped"] == 0
    assert 0 < e1["train_loss"] < 1 and set(e1["valid"]) >= {"logloss", "auc"} and e1["seconds"] >= 0
    import hashlib

    assert end["status"] == "ok" and end["exit_code"] == 0 and end["model"] == str(out)
    assert end["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    # a second run appends
    assert fm("train", "-q", "-t", "1", "-o", out, "--log-json", log, data["train"]).exit_code == 0
    assert len(log.read_text().splitlines()) == 7


def test_log_json_of_a_diverging_run(data, tmp_path):
    log, out = tmp_path / "log.jsonl", tmp_path / "m.fm"
    res = fm("train", "-r", "1e30", "--optimizer", "sgd", "--no-norm", "-o", out, "--log-json", log,
             data["train"])
    assert res.exit_code == 1, res.stderr
    events = read_log(log)
    assert events[0]["event"] == "run_start" and events[-1]["event"] == "run_end"
    end = events[-1]
    assert end["status"] == "error" and end["exit_code"] == 1 and "diverged" in end["error"]
    assert "model" not in end and not out.exists()


def test_log_json_records_a_configuration_error_and_stdin(tmp_path):
    log = tmp_path / "log.jsonl"
    res = fm("train", "-q", "--l1", "0.1", "-o", tmp_path / "m.fm", "--log-json", log, "-", input="1 0:0:1\n")
    assert res.exit_code == 78
    start, end = read_log(log)
    assert start["inputs"]["train"] == [{"path": "-"}] and start["config"] is None
    assert (end["status"], end["exit_code"]) == ("error", 78) and "ftrl" in end["error"]


def test_checkpoint_events_are_logged(data, tmp_path):
    log = tmp_path / "log.jsonl"
    res = fm("train", "-q", "-t", "2", "--checkpoint-dir", tmp_path / "ck", "-o", tmp_path / "m.fm",
             "--log-json", log, data["train"])
    assert res.exit_code == 0, res.stderr
    events = read_log(log)
    ck = [e for e in events if e["event"] == "checkpoint"]
    assert ck and {"path", "epoch", "rows_done"} <= set(ck[0])


# --------------------------------------------------------------------------
# progress
# --------------------------------------------------------------------------

def test_progress_bar_on_a_terminal_console():
    import io

    from rich.console import Console

    from fmcli.cli import _render

    buf = io.StringIO()
    bar = _render.EpochProgress(console=Console(file=buf, force_terminal=True, width=100))
    for done in (0, 50, 100):
        bar(1, done, 100)
    _render.info("a line above the bar")
    bar(2, 30, 100, 0.25)
    bar.close()
    text = buf.getvalue()
    assert "epoch 2" in text and "30/100" in text and "loss 0.25000" in text and "a line above the bar" in text
    assert _render._live is None
    quiet = _render.EpochProgress(quiet=True)
    quiet(1, 1, 2)
    quiet.close()
    assert not quiet.enabled


SWALLOWING_IMPORT = r"""
import os, signal, sys

class Stop(KeyboardInterrupt):
    pass

def stop(signum, frame):
    raise Stop(signum)

signal.signal(signal.SIGTERM, stop)

class Swallow:
    # what a Cython module's initialisation does while it registers its
    # memoryview types: a bare except around code a signal can interrupt
    def find_spec(self, name, path=None, target=None):
        if name == "fmcli._core._parse":
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(100000):
                    pass
            except BaseException:
                pass
        return None

sys.meta_path.insert(0, Swallow())
try:
    import fmcli._core
except Stop:
    print("raised")
else:
    print("swallowed")
"""


def test_a_signal_while_the_extensions_load_is_not_swallowed():
    """fm predict takes its output lock before it loads the compiled core; a
    SIGTERM in the moment a Cython module's initialisation swallows
    exceptions was lost, and the command went on (exit 0)."""
    out = subprocess.run([sys.executable, "-c", SWALLOWING_IMPORT], capture_output=True, text=True, timeout=60,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.stdout.strip() == "raised", out.stdout + out.stderr


def test_sigterm_while_writing_predictions_is_143_and_cleans_up(model, tmp_path):
    out = tmp_path / "p.txt"
    proc = subprocess.Popen(FM + ["predict", "-o", str(out), str(model), "-"], stdin=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not os.path.exists(lock_path(out)) and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert err.decode().strip() == "fm: interrupted by SIGTERM"
    assert list(tmp_path.iterdir()) == []
