"""Per-thread replicas of the hot FFM features (fmcli/_core/hot.h).

With several threads, the features that most rows carry are trained on a
copy per thread, exchanged with the shared model as `shared += local - snap`.
The threads' interleaving makes a multi-threaded run nondeterministic, so
the tests build data on which the result is known exactly:

* every feature hot and no exchange before the end: the model is the start
  plus the change of each thread's half trained alone;
* the first half of the rows using only hot features and the second only
  cold ones, exchanging after every row: the two threads share no
  parameter, so the model is the one-thread model.
"""

import os

import numpy as np
import pytest
from click.testing import CliRunner

from fmcli._core import _kernels
from kernels_compat import train_epoch
from fmcli.cli import cli
from fmcli.config import Config
from fmcli.data.batch import Batch
from fmcli.errors import ConfigError
from fmcli.cpu import HOT_MIN_SHARE, CpuBackend as TrainState
from fmcli.train import train

openmp = pytest.mark.skipif(not _kernels.openmp_info()[0], reason="built without OpenMP")

KP = 4
SAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "samples",
                      "train.ffm")


def rows(seed, n_rows, features, n_fields=6) -> Batch:
    """One entry per field, each a feature drawn from `features`."""
    rng = np.random.default_rng(seed)
    feats = rng.choice(features, (n_rows, n_fields)).astype(np.int32)
    return Batch(labels=(rng.random(n_rows) < 0.4).astype(np.float32),
                 indptr=np.arange(0, n_rows * n_fields + 1, n_fields, dtype=np.int64),
                 fields=np.tile(np.arange(n_fields, dtype=np.int32), n_rows),
                 features=feats.reshape(-1), values=np.ones(n_rows * n_fields, np.float32))


def joined(a: Batch, b: Batch) -> Batch:
    return Batch(labels=np.concatenate([a.labels, b.labels]),
                 indptr=np.concatenate([a.indptr, a.indptr[-1] + b.indptr[1:]]),
                 fields=np.concatenate([a.fields, b.fields]),
                 features=np.concatenate([a.features, b.features]),
                 values=np.concatenate([a.values, b.values]))


def disjoint_halves():
    """(n, m, rows, order): 40 features, 6 fields; the first 300 rows carry
    features 0..19 only, the last 300 features 20..39 only, and order visits
    the first half (shuffled) then the second: with balance=False each of
    two threads trains one half, and they share no parameter."""
    b = joined(rows(3, 300, np.arange(20)), rows(4, 300, np.arange(20, 40)))
    rng = np.random.default_rng(5)
    order = np.concatenate([rng.permutation(300), 300 + rng.permutation(300)]).astype(np.int64)
    return 40, 6, b, order


def start(n, m, optimizer="adagrad", seed=1):
    ns = _kernels.n_state(optimizer)
    F = np.ones((n * m, (1 + ns) * KP), np.float32)
    F[:, :KP] = np.random.default_rng(seed).random((n * m, KP), dtype=np.float32) * 0.5
    if optimizer != "adagrad":
        F[:, KP:] = 0
    return F.reshape(-1)


def run(b, F, order, threads, optimizer="adagrad", **kw):
    width = 1 + _kernels.n_state(optimizer)
    n, m = len(F) // (6 * width * KP), 6
    z = np.zeros(0, np.float32)
    # unused: no bias, no linear terms
    B, L = np.zeros(width, np.float32), np.zeros(width * n, np.float32)
    return train_epoch(
        "ffm", optimizer, "binary", B, L, F, z, n, m, KP, 1, b.indptr, b.fields, b.features,
        b.values, b.labels, z, order, 0.2, l2_factors=1e-4, use_bias=False, use_linear=False,
        threads=threads, **kw)


def each_half_alone(b, F0, order, optimizer="adagrad"):
    """F0 trained on one thread over order[:200], and over order[200:]."""
    halves = []
    for part in (order[:200], order[200:]):
        F = F0.copy()
        run(b, F, part, 1, optimizer)
        halves.append(F)
    return halves


@openmp
@pytest.mark.parametrize("optimizer", ["adagrad", "sgd", "ftrl"])
def test_without_exchanges_the_model_adds_up_both_threads_changes(optimizer):
    n, m = 40, 6
    b = rows(0, 400, np.arange(n))
    order = np.random.default_rng(2).permutation(b.n_rows).astype(np.int64)
    F0 = start(n, m, optimizer)
    # balance=False: the first thread trains order[:200], the second the rest
    halves = each_half_alone(b, F0, order, optimizer)
    F = F0.copy()
    run(b, F, order, 2, optimizer, hot_features=np.arange(n, dtype=np.int32), hot_sync=10**9,
        balance=False)
    expect = halves[0] + halves[1] - F0
    assert not np.array_equal(halves[0], F0) and not np.array_equal(halves[1], F0)
    np.testing.assert_allclose(F, expect, rtol=2e-6, atol=2e-6)


@openmp
@pytest.mark.parametrize("sync", [1, 7])
def test_exchanges_keep_every_change(sync):
    # rows of the first half use hot features 0..19 only, the second half
    # cold features 20..39 only: the threads share nothing
    n, m = 40, 6
    a = rows(3, 300, np.arange(20))
    c = rows(4, 300, np.arange(20, 40))
    b = joined(a, c)
    rng = np.random.default_rng(5)
    order = np.concatenate([rng.permutation(300), 300 + rng.permutation(300)]).astype(np.int64)
    F0 = start(n, m)
    one = F0.copy()
    l1 = run(b, one, order, 1)
    two = F0.copy()
    l2 = run(b, two, order, 2, hot_features=np.arange(20, dtype=np.int32), hot_sync=sync,
             balance=False)
    np.testing.assert_allclose(two, one, rtol=1e-5, atol=1e-6)
    assert l2[0] == pytest.approx(l1[0], rel=1e-6)


@openmp
def test_tiers_keep_every_change_at_their_own_intervals():
    # tiers: features 0..9 every row, 10..19 every 7 rows, 20..29 every 50,
    # 30..39 never before the end.  The first half's rows carry 0..19 only,
    # the second half's 20..39 only, so that the threads share nothing and
    # the result is the one-thread model whatever the intervals
    n, m, b, order = disjoint_halves()
    every = np.repeat(np.array([1, 7, 50, 10**9]), 10)
    F0 = start(n, m)
    one = F0.copy()
    run(b, one, order, 1)
    # the features given in another order than their tiers'
    perm = np.random.default_rng(6).permutation(n)
    two = F0.copy()
    run(b, two, order, 2, hot_features=perm.astype(np.int32), hot_sync=every[perm], balance=False)
    np.testing.assert_allclose(two, one, rtol=1e-5, atol=1e-6)


@openmp
def test_a_tier_is_not_exchanged_before_its_interval():
    # every row carries features of 0..9 (tier of 10**9 rows: exchanged only
    # at the end) and one of the thread's own features (10..19 for the first
    # half's rows, 20..29 for the second's; tier of 1 row).  Exchanging the
    # shared tier with the other would let each thread see the other's
    # changes; not exchanging it gives the sum of each half trained alone.
    n, m = 30, 6
    def half(seed, own):
        b = rows(seed, 200, np.arange(10))
        b.features.reshape(-1, 6)[:, 5] = np.random.default_rng(seed).choice(own, 200)
        return b
    b = joined(half(11, np.arange(10, 20)), half(12, np.arange(20, 30)))
    order = np.arange(400, dtype=np.int64)
    F0 = start(n, m)
    halves = each_half_alone(b, F0, order)
    every = np.array([10**9] * 10 + [1] * 20)
    F = F0.copy()
    run(b, F, order, 2, hot_features=np.arange(n, dtype=np.int32), hot_sync=every, balance=False)
    np.testing.assert_allclose(F, halves[0] + halves[1] - F0, rtol=2e-6, atol=2e-6)


def test_kernels_refuse_bad_intervals():
    n, m = 40, 6
    b = rows(7, 50, np.arange(n))
    order = np.arange(b.n_rows, dtype=np.int64)
    with pytest.raises(ValueError, match="at most 8 distinct intervals"):
        run(b, start(n, m), order, 2, hot_features=np.arange(9, dtype=np.int32), hot_sync=np.arange(1, 10))
    hot = np.arange(5, dtype=np.int32)
    with pytest.raises(ValueError, match="one per hot feature"):
        run(b, start(n, m), order, 2, hot_features=hot, hot_sync=np.array([1, 2]))
    with pytest.raises(ValueError, match="every 1 or more rows"):
        run(b, start(n, m), order, 2, hot_features=hot, hot_sync=np.array([1, 2, 0, 1, 1]))
    # no hot features, but copies of the bias and field-pair weights
    with pytest.raises(ValueError, match="copies are exchanged every 1 or more rows"):
        _fwfm_run(b, _fwfm_start(), order, 2, sync=0)


def test_intervals_grow_as_the_share_falls(monkeypatch):
    import fmcli.cpu as T

    monkeypatch.setattr(T, "HOT_SYNC_ROWS", 256)
    monkeypatch.setattr(T, "HOT_SYNC_SHARE", 0.0625)
    monkeypatch.setattr(T, "HOT_SYNC_STEP", 4)
    monkeypatch.setattr(T, "HOT_SYNC_TIERS", 4)
    share = np.array([1.0, 0.0625, 0.06, 0.015625, 0.0156, 0.004, 0.0039, 1e-6, 0.0])
    assert T.hot_intervals(share).tolist() == [256, 256, 1024, 1024, 4096, 4096, 16384, 16384, 16384]
    # below the first tier, fewer than HOT_SYNC_ROWS x HOT_SYNC_SHARE x
    # HOT_SYNC_STEP rows that carry the feature between two exchanges (until the last tier)
    s = np.geomspace(0.0624, 0.0040, 200)
    assert (s * T.hot_intervals(s) < 256 * 0.0625 * 4).all()
    monkeypatch.setattr(T, "HOT_SYNC_STEP", 1)
    assert set(T.hot_intervals(share).tolist()) == {256}


def test_prepare_gives_each_hot_feature_its_interval(monkeypatch):
    import fmcli.cpu as T

    b = skewed()
    counts = np.bincount(b.features, minlength=300)
    st = state(hot_features=40)
    st.prepare(b)
    assert st.hot_sync.tolist() == T.hot_intervals(counts[st.hot] / b.n_rows).tolist()
    assert len(set(st.hot_sync.tolist())) > 1
    assert st.hot_sync.shape == st.hot.shape


def test_one_thread_ignores_hot_features():
    n, m = 40, 6
    b = rows(6, 300, np.arange(n))
    order = np.arange(b.n_rows, dtype=np.int64)
    plain, hot = start(n, m), start(n, m)
    run(b, plain, order, 1)
    run(b, hot, order, 1, hot_features=np.arange(10, dtype=np.int32), hot_sync=1)
    assert np.array_equal(plain, hot)


def test_kernels_refuse_bad_hot_features():
    n, m = 40, 6
    b = rows(7, 50, np.arange(n))
    order = np.arange(b.n_rows, dtype=np.int64)
    for hot in ([3, 3], [40], [-1]):
        with pytest.raises(ValueError, match="distinct ids"):
            run(b, start(n, m), order, 2, hot_features=np.array(hot, np.int32))
    with pytest.raises(ValueError, match="every 1 or more rows"):
        run(b, start(n, m), order, 2, hot_features=np.array([1], np.int32), hot_sync=0)


def skewed(n_rows=2000, n=300, seed=8) -> Batch:
    """Feature j drawn with probability ~ 1 / (j + 1): low ids are hot."""
    p = 1.0 / np.arange(1, n + 1)
    rng = np.random.default_rng(seed)
    feats = rng.choice(n, (n_rows, 6), p=p / p.sum()).astype(np.int32)
    return Batch(labels=(rng.random(n_rows) < 0.4).astype(np.float32),
                 indptr=np.arange(0, n_rows * 6 + 1, 6, dtype=np.int64),
                 fields=np.tile(np.arange(6, dtype=np.int32), n_rows), features=feats.reshape(-1),
                 values=np.ones(n_rows * 6, np.float32))


def state(**kw) -> TrainState:
    cfg = Config(model="ffm", k=4, threads=2, **kw)
    return TrainState(cfg, 300, 6, np.random.default_rng(0))


def test_choose_hot_takes_the_most_frequent_features():
    b = skewed()
    counts = np.bincount(b.features, minlength=300)
    st = state(hot_features=10)
    st.prepare(b)
    assert sorted(st.hot.tolist()) == st.hot.tolist()
    assert set(st.hot.tolist()) == set(np.argsort(-counts, kind="stable")[:10].tolist())
    # auto: none on small data
    st = state()
    st.prepare(b)
    assert st.hot is None


def test_auto_takes_the_features_on_a_share_of_rows_within_a_budget(monkeypatch):
    import fmcli.cpu as T

    b = skewed()
    counts = np.bincount(b.features, minlength=300)
    monkeypatch.setattr(T, "HOT_MIN_ROWS", b.n_rows)
    # every feature on HOT_MIN_SHARE of the rows or more (the budget allows them all)
    st = state()
    st.prepare(b)
    assert set(st.hot.tolist()) == set(np.flatnonzero(counts >= HOT_MIN_SHARE * b.n_rows).tolist())
    # a budget of HOT_BYTES per thread caps them
    # (a feature's 6 blocks and its linear weight)
    monkeypatch.setattr(T, "HOT_BYTES", 5 * (st.F.shape[1] * 4 * 6 + st.L.shape[1] * 4))
    st.prepare(b)
    assert set(st.hot.tolist()) == set(np.argsort(-counts, kind="stable")[:5].tolist())
    # more than the data has: the features it has
    st = state(hot_features=5000)
    st.prepare(b)
    assert len(st.hot) == np.count_nonzero(counts)


@pytest.mark.parametrize("kw", [dict(hot_features=0), dict(threads=1), dict(optimizer="adam"),
                                dict(batch_size=4), dict(clip_norm=1.0), dict(storage="float16")])
def test_no_replicas_where_they_do_not_apply(kw):
    threads = kw.pop("threads", 2)
    cfg = Config(model="ffm", k=4, threads=threads, **kw)
    st = TrainState(cfg, 300, 6, np.random.default_rng(0))
    st.prepare(skewed())
    assert st.hot is None


@pytest.mark.parametrize("change", [dict(threads=1), dict(model="lr"), dict(optimizer="adam"),
                                    dict(dtype="float64"), dict(batch_size=8), dict(clip_norm=1.0),
                                    dict(storage="float16")])
def test_explicit_hot_features_refuse_what_they_do_not_run(change):
    kw = dict(model="ffm", threads=2, hot_features=100)
    kw.update(change)
    with pytest.raises(ConfigError, match="--hot-features"):
        Config(**kw)


def test_explicit_hot_features_refuse_multiclass():
    b = skewed(300)
    b = Batch(labels=(np.arange(300) % 3).astype(np.float32), indptr=b.indptr, fields=b.fields,
              features=b.features, values=b.values)
    with pytest.raises(ConfigError, match="multiclass"):
        train(Config(model="ffm", task="multiclass", threads=2, hot_features=10, epochs=1), b)


def test_threads_with_replicas_train_as_well_as_without():
    b = skewed(60000, seed=9)
    va = skewed(5000, seed=10)
    # labels that the factors can learn (the parity of the two first entries'
    # ids), 15% of them flipped
    for x in (b, va):
        f = x.features.reshape(-1, 6)
        noise = np.random.default_rng(len(x.labels)).random(len(x.labels)) < 0.15
        x.labels[:] = ((f[:, 0] + f[:, 1]) % 2 == 0) ^ noise
    loss, said = {}, []
    for hot in (0, 50):
        m = train(Config(model="ffm", k=4, threads=2, hot_features=hot, epochs=2, cache=False), b, va,
                  log=said.append)
        loss[hot] = m.meta["training"]["history"][-1]["valid_logloss"]
    assert [x for x in said if "replicas" in x] == [
        "2 threads: the 50 most frequent features train on per-thread replicas (--hot-features)"]
    assert loss[50] < 0.5
    assert loss[50] == pytest.approx(loss[0], rel=0.01)


def test_cli_hot_features_option(tmp_path):
    runner = CliRunner()
    bad = runner.invoke(cli, ["train", "--hot-features", "many", SAMPLE,
                               "-o", str(tmp_path / "m.fm")])
    assert bad.exit_code == 2 and "neither 'auto' nor a whole number" in bad.output
    bad = runner.invoke(cli, ["train", "--hot-features", "70000", SAMPLE,
                               "-o", str(tmp_path / "m.fm")])
    assert bad.exit_code == 2 and "not in 0..65535" in bad.output
    bad = runner.invoke(cli, ["train", "--hot-features", "10", SAMPLE,
                               "-o", str(tmp_path / "m.fm")])
    assert bad.exit_code != 0 and "--threads 2 or more" in bad.output
    assert not (tmp_path / "m.fm").exists()
    for value in ("auto", "0", "25"):
        ok = runner.invoke(cli, ["train", "-s", "2", "--hot-features", value, "--no-cache", "-q",
                                  SAMPLE, "-o", str(tmp_path / f"m{value}.fm")])
        assert ok.exit_code == 0, ok.output
        assert (tmp_path / f"m{value}.fm").exists()


@openmp
def test_a_trainer_reloads_its_replicas_at_every_pass():
    # as above (no exchange before the end, each thread its half of `order`),
    # so a pass is exact; one trainer for two passes equals one per pass
    n, m = 40, 6
    b = rows(8, 400, np.arange(n))
    orders = [np.random.default_rng(s).permutation(b.n_rows).astype(np.int64) for s in (1, 2)]
    layout = _kernels.Layout("ffm", "binary", 1, n, m, KP, 1, use_bias=False, use_linear=False)
    hyper = dict(optimizer="adagrad", eta=0.2, l2_factors=1e-4)
    z = np.zeros(0, np.float32)
    hot = np.arange(n, dtype=np.int32)

    def arrays(F):
        return np.zeros(2, np.float32), np.zeros(2 * n, np.float32), F, z

    kept, fresh = start(n, m), start(n, m)
    trainer = _kernels.Trainer(layout, *arrays(kept), hyper, 2, hot, 10**9, False)
    assert trainer.hot_features == n
    for step, order in zip((0, 400), orders):
        a = trainer.train(b.indptr, b.fields, b.features, b.values, b.labels, z, order, step)
        f = _kernels.Trainer(layout, *arrays(fresh), hyper, 2, hot, 10**9, False)
        assert a == f.train(b.indptr, b.fields, b.features, b.values, b.labels, z, order, step)
    assert kept.tobytes() == fresh.tobytes()
    assert kept.tobytes() != start(n, m).tobytes()


def test_features_are_counted_on_spread_runs_of_rows_of_large_batches(monkeypatch):
    import fmcli.cpu as T

    b = skewed(2000)
    counts, rows = T.feature_counts(b, 300)
    assert rows == 2000 and counts.tolist() == np.bincount(b.features, minlength=300).tolist()
    monkeypatch.setattr(T, "HOT_SAMPLE_ROWS", 400)
    monkeypatch.setattr(T, "HOT_SAMPLE_SPANS", 4)
    counts, rows = T.feature_counts(b, 300)
    f = b.features.reshape(-1, 6)
    sample = np.concatenate([f[lo : lo + 100] for lo in (0, 500, 1000, 1500)])
    assert rows == 400 and counts.tolist() == np.bincount(sample.ravel(), minlength=300).tolist()
    # ids beyond the model's are not counted
    counts, _ = T.feature_counts(b, 50)
    assert len(counts) == 50 and counts.sum() == np.count_nonzero(sample < 50)


def _fwfm_run(b, arrays, order, threads, *, sync=256, copies=True, kind="fwfm", use_bias=True, hot=None):
    """Train float32 FwFM/FmFM (or FM) with linear terms (and a bias) on b, arrays = [B, L, F, R]
    in place; returns the Trainer."""
    n, m = 40, 6
    lay = _kernels.Layout(kind, "binary", 1, n, m, KP, 1, use_bias=use_bias, use_linear=True)
    hyper = dict(optimizer="adagrad", eta=0.2, l2_factors=1e-4)
    tr = _kernels.Trainer(lay, *arrays, hyper, threads, hot, sync, False, copies=copies)
    z = np.zeros(0, np.float32)
    tr.train(b.indptr, b.fields, b.features, b.values, b.labels, z, order, 0)
    return tr


def _fwfm_start(kind="fwfm", seed=1, use_bias=True):
    n, m = 40, 6
    lay = _kernels.Layout(kind, "binary", 1, n, m, KP, 1, use_bias=use_bias, use_linear=True)
    rng = np.random.default_rng(seed)
    out = []
    for size in lay.sizes:
        a = np.ones(size, np.float32)
        a[::2] = rng.random(len(a[::2]), dtype=np.float32) * 0.3
        out.append(a)
    return out


@openmp
@pytest.mark.parametrize("kind", ["fwfm", "fmfm", "fm"])
@pytest.mark.parametrize("hot", [False, True])
def test_threads_train_the_bias_and_field_pair_weights_on_copies(kind, hot):
    # the first half's rows carry features 0..19, the second half's 20..39:
    # only the bias (and FwFM's and FmFM's field-pair weights) are shared.
    # Copies exchanged only at the end of the pass: each thread trains as if
    # alone, and the result adds up both halves' changes; the same with
    # every feature on the threads' replicas as well
    b = joined(rows(3, 200, np.arange(20)), rows(4, 200, np.arange(20, 40)))
    order = np.arange(400, dtype=np.int64)
    start = _fwfm_start(kind)
    halves = []
    for part in (order[:200], order[200:]):
        arrays = [a.copy() for a in start]
        _fwfm_run(b, arrays, part, 1, kind=kind)
        halves.append(arrays)
    arrays = [a.copy() for a in start]
    tr = _fwfm_run(b, arrays, order, 2, sync=10**9, kind=kind,
                   hot=np.arange(40, dtype=np.int32) if hot else None)
    assert tr.copied == (("B",) if kind == "fm" else ("B", "R"))
    assert tr.hot_features == (40 if hot else 0)
    for name, got, a0, h1, h2 in zip("BLFR", arrays, start, *halves):
        assert not np.array_equal(h1, a0) or not np.array_equal(h2, a0) or len(a0) == 0, name
        np.testing.assert_allclose(got, h1 + h2 - a0, rtol=2e-6, atol=2e-6, err_msg=name)


@openmp
def test_without_copies_the_threads_share_the_bias():
    b = joined(rows(3, 200, np.arange(20)), rows(4, 200, np.arange(20, 40)))
    order = np.arange(400, dtype=np.int64)
    start = _fwfm_start()
    assert _fwfm_run(b, [a.copy() for a in start], order, 2, copies=False).copied == ()
    # one thread, or a mini-batch, or Adam: no copies
    assert _fwfm_run(b, [a.copy() for a in start], order, 1).copied == ()


def test_copies_follow_hot_features_zero():
    b = skewed(300)
    for hot, expect in ((None, ("B",)), (0, ())):
        cfg = Config(model="ffm", k=4, threads=2, hot_features=hot, cache=False)
        st = TrainState(cfg, 300, 6, np.random.default_rng(0))
        st.prepare(b)
        st.train_slice(b, np.arange(b.n_rows, dtype=np.int64), None, 0)
        assert st._trainer.copied == expect


@openmp
def test_fwfm_threads_with_copies_train_as_well_as_one_thread():
    b = skewed(40000, seed=9)
    va = skewed(5000, seed=10)
    for x in (b, va):
        f = x.features.reshape(-1, 6)
        noise = np.random.default_rng(len(x.labels)).random(len(x.labels)) < 0.15
        x.labels[:] = ((f[:, 0] + f[:, 1]) % 2 == 0) ^ noise
    loss = {}
    for threads in (1, 2):
        m = train(Config(model="fwfm", k=4, threads=threads, epochs=2, cache=False), b, va)
        loss[threads] = m.meta["training"]["history"][-1]["valid_logloss"]
    assert loss[2] == pytest.approx(loss[1], rel=0.01)


@openmp
@pytest.mark.parametrize("kind", ["fm", "ffm"])
def test_hot_features_and_their_linear_weights_keep_every_change(kind):
    # FM and FFM with linear terms, without a bias: the halves share no
    # parameter, so two threads give the one-thread model whatever the
    # tiers' intervals (the replicas hold the features' linear weights too)
    b = joined(rows(3, 300, np.arange(20)), rows(4, 300, np.arange(20, 40)))
    rng = np.random.default_rng(5)
    order = np.concatenate([rng.permutation(300), 300 + rng.permutation(300)]).astype(np.int64)
    start = _fwfm_start(kind, use_bias=False)
    one = [a.copy() for a in start]
    _fwfm_run(b, one, order, 1, kind=kind, use_bias=False)
    perm = np.random.default_rng(6).permutation(40)
    every = np.repeat(np.array([1, 7, 50, 10**9]), 10)[perm]
    two = [a.copy() for a in start]
    tr = _fwfm_run(b, two, order, 2, kind=kind, use_bias=False, hot=perm.astype(np.int32), sync=every)
    assert tr.hot_features == 40 and tr.copied == ()
    for name, got, want in zip("BLFR", two, one):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("model", ["fm", "fwfm", "fmfm"])
def test_every_factor_model_chooses_hot_features(model, monkeypatch):
    import fmcli.cpu as T

    b = skewed()
    monkeypatch.setattr(T, "HOT_MIN_ROWS", b.n_rows)
    st = TrainState(Config(model=model, k=4, threads=2), 300, 6, np.random.default_rng(0))
    st.prepare(b)
    counts = np.bincount(b.features, minlength=300)
    # one block per feature: HOT_BYTES holds 6 times as many features as FFM's
    assert set(st.hot.tolist()) == set(np.flatnonzero(counts >= T.HOT_MIN_SHARE * b.n_rows).tolist())
    st.train_slice(b, np.arange(b.n_rows, dtype=np.int64), None, 0)
    assert st._trainer.hot_features == len(st.hot)


def trainer(F, n, m, threads, hot, every, optimizer="adagrad", balance=False):
    """A kernels Trainer of FFM (no bias, no linear terms) over F, as run() builds one."""
    from kernels_compat import _HYPER, layout

    width = 1 + _kernels.n_state(optimizer)
    hyper = {name: _kernels.HYPER_DEFAULTS[name] for name in _HYPER}
    hyper.update(optimizer=optimizer, eta=0.2, l2_factors=1e-4)
    lay = layout("ffm", "binary", 1, n, m, KP, _kernels.n_state(optimizer), use_bias=False,
                 use_linear=False)
    z = np.zeros(0, np.float32)
    B, L = np.zeros(width, np.float32), np.zeros(width * n, np.float32)
    return _kernels.Trainer(lay, B, L, F, z, hyper, threads, hot, every, balance)


def train_on(t, b, order):
    z = np.zeros(0, np.float32)
    return t.train(b.indptr, b.fields, b.features, b.values, b.labels, z, order, 0)


@openmp
def test_unsettled_passes_keep_their_changes_until_settled():
    # every feature hot, no exchange before the end: with settle_passes off
    # the shared model is untouched after the pass, and settle() brings in
    # both threads' changes, as a settled pass does
    n, m = 40, 6
    b = rows(0, 400, np.arange(n))
    order = np.random.default_rng(2).permutation(b.n_rows).astype(np.int64)
    F0 = start(n, m)
    halves = each_half_alone(b, F0, order)
    F = F0.copy()
    t = trainer(F, n, m, 2, np.arange(n, dtype=np.int32), 10**9)
    assert t.settle_passes and not t.unsettled
    t.settle_passes = False
    train_on(t, b, order)
    assert t.unsettled
    assert np.array_equal(F, F0)
    t.settle()
    assert not t.unsettled
    np.testing.assert_allclose(F, halves[0] + halves[1] - F0, rtol=2e-6, atol=2e-6)
    before = F.copy()
    t.settle()     # nothing left to fold
    assert np.array_equal(F, before)


@openmp
def test_a_replica_takes_the_shared_values_at_its_first_touch():
    # pass 1 trains thread 0 on features 0..19 and thread 1 on 20..39; after
    # settling, the shared model is written from outside (as a restored
    # snapshot is).  Pass 2 must train from what is written, not from what
    # the replicas held: each feature's first touch takes the shared values
    n, m, b, order = disjoint_halves()
    F = start(n, m)
    t = trainer(F, n, m, 2, np.arange(n, dtype=np.int32), 10**9)
    t.settle_passes = False
    train_on(t, b, order)
    t.settle()
    written = start(n, m, seed=9)
    F[...] = written
    train_on(t, b, order)
    t.settle()
    one = written.copy()
    run(b, one, order, 1)
    np.testing.assert_allclose(F, one, rtol=1e-5, atol=1e-6)


@openmp
def test_passes_go_on_from_the_replicas_between_exchanges():
    # the threads share nothing (features 0..19 in the first half's rows,
    # 20..39 in the second's), each feature exchanged every 7 rows: two
    # unsettled passes and one settle give the one-thread model of both passes
    n, m, b, order = disjoint_halves()
    F0 = start(n, m)
    one = F0.copy()
    t1 = trainer(one, n, m, 1, None, 256)
    train_on(t1, b, order)
    train_on(t1, b, order)
    two = F0.copy()
    t = trainer(two, n, m, 2, np.arange(n, dtype=np.int32), 7)
    t.settle_passes = False
    train_on(t, b, order)
    train_on(t, b, order)
    assert t.unsettled
    t.settle()
    np.testing.assert_allclose(two, one, rtol=1e-5, atol=1e-6)


@openmp
def test_reading_the_backends_arrays_settles_the_replicas():
    b = skewed(n_rows=4000)
    st = state(hot_features=40)
    st.prepare(b)
    order = np.arange(b.n_rows, dtype=np.int64)
    st.train_slice(b, order, None, 0)
    t = st._trainer
    assert t.hot_features == 40 and not t.settle_passes and t.unsettled
    raw = st.__dict__["_F"].copy()
    F = st.F                            # the read folds the replicas in
    assert not t.unsettled and not np.array_equal(raw, F)
    st.train_slice(b, order, None, 0)
    assert t.unsettled
    snap = st.snapshot()                # as every read of the arrays does
    assert not t.unsettled and np.array_equal(snap[2], st.__dict__["_F"])
