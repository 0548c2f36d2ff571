"""The compiled kernels agree with the NumPy reference (tests/reference.py)."""

import numpy as np
import pytest

import reference as ref
from fmcli._core import _kernels
from fmcli.data.batch import Batch
from fmcli.model import padded_k


def to_batch(rows, labels) -> Batch:
    indptr = np.zeros(len(rows) + 1, np.int64)
    indptr[1:] = np.cumsum([len(r.features) for r in rows])
    return Batch(
        labels=np.asarray(labels, np.float32),
        indptr=indptr,
        fields=np.concatenate([r.fields for r in rows]).astype(np.int32),
        features=np.concatenate([r.features for r in rows]).astype(np.int32),
        values=np.concatenate([r.values for r in rows]).astype(np.float32),
    )


def to_layout(model: ref.RefModel, optimizer: str, dtype):
    """RefModel -> (B, L, F, R, kp) in the kernels' interleaved layout."""
    ns = _kernels.n_state(optimizer)
    kp = padded_k(model.k)
    w = 1 + ns
    init = 1.0 if optimizer == "adagrad" else 0.0
    B = np.full((1, w), init, dtype)
    B[0, 0] = model.bias
    L = np.full((model.n_features, w), init, dtype)
    L[:, 0] = model.linear
    if model.kind == "lr":
        F = np.zeros((0, w * kp), dtype)
    else:
        blocks = model.factors.reshape(-1, model.k)
        F = np.zeros((blocks.shape[0], w * kp), dtype)
        F[:, : model.k] = blocks
        F[:, kp:] = init
    R = np.zeros((0, w), dtype)
    if model.kind == "fwfm":
        R = np.full((model.n_fields ** 2, w), init, dtype)
        R[:, 0] = model.field_weights.reshape(-1)
    return B, L, F, R, kp


def from_layout(model: ref.RefModel, B, L, F, R, kp):
    out = model.copy()
    out.bias = float(B[0, 0])
    out.linear = L[:, 0].astype(np.float64)
    if model.kind != "lr":
        out.factors = F[:, : model.k].astype(np.float64).reshape(model.factors.shape)
    if model.kind == "fwfm":
        out.field_weights = R[:, 0].astype(np.float64).reshape(model.n_fields, model.n_fields)
    return out


def run_kernel(model, rows, labels, order, epochs, optimizer, eta, lam, dtype, exact=True):
    B, L, F, R, kp = to_layout(model, optimizer, dtype)
    batch = to_batch(rows, labels)
    total = 0.0
    for _ in range(epochs):
        loss, wsum, bad, first = _kernels.train_epoch(
            model.kind, optimizer, "binary", B.reshape(-1), L.reshape(-1), F.reshape(-1), R.reshape(-1),
            model.n_features, model.n_fields, kp, 1, batch.indptr, batch.fields,
            batch.features, batch.values, (batch.labels > 0).astype(np.float32), np.zeros(0, np.float32),
            np.asarray(order, np.int64), eta, l2_linear=lam, l2_factors=lam,
            use_bias=model.use_bias, use_linear=model.use_linear, normalize=model.normalize,
            threads=1, exact_rsqrt=exact,
        )
        assert bad == 0 and first == -1 and wsum == len(order)
        total += loss
    return from_layout(model, B, L, F, R, kp), total


def make_problem(kind, seed, k=3, normalize=True, use_bias=True, use_linear=True):
    rng = np.random.default_rng(seed)
    n_features, n_fields = 30, 5
    model = ref.RefModel.random(
        kind, n_features, n_fields, k, rng, scale=0.3,
        use_bias=use_bias, use_linear=use_linear, normalize=normalize,
    )
    rows = ref.random_rows(rng, 40, n_features, n_fields, max_nnz=7)
    # The data path stores values as float32: give the reference the same numbers.
    rows = [ref.make_row(r.fields, r.features, r.values.astype(np.float32)) for r in rows]
    labels = rng.choice([-1.0, 1.0], size=len(rows))
    order = rng.permutation(len(rows))
    return model, rows, labels, order


@pytest.mark.parametrize("kind", ["lr", "fm", "ffm", "fwfm"])
@pytest.mark.parametrize("optimizer", ["sgd", "adagrad"])
@pytest.mark.parametrize("flags", [(True, True, True), (False, False, False), (True, False, True)])
@pytest.mark.parametrize("k", [3, 4, 6])
def test_training_matches_reference_float64(kind, optimizer, flags, k):
    normalize, use_bias, use_linear = flags
    model, rows, labels, order = make_problem(kind, seed=k * 7 + len(kind), k=k, normalize=normalize,
                                              use_bias=use_bias, use_linear=use_linear)
    expected = model.copy()
    ref.train(expected, rows, labels, order=order, epochs=3, optimizer=optimizer, eta=0.1, lam=0.01)
    got, _ = run_kernel(model, rows, labels, order, 3, optimizer, 0.1, 0.01, np.float64)
    np.testing.assert_allclose(got.bias, expected.bias, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got.linear, expected.linear, rtol=1e-10, atol=1e-12)
    if kind != "lr":
        np.testing.assert_allclose(got.factors, expected.factors, rtol=1e-10, atol=1e-12)
    if kind == "fwfm":
        np.testing.assert_allclose(got.field_weights, expected.field_weights, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["lr", "fm", "ffm", "fwfm"])
def test_training_matches_reference_float32(kind):
    model, rows, labels, order = make_problem(kind, seed=3, k=4)
    expected = model.copy()
    ref.train(expected, rows, labels, order=order, epochs=3, optimizer="adagrad", eta=0.1, lam=0.001)
    got, _ = run_kernel(model, rows, labels, order, 3, "adagrad", 0.1, 0.001, np.float32)
    np.testing.assert_allclose(got.linear, expected.linear, rtol=1e-4, atol=1e-5)
    if kind != "lr":
        np.testing.assert_allclose(got.factors, expected.factors, rtol=1e-4, atol=1e-5)
    if kind == "fwfm":
        np.testing.assert_allclose(np.triu(got.field_weights), np.triu(expected.field_weights),
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("k", [2, 4, 8, 12, 16, 20])
def test_float32_fwfm_matches_reference_for_every_width(k):
    """The SIMD FwFM loops are instantiated for k padded to 4, 8 and 16 and run
    generically otherwise (beyond 16 without keeping sums in registers); rows of up to 12 entries over 9 fields give each
    row dozens of field pairs (AdaGrad steps them four at a time)."""
    rng = np.random.default_rng(k)
    model = ref.RefModel.random("fwfm", 40, 9, k, rng, scale=0.3)
    rows = [ref.make_row(r.fields, r.features, r.values.astype(np.float32))
            for r in ref.random_rows(rng, 60, 40, 9, max_nnz=12)]
    labels = rng.choice([-1.0, 1.0], size=len(rows))
    order = rng.permutation(len(rows))
    expected = model.copy()
    ref.train(expected, rows, labels, order=order, epochs=2, optimizer="adagrad", eta=0.1, lam=0.001)
    got, _ = run_kernel(model, rows, labels, order, 2, "adagrad", 0.1, 0.001, np.float32)
    np.testing.assert_allclose(got.factors, expected.factors, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.triu(got.field_weights), np.triu(expected.field_weights), rtol=1e-4, atol=1e-5)
    assert np.abs(np.triu(got.field_weights - model.field_weights)).max() > 1e-3


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fwfm_ignores_unknown_ids(dtype):
    """Entries whose feature or field is outside the model change neither the
    scores nor the training of FwFM (without normalization, where they would
    still count)."""
    model, rows, labels, order = make_problem("fwfm", seed=6, k=4, normalize=False)
    extra = [ref.make_row(np.append(r.fields, [0, model.n_fields + 2]),
                          np.append(r.features, [model.n_features + 5, 1]),
                          np.append(r.values, [1.5, 2.0]).astype(np.float32)) for r in rows]
    plain, _ = run_kernel(model, rows, labels, order, 2, "adagrad", 0.1, 0.001, dtype)
    more, _ = run_kernel(model, extra, labels, order, 2, "adagrad", 0.1, 0.001, dtype)
    np.testing.assert_array_equal(more.factors, plain.factors)
    np.testing.assert_array_equal(more.field_weights, plain.field_weights)
    B, L, F, R, kp = to_layout(model, "sgd", dtype)
    outs = []
    for rs in (rows, extra):
        batch = to_batch(rs, labels)
        out = np.empty(len(rs))
        _kernels.score_rows("fwfm", B.reshape(-1), L.reshape(-1), F.reshape(-1), R.reshape(-1),
                            model.n_features, model.n_fields, kp, 0, batch.indptr, batch.fields,
                            batch.features, batch.values, out, True, True, False, 1)
        outs.append(out)
    np.testing.assert_array_equal(outs[1], outs[0])
    np.testing.assert_allclose(outs[0], [ref.score(model, r) for r in rows], rtol=1e-5 if dtype == np.float32
                               else 1e-10, atol=1e-6 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("kind", ["lr", "fm", "ffm", "fwfm"])
@pytest.mark.parametrize("normalize", [True, False])
def test_scores_match_reference(kind, normalize):
    model, rows, labels, _ = make_problem(kind, seed=11, k=5, normalize=normalize)
    B, L, F, R, kp = to_layout(model, "sgd", np.float64)
    batch = to_batch(rows, labels)
    out = np.empty(len(rows))
    _kernels.score_rows(kind, B.reshape(-1), L.reshape(-1), F.reshape(-1), R.reshape(-1), model.n_features,
                        model.n_fields, kp, 0, batch.indptr, batch.fields, batch.features,
                        batch.values, out, True, True, normalize, 1)
    expected = [ref.score(model, r) for r in rows]
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-12)


def test_training_loss_is_sum_of_row_losses_before_update():
    model, rows, labels, order = make_problem("ffm", seed=5)
    expected = model.copy()
    losses = []
    for i in order:
        losses.append(ref.adagrad_step(expected, ref.init_adagrad_state(expected), rows[i], labels[i], 0.0, 0.0))
    _, total = run_kernel(model, rows, labels, order, 1, "adagrad", 1e-300, 0.0, np.float64)
    np.testing.assert_allclose(total, sum(losses), rtol=1e-10)


def test_unknown_ids_are_ignored_when_scoring():
    model, rows, labels, _ = make_problem("ffm", seed=2, k=4, normalize=False)
    B, L, F, R, kp = to_layout(model, "sgd", np.float64)
    row = rows[0]
    extra = ref.make_row(
        np.append(row.fields, [0, model.n_fields + 3]),
        np.append(row.features, [model.n_features + 10, 1]),
        np.append(row.values, [1.0, 1.0]),
    )
    batch = to_batch([extra], [1.0])
    out = np.empty(1)
    _kernels.score_rows("ffm", B.reshape(-1), L.reshape(-1), F.reshape(-1), R.reshape(-1), model.n_features,
                        model.n_fields, kp, 0, batch.indptr, batch.fields, batch.features,
                        batch.values, out, True, True, False, 1)
    np.testing.assert_allclose(out[0], ref.score(model, row), rtol=1e-10)


def test_one_thread_is_reproducible():
    model, rows, labels, order = make_problem("ffm", seed=9, k=4)
    one, _ = run_kernel(model, rows, labels, order, 2, "adagrad", 0.1, 0.0, np.float32)
    again, _ = run_kernel(model, rows, labels, order, 2, "adagrad", 0.1, 0.0, np.float32)
    np.testing.assert_array_equal(one.factors, again.factors)


@pytest.mark.parametrize("kind", ["lr", "fm", "ffm", "fwfm"])
def test_scoring_does_not_depend_on_threads(kind):
    model, rows, labels, _ = make_problem(kind, seed=4, k=4)
    B, L, F, R, kp = to_layout(model, "sgd", np.float32)
    batch = to_batch(rows * 20, np.tile(labels, 20))
    outs = []
    for threads in (1, 2, 3):
        out = np.empty(batch.n_rows)
        _kernels.score_rows(kind, B.reshape(-1), L.reshape(-1), F.reshape(-1), R.reshape(-1), model.n_features,
                            model.n_fields, kp, 0, batch.indptr, batch.fields, batch.features,
                            batch.values, out, True, True, True, threads)
        outs.append(out)
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])


@pytest.mark.parametrize("kind", ["fm", "ffm"])
def test_fast_adagrad_step_is_within_the_rsqrt_estimate_error(kind):
    """Without exact_adagrad, float32 AdaGrad divides by the CPU's 1/sqrt
    estimate (relative error <= 1.5 * 2**-12, as libffm): one step's change of
    every weight is within that error of the exact step's."""
    model, rows, labels, order = make_problem(kind, seed=8, k=8)
    exact, _ = run_kernel(model, rows[:1], labels[:1], [0], 1, "adagrad", 0.1, 0.001, np.float32, exact=True)
    fast, _ = run_kernel(model, rows[:1], labels[:1], [0], 1, "adagrad", 0.1, 0.001, np.float32, exact=False)
    d_exact = exact.factors - model.factors.astype(np.float32)
    d_fast = fast.factors - model.factors.astype(np.float32)
    moved = np.abs(d_exact) > 1e-4
    assert moved.sum() > 10
    rel = np.abs(d_fast[moved] - d_exact[moved]) / np.abs(d_exact[moved])
    # the estimate's bound, plus float32 rounding of w itself relative to the step
    assert rel.max() <= 1.5 * 2.0**-12 + 1e-4, rel.max()
    assert rel.max() > 0  # the fast path really is the estimate, not the exact step


def test_fwfm_with_unit_field_weights_scores_like_fm():
    model, rows, labels, _ = make_problem("fwfm", seed=12, k=4)
    model.field_weights[:] = 1.0
    fm = ref.RefModel("fm", model.n_features, model.n_fields, model.k, model.bias, model.linear,
                      model.factors, None, model.use_bias, model.use_linear, model.normalize)
    outs = {}
    for m in (model, fm):
        B, L, F, R, kp = to_layout(m, "sgd", np.float64)
        batch = to_batch(rows, labels)
        out = np.empty(len(rows))
        _kernels.score_rows(m.kind, B.reshape(-1), L.reshape(-1), F.reshape(-1), R.reshape(-1),
                            m.n_features, m.n_fields, kp, 0, batch.indptr, batch.fields,
                            batch.features, batch.values, out, True, True, True, 1)
        outs[m.kind] = out
    np.testing.assert_allclose(outs["fwfm"], outs["fm"], rtol=1e-12)
