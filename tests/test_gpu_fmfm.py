"""FmFM on the GPU backend (fmcli.gpu), checked without a device.

The kernels run through fmcli.gpu.emulate (the CUDA source compiled for
the CPU): scores against tests/reference.py's FmFM score, per-row training
with one warp and exact mini-batch training with several warps against its
train_matrix, in float64 (and float32 to its precision).  The host side
(layout arrays, the exact mode's slot plan) is checked with NumPy.  The
CUDA build of these kernels is covered by tests/test_gpu.py's nvcc tests,
which compile every kernel instantiation whatever the model kind.
"""

import numpy as np
import pytest

import reference as ref
from test_fmfm_kernels import SLOTS, from_layout, hp_for, to_layout
from test_fmfm_kernels import assert_same as same_models
from fmcli.config import Config
from fmcli.data.batch import Batch
from fmcli.gpu import emulate, layout, plan
from fmcli.gpu.state import GpuState
from fmcli.model import padded_k
from fmcli.params import HostParams

TASKS = ("binary", "regression", "multiclass")
OPTIMIZERS = ("sgd", "adagrad", "adam", "ftrl")
N_FEATURES, N_FIELDS = 20, 4
ALL_CELLS = [(t, o) for t in TASKS for o in OPTIMIZERS]
# every task and optimizer at least once per mode in the default run; all cells with -m slow
FAST_EXACT = [(TASKS[i % 3], OPTIMIZERS[i]) for i in range(4)]
FAST_ROWS = [(TASKS[(i + 1) % 3], OPTIMIZERS[(i + 2) % 4]) for i in range(4)]
# kp = 4 (a lane per item), 8 (two lanes per item), 12 (groups of four lanes, one without a chunk)
EMULATED = [(np.float64, 4), (np.float64, 8), (np.float64, 12), (np.float32, 4)]


# ---------------------------------------------------------------------------
# Problems in the reference's terms, and their GPU layout


def problem(task, seed, *, n_rows=16, k=3, n_classes=3, max_nnz=5):
    """Random FmFM models (one per class; matrices near the identity) and
    rows that may repeat fields (pairs sharing a matrix, diagonal pairs)
    and features."""
    rng = np.random.default_rng(seed)
    C = n_classes if task == "multiclass" else 1
    models = [ref.RefModel.random("fmfm", N_FEATURES, N_FIELDS, k, rng, scale=0.3) for _ in range(C)]
    rows = [ref.make_row(r.fields, r.features, r.values.astype(np.float32))
            for r in ref.random_rows(rng, n_rows, N_FEATURES, N_FIELDS, max_nnz=max_nnz)]
    if task == "binary":
        labels = rng.integers(0, 2, n_rows).astype(np.float64)
    elif task == "regression":
        labels = rng.normal(0, 1.5, n_rows).astype(np.float32).astype(np.float64)
    else:
        labels = rng.integers(0, C, n_rows).astype(np.float64)
    return models, rows, labels, rng.permutation(n_rows)


def to_arrays(models, state, optimizer):
    """Reference FmFM models and optimizer state -> B, L, F, R in the
    training layout's shapes (float64; see test_fmfm_kernels.to_layout)."""
    B, L, F, R, kp = to_layout(models, state, optimizer, np.float64)
    w, bw = 1 + len(SLOTS[optimizer]), F.size // (len(models) * models[0].n_features)
    return B.reshape(-1, w), L.reshape(-1, w), F.reshape(-1, bw), R.reshape(-1, bw)


def from_arrays(models, arrays):
    """The weights of the training layout -> reference models."""
    B, L, F, R = (np.asarray(a).reshape(-1) for a in arrays)
    return from_layout(models, B, L, F, R, padded_k(models[0].k))


def padding_of(arrays, kp, k):
    """Every value of R outside the k x k matrices (weights and state)."""
    R = arrays[3]
    w = R.shape[1] // kp
    blocks = R.reshape(-1, N_FIELDS * N_FIELDS, kp, w, kp)
    return np.concatenate([blocks[:, :, k:].ravel(), blocks[:, :, :k, :, k:].ravel()])


def as_batch(rows, labels):
    indptr = np.zeros(len(rows) + 1, np.int64)
    indptr[1:] = np.cumsum([len(r.features) for r in rows])
    return Batch(labels=np.asarray(labels, np.float32), indptr=indptr,
                 fields=np.concatenate([r.fields for r in rows]).astype(np.int32),
                 features=np.concatenate([r.features for r in rows]).astype(np.int32),
                 values=np.concatenate([r.values for r in rows]).astype(np.float32))


def config_for(task, optimizer, *, k, batch_size, eta, dtype="float64", **hp):
    return Config(
        model="fmfm", task=task, optimizer=optimizer, k=k, batch_size=batch_size, dtype=dtype, l2=0.0,
        l2_bias=hp.get("l2_bias", 0.0), l2_linear=hp.get("l2_linear", 0.0),
        l2_factors=hp.get("l2_factors", 0.0), l1=hp.get("l1", 0.0), clip_norm=hp.get("clip_norm", 0.0),
        label_smoothing=hp.get("label_smoothing", 0.0), lr_schedule=hp.get("schedule", "constant"),
        warmup_steps=hp.get("warmup", 0),
        **({"ftrl_alpha": eta} if optimizer == "ftrl" else {"learning_rate": eta}))


def gpu_state(backend, models, task, optimizer, *, batch_size, eta, k, dtype="float64", **hp):
    cfg = config_for(task, optimizer, k=k, batch_size=batch_size, eta=eta, dtype=dtype, **hp)
    classes = [str(c) for c in range(len(models))] if task == "multiclass" else None
    return GpuState(cfg, N_FEATURES, N_FIELDS, np.random.default_rng(1), task, classes, backend=backend)


def gpu_run(backend, task, optimizer, *, batch_size, epochs=2, eta=0.05, k=3, seed=0, weights=None,
            dtype="float64", **hp):
    """Train one problem with GpuState on `backend` and with the reference."""
    models, rows, labels, order = problem(task, seed, k=k)
    reg = {n: hp.get(n, 0.0) for n in ("l1", "l2_bias", "l2_linear", "l2_factors")}
    state = ref.init_state(models, optimizer, eta=eta, **reg)
    arrays = to_arrays(models, state, optimizer)
    expected = [m.copy() for m in models]
    _, ref_losses = ref.train_matrix(expected, rows, labels, order, task=task, optimizer=optimizer,
                                     eta=eta, epochs=epochs, weights=weights, batch_size=batch_size, **hp)
    gs = gpu_state(backend, models, task, optimizer, batch_size=batch_size, eta=eta, k=k, dtype=dtype, **hp)
    gs.restore(arrays)
    batch = as_batch(rows, labels)
    w = None if weights is None else np.asarray(weights, np.float32)
    steps = len(rows) if batch_size == 1 else -(-len(rows) // batch_size)
    gs.total_steps = epochs * steps
    losses = []
    for epoch in range(epochs):
        loss, wsum, bad, first = gs.train_slice(batch, order.astype(np.int64), w, epoch * steps)
        assert (bad, first) == (0, -1)
        losses.append(loss / wsum)
    out = gs.arrays()
    assert not np.any(padding_of(out, padded_k(k), k)[padding_of(arrays, padded_k(k), k) == 0])
    return from_arrays(models, out), expected, losses, ref_losses


def assert_same(got, expected, rtol=1e-9, atol=1e-12):
    same_models(got, expected, rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------
# Host logic (NumPy only)


def test_fmfm_has_kind_code_4_in_the_kernel_source():
    assert layout.KINDS.index("fmfm") == 4
    assert layout.parse_enum(layout.load_source(), "KIND_LR")[4] == "KIND_FMFM"


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_shape_array_describes_the_fmfm_layout(optimizer):
    cfg = Config(model="fmfm", optimizer=optimizer, task="multiclass", k=5)
    hp = HostParams(cfg, 7, 3, np.random.default_rng(0), "multiclass", ["a", "b", "c"])
    sh = dict(zip(layout.SHAPE_FIELDS, layout.shape_array(
        "fmfm", "multiclass", optimizer, "constant", 3, 7, 3, hp.kp, hp.ns, use_bias=True,
        use_linear=True, normalize=True).tolist()))
    B, L, F, R = hp.arrays()
    assert sh["kp"] == 8 and sh["blocks"] == 7
    assert F.size == 3 * sh["cf"] and R.size == 3 * sh["cr"] and R.shape[1] == sh["fstride"]
    # R: a block of kp weights (and their state) per matrix row, m * m * kp per class
    assert sh["cr"] == 3 * 3 * 8 * sh["fstride"]
    assert sh["n_ids"] - sh["id_r"] == R.shape[0] == 3 * 3 * 3 * 8
    assert sh["id_r"] - sh["id_f"] == F.shape[0]
    # the matrices start as the identity on the k real rows and columns, padding 0
    eye = R[:, :8].reshape(3, 3, 3, 8, 8)
    for c in range(3):
        assert np.array_equal(eye[c, 0, 1], np.pad(np.eye(5), ((0, 3), (0, 3))))


def test_exact_plan_gives_fmfm_rows_factor_and_matrix_row_slots():
    rng = np.random.default_rng(3)
    nnz = rng.integers(0, 7, 30)
    indptr = np.concatenate([[0], np.cumsum(nnz)]).astype(np.int64)
    order = rng.permutation(30).astype(np.int64)
    pl = plan.exact_plan(np, np.asarray, indptr, order, 8, "fmfm", 2, True, True, kp=12)
    n = nnz[order]
    assert np.array_equal(np.diff(pl.sofs), 2 * (1 + n))
    assert np.array_equal(np.diff(pl.vofs), 2 * (n + 12 * (n * (n - 1) // 2)))
    assert plan.row_scratch_len("fmfm", 8, 5) == 5 * 8 + 10 and plan.row_scratch_len("fm", 8, 5) == 0


# ---------------------------------------------------------------------------
# The kernels, emulated on the CPU


@pytest.fixture(scope="module")
def emu():
    """One warp: per-row training is sequential (the reference's order)."""
    ok, why = emulate.available()
    if not ok:
        pytest.skip(why)
    return emulate.EmulatedBackend(instances=EMULATED)


@pytest.fixture(scope="module")
def emu_warps(emu):
    """Several blocks of several warps (grid-stride loops)."""
    return emulate.EmulatedBackend(sm_count=2, blocks_per_sm=2, warps_per_block=2, instances=EMULATED)


@pytest.mark.parametrize("k", [3, 8, 11])
def test_emulated_fmfm_scores_match_reference(emu_warps, k):
    for task in ("binary", "multiclass"):
        models, rows, labels, _ = problem(task, 2 + k, k=k, n_rows=12, max_nnz=6)
        gs = gpu_state(emu_warps, models, task, "adam", batch_size=1, eta=0.1, k=k)
        gs.restore(to_arrays(models, ref.init_state(models, "adam"), "adam"))
        expect = np.array([[ref.score(m, r) for m in models] for r in rows])
        got = gs.scores(as_batch(rows, labels)).reshape(len(rows), -1)
        np.testing.assert_allclose(got, expect, rtol=1e-12, atol=1e-14)


def test_emulated_fmfm_entries_outside_the_model_add_nothing(emu):
    models, rows, labels, _ = problem("binary", 5, n_rows=10)
    gs = gpu_state(emu, models, "binary", "sgd", batch_size=1, eta=0.1, k=3)
    gs.restore(to_arrays(models, ref.init_state(models, "sgd"), "sgd"))
    batch = as_batch(rows, labels)
    inside = gs.scores(batch)
    batch.features[::4] = N_FEATURES + 3          # ids outside the model
    batch.fields[1::4] = N_FIELDS + 1             # fields outside the model
    keep = [(batch.features[s:e] < N_FEATURES) & (batch.fields[s:e] < N_FIELDS)
            for s, e in zip(batch.indptr[:-1], batch.indptr[1:])]
    norm = [float(np.sqrt(np.sum(np.square(r.values, dtype=np.float64)))) for r in rows]
    expect = []
    for r, kp_, nrm in zip(rows, keep, norm):
        # the normalisation still counts every entry: scale the kept values by the full norm
        kept = ref.make_row(r.fields[kp_], r.features[kp_], r.values[kp_])
        m = models[0].copy()
        m.normalize = False
        xt = ref.make_row(kept.fields, kept.features, (kept.values / nrm))
        expect.append(ref.score(m, xt))
    got = gs.scores(batch)
    assert not np.allclose(got, inside)
    np.testing.assert_allclose(got, expect, rtol=1e-6, atol=1e-7)


def _exact_cell(backend, task, optimizer):
    got, expected, losses, ref_losses = gpu_run(backend, task, optimizer, batch_size=5,
                                                seed=len(task) * 7 + len(optimizer), **hp_for(optimizer))
    assert_same(got, expected)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-9)


def _row_cell(backend, task, optimizer):
    got, expected, losses, ref_losses = gpu_run(backend, task, optimizer, batch_size=1,
                                                seed=len(task) + len(optimizer), **hp_for(optimizer))
    assert_same(got, expected)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-9)


@pytest.mark.parametrize("task,optimizer", FAST_EXACT)
def test_emulated_fmfm_exact_mode_matches_reference(emu_warps, task, optimizer):
    _exact_cell(emu_warps, task, optimizer)


@pytest.mark.slow
@pytest.mark.parametrize("task,optimizer", [c for c in ALL_CELLS if c not in FAST_EXACT])
def test_emulated_fmfm_exact_mode_matches_reference_everywhere(emu_warps, task, optimizer):
    _exact_cell(emu_warps, task, optimizer)


@pytest.mark.parametrize("task,optimizer", FAST_ROWS)
def test_emulated_fmfm_per_row_mode_with_one_warp_matches_reference(emu, task, optimizer):
    _row_cell(emu, task, optimizer)


@pytest.mark.slow
@pytest.mark.parametrize("task,optimizer", [c for c in ALL_CELLS if c not in FAST_ROWS])
def test_emulated_fmfm_per_row_mode_with_one_warp_matches_reference_everywhere(emu, task, optimizer):
    _row_cell(emu, task, optimizer)


@pytest.mark.parametrize("k,batch_size", [(8, 1), (8, 4), (11, 1), (11, 4)])
def test_emulated_fmfm_wider_factors_and_clipping_match_reference(emu, k, batch_size):
    """Two or four lanes per item (one without a chunk at k = 11) and the
    per-block clipping of matrix rows."""
    got, expected, _, _ = gpu_run(emu, "binary", "adam", batch_size=batch_size, k=k, seed=4, epochs=1,
                                  clip_norm=0.05, l2_factors=0.01)
    assert_same(got, expected)


@pytest.mark.parametrize("batch_size", [1, 4])
def test_emulated_fmfm_schedule_smoothing_and_weights_match_reference(emu, batch_size):
    weights = np.random.default_rng(3).uniform(0, 3, 16).astype(np.float32).astype(np.float64)
    weights[::5] = 0
    got, expected, losses, ref_losses = gpu_run(
        emu, "binary", "adagrad", batch_size=batch_size, seed=9, eta=0.2, l2_factors=0.01,
        schedule="inverse-sqrt", warmup=3, label_smoothing=0.1, weights=weights)
    assert_same(got, expected)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-9)


def test_emulated_fmfm_float32_matches_reference_to_float32_precision(emu):
    for batch_size in (1, 4):
        got, expected, _, _ = gpu_run(emu, "binary", "adagrad", batch_size=batch_size, dtype="float32",
                                      l2_factors=0.01)
        assert_same(got, expected, rtol=1e-4, atol=1e-5)


def test_emulated_fmfm_training_changes_the_matrices_and_lowers_the_loss(emu):
    """Not only equal to the reference: the matrices move away from where
    they started, and training helps."""
    models, rows, labels, order = problem("binary", 21, n_rows=16)
    gs = gpu_state(emu, models, "binary", "adagrad", batch_size=1, eta=0.3, k=3)
    start = to_arrays(models, ref.init_state(models, "adagrad"), "adagrad")
    gs.restore(start)
    gs.total_steps = 8 * 16
    batch = as_batch(rows, labels)
    losses = [gs.train_slice(batch, order.astype(np.int64), None, e * 16)[0] / 16 for e in range(8)]
    moved = from_arrays(models, gs.arrays())[0].field_matrices - models[0].field_matrices
    assert np.abs(moved).max() > 1e-3
    assert losses[-1] < losses[0]


def test_emulated_fmfm_loaded_model_scores_match_training_scores(emu_warps):
    """A saved FmFM model (full mirrored matrices, float32) scores on the
    device as the training state does."""
    from fmcli.gpu.state import GpuScorer

    models, rows, labels, _ = problem("multiclass", 6, n_rows=12)
    gs = gpu_state(emu_warps, models, "multiclass", "ftrl", batch_size=1, eta=0.1, k=3)
    gs.restore(to_arrays(models, ref.init_state(models, "ftrl", eta=0.1), "ftrl"))
    batch = as_batch(rows, labels)
    model = gs.to_model({})
    assert model.params["field_matrices"].shape == (3, N_FIELDS, N_FIELDS, 3, 3)
    # the scoring kernels read the matrices in R's block layout without state:
    # (C, m, m, kp, kp), matrix rows padded to kp
    pairs = model.kernel_arrays()[3]
    assert pairs.size == 3 * N_FIELDS * N_FIELDS * 4 * 4
    blocks = pairs.reshape(3, N_FIELDS, N_FIELDS, 4, 4)
    np.testing.assert_array_equal(blocks[..., :3, :3], model.params["field_matrices"])
    assert not blocks[..., 3, :].any() and not blocks[..., :, 3].any()
    np.testing.assert_allclose(GpuScorer(model, backend=emu_warps).scores(batch), gs.scores(batch),
                               rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------
# On a CUDA device (CuPy): the same checks, run by `make gpu-check`


# (the `cuda` fixture is tests/conftest.py's)


@pytest.mark.gpu
@pytest.mark.parametrize("task,optimizer", ALL_CELLS)
def test_gpu_exact_mode_matches_reference_fmfm(cuda, task, optimizer):
    """Exact mini-batches are deterministic on the device too."""
    got, expected, losses, ref_losses = gpu_run(cuda, task, optimizer, batch_size=5,
                                                seed=len(task) * 7 + len(optimizer), **hp_for(optimizer))
    assert_same(got, expected, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("k", [3, 8, 11])
def test_gpu_fmfm_scores_match_reference(cuda, k):
    for task in ("binary", "multiclass"):
        models, rows, labels, _ = problem(task, 2 + k, k=k, n_rows=12, max_nnz=6)
        gs = gpu_state(cuda, models, task, "adam", batch_size=1, eta=0.1, k=k)
        gs.restore(to_arrays(models, ref.init_state(models, "adam"), "adam"))
        expect = np.array([[ref.score(m, r) for m in models] for r in rows])
        got = gs.scores(as_batch(rows, labels)).reshape(len(rows), -1)
        np.testing.assert_allclose(got, expect, rtol=1e-6, atol=1e-9)


@pytest.mark.gpu
def test_gpu_fmfm_per_row_training_is_close_to_the_cpu(cuda):
    """Hogwild across warps: the validation loss of the CPU's per-row training."""
    from fmcli.cpu import CpuBackend

    rng = np.random.default_rng(8)
    n_rows, n_train, n_features, n_fields = 20_000, 16_000, 2000, 6
    fields = np.tile(np.arange(n_fields, dtype=np.int32), n_rows)
    features = (rng.integers(0, n_features // n_fields, n_rows * n_fields) * n_fields
                + np.tile(np.arange(n_fields), n_rows)).astype(np.int32)
    w_true = rng.normal(0, 1, n_features)
    labels = (w_true[features].reshape(n_rows, n_fields).sum(axis=1) > 0).astype(np.float32)

    def rows(lo, hi):
        return Batch(labels=labels[lo:hi], indptr=np.arange(0, (hi - lo) * n_fields + 1, n_fields, dtype=np.int64),
                     fields=fields[lo * n_fields: hi * n_fields], features=features[lo * n_fields: hi * n_fields],
                     values=np.ones((hi - lo) * n_fields, np.float32))

    train, valid = rows(0, n_train), rows(n_train, n_rows)
    cfg = Config(model="fmfm", k=4, optimizer="adagrad", learning_rate=0.1)
    losses = []
    for st in (CpuBackend(cfg, n_features, n_fields, np.random.default_rng(0)),
               GpuState(cfg, n_features, n_fields, np.random.default_rng(0), backend=cuda)):
        st.total_steps = 3 * n_train
        order_rng = np.random.default_rng(1)
        for epoch in range(3):
            st.train_slice(train, order_rng.permutation(n_train).astype(np.int64), None, epoch * n_train)
        s = st.scores(valid, 1)
        losses.append(float(np.mean(np.logaddexp(0, -(2 * valid.labels - 1) * s))))
    assert losses[0] < np.log(2) - 0.1
    assert losses[1] <= losses[0] * 1.05
