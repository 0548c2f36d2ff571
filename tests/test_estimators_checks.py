"""scikit-learn's own estimator checks on every public estimator, built with
its default arguments.

The only checks expected to fail are those scikit-learn expects its own
SGDClassifier and SGDRegressor to fail (sklearn/utils/_test_common/
instance_generator.py): a weight of 2 is one step with twice the gradient,
not two steps, so sample weights are not the same as repeated rows for a
stochastic-gradient learner.  The test below proves that list is still
SGD's.
"""

from __future__ import annotations

import pytest

pytest.importorskip("sklearn")

from sklearn.linear_model import SGDClassifier, SGDRegressor  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from fmcli import estimators  # noqa: E402

SGD_EXPECTED_FAILURES = {
    "check_sample_weight_equivalence_on_dense_data":
        "sample_weight is not equivalent to removing/repeating samples (a stochastic-gradient learner)",
    "check_sample_weight_equivalence_on_sparse_data":
        "sample_weight is not equivalent to removing/repeating samples (a stochastic-gradient learner)",
}

ESTIMATORS = [cls() for cls in estimators.CLASSES.values()]


def expected_failures(estimator) -> dict[str, str]:
    return dict(SGD_EXPECTED_FAILURES)


def test_the_expected_failures_are_sgds_own():
    from sklearn.utils._test_common.instance_generator import PER_ESTIMATOR_XFAIL_CHECKS

    for sgd in (SGDClassifier, SGDRegressor):
        assert set(SGD_EXPECTED_FAILURES) <= set(PER_ESTIMATOR_XFAIL_CHECKS[sgd])


def test_every_kind_has_a_classifier_and_a_regressor():
    from fmcli.registry import KINDS

    assert len(ESTIMATORS) == 2 * len(KINDS)
    assert {(e._kind, type(e).__name__.endswith("Classifier")) for e in ESTIMATORS} == \
        {(k, c) for k in KINDS for c in (True, False)}


@parametrize_with_checks(ESTIMATORS, expected_failed_checks=expected_failures, xfail_strict=True)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)
