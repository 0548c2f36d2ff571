"""A changed input is never served from the cache, --resume never accepts
changed data, and a cache changed while a run reads it is rebuilt or stops
the run with one line -- never a crash, never training on garbage."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fmcli.cli import cli
from fmcli.config import Config
from fmcli.data import dataset as dataset_mod
from fmcli.data.cache import CacheFile, CacheInvalid, fingerprint
from fmcli.data.dataset import load_dataset
from fmcli.errors import CacheError, ConfigError, Interrupted
from fmcli.train import train

SAMPLES = Path(__file__).resolve().parent.parent / "data" / "samples"
TRAIN = SAMPLES / "train.ffm"


def same_model(a, b) -> bool:
    pa = {k: np.asarray(v) for k, v in a.params.items()}
    pb = {k: np.asarray(v) for k, v in b.params.items()}
    return pa.keys() == pb.keys() and all(np.array_equal(pa[k], pb[k]) for k in pa)


def cfg(cache_dir=None, **kw) -> Config:
    base = dict(model="ffm", epochs=2, threads=1, cache=cache_dir is not None, cache_dir=cache_dir)
    base.update(kw)
    return Config(**base)


def flip_labels_in_the_middle(path: Path) -> None:
    """Change labels of rows in the middle of the file, keeping its size and
    restoring its modification time (what `cp -p` / `rsync -a` / `touch -r` do)."""
    st = os.stat(path)
    lines = path.read_bytes().split(b"\n")
    mid = len(lines) // 2
    for i in range(mid - 50, mid + 50):
        if lines[i][:1] in (b"0", b"1"):
            lines[i] = (b"1" if lines[i][:1] == b"0" else b"0") + lines[i][1:]
    path.write_bytes(b"\n".join(lines))
    assert os.stat(path).st_size == st.st_size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.fixture
def data(tmp_path) -> Path:
    path = tmp_path / "tr.ffm"
    shutil.copyfile(TRAIN, path)
    return path


# ---- 3. the cache key -------------------------------------------------------

def test_a_file_changed_behind_a_restored_mtime_is_not_served_from_the_cache(tmp_path, data):
    cache = str(tmp_path / "cache")
    train(cfg(cache), data)
    flip_labels_in_the_middle(data)
    messages = []
    model = train(cfg(cache), data, log=messages.append)
    assert not any("from the cache" in m for m in messages), messages
    assert same_model(model, train(cfg(), data))


def test_an_unchanged_file_stays_a_cache_hit(tmp_path, data):
    cache = str(tmp_path / "cache")
    for check in ("stat", "content"):
        train(cfg(cache, cache_check=check), data)
        messages = []
        train(cfg(cache, cache_check=check), data, log=messages.append)
        assert any("from the cache" in m for m in messages), (check, messages)


def test_a_copy_with_the_same_times_rebuilds_or_reuses_but_never_misreads(tmp_path, data):
    cache = str(tmp_path / "cache")
    train(cfg(cache), data)
    other = tmp_path / "other.ffm"
    shutil.copy2(data, other)           # cp -p: same size and mtime, new inode
    flip_labels_in_the_middle(other)
    shutil.copy2(other, data)           # and back over the original name
    assert same_model(train(cfg(cache), data), train(cfg(), data))


def test_fingerprint_holds_what_the_kernel_changes_and_content_on_request(data):
    stat = fingerprint(str(data))
    st = os.stat(data)
    assert (stat["ino"], stat["dev"], stat["ctime_ns"], stat["mtime_ns"], stat["size"]) == (
        st.st_ino, st.st_dev, st.st_ctime_ns, st.st_mtime_ns, st.st_size)
    assert "sha256" not in stat
    import hashlib

    full = fingerprint(str(data), check="content")
    assert full["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    with pytest.raises(ValueError):
        fingerprint(str(data), check="bogus")
    with pytest.raises(ConfigError):
        Config(cache_check="bogus")


def test_cache_check_content_option_on_the_command_line(tmp_path, data):
    runner = CliRunner()
    args = ["train", "--model", "lr", "-t", "1", "--cache-dir", str(tmp_path / "c"), "--cache-check", "content",
            "-o", str(tmp_path / "m.fm"), str(data)]
    first = runner.invoke(cli, args)
    assert first.exit_code == 0, first.output
    second = runner.invoke(cli, args)
    assert second.exit_code == 0 and "from the cache" in second.stderr
    bad = runner.invoke(cli, args[:-1] + ["--cache-check", "mtime", str(data)])
    assert bad.exit_code == 2


# ---- 3. --resume ------------------------------------------------------------

def checkpointed(tmp_path, data, **kw) -> str:
    """A checkpoint directory of an interrupted run on `data`."""
    ck = str(tmp_path / "ck")
    config = Config(model="fm", epochs=2, checkpoint_dir=ck, checkpoint_every=2000, cache=False, **kw)
    calls = []

    def stop_once():
        calls.append(1)
        return signal.SIGTERM if len(calls) == 3 else None

    with pytest.raises(Interrupted):
        train(config, str(data), should_stop=stop_once)
    return ck


def test_resume_refuses_data_whose_labels_changed(tmp_path, data):
    ck = checkpointed(tmp_path, data)
    flip_labels_in_the_middle(data)
    config = Config(model="fm", epochs=2, checkpoint_dir=ck, checkpoint_every=2000, cache=False)
    with pytest.raises(ConfigError, match="other content"):
        train(config, str(data), resume=ck)


@pytest.mark.parametrize("cache", [False, True], ids=["no-cache", "cache"])
def test_resume_accepts_a_restored_copy_of_unchanged_data(tmp_path, data, cache):
    ck = checkpointed(tmp_path, data)
    saved = tmp_path / "backup.ffm"
    shutil.copy2(data, saved)
    data.unlink()
    shutil.copy2(saved, data)           # restored from a backup: new inode, same bytes
    config = Config(model="fm", epochs=2, checkpoint_dir=ck, checkpoint_every=2000, cache=cache,
                    cache_dir=str(tmp_path / "cache"))
    resumed = train(config, str(data), resume=ck)
    reference = train(Config(model="fm", epochs=2, checkpoint_dir=str(tmp_path / "ck2"), checkpoint_every=2000,
                             cache=False), str(data))
    assert same_model(resumed, reference)


def test_resume_from_the_command_line_with_relative_paths(tmp_path, data):
    env = dict(os.environ, FMCLI_CACHE_DIR=str(tmp_path / "cache"))
    fm = [sys.executable, "-m", "fmcli"]
    first = subprocess.run(fm + ["train", "--model", "fm", "-t", "3", "--checkpoint-dir", "ck",
                                 "-o", "m.fm", "tr.ffm"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    (tmp_path / "m.fm").unlink()
    again = subprocess.run(fm + ["train", "--resume", "ck"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "m.fm").exists()
    # from another directory, naming the checkpoint relatively too
    sub = tmp_path / "sub"
    sub.mkdir()
    other = subprocess.run(fm + ["train", "--resume", "../ck"], cwd=sub, env=env, capture_output=True, text=True)
    assert other.returncode == 0, other.stderr
    flip_labels_in_the_middle(data)
    refused = subprocess.run(fm + ["train", "--resume", "ck"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert refused.returncode == 78
    assert refused.stderr.strip().splitlines()[-1].startswith("fm: error: ck: the training data changed")


# ---- 4. a cache changed while a run reads it ---------------------------------

def damage(path: str, how: str) -> None:
    size = os.path.getsize(path)
    if how == "truncate":
        os.truncate(path, size // 2)
    elif how == "ff":
        with open(path, "r+b") as f:              # in place, as another process would
            f.write(b"\xff" * size)
    elif how == "part":
        with open(path, "r+b") as f:
            f.seek(size // 3)
            f.write(os.urandom(4096))
    elif how == "replace":
        with open(path, "r+b") as f:
            f.truncate(0)
            f.write(b"not a cache")


@pytest.mark.parametrize("how", ["truncate", "ff", "part", "replace"])
@pytest.mark.parametrize("streamed", [False, True], ids=["in-memory", "streamed"])
def test_a_cache_damaged_between_epochs_is_rebuilt_and_training_is_unchanged(tmp_path, data, monkeypatch,
                                                                            how, streamed):
    monkeypatch.setattr(dataset_mod, "CHUNK_ROWS", 700)
    cache = str(tmp_path / "cache")
    extra = {"memory_budget": 1} if streamed else {}
    # (with a cache, streamed chunks come in shuffled order: the reference has an intact one)
    reference = train(cfg(str(tmp_path / "intact"), epochs=3, **extra), data)
    train(cfg(cache, epochs=1, **extra), data)                      # builds the cache
    (path,) = [str(p) for p in Path(cache).iterdir() if p.suffix == ".fmcache"]
    messages = []

    def on_epoch(stats):
        if stats.epoch == 1:
            damage(path, how)

    model = train(cfg(cache, epochs=3, **extra), data, log=messages.append, on_epoch=on_epoch)
    if streamed:   # the damage is met on the next read, mid-run
        assert any("rebuilding" in m for m in messages), messages
    assert same_model(model, reference)
    if not streamed:   # the rows were in memory: the next run meets the damage and rebuilds
        messages = []
        assert same_model(train(cfg(cache, epochs=3, **extra), data, log=messages.append), reference)
        assert any("rebuilding" in m for m in messages), messages
    CacheFile(path).verify()   # whole again


def test_a_cache_that_cannot_be_rebuilt_stops_the_run_with_one_error(tmp_path, data, monkeypatch):
    monkeypatch.setattr(dataset_mod, "CHUNK_ROWS", 700)
    ds = load_dataset(str(data), cache_dir=str(tmp_path / "cache"))
    assert ds.cached_from == "built"
    ds._rebuild = None                    # as for stdin, whose cache lives only for the run
    damage(ds.cache.path, "ff")
    with pytest.raises(CacheError, match="changed while this run read it") as info:
        for _ in ds.chunks():
            pass
    assert info.value.exit_code == 74
    ds.close()


def test_damaged_chunks_are_caught_by_their_checksum(tmp_path, data, monkeypatch):
    monkeypatch.setattr(dataset_mod, "CHUNK_ROWS", 700)
    ds = load_dataset(str(data), cache_dir=str(tmp_path / "cache"))
    path = ds.cache.path
    ds.close()
    cf = CacheFile(path)
    cf.verify()
    with open(path, "r+b") as f:
        f.seek(200)
        f.write(b"\x7f\x7f\x7f\x7f")
    with pytest.raises(CacheInvalid, match="checksum"):
        cf.chunk(0)
    os.truncate(path, cf._bounds[-1][0] + 10)      # into the last chunk
    with pytest.raises(CacheInvalid, match="truncated"):
        cf.chunk(len(cf) - 1)
    cf.close()


def test_a_cache_truncated_under_a_running_cli_never_crashes_it(tmp_path, data):
    """The real command, killed by nothing: a damaged cache mid-run is
    rebuilt and the run ends 0 with the model of clean data."""
    env = dict(os.environ, FMCLI_CACHE_DIR=str(tmp_path / "cache"))
    fm = [sys.executable, "-m", "fmcli", "train", "--model", "ffm", "-s", "1", "--memory-budget", "1",
          "--seed", "3"]
    assert subprocess.run(fm + ["-t", "1", "-o", "a.fm", "tr.ffm"], cwd=tmp_path, env=env).returncode == 0
    (cache,) = [p for p in (tmp_path / "cache").iterdir() if p.suffix == ".fmcache"]
    os.truncate(cache, cache.stat().st_size // 2)
    run = subprocess.run(fm + ["-t", "2", "-o", "b.fm", "tr.ffm"], cwd=tmp_path, env=env, capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr
    assert not list(tmp_path.glob(".*.tmp")) and not list(tmp_path.glob("*.lock"))


# ---- 8 (the cache's part). a cache directory that cannot be used -------------

@pytest.mark.parametrize("where", ["regular-file", "under-a-file"])
def test_an_unusable_cache_directory_falls_back_to_no_cache(tmp_path, data, where):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory\n")
    cache = str(blocker) if where == "regular-file" else str(blocker / "cache")
    messages = []
    model = train(cfg(cache), data, log=messages.append)
    assert any("not usable" in m and "without a cache" in m for m in messages), messages
    assert same_model(model, train(cfg(), data))
    assert blocker.read_text() == "not a directory\n"
    # and from the command line, through FMCLI_CACHE_DIR
    env = dict(os.environ, FMCLI_CACHE_DIR=cache)
    run = subprocess.run([sys.executable, "-m", "fmcli", "train", "--model", "lr", "-t", "1", "-o", "m.fm",
                          "tr.ffm"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "without a cache" in run.stderr


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
def test_a_read_only_cache_directory_falls_back_to_no_cache(tmp_path, data):
    # /proc/self is read-only even for root
    messages = []
    model = train(cfg("/proc/self/fmcli-cache"), data, log=messages.append)
    assert any("without a cache" in m for m in messages), messages
    assert same_model(model, train(cfg(), data))


@pytest.mark.parametrize("stop_at", [1, 2, 3, 4], ids=lambda n: f"slice-{n}")
def test_resume_after_a_stop_at_any_slice_gives_the_uninterrupted_model(tmp_path, data, stop_at):
    # 5,000 rows in slices of 2,000: the third stop falls on the epoch's last
    # slice, which once resumed into a whole extra pass over the data
    ck = str(tmp_path / "ck")
    config = Config(model="fm", epochs=2, checkpoint_dir=ck, checkpoint_every=2000, cache=False)
    calls = []

    def stop():
        calls.append(1)
        return signal.SIGTERM if len(calls) == stop_at else None

    with pytest.raises(Interrupted):
        train(config, str(data), should_stop=stop)
    resumed = train(config, str(data), resume=ck)
    reference = train(config.replace(checkpoint_dir=str(tmp_path / "ck2")), str(data))
    assert same_model(resumed, reference)
    def losses(model):
        return [(h["epoch"], h["train_loss"]) for h in model.meta["training"]["history"]]

    assert losses(resumed) == losses(reference) and len(losses(resumed)) == 2


def test_the_checksum_streams_and_sees_every_kind_of_damage():
    from fmcli._core._parse import Checksum64, checksum64

    rng = np.random.default_rng(5)
    data = rng.integers(0, 256, 10_000, dtype=np.uint8)
    whole = checksum64(data)
    for cuts in ([1], [63, 64, 65], [3000, 3001, 9999], list(range(0, 10_000, 777))):
        h = Checksum64()
        for a, b in zip([0] + cuts, cuts + [data.size]):
            h.update(data[a:b])
        assert h.value() == whole, cuts
    damaged = {
        "bit": data.copy(), "zeroed": data.copy(), "moved": data.copy(), "truncated": data[:-1],
        "extended": np.concatenate([data, np.zeros(1, np.uint8)]),
    }
    damaged["bit"][4321] ^= 1
    damaged["zeroed"][1024:2048] = 0
    damaged["moved"][:64], damaged["moved"][64:128] = data[64:128], data[:64]   # two stripes swapped
    for name, d in damaged.items():
        assert checksum64(d) != whole, name
    assert checksum64(data, seed=1) != whole
    assert checksum64(b"") != checksum64(b"\0")


def test_a_changed_file_replaces_its_old_cache(tmp_path, data):
    cache = tmp_path / "cache"
    train(cfg(str(cache)), data)
    other = tmp_path / "other.ffm"
    shutil.copyfile(data, other)
    train(cfg(str(cache)), other)
    assert len(list(cache.glob("*.fmcache"))) == 2        # two inputs, two caches
    flip_labels_in_the_middle(data)
    messages = []
    train(cfg(str(cache)), data, log=messages.append)
    assert any("removed the cache of an earlier version" in m for m in messages), messages
    assert len(list(cache.glob("*.fmcache"))) == 2        # the old version of tr.ffm's is gone
    messages = []
    train(cfg(str(cache)), other, log=messages.append)
    assert any("from the cache" in m for m in messages)   # the other input's is untouched


def test_a_run_reading_a_replaced_cache_keeps_reading_it(tmp_path, data, monkeypatch):
    monkeypatch.setattr(dataset_mod, "CHUNK_ROWS", 700)
    cache = str(tmp_path / "cache")
    first = load_dataset(str(data), cache_dir=cache)
    first.close()
    reading = load_dataset(str(data), cache_dir=cache)     # a run holding the cache open
    assert reading.cached_from == "hit"
    os.utime(data)                                         # a new version of the file: rebuilt elsewhere
    load_dataset(str(data), cache_dir=cache).close()
    assert not os.path.exists(reading.cache.path)
    rows = sum(b.n_rows for _, b, _ in reading.chunks())  # still whole for the run that has it
    assert rows == reading.n_rows
    reading.close()
