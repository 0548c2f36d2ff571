"""The cache does not fill the disk: a cap on what all caches of a directory
take, least-recently-used eviction that never removes a cache another run
is reading, a cache too large for the cap used for its run only, and
`fm cache` to see and clear it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fmcli.cli import cli
from fmcli.config import Config, parse_size
from fmcli.data import cache as cache_mod
from fmcli.data.cache import DEFAULT_MAX_BYTES, CacheFile, default_max_size, in_use, resolve_max_size
from fmcli.data.dataset import load_dataset
from fmcli.errors import ConfigError
from fmcli.train import train

SAMPLES = Path(__file__).resolve().parent.parent / "data" / "samples"
LINES = (SAMPLES / "train.ffm").read_bytes().splitlines(keepends=True)


@pytest.fixture(autouse=True)
def _no_cap_from_the_environment(monkeypatch):
    """The cap comes from each test, never from the environment running it."""
    for name in ("FMCLI_CACHE_MAX_SIZE", "FM_TRAIN_CACHE_MAX_SIZE", "FM_CACHE_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)


def data_file(directory: Path, i: int, rows: int = 200) -> Path:
    """A small libffm file of its own content (rows i*100 onwards of the sample)."""
    path = directory / f"day_{i:02d}.ffm"
    start = (i * 100) % (len(LINES) - rows)
    path.write_bytes(b"".join(LINES[start : start + rows]))
    return path


def caches(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.fmcache")) if directory.is_dir() else []


def total(directory: Path) -> int:
    """What the caches of `directory` take (temporaries included: none may be left)."""
    return sum(p.stat().st_size for p in directory.iterdir()) if directory.is_dir() else 0


def fm(*args: str, env: dict | None = None):
    return CliRunner().invoke(cli, [str(a) for a in args], env=env)


def fm_train(cache_dir: Path, data: Path, *extra, out: Path | None = None):
    out = out or data.with_suffix(".fm")
    result = fm("train", "--model", "lr", "-t", "2", "--cache-dir", cache_dir, *extra, "-o", out, data)
    assert result.exit_code == 0, result.output
    return result


def one_cache_size(tmp_path: Path) -> int:
    """The size of one of data_file()'s caches (they differ by a few bytes)."""
    probe = tmp_path / "probe"
    probe.mkdir()
    fm_train(probe / "cache", data_file(probe, 0))
    (path,) = caches(probe / "cache")
    return path.stat().st_size


def age(path: Path, seconds: float) -> None:
    """Make `path` look last used `seconds` ago."""
    t = time.time() - seconds
    os.utime(path, (t, t))


# ---- the acceptance test ----------------------------------------------------

def test_the_cache_never_exceeds_its_cap_training_on_many_distinct_files(tmp_path):
    size = one_cache_size(tmp_path)
    cap = int(size * 3.5)            # room for three caches, not four
    cache_dir = tmp_path / "cache"
    valid = data_file(tmp_path, 99)
    for i in range(20):
        result = fm_train(cache_dir, data_file(tmp_path, i), "--cache-max-size", cap, "-p", valid)
        assert total(cache_dir) <= cap, f"run {i}: {total(cache_dir)} > {cap}"
        names = [p.name for p in caches(cache_dir)]
        assert len(names) == min(i + 2, 3), names
        if i >= 2:
            assert "least recently used" in result.stderr
    # the validation file's cache is used by every run: it is never the one evicted, and the
    # newest training file's cache is there; the older ones are gone
    listing = json.loads(fm("cache", "--json", "--cache-dir", cache_dir).output)
    inputs = {inp for c in listing["caches"] for inp in c["inputs"]}
    assert str(valid) in inputs and str(tmp_path / "day_19.ffm") in inputs
    assert str(tmp_path / "day_00.ffm") not in inputs
    assert listing["total_bytes"] == total(cache_dir) <= cap


def test_the_cap_holds_for_the_library_as_well(tmp_path):
    size = one_cache_size(tmp_path)
    cache_dir = tmp_path / "cache"
    for i in range(6):
        train(Config(model="lr", epochs=1, cache_dir=str(cache_dir), cache_max_size=2 * size + size // 2),
              str(data_file(tmp_path, i)))
        assert total(cache_dir) <= 2 * size + size // 2
    assert len(caches(cache_dir)) == 2


# ---- least recently used -------------------------------------------------------

def test_a_recently_hit_cache_survives_and_the_least_recently_used_goes(tmp_path):
    size = one_cache_size(tmp_path)
    cache_dir = tmp_path / "cache"
    cap = int(size * 3.5)
    a, b, c, d = (data_file(tmp_path, i) for i in range(4))
    for f in (a, b, c):
        fm_train(cache_dir, f, "--cache-max-size", cap)
    by_input = {}
    for p in caches(cache_dir):
        by_input[CacheFile(str(p)).meta["paths"][0]] = p
    age(by_input[str(a)], 300)        # a is the oldest ...
    age(by_input[str(b)], 200)
    age(by_input[str(c)], 100)
    hit = fm_train(cache_dir, a, "--cache-max-size", cap)     # ... until a run uses it again
    assert "from the cache" in hit.stderr
    assert by_input[str(a)].stat().st_mtime > time.time() - 60    # the hit recorded its use
    fm_train(cache_dir, d, "--cache-max-size", cap)
    assert by_input[str(a)].exists() and by_input[str(c)].exists()
    assert not by_input[str(b)].exists()              # b was the least recently used
    assert len(caches(cache_dir)) == 3


def test_a_lowered_cap_is_applied_before_the_next_cache_is_written(tmp_path):
    size = one_cache_size(tmp_path)
    cache_dir = tmp_path / "cache"
    for i in range(4):
        fm_train(cache_dir, data_file(tmp_path, i))            # the default cap: all kept
    assert len(caches(cache_dir)) == 4
    fm_train(cache_dir, data_file(tmp_path, 4), "--cache-max-size", int(size * 1.5))
    (kept,) = caches(cache_dir)
    assert CacheFile(str(kept)).meta["paths"] == [str(tmp_path / "day_04.ffm")]


# ---- never under a reader --------------------------------------------------------

HOLDER = """
import sys
from fmcli.data.cache import CacheFile
cf = CacheFile(sys.argv[1])          # what a reading run does: open, shared lock
print("holding", flush=True)
sys.stdin.read()                     # until the test closes our stdin
cf.close()
"""


@pytest.fixture
def holder():
    """Start a process that holds a cache open as a reading run does."""
    procs = []

    def start(path: Path) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "holding"
        return proc

    yield start
    for proc in procs:
        proc.stdin.close()
        proc.wait(timeout=30)


def test_a_cache_another_process_is_reading_is_never_evicted(tmp_path, holder):
    size = one_cache_size(tmp_path)
    cache_dir = tmp_path / "cache"
    cap = int(size * 1.5)                 # room for one cache
    fm_train(cache_dir, data_file(tmp_path, 0), "--cache-max-size", cap)
    (held,) = caches(cache_dir)
    age(held, 3600)                       # the least recently used by far
    proc = holder(held)
    assert in_use(str(held))
    result = fm_train(cache_dir, data_file(tmp_path, 1), "--cache-max-size", cap)
    # the held cache stays; the new one does not fit beside it, so this run used it alone
    assert caches(cache_dir) == [held]
    assert "beside the caches other runs are reading" in result.stderr
    assert "kept for this run only" in result.stderr
    # `fm cache` says it is in use, and `fm cache clear` leaves it
    listing = fm("cache", "--cache-dir", cache_dir)
    assert listing.exit_code == 0 and " yes " in listing.output
    cleared = fm("cache", "clear", "--cache-dir", cache_dir)
    assert cleared.exit_code == 0
    assert "removed 0 caches" in cleared.output and "kept 1 in use" in cleared.output
    assert held.exists()
    proc.stdin.close()
    proc.wait(timeout=30)
    assert not in_use(str(held))
    # released: the next run that needs the room removes it
    fm_train(cache_dir, data_file(tmp_path, 2), "--cache-max-size", cap)
    assert not held.exists() and len(caches(cache_dir)) == 1


def test_runs_at_the_same_time_keep_the_cap(tmp_path):
    """Each run counts the caches after its own is in place, so of two that
    finish together the later one sees both."""
    size = one_cache_size(tmp_path)
    cache_dir = tmp_path / "cache"
    cap = int(size * 2.5)
    procs = [subprocess.Popen([sys.executable, "-m", "fmcli", "train", "--model", "lr", "-t", "3",
                               "--cache-dir", str(cache_dir), "--cache-max-size", str(cap),
                               "-o", str(tmp_path / f"m{i}.fm"), str(data_file(tmp_path, i))],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(6)]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    assert 1 <= len(caches(cache_dir)) <= 2
    assert total(cache_dir) <= cap


def test_a_run_never_evicts_the_caches_it_is_reading_itself(tmp_path):
    """Training data's cache is open while the validation file's is built."""
    size = one_cache_size(tmp_path)
    cache_dir = tmp_path / "cache"
    cap = int(size * 1.5)
    tr, va = data_file(tmp_path, 0), data_file(tmp_path, 1)
    result = fm_train(cache_dir, tr, "--cache-max-size", cap, "-p", va)
    (kept,) = caches(cache_dir)
    assert CacheFile(str(kept)).meta["paths"] == [str(tr)]
    assert f"the cache of {va} (" in result.stderr and "kept for this run only" in result.stderr


def test_a_finished_cache_is_held_from_before_its_name_appears(tmp_path):
    ds = load_dataset(str(data_file(tmp_path, 0)), cache_dir=str(tmp_path / "c"))
    try:
        assert ds.cached_from == "built" and in_use(ds.cache.path)
        assert not cache_mod.remove_cache(ds.cache.path)
    finally:
        ds.close()
    assert not in_use(ds.cache.path)
    assert cache_mod.remove_cache(ds.cache.path) and caches(tmp_path / "c") == []


# ---- a cache too large for the cap ----------------------------------------------

def test_a_cache_larger_than_the_cap_is_used_for_its_run_only(tmp_path):
    size = one_cache_size(tmp_path)
    cache_dir = tmp_path / "cache"
    small = data_file(tmp_path, 0, rows=50)
    fm_train(cache_dir, small, "--cache-max-size", size)
    (kept,) = caches(cache_dir)
    big = data_file(tmp_path, 1, rows=1000)
    args = ("--model", "ffm", "-t", "3", "--memory-budget", "1K", "--cache-max-size", size)
    result = fm("train", "--cache-dir", cache_dir, *args, "-o", tmp_path / "big.fm", big)
    assert result.exit_code == 0, result.output
    assert "larger than the cache directory's cap" in result.stderr and "(--cache-max-size)" in result.stderr
    assert "kept for this run only" in result.stderr
    assert caches(cache_dir) == [kept]         # not kept, and it did not flush the small one
    assert total(cache_dir) <= size
    # the run trained exactly as with a kept cache
    other = fm("train", "--cache-dir", tmp_path / "roomy", *args[:-1], "1G", "-o", tmp_path / "ref.fm", big)
    assert other.exit_code == 0, other.output
    from fmcli.model import load_model

    a, b = load_model(str(tmp_path / "big.fm")), load_model(str(tmp_path / "ref.fm"))
    assert all(np.array_equal(np.asarray(a.params[k]), np.asarray(b.params[k])) for k in a.params)


def test_an_unkept_cache_stays_readable_for_every_epoch(tmp_path):
    path = data_file(tmp_path, 0, rows=600)
    ds = load_dataset(str(path), cache_dir=str(tmp_path / "c"), cache_max_size=1, memory_budget=0)
    try:
        assert ds.cache is not None and not os.path.exists(ds.cache.path)
        for _ in range(2):
            assert sum(b.n_rows for _, b, _ in ds.chunks()) == 600
    finally:
        ds.close()
    assert caches(tmp_path / "c") == []


def test_cache_max_size_zero_keeps_nothing_after_the_run(tmp_path):
    cache_dir = tmp_path / "cache"
    fm_train(cache_dir, data_file(tmp_path, 0))
    result = fm_train(cache_dir, data_file(tmp_path, 1), "--cache-max-size", "0")
    assert caches(cache_dir) == [] and "kept for this run only" in result.stderr


# ---- the cap's sources and bad values -----------------------------------------

def test_the_cap_comes_from_the_option_then_the_environment_then_the_default(tmp_path, monkeypatch):
    size = one_cache_size(tmp_path)
    cache_dir = tmp_path / "cache"
    monkeypatch.setenv("FMCLI_CACHE_MAX_SIZE", str(size // 2))
    result = fm_train(cache_dir, data_file(tmp_path, 0))
    assert "(FMCLI_CACHE_MAX_SIZE)" in result.stderr and caches(cache_dir) == []
    fm_train(cache_dir, data_file(tmp_path, 0), "--cache-max-size", "1M")     # the option wins
    assert len(caches(cache_dir)) == 1
    result = fm("train", "--model", "lr", "-t", "1", "--cache-dir", cache_dir, "-o", tmp_path / "m.fm",
                data_file(tmp_path, 1), env={"FM_TRAIN_CACHE_MAX_SIZE": "1M"})
    assert result.exit_code == 0 and len(caches(cache_dir)) == 2
    assert resolve_max_size(str(cache_dir), 5) == (5, "option")
    assert resolve_max_size(str(cache_dir)) == (size // 2, "environment")
    monkeypatch.delenv("FMCLI_CACHE_MAX_SIZE")
    assert resolve_max_size(str(cache_dir))[1] == "default"
    # the model records where the setting came from
    from fmcli.model import load_model

    meta = load_model(str(tmp_path / "m.fm")).meta
    assert meta["config_sources"]["cache-max-size"] == "env"


def test_the_default_cap_is_the_smaller_of_10_gib_and_a_tenth_of_the_free_space(tmp_path, monkeypatch):
    class Small:
        f_bavail, f_frsize = 1000, 4096

    class Huge:
        f_bavail, f_frsize = 10**9, 4096

    monkeypatch.setattr(cache_mod.os, "statvfs", lambda path: Small)
    assert default_max_size(str(tmp_path)) == 4096000 // 10
    assert default_max_size(str(tmp_path), used=5_904_000) == 1_000_000   # caches count as free space
    assert default_max_size(str(tmp_path / "not" / "yet")) == 4096000 // 10
    monkeypatch.setattr(cache_mod.os, "statvfs", lambda path: Huge)
    assert default_max_size(str(tmp_path)) == DEFAULT_MAX_BYTES == 10 << 30


@pytest.mark.parametrize("value", ["-1", "abc", "1X", "1.5.2G", ""])
def test_bad_cache_max_size_values_are_usage_errors(tmp_path, value):
    result = fm("train", "--cache-max-size", value, "-o", tmp_path / "m.fm", data_file(tmp_path, 0))
    assert result.exit_code == 2, result.output
    assert "--cache-max-size" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "m.fm").exists()


@pytest.mark.parametrize("where", ["FM_TRAIN_CACHE_MAX_SIZE", "FMCLI_CACHE_MAX_SIZE"])
def test_bad_cache_max_size_from_the_environment_is_one_line_exit_78(tmp_path, where):
    result = fm("train", "-t", "1", "--cache-dir", tmp_path / "c", "-o", tmp_path / "m.fm",
                data_file(tmp_path, 0), env={where: "lots"})
    assert result.exit_code == 78, result.output
    assert result.stderr.strip().splitlines() == [
        f"fm: error: environment variable {where}='lots': 'lots' is not a size such as 512M or 8G"]
    listing = fm("cache", "--cache-dir", tmp_path / "c", env={"FMCLI_CACHE_MAX_SIZE": "lots"})
    assert listing.exit_code == 78 and listing.stderr.startswith("fm: error: environment variable")


@pytest.mark.parametrize("value, message", [("-5", "cache max size must be"), ('"lots"', "not a size"),
                                            ("true", "expected a size")])
def test_bad_cache_max_size_in_a_config_file_is_exit_78(tmp_path, value, message):
    config = tmp_path / "fm.toml"
    config.write_text(f"[train]\ncache-max-size = {value}\n")
    result = fm("train", "--config", config, "-o", tmp_path / "m.fm", data_file(tmp_path, 0))
    assert result.exit_code == 78, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_sizes_parse_as_documented():
    assert parse_size("512K") == 512 << 10 and parse_size("2GiB") == 2 << 30 and parse_size("1.5g") == 3 << 29
    assert parse_size(" 7 ") == 7 and parse_size("0", minimum=0) == 0
    for bad in ("0", "-1", "1 PB", "G"):
        with pytest.raises(ValueError):
            parse_size(bad)
    with pytest.raises(ConfigError):
        Config(cache_max_size=-1)
    assert Config(cache_max_size=0).cache_max_size == 0


# ---- fm cache ---------------------------------------------------------------------

@pytest.fixture
def filled(tmp_path) -> Path:
    """A cache directory with the caches of three files, the first used longest ago."""
    cache_dir = tmp_path / "cache"
    for i in range(3):
        fm_train(cache_dir, data_file(tmp_path, i))
    for p in caches(cache_dir):
        seconds = {str(tmp_path / "day_00.ffm"): 3 * 86400, str(tmp_path / "day_01.ffm"): 3600,
                   str(tmp_path / "day_02.ffm"): 60}[CacheFile(str(p)).meta["paths"][0]]
        age(p, seconds)
    return cache_dir


def test_fm_cache_lists_caches_with_size_last_use_inputs_and_the_cap(tmp_path, filled, monkeypatch):
    monkeypatch.setenv("FMCLI_CACHE_MAX_SIZE", "2G")
    result = fm("cache", "--cache-dir", filled)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith(f"{filled}: 3 caches, ") and "of a 2 GiB cap (from FMCLI_CACHE_MAX_SIZE)" in lines[0]
    assert lines[1].split() == ["LAST", "USED", "SIZE", "ROWS", "IN", "USE", "INPUTS"]
    assert [line.split()[-1] for line in lines[2:]] == [str(tmp_path / f"day_0{i}.ffm") for i in (2, 1, 0)]
    assert all(" 200 " in line and " no " in line for line in lines[2:])
    assert fm("cache", "list", "--cache-dir", filled).output == result.output

    doc = json.loads(fm("cache", "--json", "--cache-dir", filled).output)
    assert doc["schema"] == "fmcli.cache/1" and doc["directory"] == str(filled)
    assert doc["max_bytes"] == 2 << 30 and doc["max_bytes_from"] == "environment"
    assert doc["total_bytes"] == total(filled)
    first = doc["caches"][0]
    assert set(first) >= {"file", "path", "bytes", "last_used", "last_used_unix", "last_used_seconds_ago",
                          "in_use", "valid", "inputs", "rows"}
    assert [c["inputs"] for c in doc["caches"]] == [[str(tmp_path / f"day_0{i}.ffm")] for i in (2, 1, 0)]
    assert [c["rows"] for c in doc["caches"]] == [200] * 3 and not any(c["in_use"] for c in doc["caches"])
    assert 3 * 86400 - 60 < doc["caches"][2]["last_used_seconds_ago"] < 3 * 86400 + 60


def test_fm_cache_uses_the_default_directory_and_prints_it(tmp_path, monkeypatch):
    monkeypatch.setenv("FMCLI_CACHE_DIR", str(tmp_path / "mine"))
    result = fm("cache", "dir")
    assert result.exit_code == 0 and result.output == f"{tmp_path / 'mine'}\n"
    monkeypatch.delenv("FMCLI_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert fm("cache", "dir").output == f"{tmp_path / 'xdg' / 'fmcli'}\n"
    assert fm("cache", "dir", "--cache-dir", "rel").output == f"{os.path.abspath('rel')}\n"
    # a directory that does not exist yet holds no caches
    empty = fm("cache")
    assert empty.exit_code == 0 and empty.output.startswith(f"{tmp_path / 'xdg' / 'fmcli'}: no caches (cap ")
    assert json.loads(fm("cache", "--json").output)["caches"] == []


def test_fm_cache_clear_older_than_dry_run_and_all(tmp_path, filled):
    before = sorted(caches(filled))
    dry = fm("cache", "clear", "--dry-run", "--older-than", "2d", "--cache-dir", filled)
    assert dry.exit_code == 0 and dry.output.startswith("would remove 1 cache (")
    assert sorted(caches(filled)) == before
    old = fm("cache", "clear", "--older-than", "30m", "--json", "--cache-dir", filled)
    assert old.exit_code == 0, old.output
    doc = json.loads(old.output)
    assert doc["schema"] == "fmcli.cache.clear/1" and not doc["dry_run"]
    assert len(doc["removed"]) == 2 and doc["in_use"] == [] and doc["failed"] == []
    assert doc["freed_bytes"] == sum(r["bytes"] for r in doc["removed"])
    (left,) = caches(filled)
    assert CacheFile(str(left)).meta["paths"] == [str(tmp_path / "day_02.ffm")]
    # a stale temporary of a killed writer and a damaged cache go as well
    stale = filled / ".fmcache-abcd1234.tmp"
    stale.write_bytes(b"FMCACHE\x01half")
    age(stale, 60)
    (filled / f"{'0' * 16}-{'1' * 32}.fmcache").write_bytes(b"garbage")
    listing = fm("cache", "--cache-dir", filled)
    assert listing.exit_code == 0 and "(not usable: " in listing.output
    everything = fm("cache", "clear", "--cache-dir", filled)
    assert everything.exit_code == 0 and everything.output.startswith("removed 2 caches (")
    assert list(filled.iterdir()) == []
    again = fm("cache", "clear", "--cache-dir", filled)
    assert again.exit_code == 0 and again.output.startswith("removed 0 caches (0 bytes)")


@pytest.mark.parametrize("args", [["clean"], ["list", "--older-than", "1d"], ["dir", "--dry-run"],
                                  ["dir", "--json"], ["clear", "--older-than", "7"],
                                  ["clear", "--older-than", "1y"], ["list", "extra"]])
def test_fm_cache_usage_errors(tmp_path, args):
    result = fm("cache", *args, "--cache-dir", tmp_path)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


def test_fm_cache_on_a_regular_file_is_exit_66(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    for action in ("list", "clear", "dir"):
        result = fm("cache", action, "--cache-dir", f)
        assert result.exit_code == 66, result.output
        assert result.stderr.strip() == f"fm: error: {f} is not a directory (the cache directory)"
    assert f.read_text() == "x"


def test_fm_cache_clear_says_when_it_cannot_remove_a_cache(filled, monkeypatch):
    unlink = os.unlink

    def refuse(path, *args, **kw):        # what a directory of another user's gives
        if str(path).endswith(".fmcache"):
            raise PermissionError(13, "Permission denied", str(path))
        return unlink(path, *args, **kw)

    monkeypatch.setattr(cache_mod.os, "unlink", refuse)
    result = fm("cache", "clear", "--cache-dir", filled)
    monkeypatch.undo()
    assert result.exit_code == 74, result.output
    assert result.output.startswith("removed 0 caches")
    assert result.stderr.strip().startswith(f"fm: error: could not remove 3 caches of {filled} (")
    assert result.stderr.strip().endswith(": Permission denied)") and "Traceback" not in result.output
    assert len(caches(filled)) == 3


def test_fm_cache_environment_variables_and_help(tmp_path, filled):
    result = fm("cache", env={"FM_CACHE_CACHE_DIR": str(filled), "FM_CACHE_JSON": "1"})
    assert result.exit_code == 0 and len(json.loads(result.output)["caches"]) == 3
    typo = fm("cache", env={"FM_CACHE_JSNO": "1"})
    assert typo.exit_code == 78 and "FM_CACHE_JSNO" in typo.stderr
    helped = fm("cache", "--help")
    assert helped.exit_code == 0
    for word in ("list", "clear", "dir", "--older-than", "--dry-run", "--json", "--cache-dir"):
        assert word in helped.output
    assert "--cache-max-size" in fm("train", "--help").output
