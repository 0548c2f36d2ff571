import numpy as np
import pytest

from fmcli import metrics


def brute_auc(y, s):
    pos, neg = s[y > 0], s[y <= 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_pairwise_count_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    s = rng.integers(0, 20, 300).astype(float)  # many ties
    assert metrics.auc(y, s) == pytest.approx(brute_auc(y, s), abs=1e-12)


def test_auc_single_class_is_nan():
    assert np.isnan(metrics.auc(np.ones(5), np.arange(5.0)))


def test_average_ranks():
    np.testing.assert_array_equal(metrics.average_ranks([3.0, 1.0, 3.0, 2.0]), [3.5, 1.0, 3.5, 2.0])


def test_sigmoid_is_stable_and_exact():
    s = np.array([-1000.0, -30.0, 0.0, 2.0, 1000.0])
    p = metrics.sigmoid(s)
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p[1:4], 1 / (1 + np.exp(-s[1:4])), rtol=1e-15)
    assert p[0] == 0.0 and p[-1] == 1.0


def test_logloss_from_scores_equals_logloss_of_probabilities():
    rng = np.random.default_rng(1)
    s = rng.normal(0, 3, 1000)
    y = rng.choice([-1.0, 1.0], 1000)
    assert metrics.logloss_from_scores(y, s) == pytest.approx(metrics.logloss(y, metrics.sigmoid(s)), rel=1e-9)


# ---------------------------------------------------------------------------
# helpers

def reference_auc(labels, scores):
    """The unweighted rank-sum AUC exactly as first shipped (must stay bit-identical)."""
    y = np.asarray(labels) > 0
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    ranks = metrics.average_ranks(scores)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def brute_weighted_auc(y, s, w):
    pos, neg = y > 0, y <= 0
    sp, sn, wp, wn = s[pos], s[neg], w[pos], w[neg]
    pair = wp[:, None] * wn[None, :]
    wins = (pair * (sp[:, None] > sn[None, :])).sum() + 0.5 * (pair * (sp[:, None] == sn[None, :])).sum()
    return wins / (wp.sum() * wn.sum())


def random_binary(seed, n=200):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    s = rng.integers(-6, 7, n) / 2.0          # many ties
    return rng, y, s


# ---------------------------------------------------------------------------
# hand-computed cases

def test_logloss_hand_computed():
    expected = -(np.log(0.8) + np.log(0.6)) / 2
    assert metrics.logloss([1, 0], [0.8, 0.4]) == pytest.approx(expected, rel=1e-14)
    assert metrics.logloss([1, -1], [0.8, 0.4]) == pytest.approx(expected, rel=1e-14)
    weighted = -(3 * np.log(0.8) + 1 * np.log(0.6)) / 4
    assert metrics.logloss([1, 0], [0.8, 0.4], weight=[3, 1]) == pytest.approx(weighted, rel=1e-14)


def test_logloss_clips_with_eps():
    assert metrics.logloss([1], [0.0], eps=1e-6) == pytest.approx(-np.log(1e-6), rel=1e-12)
    assert metrics.logloss([0], [1.0], eps=1e-6) == pytest.approx(-np.log(1e-6), rel=1e-9)


def test_logloss_from_scores_hand_computed():
    expected = (np.log(2.0) + np.log1p(np.exp(2.0))) / 2
    assert metrics.logloss_from_scores([1, -1], [0.0, 2.0]) == pytest.approx(expected, rel=1e-14)
    assert metrics.logloss_from_scores([1, 0], [0.0, 2.0]) == pytest.approx(expected, rel=1e-14)
    weighted = (1 * np.log(2.0) + 3 * np.log1p(np.exp(2.0))) / 4
    assert metrics.logloss_from_scores([1, 0], [0.0, 2.0], weight=[1, 3]) == pytest.approx(weighted, rel=1e-14)


def test_logloss_from_scores_is_stable_for_huge_scores():
    assert metrics.logloss_from_scores([0, 1], [1e4, -1e4]) == pytest.approx(1e4, rel=1e-12)
    assert metrics.logloss_from_scores([1, 0], [1e4, -1e4]) == 0.0


def test_auc_hand_computed():
    y = [0, 0, 1, 1]
    s = [0.1, 0.4, 0.35, 0.8]
    assert metrics.auc(y, s) == 0.75
    # pairs (w_pos * w_neg): 0.35 beats 0.1 (3*1), loses to 0.4; 0.8 beats both (1*1 + 1*2) -> 6 / (4 * 3)
    assert metrics.auc(y, s, weight=[1, 2, 3, 1]) == pytest.approx(0.5, rel=1e-14)
    # a tie counts one half
    assert metrics.auc([0, 1], [1.0, 1.0]) == 0.5
    assert metrics.auc([0, 1], [1.0, 1.0], weight=[2, 5]) == 0.5


def test_normalized_entropy_hand_computed():
    y = [1, 0, 0, 0]
    base = -(0.25 * np.log(0.25) + 0.75 * np.log(0.75))
    assert metrics.normalized_entropy(y, [0.5] * 4) == pytest.approx(np.log(2) / base, rel=1e-13)
    # weights [3, 1, 1, 1]: base rate 1/2, entropy log 2; logloss of 0.5 is log 2
    assert metrics.normalized_entropy(y, [0.5] * 4, weight=[3, 1, 1, 1]) == pytest.approx(1.0, rel=1e-13)


def test_calibration_bins_hand_computed():
    y = [1, 0, 1, 0]
    p = [0.1, 0.15, 0.9, 1.0]               # 1.0 belongs to the last bin
    table = metrics.calibration_bins(y, p, bins=10)
    assert [(b["lo"], b["hi"]) for b in table] == [(0.1, 0.2), (0.9, 1.0)]
    assert [b["count"] for b in table] == [2.0, 2.0]
    assert table[0]["mean_prob"] == pytest.approx(0.125) and table[0]["mean_label"] == 0.5
    assert table[1]["mean_prob"] == pytest.approx(0.95) and table[1]["mean_label"] == 0.5
    weighted = metrics.calibration_bins(y, p, bins=10, weight=[3, 1, 0, 2])
    assert [b["count"] for b in weighted] == [4.0, 2.0]
    assert weighted[0]["mean_prob"] == pytest.approx((0.3 + 0.15) / 4)
    assert weighted[0]["mean_label"] == pytest.approx(0.75)
    assert weighted[1]["mean_prob"] == pytest.approx(1.0) and weighted[1]["mean_label"] == 0.0


def test_calibration_bins_with_fractional_weights():
    (b,) = metrics.calibration_bins([1, 0], [0.3, 0.35], weight=[0.25, 0.25])
    assert b["count"] == 0.5
    assert b["mean_prob"] == pytest.approx(0.325, rel=1e-14) and b["mean_label"] == 0.5


def test_calibration_bins_skips_zero_weight_bins():
    table = metrics.calibration_bins([1, 0], [0.05, 0.95], bins=2, weight=[0, 1])
    assert [(b["lo"], b["hi"], b["count"]) for b in table] == [(0.5, 1.0, 1.0)]


def test_calibration_bins_rejects_bad_bin_counts():
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError):
            metrics.calibration_bins([1], [0.5], bins=bad)


def test_expected_calibration_error_hand_computed():
    y = [1, 0, 1, 0]
    p = [0.1, 0.15, 0.9, 1.0]
    assert metrics.expected_calibration_error(y, p) == pytest.approx((0.375 + 0.45) / 2, rel=1e-13)
    # weights [3, 1, 0, 2]: bin 1 has weight 4, |0.75 - 0.1125|; bin 9 has weight 2, |0 - 1|
    expected = (4 * abs(0.75 - 0.1125) + 2 * 1.0) / 6
    assert metrics.expected_calibration_error(y, p, weight=[3, 1, 0, 2]) == pytest.approx(expected, rel=1e-13)
    # one bin over everything: |mean label - mean prob|
    assert metrics.expected_calibration_error(y, p, bins=1) == pytest.approx(abs(0.5 - 0.5375), rel=1e-13)


def test_expected_calibration_error_of_calibrated_bins_is_zero():
    # bin [0.2, 0.3): four rows at 0.25, one positive; bin [0.7, 0.8): four rows at 0.75, three positive
    y = [1, 0, 0, 0, 1, 1, 1, 0]
    p = [0.25] * 4 + [0.75] * 4
    assert metrics.expected_calibration_error(y, p) == pytest.approx(0.0, abs=1e-15)
    # the same predictions with the labels of the two bins swapped are off by 0.5 everywhere
    assert metrics.expected_calibration_error(y[4:] + y[:4], p) == pytest.approx(0.5, rel=1e-13)


def test_rmse_and_mae_hand_computed():
    y, pred = [1.0, 2.0, 3.0], [1.0, 3.0, 5.0]
    assert metrics.rmse(y, pred) == pytest.approx(np.sqrt(5 / 3), rel=1e-14)
    assert metrics.mae(y, pred) == pytest.approx(1.0, rel=1e-14)
    assert metrics.rmse(y, pred, weight=[1, 0, 3]) == pytest.approx(np.sqrt(12 / 4), rel=1e-14)
    assert metrics.mae(y, pred, weight=[1, 0, 3]) == pytest.approx(6 / 4, rel=1e-14)


def test_multiclass_logloss_hand_computed():
    P = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.4, 0.3]])
    labels = [0, 2, 1]
    expected = -(np.log(0.7) + np.log(0.8) + np.log(0.4)) / 3
    assert metrics.multiclass_logloss(labels, P) == pytest.approx(expected, rel=1e-14)
    weighted = -(2 * np.log(0.7) + 0 * np.log(0.8) + 1 * np.log(0.4)) / 3
    assert metrics.multiclass_logloss(labels, P, weight=[2, 0, 1]) == pytest.approx(weighted, rel=1e-14)
    # float labels holding whole numbers are accepted
    assert metrics.multiclass_logloss(np.array(labels, dtype=float), P) == pytest.approx(expected, rel=1e-14)


def test_multiclass_logloss_clips_with_eps():
    assert metrics.multiclass_logloss([1], [[1.0, 0.0]], eps=1e-6) == pytest.approx(-np.log(1e-6), rel=1e-12)


def test_multiclass_logloss_from_scores_hand_computed():
    S = np.array([[0.0, np.log(3.0)], [1.0, 1.0]])
    expected = (-np.log(0.75) - np.log(0.5)) / 2
    assert metrics.multiclass_logloss_from_scores([1, 0], S) == pytest.approx(expected, rel=1e-14)


@pytest.mark.parametrize("seed", range(3))
def test_multiclass_logloss_from_scores_equals_logloss_of_softmax(seed):
    rng = np.random.default_rng(seed)
    S = rng.normal(0, 3, (500, 5))
    labels = rng.integers(0, 5, 500)
    w = rng.uniform(0, 2, 500)
    P = metrics.softmax(S)
    assert metrics.multiclass_logloss_from_scores(labels, S) == pytest.approx(metrics.multiclass_logloss(labels, P), rel=1e-12)
    assert metrics.multiclass_logloss_from_scores(labels, S, weight=w) == pytest.approx(
        metrics.multiclass_logloss(labels, P, weight=w), rel=1e-12)


def test_multiclass_logloss_from_scores_is_stable_for_huge_scores():
    S = np.array([[1e4, 1e4 - np.log(3.0)]])
    assert metrics.multiclass_logloss_from_scores([1], S) == pytest.approx(-np.log(0.25), rel=1e-9)


def test_softmax_hand_computed_and_stable():
    np.testing.assert_allclose(metrics.softmax([[0.0, np.log(3.0)]]), [[0.25, 0.75]], rtol=1e-14)
    big = metrics.softmax(np.array([[1e4, 1e4, 1e4 - np.log(2.0)], [-1e4, 0.0, 1e4]]))
    assert np.all(np.isfinite(big))
    np.testing.assert_allclose(big, [[0.4, 0.4, 0.2], [0.0, 0.0, 1.0]], rtol=1e-12, atol=1e-300)
    rng = np.random.default_rng(0)
    S = rng.normal(0, 5, (50, 4))
    np.testing.assert_allclose(metrics.softmax(S).sum(axis=1), 1.0, rtol=1e-14)
    np.testing.assert_allclose(metrics.softmax(S + 1e4), metrics.softmax(S), rtol=1e-9)


def test_accuracy_hand_computed_with_ties():
    S = np.array([[1.0, 3.0, 2.0], [5.0, 5.0, 0.0], [0.0, 1.0, 1.0]])
    # row 0: argmax 1 (right); row 1: tie 0/1 -> 0 (wrong); row 2: tie 1/2 -> 1 (wrong)
    assert metrics.accuracy([1, 1, 2], S) == pytest.approx(1 / 3, rel=1e-14)
    assert metrics.accuracy([1, 0, 1], S) == 1.0
    assert metrics.accuracy([1, 1, 2], S, weight=[3, 1, 0]) == pytest.approx(0.75, rel=1e-14)


# ---------------------------------------------------------------------------
# AUC against brute force; the unweighted path is the original one

@pytest.mark.parametrize("seed", range(5))
def test_unweighted_auc_is_unchanged(seed):
    _, y, s = random_binary(seed, 1000)
    assert metrics.auc(y, s) == reference_auc(y, s)


@pytest.mark.parametrize("seed", range(5))
def test_weighted_auc_matches_pairwise_count_with_ties(seed):
    rng, y, s = random_binary(seed, 300)
    w = rng.uniform(0, 3, 300)
    w[rng.random(300) < 0.1] = 0.0
    assert metrics.auc(y, s, weight=w) == pytest.approx(brute_weighted_auc(y, s, w), rel=1e-12)


def test_weighted_auc_ignores_rows_of_zero_weight():
    y = np.array([0, 1, 0, 1])
    s = np.array([0.1, 0.9, 0.95, 0.2])
    assert metrics.auc(y, s, weight=[1, 1, 0, 0]) == 1.0
    assert np.isnan(metrics.auc(y, s, weight=[1, 0, 1, 0]))        # no positive weight


# ---------------------------------------------------------------------------
# weights: integer weights == repeated rows; equal weights == no weights

def _binary_case(seed):
    rng, y, s = random_binary(seed)
    p = metrics.sigmoid(s)
    return rng, y, s, p


BINARY_ON_SCORES = [metrics.logloss_from_scores, metrics.auc]
BINARY_ON_PROBS = [metrics.logloss, metrics.normalized_entropy, metrics.expected_calibration_error]
REGRESSION = [metrics.rmse, metrics.mae]
MULTICLASS_ON_PROBS = [metrics.multiclass_logloss, metrics.accuracy]
MULTICLASS_ON_SCORES = [metrics.multiclass_logloss_from_scores, metrics.accuracy]


def _cases(seed):
    """(name, fn, labels, predictions) for every metric on random data."""
    rng, y, s, p = _binary_case(seed)
    t = rng.normal(0, 1, y.size)
    labels = rng.integers(0, 4, y.size)
    S = rng.integers(-2, 3, (y.size, 4)).astype(float)      # argmax ties included
    P = metrics.softmax(S)
    out = []
    out += [(f.__name__, f, y, s) for f in BINARY_ON_SCORES]
    out += [(f.__name__, f, y, p) for f in BINARY_ON_PROBS]
    out += [(f.__name__, f, t, s) for f in REGRESSION]
    out += [(f.__name__ + "[P]", f, labels, P) for f in MULTICLASS_ON_PROBS]
    out += [(f.__name__ + "[S]", f, labels, S) for f in MULTICLASS_ON_SCORES]
    return rng, out


@pytest.mark.parametrize("seed", range(4))
def test_integer_weights_equal_repeated_rows(seed):
    rng, cases = _cases(seed)
    for name, fn, labels, preds in cases:
        w = rng.integers(0, 4, len(labels))
        rep_labels, rep_preds = np.repeat(labels, w, axis=0), np.repeat(preds, w, axis=0)
        weighted = fn(labels, preds, weight=w)
        assert weighted == pytest.approx(fn(rep_labels, rep_preds), rel=1e-10), name
        # and the weights matter: the unweighted value differs on this data
        assert weighted != pytest.approx(fn(labels, preds), rel=1e-10), name


@pytest.mark.parametrize("seed", range(3))
def test_integer_weights_equal_repeated_rows_for_calibration_bins(seed):
    rng, y, _, p = _binary_case(seed)
    w = rng.integers(0, 4, y.size)
    weighted = metrics.calibration_bins(y, p, bins=7, weight=w)
    repeated = metrics.calibration_bins(np.repeat(y, w), np.repeat(p, w), bins=7)
    assert len(weighted) == len(repeated) > 1
    for a, b in zip(weighted, repeated):
        assert a == pytest.approx(b, rel=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_equal_weights_equal_no_weights(seed):
    _, cases = _cases(seed)
    for name, fn, labels, preds in cases:
        assert fn(labels, preds, weight=np.full(len(labels), 2.5)) == pytest.approx(fn(labels, preds), rel=1e-12), name
    _, y, _, p = _binary_case(seed)
    assert metrics.calibration_bins(y, p, weight=np.full(y.size, 0.5)) == [
        dict(b, count=b["count"] / 2) for b in metrics.calibration_bins(y, p)]


def test_weights_are_validated():
    with pytest.raises(ValueError):
        metrics.logloss([1, 0], [0.5, 0.5], weight=[1, -1])
    with pytest.raises(ValueError):
        metrics.rmse([1, 0], [0.5, 0.5], weight=[1, 1, 1])
    with pytest.raises(ValueError):
        metrics.auc([1, 0], [0.5, 0.5], weight=[1, np.nan])


def test_mismatched_lengths_and_bad_class_labels_are_rejected():
    with pytest.raises(ValueError):
        metrics.logloss([1, 0, 1], [0.5, 0.5])
    with pytest.raises(ValueError):
        metrics.auc([1, 0, 1], [0.5, 0.5])
    with pytest.raises(ValueError):
        metrics.mae([1.0], [0.5, 0.5])
    with pytest.raises(ValueError):
        metrics.multiclass_logloss([0, 3], [[0.5, 0.5], [0.5, 0.5]])
    with pytest.raises(ValueError):
        metrics.accuracy([0, 0.5], [[0.5, 0.5], [0.5, 0.5]])
    with pytest.raises(ValueError):
        metrics.multiclass_logloss_from_scores([0, 1], [0.5, 0.5])


# ---------------------------------------------------------------------------
# normalized entropy and calibration properties

@pytest.mark.parametrize("rate", [0.01, 0.3, 0.5, 0.9])
def test_normalized_entropy_of_base_rate_predictor_is_one(rate):
    rng = np.random.default_rng(7)
    y = (rng.random(1000) < rate).astype(int)
    assert metrics.normalized_entropy(y, np.full(y.size, y.mean())) == pytest.approx(1.0, rel=1e-12)
    w = rng.uniform(0, 2, y.size)
    weighted_rate = np.dot(w, y) / w.sum()
    assert metrics.normalized_entropy(y, np.full(y.size, weighted_rate), weight=w) == pytest.approx(1.0, rel=1e-12)
    # a better-than-base-rate predictor scores below one
    assert metrics.normalized_entropy(y, np.where(y > 0, 0.99, 0.001)) < 1.0


def test_normalized_entropy_is_nan_for_one_class():
    assert np.isnan(metrics.normalized_entropy([1, 1], [0.5, 0.9]))
    assert np.isnan(metrics.normalized_entropy([0, 0], [0.5, 0.9]))


# ---------------------------------------------------------------------------
# empty input and zero total weight

ALL_1D = [metrics.logloss, metrics.logloss_from_scores, metrics.auc, metrics.normalized_entropy,
          metrics.expected_calibration_error, metrics.rmse, metrics.mae]
ALL_2D = [metrics.multiclass_logloss, metrics.multiclass_logloss_from_scores, metrics.accuracy]


@pytest.mark.filterwarnings("error")  # NaN by rule, not by 0/0
@pytest.mark.parametrize("fn", ALL_1D, ids=lambda f: f.__name__)
def test_empty_and_zero_weight_give_nan_1d(fn):
    assert np.isnan(fn(np.array([]), np.array([])))
    assert np.isnan(fn(np.array([1, 0]), np.array([0.2, 0.7]), weight=[0, 0]))


@pytest.mark.filterwarnings("error")  # NaN by rule, not by 0/0
@pytest.mark.parametrize("fn", ALL_2D, ids=lambda f: f.__name__)
def test_empty_and_zero_weight_give_nan_2d(fn):
    assert np.isnan(fn(np.array([], dtype=int), np.zeros((0, 3))))
    assert np.isnan(fn(np.array([], dtype=int), np.array([])))
    assert np.isnan(fn(np.array([1, 0]), np.array([[0.2, 0.8], [0.6, 0.4]]), weight=[0, 0]))


@pytest.mark.filterwarnings("error")  # NaN by rule, not by 0/0
def test_calibration_bins_of_nothing_is_empty():
    assert metrics.calibration_bins([], []) == []
    assert metrics.calibration_bins([1], [0.3], weight=[0]) == []


def test_softmax_of_nothing():
    assert metrics.softmax(np.zeros((0, 3))).shape == (0, 3)


@pytest.mark.filterwarnings("error")  # NaN by rule, not by 0/0
@pytest.mark.parametrize("task", ["binary", "regression", "multiclass"])
def test_evaluate_on_empty_input_is_all_nan(task):
    scores = np.zeros((0, 3)) if task == "multiclass" else np.array([])
    out = metrics.evaluate(task, np.array([]), scores)
    assert out and all(np.isnan(v) for v in out.values())


# ---------------------------------------------------------------------------
# evaluate, METRICS, DEFAULT_METRIC, is_better

EXPECTED_KEYS = {
    "binary": ["logloss", "auc", "ne", "ece"],
    "regression": ["rmse", "mae"],
    "multiclass": ["logloss", "accuracy"],
}


def test_evaluate_binary():
    rng, y, s, p = _binary_case(3)
    w = rng.uniform(0, 2, y.size)
    for weight in (None, w):
        out = metrics.evaluate("binary", y, s, weight=weight)
        assert list(out) == EXPECTED_KEYS["binary"]
        assert all(type(v) is float for v in out.values())
        assert out["logloss"] == pytest.approx(metrics.logloss_from_scores(y, s, weight=weight), rel=1e-14)
        assert out["auc"] == pytest.approx(metrics.auc(y, s, weight=weight), rel=1e-14)
        assert out["ne"] == pytest.approx(metrics.normalized_entropy(y, p, weight=weight), rel=1e-10)
        assert out["ece"] == pytest.approx(metrics.expected_calibration_error(y, p, weight=weight), rel=1e-14)


def test_evaluate_regression():
    rng = np.random.default_rng(0)
    y, s = rng.normal(size=50), rng.normal(size=50)
    out = metrics.evaluate("regression", y, s)
    assert list(out) == EXPECTED_KEYS["regression"]
    assert out == {"rmse": metrics.rmse(y, s), "mae": metrics.mae(y, s)}


def test_evaluate_multiclass():
    rng = np.random.default_rng(0)
    S, labels = rng.normal(size=(50, 3)), rng.integers(0, 3, 50)
    w = rng.uniform(0, 2, 50)
    out = metrics.evaluate("multiclass", labels, S, weight=w)
    assert list(out) == EXPECTED_KEYS["multiclass"]
    assert out["logloss"] == pytest.approx(metrics.multiclass_logloss(labels, metrics.softmax(S), weight=w), rel=1e-12)
    assert out["accuracy"] == metrics.accuracy(labels, S, weight=w)


def test_evaluate_rejects_unknown_task():
    with pytest.raises(ValueError):
        metrics.evaluate("ranking", [1, 0], [0.1, 0.2])


def test_metrics_table_matches_evaluate_and_defaults():
    assert set(metrics.DEFAULT_METRIC) == set(EXPECTED_KEYS)
    for task, keys in EXPECTED_KEYS.items():
        assert [m for m, (tasks, _) in metrics.METRICS.items() if task in tasks] == keys
        assert metrics.DEFAULT_METRIC[task] in keys
    assert set(metrics.METRICS) == {m for keys in EXPECTED_KEYS.values() for m in keys}
    higher = {m for m, (_, hib) in metrics.METRICS.items() if hib}
    assert higher == {"auc", "accuracy"}
    assert all(isinstance(tasks, tuple) for tasks, _ in metrics.METRICS.values())
    assert metrics.DEFAULT_METRIC == {"binary": "logloss", "regression": "rmse", "multiclass": "logloss"}


def test_is_better():
    assert metrics.is_better("logloss", 0.4, 0.5)
    assert not metrics.is_better("logloss", 0.5, 0.4)
    assert not metrics.is_better("logloss", 0.5, 0.5)           # strict
    assert metrics.is_better("auc", 0.8, 0.7)
    assert not metrics.is_better("auc", 0.7, 0.8)
    assert not metrics.is_better("accuracy", 0.7, 0.7)
    assert metrics.is_better("rmse", 10.0, None)
    assert metrics.is_better("auc", 0.0, None)
    assert metrics.is_better("auc", 0.6, float("nan"))
    assert not metrics.is_better("auc", float("nan"), 0.5)
    assert not metrics.is_better("logloss", float("nan"), 0.5)
    assert not metrics.is_better("auc", float("nan"), None)
    assert not metrics.is_better("auc", np.float64("nan"), np.float64(0.5))
    with pytest.raises(ValueError):
        metrics.is_better("f1", 0.5, 0.4)
