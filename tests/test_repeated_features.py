"""Rows in which a feature occurs more than once (hash collisions, repeated
libsvm columns): every gradient of a row is taken at its start-of-row
weights, as tests/reference.py defines, for every kind and optimizer."""

import functools

import numpy as np
import pytest

import reference as ref
import test_matrix as tm

KINDS = ("lr", "fm", "ffm", "fwfm")


@pytest.fixture
def repeated_rows(monkeypatch):
    """test_matrix's problems, with features that may repeat within a row."""
    monkeypatch.setattr(tm.ref, "random_rows", functools.partial(ref.random_rows, distinct_features=False))


def test_the_rows_do_repeat_features(repeated_rows):
    _, rows, _, _ = tm.problem("fm", "binary", 3)
    assert any(len(np.unique(r.features)) < len(r.features) for r in rows)


@pytest.mark.parametrize("optimizer", tm.OPTIMIZERS)
@pytest.mark.parametrize("kind", KINDS)
def test_repeated_features_match_reference(repeated_rows, kind, optimizer):
    got, expected, losses, ref_losses = tm.run_both(
        kind, "binary", optimizer, seed=len(kind) * 5 + len(optimizer),
        l2_linear=0.01, l2_factors=0.02, l2_bias=0.005, **({"l1": 0.001} if optimizer == "ftrl" else {}))
    tm.assert_same(got, expected)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-9)


@pytest.mark.parametrize("kind", KINDS)
def test_repeated_features_match_reference_in_mini_batches_and_multiclass(repeated_rows, kind):
    got, expected, _, _ = tm.run_both(kind, "multiclass", "adagrad", seed=11, batch_size=4, l2_linear=0.01,
                                      l2_factors=0.02)
    tm.assert_same(got, expected)
