"""Data sets: the same rows from any source give the same model; the binary
cache is reused, and never trusted when stale or damaged; data above the
memory budget streams in chunks."""

import gzip
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fmcli.cli import cli
from fmcli.config import Config
from fmcli.data import dataset as dataset_mod
from fmcli.data.cache import CacheFile, CacheInvalid
from fmcli.data.dataset import load_dataset
from fmcli.data.parquet import write_parquet
from fmcli.data.text import TextReader
from fmcli.errors import DivergenceError
from fmcli.model import load_model
from fmcli.predict import predict
from fmcli.train import train

SAMPLES = Path(__file__).resolve().parent.parent / "data" / "samples"
TRAIN, VALID = SAMPLES / "train.ffm", SAMPLES / "valid.ffm"


def arrays(model):
    return {k: np.asarray(v) for k, v in model.params.items()}


def same_model(a, b):
    pa, pb = arrays(a), arrays(b)
    return pa.keys() == pb.keys() and all(np.array_equal(pa[k], pb[k]) for k in pa)


@pytest.fixture
def cache_dir(tmp_path):
    return str(tmp_path / "cache")


def cfg(cache_dir=None, **kw):
    base = dict(model="ffm", epochs=2, threads=1, cache=cache_dir is not None, cache_dir=cache_dir)
    base.update(kw)
    return Config(**base)


def test_every_source_gives_the_same_model(tmp_path, cache_dir):
    text = TRAIN.read_bytes()
    (tmp_path / "t.ffm.gz").write_bytes(gzip.compress(text))
    import pyarrow as pa

    with pa.CompressedOutputStream(str(tmp_path / "t.ffm.zst"), "zstd") as out:
        out.write(text)
    write_parquet([TextReader(TRAIN).read_all()], tmp_path / "t.parquet")
    reference = train(cfg(), TRAIN)
    for source in ("t.ffm.gz", "t.ffm.zst", "t.parquet"):
        got = train(cfg(cache_dir), str(tmp_path / source))
        assert same_model(got, reference), source
    # stdin, through the command line
    res = subprocess.run([sys.executable, "-m", "fmcli", "train", "--model", "ffm", "-t", "2", "-s", "1",
                          "-q", "-o", str(tmp_path / "stdin.fm"), "-"], input=text, capture_output=True,
                         env={**os.environ, "FMCLI_CACHE_DIR": cache_dir})
    assert res.returncode == 0, res.stderr
    assert same_model(load_model(tmp_path / "stdin.fm"), reference)
    # the stdin cache lived for that run only
    assert not [p for p in Path(cache_dir).iterdir() if "stdin" in p.name or p.name.startswith(".fmcache")]


def test_several_inputs_are_one_data_set(tmp_path):
    lines = TRAIN.read_text().splitlines(keepends=True)
    (tmp_path / "a.ffm").write_text("".join(lines[:1700]))
    (tmp_path / "b.ffm").write_text("".join(lines[1700:]))
    whole = train(cfg(), TRAIN)
    assert same_model(train(cfg(), [str(tmp_path / "a.ffm"), str(tmp_path / "b.ffm")]), whole)
    assert same_model(train(cfg(), str(tmp_path / "?.ffm")), whole)


def test_cache_is_reused_then_rebuilt_when_the_source_changes(tmp_path, cache_dir):
    data = tmp_path / "d.ffm"
    data.write_bytes(TRAIN.read_bytes())
    first = load_dataset(data, cache_dir=cache_dir)
    assert first.cached_from == "built"
    first.close()
    again = load_dataset(data, cache_dir=cache_dir)
    assert again.cached_from == "hit" and again.n_rows == first.n_rows
    again.close()
    with open(data, "a") as f:
        f.write("1 0:1:1\n")
    os.utime(data, ns=(1, 1))     # even with an old mtime: the content hash changed
    changed = load_dataset(data, cache_dir=cache_dir)
    assert changed.cached_from == "built" and changed.n_rows == first.n_rows + 1
    changed.close()
    # a cache is keyed by the parse options too
    other = load_dataset(data, cache_dir=cache_dir, task="regression")
    assert other.cached_from == "built"
    other.close()


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_damaged_cache_is_detected_and_rebuilt(tmp_path, cache_dir, damage):
    data = tmp_path / "d.ffm"
    data.write_bytes(TRAIN.read_bytes())
    reference = train(cfg(), data)
    train(cfg(cache_dir), data)
    (path,) = [p for p in Path(cache_dir).iterdir() if p.suffix == ".fmcache"]
    raw = bytearray(path.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    elif damage == "flip":
        raw[4096] ^= 0x10          # inside the first chunk's arrays
    else:
        raw = bytearray(b"not a cache at all")
    path.write_bytes(bytes(raw))
    # the layout is checked on opening, every chunk's checksum on reading
    with pytest.raises(CacheInvalid):
        CacheFile(str(path)).verify()
    messages = []
    model = train(cfg(cache_dir), data, log=messages.append)
    assert any("rebuilding" in m for m in messages), messages
    assert same_model(model, reference)
    # rebuilt in place: the next run is a clean hit
    messages = []
    assert same_model(train(cfg(cache_dir), data, log=messages.append), reference)
    assert any("from the cache" in m for m in messages) and not any("rebuilding" in m for m in messages)
    CacheFile(str(path)).verify()


@pytest.mark.parametrize("cached", [True, False])
def test_data_above_the_budget_streams_in_chunks(monkeypatch, cache_dir, cached):
    monkeypatch.setattr(dataset_mod, "CHUNK_ROWS", 700)
    messages = []
    small = train(cfg(cache_dir if cached else None, epochs=4, memory_budget=1), TRAIN, VALID,
                  log=messages.append)
    assert any("streaming" in m for m in messages)
    whole = train(cfg(cache_dir if cached else None, epochs=4), TRAIN, VALID)
    a, b = small.meta["training"], whole.meta["training"]
    assert a["train_rows"] == b["train_rows"] == TextReader(TRAIN).read_all().n_rows
    # chunked shuffling is a different row order, not a different model
    assert abs(a["valid_logloss"] - b["valid_logloss"]) < 0.01
    assert a["valid_auc"] > 0.7


def test_streamed_divergence_names_the_file_and_line(tmp_path, monkeypatch):
    monkeypatch.setattr(dataset_mod, "CHUNK_ROWS", 50)
    lines = [f"{i % 2} 0:{i % 7}:1 1:{7 + i % 5}:1\n" for i in range(300)]
    lines[217] = "1 2:20:3e38\n"
    (tmp_path / "a.ffm").write_text("".join(lines[:150]))
    (tmp_path / "b.ffm").write_text("".join(lines[150:]))
    config = Config(model="lr", optimizer="sgd", learning_rate=0.1, normalize=False, epochs=3,
                    shuffle=False, memory_budget=1, cache_dir=str(tmp_path / "c"))
    with pytest.raises(DivergenceError, match=r"b\.ffm:68: training diverged in epoch 2"):
        train(config, [str(tmp_path / "a.ffm"), str(tmp_path / "b.ffm")])


def test_classes_agree_across_inputs(tmp_path):
    (tmp_path / "a.ffm").write_text("dog 0:1:1\ncat 0:2:1\n")
    (tmp_path / "b.ffm").write_text("bird 0:3:1\ndog 0:1:1\n")
    ds = load_dataset([str(tmp_path / "a.ffm"), str(tmp_path / "b.ffm")], task="multiclass")
    assert ds.classes == ["bird", "cat", "dog"]
    labels = ds.in_memory().labels
    assert labels.tolist() == [2, 1, 0, 2]
    assert ds.label_counts == [1, 1, 2]


def test_cli_trains_on_a_quoted_glob(tmp_path):
    lines = TRAIN.read_text().splitlines(keepends=True)
    for i in range(3):
        (tmp_path / f"day_{i}.ffm").write_text("".join(lines[i::3]))
    res = CliRunner().invoke(cli, ["train", "-t", "1", "-o", str(tmp_path / "m.fm"), str(tmp_path / "day_*.ffm")])
    assert res.exit_code == 0, res.output
    assert "day_0.ffm, " in res.stderr and load_model(tmp_path / "m.fm").meta["training"]["train_rows"] == len(lines)
    res = CliRunner().invoke(cli, ["predict", str(tmp_path / "m.fm"), str(tmp_path / "day_*.ffm")])
    assert res.exit_code == 0 and len(res.stdout.splitlines()) == len(lines)
    p = predict(load_model(tmp_path / "m.fm"), [str(tmp_path / "day_0.ffm")])
    np.testing.assert_allclose(p, [float(x) for x in res.stdout.splitlines()[: p.size]], rtol=1e-5)


def test_wide_parquet_trains_and_predicts_with_the_same_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    n = 600
    color = rng.choice(["red", "green", "blue"], n)
    size = rng.integers(0, 5, n)
    noise = rng.choice(["a", "b"], n)
    y = ((color == "red") ^ (size > 2)).astype(np.int64)
    pq.write_table(pa.table({"target": y, "color": color, "size": size, "noise": noise}), tmp_path / "w.parquet")
    model_path = tmp_path / "m.fm"
    res = CliRunner().invoke(cli, ["train", "--model", "fm", "-t", "10", "--label-column", "target", "--columns",
                                   "color,size", "--hash-bits", "12", "-o", str(model_path),
                                   str(tmp_path / "w.parquet")])
    assert res.exit_code == 0, res.output
    model = load_model(model_path)
    assert model.meta["hyperparameters"]["columns"] == "color,size"
    assert model.spec.n_features <= 2**12 and model.spec.n_fields == 2
    res = CliRunner().invoke(cli, ["predict", str(model_path), str(tmp_path / "w.parquet")])
    assert res.exit_code == 0, res.output
    p = np.array([float(x) for x in res.stdout.split()])
    assert p.size == n and np.mean((p > 0.5) == y) > 0.9
    res = CliRunner().invoke(cli, ["train", "--label-column", "target", "--columns", "colour", "-o", str(tmp_path / "x.fm"),
                                   str(tmp_path / "w.parquet")])
    assert res.exit_code == 65 and "colour" in res.stderr


def test_prefetching_keeps_order_and_errors():
    from fmcli.data.dataset import prefetched

    assert list(prefetched(iter(range(50)))) == list(range(50))

    def failing():
        yield 1
        raise DivergenceError("boom")

    got = []
    with pytest.raises(DivergenceError, match="boom"):
        for x in prefetched(failing()):
            got.append(x)
    assert got == [1]
    gen = prefetched(iter(range(1000)))
    assert next(gen) == 0
    gen.close()          # stops the thread without consuming the rest


@pytest.mark.parametrize("depth", [1, 2])
def test_prefetching_holds_at_most_depth_items_ahead(depth):
    """While the consumer works on an item, the thread has made at most
    `depth` more and waits: depth + 1 items are alive, not more."""
    import gc
    import time
    import weakref

    from fmcli.data.dataset import prefetched

    class Item:
        def __init__(self, i):
            self.i = i

    alive = weakref.WeakSet()

    def items():
        for i in range(30):
            item = Item(i)
            alive.add(item)
            yield item
            del item

    seen = []
    for x in prefetched(items(), depth=depth):
        time.sleep(0.01)   # the thread has all the time it wants to run ahead
        gc.collect()
        seen.append((x.i, len(alive)))
    assert [i for i, _ in seen] == list(range(30))
    assert max(n for _, n in seen) == depth + 1, seen


def test_a_cache_hit_names_the_inputs_as_this_run_does(tmp_path, cache_dir, monkeypatch):
    data = tmp_path / "d.ffm"
    data.write_bytes(TRAIN.read_bytes())
    monkeypatch.chdir(tmp_path)
    load_dataset("d.ffm", cache_dir=cache_dir).close()
    hit = load_dataset(str(data), cache_dir=cache_dir)
    assert hit.cached_from == "hit" and hit.name == str(data) and set(hit.chunk_files) == {str(data)}
    hit.close()
