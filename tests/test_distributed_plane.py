"""The data plane of data-parallel training on Dask (fmcli.distributed):
workers read their rows from the cache and are sent row positions, the
model stays on the workers between rounds (the driver gathers it only for
checkpoints and the result), --syncs-per-epoch, on_round's figures, the
fallbacks (no visible cache, streamed data) and the block merge against
merge_array."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fmcli import Config
from fmcli import distributed as dist
from fmcli.cpu import CpuBackend
from fmcli.data.batch import Batch
from fmcli.errors import EX_CONFIG, ConfigError
from fmcli.train import train

from clirun import invoke
from synthdata import write_synth

distributed = pytest.importorskip("distributed")

from daskrun import Kept as _Kept, arrays as _arrays, cluster, on_cluster, same_bytes as _same_bytes, synth_split  # noqa: E402,F401


@pytest.fixture
def rounds(monkeypatch):
    """The on_round reports of the runs of a test."""
    got: list[dict] = []
    monkeypatch.setattr(dist.DaskBackend, "on_round", staticmethod(got.append))
    return got


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    return synth_split(tmp_path_factory, "plane", 11)


def _cfg(tmp_path: Path, **over) -> dict:
    """A run with the cache on, in a directory of the test's own."""
    return {"model": "ffm", "epochs": 2, "seed": 3, "threads": 1, "cache_dir": str(tmp_path / "cache"), **over}


def _row_bytes(path: Path) -> int:
    """Bytes the rows of a file take in memory as the kernels read them (compact)."""
    from fmcli.data.dataset import load_dataset

    ds = load_dataset(str(path), cache_dir=None)
    b = ds.in_memory(True)
    return sum(a.nbytes for a in (b.labels, b.indptr, b.fields, b.features, b.values))


# ---------------------------------------------------------------------------
# rows stay where the data are
# ---------------------------------------------------------------------------

def test_workers_read_the_cache_and_rounds_send_row_positions(on_cluster, rounds, synth, tmp_path):
    on_cluster(2)
    m = train(Config(scheduler="local:2", **_cfg(tmp_path)), str(synth / "tr.ffm"), str(synth / "va.ffm"))
    rec = m.meta["training"]["distributed"]
    assert rec["data"] == "cache"
    assert len(rounds) == rec["rounds"] == 2
    rows_size = _row_bytes(synth / "tr.ffm")
    for r in rounds[1:]:        # (the first round also sends the starting model)
        # 8 bytes per row (its position), against ~10 entries of 5 bytes and 20 bytes of the row itself
        assert r["bytes_sent"] <= 8 * r["rows"] + 4096
        assert r["bytes_sent"] < rows_size / 5
    assert all(r["bytes_moved"] > r["bytes_sent"] for r in rounds)     # the model's blocks move between workers


def test_one_worker_reading_the_cache_is_the_single_process_run(on_cluster, synth, tmp_path):
    on_cluster(1)
    cfg = _cfg(tmp_path, shuffle=True, epochs=3)
    single = train(Config(**cfg), str(synth / "tr.ffm"))
    one = train(Config(scheduler="local:1", **cfg), str(synth / "tr.ffm"))
    assert one.meta["training"]["distributed"]["data"] == "cache"
    _same_bytes(single, one)


def test_an_invisible_cache_sends_the_rows_once_with_the_same_result(on_cluster, rounds, synth, tmp_path,
                                                                      monkeypatch):
    on_cluster(2)
    cfg = _cfg(tmp_path, syncs_per_epoch=2)
    seen = train(Config(scheduler="local:2", **cfg), str(synth / "tr.ffm"))
    assert seen.meta["training"]["distributed"]["data"] == "cache"
    of = dist.CacheRows.of

    def elsewhere(ds, batch, compact, *rows):    # a cache under a name the workers do not have
        ref = of(ds, batch, compact, *rows)
        return None if ref is None else dist.CacheRows(**{**ref.__dict__, "path": str(tmp_path / "gone.fmcache")})

    monkeypatch.setattr(dist.CacheRows, "of", staticmethod(elsewhere))
    rounds.clear()
    shipped = train(Config(scheduler="local:2", **cfg), str(synth / "tr.ffm"))
    assert shipped.meta["training"]["distributed"]["data"] == "shipped"
    _same_bytes(seen, shipped)
    rows_size = _row_bytes(synth / "tr.ffm")
    # the rows went out once, each worker's shard to it (not all of them to each): what
    # the driver sent beyond the run that read the cache (the same model and positions)
    extra = (shipped.meta["training"]["distributed"]["bytes_out"]
             - seen.meta["training"]["distributed"]["bytes_out"])
    assert rows_size * 0.9 <= extra <= rows_size * 1.1
    assert all(r["bytes_sent"] <= 8 * r["rows"] for r in rounds[1:])


@pytest.mark.parametrize("shipped", [False, True])
def test_each_worker_holds_its_shard_of_the_rows_only(cluster, on_cluster, synth, tmp_path, monkeypatch, shipped):
    """Two workers: each reads (or receives) half of the training rows and
    half of the validation rows, whatever the rounds' shuffled orders ask."""
    on_cluster(2)
    if shipped:
        monkeypatch.setattr(dist.CacheRows, "of", staticmethod(lambda *args: None))
    held = []

    def rows_held(dask_worker) -> list[int]:
        # read from the cache (kept by the module) or received (in Dask's store)
        rows = [b.n_rows for b in dist._HELD.values()]
        rows += [v.n_rows for v in dask_worker.data.values() if isinstance(v, Batch)]
        return sorted(rows)

    def look(stats) -> None:        # between rounds: the rows each worker holds
        held.append(cluster.run(rows_held))

    m = train(Config(scheduler="local:2", eval_every=2000, **_cfg(tmp_path, shuffle=True, syncs_per_epoch=2)),
              str(synth / "tr.ffm"), str(synth / "va.ffm"), on_eval=look)
    assert m.meta["training"]["distributed"]["data"] == ("shipped" if shipped else "cache")
    assert held
    for seen in held:
        assert sorted(seen.values()) == [[1500, 6000], [1500, 6000]]   # of 12000 and 3000 rows


def test_row_weights_go_with_their_shards(on_cluster, synth, tmp_path):
    """Rows of LABEL:WEIGHT: one worker is the single-process run, and two
    workers train the same model whether they read their shards of rows and
    weights from the cache or are sent them."""
    lines = (synth / "tr.ffm").read_text().splitlines()
    weighted = tmp_path / "w.ffm"
    weighted.write_text("".join(f"{ln.split(' ', 1)[0]}:{0.5 + i % 3} {ln.split(' ', 1)[1]}\n"
                                for i, ln in enumerate(lines)))
    cfg = _cfg(tmp_path, shuffle=True)
    single = train(Config(**cfg), str(weighted), str(synth / "va.ffm"))
    on_cluster(1)
    _same_bytes(single, train(Config(scheduler="local:1", **cfg), str(weighted), str(synth / "va.ffm")))
    on_cluster(2)
    read = train(Config(scheduler="local:2", **cfg), str(weighted), str(synth / "va.ffm"))
    sent = train(Config(scheduler="local:2", **{**cfg, "cache": False}), str(weighted), str(synth / "va.ffm"))
    assert read.meta["training"]["distributed"]["data"] == "cache"
    assert sent.meta["training"]["distributed"]["data"] == "shipped"
    _same_bytes(read, sent)
    unweighted = train(Config(scheduler="local:2", **cfg), str(synth / "tr.ffm"), str(synth / "va.ffm"))
    assert unweighted.params["factors"].tobytes() != read.params["factors"].tobytes()


@pytest.mark.parametrize("budget", [0, 1 << 30])
def test_a_shard_read_from_the_cache_is_the_drivers_rows(tmp_path, budget):
    """Dataset.rows_in_memory, a worker's shard: the driver's rows lo..hi,
    across the chunks of three files, from a new cache and a cache found."""
    from fmcli.data.dataset import load_dataset

    lines = write_synth(tmp_path, 5000, 2, 6)
    files = [tmp_path / f"{i}.ffm" for i in range(3)]
    for f, (a, b) in zip(files, [(0, 700), (700, 3100), (3100, 5000)]):
        f.write_text("".join(lines[a:b]))
    for attempt in ("built", "hit"):
        ds = load_dataset([str(f) for f in files], cache_dir=str(tmp_path / "c"), memory_budget=budget)
        assert ds.cached_from == attempt and ds.n_chunks == 3
        for compact in (False, True):
            whole = ds.in_memory(compact)
            for lo, hi in [(0, 5000), (0, 1), (1234, 4321), (600, 800), (4999, 5000), (2500, 2500), (700, 3100)]:
                part, ref = ds.rows_in_memory(lo, hi, compact), whole.rows(lo, hi)
                for name in ("labels", "indptr", "features", "fields"):
                    assert getattr(part, name).tobytes() == getattr(ref, name).tobytes(), (lo, hi, name)
                assert part.fields.dtype == whole.fields.dtype
                assert np.array_equal(part.values if part.values.shape[0] else np.ones(part.nnz, np.float32),
                                      ref.values if ref.values.shape[0] else np.ones(ref.nnz, np.float32))
        ds.close()


def test_streamed_chunks_send_their_rows_each_round(on_cluster, synth, tmp_path):
    on_cluster(1)
    # two files (two chunks) and a memory budget below their size: trained chunk by chunk
    lines = (synth / "tr.ffm").read_text().splitlines(keepends=True)
    files = [tmp_path / "a.ffm", tmp_path / "b.ffm"]
    files[0].write_text("".join(lines[:5000]))
    files[1].write_text("".join(lines[5000:]))
    cfg = _cfg(tmp_path, memory_budget=1 << 16, shuffle=True)
    single = train(Config(**cfg), [str(f) for f in files])
    one = train(Config(scheduler="local:1", **cfg), [str(f) for f in files])
    assert one.meta["training"]["distributed"]["data"] == "rows"
    _same_bytes(single, one)


# ---------------------------------------------------------------------------
# the model stays on the workers
# ---------------------------------------------------------------------------

def test_the_driver_gathers_the_model_only_for_checkpoints_and_the_result(on_cluster, synth, tmp_path):
    on_cluster(2)
    m = train(Config(scheduler="local:2", **_cfg(tmp_path, epochs=3)), str(synth / "tr.ffm"),
              str(synth / "va.ffm"))
    rec = m.meta["training"]["distributed"]
    assert rec["rounds"] == 3 and rec["model_gathers"] == 1        # validated 3 times on the workers
    assert len(m.meta["training"]["history"]) == 3
    m = train(Config(scheduler="local:2", checkpoint_dir=str(tmp_path / "ck"), **_cfg(tmp_path, epochs=3)),
              str(synth / "tr.ffm"), str(synth / "va.ffm"))
    assert m.meta["training"]["distributed"]["model_gathers"] == 3  # checkpoints after epochs 1 and 2, the result


def test_validation_on_the_workers_scores_as_the_driver_would(on_cluster, synth, tmp_path):
    from fmcli.metrics import evaluate
    from fmcli.predict import Scorer

    on_cluster(2)
    m = train(Config(scheduler="local:2", **_cfg(tmp_path)), str(synth / "tr.ffm"), str(synth / "va.ffm"))
    from fmcli.data.dataset import load_dataset

    va = load_dataset(str(synth / "va.ffm"), cache_dir=None).in_memory()
    again = evaluate("binary", (va.labels > 0).astype(np.float32), Scorer(m).scores(va))["logloss"]
    assert m.meta["training"]["history"][-1]["valid_logloss"] == pytest.approx(again, rel=1e-9)


def test_a_snapshot_stays_on_the_cluster_until_restored(cluster, synth):
    cfg = Config(model="ffm", threads=1, scheduler="local:2")
    rows = _batch(4000, 1)
    backend = dist.new_dask_backend(cfg, 50, 3, np.random.default_rng(0), "binary", None, lambda m: None,
                                    runner=_Kept(cluster, use=2))
    backend.total_steps = 3 * 4000
    order = np.arange(4000, dtype=np.int64)
    backend.train_slice(rows, order, None, 0)
    snap = backend.snapshot()
    assert isinstance(snap, dist._Snapshot) and backend.pulls == 0
    kept = [np.array(a) for a in snap]             # a checkpoint reads it: gathered now
    assert backend.pulls == 1
    backend.train_slice(rows, order, None, 4000)
    assert any(a.tobytes() != b.tobytes() for a, b in zip(backend.export_state(), kept))
    backend.restore(snap)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(backend.export_state(), kept))
    assert backend.all_finite()


def _batch(rows: int, seed: int) -> Batch:
    """Rows of 3 fields over 50 ids, labels from a fixed rule with noise."""
    rng = np.random.default_rng(seed)
    features = rng.integers(0, 50, (rows, 3)).astype(np.int32)
    labels = np.where((features.sum(axis=1) % 3 == 0) ^ (rng.random(rows) < 0.1), 1.0, 0.0).astype(np.float32)
    return Batch(labels=labels, indptr=np.arange(0, 3 * rows + 1, 3, dtype=np.int64),
                 fields=np.tile(np.arange(3, dtype=np.int32), rows), features=features.reshape(-1),
                 values=np.ones(3 * rows, np.float32))


# ---------------------------------------------------------------------------
# synchronisation and on_round
# ---------------------------------------------------------------------------

def test_syncs_per_epoch_gives_its_rounds_reproducibly(on_cluster, rounds, synth, tmp_path):
    on_cluster(2)
    cfg = _cfg(tmp_path, syncs_per_epoch=3)
    runs = [train(Config(scheduler="local:2", **cfg), str(synth / "tr.ffm")) for _ in range(2)]
    _same_bytes(*runs)
    rec = runs[0].meta["training"]["distributed"]
    assert rec["rounds"] == 2 * 3 and rec["syncs_per_epoch"] == 3
    first = rounds[:6]
    assert [r["round"] for r in first] == [1, 2, 3, 4, 5, 6]
    assert [r["rows"] for r in first[:3]] == [4000, 4000, 4000]       # 12000 rows in 3 rounds
    for r in first:
        assert len(r["workers"]) == 2 and sum(w["rows"] for w in r["workers"]) == r["rows"]
        assert r["seconds"] > 0 and r["merge_seconds"] > 0 and r["bytes_moved"] > 0
        assert all(w["rows_per_s"] > 0 and w["worker"].startswith("tcp://") for w in r["workers"])


def test_syncs_per_epoch_settings():
    assert Config(scheduler="local:2", syncs_per_epoch=4).round_rows(1000) == 250
    assert Config(scheduler="local:2", syncs_per_epoch=3, batch_size=4).round_rows(1000) == 336   # whole batches
    assert Config(scheduler="local:2", rows_per_round=100).round_rows(1000) == 100
    for bad in ({"scheduler": "local:2", "syncs_per_epoch": 0}, {"syncs_per_epoch": 2},
                {"scheduler": "local:2", "syncs_per_epoch": 2, "rows_per_round": 100}):
        with pytest.raises(ConfigError):
            Config(**bad)


def test_cli_refuses_syncs_and_rows_per_round_together(synth, tmp_path):
    r = invoke("train", "-q", "--scheduler", "local:2", "--syncs-per-epoch", "2", "--rows-per-round", "100",
               "--no-cache", synth / "tr.ffm", "-o", tmp_path / "m.fm")
    assert r.exit_code == EX_CONFIG, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--syncs-per-epoch" in lines[0] and "--rows-per-round" in lines[0]
    assert not (tmp_path / "m.fm").exists()
    assert invoke("train", "--syncs-per-epoch", "0", synth / "tr.ffm").exit_code == 2


# ---------------------------------------------------------------------------
# the block merge
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("optimizer", ["adagrad", "rowwise-adagrad", "ftrl", "sgd", "adam"])
@pytest.mark.parametrize("workers", [2, 3])
def test_block_merge_is_merge_array(optimizer, workers, monkeypatch):
    """Parts as workers send them (whole blocks and changed rows), merged a
    few rows at a time: the bits of merge_array on the changed rows."""
    monkeypatch.setattr(dist, "MERGE_ROWS", 64)
    host = CpuBackend(Config(model="ffm", k=4, optimizer=optimizer), 300, 5, np.random.default_rng(0))
    rng = np.random.default_rng(5)
    for name, base in zip(dist.ARRAYS, host.arrays()):
        if base.shape[0] == 0:
            continue
        base = base + rng.random(base.shape).astype(base.dtype)
        parts, changes = [], []
        for j in range(workers):
            x = base.copy()
            touched = rng.random(len(x)) < 0.6
            d = rng.random(x.shape).astype(x.dtype) * 0.1
            d[: len(d) // 2, d.shape[1] // 2 :] = 0      # rows whose state does not grow
            x[touched] += d[touched]
            idx = dist.changed_rows(base, x)
            changes.append((idx, x[idx]))
            parts.append((None, x, np.packbits(dist._changed_mask(base, x))) if j % 2 == 0
                         else (idx.astype(np.int32), x[idx], None))
        union, rows = dist.merge_array(host, name, base, changes)
        want = base.copy()
        want[union] = rows
        got = dist._merge_part(host, name, base, parts, "optimizer")
        assert got.tobytes() == want.tobytes(), name


@pytest.mark.parametrize("optimizer", ["adagrad", "rowwise-adagrad"])
@pytest.mark.parametrize("workers", [2, 3, 4])
@pytest.mark.parametrize("layout", ["mixed", "indexed"])
def test_compiled_adagrad_merge_has_the_numpy_merges_bits(optimizer, workers, layout, monkeypatch):
    """merge_adagrad_f32 against _merge_adagrad's NumPy code: whole and
    indexed parts mixed, rows no one, one and several workers changed,
    accumulators that did not grow (the mean-move rule), signed zeros, NaN
    and infinities."""
    monkeypatch.setattr(dist, "MERGE_ROWS", 50)
    host = CpuBackend(Config(model="ffm", k=8, optimizer=optimizer), 200, 4, np.random.default_rng(0))
    rng = np.random.default_rng(workers)
    for name, base in zip(dist.ARRAYS, host.arrays()):
        if base.shape[0] == 0:
            continue
        base = (base + rng.standard_normal(base.shape)).astype(np.float32)
        base[::7] = 0.0
        base[1::11] = -0.0
        parts = []
        for j in range(workers):
            x = base.copy()
            touched = rng.random(len(x)) < [0.9, 0.3, 0.5, 0.05][j]
            d = (rng.standard_normal(x.shape) * 0.1).astype(np.float32)
            d[: len(d) // 3, d.shape[1] // 2 :] = 0          # accumulators that do not grow
            d[len(d) // 3 : len(d) // 2] *= -1               # ... or shrink
            x[touched] += d[touched]
            x[touched & (np.arange(len(x)) % 13 == 0), 0] = -0.0
            if j == 1 and len(x) > 20:
                x[17, 0], x[19, -1] = np.nan, np.inf
            mask = dist._changed_mask(base, x)
            idx = np.flatnonzero(mask).astype(np.int32)
            whole = layout == "mixed" and j % 2 == 0
            parts.append((None, x, np.packbits(mask)) if whole else (idx, x[idx], None))
        with np.errstate(invalid="ignore"):
            got = dist._merge_part(host, name, base, parts, "optimizer")
            monkeypatch.setattr(dist, "MERGE_KERNEL", False)
            want = dist._merge_part(host, name, base, parts, "optimizer")
        monkeypatch.setattr(dist, "MERGE_KERNEL", True)
        assert got.tobytes() == want.tobytes(), name


def test_compiled_merge_refuses_bad_parts():
    from fmcli._core import _kernels

    base = np.zeros((4, 2), np.float32)
    out = np.empty_like(base)
    ok = (np.array([1, 2], np.int32), np.ones((2, 2), np.float32), None)
    _kernels.merge_adagrad_f32(base, out, [ok, ok], 0, 1, 1, 1)
    for bad in ((np.array([2, 1], np.int32), np.ones((2, 2), np.float32), None),   # not increasing
                (np.array([1, 4], np.int32), np.ones((2, 2), np.float32), None),   # outside
                (np.array([1], np.int32), np.ones((2, 2), np.float32), None),      # a row per index
                (None, np.ones((3, 2), np.float32), np.zeros(1, np.uint8))):       # n rows
        with pytest.raises(ValueError):
            _kernels.merge_adagrad_f32(base, out, [ok, bad], 0, 1, 1, 1)
    for layout in ((0, 2, 1, 1), (0, 1, 2, 1), (0, 1, 1, 2)):      # overlapping slots, past the end
        with pytest.raises(ValueError):
            _kernels.merge_adagrad_f32(base, out, [ok], *layout)


@pytest.mark.parametrize("kernel", [True, False])
def test_changed_mask_compares_bits(monkeypatch, kernel):
    monkeypatch.setattr(dist, "MASK_KERNEL", kernel)
    a = np.zeros((5, 3), np.float32)
    b = a.copy()
    b[1, 2] = -0.0          # other bits, equal value
    b[3, 0] = 1
    assert dist._changed_mask(a, b).tolist() == [False, True, False, True, False]
    c, d = np.full((3, 2), np.nan, np.float32), np.full((3, 2), np.nan, np.float32)
    d[2, 1] = -np.nan
    assert dist._changed_mask(c, d).tolist() == [False, False, True]     # the same NaN is no change


@pytest.mark.parametrize("shape, dtype", [((1000, 39, 4), np.float32), ((777, 5), np.float16), ((513,), np.float32),
                                          ((300, 3), np.int8), ((40, 0), np.float32), ((0, 8), np.float32)])
def test_compiled_changed_mask_is_the_numpy_one(monkeypatch, shape, dtype):
    rng = np.random.default_rng(3)
    before = rng.normal(size=shape).astype(dtype)
    after = before.copy()
    if after.size:
        flat = after.reshape(after.shape[0], -1)
        rows = rng.random(flat.shape[0]) < 0.5
        cols = rng.integers(0, flat.shape[1], flat.shape[0])
        flat[rows, cols[rows]] += np.array(1, dtype)       # a change anywhere in the row
        flat[-1, -1] = -flat[-1, -1] if flat[-1, -1] else 1
    got = dist._changed_mask(before, after)
    monkeypatch.setattr(dist, "MASK_KERNEL", False)
    np.testing.assert_array_equal(got, dist._changed_mask(before, after))


def test_changed_row_mask_refuses_other_shapes():
    a = np.zeros((4, 8), np.uint8)
    for before, after, out in ((a, np.zeros((4, 7), np.uint8), np.zeros(4, np.uint8)),
                               (a, np.zeros((5, 8), np.uint8), np.zeros(4, np.uint8)),
                               (a, a.copy(), np.zeros(3, np.uint8))):
        with pytest.raises(ValueError):
            dist._kernels.changed_row_mask(before, after, out)


# ---------------------------------------------------------------------------
# accuracy
# ---------------------------------------------------------------------------

@pytest.mark.slow
def test_two_workers_within_half_a_percent_of_one_process(on_cluster, tmp_path):
    on_cluster(2)
    lines = write_synth(tmp_path, 100000, 13, 8)
    (tmp_path / "va.ffm").write_text("".join(lines[:20000]))
    (tmp_path / "tr.ffm").write_text("".join(lines[20000:]))
    cfg = _cfg(tmp_path, epochs=4)
    single = train(Config(**cfg), str(tmp_path / "tr.ffm"), str(tmp_path / "va.ffm"))
    two = train(Config(scheduler="local:2", **cfg), str(tmp_path / "tr.ffm"), str(tmp_path / "va.ffm"))
    assert two.meta["training"]["distributed"]["data"] == "cache"

    def best(m):
        return min(e["valid_logloss"] for e in m.meta["training"]["history"])

    assert best(two) <= best(single) * 1.005, (best(single), best(two))
