"""Inputs that can be read only once: stdin, pipes, FIFOs, a shell's <(...).

Every command reads such an input exactly once, in order, or spools it to
a temporary file first where it needs two passes; nothing fingerprints,
peeks at, caches under its name or opens it a second time.  A run blocked
on one (a FIFO that no one writes) still ends on SIGTERM or SIGINT, with
its status and one line, leaving no output.

These run the real `fm` in a process of its own: FIFOs, /dev/fd/N and
signals need one, and a run that would hang is killed by a timeout.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from fmcli.atomic import lock_path
from fmcli.data.source import expand_inputs, reads_once
from fmcli.errors import ConfigError
from fmcli.modelfile import read_model_file

FM = [sys.executable, "-m", "fmcli"]
FM_SH = " ".join(shlex.quote(a) for a in FM)
TIMEOUT = 60          # a run that would hang fails the test instead

ROWS = 30_000         # > 1 MiB of text: more than a fingerprint's sample


# --------------------------------------------------------------------------
# data and helpers
# --------------------------------------------------------------------------

def _ffm_rows(rng, n: int, fields: int = 5) -> bytes:
    labels = rng.integers(0, 2, n)
    feats = rng.integers(0, 500, (n, fields))
    lines = [f"{labels[i]} " + " ".join(f"{f}:{feats[i, f] + 500 * f}:1" for f in range(fields))
             for i in range(n)]
    return ("\n".join(lines) + "\n").encode()


def _criteo_rows(rng, n: int) -> bytes:
    """Raw Criteo TSV: label, 13 integer columns, 26 hex categorical
    columns, some of them empty; rare and frequent values alike."""
    out = []
    for _ in range(n):
        ints = ["" if rng.random() < 0.1 else str(int(rng.integers(0, 60))) for _ in range(13)]
        cats = ["" if rng.random() < 0.1 else f"{int(rng.integers(0, 300)) ** 2 % 4099:08x}"
                for _ in range(26)]
        out.append("\t".join([str(int(rng.integers(0, 2)))] + ints + cats))
    return ("\n".join(out) + "\n").encode()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("pipes")
    rng = np.random.default_rng(7)
    (d / "tr.ffm").write_bytes(_ffm_rows(rng, ROWS))
    assert (d / "tr.ffm").stat().st_size > 1 << 20
    lines = (d / "tr.ffm").read_bytes().splitlines(keepends=True)
    (d / "a.ffm").write_bytes(b"".join(lines[: ROWS // 2]))
    (d / "b.ffm").write_bytes(b"".join(lines[ROWS // 2 :]))
    (d / "va.ffm").write_bytes(_ffm_rows(rng, 2000))
    (d / "w.txt").write_text("".join(f"{0.5 + (i % 3) / 2}\n" for i in range(ROWS)))
    (d / "raw.txt").write_bytes(_criteo_rows(rng, 3000))
    return d


@pytest.fixture
def env(tmp_path):
    """A private cache and temporary directory for one test's runs."""
    (tmp_path / "cache").mkdir()
    (tmp_path / "tmp").mkdir()
    return {**os.environ, "FMCLI_CACHE_DIR": str(tmp_path / "cache"), "TMPDIR": str(tmp_path / "tmp")}


def fm(args, env, cwd=None):
    return subprocess.run(FM + [str(a) for a in args], env=env, cwd=cwd, capture_output=True,
                          timeout=TIMEOUT)


def sh(command: str, env, cwd=None):
    """`command` run by bash (for <(...)), with $FM the fm command."""
    return subprocess.run(["bash", "-c", command], env={**env, "FM": FM_SH}, cwd=cwd,
                          capture_output=True, timeout=TIMEOUT)


def ok(res):
    assert res.returncode == 0, res.stderr.decode()
    return res


def one_error_line(res, code: int) -> str:
    err = res.stderr.decode()
    assert res.returncode == code, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


class Fifo:
    """A FIFO and a thread writing `payload` to it (when given) once a
    reader opens it.  Closing it releases a writer that no one read."""

    def __init__(self, path, payload: bytes | None = None):
        self.path = str(path)
        os.mkfifo(self.path)
        self.thread = None
        if payload is not None:
            self.thread = threading.Thread(target=self._write, args=(payload,), daemon=True)
            self.thread.start()

    def _write(self, payload: bytes) -> None:
        with contextlib.suppress(BrokenPipeError), open(self.path, "wb") as f:
            f.write(payload)

    def close(self) -> None:
        if self.thread is not None and self.thread.is_alive():
            # a writer still waiting for a reader: be that reader
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
            try:
                self.thread.join(0.5)
                while self.thread.is_alive():
                    with contextlib.suppress(BlockingIOError):
                        os.read(fd, 1 << 20)
                    self.thread.join(0.05)
            finally:
                os.close(fd)


@pytest.fixture
def fifo(tmp_path):
    made = []

    def make(name="in.ffm", payload=None):
        f = Fifo(tmp_path / name, payload)
        made.append(f)
        return f.path

    yield make
    for f in made:
        f.close()


def same_parameters(a, b) -> None:
    _, pa = read_model_file(a)
    _, pb = read_model_file(b)
    assert list(pa) == list(pb)
    for name in pa:
        assert np.array_equal(pa[name], pb[name]), name


TRAIN = ["-q", "-t", "2", "-s", "1", "-k", "4"]


# --------------------------------------------------------------------------
# which inputs are read once
# --------------------------------------------------------------------------

def test_reads_once(tmp_path):
    regular = tmp_path / "d.ffm"
    regular.write_text("1 0:1:1\n")
    os.link(regular, tmp_path / "hard.ffm")
    os.symlink(regular, tmp_path / "soft.ffm")
    os.mkfifo(tmp_path / "fifo")
    os.symlink(tmp_path / "fifo", tmp_path / "to-fifo")
    assert reads_once("-")
    for path in (regular, tmp_path / "hard.ffm", tmp_path / "soft.ffm", "d.ffm", tmp_path / "missing"):
        assert not reads_once(path), path
    for path in (tmp_path / "fifo", tmp_path / "to-fifo", os.devnull):
        assert reads_once(path), path
    r, w = os.pipe()
    try:
        assert reads_once(f"/dev/fd/{r}")
    finally:
        os.close(r)
        os.close(w)


def test_several_fifos_are_inputs_but_not_the_same_one_twice(tmp_path):
    os.mkfifo(tmp_path / "f1")
    os.mkfifo(tmp_path / "f2")
    os.symlink(tmp_path / "f1", tmp_path / "link")
    f1, f2, link = (str(tmp_path / n) for n in ("f1", "f2", "link"))
    assert expand_inputs([f1, f2]) == [f1, f2]
    for twice in ([f1, f1], [f1, f2, link]):
        with pytest.raises(ConfigError, match="a pipe or FIFO can be read only once, but it is given twice"):
            expand_inputs(twice)
    with pytest.raises(ConfigError, match="'-' \\(stdin\\) must be the only input"):
        expand_inputs(["-", f1])


def test_the_same_fifo_twice_is_one_line_not_a_hang(data, tmp_path, env, fifo):
    path = fifo()
    res = fm(["train", "-o", tmp_path / "m.fm", path, path], env)
    assert one_error_line(res, 78) == \
        f"fm: error: {path}: a pipe or FIFO can be read only once, but it is given twice"
    assert not (tmp_path / "m.fm").exists()


# --------------------------------------------------------------------------
# fm train
# --------------------------------------------------------------------------

def test_train_through_process_substitution_uses_every_row(data, tmp_path, env):
    """Training data, validation data and --weights through <(...): the same
    model as from the files, every row counted, nothing fingerprinted."""
    d = data
    common = TRAIN + ["--log-json"]
    ok(fm(["train", *common, tmp_path / "a.jsonl", "-p", d / "va.ffm", "--weights", d / "w.txt",
           "-o", tmp_path / "files.fm", d / "tr.ffm"], env))
    ok(sh(f"$FM train {' '.join(common)} {tmp_path}/b.jsonl -p <(cat {d}/va.ffm) "
          f"--weights <(cat {d}/w.txt) -o {tmp_path}/pipes.fm <(cat {d}/tr.ffm)", env))
    same_parameters(tmp_path / "files.fm", tmp_path / "pipes.fm")
    header, _ = read_model_file(tmp_path / "pipes.fm")
    assert header["training"]["train_rows"] == ROWS
    assert header["training"]["valid_rows"] == 2000
    import json

    start = json.loads((tmp_path / "b.jsonl").read_text().splitlines()[0])
    for role in ("train", "valid", "weights"):
        (entry,) = start["inputs"][role]
        assert entry["path"].startswith("/dev/fd/") and set(entry) == {"path"}
    assert os.listdir(tmp_path / "tmp") == []


def test_train_on_several_process_substitutions_in_order(data, tmp_path, env):
    d = data
    ok(fm(["train", *TRAIN, "-o", tmp_path / "files.fm", d / "a.ffm", d / "b.ffm"], env))
    ok(sh(f"$FM train {' '.join(TRAIN)} -o {tmp_path}/pipes.fm <(cat {d}/a.ffm) <(cat {d}/b.ffm)", env))
    same_parameters(tmp_path / "files.fm", tmp_path / "pipes.fm")


@pytest.mark.parametrize("cache", ["--cache", "--no-cache"])
def test_train_on_a_fifo_larger_than_the_memory_budget(data, tmp_path, env, fifo, cache):
    """Data over --memory-budget is parsed again every epoch when it has
    no cache -- never a FIFO's: it is held in memory or in a cache file
    of this run only, which is not left behind."""
    opts = TRAIN + [cache, "--memory-budget", "1M"]
    ok(fm(["train", *opts, "-o", tmp_path / "file.fm", data / "tr.ffm"], env))
    for f in os.listdir(tmp_path / "cache"):
        os.unlink(tmp_path / "cache" / f)
    path = fifo(payload=(data / "tr.ffm").read_bytes())
    ok(fm(["train", *opts, "-o", tmp_path / "fifo.fm", path], env))
    same_parameters(tmp_path / "file.fm", tmp_path / "fifo.fm")
    assert os.listdir(tmp_path / "cache") == []


def test_train_from_a_pipe_needs_an_output(data, tmp_path, env):
    res = sh(f"$FM train -q <(cat {data}/tr.ffm)", env, cwd=tmp_path)
    assert res.returncode == 2
    assert "training from stdin, a pipe or a glob needs -o/--output" in res.stderr.decode()
    assert sorted(os.listdir(tmp_path)) == ["cache", "tmp"]


def test_parquet_through_a_fifo_is_refused_in_one_line(data, tmp_path, env, fifo):
    path = fifo("in.parquet")      # never opened: refused before
    res = fm(["train", "-o", tmp_path / "m.fm", path], env)
    assert one_error_line(res, 78) == \
        f"fm: error: {path}: Parquet input cannot be read from a pipe or FIFO; give a file"
    assert not (tmp_path / "m.fm").exists()


# --------------------------------------------------------------------------
# fm predict
# --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model(data, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "m.fm"
    ok(fm(["train", *TRAIN, "-o", path, data / "tr.ffm"], dict(os.environ)))
    return path


def test_predict_data_and_model_through_pipes(data, model, tmp_path, env, fifo):
    expected = ok(fm(["predict", "-q", model, data / "tr.ffm"], env)).stdout
    assert expected.count(b"\n") == ROWS
    path = fifo(payload=(data / "tr.ffm").read_bytes())
    assert ok(fm(["predict", "-q", model, path], env)).stdout == expected
    # the model through a pipe, the data in two pieces through two more
    res = ok(sh(f"$FM predict -q <(cat {model}) <(cat {data}/a.ffm) <(cat {data}/b.ffm)", env))
    assert res.stdout == expected
    # and to a file, replaced only when every row was scored
    ok(sh(f"$FM predict -q -o {tmp_path}/p.txt <(cat {model}) <(cat {data}/tr.ffm)", env))
    assert (tmp_path / "p.txt").read_bytes() == expected


def test_a_model_through_a_pipe_loads(model):
    """load_model reads a pipe whole (it can neither seek nor map one)."""
    from fmcli.model import load_model

    r, w = os.pipe()
    payload = model.read_bytes()

    def write():
        with os.fdopen(w, "wb") as f:
            f.write(payload)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        piped = load_model(f"/dev/fd/{r}")
    finally:
        os.close(r)
        writer.join(5)
    expected = load_model(model)
    assert piped.spec == expected.spec
    assert set(piped.params) == set(expected.params) and set(piped.state) == set(expected.state)
    for name in expected.params:
        assert np.array_equal(piped.params[name], expected.params[name]), name
    for name in expected.state:
        assert np.array_equal(piped.state[name], expected.state[name]), name


def test_a_truncated_model_through_a_pipe_is_one_line(model, tmp_path, env):
    size = model.stat().st_size
    res = sh(f"$FM predict <(head -c {size - 100} {model}) {model}", env)
    line = one_error_line(res, 65)
    assert line.startswith("fm: error: /dev/fd/") and "truncated" in line


def test_inspect_data_through_a_pipe_counts_every_row(data, env):
    res = ok(sh(f"$FM inspect --json <(cat {data}/tr.ffm)", env))
    import json

    assert json.loads(res.stdout)["rows"] == ROWS


def test_inspect_a_model_through_a_pipe(model, tmp_path, env):
    import json

    direct = json.loads(ok(fm(["inspect", "--json", model], env)).stdout)
    piped = json.loads(ok(sh(f"$FM inspect --json <(cat {model})", env)).stdout)
    assert piped["path"].startswith("/dev/fd/")
    direct.pop("path"), piped.pop("path")
    assert piped == direct
    assert not list((tmp_path / "tmp").iterdir())      # the copy is gone
    line = one_error_line(sh(f"$FM inspect <(head -c 3000 {model})", env), 65)
    assert line.startswith("fm: error: /dev/fd/")


def test_warm_start_from_a_model_through_a_pipe(data, model, tmp_path, env):
    """The parent of a warm start is read once, whatever reads its header."""
    args = ["-t", "1", "-s", "1", "--seed", "2"]
    ok(fm(["train", *args, "--init-model", model, "-o", tmp_path / "a.fm", data / "tr.ffm"], env))
    ok(sh(f"$FM train {' '.join(args)} --init-model <(cat {model}) -o {tmp_path}/b.fm {data}/tr.ffm", env))
    same_parameters(str(tmp_path / "a.fm"), str(tmp_path / "b.fm"))


# --------------------------------------------------------------------------
# fm convert
# --------------------------------------------------------------------------

def test_convert_criteo_through_a_pipe_is_spooled_for_its_two_passes(data, tmp_path, env, fifo):
    """Rare values are counted in a first pass: a pipe is copied to a
    temporary file first (removed afterwards) and both passes read it."""
    ok(fm(["convert", "-q", "criteo", data / "raw.txt", "-o", tmp_path / "file.ffm"], env))
    expected = (tmp_path / "file.ffm").read_bytes()
    assert expected.count(b"\n") == 3000
    ok(sh(f"$FM convert -q criteo <(cat {data}/raw.txt) -o {tmp_path}/pipe.ffm", env))
    assert (tmp_path / "pipe.ffm").read_bytes() == expected
    path = fifo("raw.fifo", payload=(data / "raw.txt").read_bytes())
    ok(fm(["convert", "-q", "criteo", path, "-o", tmp_path / "fifo.ffm"], env))
    assert (tmp_path / "fifo.ffm").read_bytes() == expected
    # a single pass (every value kept) reads the pipe as it comes
    ok(fm(["convert", "-q", "criteo", "--min-count", "1", data / "raw.txt", "-o", tmp_path / "all.ffm"], env))
    ok(sh(f"$FM convert -q criteo --min-count 1 <(cat {data}/raw.txt) -o {tmp_path}/all-pipe.ffm", env))
    assert (tmp_path / "all-pipe.ffm").read_bytes() == (tmp_path / "all.ffm").read_bytes()
    assert os.listdir(tmp_path / "tmp") == []


def test_convert_csv_through_a_pipe(tmp_path, env):
    (tmp_path / "t.csv").write_text("y,a,b\n1,x,3\n0,y,4\n1,x,5\n")
    args = "--label y --categorical a --numeric b --min-count 1"
    ok(sh(f"$FM convert -q csv {args} {tmp_path}/t.csv -o {tmp_path}/file.ffm", env))
    ok(sh(f"$FM convert -q csv {args} <(cat {tmp_path}/t.csv) -o {tmp_path}/pipe.ffm", env))
    assert (tmp_path / "pipe.ffm").read_bytes() == (tmp_path / "file.ffm").read_bytes()
    assert os.listdir(tmp_path / "tmp") == []


def test_a_bad_spooled_input_names_the_pipe_and_leaves_nothing(data, tmp_path, env):
    res = sh(f"$FM convert criteo <(head -5 {data}/raw.txt; echo 'not a criteo row') "
             f"-o {tmp_path}/out.ffm", env)
    line = one_error_line(res, 65)
    assert line.startswith("fm: error: /dev/fd/") and ":6: " in line, line
    assert not (tmp_path / "out.ffm").exists()
    assert os.listdir(tmp_path / "tmp") == []


def test_convert_parquet_through_a_pipe(data, tmp_path, env):
    ok(fm(["convert", "-q", data / "va.ffm", "-o", tmp_path / "va.parquet"], env))
    ok(sh(f"$FM convert -q --from parquet <(cat {tmp_path}/va.parquet) -o {tmp_path}/back.ffm", env))
    assert (tmp_path / "back.ffm").read_bytes() == (data / "va.ffm").read_bytes()
    assert os.listdir(tmp_path / "tmp") == []


# --------------------------------------------------------------------------
# signals while blocked on an input
# --------------------------------------------------------------------------

def _signal_blocked_run(args, env, signum, cwd=None):
    """Start fm, let it block on its input, signal it: (status, stderr, seconds to end)."""
    proc = subprocess.Popen(FM + [str(a) for a in args], env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        time.sleep(1.0)
        assert proc.poll() is None, proc.stderr.read().decode()
        sent = time.monotonic()
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=15)
        return proc.returncode, err.decode(), time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("signum, code, name, writer", [(signal.SIGTERM, 143, "SIGTERM", "none"),
                                                        (signal.SIGINT, 130, "SIGINT", "none"),
                                                        (signal.SIGTERM, 143, "SIGTERM", "idle")])
def test_a_signal_ends_training_blocked_on_a_fifo(tmp_path, env, fifo, signum, code, name, writer):
    """No writer opens the FIFO, or one opens it and writes nothing."""
    path = fifo()
    idle = None
    if writer == "idle":
        idle = subprocess.Popen(["sh", "-c", 'exec sleep 60 > "$0"', path])
    out = tmp_path / "m.fm"
    try:
        status, err, seconds = _signal_blocked_run(
            ["train", "-o", out, "--log-json", tmp_path / "log", path], env, signum)
    finally:
        if idle is not None:
            idle.kill()
            idle.wait()
    assert status == code, err
    assert err.strip() == f"fm: interrupted by {name}"
    assert seconds < 10
    assert not out.exists() and not os.path.exists(lock_path(out))
    assert os.listdir(tmp_path / "cache") == []
    import json

    end = json.loads((tmp_path / "log").read_text().splitlines()[-1])
    assert end["status"] == "interrupted" and end["exit_code"] == code


def test_sigterm_ends_training_blocked_on_a_validation_fifo(data, tmp_path, env, fifo):
    path = fifo("va.fifo")
    out = tmp_path / "m.fm"
    status, err, _ = _signal_blocked_run(["train", "-o", out, "-p", path, data / "va.ffm"], env,
                                         signal.SIGTERM)
    assert status == 143, err
    assert err.strip().splitlines()[-1] == "fm: interrupted by SIGTERM"
    assert not out.exists()


@pytest.mark.parametrize("command", ["convert", "predict"])
def test_sigterm_ends_convert_and_predict_blocked_on_a_fifo(model, tmp_path, env, fifo, command):
    path = fifo("raw.fifo")
    out = tmp_path / "out.ffm"
    args = (["convert", "criteo", path, "-o", out] if command == "convert"
            else ["predict", "-o", out, model, path])
    status, err, _ = _signal_blocked_run(args, env, signal.SIGTERM)
    assert status == 143, err
    assert err.strip() == "fm: interrupted by SIGTERM"
    assert not out.exists() and not os.path.exists(lock_path(out))
    assert os.listdir(tmp_path / "tmp") == []
