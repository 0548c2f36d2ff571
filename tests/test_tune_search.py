"""fmcli.tune's search strategy: brackets that use the whole budget, the
model-based proposals, the outlook that ranks trials at a rung, the
reproducible synchronous mode across brackets (resumed after SIGKILL),
SIGTERM/SIGINT during a search, and the pruning of models a finished search
no longer needs."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from clirun import invoke, ok
from fmcli import tune as T
from fmcli.model import load_model

from synthdata import write_overfitting


def _write(path, rows: int, seed: int, noise_ids: int = 30, fields: int = 10) -> None:
    write_overfitting(path, rows, seed, noise_ids, fields)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("search")
    _write(d / "tr.ffm", 3000, 1)
    _write(d / "va.ffm", 1000, 2)
    return d


# ---------------------------------------------------------------------------
# the sampler and the outlook (no training)
# ---------------------------------------------------------------------------

SPACE = {"l2": T.Dist("loguniform", (1e-6, 1e-2)), "learning_rate": T.Dist("loguniform", (0.02, 1.0)),
         "k": T.Dist("intlog", (4, 32))}


def _objective(p) -> float:
    """A bowl in the log space, its bottom at l2 = 1e-4, learning_rate = 0.15, k = 8."""
    return ((math.log10(p["l2"]) + 4) ** 2 + (math.log10(p["learning_rate"]) - math.log10(0.15)) ** 2
            + 0.1 * (math.log2(p["k"]) - 3) ** 2)


def test_proposals_prefer_the_good_region():
    # 27 spread-out observations, then 27 proposals from them, over 5 seeds
    guided, random = [], []
    for seed in range(5):
        seen = T.sample_trials(SPACE, 27, seed)
        obs = [(p, _objective(p)) for p in seen]
        rng = np.random.default_rng(seed)
        new = T.propose(SPACE, obs, 27, rng, exclude=seen)
        assert len(new) == 27 and not {tuple(sorted(p.items())) for p in new} & \
            {tuple(sorted(p.items())) for p in seen}
        assert all(1e-6 <= p["l2"] <= 1e-2 and 0.02 <= p["learning_rate"] <= 1 and 4 <= p["k"] <= 32 for p in new)
        guided += [_objective(p) for p in new]
        random += [_objective(p) for p in T.sample_trials(SPACE, 27, 100 + seed)]
    # proposals lie far closer to the bottom than random draws
    assert np.median(guided) < 0.5 * np.median(random), (np.median(guided), np.median(random))
    # and the same again from the same state: reproducible
    seen = T.sample_trials(SPACE, 27, 0)
    obs = [(p, _objective(p)) for p in seen]
    assert T.propose(SPACE, obs, 9, np.random.default_rng(1)) == T.propose(SPACE, obs, 9, np.random.default_rng(1))


def test_a_guided_search_beats_random_draws_of_the_same_size():
    # 18 spread-out trials, then four brackets of 9 proposed from all before;
    # against as many random draws: its best five are closer to the bottom
    ours, theirs = [], []
    for seed in range(10):
        obs = [(p, _objective(p)) for p in T.sample_trials(SPACE, 18, seed)]
        rng = np.random.default_rng(seed)
        for _ in range(4):
            new = T.propose(SPACE, obs, 9, rng, exclude=[p for p, _ in obs])
            obs += [(p, _objective(p)) for p in new]
        ours.append(np.mean(sorted(v for _, v in obs)[:5]))
        theirs.append(np.mean(sorted(_objective(p) for p in T.sample_trials(SPACE, len(obs), 50 + seed))[:5]))
    assert sum(a < b for a, b in zip(ours, theirs)) >= 8 and np.mean(ours) < 0.7 * np.mean(theirs), (ours, theirs)


def test_proposals_avoid_failed_trials_and_handle_choices():
    space = {"optimizer": T.Dist("choice", ("adagrad", "sgd", "adam")), "l2": T.Dist("loguniform", (1e-6, 1e-2))}
    seen = T.sample_trials(space, 24, 0)
    # sgd always fails; adam beats adagrad
    obs = [(p, math.nan if p["optimizer"] == "sgd" else 1.0 if p["optimizer"] == "adagrad" else 0.5) for p in seen]
    new = T.propose(space, obs, 20, np.random.default_rng(0), exclude=seen)
    counts = {o: sum(p["optimizer"] == o for p in new) for o in ("adagrad", "sgd", "adam")}
    assert counts["adam"] > counts["adagrad"] and counts["adam"] > counts["sgd"], counts
    # too few observations: plain random draws
    few = T.propose(space, obs[:3], 5, np.random.default_rng(0))
    assert len(few) == 5


def test_latin_hypercube_first_bracket_covers_every_slice():
    trials = T.sample_trials(SPACE, 10, seed=3)
    for name in ("l2", "learning_rate"):
        cells = sorted(int(SPACE[name].unit(t[name]) * 10) for t in trials)
        assert cells == list(range(10)), (name, cells)
    # k is an integer: 4 .. 32 in as many different values as its slices allow
    assert len({t["k"] for t in trials}) >= 8


def test_outlook_ranks_a_slow_improving_trial_ahead_of_a_finished_one():
    fast = [0.5110, 0.5090, 0.5088]        # a large step size: nearly at its end
    slow = [0.5150, 0.5110, 0.5090]        # a small one: a little worse so far, still gaining
    assert T.outlook(fast, "logloss") < fast[-1] and T.outlook(slow, "logloss") < slow[-1]
    assert T.outlook(slow, "logloss") < T.outlook(fast, "logloss")
    assert T.outlook(slow, "logloss") == pytest.approx(0.5090 - 0.0020 * 0.5 / (1 - 0.5))
    # two epochs: the last gain times OUTLOOK_RATIO / (1 - OUTLOOK_RATIO)
    q = T.OUTLOOK_RATIO
    assert T.outlook([0.52, 0.51], "logloss") == pytest.approx(0.51 - 0.01 * q / (1 - q))
    # getting worse, or done: its best
    assert T.outlook([0.52, 0.51, 0.515], "logloss") == 0.51
    assert T.outlook(slow, "logloss", done=True) == min(slow)
    # higher is better for AUC
    assert T.outlook([0.70, 0.72, 0.73], "auc") > 0.73
    assert T.outlook([], "logloss") is None and T.outlook([0.5], "logloss") == 0.5


@pytest.mark.parametrize("left, starts", [(3.0, False), (5.5, False), (6.5, True), (20.0, True)])
def test_a_new_bracket_starts_when_the_budget_holds_a_first_rung_times_the_reduction(tmp_path, left, starts):
    # trials of 1 s an epoch; a new bracket's trials may train up to 30 epochs
    # and are expected to stop after about 15: one starts (cut to what fits)
    # once 2 x 3 = 6 epochs fit, not only when 15 do
    from fmcli.config import Config

    search = T.Search(config=Config(), space=SPACE, trials=[{"l2": 1e-4, "learning_rate": 0.1, "k": 8}],
                      plan=T.plan_rungs(1, 2, 30, 3), metric="logloss", train=["tr"], valid="va",
                      min_epochs=2, max_epochs=30, reduction=3)
    runner = T._Runner(search, str(tmp_path), 1, time.monotonic() + left, lambda msg: None, None, None,
                       overlap=True)
    runner.results[(0, 0)] = {"trial": 0, "rung": 0, "status": "ok", "ran": 4, "seconds": 4.0, "value": 0.5,
                              "best_epoch": 4, "done": True}
    assert runner._fits(None, 0, len(search.groups)) is starts
    if starts:
        job = runner._within_budget({"trial": 1, "from": 0, "to": 30})
        assert job["to"] == math.ceil(left) - 1      # the whole epochs left


def test_a_trial_not_yet_run_is_timed_by_the_trials_of_its_factor_width(tmp_path):
    # a k=16 proposal after k=4 and k=8 trials is expected to take longer an
    # epoch than their median: the budget cuts it to the epochs that fit
    from fmcli.config import Config

    trials = [{"l2": 1e-4, "learning_rate": 0.1, "k": k} for k in (4, 8, 8, 16, 13, 6)]
    search = T.Search(config=Config(), space=SPACE, trials=trials, plan=T.plan_rungs(len(trials), 2, 30, 3),
                      metric="logloss", train=["tr"], valid="va")
    runner = T._Runner(search, str(tmp_path), 1, None, lambda msg: None, None, None)
    for t, seconds in enumerate((1.0, 1.5, 1.7)):
        runner.results[(t, 0)] = {"trial": t, "rung": 0, "status": "ok", "ran": 2, "seconds": 2 * seconds}
    assert runner._epoch_seconds(0) == 1.0 and runner._epoch_seconds(2) == 1.7    # its own
    assert runner._epoch_seconds(5) == 1.6          # k=6: the median of the width-8 trials
    # k=16 (and k=13, also 16 wide): scaled from every trial by (width + 8)
    scaled = np.median([1.0 / 12, 1.5 / 16, 1.7 / 16]) * 24
    assert runner._epoch_seconds(3) == pytest.approx(scaled) and runner._epoch_seconds(4) == pytest.approx(scaled)
    assert runner._epoch_seconds(None) == 1.5       # a trial not proposed yet: the median of all


# ---------------------------------------------------------------------------
# searches
# ---------------------------------------------------------------------------

def _args(data, *more):
    return ["--no-norm", "-j", "2", "-s", "1", "-p", str(data / "va.ffm"), *map(str, more), str(data / "tr.ffm")]


def test_a_budget_is_used_by_bracket_after_bracket(data, tmp_path):
    budget = 8.0
    r = ok(invoke("tune", *_args(data, "--bracket", 6, "--max-epochs", 6), "--budget", f"{budget}s", "--json",
                  "-o", tmp_path / "m.fm"))
    rec = json.loads(r.stdout)
    assert rec["max_trials"] is None and rec["stopped"] == "budget"
    # the first bracket whole, the later ones proposed one trial at a time as workers took them
    sizes = [size for _, size in rec["brackets"]]
    assert len(sizes) >= 2 and sum(sizes[:-1]) < rec["trials"] <= sum(sizes)
    # trials kept starting until the budget was nearly spent
    assert rec["seconds"] >= 0.8 * budget, rec["seconds"]
    assert rec["trial_seconds"] >= 0.8 * budget, rec["trial_seconds"]
    # the later brackets were proposed and recorded
    lines = [json.loads(x) for x in open(tmp_path / "m.fm.tune" / "brackets.jsonl")]
    # (a bracket opened as the budget ran out may have no trial: the record lists those that ran)
    assert sorted({b["bracket"] for b in lines if b["trials"]}) == list(range(1, len(rec["brackets"])))
    assert all(size >= 1 for size in sizes)
    assert 6 + sum(len(b["trials"]) for b in lines) == rec["trials"]
    assert load_model(tmp_path / "m.fm").meta["tuning"]["best"] == rec["best"]


def _board(path):
    """A leaderboard without its timings."""
    return [{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in open(path)]


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    """A synchronous search of 12 trials (a first bracket of 6, then two of 3), to its end."""
    d = tmp_path_factory.mktemp("whole")
    ok(invoke("tune", *_args(data, "--trials", 12, "--bracket", 6, "--max-epochs", 8), "-q", "-o", d / "a.fm",
              "--leaderboard", d / "a.jsonl"))
    return d


def _start(data, out):
    return subprocess.Popen([sys.executable, "-m", "fmcli", "tune",
                             *_args(data, "--trials", 12, "--bracket", 6, "--max-epochs", 8), "-q", "-o", str(out)],
                            start_new_session=True, stderr=subprocess.PIPE, text=True)


def _wait_for_results(proc, results, n: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if results.exists() and len(results.read_text().splitlines()) >= n:
            return
        time.sleep(0.01)


def test_synchronous_brackets_resume_after_sigkill_to_the_same_leaderboard(data, uninterrupted, tmp_path):
    a = uninterrupted
    rec = load_model(a / "a.fm").meta["tuning"]
    assert rec["brackets"] == [[0, 6], [6, 3], [9, 3]] and rec["max_trials"] == 12
    # the first bracket halves 6 trials from 2 epochs; the later ones train to their own early stop
    assert [(r["size"], r["epochs"]) for r in rec["plan"]] == [(6, 2), (2, 6), (1, 8)]
    board = [json.loads(x) for x in open(a / "a.jsonl")]
    assert all(row["rung"] == 0 and row["status"] == "completed" for row in board if row["trial"] >= 6)
    out = tmp_path / "b.fm"
    results = tmp_path / "b.fm.tune" / "results.jsonl"
    proc = _start(data, out)
    try:
        _wait_for_results(proc, results, 11)     # past the first bracket (9 results)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    r = ok(invoke("tune", "--resume", str(out) + ".tune", "--leaderboard", tmp_path / "b.jsonl"))
    assert "reused" in r.stderr
    assert _board(tmp_path / "b.jsonl") == _board(a / "a.jsonl")
    # the same proposals, and the same best model bit for bit
    assert open(a / "a.fm.tune" / "brackets.jsonl").read() == open(tmp_path / "b.fm.tune" / "brackets.jsonl").read()
    ma, mb = load_model(a / "a.fm"), load_model(out)
    assert all(np.array_equal(ma.params[k], mb.params[k]) for k in ma.params)


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_the_search_and_resume_finishes_it(data, uninterrupted, tmp_path, signum, status):
    out = tmp_path / "c.fm"
    results = tmp_path / "c.fm.tune" / "results.jsonl"
    proc = _start(data, out)
    try:
        _wait_for_results(proc, results, 5)
        os.kill(proc.pid, signum)                 # the command only (a terminal's Ctrl-C reaches the group)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == status, err
    assert "stopping the search" in err and "Traceback" not in err
    assert not out.exists()
    kept = len(results.read_text().splitlines())
    assert kept >= 5
    # the workers are gone with it
    r = ok(invoke("tune", "--resume", str(out) + ".tune", "--leaderboard", tmp_path / "c.jsonl"))
    assert f"{kept} (trial, rung) result(s) reused" in r.stderr
    assert _board(tmp_path / "c.jsonl") == _board(uninterrupted / "a.jsonl")


def test_a_finished_search_keeps_only_the_best_model(data, uninterrupted, tmp_path):
    d = uninterrupted / "a.fm.tune"
    rec = load_model(uninterrupted / "a.fm").meta["tuning"]
    best = rec["best"]
    models = sorted(os.path.relpath(os.path.join(p, f), d) for p, _, fs in os.walk(d / "trials") for f in fs)
    board = [json.loads(x) for x in open(uninterrupted / "a.jsonl")]
    assert models == [board[0]["model"]] and board[0]["trial"] == best["trial"]
    pruned = open(d / "pruned.txt").read().split()
    assert len(pruned) == rec["pruned_files"] > 1 and rec["pruned_bytes"] > 0
    # resumed, the finished search still counts every result and writes the same model
    r = ok(invoke("tune", "--resume", str(d), "-o", tmp_path / "again.fm", "--leaderboard", tmp_path / "x.jsonl"))
    assert "reused" in r.stderr
    assert _board(tmp_path / "x.jsonl") == _board(uninterrupted / "a.jsonl")
    again, first = load_model(tmp_path / "again.fm"), load_model(uninterrupted / "a.fm")
    assert all(np.array_equal(again.params[k], first.params[k]) for k in first.params)


def test_a_short_budget_cuts_the_first_bracket_and_resume_keeps_the_cut(data, tmp_path, monkeypatch):
    out = tmp_path / "s.fm"
    # the cut depends on how fast the first trials ran: a tiny share of the
    # budget for the first bracket makes the cut certain on any machine
    monkeypatch.setattr(T, "FIRST_SHARE", 1e-3)
    r = ok(invoke("tune", *_args(data, "--bracket", 27, "--max-epochs", 4), "--budget", "3s", "--json", "-o", out))
    rec = json.loads(r.stdout)
    lines = [json.loads(x) for x in open(tmp_path / "s.fm.tune" / "brackets.jsonl")]
    cut = [x["resize"] for x in lines if "resize" in x]
    assert len(cut) == 1 and T.MIN_FIRST_BRACKET <= cut[0] < 27, (cut, r.stderr)
    assert rec["brackets"][0] == [0, cut[0]] and "the others are left out" in r.stderr
    assert [p["size"] for p in rec["plan"]][0] == cut[0]
    # resumed without a budget: the same cut bracket (tune.json still holds all 27), run to its end
    assert len(json.load(open(tmp_path / "s.fm.tune" / "tune.json"))["trials"]) == 27
    r = ok(invoke("tune", "--resume", str(out) + ".tune", "--json"))
    again = json.loads(r.stdout)
    assert again["brackets"][0] == [0, cut[0]] and again["stopped"] is None
    assert sum(row["status"] == "completed" for row in again["leaderboard"] if row["trial"] < cut[0]) >= 1
    assert all(row["status"] != "not run" for row in again["leaderboard"] if row["trial"] < cut[0])


# ---------------------------------------------------------------------------
# trials on a Dask cluster (fm tune --scheduler)
# ---------------------------------------------------------------------------

def test_trials_on_a_dask_cluster_give_the_search_run_here(data, uninterrupted, tmp_path):
    """The same synchronous search with its trials as tasks on two Dask
    workers: the same leaderboard, proposals and best model, and every trial
    trained whole on one worker (not data-parallel)."""
    pytest.importorskip("distributed")
    out = tmp_path / "d.fm"
    r = ok(invoke("tune", *_args(data, "--trials", 12, "--bracket", 6, "--max-epochs", 8), "--scheduler", "local:2",
                  "-o", out, "--leaderboard", tmp_path / "d.jsonl"))
    assert "trials run on the Dask cluster's workers, 2 at a time" in r.stderr
    assert _board(tmp_path / "d.jsonl") == _board(uninterrupted / "a.jsonl")
    a = uninterrupted / "a.fm.tune" / "brackets.jsonl"
    assert open(a).read() == open(tmp_path / "d.fm.tune" / "brackets.jsonl").read()
    ma, md = load_model(uninterrupted / "a.fm"), load_model(out)
    assert all(np.array_equal(ma.params[k], md.params[k]) for k in ma.params)
    assert md.meta["training"]["device"] == ma.meta["training"]["device"] == "cpu"
    # the scheduler is where the trials ran, not what they are: a resumed search may run elsewhere
    ok(invoke("tune", "--resume", str(out) + ".tune", "-o", tmp_path / "e.fm"))
    r = ok(invoke("tune", "--resume", str(out) + ".tune", "--scheduler", "local:1", "-o", tmp_path / "f.fm"))
    assert "trials run on the Dask cluster's workers, 1 at a time" in r.stderr


def test_an_unreachable_scheduler_stops_a_search_in_one_line(data, tmp_path):
    pytest.importorskip("distributed")
    r = invoke("tune", *_args(data, "--trials", 2), "--scheduler", "tcp://127.0.0.1:9", "--scheduler-timeout", "1",
               "-q", "-o", tmp_path / "m.fm")
    assert r.exit_code == 69, (r.exit_code, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1 and "tcp://127.0.0.1:9" in r.stderr, r.stderr
    assert not (tmp_path / "m.fm").exists()


@pytest.mark.slow
def test_a_trial_lost_with_its_worker_runs_again_elsewhere(data, uninterrupted, tmp_path):
    """A worker killed (no nanny to restart it) while the search runs on two:
    its trial runs again on the other, and the search ends with the
    leaderboard of the search run here."""
    pytest.importorskip("distributed")
    from test_distributed_edges import HandCluster

    out = tmp_path / "k.fm"
    results = tmp_path / "k.fm.tune" / "results.jsonl"
    with HandCluster(tmp_path, n=2, nanny=False) as hand:
        proc = subprocess.Popen([sys.executable, "-m", "fmcli", "tune",
                                 *_args(data, "--trials", 12, "--bracket", 6, "--max-epochs", 8),
                                 "--scheduler-file", str(hand.file), "-q", "-o", str(out),
                                 "--leaderboard", str(tmp_path / "k.jsonl")],
                                start_new_session=True, stderr=subprocess.PIPE, text=True)
        try:
            _wait_for_results(proc, results, 3)
            hand.workers[0].kill()                  # SIGKILL, in the middle of the search
            at_kill = len(results.read_text().splitlines())
            running = proc.poll() is None
            hand.workers[0].wait(timeout=30)
            _, err = proc.communicate(timeout=180)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert proc.returncode == 0, err
    assert running and at_kill < len(results.read_text().splitlines()), "the worker was lost mid-search"
    assert _board(tmp_path / "k.jsonl") == _board(uninterrupted / "a.jsonl")


# ---------------------------------------------------------------------------
# fm train --tune-budget: fm tune --budget from fm train
# ---------------------------------------------------------------------------

def _train_args(data, *more):
    return ["-s", "1", "-p", str(data / "va.ffm"), *map(str, more), str(data / "tr.ffm")]


def test_train_with_a_tune_budget_writes_the_best_model_of_a_search(data, tmp_path):
    out = tmp_path / "m.fm"
    r = ok(invoke("train", "--tune-budget", "4s", "-k", 8, *_train_args(data), "-o", out))
    assert "searching l2 ~ loguniform" in r.stderr and f"wrote {out}; the search is in {out}.tune" in r.stderr
    rec = load_model(out).meta["tuning"]
    assert rec["budget_seconds"] == 4.0 and rec["stopped"] == "budget" and rec["max_trials"] is None
    assert sorted(rec["space"]) == ["l2", "learning_rate"]          # -k given: fixed, not searched
    assert rec["base_config"]["k"] == 8 and load_model(out).spec.k == 8
    assert rec["best"]["value"] == min(row["value"] for row in rec["leaderboard"] if row["value"] is not None)
    assert (tmp_path / "m.fm.tune" / "results.jsonl").exists()


def test_train_with_a_tune_budget_from_a_config_file(data, tmp_path):
    config = tmp_path / "fm.toml"
    config.write_text('[train]\ntune-budget = "3s"\nmodel = "fm"\n')
    ok(invoke("train", "--config", config, *_train_args(data), "-o", tmp_path / "c.fm"))
    rec = load_model(tmp_path / "c.fm").meta["tuning"]
    assert rec["budget_seconds"] == 3.0 and rec["base_config"]["model"] == "fm"


@pytest.mark.parametrize("more, message", [
    (("-t", "5"), "--epochs does not go with --tune-budget (fm tune refuses it"),
    (("--auto-stop",), "--auto-stop does not go with --tune-budget"),
    (("--dry-run",), "--dry-run does not go with --tune-budget"),
    (("--checkpoint-dir", "ck"), "--checkpoint-dir does not go with --tune-budget"),
    (("--tune-budget", "soon"), "'soon' is not a duration"),
])
def test_train_with_a_tune_budget_refuses_what_fm_tune_refuses(data, tmp_path, more, message):
    r = invoke("train", "--tune-budget", "1m", *more, *_train_args(data), "-o", tmp_path / "m.fm", cwd=tmp_path)
    assert r.exit_code == 2, (r.exit_code, r.stderr)
    assert message in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_train_with_a_tune_budget_needs_a_validation_file_and_no_resume(data, tmp_path):
    r = invoke("train", "--tune-budget", "1m", "-o", tmp_path / "m.fm", data / "tr.ffm")
    assert r.exit_code == 2 and "Missing option '-p' / '--valid'" in r.stderr
    r = invoke("train", "--tune-budget", "1m", "--resume", data, "-o", tmp_path / "m.fm")
    assert r.exit_code == 2 and "--resume does not go with --tune-budget" in r.stderr
    assert not (tmp_path / "m.fm").exists()
    assert "--tune-budget" not in ok(invoke("tune", "--help")).stdout


def test_a_trial_done_on_its_own_leaves_its_place_in_the_next_rung(tmp_path):
    # rung 1 holds 2 of 6 trials; the best one stopped improving on its own
    # (done): it goes on as it is and the next two that still train take
    # the places
    from fmcli.config import Config

    trials = [{"l2": 1e-4, "learning_rate": 0.1, "k": 4 + t} for t in range(6)]
    search = T.Search(config=Config(), space=SPACE, trials=trials, plan=T.plan_rungs(6, 2, 30, 3),
                      metric="logloss", train=["tr"], valid="va")
    assert [rung.size for rung in search.plan_of(0)] == [6, 2, 1]
    runner = T._Runner(search, str(tmp_path), 1, None, lambda msg: None, None, None)
    for t, value in enumerate((0.50, 0.51, 0.52, 0.53, 0.54, 0.55)):
        runner.results[(t, 0)] = {"trial": t, "rung": 0, "status": "ok", "ran": 2, "seconds": 1.0,
                                  "value": value, "outlook": value, "done": t == 0}
    assert runner.members(0, 1) == [0, 1, 2]
    # without a done trial the rung holds its size
    runner.results[(0, 0)]["done"] = False
    assert runner.members(0, 1) == [0, 1]
    # a done trial ranked below the places takes none
    runner.results[(0, 0)]["done"] = False
    runner.results[(3, 0)]["done"] = True
    assert runner.members(0, 1) == [0, 1]
    # the last rung: one place, after a done trial
    runner.results[(0, 0)]["done"] = True
    for t in (0, 1, 2):
        runner.results[(t, 1)] = {**runner.results[(t, 0)], "rung": 1, "done": t == 0}
    assert runner.members(0, 2) == [0, 1]
