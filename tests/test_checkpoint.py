"""Checkpoints, resume after SIGKILL, and warm starts."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fmcli import checkpoint
from fmcli.config import Config
from fmcli.errors import ConfigError, Interrupted
from fmcli.train import train
from synthdata import write_synth

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckdata")
    lines = write_synth(d, 12000, seed=3, fields=12, valid_rows=1500)
    (d / "day1.ffm").write_text("".join(lines[:6000]))
    (d / "day2.ffm").write_text("".join(lines[6000:]))
    return d


def fm_cmd(*args):
    return [sys.executable, "-m", "fmcli", "train", *map(str, args)]


def env(cache):
    return {**os.environ, "SOURCE_DATE_EPOCH": "1700000000", "FMCLI_CACHE_DIR": str(cache)}


def run_args(data, ck, out):
    return ["--model", "ffm", "-t", "3", "-s", "1", "-p", data / "va.ffm", "--patience", "2",
            "--checkpoint-dir", ck, "--checkpoint-every", "1000", "-q", "-o", out, data / "tr.ffm"]


def test_sigkill_at_random_points_then_resume_gives_the_same_bytes(data, tmp_path):
    ck, cache = tmp_path / "ck", tmp_path / "cache"
    ref = tmp_path / "ref.fm"
    t0 = time.perf_counter()
    subprocess.run(fm_cmd(*run_args(data, ck, ref)), check=True, env=env(cache))
    duration = time.perf_counter() - t0
    # The reference run used the same checkpoint directory (it is part of the
    # recorded configuration); start the interrupted runs afresh there.
    for p in ck.iterdir():
        p.unlink()
    out = tmp_path / "out.fm"
    rnd = random.Random(7)
    kills = 0
    cmd = fm_cmd(*run_args(data, ck, out))
    for attempt in range(40):
        proc = subprocess.Popen(cmd, env=env(cache), stderr=subprocess.PIPE)
        delay = rnd.uniform(0.15, 0.9) * duration
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
        err = proc.stderr.read().decode()
        proc.stderr.close()
        if proc.returncode == 0:
            break
        assert proc.returncode == -signal.SIGKILL, (proc.returncode, err)
        # continue from the newest checkpoint, or from scratch if none was written yet
        cmd = fm_cmd("--resume", ck) if any(ck.glob("ckpt-*.fmc")) else fm_cmd(*run_args(data, ck, out))
    assert out.exists() and kills >= 2, (kills, attempt)
    assert out.read_bytes() == ref.read_bytes()


@pytest.mark.parametrize("model", ["fm", "fmfm"])
def test_interrupt_checkpoints_and_resumes_to_the_same_model(data, tmp_path, monkeypatch, model):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    cfg = Config(model=model, epochs=2, checkpoint_dir=str(tmp_path / "ck"), checkpoint_every=2000,
                 cache=False)
    ref = train(cfg, str(data / "tr.ffm"))
    for p in (tmp_path / "ck").iterdir():
        p.unlink()
    calls = []

    def stop_once():
        calls.append(1)
        return signal.SIGTERM if len(calls) == 4 else None

    events = []
    with pytest.raises(Interrupted) as info:
        train(cfg, str(data / "tr.ffm"), should_stop=stop_once, on_checkpoint=events.append)
    assert info.value.exit_code == 143 and info.value.checkpointed
    assert events[-1]["rows_done"] == 8000 and events[-1]["epoch"] == 1
    ck = checkpoint.load_latest(str(tmp_path / "ck"))
    assert ck.info["epoch"] == 1 and ck.info["rows_done"] == 8000
    resumed = train(cfg, str(data / "tr.ffm"), resume=str(tmp_path / "ck"))
    for name in ref.params:
        assert np.array_equal(np.asarray(ref.params[name]), np.asarray(resumed.params[name]))
    assert resumed.meta["training"]["history"] == ref.meta["training"]["history"]


def test_resume_refuses_changed_data(data, tmp_path):
    cfg = Config(model="lr", epochs=2, checkpoint_dir=str(tmp_path / "ck"), cache=False)
    train(cfg, str(data / "day1.ffm"))
    with pytest.raises(ConfigError, match="changed since the checkpoint"):
        train(cfg, str(data / "day2.ffm"), resume=str(tmp_path / "ck"))


def test_only_the_newest_checkpoints_are_kept(data, tmp_path):
    cfg = Config(model="lr", epochs=5, checkpoint_dir=str(tmp_path / "ck"), keep_checkpoints=2, cache=False)
    train(cfg, str(data / "day1.ffm"))
    names = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert names == ["ckpt-00000003.fmc", "ckpt-00000004.fmc"]
    (tmp_path / "ck" / "ckpt-00000004.fmc").write_bytes(b"torn")
    assert checkpoint.load_latest(str(tmp_path / "ck")).path.endswith("ckpt-00000003.fmc")


@pytest.mark.parametrize("model,optimizer", [("ffm", "adagrad"), ("ffm", "adam"), ("ffm", "ftrl"),
                                             ("ffm", "rowwise-adagrad"), ("fm", "rowwise-adagrad"),
                                             ("fwfm", "adam"), ("fmfm", "adagrad"), ("fmfm", "ftrl"),
                                             ("fmfm", "rowwise-adagrad")])
def test_daily_warm_starts_equal_one_run_over_all_days(data, tmp_path, model, optimizer):
    base = dict(model=model, optimizer=optimizer, epochs=1, shuffle=False, cache=False)
    whole = train(Config(**base), [str(data / "day1.ffm"), str(data / "day2.ffm")])
    day1 = train(Config(**base), str(data / "day1.ffm"))
    day1.save(tmp_path / "day1.fm")
    day2 = train(Config(**base, init_model=str(tmp_path / "day1.fm")), str(data / "day2.ffm"))
    assert day1.spec.n_features <= day2.spec.n_features == whole.spec.n_features
    for name in whole.params:
        np.testing.assert_array_equal(np.asarray(day2.params[name]), np.asarray(whole.params[name]), name)
    parent = day2.meta["parent"]
    assert parent["path"].endswith("day1.fm") and len(parent["sha256"]) == 64
    day2.save(tmp_path / "day2.fm")
    from click.testing import CliRunner

    from fmcli.cli import cli

    shown = CliRunner().invoke(cli, ["inspect", str(tmp_path / "day2.fm")]).stdout
    assert "warm start from" in shown and parent["sha256"][:16] in shown
    assert day2.meta["optimizer"]["steps"] == whole.meta["optimizer"]["steps"]


def test_warm_start_refuses_another_model_kind(data, tmp_path):
    train(Config(model="fm", epochs=1, cache=False), str(data / "day1.ffm")).save(tmp_path / "fm.fm")
    with pytest.raises(ConfigError, match="--init-model has model 'fm' but this run trains 'ffm'"):
        train(Config(model="ffm", epochs=1, init_model=str(tmp_path / "fm.fm"), cache=False),
              str(data / "day2.ffm"))


def test_sigterm_mid_epoch_exits_143_with_a_checkpoint_and_a_run_log(data, tmp_path):
    import json

    ck, log = tmp_path / "ck", tmp_path / "run.jsonl"
    cmd = fm_cmd("--model", "ffm", "-t", "40", "-s", "1", "--checkpoint-dir", ck, "--checkpoint-every", "4000",
                 "--log-json", log, "-o", tmp_path / "m.fm", data / "tr.ffm")
    proc = subprocess.Popen(cmd, env=env(tmp_path / "cache"), stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and not list(ck.glob("ckpt-*.fmc")):
        time.sleep(0.05)
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err.decode()
    assert time.time() - sent < 5
    assert not (tmp_path / "m.fm").exists()
    ck_info = checkpoint.load_latest(str(ck)).info
    assert 1 <= ck_info["epoch"] <= 40
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert events[0]["event"] == "run_start" and events[-1]["event"] == "run_end"
    assert events[-1]["status"] == "interrupted" and events[-1]["exit_code"] == 143
