"""Per-row GPU training with many rows in flight (fmcli.gpu), on the CPU
emulation of the kernels (fmcli.gpu.emulate):

- the emulation's rows-in-flight mode loses updates as a device does: a
  feature on every row, written by N warps at once, is learned much worse
  than by the CPU's sequential pass;
- hot accumulation (the default of per-row mode, --hot-features) steps such
  weights once per wave with the sum of the rows' steps: validation logloss
  then stays within 0.5% of the CPU's;
- with one row per wave, hot accumulation is the plain per-row step exactly;
- a pass over R rows makes O(R / wave) or O(R / batch) launches.
"""

import numpy as np
import pytest

from fmcli.config import Config
from fmcli.data.batch import Batch
from fmcli.errors import ConfigError
from fmcli.gpu import device as gpu_device
from fmcli.gpu import emulate
from fmcli.gpu import state as gpu_state
from fmcli.gpu.state import GpuState
from fmcli.train import train


@pytest.fixture(scope="module")
def can_emulate():
    ok, why = emulate.available()
    if not ok:
        pytest.skip(why)


def hot_rows(n_rows, seed, *, n_cold=20_000, hot_weight=-2.0):
    """Rows of three fields: field 0 always holds feature 0 (the hot one,
    here the only intercept: the runs have no bias), fields 1 and 2 a
    feature each from a large vocabulary.  Labels from a logistic model."""
    w = np.random.default_rng(123).normal(0, 1, n_cold)
    w[0] = hot_weight
    rng = np.random.default_rng(seed)
    feats = np.concatenate([np.zeros((n_rows, 1), np.int32),
                            rng.integers(1, n_cold, (n_rows, 2)).astype(np.int32)], axis=1)
    labels = (rng.random(n_rows) < 1 / (1 + np.exp(-w[feats].sum(1)))).astype(np.float32)
    return Batch(labels=labels, indptr=np.arange(0, 3 * n_rows + 1, 3, dtype=np.int64),
                 fields=np.tile(np.arange(3, dtype=np.int32), n_rows), features=feats.reshape(-1),
                 values=np.ones(3 * n_rows, np.float32))


def on_emulated_device(monkeypatch, rows_in_flight):
    monkeypatch.setattr(gpu_device, "probe", lambda: (True, "emulated device"))
    monkeypatch.setattr(gpu_state, "default_backend",
                        lambda: emulate.EmulatedBackend(rows_in_flight=rows_in_flight))


def valid_logloss(model, tr, va, device, hot_features=None, epochs=3, **hp):
    notes = []
    cfg = Config(model=model, k=4, epochs=epochs, device=device, threads=1, use_bias=False, seed=1,
                 learning_rate=0.2, hot_features=hot_features, **hp)
    fitted = train(cfg, tr, va, log=notes.append)
    return fitted.meta["training"]["valid_logloss"], notes


def concurrency_case(monkeypatch, model, rows_in_flight, n_rows):
    on_emulated_device(monkeypatch, rows_in_flight)
    tr, va = hot_rows(n_rows, 1), hot_rows(2000, 2)
    cpu, _ = valid_logloss(model, tr, va, "cpu")
    lost, _ = valid_logloss(model, tr, va, "cuda", hot_features=0)
    fixed, notes = valid_logloss(model, tr, va, "cuda")
    assert any(n.startswith(f"{rows_in_flight:,} rows in flight: the ") and "most frequent feature" in n
               for n in notes), notes
    return cpu, lost, fixed


def test_rows_in_flight_lose_a_hot_feature_and_hot_accumulation_keeps_it(can_emulate, monkeypatch):
    """400 rows in flight (10 waves an epoch): plain per-row Hogwild loses
    nearly every update of the hot feature; with hot accumulation the run
    is within 0.5% of the CPU's sequential one."""
    cpu, lost, fixed = concurrency_case(monkeypatch, "lr", 400, 4000)
    assert lost > 1.05 * cpu                 # the lost updates show
    assert abs(fixed / cpu - 1) < 0.005      # and hot accumulation recovers them


@pytest.mark.slow
@pytest.mark.parametrize("model", ["fm", "ffm", "fwfm", "fmfm"])
def test_factor_models_keep_a_hot_feature(can_emulate, monkeypatch, model):
    cpu, lost, fixed = concurrency_case(monkeypatch, model, 400, 4000)
    assert lost > 1.10 * cpu
    assert abs(fixed / cpu - 1) < 0.005


@pytest.mark.slow
def test_the_first_waves_of_a_run_grow(can_emulate, monkeypatch):
    """Without the short first waves, the rows' summed steps at the initial
    weights overshoot, and the factor model does not recover within 1%."""
    monkeypatch.setattr(gpu_state, "HOT_RAMP_ROWS", 10**9)    # every wave all rows in flight
    cpu, _, unramped = concurrency_case(monkeypatch, "fm", 400, 4000)
    assert unramped > 1.01 * cpu


@pytest.mark.slow
def test_eight_thousand_rows_in_flight(can_emulate, monkeypatch):
    """As a large device keeps them: 8,000 rows in flight, 6 waves an epoch."""
    cpu, lost, fixed = concurrency_case(monkeypatch, "lr", 8000, 48_000)
    print(f"8,000 rows in flight, validation logloss: cpu {cpu:.5f}, hot accumulation off {lost:.5f} "
          f"({lost / cpu - 1:+.2%}), on {fixed:.5f} ({fixed / cpu - 1:+.2%})")
    assert lost > 1.05 * cpu
    assert abs(fixed / cpu - 1) < 0.005


def test_one_row_in_flight_is_the_cpu_path(can_emulate, monkeypatch):
    on_emulated_device(monkeypatch, 1)
    tr, va = hot_rows(300, 1), hot_rows(100, 2)
    cpu, _ = valid_logloss("ffm", tr, va, "cpu")
    gpu, notes = valid_logloss("ffm", tr, va, "cuda")
    assert gpu == pytest.approx(cpu, rel=1e-5)
    assert not any("rows in flight" in n for n in notes)   # nothing races: no hot accumulation


# ---------------------------------------------------------------------------
# Hot accumulation with one row per wave is the per-row step, exactly


def small_problem(seed, n_rows=40, n_features=12, n_fields=4, max_nnz=4):
    rng = np.random.default_rng(seed)
    nnz = rng.integers(1, max_nnz + 1, n_rows)
    indptr = np.zeros(n_rows + 1, np.int64)
    indptr[1:] = np.cumsum(nnz)
    fields = np.concatenate([rng.choice(n_fields, k, replace=False) for k in nnz]).astype(np.int32)
    features = np.concatenate([rng.choice(n_features, k, replace=False) for k in nnz]).astype(np.int32)
    return Batch(labels=rng.integers(0, 3, n_rows).astype(np.float32), indptr=indptr, fields=fields,
                 features=features, values=rng.uniform(0.2, 1.5, indptr[-1]).astype(np.float32))


CELLS = [("lr", "binary", "ftrl", 0.0), ("fm", "regression", "sgd", 0.0), ("ffm", "binary", "adagrad", 0.0),
         ("ffm", "multiclass", "ftrl", 0.5), ("fwfm", "binary", "adagrad", 0.3), ("fmfm", "binary", "sgd", 0.0),
         ("fm", "multiclass", "adagrad", 0.0)]


@pytest.mark.parametrize("kind,task,optimizer,clip", CELLS)
def test_hot_steps_of_single_rows_are_the_plain_steps(can_emulate, kind, task, optimizer, clip):
    """Waves of one row with every feature hot: each accumulator holds one
    row's gradient and fm_hot_apply steps it as fm_train_rows would have."""
    batch = small_problem(7)
    if task == "binary":
        batch.labels[:] = batch.labels > 0
    classes = ["a", "b", "c"] if task == "multiclass" else None
    cfg = Config(model=kind, task=task, k=3, optimizer=optimizer, dtype="float64", clip_norm=clip,
                 l2=0.01, **({"l1": 0.01} if optimizer == "ftrl" else {}))
    runs = []
    for hot in (False, True):
        backend = emulate.EmulatedBackend(rows_in_flight=1)
        gs = GpuState(cfg, 12, 4, np.random.default_rng(3), task, classes, backend=backend)
        gs.total_steps = 80
        if hot:
            gs._use_hot(np.arange(12))
        order = np.random.default_rng(5).permutation(batch.n_rows).astype(np.int64)
        for epoch in range(2):
            gs.train_slice(batch, order, None, epoch * batch.n_rows)
        runs.append((gs.arrays(), gs.launches))
    (plain, plain_launches), (hot_arrays, hot_launches) = runs
    for a, b in zip(plain, hot_arrays):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-14)
    assert hot_launches["fm_hot_apply"] == 2 * batch.n_rows and plain_launches["fm_hot_apply"] == 0


# ---------------------------------------------------------------------------
# Launches


def test_a_pass_makes_one_launch_per_wave_or_batch(can_emulate):
    batch = hot_rows(600, 3, n_cold=500)
    order = np.arange(600, dtype=np.int64)
    # per-row mode with hot accumulation: one wave of 100 rows per launch, and
    # its apply; at the run's start waves of 32, 32, 64 rows, then 100
    backend = emulate.EmulatedBackend(rows_in_flight=100)
    gs = GpuState(Config(model="ffm", k=4), 500, 3, np.random.default_rng(0), backend=backend)
    assert gs.prepare(batch) is not None and gs.hot_ids is not None
    gs.train_slice(batch, order, None, 0)
    assert dict(gs.launches) == {"fm_train_rows": 8, "fm_hot_apply": 8}   # 32 32 64 100 100 100 100 72
    assert backend.launches == gs.launches            # the backend counted them too
    gs.train_slice(batch, order, None, 600)           # the second epoch: waves of 100
    assert dict(gs.launches) == {"fm_train_rows": 14, "fm_hot_apply": 14}
    # without: one launch for the pass
    gs = GpuState(Config(model="ffm", k=4, hot_features=0), 500, 3, np.random.default_rng(0),
                  backend=emulate.EmulatedBackend())
    assert gs.prepare(batch) is None
    gs.train_slice(batch, order, None, 0)
    assert dict(gs.launches) == {"fm_train_rows": 1}
    # exact mode: a gradient launch and two apply launches per batch of 50
    gs = GpuState(Config(model="ffm", k=4, batch_size=50), 500, 3, np.random.default_rng(0),
                  backend=emulate.EmulatedBackend(sm_count=2, blocks_per_sm=2, warps_per_block=2))
    assert gs.prepare(batch) is None
    gs.train_slice(batch, order, None, 0)
    assert dict(gs.launches) == {"fm_batch_grad": 12, "fm_batch_apply_vec": 12, "fm_batch_apply_scalar": 12}


# ---------------------------------------------------------------------------
# Choosing the hot features, and the settings


def test_prepare_picks_the_features_the_rows_in_flight_share(can_emulate):
    batch = hot_rows(1000, 4, n_cold=50)     # feature 0 on every row, each other on ~4% of rows
    backend = emulate.EmulatedBackend(rows_in_flight=10)
    gs = GpuState(Config(model="fm", k=4), 50, 3, np.random.default_rng(0), backend=backend)
    note = gs.prepare(batch)
    assert gs.hot_ids.tolist() == [0]           # 10 rows in flight share only feature 0
    assert note.startswith("10 rows in flight: the bias and the most frequent feature step once per wave")
    backend.interleave = 100                    # 100 in flight: every feature is carried by ~4 of them
    assert gs.prepare(batch) and len(gs.hot_ids) == 50
    gs = GpuState(Config(model="fm", k=4, hot_features=3, device="cuda"), 50, 3, np.random.default_rng(0), backend=backend)
    gs.prepare(batch)
    counts = np.bincount(batch.features, minlength=50)
    assert len(gs.hot_ids) == 3 and set(gs.hot_ids) == set(np.argsort(-counts, kind="stable")[:3])
    gs = GpuState(Config(model="fwfm", k=4, use_bias=False), 50, 3, np.random.default_rng(0), backend=backend)
    assert gs.prepare(batch).startswith("100 rows in flight: the field-pair weights and the 50 most frequent")
    gs = GpuState(Config(model="fmfm", k=4), 50, 3, np.random.default_rng(0), backend=backend)
    assert gs.prepare(batch).startswith("100 rows in flight: the bias, the field matrices and the 50 most")
    for cfg in (Config(model="fm", k=4, hot_features=0), Config(model="fm", k=4, optimizer="adam"),
                Config(model="fm", k=4, batch_size=8)):
        gs = GpuState(cfg, 50, 3, np.random.default_rng(0), backend=backend)
        assert gs.prepare(batch) is None and gs.hot_ids is None


def test_hot_features_settings_on_the_gpu():
    assert Config(device="cuda", hot_features=10).hot_features == 10
    with pytest.raises(ConfigError, match="--device cuda applies to per-row training.*--optimizer sgd"):
        Config(device="cuda", hot_features=10, optimizer="adam")
    with pytest.raises(ConfigError, match="--batch-size 1"):
        Config(device="cuda", hot_features=10, batch_size=4)
    with pytest.raises(ConfigError, match="2\\+ CPU threads"):
        Config(hot_features=10, threads=1)


def test_rows_in_flight_from_the_environment(can_emulate, monkeypatch):
    monkeypatch.setenv(emulate.ROWS_IN_FLIGHT_ENV, "64")
    assert emulate.EmulatedBackend().rows_in_flight == 64
    assert emulate.EmulatedBackend(rows_in_flight=3).rows_in_flight == 3
    monkeypatch.setenv(emulate.ROWS_IN_FLIGHT_ENV, "many")
    with pytest.raises(emulate.EmulationError, match="FMCLI_EMULATE_ROWS_IN_FLIGHT must be a whole number"):
        emulate.EmulatedBackend()
    monkeypatch.delenv(emulate.ROWS_IN_FLIGHT_ENV)
    assert emulate.EmulatedBackend(sm_count=2, blocks_per_sm=3, warps_per_block=4).rows_in_flight == 24


def test_the_in_flight_emulation_finds_the_train_rows_arguments(can_emulate):
    """The argument positions InFlightRows rewrites are fm_train_rows's."""
    k = emulate.EmulatedBackend().module(np.float32, 4)["fm_train_rows"]
    params = k.params
    for i in emulate.TRAIN_ROWS_PARAMS:
        assert params[i][1:] == (4, 1)            # float pointers: B, L, F, R
    assert params[emulate.TRAIN_ROWS_POS0] == params[emulate.TRAIN_ROWS_COUNT] == (8, -1, 0)
    assert params[emulate.TRAIN_ROWS_POS0 - 1] == (8, 8, 0)        # order: int64 pointer
    assert [params[i][1:] for i in emulate.TRAIN_ROWS_PER_POSITION] == [(1, 0), (8, 1), (8, 1)]
