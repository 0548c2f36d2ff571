"""The compiled kernels agree with the NumPy reference (tests/reference.py)."""

import numpy as np
import pytest

import reference as ref
from kernels_compat import score_rows, train_epoch
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
        loss, wsum, bad, first = train_epoch(
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
        score_rows("fwfm", B.reshape(-1), L.reshape(-1), F.reshape(-1), R.reshape(-1),
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
    score_rows(kind, B.reshape(-1), L.reshape(-1), F.reshape(-1), R.reshape(-1), model.n_features,
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
    score_rows("ffm", B.reshape(-1), L.reshape(-1), F.reshape(-1), R.reshape(-1), model.n_features,
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
        score_rows(kind, B.reshape(-1), L.reshape(-1), F.reshape(-1), R.reshape(-1), model.n_features,
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
        score_rows(m.kind, B.reshape(-1), L.reshape(-1), F.reshape(-1), R.reshape(-1),
                            m.n_features, m.n_fields, kp, 0, batch.indptr, batch.fields,
                            batch.features, batch.values, out, True, True, True, 1)
        outs[m.kind] = out
    np.testing.assert_allclose(outs["fwfm"], outs["fm"], rtol=1e-12)


# Layout, Trainer and score_rows: the compiled core's interface.

def slices(seed, n_slices=3, n_rows=120, n_features=30, n_fields=5, task="binary"):
    """Random CSR slices (some ids and fields outside the model) with labels and weights."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_slices):
        nnz = rng.integers(1, 8, n_rows)
        indptr = np.concatenate([[0], np.cumsum(nnz)]).astype(np.int64)
        total = int(indptr[-1])
        labels = (rng.random(n_rows) < 0.4) if task == "binary" else rng.normal(size=n_rows)
        out.append((indptr, rng.integers(0, n_fields + 1, total).astype(np.int32),
                    rng.integers(0, n_features + 2, total).astype(np.int32),
                    (rng.random(total) + 0.1).astype(np.float32), labels.astype(np.float32),
                    (rng.random(n_rows) + 0.5).astype(np.float32),
                    rng.permutation(n_rows).astype(np.int64)))
    return out


def fresh_arrays(layout, optimizer, dtype, seed=3):
    """B, L, F, R for `layout`, weights random, optimizer state at its start value."""
    rng = np.random.default_rng(seed)
    init = 1.0 if optimizer in ("adagrad", "rowwise-adagrad") else 0.0
    arrays = [np.full(size, init, dtype) for size in layout.sizes]
    for a in arrays:
        a[:: max(1, layout.lstride)] = 0
    B, L, F, R = arrays
    L[:: layout.lstride] = rng.normal(0, 0.1, layout.n_classes * layout.n_features)
    if layout.kind != "lr":
        blocks = F.reshape(-1, layout.fstride)
        blocks[:, : layout.kp] = rng.random((blocks.shape[0], layout.kp)) * 0.3
        if optimizer in ("adagrad", "rowwise-adagrad"):
            blocks[:, layout.kp :] = 1
    if layout.kind == "fwfm":
        R[:: layout.lstride] = rng.random(len(R) // layout.lstride)
    return B, L, F, R


HYPER = dict(eta=0.05, k=6, l2_bias=1e-4, l2_linear=1e-3, l2_factors=2e-3, schedule="linear",
             warmup=5, total_steps=2000)


@pytest.mark.parametrize("kind,optimizer,batch_size",
                         [("lr", "ftrl", 1), ("fm", "adam", 4), ("ffm", "adagrad", 1), ("ffm", "sgd", 4),
                          ("fwfm", "rowwise-adagrad", 1), ("fwfm", "adagrad", 4)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_trainer_over_slices_equals_a_trainer_per_slice(kind, optimizer, batch_size, dtype):
    layout = _kernels.Layout(kind, "binary", 1, 30, 5, 8, _kernels.n_state(optimizer),
                             row_state=optimizer == "rowwise-adagrad")
    hyper = dict(HYPER, optimizer=optimizer, batch_size=batch_size)
    kept, fresh = fresh_arrays(layout, optimizer, dtype), fresh_arrays(layout, optimizer, dtype)
    trainer = _kernels.Trainer(layout, *kept, hyper)
    step = 0
    for i, (indptr, fields, features, values, labels, weights, order) in enumerate(slices(4)):
        w = weights if i != 1 else np.zeros(0, np.float32)
        a = trainer.train(indptr, fields, features, values, labels, w, order, step)
        b = _kernels.Trainer(layout, *fresh, hyper).train(indptr, fields, features, values, labels,
                                                          w, order, step)
        assert a == b and a[3] == -1
        step += -(-len(order) // batch_size)
    for x, y in zip(kept, fresh):
        assert x.tobytes() == y.tobytes()
    assert kept[2].tobytes() != fresh_arrays(layout, optimizer, dtype)[2].tobytes() or kind == "lr"


@pytest.mark.parametrize("kind,k,optimizer,batch_size,dtype,half,expected", [
    ("ffm", 16, "adagrad", 1, np.float32, False, 32),      # 64-byte weights, then a line of state
    ("ffm", 32, "adagrad", 1, np.float32, False, 64),
    ("ffm", 16, "adam", 1, np.float32, False, 48),
    ("ffm", 8, "adam", 1, np.float32, False, 24),          # 96-byte blocks
    ("ffm", 16, "rowwise-adagrad", 1, np.float32, False, 17),
    ("ffm", 8, "adagrad", 1, np.float32, False, 0),        # weights and state in one line
    ("ffm", 4, "adam", 1, np.float32, False, 0),
    ("ffm", 16, "sgd", 1, np.float32, False, 0),           # no state
    ("ffm", 16, "adagrad", 4, np.float32, False, 0),       # mini-batches step later
    ("ffm", 16, "adagrad", 1, np.float64, False, 0),       # the float64 loops
    ("ffm", 16, "adagrad", 1, np.float32, True, 0),        # float16 storage
    ("fwfm", 16, "adagrad", 1, np.float32, False, 0),
    ("fm", 16, "adagrad", 1, np.float32, False, 0),
])
def test_scoring_a_row_for_training_prefetches_the_state_lines_its_update_writes(
        kind, k, optimizer, batch_size, dtype, half, expected):
    layout = _kernels.Layout(kind, "binary", 1, 30, 5, k, _kernels.n_state(optimizer), half=half,
                             row_state=optimizer == "rowwise-adagrad")
    arrays = [np.zeros(size, dtype) for size in layout.sizes]
    trainer = _kernels.Trainer(layout, *arrays, dict(HYPER, optimizer=optimizer, batch_size=batch_size))
    assert trainer.state_prefetch == expected
    if expected:
        assert expected == layout.fstride and layout.fstride * 4 > 64


@pytest.mark.parametrize("kind,k,optimizer,dtype,half,expected", [
    ("ffm", 4, "adagrad", np.float32, False, 5 * 8 * 4),     # a feature's 5 blocks of (w, G)
    ("ffm", 16, "adam", np.float32, False, 5 * 48 * 4),
    ("ffm", 4, "adagrad", np.float64, False, 5 * 8 * 8),
    ("ffm", 8, "adagrad", np.float32, True, 5 * 12 * 4),     # float16 weights, float32 state
    ("fm", 8, "sgd", np.float32, False, 8 * 4),              # one block a feature
    ("fwfm", 8, "rowwise-adagrad", np.float32, False, 9 * 4),   # 8 weights, 1 accumulator
    ("lr", 4, "adagrad", np.float32, False, 0),              # no factors
])
def test_training_prefetches_the_next_rows_factor_rows(kind, k, optimizer, dtype, half, expected):
    layout = _kernels.Layout(kind, "binary", 1, 30, 5, k, _kernels.n_state(optimizer), half=half,
                             row_state=optimizer == "rowwise-adagrad")
    arrays = [np.zeros(size, dtype) for size in layout.sizes]
    trainer = _kernels.Trainer(layout, *arrays, dict(HYPER, optimizer=optimizer))
    assert trainer.row_prefetch == expected
    if kind != "lr":
        assert expected == (5 if kind == "ffm" else 1) * layout.fstride * np.dtype(dtype).itemsize


def test_total_steps_can_change_between_slices():
    layout = _kernels.Layout("fm", "binary", 1, 30, 5, 8, 0)
    hyper = dict(HYPER, optimizer="sgd")
    data = slices(5, n_slices=2)
    runs = []
    for change in (False, True):
        arrays = fresh_arrays(layout, "sgd", np.float64)
        trainer = _kernels.Trainer(layout, *arrays, hyper)
        assert trainer.total_steps == 2000
        trainer.train(*data[0], 0)
        if change:   # a resumed run that is to last longer
            trainer.total_steps = 500
            assert trainer.total_steps == 500
        trainer.train(*data[1], 120)
        runs.append(arrays)
    # the changed length is what a trainer built with it would give
    arrays = fresh_arrays(layout, "sgd", np.float64)
    _kernels.Trainer(layout, *arrays, hyper).train(*data[0], 0)
    _kernels.Trainer(layout, *arrays, dict(hyper, total_steps=500)).train(*data[1], 120)
    assert runs[1][2].tobytes() == arrays[2].tobytes()
    assert runs[0][2].tobytes() != arrays[2].tobytes()


def test_trainer_multiclass_and_regression_match_the_previous_entry_point():
    for task, C, optimizer in (("multiclass", 3, "adagrad"), ("regression", 1, "adam")):
        layout = _kernels.Layout("ffm", task, C, 30, 5, 8, _kernels.n_state(optimizer))
        a, b = fresh_arrays(layout, optimizer, np.float32), fresh_arrays(layout, optimizer, np.float32)
        indptr, fields, features, values, labels, weights, order = slices(6, 1, task="regression")[0]
        if task == "multiclass":
            labels = (np.abs(labels * 10) % C).astype(np.int32).astype(np.float32)
        hyper = dict(HYPER, optimizer=optimizer, label_smoothing=0.1 if C > 1 else 0)
        got = _kernels.Trainer(layout, *a, hyper).train(indptr, fields, features, values, labels,
                                                        weights, order, 7)
        rest = {k: v for k, v in hyper.items() if k not in ("optimizer", "eta")}
        want = train_epoch("ffm", optimizer, task, *b, 30, 5, 8, C, indptr, fields, features, values,
                           labels, weights, order, hyper["eta"], step0=7, **rest)
        assert got == want
        assert all(x.tobytes() == y.tobytes() for x, y in zip(a, b))


def test_layout_sizes_and_strides():
    ffm = _kernels.Layout("ffm", "binary", 1, 10, 3, 8, 2)
    assert (ffm.fstride, ffm.lstride, ffm.n_blocks) == (24, 3, 30)
    assert ffm.sizes == ffm.class_sizes == (3, 30, 720, 0)
    fwfm = _kernels.Layout("fwfm", "multiclass", 2, 10, 3, 4, 1, row_state=True)
    assert (fwfm.fstride, fwfm.lstride) == (5, 2)
    assert fwfm.class_sizes == (2, 20, 50, 18) and fwfm.sizes == (4, 40, 100, 36)
    half = _kernels.Layout("ffm", "binary", 1, 10, 3, 8, 1, half=True)
    assert half.fstride == 4 + 8 and half.half
    lr = _kernels.Layout("lr", "regression", 1, 10, 0, 4, use_bias=False)
    assert lr.sizes == (1, 10, 0, 0) and not lr.use_bias and lr.n_state == 0
    for bad in [("svm", "binary", 1), ("fm", "ranking", 1), ("fm", "binary", 2)]:
        with pytest.raises(ValueError):
            _kernels.Layout(*bad, 10, 3, 8)
    with pytest.raises(ValueError, match="multiple of 4"):
        _kernels.Layout("fm", "binary", 1, 10, 3, 6)


def test_trainer_checks_everything_when_built():
    layout = _kernels.Layout("ffm", "binary", 1, 30, 5, 8, 1)
    arrays = fresh_arrays(layout, "adagrad", np.float32)
    hyper = dict(optimizer="adagrad", eta=0.1)
    _kernels.Trainer(layout, *arrays, hyper)
    with pytest.raises(ValueError, match="unknown hyperparameters: bogus, step_size"):
        _kernels.Trainer(layout, *arrays, dict(hyper, bogus=1, step_size=2))
    with pytest.raises(ValueError, match="missing: eta"):
        _kernels.Trainer(layout, *arrays, dict(optimizer="adagrad"))
    with pytest.raises(ValueError, match="does not fit adam"):
        _kernels.Trainer(layout, *arrays, dict(hyper, optimizer="adam"))
    with pytest.raises(ValueError, match="unknown optimizer"):
        _kernels.Trainer(layout, *arrays, dict(hyper, optimizer="lbfgs"))
    with pytest.raises(ValueError, match="unknown schedule"):
        _kernels.Trainer(layout, *arrays, dict(hyper, schedule="step"))
    with pytest.raises(ValueError, match="batch_size"):
        _kernels.Trainer(layout, *arrays, dict(hyper, batch_size=0))
    with pytest.raises(ValueError, match="one dtype"):
        _kernels.Trainer(layout, arrays[0].astype(np.float64), *arrays[1:], hyper)
    with pytest.raises(ValueError, match="factor array too small"):
        _kernels.Trainer(layout, *arrays[:2], arrays[2][:-1], arrays[3], hyper)
    frozen = arrays[2].copy()
    frozen.flags.writeable = False
    with pytest.raises(ValueError):
        _kernels.Trainer(layout, *arrays[:2], frozen, arrays[3], hyper)
    rowwise = _kernels.Layout("fm", "binary", 1, 30, 5, 8, 1, row_state=True)
    with pytest.raises(ValueError, match="unpadded k"):
        _kernels.Trainer(rowwise, *fresh_arrays(rowwise, "rowwise-adagrad", np.float32),
                         dict(optimizer="rowwise-adagrad", eta=0.1))
    half = _kernels.Layout("ffm", "binary", 1, 30, 5, 8, 1, half=True)
    with pytest.raises(ValueError, match="float16"):
        _kernels.Trainer(half, *fresh_arrays(half, "adagrad", np.float32), dict(hyper, batch_size=2))
    with pytest.raises(ValueError, match="hot features must be distinct"):
        _kernels.Trainer(layout, *arrays, hyper, 2, np.array([1, 1], np.int32))
    trainer = _kernels.Trainer(layout, *arrays, hyper)
    indptr, fields, features, values, labels, weights, order = slices(1, 1)[0]
    with pytest.raises(ValueError, match="shorter than the rows"):
        trainer.train(indptr, fields, features, values, labels[:-1], weights, order, 0)


def test_score_rows_reads_read_only_models_and_checks_them():
    layout = _kernels.Layout("fwfm", "binary", 1, 30, 5, 8, 0)
    arrays = fresh_arrays(layout, "sgd", np.float32)
    indptr, fields, features, values = slices(2, 1)[0][:4]
    out = np.zeros(len(indptr) - 1)
    want = score_rows("fwfm", *arrays, 30, 5, 8, 0, indptr, fields, features, values, out.copy())
    for a in arrays:
        a.flags.writeable = False
    got = _kernels.score_rows(layout, *arrays, indptr, fields, features, values, out, 2)
    assert got.tobytes() == want.tobytes() and np.abs(got).sum() > 0
    with pytest.raises(ValueError, match="one dtype"):
        _kernels.score_rows(layout, *arrays[:3], arrays[3].astype(np.float64), indptr, fields,
                            features, values, out)
    with pytest.raises(ValueError, match="output array too small"):
        _kernels.score_rows(layout, *arrays, indptr, fields, features, values, out[:-1])


# Shuffled orders are copied side by side first (Trainer.gathered): the same
# rows in the same order, so the same results as training them where they lie.

def _gather_case(seed, n_rows=300, compact=False, with_values=True, with_weights=True, empty_rows=False):
    indptr, fields, features, values, labels, weights, order = slices(seed, 1, n_rows=n_rows)[0]
    if empty_rows:      # every fifth row has no entries
        lengths = np.diff(indptr)
        lengths[::5] = 0
        keep = np.concatenate([np.arange(a, a + m) for a, m in zip(indptr[:-1], lengths)]).astype(np.int64)
        fields, features, values = fields[keep], features[keep], values[keep]
        indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    if compact:
        fields = fields.astype(np.uint8)
    if not with_values:
        values = np.zeros(0, np.float32)
    if not with_weights:
        weights = np.zeros(0, np.float32)
    return indptr, fields, features, values, labels, weights, order


@pytest.mark.parametrize("kind,optimizer,batch_size,dtype", [
    ("ffm", "adagrad", 1, np.float32), ("ffm", "adam", 4, np.float64), ("fm", "sgd", 1, np.float32),
    ("fwfm", "rowwise-adagrad", 3, np.float32), ("lr", "ftrl", 1, np.float64), ("fmfm", "adagrad", 1, np.float32)])
@pytest.mark.parametrize("form", [dict(), dict(compact=True, with_values=False), dict(with_weights=False),
                                  dict(empty_rows=True, compact=True)])
def test_a_shuffled_order_trains_as_its_rows_where_they_lie(kind, optimizer, batch_size, dtype, form):
    layout = _kernels.Layout(kind, "binary", 1, 30, 5, 8, _kernels.n_state(optimizer),
                             row_state=optimizer == "rowwise-adagrad")
    hyper = dict(HYPER, optimizer=optimizer, batch_size=batch_size)
    data = _gather_case(11, **form)
    copied, in_place = fresh_arrays(layout, optimizer, dtype), fresh_arrays(layout, optimizer, dtype)
    a = _kernels.Trainer(layout, *copied, hyper).train(*data, 5)
    b = _kernels.Trainer(layout, *in_place, hyper).train_rows(*data, 5)
    assert a == b and a[3] == -1
    assert all(x.tobytes() == y.tobytes() for x, y in zip(copied, in_place))
    assert copied[1].tobytes() != fresh_arrays(layout, optimizer, dtype)[1].tobytes()


@pytest.mark.parametrize("batch_size", [1, 4])
def test_a_long_order_is_copied_a_piece_at_a_time(monkeypatch, batch_size):
    """Pieces of at most GATHER_ROWS rows and GATHER_ENTRIES entries, whole
    batches, the schedule's steps counted on: the parameters of one pass."""
    monkeypatch.setattr(_kernels, "GATHER_ROWS", 70)
    monkeypatch.setattr(_kernels, "GATHER_ENTRIES", 90)     # about 22 rows of up to 7 entries
    layout = _kernels.Layout("ffm", "binary", 1, 30, 5, 4, _kernels.n_state("adagrad"))
    hyper = dict(HYPER, optimizer="adagrad", batch_size=batch_size)
    data = _gather_case(12, n_rows=500)
    kept = fresh_arrays(layout, "adagrad", np.float32)
    trainer = _kernels.Trainer(layout, *kept, hyper)
    for step in (0, 125):       # twice: the trainer's arrays are reused
        in_place = [a.copy() for a in kept]
        a = trainer.train(*data, step)
        b = _kernels.Trainer(layout, *in_place, hyper).train_rows(*data, step)
        assert a[2:] == b[2:] == (0, -1)
        assert a[0] == pytest.approx(b[0], rel=1e-12) and a[1] == pytest.approx(b[1], rel=1e-12)
        assert all(x.tobytes() == y.tobytes() for x, y in zip(kept, in_place))


@pytest.mark.parametrize("skip", [False, True])
def test_a_row_that_stops_a_copied_pass_is_found_in_the_order(monkeypatch, skip):
    monkeypatch.setattr(_kernels, "GATHER_ROWS", 64)
    layout = _kernels.Layout("fm", "binary", 1, 30, 5, 4, 0)
    hyper = dict(HYPER, optimizer="sgd", skip_nonfinite=skip)
    indptr, fields, features, values, labels, weights, order = _gather_case(13, n_rows=400)
    values[indptr[order[201]]] = np.inf      # in the fourth piece
    results = []
    for how in ("train", "train_rows"):
        arrays = fresh_arrays(layout, "sgd", np.float64)
        trainer = _kernels.Trainer(layout, *arrays, hyper)
        results.append((getattr(trainer, how)(indptr, fields, features, values, labels, weights, order, 0), arrays))
    (a, copied), (b, in_place) = results
    assert a[2:] == b[2:] == ((1, -1) if skip else (0, 201))
    assert all(x.tobytes() == y.tobytes() for x, y in zip(copied, in_place))


def test_gather_copies_rows_in_order_and_checks_what_it_is_given():
    indptr, fields, features, values, labels, weights, _ = _gather_case(14, n_rows=40, empty_rows=True)
    order = np.array([7, 0, 5, 5, 39, 12], np.int64)      # a row twice, empty rows (0, 5)
    ip, src = np.empty(len(order) + 1, np.int64), np.empty(len(order), np.int64)
    nnz = _kernels.gather_offsets(indptr, order, ip, src)
    rows = [np.arange(indptr[r], indptr[r + 1]) for r in order]
    assert nnz == sum(map(len, rows)) and list(ip) == [0, *np.cumsum(list(map(len, rows)))]
    out = (np.empty(nnz, np.int32), np.empty(nnz, np.int32), np.empty(nnz, np.float32),
           np.empty(len(order), np.float32), np.empty(len(order), np.float32))
    _kernels.gather_entries(order, src, ip, fields, features, values, labels, weights, *out, 2)
    idx = np.concatenate(rows)
    for got, want in zip(out, (fields[idx], features[idx], values[idx], labels[order], weights[order])):
        assert got.tobytes() == want.tobytes()
    with pytest.raises(IndexError, match="row 40"):
        _kernels.gather_offsets(indptr, np.array([3, 40], np.int64), ip, src)
    with pytest.raises(ValueError, match="do not fit"):      # uint8 fields into int32
        _kernels.gather_entries(order, src, ip, fields.astype(np.uint8), features, values, labels,
                                weights, *out, 1)
    with pytest.raises(ValueError, match="do not fit"):      # no room for the values
        _kernels.gather_entries(order, src, ip, fields, features, values, labels, weights,
                                out[0], out[1], out[2][:0], out[3], out[4], 1)
    # rows without entries only: labels and weights all the same
    empty = np.array([0, 5, 10], np.int64)
    assert _kernels.gather_offsets(indptr, empty, ip, src) == 0
    lab, wt = np.empty(3, np.float32), np.empty(3, np.float32)
    _kernels.gather_entries(empty, src, ip, fields, features, values, labels, weights,
                            out[0][:0], out[1][:0], out[2][:0], lab, wt, 1)
    assert lab.tobytes() == labels[empty].tobytes() and wt.tobytes() == weights[empty].tobytes()
