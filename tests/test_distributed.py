"""Data-parallel training on Dask (fmcli.distributed): one worker is the
single-process run, two workers train close to it and reproducibly, the
merge rules on hand-made changes, and the command line's errors."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fmcli import Config
from fmcli import distributed as dist
from fmcli.cpu import CpuBackend
from fmcli.data.batch import Batch
from fmcli.errors import EX_UNAVAILABLE, Interrupted
from fmcli.metrics import evaluate
from fmcli.predict import Scorer
from fmcli.train import train

from clirun import invoke, ok
from synthdata import write_synth

distributed = pytest.importorskip("distributed")

from daskrun import arrays as _arrays, cluster, on_cluster, same_bytes as _same_bytes, synth  # noqa: E402,F401

OPTIMIZERS = ("adagrad", "sgd", "adam", "ftrl")


def _base(**over) -> dict:
    return {"model": "ffm", "epochs": 2, "seed": 3, "threads": 1, "cache": False, **over}


# ---------------------------------------------------------------------------
# one worker is the single-process run
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_one_worker_is_the_single_process_run(on_cluster, synth, optimizer, shuffle):
    on_cluster(1)
    cfg = _base(optimizer=optimizer, shuffle=shuffle)
    single = train(Config(**cfg), str(synth / "tr.ffm"))
    # several rounds per slice: each round starts at its step (Adam's correction)
    one = train(Config(scheduler="local:1", rows_per_round=2500, **cfg), str(synth / "tr.ffm"))
    _same_bytes(single, one)
    assert one.meta["training"]["device"] == "dask (1 worker)"
    rec = one.meta["training"]["distributed"]
    assert rec["workers"] == 1 and rec["rounds"] == 2 * 5   # 12000 rows in rounds of 2500, two epochs
    assert rec["bytes_out"] > 0 and rec["bytes_back"] > 0


# ---------------------------------------------------------------------------
# two workers
# ---------------------------------------------------------------------------

def _best_logloss(model) -> float:
    return min(e["valid_logloss"] for e in model.meta["training"]["history"])


def test_two_workers_train_close_to_one_process_and_reproducibly(on_cluster, synth):
    on_cluster(2)
    cfg = _base(epochs=3)
    single = train(Config(**cfg), str(synth / "tr.ffm"), str(synth / "va.ffm"))
    runs = [train(Config(scheduler="local:2", **cfg), str(synth / "tr.ffm"), str(synth / "va.ffm"))
            for _ in range(2)]
    _same_bytes(*runs)
    rec = runs[0].meta["training"]["distributed"]
    assert rec["workers"] == 2 and rec["rounds"] == 3     # one round per slice (12000 rows < 32768)
    assert runs[0].meta["training"]["device"] == "dask (2 workers)"
    # On 12000 rows each worker sees half an epoch's rows between merges; a
    # few thousand rows more per worker bring it within 0.5% (see the slow test).
    single_ll, two_ll = _best_logloss(single), _best_logloss(runs[0])
    assert two_ll < single_ll * 1.01, (single_ll, two_ll)


@pytest.mark.slow
def test_two_workers_within_half_a_percent_on_more_rows(on_cluster, tmp_path):
    on_cluster(2)
    lines = write_synth(tmp_path, 120000, 7, 8)
    (tmp_path / "va.ffm").write_text("".join(lines[:20000]))
    (tmp_path / "tr.ffm").write_text("".join(lines[20000:]))
    cfg = _base(epochs=4)
    single = train(Config(**cfg), str(tmp_path / "tr.ffm"), str(tmp_path / "va.ffm"))
    two = train(Config(scheduler="local:2", **cfg), str(tmp_path / "tr.ffm"), str(tmp_path / "va.ffm"))
    assert _best_logloss(two) <= _best_logloss(single) * 1.005


def _rare_batch(rows: int, seed: int) -> Batch:
    """Rows of one rare feature (field 0: one of rows / 4 ids, each with a
    label of its own 90% of the time) and one common feature (field 1: 4 ids,
    no signal)."""
    rng = np.random.default_rng(seed)
    n_rare = rows // 4
    rare = rng.integers(0, n_rare, rows)
    sign = np.random.default_rng(99).random(n_rare) < 0.5      # the same ids mean the same for any seed
    labels = np.where(sign[rare] ^ (rng.random(rows) < 0.1), 1.0, -1.0).astype(np.float32)
    common = n_rare + rng.integers(0, 4, rows)
    features = np.stack([rare, common], axis=1).reshape(-1).astype(np.int32)
    fields = np.tile(np.array([0, 1], np.int32), rows)
    return Batch(labels=labels, indptr=np.arange(0, 2 * rows + 1, 2, dtype=np.int64), fields=fields,
                 features=features, values=np.ones(2 * rows, np.float32))


def test_adagrad_weighted_merge_beats_plain_averaging_on_rare_features(monkeypatch):
    tr, va = _rare_batch(4000, 1), _rare_batch(4000, 2)
    losses = {}
    for rule in dist.MERGE_RULES:
        monkeypatch.setattr(dist, "connect", lambda config, say: dist.InlineRunner(2))
        monkeypatch.setattr(dist.DaskBackend, "merge_rule", rule)
        m = train(Config(model="lr", epochs=3, seed=0, threads=1, scheduler="local:2", rows_per_round=1000,
                         shuffle=False), tr)
        losses[rule] = evaluate("binary", va.labels, Scorer(m).scores(va))["logloss"]
    assert losses["optimizer"] < losses["average"] - 0.01, losses


# ---------------------------------------------------------------------------
# the merge on hand-made changes
# ---------------------------------------------------------------------------

def _host(optimizer: str, **over) -> CpuBackend:
    return CpuBackend(Config(model="lr", optimizer=optimizer, **over), 8, 1, np.random.default_rng(0))


def test_adagrad_merge_weights_moves_by_accumulator_increments():
    host = _host("adagrad")
    base = host.L.copy()                    # rows (w, G): w 0, G 1
    r0 = np.array([[-0.3, 1.5], [0.2, 1.2]], np.float32)   # worker 0 changed rows 3 and 5
    r1 = np.array([[0.1, 1.1]], np.float32)                # worker 1 changed row 3
    idx, rows = dist.merge_array(host, "L", base, [(np.array([3, 5]), r0), (np.array([3]), r1)])
    assert idx.tolist() == [3, 5]
    dG0, dG1 = np.float32(1.5) - 1, np.float32(1.1) - 1
    w = (dG0 * np.float64(np.float32(-0.3)) + dG1 * np.float64(np.float32(0.1))) / (dG0 + dG1)
    assert rows[0, 0] == np.float32(w)
    assert rows[0, 1] == np.float32(1 + dG0 + dG1)
    assert rows[1].tobytes() == r0[1].tobytes()        # one worker's row: as it is
    # plain averaging halves worker 0's move of row 5
    idx, avg = dist.merge_array(host, "L", base, [(np.array([3, 5]), r0), (np.array([3]), r1)], "average")
    assert avg[1, 0] == np.float32(0.1)


def test_ftrl_merge_weights_moves_by_n_increments_and_takes_z_from_the_closed_form():
    host = _host("ftrl", l1=0.5, l2=0.25, ftrl_alpha=0.1, ftrl_beta=1.0)
    base = host.L.copy()                    # rows (w, z, n)
    base[2] = [0.0, 0.2, 4.0]
    base[4] = [1.5, -20.0, 4.0]
    r0 = np.array([[9.0, -2.0, 5.0], [0.0, 0.3, 6.0]], np.float32)    # rows 2 (dn 1, move 9) and 4
    r1 = np.array([[7.0, 0.0, 4.5], [0.0, -0.1, 5.0]], np.float32)    # rows 2 (dn 0.5, move 7) and 4
    idx, rows = dist.merge_array(host, "L", base, [(np.array([2, 4]), r0), (np.array([2, 4]), r1)])
    assert idx.tolist() == [2, 4]
    w = (1.0 * np.float64(9.0) + 0.5 * np.float64(7.0)) / 1.5
    n = 5.5
    assert rows[0, 0] == np.float32(w) and rows[0, 2] == np.float32(n)
    z = -(np.float64(np.float32(w)) * ((1.0 + np.sqrt(n)) / 0.1 + 0.25) + 0.5)
    assert rows[0, 1] == np.float32(z)
    # FTRL's closed form of the merged z and n gives the merged weight back
    back = -(np.float64(rows[0, 1]) + 0.5) / ((1.0 + np.sqrt(np.float64(rows[0, 2]))) / 0.1 + 0.25)
    assert back == pytest.approx(np.float64(rows[0, 0]), rel=1e-6)
    # both moved the weight to 0 (L1's dead zone): exactly 0, z the mean of theirs
    zmean = (np.float64(np.float32(0.3)) + np.float64(np.float32(-0.1))) / 2
    assert rows[1, 0] == 0.0 and rows[1, 1] == np.float32(zmean) and rows[1, 2] == np.float32(4.0 + 2.0 + 1.0)
    # a row one worker changed: that worker's row as it is
    idx, rows = dist.merge_array(host, "L", base, [(np.array([2]), r0[:1]), (np.zeros(0, int), base[:0])])
    assert idx.tolist() == [2] and rows[0].tobytes() == r0[0].tobytes()


def test_ftrl_rate_rewrite_keeps_the_weights_and_the_untouched_bits():
    host = _host("ftrl", l1=0.5, l2=0.25, ftrl_alpha=0.1, ftrl_beta=1.0)
    rng = np.random.default_rng(3)
    L = host.L
    L[:, 2] = rng.uniform(0, 9, L.shape[0])
    L[:, 1] = rng.uniform(-30, 30, L.shape[0])
    L[:, 0] = np.where(np.abs(L[:, 1]) <= 0.5, 0.0,
                       -(L[:, 1] - np.sign(L[:, 1]) * 0.5) / ((1.0 + np.sqrt(L[:, 2])) / 0.1 + 0.25))
    base = [a.copy() for a in host.arrays()]
    arrays = [a.copy() for a in host.arrays()]
    dist._ftrl_rate(host, arrays, 0.2)              # the rate of 2 workers
    w, z, n = arrays[1][:, 0], arrays[1][:, 1], arrays[1][:, 2]
    nz = w != 0
    closed = -(z - np.sign(z) * 0.5) / ((1.0 + np.sqrt(n)) / 0.2 + 0.25)
    np.testing.assert_allclose(closed[nz], w[nz], rtol=1e-5)
    assert (w == base[1][:, 0]).all() and (n == base[1][:, 2]).all()
    arrays[1][3, 0] += 1.0                           # a weight the worker moved
    dist._ftrl_rate(host, arrays, 0.1, base=base)    # back to the run's rate
    keep = np.arange(L.shape[0]) != 3
    assert arrays[1][keep].tobytes() == base[1][keep].tobytes()     # untouched: the same bits
    assert arrays[1][3, 1] == np.float32(-(np.float64(arrays[1][3, 0]) * ((1.0 + np.sqrt(np.float64(
        arrays[1][3, 2]))) / 0.1 + 0.25) + np.sign(arrays[1][3, 0]) * 0.5))


@pytest.mark.parametrize("model", ["ffm", "fwfm", "fmfm"])
def test_compiled_ftrl_rate_has_the_numpy_bits(model, monkeypatch):
    cfg = Config(model=model, k=4, optimizer="ftrl", l1=0.05, l2=1e-3, ftrl_alpha=0.3, ftrl_beta=0.5)
    host = CpuBackend(cfg, 40, 5, np.random.default_rng(0))
    rng = np.random.default_rng(1)
    start = []
    for name, a in zip(dist.ARRAYS, host.arrays()):
        a[...] = rng.uniform(-2, 2, a.shape).astype(a.dtype) * (rng.random(a.shape) > 0.3)
        if a.size:
            n = dist._slots(host, name, a)[2]
            n[...] = np.abs(n)
        start.append(a.copy())
    got = {}
    for kernel in (True, False):
        monkeypatch.setattr(dist, "FTRL_KERNEL", kernel)
        arrays = [a.copy() for a in start]
        dist._ftrl_rate(host, arrays, 0.6)
        for a in arrays:
            a[::3] += np.float32(0.25)          # rows a worker moved
        dist._ftrl_rate(host, arrays, 0.3, base=start)
        got[kernel] = arrays
    for a, b in zip(got[True], got[False]):
        assert a.tobytes() == b.tobytes()
    assert any(a[1::3].tobytes() == b[1::3].tobytes() and a.size for a, b in zip(got[True], start))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_sgd_and_adam_merge_average_the_moves_of_the_workers_that_touched_a_row(optimizer):
    host = _host(optimizer)
    base = host.L.copy()
    width = base.shape[1]
    r0 = np.full((1, width), 0.5, np.float32)
    r1 = np.full((1, width), 0.25, np.float32)
    idx, rows = dist.merge_array(host, "L", base, [(np.array([1]), r0), (np.array([1]), r1), (np.zeros(0, int),
                                                                                            base[:0])])
    assert idx.tolist() == [1]
    np.testing.assert_array_equal(rows[0], np.full(width, 0.375, np.float32))


def test_one_worker_is_applied_as_it_is():
    backend = dist.DaskBackend(Config(model="fm", optimizer="adam"), 6, 2, np.random.default_rng(1))
    changed = [a.copy() for a in backend.arrays()]
    for a in changed:
        a[:1] += 0.125      # (FM's R has no rows)
    backend.apply([[(np.arange(min(1, len(a))), a[:1]) for a in changed]])
    for a, b in zip(backend.arrays(), changed):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("n", [1, 2, 3, 7, 10, 11, 1000, 1001])
@pytest.mark.parametrize("shards", [1, 2, 3, 4, 7])
def test_positions_are_dealt_to_shards_one_to_one(n, shards):
    bounds = dist.shard_bounds(n, shards)
    sizes = np.diff(bounds)
    assert bounds[0] == 0 and bounds[-1] == n and sizes.max() - sizes.min() <= 1
    shard, row = dist.dealt(np.arange(n), n, shards)
    assert ((0 <= row) & (row < sizes[shard])).all()
    assert sorted((bounds[shard] + row).tolist()) == list(range(n))     # every row once
    if shards == 1:
        assert row.tolist() == list(range(n))                           # one shard: the order itself


def test_a_round_is_shared_evenly_each_shard_in_its_order():
    # consecutive positions (no shuffle): every shard gets its share, its rows in order
    cut = dist.round_pieces(np.arange(100, 160), 1000, 3)
    assert [j for j, _, _ in cut] == [0, 1, 2]
    assert [len(rows) for _, _, rows in cut] == [20, 20, 20]
    for _, where, rows in cut:
        assert (np.diff(rows) == 1).all() and (np.diff(where) > 0).all()
    # a shuffled round: each piece in the round's order, positions mapped back
    positions = np.random.default_rng(0).permutation(1000)[:500]
    cut = dist.round_pieces(positions, 1000, 2)
    assert sorted(np.concatenate([w for _, w, _ in cut]).tolist()) == list(range(500))
    bounds = dist.shard_bounds(1000, 2)
    for j, where, rows in cut:
        assert (np.diff(where) > 0).all()
        shard, row = dist.dealt(positions[where], 1000, 2)
        assert (shard == j).all() and (row == rows).all() and (bounds[j] + rows < bounds[j + 1]).all()
    assert abs(len(cut[0][2]) - 250) < 50
    # fewer rows than shards: only the shards that have some
    assert [(j, w.tolist(), r.tolist()) for j, w, r in dist.round_pieces(np.array([1]), 2, 4)] == [(1, [0], [0])]


def test_a_round_reports_the_earliest_row_that_stopped_it():
    cut = dist.round_pieces(np.arange(10), 10, 2)          # shard 0: positions 0,2,..; shard 1: 1,3,...
    sums = [(1.0, 2.0, 0, 3), (0.5, 1.0, 1, 1)]            # shard 0 stopped at its 4th row (position 6), 1 at position 3
    assert dist._round_sums(cut, sums) == (1.5, 3.0, 1, 3)
    assert dist._round_sums(cut, [(0, 0, 0, -1), (0, 0, 0, -1)])[3] == -1


def test_take_rows_keeps_compact_rows():
    b = Batch(labels=np.array([1, -1, 1], np.float32), indptr=np.array([0, 2, 3, 5], np.int64),
              fields=np.array([0, 1, 0, 0, 1], np.uint8), features=np.array([1, 2, 3, 4, 5], np.int32),
              values=np.zeros(0, np.float32))
    t = dist.take_rows(b, np.array([2, 0]))
    assert t.indptr.tolist() == [0, 2, 4] and t.features.tolist() == [4, 5, 1, 2]
    assert t.fields.dtype == np.uint8 and t.values.shape == (0,) and t.labels.tolist() == [1, 1]


# ---------------------------------------------------------------------------
# the run loop's features through Dask
# ---------------------------------------------------------------------------

def test_interrupted_run_resumes_to_the_same_arrays(on_cluster, synth, tmp_path):
    on_cluster(2)
    cfg = _base(epochs=2, eval_every=2000, checkpoint_every=3000, scheduler="local:2", rows_per_round=1000)
    straight = train(Config(checkpoint_dir=str(tmp_path / "a"), **cfg), str(synth / "tr.ffm"),
                     str(synth / "va.ffm"))
    assert len(straight.meta["training"]["evaluations"]) == 2 * 5     # every 2000 rows, epoch ends aside
    calls = []

    def stop_once():
        calls.append(1)
        return 2 if len(calls) == 9 else None    # SIGINT in epoch 2, after its third slice

    with pytest.raises(Interrupted):
        train(Config(checkpoint_dir=str(tmp_path / "b"), **cfg), str(synth / "tr.ffm"), str(synth / "va.ffm"),
              should_stop=stop_once)
    resumed = train(Config(checkpoint_dir=str(tmp_path / "b"), **cfg), str(synth / "tr.ffm"),
                    str(synth / "va.ffm"), resume=str(tmp_path / "b"))
    _same_bytes(straight, resumed)


# ---------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------

def test_cli_trains_on_a_local_cluster_and_predict_reads_the_model(synth, tmp_path):
    out = tmp_path / "m.fm"
    r = ok(invoke("train", "--scheduler", "local:2", "-t", "2", "--no-cache", synth / "tr.ffm",
                  "-p", synth / "va.ffm", "-o", out))
    assert "2 workers" in r.stderr
    p = ok(invoke("predict", out, synth / "va.ffm"))
    assert len(p.stdout.splitlines()) == 3000


def _malloc_environment() -> dict:
    return {name: os.environ.get(name) for name in dist.WORKER_MALLOC}


def _comm_settings() -> tuple[int, int]:
    # what Dask's comms use: read once, when Dask was imported
    from distributed.comm.utils import OFFLOAD_THRESHOLD
    from distributed.protocol.utils import BIG_BYTES_SHARD_SIZE

    return BIG_BYTES_SHARD_SIZE, dask_bytes(OFFLOAD_THRESHOLD)


def dask_bytes(value) -> int:
    import dask.utils

    return dask.utils.parse_bytes(value) if isinstance(value, str) else int(value)


def test_a_local_cluster_takes_blocks_from_the_heap_and_sends_them_whole(monkeypatch):
    # its workers are started with WORKER_MALLOC (no block mapped on its
    # own, 1 GiB of free heap kept): every round's blocks reuse memory.  (As
    # Dask's own settings, a variable set in the environment takes
    # precedence, and starting a cluster sets them there: other tests' clusters did.)
    for name in (*dist.WORKER_MALLOC, *dist.WORKER_COMM):
        monkeypatch.delenv(name, raising=False)
    runner = dist.connect(Config(scheduler="local:2", threads=1), lambda msg: None)
    try:
        seen = runner.client.run(_malloc_environment)
        comm = runner.client.run(_comm_settings)
    finally:
        runner.close()
    assert len(seen) == 2
    for env in seen.values():
        assert env == {name: str(value) for name, value in dist.WORKER_MALLOC.items()}
    # and they send a round's blocks whole, from the event loop (no shards to
    # copy together, no other thread)
    assert list(comm.values()) == [(1 << 30, 2 << 30)] * 2


_DRIVER_COMM = """
from fmcli import distributed as dist
from fmcli.config import Config
from fmcli.errors import ClusterError
try:
    dist.connect(Config(scheduler="tcp://127.0.0.1:9", scheduler_timeout=0.5), print)
except ClusterError:
    pass
from distributed.comm.utils import OFFLOAD_THRESHOLD
from distributed.protocol.utils import BIG_BYTES_SHARD_SIZE
print(BIG_BYTES_SHARD_SIZE, OFFLOAD_THRESHOLD)
"""


@pytest.mark.parametrize("given, expected", [({}, "1073741824 2147483648"),
                                             ({"DASK_DISTRIBUTED__COMM__SHARD": "8MiB"}, "8388608 2147483648")])
def test_the_driver_sends_the_model_whole_too(given, expected):
    # it sets the comm settings before it imports Dask's distributed package,
    # unless the environment (or Dask's config files) set them
    env = {k: v for k, v in os.environ.items() if k not in dist.WORKER_COMM}
    out = subprocess.run([sys.executable, "-c", _DRIVER_COMM], env={**env, **given}, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert out.split()[-2:] == expected.split()


def test_unreachable_scheduler_is_one_line_within_the_timeout(synth, tmp_path):
    t0 = time.perf_counter()
    r = invoke("train", "-q", "--scheduler", "tcp://127.0.0.1:9", "--scheduler-timeout", "2", "--no-cache",
               synth / "tr.ffm", "-o", tmp_path / "m.fm")
    assert time.perf_counter() - t0 < 20
    assert r.exit_code == EX_UNAVAILABLE, (r.exit_code, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "tcp://127.0.0.1:9" in lines[0], r.stderr
    assert not (tmp_path / "m.fm").exists()


def test_missing_dask_names_the_extra(synth, tmp_path):
    code = ("import sys; sys.modules['distributed'] = None; sys.modules['dask'] = None\n"
            "from fmcli.cli import main\n"
            "sys.argv = ['fm', 'train', '-q', '--scheduler', 'local:2', '--no-cache', sys.argv[1], '-o', sys.argv[2]]\n"
            "main()\n")
    r = subprocess.run([sys.executable, "-c", code, str(synth / "tr.ffm"), str(tmp_path / "m.fm")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == EX_UNAVAILABLE, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'fm-ctr[dask]'" in lines[0], r.stderr


@pytest.mark.parametrize("bad", [{"scheduler": "local:0"}, {"scheduler": "somewhere"},
                                 {"scheduler": "local:2", "scheduler_file": "s.json"},
                                 {"scheduler": "local:2", "device": "cuda"}, {"rows_per_round": 100},
                                 {"scheduler": "local:2", "scheduler_timeout": 0},
                                 {"scheduler": "tcp://h:1", "min_workers": 0}, {"min_workers": 2},
                                 {"scheduler": "local:2", "min_workers": 3},
                                 {"scheduler": "tcp://h:1", "min_workers": 2.5},
                                 {"scheduler": "tcp://h:1", "min_workers": True}])
def test_bad_scheduler_settings_are_refused(bad):
    from fmcli.errors import ConfigError

    with pytest.raises(ConfigError):
        Config(**bad)
