"""The fast paths give the same results as the plain ones.

* The AVX loops of the float32 FFM kernels (chosen at import where the CPU
  has AVX) against the SSE loops: bit for bit, every k and AdaGrad mode.
* Compact in-memory batches (uint8 fields, no values when all are 1)
  against plain ones: bit for bit, training and scoring.
* Dataset.in_memory(compact=True) and the compact chunks a data set keeps.
"""

import numpy as np
import pytest

from fmcli._core import _kernels
from fmcli.data.batch import Batch
from fmcli.data.dataset import compacted, expanded, load_dataset


def one_hot_batch(seed, n_rows=400, n_fields=9, n_features=60, repeat=True, values=False) -> Batch:
    """Rows with one entry per field (and, with `repeat`, some rows repeating an
    entry, so that a pair's two blocks are one block)."""
    rng = np.random.default_rng(seed)
    fields, features, vals, indptr = [], [], [], [0]
    for r in range(n_rows):
        f = np.arange(n_fields)
        j = rng.integers(0, n_features, n_fields)
        if repeat and r % 7 == 0:
            f = np.append(f, f[2])
            j = np.append(j, j[2])
        fields.append(f)
        features.append(j)
        vals.append(rng.uniform(0.5, 2, f.size) if values else np.ones(f.size))
        indptr.append(indptr[-1] + f.size)
    return Batch(labels=(rng.random(n_rows) < 0.3).astype(np.float32), indptr=np.asarray(indptr, np.int64),
                 fields=np.concatenate(fields).astype(np.int32),
                 features=np.concatenate(features).astype(np.int32),
                 values=np.concatenate(vals).astype(np.float32))


def ffm_state(b: Batch, kp: int, seed=3):
    n, m = int(b.features.max()) + 1, int(b.fields.max()) + 1
    F = np.ones((n * m, 2 * kp), np.float32)
    F[:, :kp] = np.random.default_rng(seed).random((n * m, kp), dtype=np.float32) * 0.5
    return n, m, np.zeros(1, np.float32), np.zeros(n, np.float32), F.reshape(-1), np.zeros(0, np.float32)


def train(b: Batch, kp: int, refine: bool, epochs=2, fields=None, values=None, model="ffm"):
    n, m, B, L, F, R = ffm_state(b, kp)
    if model == "ffm":
        B, L = np.zeros(2, np.float32), np.zeros(2 * n, np.float32)
    order = np.random.default_rng(5).permutation(b.n_rows).astype(np.int64)
    losses = []
    for _ in range(epochs):
        losses.append(_kernels.train_epoch(
            "ffm", "adagrad", "binary", B, L, F, R, n, m, kp, 1, b.indptr,
            b.fields if fields is None else fields, b.features, b.values if values is None else values,
            b.labels, np.zeros(0, np.float32), order, 0.2, l2_factors=2e-5, use_bias=False,
            use_linear=False, threads=1, exact_rsqrt=refine))
    return F, losses


@pytest.fixture
def simd_levels():
    """The levels this CPU runs; the best is restored afterwards."""
    best = _kernels.simd()
    levels = ["sse"]
    if _kernels.set_simd("avx") == "avx":
        levels.append("avx")
    yield levels
    _kernels.set_simd(best)


def test_simd_level_is_reported_and_settable(simd_levels):
    assert _kernels.simd() in _kernels.SIMD_LEVELS
    assert _kernels.set_simd("sse") == "sse"
    assert _kernels.simd() == "sse"


@pytest.mark.parametrize("kp", [4, 8, 12, 16])
@pytest.mark.parametrize("refine", [False, True])
def test_avx_loops_match_sse_bit_for_bit(simd_levels, kp, refine):
    if "avx" not in simd_levels:
        pytest.skip("this CPU has no AVX")
    b = one_hot_batch(1, values=True)
    out = {}
    for level in simd_levels:
        _kernels.set_simd(level)
        out[level] = train(b, kp, refine)
    F_sse, loss_sse = out["sse"]
    F_avx, loss_avx = out["avx"]
    assert loss_sse == loss_avx
    np.testing.assert_array_equal(F_sse, F_avx)
    # and training did move the weights
    assert not np.array_equal(F_sse, ffm_state(b, kp)[4])


@pytest.mark.parametrize("kp", [4, 8])
def test_compact_batch_trains_and_scores_like_the_plain_one(kp):
    b = one_hot_batch(2)
    small = b.fields.astype(np.uint8)
    none = np.zeros(0, np.float32)
    F_plain, loss_plain = train(b, kp, False)
    F_compact, loss_compact = train(b, kp, False, fields=small, values=none)
    assert loss_plain == loss_compact
    np.testing.assert_array_equal(F_plain, F_compact)
    n, m = int(b.features.max()) + 1, int(b.fields.max()) + 1
    e = np.zeros(0, np.float32)
    out = {}
    for name, (f, v) in {"plain": (b.fields, b.values), "compact": (small, none)}.items():
        s = np.empty(b.n_rows)
        _kernels.score_rows("ffm", e, e, F_plain, e, n, m, kp, 1, b.indptr, f, b.features, v, s,
                            False, False, True, 1)
        out[name] = s
    np.testing.assert_array_equal(out["plain"], out["compact"])


def test_kernels_refuse_entry_arrays_of_other_lengths():
    b = one_hot_batch(3, n_rows=10)
    with pytest.raises(ValueError, match="fields and features"):
        train(b, 4, False, fields=b.fields[:-1])
    with pytest.raises(ValueError, match="values and features"):
        train(b, 4, False, values=b.values[:-1])


def test_compacted_and_expanded_round_trip():
    b = one_hot_batch(4)
    c = compacted(b, True)
    assert c.fields.dtype == np.uint8 and c.values.shape == (0,)
    back = expanded(c)
    assert back.fields.dtype == np.int32
    np.testing.assert_array_equal(back.fields, b.fields)
    np.testing.assert_array_equal(back.values, b.values)
    # values other than 1 are kept; fields too large for uint8 stay int32
    v = one_hot_batch(4, values=True)
    assert compacted(v, False).values is v.values
    assert compacted(v, False).fields.dtype == np.int32


def _write(path, b: Batch):
    with open(path, "w") as f:
        for r in range(b.n_rows):
            lo, hi = b.indptr[r], b.indptr[r + 1]
            ents = " ".join(f"{fi}:{j}:{v:.9g}" for fi, j, v in zip(b.fields[lo:hi], b.features[lo:hi],
                                                                 b.values[lo:hi]))
            f.write(f"{int(b.labels[r])} {ents}\n")


@pytest.mark.parametrize("values", [False, True])
def test_dataset_keeps_compact_chunks_and_hands_out_plain_ones(tmp_path, values):
    b = one_hot_batch(5, n_rows=300, values=values)
    path = tmp_path / "d.ffm"
    _write(path, b)
    ds = load_dataset(str(path), cache_dir=None)
    plain = [c for _, c, _ in ds.chunks()]
    assert all(c.fields.dtype == np.int32 and c.values.shape[0] == c.nnz for c in plain)
    whole = ds.in_memory(compact=True)
    assert whole.fields.dtype == np.uint8
    assert whole.values.shape[0] == (whole.nnz if values else 0)
    np.testing.assert_array_equal(whole.features, b.features)
    np.testing.assert_array_equal(whole.fields, b.fields)
    again = expanded(whole)
    np.testing.assert_array_equal(again.values, b.values)
    np.testing.assert_array_equal(again.indptr, b.indptr)
