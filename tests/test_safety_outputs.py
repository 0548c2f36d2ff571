"""No output ever overwrites an input, and temporary files of killed writers
are cleaned up by the next run that writes to the same place.

The first half runs the real CLI (click's CliRunner) with an output that is,
under some spelling, one of the inputs -- the same name, a relative and an
absolute path, a symbolic link, a hard link, a glob -- and checks the one
line, exit status 2 and that every input is byte-for-byte unchanged.  The
second half kills writers with SIGKILL in the middle of writing (real child
processes, real ``fm``) and checks that only the dead writers' temporary
files are removed, never a live writer's and never anything else.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import fmcli
from fmcli import checkpoint
from fmcli.atomic import atomic_output
from fmcli.config import Config
from fmcli.data.cache import CacheWriter
from fmcli.errors import EX_USAGE
from fmcli.checkpoint import OWNED_NAMES
from fmcli.safepaths import ClobberError, STALE_AFTER, refuse_clobber, sweep_stale, temp_pattern
from clirun import invoke

ROWS = b"".join(b"%d 0:%d:1 1:%d:1 2:%d:0.5\n" % (i % 2, i % 7, 10 + i % 5, 20 + i % 3) for i in range(60))
FM = os.path.join(os.path.dirname(sys.executable), "fm")


def run(args, cwd, input=None):
    return invoke(*args, cwd=cwd, input=input, catch_exceptions=False)


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def snapshot(directory) -> dict[str, str]:
    """Every file under `directory` (links as their targets) and its content hash."""
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, directory)
            out[rel] = ("-> " + os.readlink(path)) if os.path.islink(path) else digest(path)
    return out


def assert_refused(result, *parts):
    """Exit status 2, one line on stderr that names each of `parts`."""
    assert result.exit_code == EX_USAGE, (result.exit_code, result.stderr)
    err = result.stderr
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fm: error: "), err
    for part in parts:
        assert part in lines[0], (part, lines[0])
    return lines[0]


@pytest.fixture()
def work(tmp_path):
    """tr.ffm, va.ffm and a trained model m.fm in tmp_path."""
    (tmp_path / "tr.ffm").write_bytes(ROWS)
    (tmp_path / "va.ffm").write_bytes(ROWS[: len(ROWS) // 2])
    result = run(["train", "-q", "-t", "1", "-k", "2", "-o", "m.fm", "tr.ffm"], tmp_path)
    assert result.exit_code == 0, result.stderr
    return tmp_path


# --------------------------------------------------------------------------
# fm train
# --------------------------------------------------------------------------

@pytest.mark.parametrize("output, train_args, names", [
    ("tr.ffm", ["tr.ffm"], ["-o tr.ffm", "the training file tr.ffm"]),
    ("./tr.ffm", ["tr.ffm"], ["-o ./tr.ffm", "the training file tr.ffm"]),
    ("ABS/tr.ffm", ["tr.ffm"], ["the training file tr.ffm"]),
    ("tr.ffm", ["ABS/tr.ffm"], ["the training file"]),
    ("sub/../tr.ffm", ["tr.ffm"], ["the training file tr.ffm"]),
    ("link.ffm", ["tr.ffm"], ["-o link.ffm", "the training file tr.ffm", "(the same file)"]),
    ("tr.ffm", ["link.ffm"], ["the training file link.ffm"]),
    ("hard.ffm", ["tr.ffm"], ["-o hard.ffm", "the training file tr.ffm"]),
    ("va.ffm", ["*.ffm"], ["the training file va.ffm"]),
    ("tr.ffm", ["va.ffm", "tr.ffm"], ["the training file tr.ffm"]),
])
def test_train_output_is_a_training_file(work, output, train_args, names):
    (work / "sub").mkdir()
    os.symlink("tr.ffm", work / "link.ffm")
    os.link(work / "tr.ffm", work / "hard.ffm")
    fix = lambda a: a.replace("ABS", str(work))   # noqa: E731
    before = snapshot(work)
    result = run(["train", "-q", "-t", "1", "-o", fix(output), *map(fix, train_args)], work)
    assert_refused(result, "refusing to overwrite an input", *names)
    assert snapshot(work) == before


@pytest.mark.parametrize("extra, names", [
    (["-p", "va.ffm", "-o", "va.ffm"], ["-o va.ffm", "the validation file va.ffm"]),
    (["--weights", "w.txt", "-o", "w.txt"], ["-o w.txt", "the --weights file w.txt"]),
    (["--spec", "s.json", "-o", "s.json"], ["-o s.json", "the --spec file s.json"]),
    (["--config", "c.toml", "-o", "c.toml"], ["-o c.toml", "the --config file c.toml"]),
    (["--log-json", "tr.ffm", "-o", "new.fm"], ["--log-json tr.ffm", "the training file tr.ffm"]),
    (["--log-json", "va.ffm", "-p", "va.ffm", "-o", "new.fm"], ["--log-json va.ffm", "the validation file"]),
    (["--log-json", "m.fm", "--init-model", "m.fm", "-o", "new.fm"], ["--log-json m.fm", "the --init-model"]),
    (["--checkpoint-dir", "tr.ffm", "-o", "new.fm"], ["--checkpoint-dir tr.ffm", "the training file"]),
    (["--checkpoint-dir", ".", "-o", "new.fm", "ckpt-00000001.fmc"],
     ["--checkpoint-dir .", "holds the training file ckpt-00000001.fmc"]),
    (["--dry-run", "-o", "tr.ffm"], ["-o tr.ffm", "the training file tr.ffm"]),
    (["--dry-run", "--log-json", "tr.ffm", "-o", "new.fm"], ["--log-json tr.ffm"]),
])
def test_train_output_is_another_input(work, extra, names):
    (work / "w.txt").write_text("1\n" * 60)
    (work / "s.json").write_text("{}")
    (work / "c.toml").write_text("[train]\nepochs = 1\n")
    (work / "ckpt-00000001.fmc").write_bytes((work / "tr.ffm").read_bytes())   # data under a checkpoint's name
    before = snapshot(work)
    result = run(["train", "-q", "-t", "1", *extra, "tr.ffm"], work)
    assert_refused(result, *names)
    assert snapshot(work) == before      # nothing appended, replaced or created


def test_refused_before_any_data_is_read(work):
    """The check comes first: a data file that does not parse is still refused
    as an output (exit 2), not reported as bad data (65)."""
    (work / "bad.ffm").write_bytes(b"not libffm at all\n")
    before = snapshot(work)
    assert_refused(run(["train", "-q", "-o", "bad.ffm", "bad.ffm"], work), "the training file bad.ffm")
    assert_refused(run(["predict", "-o", "bad.ffm", "m.fm", "bad.ffm"], work), "the data file bad.ffm")
    assert snapshot(work) == before


def test_two_outputs_of_one_run_are_refused(work):
    (work / "sub").mkdir()
    before = snapshot(work)
    result = run(["train", "-q", "-t", "1", "--log-json", "x.log", "-o", "x.log", "tr.ffm"], work)
    assert_refused(result, "outputs -o x.log and --log-json x.log are the same file")
    result = run(["train", "-q", "-t", "1", "--log-json", "sub/../y.log", "-o", "y.log", "tr.ffm"], work)
    assert "are the same file" in assert_refused(result)
    result = run(["train", "-q", "-t", "1", "--checkpoint-dir", "ck", "-o", "ck", "tr.ffm"], work)
    assert_refused(result, "outputs -o ck and --checkpoint-dir ck are the same file")
    assert snapshot(work) == before and not (work / "x.log").exists() and not (work / "ck").exists()


def test_default_output_is_checked_too(work):
    """Without -o the model goes to TRAIN_FILE's base name + .fm: a run log
    of that name is refused as well."""
    (work / "d.ffm").write_bytes(ROWS)
    result = run(["train", "-q", "-t", "1", "--log-json", "d.fm", "d.ffm"], work)
    assert_refused(result, "outputs -o d.fm and --log-json d.fm are the same file")
    assert not (work / "d.fm").exists()


def test_warm_start_in_place_is_allowed(work):
    before = digest(work / "m.fm")
    result = run(["train", "-q", "-t", "1", "-k", "2", "--init-model", "m.fm", "-o", "m.fm", "tr.ffm"], work)
    assert result.exit_code == 0, result.stderr
    assert digest(work / "m.fm") != before
    assert fmcli.load_model(str(work / "m.fm")).meta["training"]


def test_resume_into_its_own_checkpoint_directory_is_allowed(work):
    result = run(["train", "-q", "-t", "2", "-k", "2", "--checkpoint-dir", "ck", "-o", "r.fm", "tr.ffm"], work)
    assert result.exit_code == 0, result.stderr
    result = run(["train", "-q", "--resume", "ck"], work)
    assert result.exit_code == 0, result.stderr
    # ... but not with an output that is its training file
    before = snapshot(work)
    assert_refused(run(["train", "-q", "--resume", "ck", "-o", "tr.ffm"], work), "the training file")
    assert snapshot(work) == before


def test_different_outputs_and_stdio_are_fine(work):
    result = run(["train", "-q", "-t", "1", "-k", "2", "-p", "va.ffm", "--log-json", "run.log",
                  "-o", "new.fm", "tr.ffm"], work)
    assert result.exit_code == 0, result.stderr
    result = run(["predict", "-q", "m.fm", "-"], work, input=ROWS)
    assert result.exit_code == 0 and len(result.stdout.splitlines()) == 60
    result = run(["predict", "-q", "-o", os.devnull, "m.fm", os.devnull], work)
    assert result.exit_code == 0, result.stderr


# --------------------------------------------------------------------------
# fm predict, fm convert
# --------------------------------------------------------------------------

@pytest.mark.parametrize("args, names", [
    (["-o", "m.fm", "m.fm", "va.ffm"], ["-o m.fm", "the model file m.fm"]),
    (["-o", "va.ffm", "m.fm", "va.ffm"], ["-o va.ffm", "the data file va.ffm"]),
    (["-o", "va.ffm", "m.fm", "tr.ffm", "va.ffm"], ["the data file va.ffm"]),
    (["-o", "tr.ffm", "m.fm", "*.ffm"], ["the data file tr.ffm"]),
    (["-o", "ABS/va.ffm", "m.fm", "va.ffm"], ["the data file va.ffm"]),
    (["-o", "link.ffm", "m.fm", "va.ffm"], ["-o link.ffm", "the data file va.ffm", "(the same file)"]),
    (["-o", "hard.fm", "m.fm", "va.ffm"], ["-o hard.fm", "the model file m.fm"]),
    (["--config", "c.toml", "-o", "c.toml", "m.fm", "va.ffm"], ["the --config file c.toml"]),
])
def test_predict_output_is_an_input(work, args, names):
    os.symlink("va.ffm", work / "link.ffm")
    os.link(work / "m.fm", work / "hard.fm")
    (work / "c.toml").write_text("[predict]\nthreads = 1\n")
    before = snapshot(work)
    result = run(["predict", *(a.replace("ABS", str(work)) for a in args)], work)
    assert_refused(result, "refusing to overwrite an input", *names)
    assert snapshot(work) == before


@pytest.mark.parametrize("args, names", [
    (["tr.ffm", "-o", "tr.ffm"], ["-o tr.ffm", "the input file tr.ffm"]),
    (["va.ffm", "tr.ffm", "-o", "ABS/tr.ffm"], ["the input file tr.ffm"]),
    (["tr.ffm", "-o", "link.ffm"], ["the input file tr.ffm", "(the same file)"]),
    (["m.fm", "-o", "m.fm", "--strip-state"], ["-o m.fm", "the input file m.fm"]),
    (["m.fm", "-o", "hard.fm", "--dtype", "float16"], ["-o hard.fm", "the input file m.fm"]),
    (["tr.ffm", "-o", "out.ffm", "--fields", "out.ffm"], ["-o out.ffm", "the --fields file"]),
    (["criteo", "raw.txt", "-o", "raw.ffm", "--spec-out", "raw.txt"], ["--spec-out raw.txt", "the input file"]),
    (["criteo", "raw.valid.txt", "--split", "0.5", "-o", "raw.txt"], ["--split raw.valid.txt", "the input file"]),
    (["criteo", "raw.txt", "-o", "r.ffm", "--spec-out", "r.ffm"], ["outputs -o r.ffm and --spec-out r.ffm"]),
    (["criteo", "tr.ffm.spec.json", "-o", "tr.ffm"], ["--spec-out tr.ffm.spec.json", "the input file"]),
])
def test_convert_output_is_an_input(work, args, names):
    os.symlink("tr.ffm", work / "link.ffm")
    os.link(work / "m.fm", work / "hard.fm")
    (work / "out.ffm").write_text("0 0\n")
    for name in ("raw.txt", "raw.valid.txt", "tr.ffm.spec.json"):
        (work / name).write_text("1\t5\t\t\n" * 4)
    before = snapshot(work)
    result = run(["convert", "-q", *(a.replace("ABS", str(work)) for a in args)], work)
    assert_refused(result, *names)
    assert snapshot(work) == before


# --------------------------------------------------------------------------
# The helper and the Python API
# --------------------------------------------------------------------------

def test_refuse_clobber_unit(tmp_path):
    a = tmp_path / "a.ffm"
    a.write_text("x")
    (tmp_path / "d").mkdir()
    os.symlink(tmp_path / "d", tmp_path / "dlink")
    # new outputs: the same file through a linked directory
    with pytest.raises(ClobberError, match="are the same file") as info:
        refuse_clobber({}, {"-o": str(tmp_path / "d" / "x"), "--log-json": str(tmp_path / "dlink" / "x")})
    assert info.value.exit_code == EX_USAGE
    # allowed pairs, '-' and None, devices, missing inputs
    refuse_clobber({"the --init-model file": str(a)}, {"-o": str(a)}, allow={("-o", "the --init-model file")})
    refuse_clobber({"the data file": ["-", None, str(tmp_path / "missing")]}, {"-o": "-", "--x": None})
    refuse_clobber({"the data file": os.devnull}, {"-o": os.devnull, "--log-json": os.devnull})
    refuse_clobber({"the data file": str(a)}, {"-o": str(tmp_path / "b.ffm")},
                   directories={"--checkpoint-dir": (str(tmp_path / "d"), OWNED_NAMES)})
    # a checkpoint directory may hold the data, under names its files never take
    refuse_clobber({"the data file": str(tmp_path / "dlink" / ".." / "a.ffm")}, {},
                   directories={"--checkpoint-dir": (str(tmp_path), OWNED_NAMES)})
    (tmp_path / "ckpt-00000003.fmc").write_bytes(b"data named like a checkpoint")
    with pytest.raises(ClobberError, match="holds the data file"):
        refuse_clobber({"the data file": str(tmp_path / "dlink" / ".." / "ckpt-00000003.fmc")}, {},
                       directories={"--checkpoint-dir": (str(tmp_path), OWNED_NAMES)})


def test_python_api_refuses_checkpoints_over_inputs(tmp_path):
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "ckpt-00000001.fmc").write_bytes(ROWS)      # data under a checkpoint's name
    before = snapshot(tmp_path)
    with pytest.raises(ClobberError, match="checkpoint_dir .* holds the training data") as info:
        fmcli.train(Config(model="fm", k=2, epochs=1, checkpoint_dir=str(ck)), str(ck / "ckpt-00000001.fmc"))
    assert info.value.exit_code == EX_USAGE
    with pytest.raises(ClobberError, match="is the training data"):
        fmcli.train(Config(model="fm", k=2, epochs=1, checkpoint_dir=str(ck / "ckpt-00000001.fmc")),
                    str(ck / "ckpt-00000001.fmc"))
    assert snapshot(tmp_path) == before
    # the data beside the checkpoints under its own name is fine
    (ck / "tr.ffm").write_bytes(ROWS)
    fmcli.train(Config(model="fm", k=2, epochs=1, checkpoint_dir=str(ck)), str(ck / "tr.ffm"))
    assert (ck / "tr.ffm").read_bytes() == ROWS


# --------------------------------------------------------------------------
# Leftovers of killed writers
# --------------------------------------------------------------------------

# A child that starts writing to a place with fmcli's own writer, says where
# its temporary file is, and waits (until its stdin closes, or SIGKILL).
CHILD = r"""
import os, sys
kind, where = sys.argv[1], sys.argv[2]
if kind == "atomic":
    from fmcli.atomic import atomic_output
    with atomic_output(where, "wb") as f:
        f.write(b"partial" * 1000)
        f.flush()
        d, b = os.path.split(where)
        tmp = [n for n in os.listdir(d) if n.startswith("." + b + ".") and n.endswith(".tmp")]
        print(os.path.join(d, tmp[0]) if len(tmp) == 1 else "?", flush=True)
        sys.stdin.read()
        f.write(b"done")
elif kind == "cache":
    from fmcli.data.cache import CacheWriter
    w = CacheWriter(None, where)
    print(w.tmp, flush=True)
    sys.stdin.read()
    w.abort()
"""


def start_writer(kind: str, where) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, kind, str(where)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    tmp = proc.stdout.readline().strip()
    assert os.path.isfile(tmp), tmp
    return proc, tmp


def killed_writer(kind: str, where) -> str:
    """The temporary file a writer left when it was killed with SIGKILL, aged
    past STALE_AFTER."""
    proc, tmp = start_writer(kind, where)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and os.path.exists(tmp)
    age(tmp)
    return tmp


def age(path) -> None:
    old = time.time() - 10 * STALE_AFTER - 60
    os.utime(path, (old, old))


def bystanders(directory, prefix: str) -> list[str]:
    """Files next to the temporary files named `prefix` + 8 random characters +
    '.tmp' that a sweep must never touch (all of them old and unlocked)."""
    names = [prefix[1:] + "abcdefgh.tmp", prefix + "ABCDEFGH.tmp", prefix + "abcdefg.tmp",
             prefix + "abcdefgh.tmp.keep", prefix + "abcdefgh.txt", ".x" + prefix + "abcdefgh.tmp"]
    for name in names:
        (directory / name).write_text("keep me")
        age(directory / name)
    (directory / "target").write_text("x")
    os.symlink("target", directory / (prefix + "linkxxxx.tmp"))
    (directory / (prefix + "dirxxxxx.tmp")).mkdir()
    return names + ["target", prefix + "linkxxxx.tmp", prefix + "dirxxxxx.tmp"]


def test_output_temp_of_a_killed_writer_is_swept_by_the_next_write(tmp_path):
    dead = killed_writer("atomic", tmp_path / "m.fm")
    keep = bystanders(tmp_path, ".m.fm.")
    with atomic_output(tmp_path / "m.fm", "wb") as f:
        f.write(b"new")
    assert not os.path.exists(dead)
    assert (tmp_path / "m.fm").read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path)) == sorted(keep + ["m.fm"])


def test_a_live_writers_temp_is_never_swept(tmp_path):
    proc, live = start_writer("atomic", tmp_path / "m.fm")
    try:
        age(live)           # old, but held by a live process
        with atomic_output(tmp_path / "m.fm", "wb") as f:
            f.write(b"other run")
        assert sweep_stale(str(tmp_path), temp_pattern(".m.fm.")) == []
        assert os.path.exists(live)
    finally:
        proc.stdin.close()
        proc.wait()
    assert proc.returncode == 0
    # the live writer finished normally: its file replaced the other one
    assert (tmp_path / "m.fm").read_bytes() == b"partial" * 1000 + b"done"
    assert not os.path.exists(live)


def test_a_fresh_unlocked_temp_is_left_for_a_later_run(tmp_path):
    """Unlocked but just written (a writer between creating and locking it):
    kept until it is STALE_AFTER seconds old."""
    fresh = tmp_path / ".m.fm.abcdefgh.tmp"
    fresh.write_text("just created")
    assert sweep_stale(str(tmp_path), temp_pattern(".m.fm.")) == []
    age(fresh)
    assert sweep_stale(str(tmp_path), temp_pattern(".m.fm.")) == [str(fresh)]


def test_cache_temp_of_a_killed_writer_is_swept_by_the_next_cache_writer(tmp_path):
    cache = tmp_path / "cache"
    proc, live = start_writer("cache", cache)
    dead = killed_writer("cache", cache)
    try:
        age(live)
        keep = bystanders(cache, ".fmcache-")
        w = CacheWriter(None, str(cache))
        w.abort()
        assert not os.path.exists(dead)
        assert os.path.exists(live)
        assert all(os.path.lexists(cache / name) for name in keep)
    finally:
        proc.stdin.close()
        proc.wait()
    assert not os.path.exists(live)     # the live writer cleaned up after itself


def test_cache_temp_is_swept_by_fm_train(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    dead = killed_writer("cache", cache)
    (tmp_path / "tr.ffm").write_bytes(ROWS)
    monkeypatch.setenv("FMCLI_CACHE_DIR", str(cache))
    result = run(["train", "-q", "-t", "1", "-k", "2", "-o", "m.fm", "tr.ffm"], tmp_path)
    assert result.exit_code == 0, result.stderr
    assert not os.path.exists(dead)
    assert [n for n in os.listdir(cache) if n.endswith(".fmcache")]


def test_checkpoint_temp_of_a_killed_writer_is_swept_by_the_next_checkpoint(tmp_path):
    ck = tmp_path / "ck"
    ck.mkdir()
    dead = killed_writer("atomic", ck / "ckpt-00000001.fmc")
    proc, live = start_writer("atomic", ck / "ckpt-00000007.fmc")
    try:
        age(live)
        keep = bystanders(ck, ".ckpt-00000001.fmc.")
        path = checkpoint.save(str(ck), {"epoch": 1}, {"w": np.zeros(3, np.float32)}, keep=2)
        assert os.path.basename(path) == "ckpt-00000001.fmc"
        assert not os.path.exists(dead)
        assert os.path.exists(live)
        assert all(os.path.lexists(ck / name) for name in keep)
    finally:
        proc.stdin.close()
        proc.wait()


def test_real_fm_killed_mid_write_then_next_run_cleans_up(work):
    """`fm predict` streaming stdin into -o holds its temporary file; SIGKILL
    leaves it behind; a second run writing the same output removes it."""
    proc = subprocess.Popen([FM, "predict", "-q", "-o", "p.txt", "m.fm", "-"], cwd=work,
                            stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        proc.stdin.write(ROWS)
        proc.stdin.flush()
        deadline = time.monotonic() + 30
        temps: list[str] = []
        while not temps and time.monotonic() < deadline and proc.poll() is None:
            temps = [n for n in os.listdir(work) if temp_pattern(".p.txt.").fullmatch(n)]
            time.sleep(0.05)
        assert len(temps) == 1, (temps, proc.poll())
        tmp = work / temps[0]
        age(tmp)
        # while it runs, no sweep takes its file
        assert sweep_stale(str(work), temp_pattern(".p.txt.")) == []
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdin.close()
        proc.stderr.close()
    assert tmp.exists() and not (work / "p.txt").exists()
    age(tmp)
    result = run(["predict", "-q", "-o", "p.txt", "m.fm", "va.ffm"], work)
    assert result.exit_code == 0, result.stderr
    assert not tmp.exists()
    assert len((work / "p.txt").read_text().splitlines()) == 30
