"""Self-checks of the NumPy reference oracle in tests/reference.py."""

import itertools
import math
import os
import sys
import warnings

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import reference as ref  # noqa: E402

N_FEATURES = 20
N_FIELDS = 4
K = 3
EPS = 1e-6
RTOL = 1e-5
ATOL = 1e-9

FLAG_COMBOS = list(itertools.product(ref.KINDS, [False, True], [False, True], [False, True]))


def _gradient_rows():
    rng = np.random.default_rng(1234)
    rows = ref.random_rows(rng, 3, N_FEATURES, N_FIELDS, max_nnz=5)
    # single feature
    rows.append(ref.make_row([2], [7], [1.7]))
    # repeated features: same feature in the same field and in another field
    rows.append(ref.make_row([0, 1, 0, 3, 2], [3, 7, 3, 5, 7], [1.0, 0.5, 1.5, 1.0, 0.25]))
    # empty row
    rows.append(ref.make_row([], [], []))
    return rows


def _labels(n):
    return [1 if i % 2 == 0 else -1 for i in range(n)]


def _parameter_arrays(model):
    """(name, array) for every array-valued parameter of the model."""
    arrays = [("linear", model.linear)]
    if model.factors is not None:
        arrays.append(("factors", model.factors))
    if model.field_weights is not None:
        arrays.append(("field_weights", model.field_weights))
    return arrays


def _indices_to_check(name, array, row, rng):
    """Every entry belonging to a feature of the row, plus a few others."""
    if name == "field_weights":
        return list(np.ndindex(array.shape))
    features = set(int(j) for j in row.features)
    features.update(int(j) for j in rng.choice(N_FEATURES, size=2, replace=False))
    indices = []
    for j in sorted(features):
        if array.ndim == 1:
            indices.append((j,))
        else:
            indices.extend((j,) + rest for rest in np.ndindex(array.shape[1:]))
    return indices


def _loss(model, row, y):
    return ref.logistic_loss(y, ref.score(model, row))


def _central_difference(model, row, y, get, set_):
    original = get()
    set_(original + EPS)
    plus = _loss(model, row, y)
    set_(original - EPS)
    minus = _loss(model, row, y)
    set_(original)
    return (plus - minus) / (2 * EPS)


@pytest.mark.parametrize("kind,normalize,use_bias,use_linear", FLAG_COMBOS)
def test_gradients_match_finite_differences(kind, normalize, use_bias, use_linear):
    rng = np.random.default_rng(7)
    model = ref.RefModel.random(kind, N_FEATURES, N_FIELDS, K, rng, scale=0.5,
                                use_bias=use_bias, use_linear=use_linear,
                                normalize=normalize)
    rows = _gradient_rows()
    for row, y in zip(rows, _labels(len(rows))):
        grads = ref.gradients(model, row, y)

        def set_bias(value):
            model.bias = value

        fd_bias = _central_difference(model, row, y, lambda: model.bias, set_bias)
        np.testing.assert_allclose(grads["bias"], fd_bias, rtol=RTOL, atol=ATOL)
        if not use_bias:
            assert grads["bias"] == 0.0

        for name, array in _parameter_arrays(model):
            analytic = grads[name]
            assert analytic.shape == array.shape
            for index in _indices_to_check(name, array, row, rng):
                def get(index=index, array=array):
                    return array[index]

                def set_(value, index=index, array=array):
                    array[index] = value

                fd = _central_difference(model, row, y, get, set_)
                np.testing.assert_allclose(analytic[index], fd, rtol=RTOL, atol=ATOL,
                                           err_msg=f"{name}{index}")

        if not use_linear:
            assert not grads["linear"].any()
        if kind == "lr":
            assert grads["factors"] is None and grads["field_weights"] is None
        elif kind != "fwfm":
            assert grads["field_weights"] is None


def test_single_feature_row_has_no_pair_gradient():
    rng = np.random.default_rng(3)
    row = ref.make_row([1], [4], [2.0])
    for kind in ("fm", "ffm", "fwfm"):
        model = ref.RefModel.random(kind, N_FEATURES, N_FIELDS, K, rng)
        grads = ref.gradients(model, row, 1)
        assert not grads["factors"].any()
        # normalised single value is exactly 1
        t = ref.score(model, row)
        assert t == pytest.approx(model.bias + model.linear[4])


def test_normalization():
    model = ref.RefModel.zeros("lr", 5, 2, 1, normalize=True)
    xt = ref.normalized_values(model, ref.make_row([0, 1], [0, 1], [3.0, 4.0]))
    np.testing.assert_allclose(xt, [0.6, 0.8])
    model.normalize = False
    xt = ref.normalized_values(model, ref.make_row([0, 1], [0, 1], [3.0, 4.0]))
    np.testing.assert_allclose(xt, [3.0, 4.0])
    model.normalize = True
    xt = ref.normalized_values(model, ref.make_row([0], [0], [0.0]))
    np.testing.assert_allclose(xt, [0.0])


def test_special_cases_agree_with_fm():
    rng = np.random.default_rng(11)
    fm = ref.RefModel.random("fm", N_FEATURES, N_FIELDS, K, rng, scale=0.5)
    fwfm = ref.RefModel.random("fwfm", N_FEATURES, N_FIELDS, K, rng)
    fwfm.bias, fwfm.linear, fwfm.factors = fm.bias, fm.linear.copy(), fm.factors.copy()
    fwfm.field_weights[:] = 1.0
    ffm = ref.RefModel.random("ffm", N_FEATURES, 1, K, rng)
    ffm.bias, ffm.linear = fm.bias, fm.linear.copy()
    ffm.factors[:, 0, :] = fm.factors
    for row in ref.random_rows(rng, 10, N_FEATURES, N_FIELDS, max_nnz=6):
        single_field = ref.make_row(np.zeros_like(row.fields), row.features, row.values)
        assert ref.score(fwfm, row) == pytest.approx(ref.score(fm, row), rel=1e-12)
        assert ref.score(ffm, single_field) == pytest.approx(ref.score(fm, row), rel=1e-12)


def test_fm_score_matches_square_trick():
    rng = np.random.default_rng(5)
    model = ref.RefModel.random("fm", N_FEATURES, N_FIELDS, K, rng, scale=0.5)
    for row in ref.random_rows(rng, 10, N_FEATURES, N_FIELDS, max_nnz=6, distinct_features=False):
        xt = ref.normalized_values(model, row)
        Vx = model.factors[row.features] * xt[:, None]
        pairs = 0.5 * (np.sum(Vx.sum(axis=0) ** 2) - np.sum(Vx ** 2))
        expected = model.bias + np.dot(model.linear[row.features], xt) + pairs
        assert ref.score(model, row) == pytest.approx(expected, rel=1e-12, abs=1e-14)


def test_stable_loss_and_derivative_for_huge_scores():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(over="raise", invalid="raise", divide="raise"):
            for t in (1e4, 1e300, np.finfo(float).max):
                assert ref.logistic_loss(1, t) == 0.0
                assert ref.logistic_loss(-1, -t) == 0.0
                assert ref.logistic_loss(1, -t) == pytest.approx(t, rel=1e-15)
                assert ref.logistic_loss(-1, t) == pytest.approx(t, rel=1e-15)
                assert ref.dloss(1, t) == 0.0
                assert ref.dloss(-1, -t) == 0.0
                assert ref.dloss(1, -t) == -1.0
                assert ref.dloss(-1, t) == 1.0
            assert ref.logistic_loss(1, 0.0) == pytest.approx(math.log(2.0))
            assert ref.dloss(1, 0.0) == pytest.approx(-0.5)
            assert ref.dloss(-1, 0.0) == pytest.approx(0.5)
            # moderately large |t|: asymptote log(1+e^-a) ~ e^-a
            assert ref.logistic_loss(1, 50.0) == pytest.approx(math.exp(-50.0), rel=1e-12)
            assert ref.dloss(1, 50.0) == pytest.approx(-math.exp(-50.0), rel=1e-12)


@pytest.mark.parametrize("t", [-30.0, -3.0, -0.2, 0.0, 0.7, 4.0, 30.0])
@pytest.mark.parametrize("y", [-1, 1])
def test_dloss_is_derivative_of_loss(y, t):
    h = 1e-6
    fd = (ref.logistic_loss(y, t + h) - ref.logistic_loss(y, t - h)) / (2 * h)
    assert ref.dloss(y, t) == pytest.approx(fd, rel=1e-6, abs=1e-12)
    assert ref.dloss(y, t) == pytest.approx(-y / (1.0 + math.exp(y * t)), rel=1e-12)


def test_predict_is_sigmoid_of_score():
    rng = np.random.default_rng(9)
    model = ref.RefModel.random("ffm", N_FEATURES, N_FIELDS, K, rng, scale=0.8)
    rows = ref.random_rows(rng, 8, N_FEATURES, N_FIELDS, max_nnz=5)
    p = ref.predict(model, rows)
    expected = [1.0 / (1.0 + math.exp(-ref.score(model, r))) for r in rows]
    np.testing.assert_allclose(p, expected, rtol=1e-12)
    assert ref.sigmoid(-1e4) == 0.0 and ref.sigmoid(1e4) == 1.0


def _distinct_rows(rng, n_rows, max_nnz):
    """Rows whose features are distinct and whose fields are distinct too."""
    rows = []
    for _ in range(n_rows):
        nnz = int(rng.integers(1, max_nnz + 1))
        features = rng.choice(N_FEATURES, size=nnz, replace=False)
        fields = rng.choice(N_FIELDS, size=nnz, replace=False)
        values = rng.uniform(0.1, 2.0, size=nnz)
        rows.append(ref.make_row(fields, features, values))
    return rows


def _l2_touched(model, row):
    """How many times each array entry receives the L2 term in one step."""
    touched = {"linear": np.zeros_like(model.linear)}
    if model.use_linear:
        for j in row.features:
            touched["linear"][j] += 1
    if model.kind in ("fm", "fwfm"):
        touched["factors"] = np.zeros_like(model.factors)
        for j in row.features:
            touched["factors"][j] += 1
    elif model.kind == "ffm":
        touched["factors"] = np.zeros_like(model.factors)
        n = len(row.features)
        for i in range(n):
            for l in range(n):
                if i != l:
                    touched["factors"][row.features[i], row.fields[l]] += 1
    return touched


@pytest.mark.parametrize("kind,normalize,use_bias,use_linear", FLAG_COMBOS)
@pytest.mark.parametrize("lam", [0.0, 0.03])
def test_sgd_step_is_gradient_step_for_distinct_features(kind, normalize, use_bias, use_linear, lam):
    rng = np.random.default_rng(21)
    eta = 0.3
    rows = _distinct_rows(rng, 4, max_nnz=N_FIELDS)
    if kind != "ffm":
        # for FM/FwFM distinct features suffice; fields may repeat
        rows += ref.random_rows(rng, 3, N_FEATURES, N_FIELDS, max_nnz=6)
    for row, y in zip(rows, _labels(len(rows))):
        # a fresh model per row: the FwFM identity needs a symmetric R, and the
        # R update (at R[f_i, f_l] only) does not keep it symmetric
        model = ref.RefModel.random(kind, N_FEATURES, N_FIELDS, K, rng, scale=0.5,
                                    use_bias=use_bias, use_linear=use_linear,
                                    normalize=normalize)
        before = model.copy()
        grads = ref.gradients(before, row, y)
        touched = _l2_touched(before, row)
        ref.sgd_step(model, row, y, eta, lam)

        expected_bias = before.bias - eta * grads["bias"]
        assert model.bias == pytest.approx(expected_bias, rel=1e-12, abs=1e-15)
        expected_linear = before.linear - eta * (grads["linear"] + lam * touched["linear"] * before.linear)
        np.testing.assert_allclose(model.linear, expected_linear, rtol=1e-12, atol=1e-15)
        if kind != "lr":
            expected = before.factors - eta * (grads["factors"] + lam * touched["factors"] * before.factors)
            np.testing.assert_allclose(model.factors, expected, rtol=1e-12, atol=1e-15)
        if kind == "fwfm":
            expected = before.field_weights - eta * grads["field_weights"]
            np.testing.assert_allclose(model.field_weights, expected, rtol=1e-12, atol=1e-15)


def test_repeated_feature_gets_two_steps():
    # FM row with feature 3 twice; lam > 0 so the L2 term is applied twice,
    # each time with the start-of-row value.
    rng = np.random.default_rng(4)
    model = ref.RefModel.random("fm", N_FEATURES, N_FIELDS, K, rng, scale=0.5)
    row = ref.make_row([0, 1, 2], [3, 5, 3], [1.0, 2.0, 0.5])
    before = model.copy()
    grads = ref.gradients(before, row, 1)
    eta, lam = 0.1, 0.2
    ref.sgd_step(model, row, 1, eta, lam)
    np.testing.assert_allclose(
        model.factors[3], before.factors[3] - eta * (grads["factors"][3] + 2 * lam * before.factors[3]))
    np.testing.assert_allclose(
        model.linear[3], before.linear[3] - eta * (grads["linear"][3] + 2 * lam * before.linear[3]))

    # AdaGrad: two sequential steps of the same accumulator
    model = before.copy()
    state = ref.init_adagrad_state(model)
    ref.adagrad_step(model, state, row, 1, eta, lam)
    xt = ref.normalized_values(before, row)
    kappa = ref.dloss(1, ref.score(before, row))
    V = before.factors
    g_first = kappa * xt[0] * (V[5] * xt[1] + V[3] * xt[2]) + lam * V[3]
    g_second = kappa * xt[2] * (V[3] * xt[0] + V[5] * xt[1]) + lam * V[3]
    G = 1.0 + g_first ** 2
    w = V[3] - eta * g_first / np.sqrt(G)
    G = G + g_second ** 2
    w = w - eta * g_second / np.sqrt(G)
    np.testing.assert_allclose(model.factors[3], w, rtol=1e-12)
    np.testing.assert_allclose(state["factors"][3], G, rtol=1e-12)


def test_adagrad_step_by_hand_on_two_feature_ffm_row():
    model = ref.RefModel.zeros("ffm", n_features=3, n_fields=2, k=2,
                               use_bias=True, use_linear=True, normalize=True)
    model.bias = 0.1
    model.linear[:] = [0.2, -0.3, 0.7]
    model.factors[0, 0] = [9.0, 9.0]      # V[0, field 0]: not used by the pair
    model.factors[0, 1] = [0.5, -0.1]     # V[j_0=0, f_1=1]
    model.factors[1, 0] = [-0.25, 0.4]    # V[j_1=1, f_0=0]
    model.factors[1, 1] = [8.0, 8.0]      # not used by the pair
    row = ref.make_row(fields=[0, 1], features=[0, 1], values=[1.0, 2.0])
    y, eta, lam = 1, 0.1, 0.01

    # by hand: r = 1/(1+4) = 0.2, xt = [sqrt(0.2), 2 sqrt(0.2)], xt0*xt1 = 0.4
    xt0, xt1 = math.sqrt(0.2), 2.0 * math.sqrt(0.2)
    v = 0.4
    w1 = [0.5, -0.1]
    w2 = [-0.25, 0.4]
    t = 0.1 + (0.2 * xt0 - 0.3 * xt1) + (0.5 * -0.25 + -0.1 * 0.4) * v
    kappa = -1.0 / (1.0 + math.exp(t))

    state = ref.init_adagrad_state(model)
    ref.adagrad_step(model, state, row, y, eta, lam)

    g_b = kappa
    assert state["bias"] == pytest.approx(1.0 + g_b ** 2, rel=1e-14)
    assert model.bias == pytest.approx(0.1 - eta * g_b / math.sqrt(1.0 + g_b ** 2), rel=1e-14)

    for j, (w, x) in enumerate([(0.2, xt0), (-0.3, xt1)]):
        g = kappa * x + lam * w
        assert state["linear"][j] == pytest.approx(1.0 + g * g, rel=1e-14)
        assert model.linear[j] == pytest.approx(w - eta * g / math.sqrt(1.0 + g * g), rel=1e-14)
    assert model.linear[2] == 0.7 and state["linear"][2] == 1.0

    for d in range(2):
        g1 = lam * w1[d] + kappa * v * w2[d]
        g2 = lam * w2[d] + kappa * v * w1[d]
        assert state["factors"][0, 1, d] == pytest.approx(1.0 + g1 * g1, rel=1e-14)
        assert state["factors"][1, 0, d] == pytest.approx(1.0 + g2 * g2, rel=1e-14)
        assert model.factors[0, 1, d] == pytest.approx(w1[d] - eta * g1 / math.sqrt(1.0 + g1 * g1), rel=1e-14)
        assert model.factors[1, 0, d] == pytest.approx(w2[d] - eta * g2 / math.sqrt(1.0 + g2 * g2), rel=1e-14)
    np.testing.assert_array_equal(model.factors[0, 0], [9.0, 9.0])
    np.testing.assert_array_equal(model.factors[1, 1], [8.0, 8.0])
    np.testing.assert_array_equal(state["factors"][0, 0], [1.0, 1.0])
    np.testing.assert_array_equal(state["factors"][1, 1], [1.0, 1.0])
    assert not model.factors[2].any() and (state["factors"][2] == 1.0).all()

    # a number worked out independently, to pin the whole chain down
    assert model.factors[0, 1, 0] == pytest.approx(0.49414846, abs=1e-8)


def test_ffm_step_uses_values_updated_earlier_in_the_row():
    # fields [0, 0, 1]: pair (0, 2) updates V[c, 0], which pair (1, 2) then reads.
    model = ref.RefModel.zeros("ffm", 3, 2, 1, use_bias=False, use_linear=False, normalize=False)
    model.factors[:, :, 0] = [[0.3, 0.2], [0.1, -0.4], [0.5, 0.6]]
    row = ref.make_row([0, 0, 1], [0, 1, 2], [1.0, 1.0, 1.0])
    eta = 0.5
    V = model.factors[:, :, 0].copy()
    kappa = ref.dloss(1, ref.score(model, row))
    ref.sgd_step(model, row, 1, eta, 0.0)
    # pair (0,1): V[0,0] <-> V[1,0]
    a00, a10 = V[0, 0] - eta * kappa * V[1, 0], V[1, 0] - eta * kappa * V[0, 0]
    # pair (0,2): V[0,1] <-> V[2,0]
    a01, a20 = V[0, 1] - eta * kappa * V[2, 0], V[2, 0] - eta * kappa * V[0, 1]
    # pair (1,2): V[1,1] <-> V[2,0] (already updated)
    a11, a20b = V[1, 1] - eta * kappa * a20, a20 - eta * kappa * V[1, 1]
    expected = [[a00, a01], [a10, a11], [a20b, V[2, 1]]]
    np.testing.assert_allclose(model.factors[:, :, 0], expected, rtol=1e-14)


@pytest.mark.parametrize("kind", ref.KINDS)
@pytest.mark.parametrize("optimizer,eta", [("sgd", 0.5), ("adagrad", 0.3)])
def test_training_decreases_loss_on_planted_labels(kind, optimizer, eta):
    rng = np.random.default_rng(100)
    n_features, n_fields = 12, 3
    planted = ref.RefModel.random(kind, n_features, n_fields, K, rng, scale=1.5, normalize=False)
    rows = ref.random_rows(rng, 80, n_features, n_fields, max_nnz=4)
    labels = [1 if ref.score(planted, r) > 0 else -1 for r in rows]

    model = ref.RefModel.random(kind, n_features, n_fields, K, rng, scale=0.1, normalize=True)
    if kind == "fwfm":
        model.field_weights[:] = 1.0
    initial = ref.mean_loss(model, rows, labels)
    order = [rng.permutation(len(rows)) for _ in range(5)]
    state = ref.train(model, rows, labels, order, epochs=5, optimizer=optimizer, eta=eta, lam=1e-4)
    final = ref.mean_loss(model, rows, labels)
    assert final < 0.85 * initial
    assert (state is None) == (optimizer == "sgd")


def test_train_order_and_state_semantics():
    rng = np.random.default_rng(8)
    rows = ref.random_rows(rng, 6, N_FEATURES, N_FIELDS, max_nnz=4)
    labels = _labels(6)
    base = ref.RefModel.random("fm", N_FEATURES, N_FIELDS, K, rng)
    order = [3, 1, 5, 0, 2, 4]

    a = base.copy()
    state_a = ref.train(a, rows, labels, order, epochs=2, optimizer="adagrad", eta=0.2, lam=0.01)
    b = base.copy()
    state_b = ref.init_adagrad_state(b)
    for _ in range(2):
        for i in order:
            ref.adagrad_step(b, state_b, rows[i], labels[i], 0.2, 0.01)
    np.testing.assert_array_equal(a.factors, b.factors)
    np.testing.assert_array_equal(state_a["factors"], state_b["factors"])

    c = base.copy()
    ref.train(c, rows, labels, None, epochs=1, optimizer="sgd", eta=0.2, lam=0.0)
    d = base.copy()
    for i in range(6):
        ref.sgd_step(d, rows[i], labels[i], 0.2, 0.0)
    np.testing.assert_array_equal(c.linear, d.linear)


# ===========================================================================
# Training matrix: tasks, optimizers, regularisation, schedules, batches
# ===========================================================================

S_FEATURES, S_FIELDS, S_K = 6, 3, 2

TASK_CASES = [
    ("binary", 1, 0.1, [1, 0, 1, 0]),
    ("regression", 1, 0.0, [0.7, -1.3, 2.0, 0.1]),
    ("multiclass", 3, 0.2, [2, 0, 1, 2]),
]


def _small_rows():
    rng = np.random.default_rng(77)
    rows = ref.random_rows(rng, 2, S_FEATURES, S_FIELDS, max_nnz=4)
    # a repeated feature (in two fields) and a single-feature row
    rows.append(ref.make_row([0, 1, 0, 2], [3, 1, 3, 5], [1.0, 0.5, 1.5, 0.25]))
    rows.append(ref.make_row([1], [2], [1.7]))
    return rows


def _fd(loss, get, set_, h=1e-6):
    original = get()
    set_(original + h)
    plus = loss()
    set_(original - h)
    minus = loss()
    set_(original)
    return (plus - minus) / (2 * h)


@pytest.mark.parametrize("t", [-25.0, -2.0, -0.3, 0.0, 0.8, 3.0, 25.0])
def test_loss_derivatives_match_finite_differences(t):
    h = 1e-6
    for eps in (0.0, 0.1):
        for y in (0, 1):
            fd = (ref.binary_loss(y, t + h, eps) - ref.binary_loss(y, t - h, eps)) / (2 * h)
            assert ref.binary_dloss(y, t, eps) == pytest.approx(fd, rel=1e-6, abs=1e-10)
    for y in (-1.5, 0.0, 2.0):
        fd = (ref.squared_loss(y, t + h) - ref.squared_loss(y, t - h)) / (2 * h)
        assert ref.squared_dloss(y, t) == pytest.approx(fd, rel=1e-6, abs=1e-8)
    tv = np.array([t, 0.5, -1.0, 0.1 * t])
    for eps in (0.0, 0.2):
        for y in range(4):
            kappa = ref.softmax_dloss(y, tv, eps)
            for c in range(4):
                e = np.zeros(4)
                e[c] = h
                fd = (ref.softmax_loss(y, tv + e, eps) - ref.softmax_loss(y, tv - e, eps)) / (2 * h)
                assert kappa[c] == pytest.approx(fd, rel=1e-6, abs=1e-8)
            assert kappa.sum() == pytest.approx(0.0, abs=1e-12)


def test_losses_by_hand():
    # binary with smoothing: q = 0.95 for y=1, eps=0.1
    q = 0.95
    t = 0.4
    expected = q * math.log(1 + math.exp(-t)) + (1 - q) * math.log(1 + math.exp(t))
    assert ref.binary_loss(1, t, 0.1) == pytest.approx(expected, rel=1e-14)
    assert ref.binary_dloss(1, t, 0.1) == pytest.approx(1 / (1 + math.exp(-t)) - q, rel=1e-14)
    assert ref.binary_loss(0, t, 0.0) == pytest.approx(math.log(1 + math.exp(t)), rel=1e-14)
    assert ref.squared_loss(1.5, -0.5) == 2.0 and ref.squared_dloss(1.5, -0.5) == -2.0
    tv = [1.0, 2.0, 0.0]
    p = np.exp(tv) / np.sum(np.exp(tv))
    qv = np.array([0.1, 0.8, 0.1])  # y = 1, eps = 0.3, C = 3
    np.testing.assert_allclose(ref.softmax_target(1, 3, 0.3), qv, rtol=1e-15)
    assert ref.softmax_loss(1, tv, 0.3) == pytest.approx(-np.sum(qv * np.log(p)), rel=1e-14)
    np.testing.assert_allclose(ref.softmax_dloss(1, tv, 0.3), p - qv, rtol=1e-14)
    # huge scores stay finite
    assert ref.softmax_loss(0, [1e4, -1e4], 0.0) == 0.0
    assert ref.softmax_loss(1, [1e4, -1e4], 0.0) == pytest.approx(2e4)


@pytest.mark.parametrize("kind", ref.KINDS)
@pytest.mark.parametrize("task,n_classes,eps,labels", TASK_CASES)
def test_task_gradients_match_finite_differences(kind, task, n_classes, eps, labels):
    rng = np.random.default_rng(31)
    models = [ref.RefModel.random(kind, S_FEATURES, S_FIELDS, S_K, rng, scale=0.5)
              for _ in range(n_classes)]
    weight = 0.7
    for row, y in zip(_small_rows(), labels):
        grads = ref.task_gradients(task, models, row, y, eps, weight)
        assert len(grads) == n_classes

        def loss(row=row, y=y):
            return ref.row_loss(task, models, row, y, eps, weight)

        for c, model in enumerate(models):
            def set_bias(value, model=model):
                model.bias = value

            fd = _fd(loss, lambda model=model: model.bias, set_bias)
            np.testing.assert_allclose(grads[c]["bias"], fd, rtol=1e-6, atol=1e-9)
            for name, array in _parameter_arrays(model):
                for index in np.ndindex(array.shape):
                    def get(index=index, array=array):
                        return array[index]

                    def set_(value, index=index, array=array):
                        array[index] = value

                    fd = _fd(loss, get, set_)
                    np.testing.assert_allclose(grads[c][name][index], fd, rtol=1e-6, atol=1e-9,
                                               err_msg=f"class {c} {name}{index}")


def test_binary_task_gradients_are_the_logistic_gradients():
    rng = np.random.default_rng(2)
    for kind in ref.KINDS:
        model = ref.RefModel.random(kind, N_FEATURES, N_FIELDS, K, rng, scale=0.5)
        for row in ref.random_rows(rng, 3, N_FEATURES, N_FIELDS, max_nnz=5):
            for y01 in (0, 1):
                new = ref.task_gradients("binary", [model], row, y01)[0]
                old = ref.gradients(model, row, 1 if y01 else -1)
                for name in ("linear", "factors", "field_weights"):
                    if old[name] is not None:
                        np.testing.assert_allclose(new[name], old[name], rtol=1e-12, atol=1e-15)
                assert new["bias"] == pytest.approx(old["bias"], rel=1e-12)


def test_fwfm_with_unit_field_weights_scores_as_fm():
    rng = np.random.default_rng(12)
    fm = ref.RefModel.random("fm", N_FEATURES, N_FIELDS, K, rng, scale=0.5)
    fwfm = ref.RefModel.zeros("fwfm", N_FEATURES, N_FIELDS, K)
    fwfm.bias, fwfm.linear, fwfm.factors = fm.bias, fm.linear.copy(), fm.factors.copy()
    assert (fwfm.field_weights == 1.0).all()  # the initial value
    rows = ref.random_rows(rng, 12, N_FEATURES, N_FIELDS, max_nnz=6, distinct_features=False)
    np.testing.assert_array_equal(ref.scores_matrix([fwfm], rows), ref.scores_matrix([fm], rows))
    for task in ("binary", "regression"):
        np.testing.assert_array_equal(ref.predict_task(task, [fwfm], rows),
                                      ref.predict_task(task, [fm], rows))


@pytest.mark.parametrize("kind", ref.KINDS)
def test_two_class_softmax_is_logistic(kind):
    rng = np.random.default_rng(40)
    zero = ref.RefModel.zeros(kind, N_FEATURES, N_FIELDS, K)
    if kind == "fwfm":
        zero.field_weights[:] = 0.0
    one = ref.RefModel.random(kind, N_FEATURES, N_FIELDS, K, rng, scale=0.8)
    rows = ref.random_rows(rng, 6, N_FEATURES, N_FIELDS, max_nnz=5)
    t = ref.scores_matrix([zero, one], rows)
    assert (t[:, 0] == 0.0).all()
    p = ref.predict_task("multiclass", [zero, one], rows)
    assert p.shape == (6, 2)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-15)
    np.testing.assert_allclose(p[:, 1], ref.predict_task("binary", [one], rows), rtol=1e-13)
    for row, t_row in zip(rows, t):
        for y in (0, 1):
            for eps in (0.0, 0.3):
                kappa = ref.task_dloss("multiclass", y, t_row, eps)
                q = (1 - eps) * y + eps / 2
                assert kappa[1] == pytest.approx(ref.sigmoid(t_row[1] - t_row[0]) - q, rel=1e-12, abs=1e-15)
                assert kappa[0] == pytest.approx(-kappa[1], rel=1e-12, abs=1e-15)
                assert ref.softmax_loss(y, t_row, eps) == pytest.approx(
                    ref.binary_loss(y, t_row[1], eps), rel=1e-12)
                g_multi = ref.task_gradients("multiclass", [zero, one], row, y, eps)[1]
                g_bin = ref.task_gradients("binary", [one], row, y, eps)[0]
                np.testing.assert_allclose(g_multi["linear"], g_bin["linear"], rtol=1e-12, atol=1e-15)
                if kind != "lr":
                    np.testing.assert_allclose(g_multi["factors"], g_bin["factors"], rtol=1e-12, atol=1e-15)


def _binary_problem(kind, seed, n_rows=10, distinct=True, **model_args):
    rng = np.random.default_rng(seed)
    model = ref.RefModel.random(kind, N_FEATURES, N_FIELDS, K, rng, scale=0.4, **model_args)
    rows = ref.random_rows(rng, n_rows, N_FEATURES, N_FIELDS, max_nnz=5, distinct_features=distinct)
    labels = [int(i % 3 == 0) for i in range(n_rows)]
    return model, rows, labels, rng


def test_ftrl_large_l1_leaves_exact_zeros():
    model, rows, labels, _ = _binary_problem("lr", 50, n_rows=20)
    model.bias = 0.0
    model.linear[:] = 0.0
    trained = model.copy()
    state, losses = ref.train_matrix([trained], rows, labels, None, task="binary", optimizer="ftrl",
                                     eta=0.1, epochs=3, l1=1e3)
    assert (trained.linear == 0.0).all()
    assert (state["classes"][0]["z"]["linear"] != 0.0).any()
    assert trained.bias != 0.0  # the bias has no l1
    # not vacuous: a small l1 lets weights move
    small = model.copy()
    ref.train_matrix([small], rows, labels, None, task="binary", optimizer="ftrl",
                     eta=0.1, epochs=3, l1=1e-3)
    assert (small.linear != 0.0).sum() > 5


@pytest.mark.parametrize("kind", ref.KINDS)
def test_ftrl_initial_state_reproduces_the_weights(kind):
    rng = np.random.default_rng(51)
    model = ref.RefModel.random(kind, N_FEATURES, N_FIELDS, K, rng, scale=0.5)
    model.linear[:3] = 0.0
    hyper = dict(l1=0.3, l2_bias=0.05, l2_linear=0.1, l2_factors=0.2, ftrl_beta=1.5, eta=0.2)
    state = ref.init_state([model], "ftrl", **hyper)
    cstate = state["classes"][0]
    l2 = {"bias": 0.05, "linear": 0.1, "factors": 0.2, "field_weights": 0.0}
    l1 = {"bias": 0.0, "linear": 0.3, "factors": 0.3, "field_weights": 0.0}
    for group in ref.GROUPS:
        w0 = model.bias if group == "bias" else getattr(model, group)
        if w0 is None:
            assert cstate["z"][group] is None
            continue
        z, n = cstate["z"][group], cstate["n"][group]
        assert np.shape(z) == np.shape(w0) and not np.any(n)
        w = ref.ftrl_weight(z, n, 0.2, 1.5, l1[group], l2[group])
        np.testing.assert_allclose(w, w0, rtol=1e-13, atol=0)
        # by hand: z = -(w0 (beta/alpha + l2) + sign(w0) l1)
        np.testing.assert_allclose(
            z, -(np.asarray(w0) * (1.5 / 0.2 + l2[group]) + np.sign(w0) * l1[group]), rtol=1e-15)
    assert (cstate["z"]["linear"][:3] == 0.0).all()


def test_ftrl_step_by_hand():
    model = ref.RefModel.zeros("lr", 3, 1, 1)
    model.bias, model.linear[1] = 0.3, -0.2
    row = ref.make_row([0], [1], [4.0])  # normalised value 1
    alpha, beta, l1, l2 = 0.5, 1.0, 0.01, 0.1
    state, _ = ref.train_matrix([model], [row], [1], [0], task="binary", optimizer="ftrl",
                                eta=alpha, l1=l1, l2_linear=l2, l2_bias=0.0)
    kappa = ref.sigmoid(0.3 - 0.2) - 1.0
    # bias: l1 = 0, l2_bias = 0
    z0 = -0.3 * beta / alpha
    z = z0 + kappa - (abs(kappa) / alpha) * 0.3
    assert model.bias == pytest.approx(-z / ((beta + abs(kappa)) / alpha), rel=1e-13)
    # linear
    z0 = -(-0.2 * (beta / alpha + l2) - l1)
    z = z0 + kappa - (abs(kappa) / alpha) * -0.2
    assert state["classes"][0]["z"]["linear"][1] == pytest.approx(z, rel=1e-13)
    assert state["classes"][0]["n"]["linear"][1] == pytest.approx(kappa ** 2, rel=1e-13)
    expected = -(z - np.sign(z) * l1) / ((beta + abs(kappa)) / alpha + l2)
    assert model.linear[1] == pytest.approx(expected, rel=1e-13)
    assert model.linear[0] == 0.0 and model.linear[2] == 0.0


def test_adam_bias_correction():
    model, rows, labels, _ = _binary_problem("fm", 60)
    before = model.copy()
    eta = 0.01
    state, _ = ref.train_matrix([model], rows[:1], labels[:1], [0], task="binary",
                                optimizer="adam", eta=eta)
    g = ref.task_gradients("binary", [before], rows[0], labels[0])[0]
    assert abs(model.bias - before.bias) == pytest.approx(eta, rel=1e-4)
    assert np.sign(before.bias - model.bias) == np.sign(g["bias"])
    for j in set(int(j) for j in rows[0].features):
        assert before.linear[j] - model.linear[j] == pytest.approx(eta * np.sign(g["linear"][j]), rel=1e-4)
        moved = before.factors[j] - model.factors[j]
        np.testing.assert_allclose(moved, eta * np.sign(g["factors"][j]), rtol=1e-4)
    assert state["t"] == 1

    # a coordinate first touched at a later step uses the GLOBAL step number:
    # after 5 steps of an empty row, a fresh bias step at t = 5 (n = 6)
    model = before.copy()
    empty = ref.make_row([], [], [])
    rows2 = [empty] * 5 + [rows[0]]
    state, _ = ref.train_matrix([model], rows2, [0] * 5 + [labels[0]], None, task="binary",
                                optimizer="adam", eta=eta, weights=[0.0] * 5 + [1.0])
    n = 6
    factor = math.sqrt(1 - 0.999 ** n) / (1 - 0.9 ** n) * 0.1 / math.sqrt(0.001)
    j = int(rows[0].features[0])
    assert before.linear[j] - model.linear[j] == pytest.approx(
        eta * factor * np.sign(g["linear"][j]), rel=1e-4)
    assert state["t"] == 6


def test_regression_recovers_a_linear_model():
    rng = np.random.default_rng(70)
    w_star, b_star = np.array([0.5, -1.0, 2.0, 0.3]), 0.7
    rows, labels = [], []
    for _ in range(20):
        x = rng.uniform(0.2, 1.5, size=4)
        rows.append(ref.make_row([0, 1, 2, 3], [0, 1, 2, 3], x))
        labels.append(float(np.dot(w_star, x) + b_star))
    epochs = 40
    for optimizer, eta in (("sgd", 0.2), ("adagrad", 1.0)):
        model = ref.RefModel.zeros("lr", 4, 4, 1, normalize=False)
        order = [rng.permutation(len(rows)) for _ in range(epochs)]
        _, losses = ref.train_matrix([model], rows, labels, order, task="regression",
                                     optimizer=optimizer, eta=eta, epochs=epochs)
        np.testing.assert_allclose(model.linear, w_star, atol=2e-3)
        assert model.bias == pytest.approx(b_star, abs=2e-3)
        assert losses[-1] < 1e-6 < 0.1 < losses[0]
        np.testing.assert_allclose(ref.predict_task("regression", [model], rows), labels, atol=2e-3)


def _touched_blocks(model, rows):
    """Boolean masks of the blocks a batch of rows steps (hand-written)."""
    mask = {"linear": np.zeros(model.n_features, bool)}
    if model.factors is not None:
        mask["factors"] = np.zeros(model.factors.shape[:-1], bool)
    if model.field_weights is not None:
        mask["field_weights"] = np.zeros(model.field_weights.shape, bool)
    for row in rows:
        n = len(row.features)
        for i in range(n):
            if model.use_linear:
                mask["linear"][row.features[i]] = True
            if model.kind in ("fm", "fwfm"):
                mask["factors"][row.features[i]] = True
            for l in range(n):
                if model.kind == "ffm" and l != i:
                    mask["factors"][row.features[i], row.fields[l]] = True
                if model.kind == "fwfm" and l > i:
                    mask["field_weights"][ref.field_pair(row.fields[i], row.fields[l])] = True
    return mask


@pytest.mark.parametrize("kind", ref.KINDS)
@pytest.mark.parametrize("optimizer", ["sgd", "adagrad"])
def test_full_batch_is_one_gradient_step(kind, optimizer):
    model, rows, labels, rng = _binary_problem(kind, 80, n_rows=7, distinct=False)
    weights = rng.uniform(0.0, 2.0, size=len(rows))
    before = model.copy()
    eta, l2 = 0.3, {"bias": 0.05, "linear": 0.1, "factors": 0.2, "field_weights": 0.0}
    state, losses = ref.train_matrix(
        [model], rows, labels, list(range(len(rows))), task="binary", optimizer=optimizer,
        eta=eta, weights=weights, l2_bias=0.05, l2_linear=0.1, l2_factors=0.2,
        batch_size=len(rows))
    assert state["t"] == 1

    # independently: the weighted average of the logistic gradients
    grads = [ref.gradients(before, row, 1 if y else -1) for row, y in zip(rows, labels)]
    n = len(rows)
    mask = _touched_blocks(before, rows)

    def expect(w, g, touched, group):
        g = g + l2[group] * w
        if optimizer == "sgd":
            return np.where(touched, w - eta * g, w)
        return np.where(touched, w - eta * g / np.sqrt(1.0 + g * g), w)

    g_bias = sum(s * g["bias"] for s, g in zip(weights, grads)) / n
    assert model.bias == pytest.approx(float(expect(before.bias, g_bias, True, "bias")), rel=1e-12)
    for name, _ in _parameter_arrays(before):
        g = sum(s * gr[name] for s, gr in zip(weights, grads)) / n
        touched = mask[name]
        if name == "factors":
            touched = touched[..., None]
        np.testing.assert_allclose(getattr(model, name),
                                   expect(getattr(before, name), g, touched, name),
                                   rtol=1e-12, atol=1e-15, err_msg=name)
    expected_loss = sum(s * ref.logistic_loss(1 if y else -1, ref.score(before, r))
                        for s, r, y in zip(weights, rows, labels)) / weights.sum()
    assert losses == [pytest.approx(expected_loss, rel=1e-12)]


@pytest.mark.parametrize("kind", ref.KINDS)
def test_batches_split_over_calls_continue_the_state(kind):
    # 5 rows, batches of 2 -> sizes 2, 2, 1 at t = 0, 1, 2; the same run in three calls
    model, rows, labels, _ = _binary_problem(kind, 81, n_rows=5)
    args = dict(task="binary", optimizer="adam", eta=0.05, l2_factors=0.01,
                schedule="linear", warmup=1, batch_size=2, clip_norm=0.2)
    whole = model.copy()
    state_whole, loss_whole = ref.train_matrix([whole], rows, labels, [0, 1, 2, 3, 4], **args)
    assert state_whole["t"] == 3 and state_whole["total_steps"] == 3

    parts = model.copy()
    state = ref.init_state([parts], "adam", total_steps=3)
    for order in ([0, 1], [2, 3], [4]):
        state, _ = ref.train_matrix([parts], rows, labels, order, state=state, **args)
    assert state["t"] == 3
    np.testing.assert_array_equal(parts.linear, whole.linear)
    np.testing.assert_array_equal(state["classes"][0]["v"]["linear"],
                                  state_whole["classes"][0]["v"]["linear"])
    if kind != "lr":
        np.testing.assert_array_equal(parts.factors, whole.factors)
    with pytest.raises(ValueError):  # past T with a linear schedule
        ref.train_matrix([parts], rows, labels, [4], state=state, **args)


@pytest.mark.parametrize("kind,normalize,use_bias,use_linear", FLAG_COMBOS)
@pytest.mark.parametrize("optimizer", ["sgd", "adagrad"])
def test_per_row_mode_matches_the_original_steps(kind, normalize, use_bias, use_linear, optimizer):
    model, rows, labels, rng = _binary_problem(kind, 90, n_rows=8, distinct=False,
                                               normalize=normalize, use_bias=use_bias,
                                               use_linear=use_linear)
    order = [list(rng.permutation(len(rows))) for _ in range(2)]
    new = model.copy()
    state, losses = ref.train_matrix([new], rows, labels, order, task="binary", optimizer=optimizer,
                                     eta=0.2, epochs=2, l2_linear=0.03, l2_factors=0.03)
    old = model.copy()
    old_state = ref.train(old, rows, [1 if y else -1 for y in labels], order, epochs=2,
                          optimizer=optimizer, eta=0.2, lam=0.03)
    assert new.bias == pytest.approx(old.bias, rel=1e-12, abs=1e-15)
    for name, array in _parameter_arrays(old):
        np.testing.assert_allclose(getattr(new, name), array, rtol=1e-12, atol=1e-15, err_msg=name)
        if optimizer == "adagrad":
            np.testing.assert_allclose(state["classes"][0]["G"][name], old_state[name], rtol=1e-12)
    assert state["t"] == 16 and len(losses) == 2


def test_epoch_loss_is_the_weighted_mean_before_each_update():
    model, rows, labels, rng = _binary_problem("ffm", 91, n_rows=6)
    weights = rng.uniform(0.0, 3.0, size=6)
    expected = sum(s * ref.binary_loss(y, ref.score(model, r), 0.1)
                   for s, r, y in zip(weights, rows, labels)) / weights.sum()
    _, losses = ref.train_matrix([model], rows, labels, None, task="binary", optimizer="sgd",
                                 eta=0.0, epochs=2, weights=weights, label_smoothing=0.1)
    assert losses == [pytest.approx(expected, rel=1e-13)] * 2
    _, losses = ref.train_matrix([model], rows, labels, None, task="binary", optimizer="sgd",
                                 eta=0.0, weights=np.zeros(6))
    assert losses == [0.0]


def test_multiclass_per_row_step_by_hand():
    models = [ref.RefModel.zeros("lr", 4, 2, 1) for _ in range(3)]
    for c, m in enumerate(models):
        m.bias = 0.1 * c
        m.linear[:] = [0.2, -0.1 * c, 0.0, 0.3]
    row = ref.make_row([0, 1], [0, 1], [3.0, 4.0])  # xt = 0.6, 0.8
    s, eps, eta = 1.5, 0.3, 0.4
    t = np.array([m.bias + 0.2 * 0.6 + m.linear[1] * 0.8 for m in models])
    kappa = s * (np.exp(t) / np.exp(t).sum() - np.array([0.1, 0.1, 0.8]))
    before = [m.copy() for m in models]
    ref.train_matrix(models, [row], [2], None, task="multiclass", optimizer="sgd", eta=eta,
                     weights=[s], label_smoothing=eps, l2_linear=0.5, l2_bias=0.25)
    for c in range(3):
        b0 = before[c].bias
        assert models[c].bias == pytest.approx(b0 - eta * (kappa[c] + 0.25 * b0), rel=1e-13)
        for j, x in ((0, 0.6), (1, 0.8)):
            w0 = before[c].linear[j]
            assert models[c].linear[j] == pytest.approx(w0 - eta * (kappa[c] * x + 0.5 * w0),
                                                        rel=1e-13, abs=1e-16)
        assert models[c].linear[3] == 0.3


def test_schedule_values_by_hand():
    f = ref.schedule_factor
    assert [f("constant", t, 10, 0) for t in (0, 5, 9)] == [1.0, 1.0, 1.0]
    assert [f("constant", t, 10, 4) for t in (0, 1, 3, 4, 9)] == [0.25, 0.5, 1.0, 1.0, 1.0]
    assert [f("linear", t, 10, 0) for t in (0, 5, 9)] == pytest.approx([1.0, 0.5, 0.1])
    assert [f("linear", t, 10, 2) for t in (0, 1, 2, 6, 9)] == pytest.approx([0.5, 1.0, 1.0, 0.5, 0.125])
    assert f("linear", 0, 2, 4) == 0.25 and f("linear", 5, 2, 4) == 1.0  # T <= W
    assert [f("cosine", t, 10, 0) for t in (0, 5, 9)] == pytest.approx(
        [1.0, 0.5, 0.5 * (1 + math.cos(0.9 * math.pi))])
    assert f("cosine", 9, 10, 0) == pytest.approx(0.0244717418524232, rel=1e-12)
    assert [f("cosine", t, 10, 2) for t in (1, 2, 6)] == pytest.approx([1.0, 1.0, 0.5])
    assert [f("inverse-sqrt", t, 10, 0) for t in (0, 3, 99)] == pytest.approx([1.0, 0.5, 0.1])
    assert [f("inverse-sqrt", t, 100, 4) for t in (0, 3, 4, 15)] == pytest.approx(
        [0.25, 1.0, math.sqrt(0.8), 0.5])
    assert ref.learning_rate(0.2, "linear", 5, 10, 0) == pytest.approx(0.1)


def test_training_uses_the_schedule_per_step():
    # weight-0 rows: only the bias's L2 term acts, b <- b (1 - eta_t l2) per row
    model = ref.RefModel.zeros("lr", 4, 2, 1)
    model.bias = 1.0
    rows = [ref.make_row([0], [1], [1.0])] * 6
    eta, l2 = 0.5, 0.2
    for schedule, warmup in (("linear", 2), ("cosine", 0), ("inverse-sqrt", 3), ("constant", 1)):
        m = model.copy()
        ref.train_matrix([m], rows, [1] * 6, None, task="binary", optimizer="sgd", eta=eta,
                         epochs=2, weights=[0.0] * 6, l2_bias=l2, schedule=schedule, warmup=warmup)
        expected = 1.0
        for t in range(12):
            expected *= 1 - eta * ref.schedule_factor(schedule, t, 12, warmup) * l2
        assert m.bias == pytest.approx(expected, rel=1e-13), schedule
        # batches: t counts batches, T = epochs * ceil(6 / 4) = 4
        m = model.copy()
        ref.train_matrix([m], rows, [1] * 6, None, task="binary", optimizer="sgd", eta=eta,
                         epochs=2, weights=[0.0] * 6, l2_bias=l2, schedule=schedule,
                         warmup=warmup, batch_size=4)
        expected = 1.0
        for t in range(4):
            expected *= 1 - eta * ref.schedule_factor(schedule, t, 4, warmup) * l2
        assert m.bias == pytest.approx(expected, rel=1e-13), schedule


@pytest.mark.parametrize("kind", ref.KINDS)
def test_clipping_moves_a_block_by_eta_times_clip(kind):
    rng = np.random.default_rng(95)
    row = _distinct_rows(rng, 1, max_nnz=N_FIELDS)[0]
    while len(row.features) < 3:
        row = _distinct_rows(rng, 1, max_nnz=N_FIELDS)[0]
    model = ref.RefModel.random(kind, N_FEATURES, N_FIELDS, K, rng, scale=0.8)
    before = model.copy()
    g = ref.task_gradients("binary", [before], row, 1)[0]
    eta, clip = 0.3, 1e-4
    ref.train_matrix([model], [row], [1], None, task="binary", optimizer="sgd", eta=eta,
                     clip_norm=clip)
    assert abs(model.bias - before.bias) == pytest.approx(eta * clip, rel=1e-12)
    for name, _ in _parameter_arrays(before):
        moved = getattr(before, name) - getattr(model, name)
        grad = g[name]
        if name == "factors":  # one block per k-vector
            norms = np.sqrt(np.sum(grad * grad, axis=-1, keepdims=True))
        else:
            norms = np.abs(grad)
        hit = norms[..., 0] > 0 if name == "factors" else norms > 0
        assert hit.sum() >= 2
        expected = np.where(norms > 0, eta * clip * grad / np.where(norms > 0, norms, 1.0), 0.0)
        np.testing.assert_allclose(moved, expected, rtol=1e-9, atol=1e-18, err_msg=name)
    # a clip above every block's norm changes nothing
    a, b = before.copy(), before.copy()
    ref.train_matrix([a], [row], [1], None, task="binary", optimizer="sgd", eta=eta, clip_norm=1e6)
    ref.train_matrix([b], [row], [1], None, task="binary", optimizer="sgd", eta=eta)
    np.testing.assert_array_equal(a.linear, b.linear)
    # clipping acts on the full gradient, L2 included: weight-0 rows leave
    # g = l2_bias * b = 0.2 b > clip while b > 0.25, so b drops by eta*clip per row
    m = ref.RefModel.zeros("lr", 4, 2, 1)
    m.bias = 1.0
    one = ref.make_row([0], [1], [1.0])
    ref.train_matrix([m], [one] * 5, [1] * 5, None, task="binary", optimizer="sgd", eta=0.5,
                     weights=[0.0] * 5, l2_bias=0.2, clip_norm=0.05)
    assert m.bias == pytest.approx(1.0 - 5 * 0.5 * 0.05, rel=1e-14)
    assert ref.clip_block([3.0, 4.0], 1.0) == pytest.approx([0.6, 0.8])
    assert list(ref.clip_block([3.0, 4.0], 0.0)) == [3.0, 4.0]


@pytest.mark.parametrize("optimizer", ref.OPTIMIZERS)
@pytest.mark.parametrize("task,n_classes,eps,labels", TASK_CASES)
@pytest.mark.parametrize("batch_size", [1, 3])
def test_every_combination_trains(optimizer, task, n_classes, eps, labels, batch_size):
    rng = np.random.default_rng(99)
    rows = _small_rows() * 2
    labels = labels * 2
    for kind in ref.KINDS:
        models = [ref.RefModel.random(kind, S_FEATURES, S_FIELDS, S_K, rng, scale=0.3)
                  for _ in range(n_classes)]
        start = ref.scores_matrix(models, rows)
        state, losses = ref.train_matrix(
            models, rows, labels, None, task=task, optimizer=optimizer, eta=0.05, epochs=2,
            weights=np.linspace(0.5, 1.5, len(rows)), l2_factors=1e-3,
            l1=1e-3 if optimizer == "ftrl" else 0.0, label_smoothing=eps, clip_norm=5.0,
            schedule="constant" if optimizer == "ftrl" else "cosine",
            warmup=0 if optimizer == "ftrl" else 2, batch_size=batch_size)
        assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
        assert len(state["classes"]) == n_classes
        assert state["t"] == 2 * (len(rows) if batch_size == 1 else -(-len(rows) // batch_size))
        assert not np.array_equal(ref.scores_matrix(models, rows), start)


def test_bad_arguments_are_refused():
    model = ref.RefModel.zeros("lr", 3, 1, 1)
    row = [ref.make_row([0], [0], [1.0])]
    base = dict(task="binary", optimizer="sgd", eta=0.1)
    for changes in (dict(task="regression", label_smoothing=0.1), dict(optimizer="ftrl", warmup=2),
                    dict(optimizer="ftrl", schedule="linear"), dict(l1=0.1),
                    dict(task="multiclass"), dict(batch_size=0), dict(schedule="step")):
        with pytest.raises(ValueError):
            ref.train_matrix([model], row, [0], None, **{**base, **changes})
    with pytest.raises(ValueError):
        ref.train_matrix([model, model.copy()], row, [2], None, task="multiclass", optimizer="sgd", eta=0.1)
