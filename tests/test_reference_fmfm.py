"""Self-checks of the FmFM part of the NumPy reference oracle (tests/reference.py).

FmFM scores a pair of entries with one k x k matrix per field pair:
``phi = V[j_lo]^T M[a, c] V[j_hi]`` (a < c the fields, lo/hi the entries of the
lower/higher field) and ``V[j_i]^T (M[a, a] + M[a, a]^T)/2 V[j_l]`` within a
field.  These tests check the reference's score, gradients and training steps
against finite differences, FwFM, and numbers worked out by hand.
"""

import itertools
import math
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import reference as ref  # noqa: E402

N_FEATURES = 10
N_FIELDS = 3
K = 3
H = 1e-6

TASK_CASES = [
    ("binary", 1, 0.1, [1, 0, 1, 0, 1, 0, 1, 0]),
    ("regression", 1, 0.0, [0.7, -1.3, 2.0, 0.1, -0.4, 1.1, 0.0, 0.5]),
    ("multiclass", 3, 0.2, [2, 0, 1, 2, 1, 0, 0, 2]),
]


def _rows():
    """Rows with repeated fields, out-of-order fields, a repeated feature
    inside one field and across fields, a single entry and no entry."""
    rng = np.random.default_rng(2024)
    rows = ref.random_rows(rng, 2, N_FEATURES, N_FIELDS, max_nnz=5)
    return rows + [
        ref.make_row([2, 0, 1, 0], [4, 1, 7, 2], [1.0, 0.5, 1.5, 2.0]),    # fields out of order
        ref.make_row([1, 1, 1], [3, 5, 8], [0.3, 1.0, 1.7]),               # one field only
        ref.make_row([0, 2, 0, 2], [6, 6, 6, 9], [1.0, 0.7, 1.2, 0.4]),    # feature 6 three times
        ref.make_row([2], [5], [1.3]),                                     # single entry
        ref.make_row([], [], []),                                          # empty
        ref.make_row([1, 0], [0, 0], [0.8, 1.1]),                          # one feature, two fields
    ]


def _random_models(n_classes, rng, **flags):
    return [ref.RefModel.random("fmfm", N_FEATURES, N_FIELDS, K, rng, scale=0.5, **flags)
            for _ in range(n_classes)]


def _fd(loss, array, index):
    original = array[index]
    array[index] = original + H
    plus = loss()
    array[index] = original - H
    minus = loss()
    array[index] = original
    return (plus - minus) / (2 * H)


def _upper_pairs(n_fields=N_FIELDS):
    return [(a, c) for a in range(n_fields) for c in range(a, n_fields)]


def _lower_pairs(n_fields=N_FIELDS):
    return [(a, c) for a in range(n_fields) for c in range(a)]


def _assert_mirrored(M):
    for a, c in _lower_pairs(M.shape[0]):
        np.testing.assert_array_equal(M[a, c], M[c, a].T)


# ---------------------------------------------------------------------------
# Model construction
# ---------------------------------------------------------------------------


def test_construction_and_initial_values():
    zero = ref.RefModel.zeros("fmfm", N_FEATURES, N_FIELDS, K)
    assert zero.field_matrices.shape == (N_FIELDS, N_FIELDS, K, K)
    assert zero.factors.shape == (N_FEATURES, K) and zero.field_weights is None
    for a, c in itertools.product(range(N_FIELDS), repeat=2):
        np.testing.assert_array_equal(zero.field_matrices[a, c], np.eye(K))

    model = ref.RefModel.random("fmfm", N_FEATURES, N_FIELDS, K, np.random.default_rng(1))
    _assert_mirrored(model.field_matrices)
    assert not np.allclose(model.field_matrices[1, 1], model.field_matrices[1, 1].T)
    clone = model.copy()
    clone.field_matrices[0, 1, 0, 0] += 1.0
    assert clone.field_matrices[0, 1, 0, 0] != model.field_matrices[0, 1, 0, 0]

    for kind in ref.KINDS:  # the other kinds have none, and refuse one
        assert ref.RefModel.zeros(kind, 4, 2, 2).field_matrices is None
    with pytest.raises(ValueError):
        ref.RefModel("fm", 4, 2, 2, 0.0, np.zeros(4), np.zeros((4, 2)), None,
                     field_matrices=np.zeros((2, 2, 2, 2)))
    with pytest.raises(ValueError):
        ref.RefModel("fmfm", 4, 2, 2, 0.0, np.zeros(4), np.zeros((4, 2)), None,
                     field_matrices=np.zeros((2, 2, 2)))
    assert "fmfm" in ref.MODEL_KINDS and "fmfm" not in ref.KINDS


# ---------------------------------------------------------------------------
# Gradients against finite differences
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("task,n_classes,eps,labels", TASK_CASES)
def test_task_gradients_match_finite_differences(task, n_classes, eps, labels, normalize):
    rng = np.random.default_rng(31 + n_classes)
    models = _random_models(n_classes, rng, normalize=normalize)
    weight = 0.7
    for row, y in zip(_rows(), labels):
        grads = ref.task_gradients(task, models, row, y, eps, weight)

        def loss(row=row, y=y):
            return ref.row_loss(task, models, row, y, eps, weight)

        checked_features = sorted(set(int(j) for j in row.features) | {9})
        for c, model in enumerate(models):
            g = grads[c]
            box = np.array([model.bias])

            def loss_with_bias(model=model, box=box):
                model.bias = float(box[0])
                return loss()

            np.testing.assert_allclose(g["bias"], _fd(loss_with_bias, box, 0), rtol=1e-6, atol=1e-9)
            model.bias = float(box[0])
            for j in checked_features:
                np.testing.assert_allclose(g["linear"][j], _fd(loss, model.linear, j),
                                           rtol=1e-6, atol=1e-9, err_msg=f"linear[{j}]")
                for d in range(K):
                    np.testing.assert_allclose(g["factors"][j, d], _fd(loss, model.factors, (j, d)),
                                               rtol=1e-6, atol=1e-9, err_msg=f"factors[{j}, {d}]")
            assert g["field_matrices"].shape == model.field_matrices.shape
            assert g["field_weights"] is None
            for a, b in _upper_pairs():
                for r, s in itertools.product(range(K), repeat=2):
                    index = (a, b, r, s)
                    np.testing.assert_allclose(g["field_matrices"][index],
                                               _fd(loss, model.field_matrices, index),
                                               rtol=1e-6, atol=1e-9, err_msg=f"M{index}")
            # the lower triangle is no parameter: zero gradient, and the score ignores it
            for a, b in _lower_pairs():
                assert not g["field_matrices"][a, b].any()
                assert _fd(loss, model.field_matrices, (a, b, 0, 1)) == 0.0


def test_logistic_gradients_match_finite_differences():
    # the original API: labels -1/+1, logistic loss
    rng = np.random.default_rng(5)
    model = ref.RefModel.random("fmfm", N_FEATURES, N_FIELDS, K, rng, scale=0.6,
                                use_bias=False, use_linear=False)
    for row, y in zip(_rows(), itertools.cycle([1, -1])):
        grads = ref.gradients(model, row, y)

        def loss(row=row, y=y):
            return ref.logistic_loss(y, ref.score(model, row))

        assert grads["bias"] == 0.0 and not grads["linear"].any()
        for index in np.ndindex(model.factors.shape):
            np.testing.assert_allclose(grads["factors"][index], _fd(loss, model.factors, index),
                                       rtol=1e-6, atol=1e-9)
        for index in np.ndindex(model.field_matrices.shape):
            np.testing.assert_allclose(grads["field_matrices"][index],
                                       _fd(loss, model.field_matrices, index), rtol=1e-6, atol=1e-9)


def test_single_entry_and_empty_rows_have_no_pair_gradient():
    model = ref.RefModel.random("fmfm", N_FEATURES, N_FIELDS, K, np.random.default_rng(3))
    for row in (ref.make_row([1], [4], [2.0]), ref.make_row([], [], [])):
        g = ref.gradients(model, row, 1)
        assert not g["factors"].any() and not g["field_matrices"].any()
    assert ref.score(model, ref.make_row([1], [4], [2.0])) == pytest.approx(
        model.bias + model.linear[4], rel=1e-15)


# ---------------------------------------------------------------------------
# Score: FwFM and FM as special cases, order independence
# ---------------------------------------------------------------------------


def _fwfm_and_fmfm(rng, normalize=True):
    fwfm = ref.RefModel.random("fwfm", N_FEATURES, N_FIELDS, K, rng, scale=0.5, normalize=normalize)
    fmfm = ref.RefModel.zeros("fmfm", N_FEATURES, N_FIELDS, K, normalize=normalize)
    fmfm.bias, fmfm.linear, fmfm.factors = fwfm.bias, fwfm.linear.copy(), fwfm.factors.copy()
    for a, c in itertools.product(range(N_FIELDS), repeat=2):
        fmfm.field_matrices[a, c] = fwfm.field_weights[a, c] * np.eye(K)
    return fwfm, fmfm


@pytest.mark.parametrize("normalize", [False, True])
def test_fwfm_is_the_scaled_identity_case(normalize):
    rng = np.random.default_rng(17)
    fwfm, fmfm = _fwfm_and_fmfm(rng, normalize)
    rows = _rows() + ref.random_rows(rng, 10, N_FEATURES, N_FIELDS, max_nnz=6, distinct_features=False)
    for row in rows:
        assert ref.score(fmfm, row) == pytest.approx(ref.score(fwfm, row), rel=1e-13, abs=1e-15)
        # the same factor gradients, and d/dr = trace(d/dM) for M = r I
        g_w = ref.gradients(fwfm, row, 1)
        g_m = ref.gradients(fmfm, row, 1)
        np.testing.assert_allclose(g_m["factors"], g_w["factors"], rtol=1e-12, atol=1e-15)
        for a, c in _upper_pairs():
            assert np.trace(g_m["field_matrices"][a, c]) == pytest.approx(
                g_w["field_weights"][a, c], rel=1e-12, abs=1e-15)


def test_identity_matrices_score_as_fm():
    rng = np.random.default_rng(19)
    fm = ref.RefModel.random("fm", N_FEATURES, N_FIELDS, K, rng, scale=0.5)
    fmfm = ref.RefModel.zeros("fmfm", N_FEATURES, N_FIELDS, K)
    fmfm.bias, fmfm.linear, fmfm.factors = fm.bias, fm.linear.copy(), fm.factors.copy()
    for row in _rows():
        assert ref.score(fmfm, row) == pytest.approx(ref.score(fm, row), rel=1e-13, abs=1e-15)


def test_score_by_hand_with_out_of_order_and_same_field_pairs():
    model = ref.RefModel.zeros("fmfm", 3, 2, 2, use_bias=False, use_linear=False, normalize=False)
    model.factors[:] = [[1.0, 2.0], [0.5, -1.0], [3.0, 0.25]]
    P = np.array([[1.0, 2.0], [-3.0, 0.5]])       # M[0, 1]
    Q = np.array([[2.0, 4.0], [0.0, -1.0]])       # M[1, 1], not symmetric
    model.field_matrices[0, 1] = P
    model.field_matrices[1, 0] = P.T
    model.field_matrices[1, 1] = Q
    # entries: (field 1, feature 0), (field 0, feature 1), (field 1, feature 2)
    row = ref.make_row([1, 0, 1], [0, 1, 2], [1.0, 2.0, 0.5])
    v0, v1, v2 = model.factors
    # pair (0, 1): lower field is entry 1 -> v1^T P v0
    p01 = 0.5 * (1.0 * 1.0 + 2.0 * 2.0) + -1.0 * (-3.0 * 1.0 + 0.5 * 2.0)    # = 4.5
    # pair (0, 2): same field 1 -> v0^T (Q + Q^T)/2 v2, S = [[2, 2], [2, -1]]
    p02 = 1.0 * (2.0 * 3.0 + 2.0 * 0.25) + 2.0 * (2.0 * 3.0 - 1.0 * 0.25)   # = 18.0
    # pair (1, 2): lower field is entry 1 -> v1^T P v2
    p12 = 0.5 * (1.0 * 3.0 + 2.0 * 0.25) + -1.0 * (-3.0 * 3.0 + 0.5 * 0.25)  # = 10.625
    assert float(v1 @ P @ v0) == p01 and float(v0 @ (Q + Q.T) @ v2) / 2 == p02
    assert float(v1 @ P @ v2) == p12
    expected = p01 * 2.0 + p02 * 0.5 + p12 * 1.0
    assert ref.score(model, row) == pytest.approx(expected, rel=1e-15)


def test_score_is_independent_of_entry_order_and_of_the_lower_triangle():
    rng = np.random.default_rng(23)
    model = ref.RefModel.random("fmfm", N_FEATURES, N_FIELDS, K, rng, scale=0.7)
    rows = _rows() + ref.random_rows(rng, 6, N_FEATURES, N_FIELDS, max_nnz=6, distinct_features=False)
    for row in rows:
        t = ref.score(model, row)
        g = ref.gradients(model, row, 1)
        for _ in range(4):
            p = rng.permutation(len(row.features))
            permuted = ref.make_row(row.fields[p], row.features[p], row.values[p])
            assert ref.score(model, permuted) == pytest.approx(t, rel=1e-12, abs=1e-14)
            g_p = ref.gradients(model, permuted, 1)
            np.testing.assert_allclose(g_p["factors"], g["factors"], rtol=1e-10, atol=1e-14)
            np.testing.assert_allclose(g_p["field_matrices"], g["field_matrices"], rtol=1e-10, atol=1e-14)
    # the lower triangle is never read, and a diagonal pair reads only M + M^T
    other = model.copy()
    for a, c in _lower_pairs():
        other.field_matrices[a, c] = rng.normal(size=(K, K))
    for a in range(N_FIELDS):
        other.field_matrices[a, a] = model.field_matrices[a, a].T
    for row in rows:
        assert ref.score(other, row) == pytest.approx(ref.score(model, row), rel=1e-12, abs=1e-14)


# ---------------------------------------------------------------------------
# One training step worked out by hand
# ---------------------------------------------------------------------------

ETA = 0.1
L2 = {"bias": 0.01, "linear": 0.02, "factors": 0.05}
L1 = 0.001          # ftrl only, on linear and factors
BETA1, BETA2, ADAM_EPS, FTRL_BETA = 0.9, 0.999, 1e-8, 1.0


def _by_hand_step(optimizer, w, g, l2=0.0, l1=0.0, rowwise=False):
    """One optimizer step of a block w (1-D) with data gradient g from a
    fresh state, first step of the run.  Returns (new w, state dict)."""
    w = np.asarray(w, dtype=np.float64)
    g = np.asarray(g, dtype=np.float64)
    if optimizer == "ftrl":
        alpha = ETA
        z0 = np.where(w == 0.0, 0.0, -(w * (FTRL_BETA / alpha + l2) + np.sign(w) * l1))
        sigma = np.abs(g) / alpha                      # (sqrt(0 + g^2) - sqrt(0)) / alpha
        z = z0 + g - sigma * w
        n = g * g
        new = np.where(np.abs(z) <= l1, 0.0,
                       -(z - np.sign(z) * l1) / ((FTRL_BETA + np.sqrt(n)) / alpha + l2))
        return new, {"z": z, "n": n}
    g = g + l2 * w
    if optimizer == "sgd":
        return w - ETA * g, {}
    if optimizer == "adagrad":
        G = 1.0 + g * g
        return w - ETA * g / np.sqrt(G), {"G": G}
    if optimizer == "rowwise-adagrad":
        G = 1.0 + np.mean(g * g)
        return w - ETA * g / math.sqrt(G), {"G": G}
    if optimizer == "adam":
        m = (1 - BETA1) * g
        v = (1 - BETA2) * g * g
        step = ETA * math.sqrt(1 - BETA2) / (1 - BETA1)
        return w - step * m / (np.sqrt(v) + ADAM_EPS), {"m": m, "v": v}
    raise AssertionError(optimizer)


def _tiny_model():
    model = ref.RefModel.zeros("fmfm", n_features=3, n_fields=2, k=2)
    model.bias = 0.1
    model.linear[:] = [0.2, -0.3, 0.6]
    model.factors[:] = [[0.5, -0.1], [-0.25, 0.4], [7.0, 7.0]]
    model.field_matrices[0, 1] = [[1.2, 0.3], [-0.4, 0.9]]
    model.field_matrices[1, 0] = model.field_matrices[0, 1].T
    model.field_matrices[0, 0] = [[2.0, 1.0], [0.0, 3.0]]
    model.field_matrices[1, 1] = [[0.5, -2.0], [1.0, 1.5]]
    return model


def _train_one(model, rows, labels, optimizer, **extra):
    return ref.train_matrix(
        [model], rows, labels, None, task="binary", optimizer=optimizer, eta=ETA,
        l2_bias=L2["bias"], l2_linear=L2["linear"], l2_factors=L2["factors"],
        l1=L1 if optimizer == "ftrl" else 0.0, adam_beta1=BETA1, adam_beta2=BETA2,
        adam_eps=ADAM_EPS, ftrl_beta=FTRL_BETA, **extra)


@pytest.mark.parametrize("optimizer", ref.OPTIMIZERS)
def test_one_step_by_hand_two_entries(optimizer):
    # entry 0: field 1, feature 0; entry 1: field 0, feature 1 (fields out of order)
    model = _tiny_model()
    before = model.copy()
    row = ref.make_row([1, 0], [0, 1], [1.0, 2.0])
    state, losses = _train_one(model, [row], [1], optimizer)

    # r = 1/5: xt = [sqrt(.2), 2 sqrt(.2)], xt0 xt1 = 0.4
    xt0, xt1 = math.sqrt(0.2), 2 * math.sqrt(0.2)
    v = 0.4
    b, w0, w1 = 0.1, 0.2, -0.3
    V0, V1 = np.array([0.5, -0.1]), np.array([-0.25, 0.4])
    P = np.array([[1.2, 0.3], [-0.4, 0.9]])
    # the lower field is entry 1's: phi = V1^T P V0
    phi = sum(V1[r] * P[r, c] * V0[c] for r in range(2) for c in range(2))
    t = b + w0 * xt0 + w1 * xt1 + v * phi
    kappa = 1.0 / (1.0 + math.exp(-t)) - 1.0
    assert losses[0] == pytest.approx(math.log(1.0 + math.exp(-t)), rel=1e-14)

    g_V0 = kappa * v * np.array([P[0, c] * V1[0] + P[1, c] * V1[1] for c in range(2)])   # P^T V1
    g_V1 = kappa * v * np.array([P[r, 0] * V0[0] + P[r, 1] * V0[1] for r in range(2)])   # P V0
    g_P = kappa * v * np.array([[V1[r] * V0[c] for c in range(2)] for r in range(2)])  # V1 V0^T
    l1 = L1 if optimizer == "ftrl" else 0.0
    rowwise = optimizer == "rowwise-adagrad"
    exp_b, st_b = _by_hand_step(optimizer, [b], [kappa], L2["bias"])
    exp_w0, st_w0 = _by_hand_step(optimizer, [w0], [kappa * xt0], L2["linear"], l1)
    exp_w1, _ = _by_hand_step(optimizer, [w1], [kappa * xt1], L2["linear"], l1)
    exp_V0, st_V0 = _by_hand_step(optimizer, V0, g_V0, L2["factors"], l1, rowwise)
    exp_V1, _ = _by_hand_step(optimizer, V1, g_V1, L2["factors"], l1, rowwise)
    exp_P = np.zeros((2, 2))
    st_P = []
    for r in range(2):  # matrix row by matrix row, no L1/L2
        exp_P[r], st = _by_hand_step(optimizer, P[r], g_P[r], 0.0, 0.0, rowwise)
        st_P.append(st)

    tol = dict(rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(model.bias, exp_b[0], **tol)
    np.testing.assert_allclose(model.linear, [exp_w0[0], exp_w1[0], 0.6], **tol)
    np.testing.assert_allclose(model.factors[:2], [exp_V0, exp_V1], **tol)
    np.testing.assert_array_equal(model.factors[2], [7.0, 7.0])
    np.testing.assert_allclose(model.field_matrices[0, 1], exp_P, **tol)
    np.testing.assert_array_equal(model.field_matrices[1, 0], model.field_matrices[0, 1].T)
    for a in range(2):  # same-field matrices: untouched by this row
        np.testing.assert_array_equal(model.field_matrices[a, a], before.field_matrices[a, a])

    cs = state["classes"][0]
    for slot, value in st_b.items():
        np.testing.assert_allclose(cs[slot]["bias"], value[0] if np.ndim(value) else value, **tol)
    for slot, value in st_w0.items():
        np.testing.assert_allclose(cs[slot]["linear"][0], np.reshape(value, -1)[0], **tol)
    for slot, value in st_V0.items():
        np.testing.assert_allclose(cs[slot]["factors"][0], value, **tol)
    for r in range(2):
        for slot, value in st_P[r].items():
            np.testing.assert_allclose(cs[slot]["field_matrices"][0, 1, r], value, **tol)
    if rowwise:
        assert cs["G"]["field_matrices"].shape == (2, 2, 2)
        assert cs["G"]["factors"].shape == (3,)
    for slot in cs:  # the state of the untouched and the lower pairs is as initialised
        fresh = ref.init_state([before], optimizer, l1=l1, l2_bias=L2["bias"],
                               l2_linear=L2["linear"], l2_factors=L2["factors"],
                               ftrl_beta=FTRL_BETA, eta=ETA)["classes"][0][slot]["field_matrices"]
        for pair in ((0, 0), (1, 1), (1, 0)):
            np.testing.assert_array_equal(cs[slot]["field_matrices"][pair], fresh[pair])


@pytest.mark.parametrize("optimizer", ["adagrad", "rowwise-adagrad"])
def test_one_step_by_hand_repeated_feature_in_one_field(optimizer):
    # entries: (field 0, feature 0), (field 1, feature 1), (field 0, feature 0)
    # pairs: (0,1) -> M[0,1] in order; (0,2) -> M[0,0] same field; (1,2) -> M[0,1] out of order
    model = _tiny_model()
    row = ref.make_row([0, 1, 0], [0, 1, 0], [1.0, 2.0, 0.5])
    state, _ = _train_one(model, [row], [0], optimizer)

    norm = math.sqrt(1.0 + 4.0 + 0.25)
    xt = np.array([1.0, 2.0, 0.5]) / norm
    V0, V1 = np.array([0.5, -0.1]), np.array([-0.25, 0.4])
    P = np.array([[1.2, 0.3], [-0.4, 0.9]])
    Q = np.array([[2.0, 1.0], [0.0, 3.0]])
    S = (Q + Q.T) / 2
    t = (0.1 + 0.2 * xt[0] - 0.3 * xt[1] + 0.2 * xt[2]
         + xt[0] * xt[1] * (V0 @ P @ V1) + xt[0] * xt[2] * (V0 @ S @ V0)
         + xt[1] * xt[2] * (V0 @ P @ V1))
    kappa = 1.0 / (1.0 + math.exp(-t))           # label 0: sigmoid(t) - 0

    # every gradient from the start-of-row values
    g_e0 = kappa * (xt[0] * xt[1] * (P @ V1) + xt[0] * xt[2] * (S @ V0))
    g_e1 = kappa * (xt[0] * xt[1] + xt[1] * xt[2]) * (P.T @ V0)
    g_e2 = kappa * (xt[0] * xt[2] * (S @ V0) + xt[1] * xt[2] * (P @ V1))
    g_P = kappa * (xt[0] * xt[1] + xt[1] * xt[2]) * np.outer(V0, V1)
    g_Q = kappa * xt[0] * xt[2] * np.outer(V0, V0)

    def accumulate(G, g):
        return G + (np.mean(g * g) if optimizer == "rowwise-adagrad" else g * g)

    # feature 0 is stepped twice, in row order, each time with L2 of its start value
    lam = L2["factors"]
    g = g_e0 + lam * V0
    G = accumulate(1.0, g)
    w = V0 - ETA * g / np.sqrt(G)
    g = g_e2 + lam * V0
    G = accumulate(G, g)
    w = w - ETA * g / np.sqrt(G)
    np.testing.assert_allclose(model.factors[0], w, rtol=1e-12)
    np.testing.assert_allclose(state["classes"][0]["G"]["factors"][0], G, rtol=1e-12)
    g = g_e1 + lam * V1
    G1 = accumulate(1.0, g)
    np.testing.assert_allclose(model.factors[1], V1 - ETA * g / np.sqrt(G1), rtol=1e-12)

    # each matrix once, with the sum over its pairs, row by row, no L2
    for pair, start, grad in (((0, 1), P, g_P), ((0, 0), Q, g_Q)):
        for r in range(2):
            G = accumulate(1.0, grad[r])
            np.testing.assert_allclose(model.field_matrices[pair][r],
                                       start[r] - ETA * grad[r] / np.sqrt(G), rtol=1e-12)
            np.testing.assert_allclose(state["classes"][0]["G"]["field_matrices"][pair][r], G,
                                       rtol=1e-12)
    np.testing.assert_array_equal(model.field_matrices[1, 0], model.field_matrices[0, 1].T)
    np.testing.assert_array_equal(model.field_matrices[1, 1], [[0.5, -2.0], [1.0, 1.5]])


def test_clipping_is_per_matrix_row():
    rng = np.random.default_rng(41)
    model = ref.RefModel.random("fmfm", N_FEATURES, N_FIELDS, K, rng, scale=0.8)
    row = ref.make_row([2, 0, 2, 1], [1, 4, 6, 8], [1.0, 0.5, 1.5, 2.0])
    before = model.copy()
    g = ref.task_gradients("binary", [before], row, 1)[0]["field_matrices"]
    eta, clip = 0.3, 1e-5
    ref.train_matrix([model], [row], [1], None, task="binary", optimizer="sgd", eta=eta,
                     clip_norm=clip)
    moved = before.field_matrices - model.field_matrices
    touched = {ref.field_pair(a, c) for a, c in itertools.combinations(row.fields, 2)}
    for a, c in _upper_pairs():
        if (a, c) not in touched:
            np.testing.assert_array_equal(moved[a, c], 0.0)
            continue
        for r in range(K):
            norm = np.linalg.norm(g[a, c, r])
            assert norm > clip
            np.testing.assert_allclose(moved[a, c, r], eta * clip * g[a, c, r] / norm, rtol=1e-9)
    _assert_mirrored(model.field_matrices)


# ---------------------------------------------------------------------------
# Per-row mode, mini-batch mode, the original API
# ---------------------------------------------------------------------------


def _hyper(optimizer):
    return dict(optimizer=optimizer, eta=0.05, l2_bias=0.01, l2_linear=0.02, l2_factors=0.03,
                l1=0.002 if optimizer == "ftrl" else 0.0, clip_norm=2.0)


@pytest.mark.parametrize("optimizer", ref.OPTIMIZERS)
@pytest.mark.parametrize("task,n_classes,eps,labels", TASK_CASES)
def test_a_batch_of_one_row_is_a_per_row_step_for_distinct_features(optimizer, task, n_classes,
                                                                      eps, labels):
    # fields repeat (same-field pairs) but features do not: every block is
    # stepped once either way
    rows = [ref.make_row([2, 0, 2, 1], [1, 4, 6, 8], [1.0, 0.5, 1.5, 2.0]),
            ref.make_row([1, 1], [3, 0], [0.4, 1.2])]
    rng = np.random.default_rng(43)
    for row, y in zip(rows, labels):
        models = _random_models(n_classes, rng)
        per_row = [m.copy() for m in models]
        batch = [m.copy() for m in models]
        common = dict(task=task, label_smoothing=eps, weights=[0.8], **_hyper(optimizer))
        s1, l1 = ref.train_matrix(per_row, [row], [y], None, batch_size=1, **common)
        s2, l2 = ref.train_matrix(batch, [row], [y], None, batch_size=4, **common)
        assert l1 == l2
        for a, b in zip(per_row, batch):
            assert a.bias == b.bias
            np.testing.assert_array_equal(a.linear, b.linear)
            np.testing.assert_array_equal(a.factors, b.factors)
            np.testing.assert_array_equal(a.field_matrices, b.field_matrices)
        for c1, c2 in zip(s1["classes"], s2["classes"]):
            for slot in c1:
                np.testing.assert_array_equal(c1[slot]["field_matrices"], c2[slot]["field_matrices"])
                np.testing.assert_array_equal(c1[slot]["factors"], c2[slot]["factors"])


def test_a_repeated_feature_is_stepped_twice_per_row_but_once_per_batch():
    row = ref.make_row([0, 2, 0], [5, 1, 5], [1.0, 0.5, 1.5])
    model = ref.RefModel.random("fmfm", N_FEATURES, N_FIELDS, K, np.random.default_rng(47), scale=0.8)
    runs = {}
    for optimizer in ("sgd", "adagrad"):
        for batch_size in (1, 2):
            m = model.copy()
            ref.train_matrix([m], [row], [1], None, task="binary", optimizer=optimizer, eta=0.5,
                             batch_size=batch_size)
            runs[optimizer, batch_size] = m
    # SGD without L2: two steps from start-value gradients add up to the one summed step
    np.testing.assert_allclose(runs["sgd", 1].factors, runs["sgd", 2].factors, rtol=1e-12)
    # AdaGrad: the second per-row step sees the grown accumulator
    assert not np.allclose(runs["adagrad", 1].factors[5], runs["adagrad", 2].factors[5], rtol=1e-6)
    np.testing.assert_array_equal(runs["adagrad", 1].factors[1], runs["adagrad", 2].factors[1])
    np.testing.assert_array_equal(runs["adagrad", 1].field_matrices, runs["adagrad", 2].field_matrices)


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad"])
def test_full_batch_is_one_gradient_step(optimizer):
    rng = np.random.default_rng(53)
    model = ref.RefModel.random("fmfm", N_FEATURES, N_FIELDS, K, rng, scale=0.5)
    rows = _rows()
    labels = [i % 2 for i in range(len(rows))]
    weights = rng.uniform(0.2, 2.0, size=len(rows))
    before = model.copy()
    eta, l2f = 0.3, 0.2
    ref.train_matrix([model], rows, labels, None, task="binary", optimizer=optimizer, eta=eta,
                     weights=weights, l2_factors=l2f, batch_size=len(rows))
    n = len(rows)
    g = sum(s * ref.gradients(before, r, 1 if y else -1)["field_matrices"]
            for s, r, y in zip(weights, rows, labels)) / n
    g_V = sum(s * ref.gradients(before, r, 1 if y else -1)["factors"]
              for s, r, y in zip(weights, rows, labels)) / n
    touched = {ref.field_pair(int(r.fields[i]), int(r.fields[l]))
               for r in rows for i in range(len(r.fields)) for l in range(i + 1, len(r.fields))}

    def step(w, grad):
        return w - eta * grad if optimizer == "sgd" else w - eta * grad / np.sqrt(1.0 + grad * grad)

    for a, c in _upper_pairs():
        expected = step(before.field_matrices[a, c], g[a, c]) if (a, c) in touched \
            else before.field_matrices[a, c]
        np.testing.assert_allclose(model.field_matrices[a, c], expected, rtol=1e-12, atol=1e-15)
    _assert_mirrored(model.field_matrices)
    for j in range(N_FEATURES):
        if any(j in r.features for r in rows):
            expected = step(before.factors[j], g_V[j] + l2f * before.factors[j])
        else:
            expected = before.factors[j]
        np.testing.assert_allclose(model.factors[j], expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad"])
def test_per_row_mode_matches_the_original_steps(optimizer):
    rng = np.random.default_rng(59)
    model = ref.RefModel.random("fmfm", N_FEATURES, N_FIELDS, K, rng, scale=0.5)
    rows = _rows()
    labels = [i % 2 for i in range(len(rows))]
    order = [list(rng.permutation(len(rows))) for _ in range(2)]
    new = model.copy()
    state, _ = ref.train_matrix([new], rows, labels, order, task="binary", optimizer=optimizer,
                                eta=0.2, epochs=2, l2_linear=0.03, l2_factors=0.03)
    old = model.copy()
    old_state = ref.train(old, rows, [1 if y else -1 for y in labels], order, epochs=2,
                          optimizer=optimizer, eta=0.2, lam=0.03)
    for name in ("linear", "factors", "field_matrices"):
        np.testing.assert_allclose(getattr(new, name), getattr(old, name), rtol=1e-12, atol=1e-15)
        if optimizer == "adagrad":
            np.testing.assert_allclose(state["classes"][0]["G"][name], old_state[name], rtol=1e-12)
    _assert_mirrored(old.field_matrices)


@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize("optimizer", ref.OPTIMIZERS)
@pytest.mark.parametrize("task,n_classes,eps,labels", TASK_CASES)
def test_every_cell_trains_and_keeps_the_lower_triangle(task, n_classes, eps, labels, optimizer,
                                                        batch_size):
    rng = np.random.default_rng(61)
    n_fields = N_FIELDS + 1  # no row has the last field: its pairs are never touched
    models = [ref.RefModel.random("fmfm", N_FEATURES, n_fields, K, rng, scale=0.5)
              for _ in range(n_classes)]
    rows = _rows()
    start = [m.copy() for m in models]
    state, losses = ref.train_matrix(
        models, rows, labels, None, task=task, epochs=2, label_smoothing=eps,
        weights=np.linspace(0.5, 1.5, len(rows)), batch_size=batch_size,
        schedule="constant" if optimizer == "ftrl" else "cosine", **_hyper(optimizer))
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    touched = {ref.field_pair(int(r.fields[i]), int(r.fields[l]))
               for r in rows for i in range(len(r.fields)) for l in range(i + 1, len(r.fields))}
    assert set(_upper_pairs()) <= touched < set(_upper_pairs(n_fields))
    for model, before, cstate in zip(models, start, state["classes"]):
        _assert_mirrored(model.field_matrices)
        for a, c in _upper_pairs(n_fields):
            changed = not np.array_equal(model.field_matrices[a, c], before.field_matrices[a, c])
            assert changed == ((a, c) in touched), (a, c)
        if optimizer == "rowwise-adagrad":
            assert cstate["G"]["field_matrices"].shape == (n_fields, n_fields, K)
            assert cstate["G"]["factors"].shape == (N_FEATURES,)


def test_ftrl_initial_state_reproduces_the_matrices():
    model = ref.RefModel.random("fmfm", N_FEATURES, N_FIELDS, K, np.random.default_rng(67))
    state = ref.init_state([model], "ftrl", l1=0.3, l2_factors=0.2, ftrl_beta=1.5, eta=0.2)
    cs = state["classes"][0]
    # no L1/L2 on the matrices: z = -w0 beta / alpha
    np.testing.assert_allclose(cs["z"]["field_matrices"], -model.field_matrices * 1.5 / 0.2, rtol=1e-15)
    assert not cs["n"]["field_matrices"].any()
    w = ref.ftrl_weight(cs["z"]["field_matrices"], cs["n"]["field_matrices"], 0.2, 1.5, 0.0, 0.0)
    np.testing.assert_allclose(w, model.field_matrices, rtol=1e-14)
    # the other optimizers start the matrices' state as every other weight's
    zero = ref.RefModel.zeros("fmfm", 4, 2, 2)
    s = ref.init_state([zero], "adam")
    assert not s["classes"][0]["m"]["field_matrices"].any()
    s = ref.init_state([zero], "adagrad")
    assert (s["classes"][0]["G"]["field_matrices"] == 1.0).all()


def test_training_decreases_loss_on_planted_labels():
    rng = np.random.default_rng(71)
    planted = ref.RefModel.random("fmfm", 12, 3, K, rng, scale=1.5, normalize=False)
    rows = ref.random_rows(rng, 60, 12, 3, max_nnz=4)
    labels = [1 if ref.score(planted, r) > 0 else 0 for r in rows]
    model = ref.RefModel.random("fmfm", 12, 3, K, rng, scale=0.1)
    model.field_matrices[:] = np.eye(K)
    order = [rng.permutation(len(rows)) for _ in range(4)]
    _, losses = ref.train_matrix([model], rows, labels, order, task="binary", optimizer="adagrad",
                                 eta=0.3, epochs=4, l2_factors=1e-4)
    assert losses[-1] < 0.85 * losses[0]
