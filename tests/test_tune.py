"""fm tune and fmcli.tune: the search space, the successive-halving plan,
the search itself (a better L2 than the default on data that overfit),
resume after SIGKILL, failed trials, the outputs and refused options."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from clirun import invoke, ok
from fmcli import tune as T
from fmcli.config import Config
from fmcli.errors import ConfigError
from fmcli.model import load_model

from synthdata import write_overfitting


# ---------------------------------------------------------------------------
# data: a weak signal in field 0 and 12 fields of ids that recur between the
# training and validation rows but carry nothing: unnormalised FFM learns
# their pairs by heart at the default L2 and its validation logloss climbs.
# ---------------------------------------------------------------------------

def _write(path, rows: int, seed: int, noise_ids: int = 10, fields: int = 12) -> None:
    write_overfitting(path, rows, seed, noise_ids, fields)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("tune")
    _write(d / "tr.ffm", 400, 1)
    _write(d / "va.ffm", 400, 2)
    return d


def _tune(data, out, *args):
    return invoke("tune", "--no-norm", "-j", 2, "-s", 1, "-p", data / "va.ffm", "-o", out,
                  *args, data / "tr.ffm")


# ---------------------------------------------------------------------------
# the space
# ---------------------------------------------------------------------------

def test_specs_parse_to_typed_distributions():
    assert T.parse_param("l2=loguniform(1e-7, 1e-2)") == ("l2", T.Dist("loguniform", (1e-7, 1e-2)))
    assert T.parse_param("k=choice(4,8,16)") == ("k", T.Dist("choice", (4, 8, 16)))
    assert T.parse_param("factors=intlog(2, 32)") == ("k", T.Dist("intlog", (2, 32)))
    assert T.parse_param("learning-rate=0.1") == ("learning_rate", T.Dist("fixed", (0.1,)))
    assert T.parse_param("optimizer=choice(adagrad, 'adam')") == ("optimizer", T.Dist("choice", ("adagrad", "adam")))
    assert T.parse_param("norm=choice(true,false)") == ("normalize", T.Dist("choice", (True, False)))
    assert T.parse_param("l2=uniform(0, 1)")[1].values == (0.0, 1.0)
    # written back as it is read
    d = T.Dist("loguniform", (1e-7, 0.01))
    assert T.parse_spec("l2", d.text(), "x") == d


@pytest.mark.parametrize("text, message", [
    ("l2=loguniform(0, 1)", "low > 0"),
    ("l2=loguniform(1, 0.1)", "low < high"),
    ("l2=logunifrom(1e-7, 1)", "did you mean loguniform"),
    ("k=loguniform(2, 32)", "use int or intlog"),
    ("k=int(2.5, 8)", "two integers"),
    ("l2=choice(1e-3, 1e-3)", "repeats"),
    ("epochs=int(1, 9)", "cannot be searched"),
    ("cache_dir=choice(a, b)", "not a hyperparameter"),
    ("l3=0.1", "unknown parameter"),
    ("l2", "expected NAME=SPEC"),
    ("k=choice(4, x)", "not an integer"),
])
def test_bad_specs_are_one_line_config_errors(text, message):
    with pytest.raises(ConfigError) as e:
        T.parse_param(text)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_ranges_config_refuses_are_refused():
    with pytest.raises(ConfigError, match=r"--param adam_beta1: 1.5: adam_beta1 must be in \[0, 1\)"):
        T.check_space({"adam_beta1": T.Dist("uniform", (0.5, 1.5))}, Config(), {"adam_beta1": "--param adam_beta1"})
    T.check_space({"k": T.Dist("intlog", (2, 32))}, Config())


def test_space_file(tmp_path):
    p = tmp_path / "space.toml"
    p.write_text('[space]\nl2 = "loguniform(1e-7, 1e-2)"\nk = [4, 8, 16]\nnormalize = false\n')
    assert T.read_space(str(p)) == {"l2": T.Dist("loguniform", (1e-7, 1e-2)), "k": T.Dist("choice", (4, 8, 16)),
                                    "normalize": T.Dist("fixed", (False,))}


def test_bad_space_file_is_one_line_exit_78(data, tmp_path):
    p = tmp_path / "space.toml"
    p.write_text('[space]\nl2 = "loguniform(1e-2, 1e-7)"\n')
    r = _tune(data, tmp_path / "m.fm", "--space", p)
    assert r.exit_code == 78, r.output
    assert r.stderr.count("\n") == 1 and str(p) in r.stderr and "[space] l2" in r.stderr
    p.write_text('[space]\nepoch = 3\n')
    r = _tune(data, tmp_path / "m.fm", "--space", p)
    assert r.exit_code == 78 and "[space] epoch" in r.stderr and "did you mean epochs" not in r.stderr
    p.write_text('[space\n')
    assert _tune(data, tmp_path / "m.fm", "--space", p).exit_code == 78
    assert not (tmp_path / "m.fm").exists()


def test_default_space_per_model():
    assert set(T.default_space(Config())) == {"k", "l2", "learning_rate"}
    assert set(T.default_space(Config(model="lr"))) == {"l2", "learning_rate"}
    assert set(T.default_space(Config(optimizer="ftrl"))) == {"k", "l2", "ftrl_alpha", "ftrl_beta"}
    assert T.default_space(Config(optimizer="adam"))["learning_rate"].values == (1e-4, 0.1)
    assert set(T.default_space(Config(), fixed=["k"])) == {"l2", "learning_rate"}
    l2 = T.default_space(Config())["l2"].values
    assert l2[1] / l2[0] >= 1e3 and T.default_space(Config())["k"].values[1] >= 16


def test_sampling_is_reproducible_for_a_seed():
    space = {"l2": T.Dist("loguniform", (1e-7, 1e-2)), "k": T.Dist("intlog", (2, 32)),
             "optimizer": T.Dist("choice", ("adagrad", "sgd"))}
    a = T.sample_trials(space, 20, seed=3)
    assert a == T.sample_trials(dict(reversed(space.items())), 20, seed=3)
    assert a != T.sample_trials(space, 20, seed=4)
    assert all(1e-7 <= t["l2"] <= 1e-2 and 2 <= t["k"] <= 32 for t in a)
    assert {t["optimizer"] for t in a} == {"adagrad", "sgd"}
    # a small discrete space gives distinct configurations while it can
    small = T.sample_trials({"k": T.Dist("choice", (4, 8, 16))}, 3, seed=0)
    assert sorted(t["k"] for t in small) == [4, 8, 16]


def test_successive_halving_plan():
    plan = [(r.size, r.epochs) for r in T.plan_rungs(27, 1, 9, 3)]
    assert plan == [(27, 1), (9, 3), (3, 9)]
    assert [(r.size, r.epochs) for r in T.plan_rungs(5, 1, 9, 3)] == [(5, 1), (1, 9)]
    assert [(r.size, r.epochs) for r in T.plan_rungs(16, 2, 20, 2)] == [(16, 2), (8, 4), (4, 8), (2, 16), (1, 20)]
    assert [(r.size, r.epochs) for r in T.plan_rungs(4, 3, 3, 3)] == [(4, 3)]
    with pytest.raises(ConfigError):
        T.plan_rungs(9, 5, 3, 3)


def test_durations():
    assert T.parse_duration("90") == 90 and T.parse_duration("90s") == 90
    assert T.parse_duration("10m") == 600 and T.parse_duration("1h30m") == 5400
    for bad in ("", "ten", "0s", "5x"):
        with pytest.raises(ValueError):
            T.parse_duration(bad)


# ---------------------------------------------------------------------------
# the search
# ---------------------------------------------------------------------------

def _valid_logloss(model_path) -> float:
    return load_model(model_path).meta["training"]["valid_metrics"]["logloss"]


def test_tune_finds_a_far_better_l2_than_the_default(data, tmp_path):
    # the defaults (--no-norm fixed for both), trained for the tuner's 9 epochs
    ok(invoke("train", "-q", "--no-norm", "-t", 9, "-p", data / "va.ffm", "-o", tmp_path / "d.fm", data / "tr.ffm"))
    default = _valid_logloss(tmp_path / "d.fm")
    out = tmp_path / "best.fm"
    r = ok(_tune(data, out, "--trials", 9, "-k", 4, "--param", "l2=loguniform(1e-7,1e-1)",
                 "--param", "learning_rate=0.2", "--json"))
    summary = json.loads(r.stdout)
    best = load_model(out)
    tuned = best.meta["training"]["valid_metrics"]["logloss"]
    assert tuned <= 0.9 * default, (tuned, default)
    assert best.meta["hyperparameters"]["l2"] > 100 * 2e-5
    # the header holds the whole search; the summary is the same record
    rec = best.meta["tuning"]
    assert rec["best"]["value"] == pytest.approx(tuned) == summary["best"]["value"]
    assert rec["space"] == {"l2": "loguniform(1e-07, 0.1)", "learning_rate": "0.2"}
    assert len(rec["leaderboard"]) == 9 and rec["seed"] == 0 and rec["metric"] == "logloss"
    assert [p["size"] for p in rec["plan"]] == [9, 3, 1]
    assert best.meta["training"]["model_epoch"] == rec["best"]["epoch"]
    # and fm predict reads it
    p = ok(invoke("predict", out, data / "va.ffm"))
    assert len(p.stdout.split()) == 400


def test_leaderboards_and_failed_trials(data, tmp_path):
    # sgd at a huge step size diverges: recorded, not fatal
    out = tmp_path / "m.fm"
    r = ok(_tune(data, out, "--trials", 4, "--optimizer", "sgd", "--max-epochs", 3, "-k", 2, "-l", 1e-3,
                 "--param", "learning_rate=choice(0.01, 1e12)", "--leaderboard", tmp_path / "b.csv"))
    with open(tmp_path / "b.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(x["trial"]) for x in rows] and len(rows) == 4
    assert {"trial", "learning_rate", "rung", "epochs", "best_epoch", "value", "valid_logloss", "valid_auc",
            "seconds", "status", "error"} <= set(rows[0])
    failed = [x for x in rows if x["status"] == "failed"]
    assert failed and all("DivergenceError" in x["error"] for x in failed)
    assert all(float(x["learning_rate"]) == 1e12 for x in failed)
    assert rows[0]["status"] == "completed" and float(rows[0]["learning_rate"]) == 0.01
    assert "failed" in r.stderr
    # JSON lines: one object per trial, the same order
    ok(invoke("tune", "--resume", str(out) + ".tune", "--leaderboard", tmp_path / "b.jsonl", "-q"))
    lines = [json.loads(x) for x in open(tmp_path / "b.jsonl")]
    assert [x["trial"] for x in lines] == [int(x["trial"]) for x in rows]
    assert lines[0]["params"] == {"learning_rate": 0.01} and lines[0]["metrics"]["logloss"] > 0


def test_every_trial_failing_fails_the_search(data, tmp_path):
    r = _tune(data, tmp_path / "m.fm", "--trials", 2, "--optimizer", "sgd", "--max-epochs", 1, "-k", 2,
              "-l", 1e-3, "--param", "learning_rate=choice(1e12, 1e13)")
    assert r.exit_code == 1 and "every trial failed" in r.stderr
    assert not (tmp_path / "m.fm").exists()


def test_refit_trains_on_train_and_valid(data, tmp_path):
    out = tmp_path / "r.fm"
    r = ok(_tune(data, out, "--trials", 3, "--max-epochs", 3, "-k", 2, "--param", "l2=choice(1e-3, 1e-2, 1e-1)",
                 "--refit"))
    m = load_model(out)
    t, rec = m.meta["training"], m.meta["tuning"]
    assert t["train_rows"] == 800 and t["valid_file"] is None
    assert rec["refit"]["epochs"] == rec["best"]["epoch"] == t["epochs_run"]
    assert m.meta["hyperparameters"]["l2"] == rec["best"]["params"]["l2"]
    assert "refitted" in r.stderr
    # fm inspect shows the search the model came from
    shown = ok(invoke("inspect", out)).stdout
    best = rec["best"]
    assert f"fm tune, {rec['trials']} trials in 1 bracket, logloss on {data / 'va.ffm'}" in shown
    assert "l2=choice(0.001, 0.01, 0.1)" in shown
    chosen = ", ".join(f"{k}={v}" for k, v in best["params"].items())
    assert f"#{best['trial']}: {chosen}; logloss {best['value']:.5f} at epoch {best['epoch']}" in shown
    assert f"on {data / 'tr.ffm'}, {data / 'va.ffm'} for {best['epoch']} epochs" in shown


@pytest.mark.parametrize("args, message", [
    (("--init-model", "x.fm"), "--init-model is not an option of fm tune"),
    (("-t", 5), "--epochs is not an option of fm tune"),
    (("--patience", 2), "--patience"),
    (("--auto-stop",), "--auto-stop"),
    (("--dry-run",), "--dry-run"),
    (("--checkpoint-dir", "ck"), "--checkpoint-dir"),
    (("-k", 8, "--param", "k=choice(4,8)"), "k is both fixed (--factors) and searched (--param k)"),
    (("--scheduler", "local:2", "--rows-per-round", 1000), "--rows-per-round is not an option of fm tune"),
    (("--scheduler", "local:2", "--syncs-per-epoch", 2), "--syncs-per-epoch is not an option of fm tune"),
])
def test_refused_options(data, tmp_path, args, message):
    (tmp_path / "x.fm").write_bytes(b"")
    r = invoke("tune", "-p", data / "va.ffm", "-o", tmp_path / "m.fm", *args, data / "tr.ffm", cwd=tmp_path)
    assert r.exit_code == 2, (r.exit_code, r.output)
    assert message in r.stderr


def test_validation_set_is_required(data, tmp_path):
    r = invoke("tune", "-o", tmp_path / "m.fm", data / "tr.ffm")
    assert r.exit_code == 2 and "-p" in r.stderr


def test_a_new_search_does_not_reuse_a_directory(data, tmp_path):
    ok(_tune(data, tmp_path / "m.fm", "--trials", 1, "--max-epochs", 1, "-q"))
    r = _tune(data, tmp_path / "m.fm", "--trials", 1, "--max-epochs", 1, "-q")
    assert r.exit_code == 2 and "--resume" in r.stderr


# ---------------------------------------------------------------------------
# resume
# ---------------------------------------------------------------------------

def _board(path):
    """A leaderboard without its timings."""
    return [{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in open(path)]


def test_resume_after_sigkill_gives_the_same_leaderboard(tmp_path):
    _write(tmp_path / "tr.ffm", 6000, 1, noise_ids=40)
    _write(tmp_path / "va.ffm", 2000, 2, noise_ids=40)
    args = ["--no-norm", "-j", "2", "-s", "1", "--trials", "9", "--max-epochs", "9", "-p", str(tmp_path / "va.ffm"),
            str(tmp_path / "tr.ffm")]
    # uninterrupted
    ok(invoke("tune", *args, "-q", "-o", tmp_path / "a.fm", "--leaderboard", tmp_path / "a.jsonl"))
    # killed (the command and its trials) once a few results are in
    out = tmp_path / "b.fm"
    results = tmp_path / "b.fm.tune" / "results.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "fmcli", "tune", *args, "-q", "-o", str(out)],
                            start_new_session=True, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if results.exists() and len(results.read_text().splitlines()) >= 4:
                break
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done = len(results.read_text().splitlines())
    assert proc.returncode == -signal.SIGKILL and 4 <= done < 13, (proc.returncode, done)
    assert not out.exists()
    # settings other than the record's are refused
    r = invoke("tune", "--resume", str(out) + ".tune", "--trials", 5)
    assert r.exit_code == 2 and "--trials" in r.stderr
    r = ok(invoke("tune", "--resume", str(out) + ".tune", "-j", 1, "--leaderboard", tmp_path / "b.jsonl"))
    assert "reused" in r.stderr
    assert _board(tmp_path / "b.jsonl") == _board(tmp_path / "a.jsonl")
    a, b = load_model(tmp_path / "a.fm"), load_model(out)
    # the same best model, bit for bit (one thread per trial)
    assert a.params.keys() == b.params.keys()
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    assert a.meta["tuning"]["best"] == b.meta["tuning"]["best"]


def test_budget_stops_new_trials_and_the_search_resumes(data, tmp_path):
    # a budget spent before the first trial starts: nothing to keep, an error
    out = tmp_path / "m.fm"
    r = _tune(data, out, "--trials", 6, "--budget", "0.001s")
    assert r.exit_code == 1 and "no trial finished within the budget" in r.stderr
    assert not out.exists()
    # the search is kept: resumed without a budget, it runs to its end
    r = ok(invoke("tune", "--resume", str(out) + ".tune", "--json"))
    rec = json.loads(r.stdout)
    assert rec["stopped"] is None and rec["budget_seconds"] is None
    # the last rung's one place trained at most one trial; any other there
    # stopped improving on its own before it and went on as it was
    rows = [json.loads(line) for line in (tmp_path / "m.fm.tune" / "results.jsonl").read_text().splitlines()]
    last = max(row["rung"] for row in rows)
    at_last = [row for row in rows if row["rung"] == last]
    assert rec["plan"][-1]["size"] == 1 and len([row for row in at_last if row["seconds"] > 0]) <= 1
    assert all(row["done"] for row in at_last if row["seconds"] == 0)
    assert [row["status"] for row in rec["leaderboard"]].count("completed") == len(at_last)
    assert load_model(out).meta["tuning"]["trials"] == 6


def test_the_first_trial_is_the_untuned_configuration_when_the_space_holds_it():
    from fmcli.config import Config

    space = {"l2": T.Dist("loguniform", (1e-7, 1e-2)), "k": T.Dist("intlog", (2, 32)),
             "learning_rate": T.Dist("loguniform", (0.01, 1.0))}
    cfg = Config()
    assert T.base_point(space, cfg) == {"k": cfg.k, "l2": cfg.l2, "learning_rate": cfg.step_size}
    assert T.base_point(space, Config(k=8, learning_rate=0.05)) == {"k": 8, "l2": cfg.l2, "learning_rate": 0.05}
    # a default outside the space: no such trial
    assert T.base_point({**space, "l2": T.Dist("loguniform", (1e-3, 1e-1))}, cfg) is None
    assert T.base_point({"optimizer": T.Dist("choice", ("sgd", "adam"))}, cfg) is None
    assert T.base_point({"optimizer": T.Dist("choice", ("sgd", "adagrad"))}, cfg) == {"optimizer": "adagrad"}


def test_pipes_and_stdin_are_refused_in_one_line(tmp_path):
    """Trials read the data again: a FIFO or '-' would hang or be empty."""
    import os

    from clirun import invoke

    d = tmp_path
    _write(d / "tr.ffm", 200, seed=1)
    fifo = d / "tr.fifo"
    os.mkfifo(fifo)
    for args in (["-p", d / "tr.ffm", fifo], ["-p", d / "tr.ffm", "-"], ["-p", fifo, d / "tr.ffm"]):
        res = invoke("tune", "-q", "--trials", "2", "--max-epochs", "1", "-o", d / "b.fm", *args, input="")
        assert res.exit_code == 78, res.stderr
        assert "needs a file, not standard input, a pipe or a FIFO" in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
