"""The initial factors of an id-mapped model: those the dense model would
draw for the same ids (fmcli.params._draw_as_dense), and the generator left
where the dense draws leave it."""

import numpy as np
import pytest

from fmcli import params


def _dense(rng, n_classes, dense_blocks, k, scale):
    out = np.zeros((n_classes * dense_blocks, k), np.float32)
    step = 1 << 20
    for start in range(0, n_classes * dense_blocks, step):
        stop = min(start + step, n_classes * dense_blocks)
        out[start:stop] = rng.random((stop - start, k), dtype=np.float32) * scale
    return out


@pytest.mark.parametrize("k", [1, 3, 4])
@pytest.mark.parametrize("n_classes", [1, 3])
@pytest.mark.parametrize("ids", ["sparse", "runs", "unsorted", "one", "wide gaps"])
@pytest.mark.parametrize("layout", ["rows", "slot of wider rows"])
def test_draws_are_the_dense_models(k, n_classes, ids, layout, monkeypatch):
    monkeypatch.setattr(params, "_DRAW_GAP", 64)     # segments and jumps on small data
    n_features, per_feature = 5000, 3
    pick = np.random.default_rng(7)
    slot_ids = {
        "sparse": np.sort(pick.choice(n_features, 700, replace=False)),
        "runs": np.concatenate([np.arange(10, 60), np.arange(100, 101), np.arange(4000, 4990)]),
        "unsorted": pick.permutation(n_features)[:900],
        "one": np.array([n_features - 1]),
        "wide gaps": np.array([0, 1, 2500, 2501, 4999]),
    }[ids]
    scale = np.float32(0.5)
    dense_rng = np.random.default_rng(11)
    dense = _dense(dense_rng, n_classes, n_features * per_feature, k, scale)
    rng = np.random.default_rng(11)
    n = len(slot_ids)
    # a model's factor slot is a view of every block's first words (HostParams.slot_view)
    wide = np.full((n_classes * n * per_feature, k + 5), -1.0, np.float32)
    out = wide[:, : k + 2] if layout == "rows" else wide[:, 1 : k + 3]
    params._draw_as_dense(out, rng, slot_ids, n_classes, n_features * per_feature, per_feature, k, scale)
    for c in range(n_classes):
        want = dense.reshape(n_classes, n_features, per_feature, k)[c, slot_ids]
        got = out[c * n * per_feature : (c + 1) * n * per_feature, :k].reshape(n, per_feature, k)
        assert got.tobytes() == want.tobytes()
    assert (out[:, k:] == -1.0).all(), "only the k weights of a block are written"
    assert np.count_nonzero(wide != -1.0) == out[:, :k].size, "nothing outside the slot is written"
    got_state, want_state = rng.bit_generator.state, dense_rng.bit_generator.state
    assert got_state["state"] == want_state["state"] and got_state["has_uint32"] == want_state["has_uint32"]
    if want_state["has_uint32"]:    # (a stale half is kept, unused, when there is none)
        assert got_state["uinteger"] == want_state["uinteger"]
    assert rng.random(5).tolist() == dense_rng.random(5).tolist()
