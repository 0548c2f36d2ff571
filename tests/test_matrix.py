"""The whole training matrix: every (model, task, optimizer) cell of the
compiled kernels against the NumPy reference (float64, one thread, fixed
row order), plus the training controls (mini-batches, weights, clipping,
schedules, smoothing, L2 groups, L1)."""

import numpy as np
import pytest

import reference as ref
from kernels_compat import score_rows, train_epoch
from fmcli._core import _kernels
from fmcli.model import padded_k

KINDS = ("lr", "fm", "ffm", "fwfm")
TASKS = ("binary", "regression", "multiclass")
OPTIMIZERS = ("sgd", "adagrad", "adam", "ftrl", "rowwise-adagrad")
SLOTS = {"sgd": (), "adagrad": ("G",), "adam": ("m", "v"), "ftrl": ("z", "n"), "rowwise-adagrad": ("G",)}


def factor_width(optimizer, kp):
    """Values per factor block: kp weights, then kp per state slot (row-wise
    AdaGrad: one accumulator)."""
    return kp + 1 if optimizer == "rowwise-adagrad" else (1 + len(SLOTS[optimizer])) * kp


def to_layout(models, state, optimizer, dtype):
    """Reference models and optimizer state -> the kernels' flat arrays (class after class)."""
    slots = SLOTS[optimizer]
    w = 1 + len(slots)
    m0 = models[0]
    kp = padded_k(m0.k)
    Bs, Ls, Fs, Rs = [], [], [], []
    for c, model in enumerate(models):
        cs = state["classes"][c]
        B = np.zeros((1, w), dtype)
        L = np.zeros((model.n_features, w), dtype)
        B[0, 0] = model.bias
        L[:, 0] = model.linear
        for s, name in enumerate(slots, start=1):
            B[0, s] = cs[name]["bias"]
            L[:, s] = cs[name]["linear"]
        Bs.append(B)
        Ls.append(L)
        if model.kind != "lr":
            blocks = model.factors.reshape(-1, model.k)
            F = np.zeros((blocks.shape[0], factor_width(optimizer, kp)), dtype)
            if optimizer == "adagrad":
                F[:, kp:] = 1.0   # the padding's accumulators, as fmcli.params.HostParams sets them
            F[:, : model.k] = blocks
            if optimizer == "rowwise-adagrad":
                F[:, kp] = cs["G"]["factors"].reshape(-1)
            else:
                for s, name in enumerate(slots, start=1):
                    F[:, s * kp : s * kp + model.k] = cs[name]["factors"].reshape(-1, model.k)
            Fs.append(F)
        if model.kind == "fwfm":
            R = np.zeros((model.n_fields ** 2, w), dtype)
            R[:, 0] = model.field_weights.reshape(-1)
            for s, name in enumerate(slots, start=1):
                R[:, s] = cs[name]["field_weights"].reshape(-1)
            Rs.append(R)
    cat = lambda parts: np.concatenate(parts).reshape(-1) if parts else np.zeros(0, dtype)  # noqa: E731
    return cat(Bs), cat(Ls), cat(Fs), cat(Rs), kp


def from_layout(models, B, L, F, R, kp):
    m0 = models[0]
    w = B.size // len(models)
    out = []
    for c, model in enumerate(models):
        got = model.copy()
        got.bias = float(B[c * w])
        got.linear = L.reshape(len(models), model.n_features, w)[c, :, 0].astype(np.float64)
        if model.kind != "lr":
            width = F.size // (len(models) * (model.factors.size // model.k))
            blocks = F.reshape(len(models), -1, width)[c, :, : model.k]
            got.factors = blocks.astype(np.float64).reshape(model.factors.shape)
        if model.kind == "fwfm":
            got.field_weights = R.reshape(len(models), -1, w)[c, :, 0].reshape(m0.n_fields, m0.n_fields)
        out.append(got)
    return out


def csr(rows):
    indptr = np.zeros(len(rows) + 1, np.int64)
    indptr[1:] = np.cumsum([len(r.features) for r in rows])
    return (indptr,
            np.concatenate([r.fields for r in rows]).astype(np.int32),
            np.concatenate([r.features for r in rows]).astype(np.int32),
            np.concatenate([r.values for r in rows]).astype(np.float32))


def problem(kind, task, seed, n_rows=24, k=3, n_classes=3, **flags):
    rng = np.random.default_rng(seed)
    n_features, n_fields = 20, 4
    C = n_classes if task == "multiclass" else 1
    models = [ref.RefModel.random(kind, n_features, n_fields, k, rng, scale=0.3, **flags)
              for _ in range(C)]
    rows = ref.random_rows(rng, n_rows, n_features, n_fields, max_nnz=5)
    rows = [ref.make_row(r.fields, r.features, r.values.astype(np.float32)) for r in rows]
    if task == "binary":
        labels = rng.integers(0, 2, n_rows).astype(np.float64)
    elif task == "regression":
        labels = rng.normal(0, 1.5, n_rows).astype(np.float32).astype(np.float64)
    else:
        labels = rng.integers(0, C, n_rows).astype(np.float64)
    return models, rows, labels, rng.permutation(n_rows)


def run_both(kind, task, optimizer, *, seed=0, epochs=2, eta=0.05, weights=None, k=3, flags=None,
             zero_linear=False, dtype=np.float64, **hp):
    """Train the same problem with the reference and the kernel (parameters
    of `dtype`); return both."""
    models, rows, labels, order = problem(kind, task, seed, k=k, **(flags or {}))
    if zero_linear:
        for m in models:
            m.linear[:] = 0.0
    reg = {n: hp.get(n, 0.0) for n in ("l1", "l2_bias", "l2_linear", "l2_factors")}
    state = ref.init_state(models, optimizer, ftrl_beta=hp.get("ftrl_beta", 1.0), eta=eta, **reg)
    B, L, F, R, kp = to_layout(models, state, optimizer, dtype)
    expected = [m.copy() for m in models]
    _, ref_losses = ref.train_matrix(expected, rows, labels, order, task=task, optimizer=optimizer,
                                     eta=eta, epochs=epochs, weights=weights, **hp)
    indptr, fields, features, values = csr(rows)
    batch = hp.get("batch_size", 1)
    steps = -(-len(rows) // batch)
    losses = []
    for epoch in range(epochs):
        loss, wsum, bad, first = train_epoch(
            kind, optimizer, task, B, L, F, R, models[0].n_features, models[0].n_fields, kp,
            len(models), indptr, fields, features, values, labels.astype(np.float32),
            np.zeros(0, np.float32) if weights is None else np.asarray(weights, np.float32),
            order.astype(np.int64), eta, step0=epoch * steps, total_steps=epochs * steps,
            use_bias=models[0].use_bias, use_linear=models[0].use_linear,
            normalize=models[0].normalize, threads=1, exact_rsqrt=True, k=models[0].k, **hp)
        assert bad == 0 and first == -1
        losses.append(loss / wsum)
    return from_layout(models, B, L, F, R, kp), expected, losses, ref_losses


def assert_same(got, expected, rtol=1e-9, atol=1e-11):
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g.bias, e.bias, rtol=rtol, atol=atol)
        np.testing.assert_allclose(g.linear, e.linear, rtol=rtol, atol=atol)
        if e.factors is not None:
            np.testing.assert_allclose(g.factors, e.factors, rtol=rtol, atol=atol)
        if e.field_weights is not None:
            # only the upper triangle is a parameter
            np.testing.assert_allclose(np.triu(g.field_weights), np.triu(e.field_weights), rtol=rtol, atol=atol)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("kind", KINDS)
def test_every_cell_matches_reference(kind, task, optimizer):
    got, expected, losses, ref_losses = run_both(
        kind, task, optimizer, seed=len(kind) * 31 + len(task) * 7 + len(optimizer),
        l2_linear=0.01, l2_factors=0.02, l2_bias=0.005,
        **({"l1": 0.001} if optimizer == "ftrl" else {}))
    assert_same(got, expected)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-9)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_mini_batches_match_reference(kind, task, optimizer):
    got, expected, losses, ref_losses = run_both(kind, task, optimizer, seed=5, batch_size=5,
                                                 l2_linear=0.01, l2_factors=0.02)
    assert_same(got, expected)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-9)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("controls", [
    {"clip_norm": 0.05},
    {"label_smoothing": 0.1},
    {"schedule": "cosine", "warmup": 7},
    {"schedule": "linear"},
    {"schedule": "inverse-sqrt", "warmup": 3},
    {"clip_norm": 0.02, "batch_size": 4, "schedule": "cosine"},
])
@pytest.mark.parametrize("optimizer", ["sgd", "adam", "rowwise-adagrad"])
def test_training_controls_match_reference(kind, controls, optimizer):
    got, expected, losses, ref_losses = run_both(kind, "binary", optimizer, seed=9, eta=0.2,
                                                 l2_factors=0.01, **controls)
    assert_same(got, expected)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-9)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("kind", KINDS)
def test_row_weights_match_reference(kind, task):
    weights = np.random.default_rng(3).uniform(0, 3, 24).astype(np.float32).astype(np.float64)
    weights[::5] = 0
    got, expected, losses, ref_losses = run_both(kind, task, "adagrad", seed=4, weights=weights,
                                                 l2_factors=0.01)
    assert_same(got, expected)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-9)


@pytest.mark.parametrize("kind", ["fm", "ffm"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam", "ftrl", "rowwise-adagrad"])
def test_float32_fast_paths_match_reference(kind, optimizer):
    """float32 runs the SIMD pair loops for FFM: they agree with the reference to
    float32 rounding (row-wise AdaGrad with its refined 1/sqrt)."""
    models, rows, labels, order = problem(kind, "binary", 21, k=4)
    state = ref.init_state(models, optimizer, eta=0.05, l1=0.001 if optimizer == "ftrl" else 0.0,
                           l2_factors=0.01)
    B, L, F, R, kp = to_layout(models, state, optimizer, np.float32)
    expected = [m.copy() for m in models]
    ref.train_matrix(expected, rows, labels, order, task="binary", optimizer=optimizer, eta=0.05,
                     l1=0.001 if optimizer == "ftrl" else 0.0, l2_factors=0.01)
    indptr, fields, features, values = csr(rows)
    train_epoch(kind, optimizer, "binary", B, L, F, R, 20, 4, kp, 1, indptr, fields, features,
                         values, labels.astype(np.float32), np.zeros(0, np.float32),
                         order.astype(np.int64), 0.05, l1=0.001 if optimizer == "ftrl" else 0.0,
                         l2_factors=0.01, total_steps=len(rows), k=4,
                         exact_rsqrt=optimizer == "rowwise-adagrad")
    got = from_layout(models, B, L, F, R, kp)
    np.testing.assert_allclose(got[0].factors, expected[0].factors, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(got[0].linear, expected[0].linear, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("controls", [{}, {"batch_size": 5}, {"clip_norm": 0.05}])
def test_float32_fwfm_fast_path_matches_reference(task, optimizer, controls):
    """float32 FwFM scores rows and computes their gradients with the SIMD loops
    of fwfm_f32.h (and steps AdaGrad's field-pair weights four at a time): they
    agree with the reference to float32 rounding in every cell, with rows
    that repeat fields (several pairs share one field-pair weight)."""
    got, expected, losses, ref_losses = run_both(
        "fwfm", task, optimizer, seed=len(task) * 5 + len(optimizer), k=4, dtype=np.float32,
        l2_linear=0.01, l2_factors=0.02, **({"l1": 0.001} if optimizer == "ftrl" else {}), **controls)
    assert_same(got, expected, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    # the field-pair weights moved: the comparison is not vacuous
    assert not np.allclose(np.triu(got[0].field_weights), np.triu(problem("fwfm", task, len(task) * 5 + len(
        optimizer), k=4)[0][0].field_weights), atol=1e-4)


def test_ftrl_with_large_l1_leaves_exact_zeros():
    """Linear weights start at 0 (as in training): a large L1 keeps every one
    of them exactly 0 while the reference agrees on all parameters."""
    got, expected, _, _ = run_both("ffm", "binary", "ftrl", seed=2, l1=5.0, flags={"use_linear": True},
                                   zero_linear=True)
    assert np.all(got[0].linear == 0.0)
    assert got[0].bias != 0.0
    assert_same(got, expected)
    small, _, _, _ = run_both("ffm", "binary", "ftrl", seed=2, l1=1e-4, zero_linear=True)
    assert np.count_nonzero(small[0].linear) > 5


def test_nonfinite_rows_stop_or_are_skipped():
    models, rows, labels, order = problem("fm", "binary", 1)
    state = ref.init_state(models, "sgd")
    B, L, F, R, kp = to_layout(models, state, "sgd", np.float64)
    indptr, fields, features, values = csr(rows)
    values[indptr[3]] = np.inf   # row 3's score is not finite
    args = ("fm", "sgd", "binary", B, L, F, R, 20, 4, kp, 1, indptr, fields, features, values,
            labels.astype(np.float32), np.zeros(0, np.float32), np.arange(len(rows), dtype=np.int64), 0.1)
    loss, wsum, bad, first = train_epoch(*args, normalize=False)
    assert (bad, first) == (0, 3)
    B2 = B.copy()
    loss, wsum, bad, first = train_epoch(*args, normalize=False, skip_nonfinite=True)
    assert (bad, first, wsum) == (1, -1, len(rows) - 1)
    assert not np.array_equal(B, B2)


def test_two_class_softmax_scores_like_logistic():
    """Softmax over two classes with class 0's parameters at zero is the
    logistic model of class 1's parameters."""
    models, rows, labels, _ = problem("ffm", "multiclass", 6, n_classes=2)
    zero = models[0]
    zero.bias, zero.linear[:], zero.factors[:] = 0.0, 0.0, 0.0
    state = ref.init_state(models, "sgd")
    B, L, F, R, kp = to_layout(models, state, "sgd", np.float64)
    indptr, fields, features, values = csr(rows)
    two = np.empty(2 * len(rows))
    score_rows("ffm", B, L, F, R, 20, 4, kp, 0, indptr, fields, features, values, two,
                        True, True, True, 1, 2)
    one = np.empty(len(rows))
    c1 = to_layout(models[1:], ref.init_state(models[1:], "sgd"), "sgd", np.float64)
    score_rows("ffm", *c1[:4], 20, 4, kp, 0, indptr, fields, features, values, one,
                        True, True, True, 1, 1)
    two = two.reshape(-1, 2)
    p1 = np.exp(two[:, 1]) / np.exp(two).sum(axis=1)
    np.testing.assert_allclose(p1, 1 / (1 + np.exp(-one)), rtol=1e-12)


def test_hogwild_threads_train_about_as_well_as_one_thread():
    """Hogwild updates race, so two threads do not reproduce one thread's
    weights; they must still learn about as well, per row and in mini-batches."""
    models, rows, labels, order = problem("ffm", "binary", 8, n_rows=400)
    indptr, fields, features, values = csr(rows)
    y = labels.astype(np.float32)
    for batch in (1, 8):
        losses = []
        for threads in (1, 2):
            state = ref.init_state(models, "adam")
            B, L, F, R, kp = to_layout(models, state, "adam", np.float32)
            for epoch in range(5):
                train_epoch("ffm", "adam", "binary", B, L, F, R, 20, 4, kp, 1, indptr, fields,
                                     features, values, y, np.zeros(0, np.float32), order.astype(np.int64),
                                     0.02, batch_size=batch, threads=threads, total_steps=2000)
            out = np.empty(len(rows))
            score_rows("ffm", B, L, F, R, 20, 4, kp, 2, indptr, fields, features, values, out,
                                True, True, True, 1)
            assert np.all(np.isfinite(out))
            losses.append(np.mean(np.logaddexp(0, -(2 * y - 1) * out)))
        assert losses[0] < np.log(2) - 0.05    # it learned
        assert losses[1] == pytest.approx(losses[0], rel=0.1)


def test_step_size_schedules_match_reference():
    for schedule, warmup in (("constant", 0), ("constant", 5), ("linear", 3), ("cosine", 4),
                             ("inverse-sqrt", 0), ("inverse-sqrt", 6)):
        for t in (0, 1, 4, 9, 19):
            assert _kernels.step_size("sgd", 0.3, t, schedule, warmup, 20) == pytest.approx(
                ref.learning_rate(0.3, schedule, t, 20, warmup), rel=1e-12)
