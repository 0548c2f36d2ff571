"""Compact feature ids: a model of ids sparse in their space has a slot per
id that occurs and stores the id map (fmcli.data.idmap, fm-model(5) 2.0)."""

import json
import os

import numpy as np
import pytest

import fmcli.data.idmap as idmap
from fmcli.data.batch import Batch
from fmcli.data.idmap import IdMap, Occurrences, is_sparse
from fmcli.errors import ModelFormatError
from fmcli.libffm import write_model
from fmcli.model import load_model
from fmcli.modelfile import read_header
from fmcli.predict import predict
from clirun import invoke, ok

SPACE = 1 << 17
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")


def fm(*args, input=None):
    return invoke(*args, input=input)


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Each test its own cache: a cache notes the ids of its rows under the rule of its run."""
    monkeypatch.setenv("FMCLI_CACHE_DIR", str(tmp_path / "cache"))


def hashed_rows(n, seed, fields=6, vocab=30, space=SPACE, extra=None):
    """libffm rows whose ids are (field, value) pairs hashed into `space`:
    a few hundred distinct ids spread over a million."""
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(n):
        vals = rng.integers(0, vocab, fields)
        ids = [(f * 7919 + int(v) * 104729 + 12345) * 2654435761 % space for f, v in enumerate(vals)]
        score = sum(((i >> 3) % 7 - 3) * 0.2 for i in ids)
        label = int(rng.random() < 1 / (1 + np.exp(-score)))
        entries = [f"{f}:{i}:1" for f, i in enumerate(ids)]
        if extra is not None:
            entries.append(f"{fields}:{extra(rng)}:1")
        lines.append(f"{label} " + " ".join(entries))
    return "\n".join(lines) + "\n"


def ids_of(path):
    return sorted({int(t.split(":")[1]) for line in open(path) for t in line.split()[1:]})


@pytest.fixture
def sparse_files(tmp_path):
    tr, va = tmp_path / "tr.ffm", tmp_path / "va.ffm"
    tr.write_text(hashed_rows(400, 1))
    va.write_text(hashed_rows(100, 2, vocab=40))     # values 30..39 are unseen in training
    return tr, va


TRAIN = ("train", "-q", "--model", "ffm", "-k", "4", "-t", "3", "-s", "1")


def train_pair(tmp_path, monkeypatch, files, *extra):
    """(sparse model, dense model) trained alike on `files`."""
    tr, va = files
    ok(fm(*TRAIN, *extra, "-p", va, "-o", tmp_path / "sparse.fm", tr))
    with monkeypatch.context() as mp:
        mp.setattr(idmap, "SPARSE_MIN_SPACE", 1 << 62)
        mp.setenv("FMCLI_CACHE_DIR", str(tmp_path / "dense-cache"))
        ok(fm(*TRAIN, *extra, "-p", va, "-o", tmp_path / "dense.fm", tr))
    return load_model(tmp_path / "sparse.fm"), load_model(tmp_path / "dense.fm")


# -- the map itself ---------------------------------------------------------------------------


@pytest.mark.parametrize("space", [1000, 1 << 20])
def test_lookup_is_the_rank_of_each_id(space, monkeypatch):
    rng = np.random.default_rng(0)
    ids = np.sort(rng.choice(space, 300, replace=False))
    probe = np.concatenate([ids, rng.integers(0, space + 500, 5000), [0, space - 1, space, 2**31 - 1]])
    want = np.searchsorted(ids, probe)
    want = np.where((want < ids.size) & (ids[np.minimum(want, ids.size - 1)] == probe), want, ids.size)
    assert (IdMap(ids).lookup(probe.astype(np.int32)) == want).all()
    # the binary search used beyond BITMAP_MAX_SPACE gives the same slots
    monkeypatch.setattr(idmap, "BITMAP_MAX_SPACE", 10)
    assert (IdMap(ids).lookup(probe) == want).all()


def test_popcount_without_bitwise_count(monkeypatch):
    words = np.random.default_rng(1).integers(0, 2**63, 1000, dtype=np.int64).astype(np.uint64)
    words[:3] = [0, 2**64 - 1, 1 << 63]
    want = [bin(int(w)).count("1") for w in words]
    assert idmap._popcount(words).tolist() == want
    assert idmap._popcount_bytes(words).tolist() == want
    # numpy 1.x: the lookups go through the byte table and give the same slots
    ids = np.sort(np.random.default_rng(2).choice(SPACE, 500, replace=False))
    probe = np.random.default_rng(3).integers(0, SPACE, 10_000)
    fast = IdMap(ids).lookup(probe)
    monkeypatch.setattr(idmap, "_HAS_BITWISE_COUNT", False)
    assert (IdMap(ids).lookup(probe) == fast).all()


def test_appended_slots_keep_the_old_ones():
    m = IdMap(np.array([500, 7, 90]))                 # slots need not be in id order
    assert m.lookup(np.array([7, 90, 500, 8])).tolist() == [1, 2, 0, 3]
    grown = m.extended(np.array([3, 90, 10_000, 3]))
    assert grown.ids.tolist() == [500, 7, 90, 3, 10_000]
    assert grown.lookup(np.array([3, 500, 10_000, 4])).tolist() == [3, 0, 4, 5]
    assert m.extended(np.array([7])) is m
    with pytest.raises(ValueError):
        IdMap(np.array([1, 1]))


def test_occurrences_small_and_large_ids(monkeypatch):
    occ = Occurrences()
    occ.add(np.array([5, 3, 5], np.int32), 5)
    occ.add(np.array([1000], np.int32), 1000)
    assert occ.ids().tolist() == [3, 5, 1000] and occ.count() == 3
    monkeypatch.setattr(idmap, "BITMAP_MAX_SPACE", 100)    # ids too large for a flag each
    occ.add(np.array([2**30, 3], np.int32), 2**30)
    assert occ.ids().tolist() == [3, 5, 1000, 2**30] and occ.count() == 4


def test_the_rule():
    assert is_sparse(988, 39_000_000)
    assert not is_sparse(128_942, 128_942)              # every id used
    assert not is_sparse(10, 1000)                      # too small a space to bother
    assert not is_sparse(idmap.SPARSE_MIN_SPACE // 2, idmap.SPARSE_MIN_SPACE)


# -- training ---------------------------------------------------------------------------------


def test_sparse_model_has_a_slot_per_id_and_trains_as_the_dense_one(tmp_path, monkeypatch, sparse_files):
    sparse, dense = train_pair(tmp_path, monkeypatch, sparse_files)
    used = ids_of(sparse_files[0])
    assert sparse.feature_ids.tolist() == used
    assert sparse.spec.n_features == len(used) < 1000
    assert dense.feature_ids is None and dense.spec.n_features == max(used) + 1
    # one thread: the slots start and train as their ids do in the dense model, and the
    # weights of ids that never occur never change, so the arrays agree exactly
    for name in sparse.params:
        want = dense.params[name] if name == "bias" else dense.params[name][sparse.feature_ids]
        assert np.array_equal(sparse.params[name], want), name
    for name in sparse.state:
        want = dense.state[name] if name == "bias" else dense.state[name][sparse.feature_ids]
        assert np.array_equal(sparse.state[name], want), name
    # the training run continued alike: same losses every epoch
    assert ([h["train_loss"] for h in sparse.meta["training"]["history"]]
            == [h["train_loss"] for h in dense.meta["training"]["history"]])
    h = read_header(tmp_path / "sparse.fm")
    assert h["format"] == "2.0"                       # a 1.x reader refuses it
    assert read_header(tmp_path / "dense.fm")["format"] == "1.3"
    assert h["features"] == {"id_space": max(used) + 1, "used": len(used), "id_map": True}
    assert os.path.getsize(tmp_path / "sparse.fm") * 100 < os.path.getsize(tmp_path / "dense.fm")


def test_scores_equal_the_dense_model_on_seen_ids(tmp_path, monkeypatch, sparse_files):
    sparse, dense = train_pair(tmp_path, monkeypatch, sparse_files)
    tr = sparse_files[0]
    assert np.array_equal(predict(sparse, str(tr)), predict(dense, str(tr)))
    # fm predict: the same predictions, printed
    a = ok(fm("predict", tmp_path / "sparse.fm", tr)).stdout
    b = ok(fm("predict", tmp_path / "dense.fm", tr)).stdout
    assert a == b


def test_unseen_ids_add_nothing(tmp_path, monkeypatch, sparse_files):
    sparse, dense = train_pair(tmp_path, monkeypatch, sparse_files)
    va = sparse_files[1]
    seen = set(sparse.feature_ids.tolist())
    # the validation rows with each unseen id replaced by one outside either model: such
    # entries add nothing but still count in the row's norm (instance normalization)
    outside = tmp_path / "outside.ffm"
    with open(va) as src, open(outside, "w") as out:
        for line in src:
            label, *entries = line.split()
            entries = [e if int(e.split(":")[1]) in seen else e.split(":")[0] + f":{2**30}:1" for e in entries]
            out.write(" ".join([label] + entries) + "\n")
    p = predict(sparse, str(va))
    assert not np.array_equal(p, predict(dense, str(va)))    # the dense model scores its untrained ids
    assert np.array_equal(p, predict(sparse, str(outside)))
    assert np.array_equal(p, predict(dense, str(outside)))
    res = ok(fm("predict", tmp_path / "sparse.fm", va))
    assert "that the model has no weights for" in res.stderr
    # --strict-ids names the first unseen id as the data has it (not its slot)
    res = fm("predict", "--strict-ids", tmp_path / "sparse.fm", va)
    assert res.exit_code == 65
    unseen = [int(e.split(":")[1]) for line in open(va) for e in line.split()[1:]
              if int(e.split(":")[1]) not in seen]
    assert f"feature {unseen[0]} in field" in res.stderr and "is not one of the model's" in res.stderr
    assert "Traceback" not in res.output
    # validation during training scores the validation rows the same way
    logged = sparse.meta["training"]["valid_logloss"]
    out = ok(fm("predict", tmp_path / "sparse.fm", va)).stderr
    assert f"logloss = {logged:.5f}" in out


def test_dense_data_keeps_its_layout(tmp_path):
    data = os.path.join(ROOT, "data", "samples", "train.ffm")
    ok(fm(*TRAIN, "-o", tmp_path / "m.fm", data))
    m = load_model(tmp_path / "m.fm")
    h = read_header(tmp_path / "m.fm")
    assert m.feature_ids is None and "feature_ids" not in [a["name"] for a in h["arrays"]]
    assert m.spec.n_features == max(ids_of(data)) + 1
    assert h["features"]["id_map"] is False and h["features"]["id_space"] == m.spec.n_features


def test_a_large_id_space_fits_a_small_memory_limit(tmp_path):
    # one row with id 2,000,000 used to need a 0.24 GiB FFM model; its slots need kilobytes
    d = tmp_path / "d.ffm"
    d.write_text("1 0:1:1 1:2:1\n0 0:3:1 1:4:1\n1 0:5:1 1:2000000:1\n")
    ok(fm("train", "-q", "--max-memory", "16M", "-o", tmp_path / "m.fm", d))
    assert load_model(tmp_path / "m.fm").feature_ids.tolist() == [1, 2, 3, 4, 5, 2_000_000]
    out = ok(fm("train", "--dry-run", "--max-memory", "16M", d)).stdout
    assert "6 of 2,000,001 ids used: a slot per id that occurs (6 slots" in out


def test_small_id_space_is_not_remapped(tmp_path):
    tr = tmp_path / "small.ffm"
    tr.write_text(hashed_rows(200, 3, space=5000))      # sparse, but a small space: not worth it
    ok(fm(*TRAIN, "-o", tmp_path / "m.fm", tr))
    assert load_model(tmp_path / "m.fm").feature_ids is None


def test_cache_hit_gives_the_same_model(tmp_path, sparse_files):
    tr = sparse_files[0]
    ok(fm(*TRAIN, "-o", tmp_path / "a.fm", tr))
    res = ok(fm("train", "--model", "ffm", "-k", "4", "-t", "3", "-s", "1", "-o", tmp_path / "b.fm", tr))
    assert "from the cache" in res.stderr
    a, b = load_model(tmp_path / "a.fm"), load_model(tmp_path / "b.fm")
    assert np.array_equal(a.feature_ids, b.feature_ids)
    assert all(np.array_equal(a.params[n], b.params[n]) for n in a.params)


def test_python_api_batch(tmp_path):
    from fmcli import Config, train

    rng = np.random.default_rng(0)
    n = 300
    features = (rng.integers(0, 40, (n, 3)) * 99991 % SPACE).astype(np.int32).reshape(-1)
    batch = Batch(labels=rng.integers(0, 2, n).astype(np.float32), indptr=np.arange(0, 3 * n + 1, 3),
                  fields=np.tile(np.arange(3, dtype=np.int32), n), features=features,
                  values=np.ones(3 * n, np.float32), lines=None, weights=None)
    model = train(Config(model="fm", k=4, epochs=2, threads=1), batch)
    assert model.feature_ids.tolist() == np.unique(features).tolist()
    p = predict(model, batch)
    assert p.shape == (n,) and np.isfinite(p).all()


# -- warm starts ------------------------------------------------------------------------------


def test_warm_start_appends_new_ids(tmp_path, sparse_files):
    tr, va = sparse_files
    ok(fm(*TRAIN, "-o", tmp_path / "parent.fm", tr))
    parent = load_model(tmp_path / "parent.fm")
    ok(fm(*TRAIN, "--init-model", tmp_path / "parent.fm", "-o", tmp_path / "child.fm", va))
    child = load_model(tmp_path / "child.fm")
    n0 = parent.spec.n_features
    assert child.feature_ids[:n0].tolist() == parent.feature_ids.tolist()
    new = sorted(set(ids_of(va)) - set(parent.feature_ids.tolist()))
    assert new and child.feature_ids[n0:].tolist() == new
    assert child.spec.n_features == n0 + len(new)
    # the ids of either data set score in the child
    res = ok(fm("predict", "--strict-ids", tmp_path / "child.fm", tr))
    assert res.stdout.count("\n") == 400


def test_warm_start_of_a_dense_parent_stays_dense(tmp_path, sparse_files, monkeypatch):
    tr, va = sparse_files
    with monkeypatch.context() as mp:
        mp.setattr(idmap, "SPARSE_MIN_SPACE", 1 << 62)
        ok(fm(*TRAIN, "--no-cache", "-o", tmp_path / "parent.fm", tr))
    ok(fm(*TRAIN, "--init-model", tmp_path / "parent.fm", "-o", tmp_path / "child.fm", va))
    child = load_model(tmp_path / "child.fm")
    assert child.feature_ids is None
    assert child.spec.n_features == max(max(ids_of(tr)), max(ids_of(va))) + 1


def test_warm_start_of_a_sparse_parent_with_dense_data(tmp_path, sparse_files):
    tr = sparse_files[0]
    ok(fm(*TRAIN, "-o", tmp_path / "parent.fm", tr))
    parent = load_model(tmp_path / "parent.fm")
    dense = tmp_path / "dense.ffm"
    dense.write_text("".join(f"{i % 2} 0:{i}:1 1:{(i + 1) % 50}:1\n" for i in range(50)))
    ok(fm(*TRAIN, "--init-model", tmp_path / "parent.fm", "-o", tmp_path / "child.fm", dense))
    child = load_model(tmp_path / "child.fm")
    n0 = parent.spec.n_features
    assert child.feature_ids[:n0].tolist() == parent.feature_ids.tolist()
    assert set(child.feature_ids.tolist()) == set(parent.feature_ids.tolist()) | set(range(50))


# -- libffm export, inspect, dry run, model file ----------------------------------------------


@pytest.mark.parametrize("binary", [False, True])
def test_libffm_export_is_the_dense_layout(tmp_path, monkeypatch, binary):
    monkeypatch.setattr(idmap, "SPARSE_MIN_SPACE", 1024)     # a small space keeps the text export short
    files = tmp_path / "tr.ffm", tmp_path / "va.ffm"
    files[0].write_text(hashed_rows(300, 1, space=8192))
    files[1].write_text(hashed_rows(50, 2, space=8192))
    sparse, dense = train_pair(tmp_path, monkeypatch, files, "--no-bias", "--no-linear")
    assert sparse.feature_ids is not None and dense.feature_ids is None
    write_model(sparse, tmp_path / "s.txt", binary=binary)
    write_model(dense, tmp_path / "d.txt", binary=binary)
    if binary:
        from fmcli.libffm import read_model

        s, d = read_model(str(tmp_path / "s.txt")), read_model(str(tmp_path / "d.txt"))
        assert s.spec.n_features == d.spec.n_features == dense.spec.n_features
        ids = sparse.feature_ids
        assert np.array_equal(s.params["factors"][ids], d.params["factors"][ids])
        rest = np.setdiff1d(np.arange(d.spec.n_features), ids)
        assert not s.params["factors"][rest].any()       # ids without a slot: zero weights
        return
    s_lines = (tmp_path / "s.txt").read_text().splitlines()
    d_lines = (tmp_path / "d.txt").read_text().splitlines()
    assert s_lines[:4] == d_lines[:4] and len(s_lines) == len(d_lines)
    m = sparse.spec.n_fields
    used = set(sparse.feature_ids.tolist())
    for i, (a, b) in enumerate(zip(s_lines[4:], d_lines[4:])):
        if i // m in used:
            assert a == b
        else:
            assert set(a.split()[1:]) == {"0"}
    # the export scores the training rows as the model does
    res = ok(fm("convert", tmp_path / "sparse.fm", "--to", "libffm-model", "-o", tmp_path / "c.txt"))
    assert (tmp_path / "c.txt").read_text() == (tmp_path / "s.txt").read_text(), res.stderr


def test_inspect_shows_original_ids(tmp_path, monkeypatch, sparse_files):
    train_pair(tmp_path, monkeypatch, sparse_files)
    used = ids_of(sparse_files[0])
    text = ok(fm("inspect", tmp_path / "sparse.fm")).stdout
    assert f"features  {len(used):,} slots\n" in text
    assert (f"feature ids  {len(used):,} used in training, of an id space of {max(used) + 1:,}; "
            "an id map gives each its slot") in text
    dense = ok(fm("inspect", tmp_path / "dense.fm")).stdout
    assert f"features  {max(used) + 1:,}\n" in dense
    assert f"{len(used):,} used in training, of an id space of {max(used) + 1:,}\n" in dense
    summary = json.loads(ok(fm("inspect", "--json", tmp_path / "sparse.fm")).stdout)
    assert summary["features"] == {"id_space": max(used) + 1, "used": len(used), "id_map": True}
    for name in ("sparse", "dense"):
        top = json.loads(ok(fm("inspect", "--json", tmp_path / f"{name}.fm", "--features", "10")).stdout)
        feats = top["top_features"]["features"] if "top_features" in top else top["features"]["features"]
        if name == "sparse":
            sparse_top = [f["feature"] for f in feats]
        else:
            assert [f["feature"] for f in feats] == sparse_top
    assert set(sparse_top) <= set(used)
    pairs = {}
    for name in ("sparse", "dense"):
        out = ok(fm("inspect", tmp_path / f"{name}.fm", "--top-interactions", "5",
                    "--data", sparse_files[0])).stdout
        pairs[name] = out[out.index("top interactions"):]
    assert pairs["sparse"] == pairs["dense"]
    assert any(str(i) in pairs["sparse"] for i in used)         # ids as the data has them


def test_dry_run_reports_space_and_used_ids(tmp_path, sparse_files):
    used = ids_of(sparse_files[0])
    out = ok(fm("train", "--dry-run", "--model", "ffm", sparse_files[0])).stdout
    assert f"feature ids < {max(used) + 1:,}" in out
    assert f"{len(used):,} of {max(used) + 1:,} ids used: a slot per id that occurs" in out
    out = ok(fm("train", "--dry-run", "--model", "ffm", os.path.join(ROOT, "data", "samples", "train.ffm"))).stdout
    assert "ids used: a weight per id of the space" in out


def test_old_fixtures_load_without_a_map():
    for name in ("v1-ffm.fm", "v1-fm.fm", "v1-lr.fm"):
        m = load_model(os.path.join(FIXTURES, name))
        assert m.feature_ids is None and m.id_map() is None
    out = ok(fm("inspect", os.path.join(FIXTURES, "v1-ffm.fm"))).stdout
    assert "slots" not in out


def test_a_bad_id_map_is_refused(tmp_path, sparse_files):
    ok(fm(*TRAIN, "-o", tmp_path / "m.fm", sparse_files[0]))
    m = load_model(tmp_path / "m.fm", mmap=False)
    m.feature_ids = m.feature_ids.copy()
    m.feature_ids[1] = m.feature_ids[0]
    m.save(tmp_path / "bad.fm")
    with pytest.raises(ModelFormatError, match="feature_ids"):
        load_model(tmp_path / "bad.fm")
    res = fm("predict", tmp_path / "bad.fm", sparse_files[0])
    assert res.exit_code not in (0, 70) and "Traceback" not in res.output


# -- raw rows through a preprocessing spec ------------------------------------------------------


def test_criteo_spec_model_is_small_and_scores_raw_rows(tmp_path, monkeypatch):
    from test_convert import criteo_rows, tsv

    (tmp_path / "raw.tsv").write_text(tsv(criteo_rows(600, 5)))
    ok(fm("convert", "-q", "criteo", tmp_path / "raw.tsv", "--split", "0.9", "-o", tmp_path / "x.ffm"))
    spec = tmp_path / "x.ffm.spec.json"
    base = ("train", "-q", "-t", "2", "-s", "1", "--spec", spec, "-p", tmp_path / "x.valid.ffm")
    ok(fm(*base, "-o", tmp_path / "m.fm", tmp_path / "x.ffm"))
    m = load_model(tmp_path / "m.fm")
    assert m.feature_ids is not None and m.spec.n_features < 2000
    assert os.path.getsize(tmp_path / "m.fm") < 5 << 20
    ok(fm("convert", "-q", "criteo", "--spec", spec, tmp_path / "raw.tsv", "-o", tmp_path / "all.ffm"))
    raw = ok(fm("predict", tmp_path / "m.fm", tmp_path / "raw.tsv")).stdout.split()
    ffm = ok(fm("predict", tmp_path / "m.fm", tmp_path / "all.ffm")).stdout.split()
    assert len(raw) == 600 and raw == ffm


def test_wide_parquet_hashed_columns(tmp_path, monkeypatch):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rng = np.random.default_rng(3)
    n = 300
    table = pa.table({"label": rng.integers(0, 2, n).astype(np.int64),
                      "city": [f"c{i}" for i in rng.integers(0, 20, n)],
                      "device": [f"d{i}" for i in rng.integers(0, 5, n)],
                      "hour": rng.integers(0, 24, n).astype(np.int64)})
    pq.write_table(table, tmp_path / "w.parquet")
    args = ("train", "-q", "--model", "ffm", "-k", "4", "-t", "2", "-s", "1", "--hash-bits", "20")
    ok(fm(*args, "-o", tmp_path / "sparse.fm", tmp_path / "w.parquet"))
    with monkeypatch.context() as mp:
        mp.setattr(idmap, "SPARSE_MIN_SPACE", 1 << 62)
        mp.setenv("FMCLI_CACHE_DIR", str(tmp_path / "dense-cache"))
        ok(fm(*args, "-o", tmp_path / "dense.fm", tmp_path / "w.parquet"))
    sparse, dense = load_model(tmp_path / "sparse.fm"), load_model(tmp_path / "dense.fm")
    assert sparse.spec.n_features <= 20 + 5 + 24 < dense.spec.n_features
    a = ok(fm("predict", tmp_path / "sparse.fm", tmp_path / "w.parquet")).stdout
    assert a == ok(fm("predict", tmp_path / "dense.fm", tmp_path / "w.parquet")).stdout


def test_spec_of_a_smaller_hash_space_is_refused(tmp_path, sparse_files):
    from fmcli.data.criteo import Spec

    spec = tmp_path / "spec.json"
    spec.write_text(Spec.criteo(min_count=1, hash_space=1000).dumps())
    res = fm(*TRAIN, "--spec", spec, "-o", tmp_path / "m.fm", sparse_files[0])
    assert res.exit_code == 78, res.output
    assert "the spec hashes into 1,000 ids but the training data have feature ids up to" in res.stderr


@pytest.mark.parametrize("kind,task,options", [
    ("fm", "binary", {"optimizer": "adagrad"}),
    ("fwfm", "binary", {"optimizer": "ftrl", "l1": 0.01}),
    ("lr", "binary", {"optimizer": "adam"}),
    ("ffm", "multiclass", {"optimizer": "adagrad"}),
    ("fm", "regression", {"optimizer": "sgd", "l2": 0.01}),
    ("ffm", "binary", {"optimizer": "rowwise-adagrad"}),
    ("ffm", "binary", {"storage": "float16"}),
    ("fm", "binary", {"dtype": "float64"}),
])
def test_every_kind_trains_as_its_dense_model(monkeypatch, kind, task, options):
    from fmcli import Config, train

    rng = np.random.default_rng(0)
    n = 300
    features = (rng.integers(0, 40, (n, 3)) * 99991 % SPACE).astype(np.int32).reshape(-1)
    labels = rng.integers(0, 3 if task == "multiclass" else 2, n).astype(np.float32)
    batch = Batch(labels=labels, indptr=np.arange(0, 3 * n + 1, 3), fields=np.tile(np.arange(3, dtype=np.int32), n),
                  features=features, values=np.ones(3 * n, np.float32), lines=None, weights=None)
    cfg = Config(model=kind, task=task, k=3, epochs=2, threads=1, **options)
    sparse = train(cfg, batch)
    monkeypatch.setattr(idmap, "SPARSE_MIN_SPACE", 1 << 62)
    dense = train(cfg, batch)
    ids = sparse.feature_ids
    assert ids is not None and dense.feature_ids is None
    for name, a in sparse.params.items():
        want = dense.params[name]
        if name in ("linear", "factors"):
            want = want[:, ids] if task == "multiclass" else want[ids]
        assert np.array_equal(a, want), name
    assert np.array_equal(predict(sparse, batch), predict(dense, batch))


def test_a_reader_of_format_1_refuses_a_sparse_model(tmp_path, monkeypatch):
    """A 1.x reader would take the slots for feature ids: the major version
    stops it with one line instead of a wrong score."""
    from fmcli import modelfile
    from fmcli.errors import ModelFormatError

    rng = np.random.default_rng(0)
    arrays = {"bias": np.zeros(1, np.float32), "feature_ids": np.array([3, 900_000], np.int32)}
    modelfile.write_model_file(tmp_path / "s.fm", {"model": {}}, arrays)
    monkeypatch.setattr(modelfile, "_KNOWN", {1: 3})          # as fmcli 1.x reads
    with pytest.raises(ModelFormatError, match="model format 2.0 is newer than this fmcli supports"):
        modelfile.read_model_file(tmp_path / "s.fm")
    del rng
