"""FmFM in the compiled CPU kernels (fmcli/_core/_kernels.pyx, fmfm_f32.h)
against the NumPy reference (tests/reference.py).

Every task x optimizer x batch-size cell in float64 (one thread, fixed row
order) equals the reference's train_matrix to rounding; scores equal the
reference's score in float64 and float32; entries outside the model add
nothing; the float32 fast path (fmfm_f32.h) stays close to the float64
loops; two Hogwild threads train to finite weights.

The kernels hold FmFM's field matrices in R as kp x kp matrices, one
factor-format block per matrix row: row r of pair (a, c) is block
(a * m + c) * kp + r (only a <= c is read; the padding stays 0)."""

import numpy as np
import pytest

import reference as ref
from kernels_compat import score_rows, train_epoch
from fmcli._core import _kernels
from fmcli.model import padded_k

TASKS = ("binary", "regression", "multiclass")
OPTIMIZERS = ("sgd", "adagrad", "rowwise-adagrad", "adam", "ftrl")
SLOTS = {"sgd": (), "adagrad": ("G",), "adam": ("m", "v"), "ftrl": ("z", "n"), "rowwise-adagrad": ("G",)}
N_FEATURES, N_FIELDS = 20, 4


def block_width(optimizer, kp):
    """Values per factor-format block: kp weights, then kp per state slot
    (row-wise AdaGrad: one accumulator)."""
    return kp + 1 if optimizer == "rowwise-adagrad" else (1 + len(SLOTS[optimizer])) * kp


def to_layout(models, state, optimizer, dtype):
    """Reference models and optimizer state -> the kernels' flat B, L, F, R
    (class after class)."""
    slots = SLOTS[optimizer]
    w = 1 + len(slots)
    k, m = models[0].k, models[0].n_fields
    kp = padded_k(k)
    bw = block_width(optimizer, kp)
    Bs, Ls, Fs, Rs = [], [], [], []
    for c, model in enumerate(models):
        cs = state["classes"][c]
        B = np.zeros((1, w), dtype)
        L = np.zeros((model.n_features, w), dtype)
        B[0, 0], L[:, 0] = model.bias, model.linear
        F = np.zeros((model.n_features, bw), dtype)
        R = np.zeros((m, m, kp, bw), dtype)      # (pair, matrix row, block)
        if optimizer in ("adagrad", "rowwise-adagrad"):
            F[:, kp:] = 1.0   # the padding's accumulators start at 1, as fmcli.params sets them
            R[..., kp:] = 1.0
        F[:, :k] = model.factors
        R[:, :, :k, :k] = model.field_matrices
        if optimizer == "rowwise-adagrad":
            F[:, kp] = cs["G"]["factors"]
            R[:, :, :k, kp] = cs["G"]["field_matrices"]
        else:
            for s, name in enumerate(slots, start=1):
                B[0, s], L[:, s] = cs[name]["bias"], cs[name]["linear"]
                F[:, s * kp: s * kp + k] = cs[name]["factors"]
                R[:, :, :k, s * kp: s * kp + k] = cs[name]["field_matrices"]
        if optimizer == "rowwise-adagrad":
            B[0, 1], L[:, 1] = cs["G"]["bias"], cs["G"]["linear"]
        Bs.append(B), Ls.append(L), Fs.append(F), Rs.append(R)
    flat = [np.concatenate(p).reshape(-1) for p in (Bs, Ls, Fs, Rs)]
    return (*flat, kp)


def from_layout(models, B, L, F, R, kp):
    """The weights of the kernels' arrays -> reference models (the upper
    triangle of field pairs, mirrored)."""
    C = len(models)
    out = []
    for c, model in enumerate(models):
        k, m = model.k, model.n_fields
        got = model.copy()
        w = B.size // C
        got.bias = float(B[c * w])
        got.linear = L.reshape(C, model.n_features, -1)[c, :, 0].astype(np.float64)
        got.factors = F.reshape(C, model.n_features, -1)[c, :, :k].astype(np.float64)
        mats = R.reshape(C, m, m, kp, -1)[c, :, :, :k, :k].astype(np.float64).copy()
        got.field_matrices = ref.mirror_field_matrices(mats)
        out.append(got)
    return out


def padding(R, C, kp, k):
    """R's matrix weights outside the k x k matrices (rows and columns >= k)."""
    blocks = R.reshape(C, N_FIELDS, N_FIELDS, kp, -1)[..., :kp]
    return np.concatenate([blocks[..., k:, :].ravel(), blocks[..., :k, k:].ravel()])


def csr(rows):
    indptr = np.zeros(len(rows) + 1, np.int64)
    indptr[1:] = np.cumsum([len(r.features) for r in rows])
    return (indptr,
            np.concatenate([r.fields for r in rows]).astype(np.int32),
            np.concatenate([r.features for r in rows]).astype(np.int32),
            np.concatenate([r.values for r in rows]).astype(np.float32))


def problem(task, seed, n_rows=24, k=3, n_classes=3, max_nnz=5, distinct=True):
    """Random FmFM models (matrices near the identity, diagonal pairs not
    symmetric) and rows that repeat fields (diagonal pairs, pairs sharing a
    matrix) and, without `distinct`, features."""
    rng = np.random.default_rng(seed)
    C = n_classes if task == "multiclass" else 1
    models = [ref.RefModel.random("fmfm", N_FEATURES, N_FIELDS, k, rng, scale=0.3) for _ in range(C)]
    rows = [ref.make_row(r.fields, r.features, r.values.astype(np.float32))
            for r in ref.random_rows(rng, n_rows, N_FEATURES, N_FIELDS, max_nnz=max_nnz,
                                     distinct_features=distinct)]
    if task == "binary":
        labels = rng.integers(0, 2, n_rows).astype(np.float64)
    elif task == "regression":
        labels = rng.normal(0, 1.5, n_rows).astype(np.float32).astype(np.float64)
    else:
        labels = rng.integers(0, C, n_rows).astype(np.float64)
    return models, rows, labels, rng.permutation(n_rows)


def kernel_train(models, rows, labels, order, optimizer, task, arrays, *, epochs, eta, weights=None,
                 threads=1, k=None, **hp):
    """Train `arrays` (B, L, F, R, kp) with the kernels; returns the epochs' mean losses."""
    B, L, F, R, kp = arrays
    indptr, fields, features, values = csr(rows)
    batch = hp.get("batch_size", 1)
    steps = -(-len(rows) // batch)
    losses = []
    for epoch in range(epochs):
        loss, wsum, bad, first = train_epoch(
            "fmfm", optimizer, task, B, L, F, R, N_FEATURES, N_FIELDS, kp, len(models), indptr, fields,
            features, values, labels.astype(np.float32),
            np.zeros(0, np.float32) if weights is None else np.asarray(weights, np.float32),
            order.astype(np.int64), eta, step0=epoch * steps, total_steps=epochs * steps,
            threads=threads, exact_rsqrt=True, k=models[0].k if k is None else k, **hp)
        assert bad == 0 and first == -1
        losses.append(loss / wsum)
    return losses


def run_both(task, optimizer, *, seed=0, epochs=2, eta=0.05, weights=None, k=3, dtype=np.float64,
             kernel_k=None, distinct=True, **hp):
    """Train one problem with the reference and with the kernels (parameters
    of `dtype`); return (kernel models, reference models, their losses, the
    kernels' R and kp)."""
    models, rows, labels, order = problem(task, seed, k=k, distinct=distinct)
    reg = {n: hp.get(n, 0.0) for n in ("l1", "l2_bias", "l2_linear", "l2_factors")}
    state = ref.init_state(models, optimizer, ftrl_beta=hp.get("ftrl_beta", 1.0), eta=eta, **reg)
    arrays = to_layout(models, state, optimizer, dtype)
    expected = [m.copy() for m in models]
    _, ref_losses = ref.train_matrix(expected, rows, labels, order, task=task, optimizer=optimizer,
                                     eta=eta, epochs=epochs, weights=weights, **hp)
    losses = kernel_train(models, rows, labels, order, optimizer, task, arrays, epochs=epochs, eta=eta,
                          weights=weights, k=kernel_k, **hp)
    B, L, F, R, kp = arrays
    return from_layout(models, B, L, F, R, kp), expected, losses, ref_losses, R, kp


def assert_same(got, expected, rtol=1e-9, atol=1e-11):
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g.bias, e.bias, rtol=rtol, atol=atol)
        np.testing.assert_allclose(g.linear, e.linear, rtol=rtol, atol=atol)
        np.testing.assert_allclose(g.factors, e.factors, rtol=rtol, atol=atol)
        np.testing.assert_allclose(g.field_matrices, e.field_matrices, rtol=rtol, atol=atol)


def hp_for(optimizer):
    return {"l2_linear": 0.01, "l2_factors": 0.02, "l2_bias": 0.005,
            **({"l1": 0.001} if optimizer == "ftrl" else {})}


# ---------------------------------------------------------------------------
# Layout


def test_fmfm_layout_holds_a_matrix_per_field_pair():
    lay = _kernels.Layout("fmfm", "multiclass", 3, 10, 5, 8, 2)
    assert _kernels.KIND_CODES["fmfm"] == 4
    assert lay.n_blocks == 10 and lay.fstride == 24
    # R: 5 * 5 pairs, 8 matrix rows each, blocks of fstride values
    assert lay.class_sizes == (3, 30, 10 * 24, 5 * 5 * 8 * 24)
    row = _kernels.Layout("fmfm", "binary", 1, 10, 5, 8, 1, row_state=True)
    assert row.class_sizes[3] == 5 * 5 * 8 * 9
    with pytest.raises(ValueError, match="float16"):
        _kernels.Layout("fmfm", "binary", 1, 10, 5, 8, 1, half=True)


def test_too_small_matrix_array_is_refused():
    models, rows, labels, order = problem("binary", 0)
    B, L, F, R, kp = to_layout(models, ref.init_state(models, "sgd"), "sgd", np.float64)
    with pytest.raises(ValueError, match="field-pair"):
        train_epoch("fmfm", "sgd", "binary", B, L, F, R[:-1], N_FEATURES, N_FIELDS, kp, 1,
                    *csr(rows), labels.astype(np.float32), np.zeros(0, np.float32),
                    order.astype(np.int64), 0.1)


# ---------------------------------------------------------------------------
# Scoring


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-12), (np.float32, 2e-5)])
@pytest.mark.parametrize("k", [3, 4, 8, 9, 16])
def test_scores_match_reference(dtype, rtol, k):
    """kp = 4, 8 and 16 run fmfm_f32.h's constant-width loops in float32,
    kp = 12 its general loop; float64 runs the generic loops."""
    models, rows, labels, _ = problem("multiclass", 11 + k, n_rows=40, k=k, max_nnz=8, distinct=False)
    B, L, F, R, kp = to_layout(models, ref.init_state(models, "sgd"), "sgd", dtype)
    out = np.empty(len(rows) * len(models))
    score_rows("fmfm", B, L, F, R, N_FEATURES, N_FIELDS, kp, 0, *csr(rows), out, n_classes=len(models))
    want = ref.scores_matrix(models, rows)
    np.testing.assert_allclose(out.reshape(want.shape), want, rtol=rtol, atol=rtol)


def test_scores_of_a_diagonal_pair_use_the_symmetric_matrix():
    """Two entries of one field: phi = v_i^T (M + M^T)/2 v_l, whatever their order."""
    models, _, _, _ = problem("binary", 3, k=4)
    model = models[0]
    model.field_matrices[2, 2] = np.arange(16.0).reshape(4, 4) / 10
    rows = [ref.make_row([2, 2], [5, 7], [1.0, 1.0]), ref.make_row([2, 2], [7, 5], [1.0, 1.0])]
    model.normalize = False
    B, L, F, R, kp = to_layout(models, ref.init_state(models, "sgd"), "sgd", np.float64)
    for dtype in (np.float64, np.float32):
        out = np.empty(2)
        arrays = [a.astype(dtype) for a in (B, L, F, R)]
        score_rows("fmfm", *arrays, N_FEATURES, N_FIELDS, kp, 0, *csr(rows), out, normalize=False)
        S = (model.field_matrices[2, 2] + model.field_matrices[2, 2].T) / 2
        want = model.bias + model.linear[5] + model.linear[7] + model.factors[5] @ S @ model.factors[7]
        np.testing.assert_allclose(out, [want, want], rtol=1e-6)


def test_entries_outside_the_model_add_nothing():
    """Features at or beyond n_features and fields at or beyond n_fields are
    skipped in the score and in training (they still count in the row's
    normalization)."""
    models, rows, labels, order = problem("binary", 5, k=4)
    wild = []
    for i, r in enumerate(rows):
        extra_f = [N_FIELDS + i % 3, 1, 0]
        extra_j = [2, N_FEATURES + i, N_FEATURES + 1]
        wild.append(ref.make_row(np.concatenate([r.fields, extra_f]), np.concatenate([r.features, extra_j]),
                                 np.concatenate([r.values, [1.0, 2.0, 0.5]]).astype(np.float32)))
    # the reference scores the kept entries with the full row's normalization
    kept = [ref.make_row(r.fields, r.features, r.values) for r in rows]
    norms = [np.sqrt(np.sum(w.values.astype(np.float64) ** 2)) for w in wild]
    unnorm = [ref.make_row(r.fields, r.features, r.values / n) for r, n in zip(kept, norms)]
    flat = [m.copy() for m in models]
    for m in flat:
        m.normalize = False
    for dtype, rtol in ((np.float64, 1e-12), (np.float32, 2e-5)):
        B, L, F, R, kp = to_layout(models, ref.init_state(models, "sgd"), "sgd", dtype)
        out = np.empty(len(rows))
        score_rows("fmfm", B, L, F, R, N_FEATURES, N_FIELDS, kp, 0, *csr(wild), out)
        np.testing.assert_allclose(out, ref.scores_matrix(flat, unnorm)[:, 0], rtol=rtol, atol=rtol)
    # training on the wild rows equals the reference trained on the kept entries
    state = ref.init_state(flat, "adagrad")
    arrays = to_layout(flat, state, "adagrad", np.float64)
    expected = [m.copy() for m in flat]
    ref.train_matrix(expected, unnorm, labels, order, task="binary", optimizer="adagrad", eta=0.1,
                     epochs=2, l2_factors=0.01)
    kernel_train(models, wild, labels, order, "adagrad", "binary", arrays, epochs=2, eta=0.1,
                 l2_factors=0.01)
    assert_same(from_layout(flat, *arrays), expected)


# ---------------------------------------------------------------------------
# Training: the matrix of cells in float64


@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("task", TASKS)
def test_every_cell_matches_reference(task, optimizer, batch_size):
    got, expected, losses, ref_losses, R, kp = run_both(
        task, optimizer, seed=len(task) * 7 + len(optimizer) + batch_size, batch_size=batch_size,
        **hp_for(optimizer))
    assert_same(got, expected)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-9)
    # the matrices moved (the comparison is not vacuous) and the padding stayed 0
    start = problem(task, len(task) * 7 + len(optimizer) + batch_size)[0][0].field_matrices
    assert not np.allclose(got[0].field_matrices, start, atol=1e-6)
    assert not np.any(padding(R, len(got), kp, 3))


@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize("optimizer", ["sgd", "adagrad", "ftrl"])
def test_repeated_features_match_reference(optimizer, batch_size):
    """A feature twice in a row: each occurrence steps its vector with the
    gradient (and factor L2) of the start-of-row values, in row order."""
    got, expected, losses, ref_losses, _, _ = run_both(
        "binary", optimizer, seed=17, distinct=False, batch_size=batch_size, l2_factors=0.05,
        **({"l1": 0.001} if optimizer == "ftrl" else {}))
    assert_same(got, expected)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-9)


@pytest.mark.parametrize("optimizer,controls", [
    ("sgd", {"clip_norm": 0.05}),
    ("adam", {"clip_norm": 0.02, "batch_size": 3, "schedule": "cosine"}),
    ("rowwise-adagrad", {"label_smoothing": 0.1, "schedule": "cosine", "warmup": 7}),
    ("adagrad", {"schedule": "linear", "batch_size": 3}),
    ("sgd", {"schedule": "inverse-sqrt", "warmup": 3, "label_smoothing": 0.2}),
])
def test_training_controls_match_reference(optimizer, controls):
    got, expected, losses, ref_losses, _, _ = run_both("binary", optimizer, seed=9, eta=0.2,
                                                       l2_factors=0.01, **controls)
    assert_same(got, expected)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-9)


@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize("task", TASKS)
def test_row_weights_match_reference(task, batch_size):
    weights = np.random.default_rng(3).uniform(0, 3, 24).astype(np.float32).astype(np.float64)
    weights[::5] = 0
    got, expected, losses, ref_losses, _, _ = run_both(task, "adagrad", seed=4, weights=weights,
                                                       l2_factors=0.01, batch_size=batch_size)
    assert_same(got, expected)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-9)


@pytest.mark.parametrize("k", [4, 5, 8])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_wider_factors_match_reference(k, batch_size):
    got, expected, losses, ref_losses, R, kp = run_both("binary", "adam", seed=k, k=k, batch_size=batch_size,
                                                        l2_factors=0.01)
    assert_same(got, expected)
    assert not np.any(padding(R, 1, kp, k))


@pytest.mark.parametrize("optimizer", ["adagrad", "adam", "ftrl"])
def test_without_k_the_padding_rows_are_stepped_and_change_nothing(optimizer):
    """A trainer given no k steps all kp matrix rows: the padding rows'
    gradients are 0, so the result is the same."""
    got, expected, _, _, R, kp = run_both("binary", optimizer, seed=2, k=5, kernel_k=0, batch_size=1,
                                          **hp_for(optimizer))
    assert_same(got, expected)
    assert not np.any(padding(R, 1, kp, 5))


# ---------------------------------------------------------------------------
# The float32 fast path


@pytest.mark.parametrize("k", [3, 8, 9, 16])
@pytest.mark.parametrize("optimizer,batch_size", [("adagrad", 1), ("sgd", 3), ("ftrl", 1), ("adam", 3),
                                                  ("rowwise-adagrad", 1)])
def test_float32_fast_path_is_close_to_float64(k, optimizer, batch_size):
    """float32 scores and gradients come from fmfm_f32.h (constant widths
    kp = 4, 8, 16 and its general loop for kp = 12): the trained weights stay
    within float32 rounding of the float64 loops (and so of the reference)."""
    models, rows, labels, order = problem("binary", 40 + k, n_rows=60, k=k, max_nnz=7)
    hp = dict(hp_for(optimizer), batch_size=batch_size)
    reg = {n: hp.get(n, 0.0) for n in ("l1", "l2_bias", "l2_linear", "l2_factors")}
    state = ref.init_state(models, optimizer, eta=0.05, **reg)
    wide = to_layout(models, state, optimizer, np.float64)
    narrow = to_layout(models, state, optimizer, np.float32)
    l64 = kernel_train(models, rows, labels, order, optimizer, "binary", wide, epochs=2, eta=0.05, **hp)
    l32 = kernel_train(models, rows, labels, order, optimizer, "binary", narrow, epochs=2, eta=0.05, **hp)
    np.testing.assert_allclose(l32, l64, rtol=1e-5)
    for a, b in zip(narrow[:4], wide[:4]):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
    assert not np.any(padding(narrow[3], 1, narrow[4], k))
    got = from_layout(models, *narrow)
    assert not np.allclose(got[0].field_matrices, models[0].field_matrices, atol=1e-4)


@pytest.mark.parametrize("task", TASKS)
def test_float32_fast_path_matches_reference(task):
    got, expected, losses, ref_losses, _, _ = run_both(task, "adagrad", seed=13, k=4, dtype=np.float32,
                                                       **hp_for("adagrad"))
    assert_same(got, expected, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)


# ---------------------------------------------------------------------------
# Threads


@pytest.mark.parametrize("batch_size", [1, 8])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_two_hogwild_threads_finish_with_finite_weights(dtype, batch_size):
    models, rows, labels, order = problem("binary", 8, n_rows=400, k=4)
    state = ref.init_state(models, "adagrad")
    arrays = to_layout(models, state, "adagrad", dtype)
    start = [a.copy() for a in arrays[:4]]
    for epoch in range(3):
        loss, wsum, bad, first = train_epoch(
            "fmfm", "adagrad", "binary", *arrays[:4], N_FEATURES, N_FIELDS, arrays[4], 1, *csr(rows),
            labels.astype(np.float32), np.zeros(0, np.float32), order.astype(np.int64), 0.05,
            batch_size=batch_size, threads=2, k=4)
        assert (bad, first) == (0, -1)
    for a, s in zip(arrays[:4], start):
        assert np.all(np.isfinite(a))
        assert not np.array_equal(a, s)
    out = np.empty(len(rows))
    score_rows("fmfm", *arrays[:4], N_FEATURES, N_FIELDS, arrays[4], 1, *csr(rows), out, threads=2)
    assert np.all(np.isfinite(out))
    y = 2 * labels - 1
    assert np.mean(np.logaddexp(0, -y * out)) < np.mean(np.logaddexp(0, -y * ref.scores_matrix(models, rows)[:, 0]))
