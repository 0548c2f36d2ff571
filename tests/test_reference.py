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
