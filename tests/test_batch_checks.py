"""Batches built by hand and given to the Python API are checked before the
kernels index the model with their ids (a negative id would read or write
outside the model's arrays)."""

import numpy as np
import pytest

import fmcli
from fmcli.data.batch import Batch
from fmcli.errors import DataError


def _batch(features, fields, indptr=None, n=None):
    features = np.asarray(features, np.int32)
    fields = np.asarray(fields, np.int32)
    if indptr is None:
        indptr = np.array([0, len(features)], np.int64)
    n = len(indptr) - 1 if n is None else n
    return Batch(labels=np.ones(n, np.float32), indptr=np.asarray(indptr, np.int64), fields=fields,
                 features=features, values=np.ones(len(features), np.float32))


@pytest.fixture(scope="module")
def model():
    rng = np.random.default_rng(0)
    n, per = 200, 3
    feats = rng.integers(0, 30, n * per).astype(np.int32)
    fields = np.tile(np.arange(per, dtype=np.int32), n)
    good = Batch(labels=rng.integers(0, 2, n).astype(np.float32), indptr=np.arange(0, n * per + 1, per),
                 fields=fields, features=feats, values=np.ones(n * per, np.float32))
    return fmcli.train(fmcli.Config(model="ffm", k=4, epochs=1, seed=1, task="binary"), good)


@pytest.mark.parametrize("batch, words", [
    (_batch([1, -3], [0, 1]), "negative feature id -3 in row 0"),
    (_batch([1, 3], [0, -1]), "negative field id -1 in row 0"),
    (_batch([1, 3], [0, 1], indptr=[0, 1]), "end at the number of entries (2)"),
    (_batch([1, 3], [0, 1], indptr=[1, 2]), "start at 0"),
    (_batch([1, 3, 4], [0, 1, 2], indptr=[0, 2, 1, 3]), "indptr decreases at row 1"),
    (_batch([1, 3], [0], indptr=[0, 2]), "1 fields for 2 features"),
])
def test_bad_batches_are_refused_in_one_line(model, batch, words):
    with pytest.raises(DataError) as exc:
        fmcli.predict(model, batch)
    assert words in str(exc.value) and str(exc.value).startswith("<batch>: ")
    with pytest.raises(DataError) as exc:
        fmcli.train(fmcli.Config(model="ffm", k=4, epochs=1, task="binary"), batch)
    assert words in str(exc.value)


def test_good_batch_scores_as_before(model):
    b = _batch([1, 2, 5, 7], [0, 1, 0, 2], indptr=[0, 2, 4])
    assert b.problems() is None
    p = fmcli.predict(model, b)
    assert p.shape == (2,) and np.all((p > 0) & (p < 1))
    # an id beyond the model is unseen (adds nothing), not an error
    far = fmcli.predict(model, _batch([1, 10**6], [0, 1]))
    assert far.shape == (1,) and 0 < far[0] < 1
