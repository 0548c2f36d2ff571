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
