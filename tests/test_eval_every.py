"""--eval-every: validation, best-model keeping and early stopping within epochs."""

import json
import signal

import numpy as np
import pytest

from fmcli import checkpoint
from fmcli.config import Config
from fmcli.errors import ConfigError, Interrupted
from fmcli.metrics import evaluate
from fmcli.model import load_model
from fmcli.predict import Scorer
from fmcli.data.dataset import load_dataset
from fmcli.train import train
from clirun import invoke
from synthdata import write_synth


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("evdata")
    write_synth(d, 6000, seed=11, fields=8)
    v = tmp_path_factory.mktemp("evvalid")
    write_synth(v, 1500, seed=12, fields=8)
    (d / "va.ffm").write_bytes((v / "tr.ffm").read_bytes())
    return d


def valid_logloss(model, path):
    va = load_dataset(str(path), cache_dir=None)
    batch = va.in_memory(compact=True)
    return evaluate("binary", batch.labels, Scorer(model).scores(batch))["logloss"]


# a setting that overfits quickly: validation gets worse within the second epoch
OVERFIT = dict(model="ffm", k=8, epochs=4, learning_rate=0.8, l2=0.0, cache=False)


def test_early_stopping_within_an_epoch_keeps_the_best_validation(data, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    seen = []
    cfg = Config(**OVERFIT, eval_every=500, patience=3)
    model = train(cfg, str(data / "tr.ffm"), str(data / "va.ffm"), on_eval=seen.append)
    t = model.meta["training"]
    evals = t["evaluations"]
    assert [e["rows"] for e in evals[:3]] == [500, 1000, 1500]   # slices end where a validation is due
    assert len(evals) == len(seen) and all(e["valid"] == s.valid for e, s in zip(evals, seen))
    # it stopped inside an epoch, before the run's end
    assert t["epochs_run"] < cfg.epochs
    last = evals[-1]
    assert last["rows"] < 6000 and t["history"][-1]["epoch"] == last["epoch"]
    # the model is the best validation's, not the last one's
    every = [(e["valid"]["logloss"], e["epoch"], e["rows"]) for e in evals]
    every += [(h["valid_logloss"], h["epoch"], 6000) for h in t["history"][:-1]]
    best = min(every)
    assert (t["model_epoch"], t["best_rows"]) == (best[1], best[2])
    assert best[0] < last["valid"]["logloss"]
    assert valid_logloss(model, data / "va.ffm") == pytest.approx(best[0], rel=1e-9)
    assert t["valid_logloss"] == pytest.approx(best[0], rel=1e-12)


def test_without_patience_the_last_model_is_kept_and_every_validation_logged(data):
    cfg = Config(**OVERFIT, eval_every=2000)
    model = train(cfg, str(data / "tr.ffm"), str(data / "va.ffm"))
    t = model.meta["training"]
    assert t["epochs_run"] == 4 and t["model_epoch"] == 4
    # 2 validations inside each epoch (at 2000 and 4000 rows), plus each epoch's end
    assert [(e["epoch"], e["rows"]) for e in t["evaluations"]] == [
        (e, r) for e in range(1, 5) for r in (2000, 4000)]
    assert valid_logloss(model, data / "va.ffm") == pytest.approx(t["history"][-1]["valid_logloss"], rel=1e-9)


def test_eval_every_leaves_the_training_itself_unchanged(data):
    """Validation reads the model and never changes it (nor the row order)."""
    plain = train(Config(**OVERFIT), str(data / "tr.ffm"), str(data / "va.ffm"))
    every = train(Config(**OVERFIT, eval_every=700), str(data / "tr.ffm"), str(data / "va.ffm"))
    for name in plain.params:
        assert np.array_equal(plain.params[name], every.params[name])
    assert "evaluations" not in plain.meta["training"]


def test_checkpoints_and_resume_stay_byte_exact(data, tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    # stops early 8 validations into its second epoch
    cfg = Config(**{**OVERFIT, "learning_rate": 0.3}, eval_every=500, patience=6,
                 checkpoint_dir=str(tmp_path / "ck"), checkpoint_every=1000)
    ref = train(cfg, str(data / "tr.ffm"), str(data / "va.ffm"))
    ref.save(tmp_path / "ref.fm")
    assert ref.meta["training"]["epochs_run"] == 2 and ref.meta["training"]["model_epoch"] == 2
    for stop_at in (5, 15):      # (slices of 500 rows) within epoch 1, and within epoch 2
        for p in (tmp_path / "ck").iterdir():
            p.unlink()
        calls = []

        def stop():
            calls.append(1)
            return signal.SIGTERM if len(calls) == stop_at else None

        with pytest.raises(Interrupted):
            train(cfg, str(data / "tr.ffm"), str(data / "va.ffm"), should_stop=stop)
        ck = checkpoint.load_latest(str(tmp_path / "ck"))
        assert ck.info["evals"] and ck.info["since_eval"] < 500
        resumed = train(cfg, str(data / "tr.ffm"), str(data / "va.ffm"), resume=str(tmp_path / "ck"))
        resumed.save(tmp_path / "resumed.fm")
        assert (tmp_path / "resumed.fm").read_bytes() == (tmp_path / "ref.fm").read_bytes(), stop_at


def test_eval_every_needs_a_validation_set(data):
    with pytest.raises(ConfigError, match="--eval-every needs a validation set"):
        train(Config(model="fm", eval_every=100, cache=False), str(data / "tr.ffm"))
    with pytest.raises(ConfigError, match="eval-every must be >= 0"):
        Config(eval_every=-1)


def test_cli_logs_each_validation(data, tmp_path):
    log = tmp_path / "log.jsonl"
    res = invoke("train", "--model", "fm", "-k", "4", "-t", "1", "--eval-every", "2000", "--no-cache",
                 "-p", data / "va.ffm", "--log-json", log, "-o", tmp_path / "m.fm", data / "tr.ffm")
    assert res.exit_code == 0, res.stderr
    assert "epoch 1, 2,000 rows: tr_logloss" in res.stderr
    records = [json.loads(line) for line in log.read_text().splitlines()]
    evals = [r for r in records if r.get("event") == "eval"]
    assert [e["rows"] for e in evals] == [2000, 4000]
    assert set(evals[0]["valid"]) >= {"logloss", "auc"}
    res = invoke("train", "--eval-every", "100", "-o", tmp_path / "n.fm", data / "tr.ffm")
    assert res.exit_code == 78 and "needs a validation set" in res.stderr
    assert load_model(tmp_path / "m.fm").meta["hyperparameters"]["eval_every"] == 2000
