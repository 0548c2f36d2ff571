"""Row-wise AdaGrad (--optimizer rowwise-adagrad): one accumulator per factor
vector.  Its update rule is checked against the NumPy reference in
test_matrix.py (every model, task and control) and its SIMD loops against
each other in test_fastpaths.py; here: the layout, the model file, warm
starts, threads and the settings it refuses."""

import numpy as np
import pytest
from click.testing import CliRunner

from fmcli.cli import cli
from fmcli.config import Config
from fmcli.errors import ConfigError
from fmcli.model import load_model, padded_k
from fmcli.cpu import CpuBackend as TrainState
from fmcli.train import train
from synthdata import write_synth


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("rowwise")
    write_synth(d, 6000, seed=5, fields=8, valid_rows=1000)
    return d


def fm(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="fm")


@pytest.mark.parametrize("model", ["fm", "ffm", "fwfm"])
@pytest.mark.parametrize("k", [4, 5, 16])
def test_factor_blocks_hold_k_weights_and_one_accumulator(model, k):
    cfg = Config(model=model, k=k, optimizer="rowwise-adagrad")
    state = TrainState(cfg, 50, 6, np.random.default_rng(0))
    kp = padded_k(k)
    assert state.F.shape[1] == kp + 1
    assert np.all(state.factor_slot(1) == 1.0) and state.factor_slot(1).shape == (state.F.shape[0], 1)
    assert np.all(state.F[:, k:kp] == 0)            # padding
    assert np.all(state.factor_slot(0)[:, :k] > 0)  # libffm's U(0, 1/sqrt(k)) start
    assert TrainState.bytes_needed(cfg, 50, 6) == sum(a.nbytes for a in state.arrays())
    # per-element AdaGrad keeps k accumulators per vector
    full = TrainState(cfg.replace(optimizer="adagrad"), 50, 6, np.random.default_rng(0))
    assert full.F.shape[1] == 2 * kp
    assert TrainState.bytes_needed(cfg.replace(optimizer="adagrad"), 50, 6) == sum(a.nbytes for a in full.arrays())


def test_model_file_keeps_one_accumulator_per_vector(data, tmp_path):
    out = tmp_path / "m.fm"
    r = fm("train", "--optimizer", "rowwise-adagrad", "-k", "5", "-t", "2", "-p", data / "va.ffm", "-o", out,
           data / "tr.ffm")
    assert r.exit_code == 0, r.output
    m = load_model(out)
    n, f = m.spec.n_features, m.spec.n_fields
    assert m.params["factors"].shape == (n, f, 5)
    assert m.state["factors"].shape == (n, f)
    assert m.state["linear"].shape == (n,)
    assert m.meta["optimizer"]["name"] == "rowwise-adagrad" and m.meta["optimizer"]["slots"] == ["G"]
    # the accumulators of trained vectors grew, the rest are still 1
    G = np.asarray(m.state["factors"])
    assert G.min() == 1.0 and G.max() > 1.0
    shown = fm("inspect", out)
    assert shown.exit_code == 0 and "rowwise-adagrad: 1 state slot (G)" in shown.stdout
    assert "factors_state: float32 (%d, %d)" % (n, f) in shown.stdout
    pred = fm("predict", out, data / "va.ffm")
    assert pred.exit_code == 0 and len(pred.stdout.splitlines()) == 1000


def test_learns_about_as_well_as_adagrad(data):
    base = dict(model="ffm", k=4, epochs=3, cache=False)
    va = str(data / "va.ffm")
    losses = {}
    for opt in ("adagrad", "rowwise-adagrad"):
        m = train(Config(optimizer=opt, **base), str(data / "tr.ffm"), valid=va)
        losses[opt] = m.meta["training"]["valid_logloss"]
    assert losses["rowwise-adagrad"] < 0.69
    assert abs(losses["rowwise-adagrad"] - losses["adagrad"]) < 0.02 * losses["adagrad"]


def test_warm_start_from_per_element_adagrad_keeps_weights_not_state(data, tmp_path):
    parent = train(Config(model="ffm", epochs=1, cache=False), str(data / "tr.ffm"))
    parent.save(tmp_path / "p.fm")
    said = []
    child = train(Config(model="ffm", epochs=1, cache=False, optimizer="rowwise-adagrad", init_model=str(tmp_path / "p.fm"),
                         learning_rate=1e-12), str(data / "tr.ffm"), log=said.append)
    assert any("trained with another optimizer" in s for s in said)
    np.testing.assert_allclose(child.params["factors"], parent.params["factors"], atol=1e-6)
    assert child.state["factors"].shape == parent.params["factors"].shape[:-1]


def test_threads_and_hot_features(data):
    base = dict(model="ffm", k=4, epochs=2, cache=False, optimizer="rowwise-adagrad")
    va = str(data / "va.ffm")
    one = train(Config(**base), str(data / "tr.ffm"), valid=va).meta["training"]["valid_logloss"]
    said = []
    two = train(Config(**base, threads=2, hot_features=40), str(data / "tr.ffm"), valid=va,
                log=said.append).meta["training"]["valid_logloss"]
    assert any("the 40 most frequent features train on per-thread replicas" in s for s in said), said
    assert abs(two - one) < 0.01 * one


@pytest.mark.parametrize("change,message", [
    ({"storage": "float16"}, "--optimizer adagrad"),
    ({"device": "cuda"}, "runs on the CPU"),
])
def test_refuses_what_it_does_not_run(change, message):
    with pytest.raises(ConfigError, match=message):
        Config(optimizer="rowwise-adagrad", **change)


def test_exact_square_root_applies():
    assert Config(optimizer="rowwise-adagrad", exact_adagrad=True).exact_adagrad
    with pytest.raises(ConfigError, match="--exact-adagrad applies to"):
        Config(optimizer="sgd", exact_adagrad=True)
