"""The fast paths give the same results as the plain ones.

* The AVX loops of the float32 FFM kernels (chosen at import where the CPU
  has AVX) against the SSE loops: bit for bit, every k and AdaGrad mode,
  per-element and row-wise; and those of float32 FwFM.
* The loops for rows whose entries share one value (one-hot rows) against
  the general ones: bit for bit, every optimizer.
* Compact in-memory batches (uint8 fields, no values when all are 1)
  against plain ones: bit for bit, training and scoring.
* Dataset.in_memory(compact=True) and the compact chunks a data set keeps.
"""

import numpy as np
import pytest

from fmcli._core import _kernels
from kernels_compat import score_rows, train_epoch
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


def ffm_state(b: Batch, kp: int, seed=3, optimizer="adagrad"):
    n, m = int(b.features.max()) + 1, int(b.fields.max()) + 1
    width = kp + 1 if optimizer == "rowwise-adagrad" else (1 + _kernels.n_state(optimizer)) * kp
    F = np.ones((n * m, width), np.float32)
    F[:, :kp] = np.random.default_rng(seed).random((n * m, kp), dtype=np.float32) * 0.5
    return n, m, np.zeros(1, np.float32), np.zeros(n, np.float32), F.reshape(-1), np.zeros(0, np.float32)


def train(b: Batch, kp: int, refine: bool, epochs=2, fields=None, values=None, model="ffm",
          optimizer="adagrad"):
    n, m, B, L, F, R = ffm_state(b, kp, optimizer=optimizer)
    if model == "ffm":
        w = 1 + _kernels.n_state(optimizer)
        B, L = np.zeros(w, np.float32), np.zeros(w * n, np.float32)
    order = np.random.default_rng(5).permutation(b.n_rows).astype(np.int64)
    losses = []
    for _ in range(epochs):
        losses.append(train_epoch(
            "ffm", optimizer, "binary", B, L, F, R, n, m, kp, 1, b.indptr,
            b.fields if fields is None else fields, b.features, b.values if values is None else values,
            b.labels, np.zeros(0, np.float32), order, 0.2, l2_factors=2e-5, use_bias=False,
            use_linear=False, threads=1, exact_rsqrt=refine, k=kp - 1))
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
@pytest.mark.parametrize("optimizer", ["adagrad", "rowwise-adagrad"])
def test_avx_loops_match_sse_bit_for_bit(simd_levels, kp, refine, optimizer):
    if "avx" not in simd_levels:
        pytest.skip("this CPU has no AVX")
    b = one_hot_batch(1, values=True)
    out = {}
    for level in simd_levels:
        _kernels.set_simd(level)
        out[level] = train(b, kp, refine, optimizer=optimizer)
    F_sse, loss_sse = out["sse"]
    F_avx, loss_avx = out["avx"]
    assert loss_sse == loss_avx
    np.testing.assert_array_equal(F_sse, F_avx)
    # and training did move the weights
    assert not np.array_equal(F_sse, ffm_state(b, kp, optimizer=optimizer)[4])


@pytest.mark.parametrize("kp", [8, 16, 24])
@pytest.mark.parametrize("optimizer", ["adagrad", "adam"])
def test_fwfm_avx_loops_match_sse_bit_for_bit(simd_levels, kp, optimizer):
    """float32 FwFM with k padded to a multiple of 8 scores and takes its
    gradients eight lanes at a time under AVX: the same model, loss and scores
    as the SSE loops, bit for bit (rows that repeat a field included)."""
    if "avx" not in simd_levels:
        pytest.skip("this CPU has no AVX")
    b = one_hot_batch(2, values=True)
    n, m = int(b.features.max()) + 1, int(b.fields.max()) + 1
    w = 1 + _kernels.n_state(optimizer)
    rng = np.random.default_rng(7)
    F0 = np.full((n, w * kp), 1.0 if optimizer == "adagrad" else 0.0, np.float32)
    F0[:, :kp] = rng.random((n, kp), dtype=np.float32) * 0.5
    R0 = np.full((m * m, w), 1.0 if optimizer == "adagrad" else 0.0, np.float32)
    R0[:, 0] = rng.uniform(0.5, 1.5, m * m)
    order = np.random.default_rng(5).permutation(b.n_rows).astype(np.int64)
    out = {}
    for level in simd_levels:
        _kernels.set_simd(level)
        B, L = np.zeros(w, np.float32), np.zeros(w * n, np.float32)
        F, R = F0.reshape(-1).copy(), R0.reshape(-1).copy()
        losses = [train_epoch("fwfm", optimizer, "binary", B, L, F, R, n, m, kp, 1, b.indptr, b.fields,
                                       b.features, b.values, b.labels, np.zeros(0, np.float32), order, 0.1,
                                       l2_factors=2e-5, threads=1, total_steps=2 * b.n_rows,
                                       step0=e * b.n_rows)[0] for e in range(2)]
        scores = np.empty(b.n_rows)
        score_rows("fwfm", B, L, F, R, n, m, kp, 0, b.indptr, b.fields, b.features, b.values, scores,
                            True, True, True, 1)
        out[level] = F, R, losses, scores
    for a, c in zip(out["sse"], out["avx"]):
        np.testing.assert_array_equal(a, c)
    assert not np.array_equal(out["sse"][0], F0.reshape(-1))
    assert not np.array_equal(out["sse"][1], R0.reshape(-1))


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad", "adam", "ftrl", "rowwise-adagrad"])
@pytest.mark.parametrize("kp", [4, 8, 12])
@pytest.mark.parametrize("values", [False, True])
def test_uniform_row_loops_match_the_general_ones(simd_levels, optimizer, kp, values):
    """One-hot rows (values=False: every entry 1, then scaled) take the loops
    that hoist x_i x_l; rows of other values do not.  Either way the results
    equal those of the general loops, at every SIMD level."""
    b = one_hot_batch(4, values=values)
    try:
        for level in simd_levels:
            _kernels.set_simd(level)
            out = {}
            for uniform in (True, False):
                assert _kernels.uniform_rows(uniform) is uniform
                F, losses = train(b, kp, False, optimizer=optimizer)
                n, m = int(b.features.max()) + 1, int(b.fields.max()) + 1
                scores = np.empty(b.n_rows)
                score_rows("ffm", np.zeros(1, np.float32), np.zeros(1, np.float32), F,
                                    np.zeros(0, np.float32), n, m, kp, _kernels.n_state(optimizer), b.indptr,
                                    b.fields, b.features, b.values, scores, False, False, True, 1, 1, False,
                                    optimizer == "rowwise-adagrad")
                out[uniform] = F, losses, scores
            np.testing.assert_array_equal(out[True][0], out[False][0])
            assert out[True][1] == out[False][1]
            np.testing.assert_array_equal(out[True][2], out[False][2])
    finally:
        _kernels.uniform_rows(True)


@pytest.mark.parametrize("kp", [4, 8])
def test_rowwise_adagrad_estimate_is_close_to_refined(kp):
    """The CPU's 1/sqrt estimate (the default) against its refinement."""
    b = one_hot_batch(2)
    F_est, loss_est = train(b, kp, False, optimizer="rowwise-adagrad")
    F_ref, loss_ref = train(b, kp, True, optimizer="rowwise-adagrad")
    assert not np.array_equal(F_est, F_ref)
    np.testing.assert_allclose(F_est, F_ref, rtol=2e-3, atol=1e-4)
    np.testing.assert_allclose(loss_est, loss_ref, rtol=1e-3)


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
        score_rows("ffm", e, e, F_plain, e, n, m, kp, 1, b.indptr, f, b.features, v, s,
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


# -- float16 factor storage (--storage float16) ----------------------------


def half_state(b: Batch, kp: int, seed=3):
    """The float32 state of ffm_state with its weights in float16 blocks."""
    n, m, B, L, F32, R = ffm_state(b, kp, seed)
    blocks = F32.reshape(-1, 2 * kp)
    words = np.zeros((blocks.shape[0], kp // 2 + kp), np.float32)
    halves = words.view(np.float16)
    halves[:, :kp] = blocks[:, :kp].astype(np.float16)
    halves[:, kp:].view(np.float32)[...] = blocks[:, kp:]
    return n, m, words.reshape(-1)


def train_half(b: Batch, kp: int, refine=False, epochs=2, step0=0):
    n, m, F = half_state(b, kp)
    B, L, R = np.zeros(2, np.float32), np.zeros(2 * n, np.float32), np.zeros(0, np.float32)
    order = np.random.default_rng(5).permutation(b.n_rows).astype(np.int64)
    losses = []
    for e in range(epochs):
        losses.append(train_epoch(
            "ffm", "adagrad", "binary", B, L, F, R, n, m, kp, 1, b.indptr, b.fields, b.features, b.values,
            b.labels, np.zeros(0, np.float32), order, 0.2, l2_factors=2e-5, use_bias=False,
            use_linear=False, threads=1, exact_rsqrt=refine, half_factors=True,
            step0=step0 + e * b.n_rows)[0])
    return F, losses


def weights_of_half(F, kp):
    return F.reshape(-1, kp // 2 + kp).view(np.float16)[:, :kp].astype(np.float32)


@pytest.mark.parametrize("kp", [4, 8])
def test_float16_storage_trains_like_float32(kp):
    b = one_hot_batch(6, n_rows=600)
    F32, l32 = train(b, kp, False)
    F16, l16 = train_half(b, kp)
    np.testing.assert_allclose([x[0] for x in l32], l16, rtol=2e-3)
    w32 = F32.reshape(-1, 2 * kp)[:, :kp]
    w16 = weights_of_half(F16, kp)
    # float16 keeps 11 significant bits (spacing 2^-12 near 0.3) and every
    # step rounds at random: the weights random-walk around float32's by a
    # few spacings over a few hundred updates
    assert np.abs(w32 - w16).max() < 1e-2
    assert np.abs(w32 - w16).mean() < 1e-3
    # and its accumulators moved like float32's
    G16 = F16.reshape(-1, kp // 2 + kp).view(np.float16)[:, kp:].view(np.float32)
    np.testing.assert_allclose(G16, F32.reshape(-1, 2 * kp)[:, kp:], rtol=1e-3)


def test_float16_training_is_reproducible_and_depends_on_the_step_number():
    b = one_hot_batch(7)
    a, _ = train_half(b, 4)
    again, _ = train_half(b, 4)
    np.testing.assert_array_equal(a, again)
    other, _ = train_half(b, 4, step0=10_000)
    assert not np.array_equal(a, other)     # other random bits for the rounding


def test_float16_without_f16c_agrees(simd_levels):
    if "avx" not in simd_levels or not _kernels.f16c():
        pytest.skip("this CPU has no F16C/AVX2 path to compare with")
    b = one_hot_batch(8, n_rows=500, values=True)
    fast, l_fast = train_half(b, 8)
    n, m = int(b.features.max()) + 1, int(b.fields.max()) + 1
    e = np.zeros(0, np.float32)
    scores = {}
    for level in ("avx", "sse"):
        _kernels.set_simd(level)
        s = np.empty(b.n_rows)
        score_rows("ffm", e, e, fast, e, n, m, 8, 1, b.indptr, b.fields, b.features, b.values, s,
                            False, False, True, 1, 1, True)
        scores[level] = s
    # widening float16 is exact either way, and the sums run in the same order
    np.testing.assert_array_equal(scores["avx"], scores["sse"])
    _kernels.set_simd("sse")
    assert not _kernels.f16c()
    slow, l_slow = train_half(b, 8)
    np.testing.assert_allclose(l_fast, l_slow, rtol=2e-3)
    diff = np.abs(weights_of_half(fast, 8) - weights_of_half(slow, 8))
    assert diff.max() < 1e-2 and diff.mean() < 1e-3


def test_float16_rounding_is_toward_zero_plus_random_bits():
    rng = np.random.default_rng(9)
    x = np.concatenate([rng.normal(0, 1, 5000), rng.normal(0, 1e-5, 500), [0, -0.0, 65504, 65519]]
                       ).astype(np.float32)
    out, back = np.zeros(x.size, np.uint16), np.zeros(x.size, np.float32)
    _kernels.float16_round(x, np.zeros(x.size, np.uint32), out, back)
    # no random bits: the float16 value nearest x that is no farther from 0
    near = x.astype(np.float16)
    away = np.abs(near.astype(np.float32)) > np.abs(x)
    near[away] = np.nextafter(near[away], np.float16(0))
    np.testing.assert_array_equal(out.view(np.float16), near)
    np.testing.assert_array_equal(back, near.astype(np.float32))
    # with random bits: unbiased (the mean rounding error is ~0, not about
    # -spacing/2), and only the two neighbours occur
    v = np.full(20000, 0.3001, np.float32)
    bits = rng.integers(0, 2**32, v.size, dtype=np.uint64).astype(np.uint32)
    out, back = np.zeros(v.size, np.uint16), np.zeros(v.size, np.float32)
    _kernels.float16_round(v, bits, out, back)
    lo = np.float16(0.3001)
    if lo > np.float16(0.3001):
        lo = np.nextafter(lo, np.float16(0))
    hi = np.nextafter(lo, np.float16(1))
    assert set(np.unique(back).tolist()) == {float(lo), float(hi)}
    spacing = float(hi) - float(lo)
    assert abs(float(back.astype(np.float64).mean()) - float(np.float32(0.3001))) < spacing * 0.02


@pytest.fixture(scope="module")
def ffm_files(tmp_path_factory):
    from synthdata import write_synth

    d = tmp_path_factory.mktemp("f16")
    write_synth(d, 6000, seed=4, fields=10, valid_rows=1000)
    return d


def test_float16_storage_end_to_end(ffm_files, tmp_path, monkeypatch):
    from fmcli import checkpoint
    from fmcli.config import Config
    from fmcli.errors import Interrupted
    from fmcli.model import load_model
    from fmcli.predict import predict
    from fmcli.train import train
    import signal

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    tr, va = str(ffm_files / "tr.ffm"), str(ffm_files / "va.ffm")
    base = Config(model="ffm", epochs=2, cache=False, threads=1)
    m32 = train(base, tr, va)
    m16 = train(base.replace(storage="float16"), tr, va)
    l32 = m32.meta["training"]["history"][-1]["valid_logloss"]
    l16 = m16.meta["training"]["history"][-1]["valid_logloss"]
    assert abs(l16 - l32) < 0.002 * l32
    # the model file holds float32 factors (exactly the float16 values) and the
    # AdaGrad state; it predicts like any model
    path = tmp_path / "m16.fm"
    m16.save(path)
    loaded = load_model(path)
    f = np.asarray(loaded.params["factors"])
    assert f.dtype == np.float32 and np.array_equal(f, f.astype(np.float16).astype(np.float32))
    assert loaded.state["factors"].shape == f.shape
    assert loaded.meta["hyperparameters"]["storage"] == "float16"
    out = list(predict(loaded, va))
    assert len(out) > 0
    # warm start from it (float16 again and float32)
    for storage in ("float16", "float32"):
        warm = train(base.replace(storage=storage, epochs=1, init_model=str(path)), tr, va)
        assert warm.meta["training"]["history"][-1]["valid_logloss"] < l16 + 0.01
    # an interrupted float16 run resumes to the same model
    ck = tmp_path / "ck"
    cfg = base.replace(storage="float16", checkpoint_dir=str(ck), checkpoint_every=1500)
    ref = train(cfg, tr)
    for p in ck.iterdir():
        p.unlink()
    calls = []

    def stop_once():
        calls.append(1)
        return signal.SIGTERM if len(calls) == 3 else None

    with pytest.raises(Interrupted):
        train(cfg, tr, should_stop=stop_once)
    assert checkpoint.load_latest(str(ck)) is not None
    resumed = train(cfg, tr, resume=str(ck))
    for name in ref.params:
        assert np.array_equal(np.asarray(ref.params[name]), np.asarray(resumed.params[name]))


@pytest.mark.parametrize("change", [dict(model="fm"), dict(optimizer="adam"), dict(dtype="float64"),
                                    dict(batch_size=8), dict(clip_norm=1.0), dict(device="cuda")])
def test_float16_storage_refuses_what_it_does_not_run(change):
    from fmcli.config import Config
    from fmcli.errors import ConfigError

    with pytest.raises(ConfigError, match="--storage float16"):
        Config(storage="float16", **change)
