#!/usr/bin/env python3
"""Hostile cases: run the real `fm` command in the ways users lose data.

Every case runs `fm` (as `python -m fmcli`, in a fresh temporary directory)
the way a careless or unlucky user would: outputs named like inputs, pipes
and FIFOs, files changed behind a restored mtime, a cache damaged while a run
reads it, validation sets whose metrics are undefined, models holding NaN,
wide Parquet with moved or missing columns, hostile environments, leftovers
of kill -9.  For each it checks what fmcli promises:

* the exit status is the expected one (never 70, never a signal's 13x);
* an error is one printable line starting ``fm: error:`` (no traceback);
* no input file changed (SHA-256 before and after);
* where the run succeeds, its result equals the result of the plain way.

Usage::

    python fuzz/hostile.py              # every class; prints one line per case
    python fuzz/hostile.py -k clobber   # the classes or cases whose name holds this
    python fuzz/hostile.py --list

The last line reads ``N passed, N failed``; the exit status is 1 when a case
failed.  Needs fmcli installed (``make install``) and, for the Parquet
class, pyarrow (a dependency).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "data" / "samples"
FM = [sys.executable, "-m", "fmcli"]

CASES: list[tuple[str, str, Callable[["Box"], None]]] = []


def case(klass: str, name: str):
    def register(f):
        CASES.append((klass, name, f))
        return f
    return register


class Failure(Exception):
    pass


class Box:
    """A temporary directory with the sample data, and `fm` run inside it."""

    def __init__(self, root: Path):
        self.root = root
        self.cache = root / ".cache"
        shutil.copyfile(SAMPLES / "train.ffm", root / "tr.ffm")
        shutil.copyfile(SAMPLES / "valid.ffm", root / "va.ffm")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FM_")}
        self.env["FMCLI_CACHE_DIR"] = str(self.cache)

    def path(self, name: str) -> Path:
        return self.root / name

    def fm(self, *args: str, shell: str | None = None, timeout: float = 120, env: dict | None = None,
           cwd: Path | None = None, stdin=subprocess.DEVNULL) -> subprocess.CompletedProcess:
        """`fm ARGS` (or a bash command line naming `fm` as $FM)."""
        run_env = dict(self.env, **(env or {}))
        if shell is not None:
            run_env["FM"] = " ".join(FM)
            cmd = ["bash", "-c", shell]
        else:
            cmd = FM + list(args)
        return subprocess.run(cmd, cwd=cwd or self.root, env=run_env, capture_output=True, text=True,
                              timeout=timeout, stdin=stdin)

    def model(self, name: str = "m.fm", *extra: str) -> Path:
        r = self.fm("train", "--model", "ffm", "-t", "2", "-s", "1", "--seed", "1", *extra, "-o", name, "tr.ffm")
        expect(r, 0)
        return self.path(name)


def digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except (FileNotFoundError, IsADirectoryError):
        return None


def expect(r: subprocess.CompletedProcess, *codes: int, match: str | None = None) -> None:
    if r.returncode not in codes:
        raise Failure(f"exit {r.returncode}, expected {codes}; stderr: {r.stderr.strip()[-400:]}")
    if "Traceback" in r.stderr:
        raise Failure(f"a traceback: {r.stderr.strip()[-400:]}")
    if r.returncode != 0:
        last = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""
        if not last.startswith("fm: ") or not all(32 <= ord(c) < 127 for c in last):
            raise Failure(f"not one clean error line: {r.stderr.strip()[-400:]!r}")
        if match is not None and match not in last:
            raise Failure(f"error line {last!r} does not say {match!r}")


def unchanged(box: Box, run: Callable[[], None], *names: str) -> None:
    """Run, and check that the named files are byte-for-byte as before."""
    before = {n: digest(box.path(n)) for n in names}
    run()
    for n in names:
        if digest(box.path(n)) != before[n]:
            raise Failure(f"{n} was changed")


# ---- 1. an output never overwrites an input ----------------------------------

# Each command's outputs named like one of its inputs, in every spelling of
# the same file: as given, ./NAME, absolute, through a symlink, a hard link,
# a symlinked directory, and sub/../NAME.
SPELLINGS = {
    "plain": lambda name: name,
    "dot": lambda name: "./" + name,
    "absolute": lambda name: "@ABS@" + name,
    "symlink": lambda name: "link-" + name,
    "hardlink": lambda name: "hard-" + name,
    "dir-symlink": lambda name: "dirlink/" + name,
    "dotdot": lambda name: "sub/../" + name,
}
CLOBBERS = [
    # (name, args with {OUT} for the output spelling, the victim)
    ("train -o TRAIN", ["train", "-o", "{OUT}", "tr.ffm"], "tr.ffm"),
    ("train -p VA -o VA", ["train", "-p", "va.ffm", "-o", "{OUT}", "tr.ffm"], "va.ffm"),
    ("train --log-json TRAIN", ["train", "--log-json", "{OUT}", "-o", "x.fm", "tr.ffm"], "tr.ffm"),
    ("train --log-json VA", ["train", "-p", "va.ffm", "--log-json", "{OUT}", "-o", "x.fm", "tr.ffm"], "va.ffm"),
    ("train --weights W -o W", ["train", "--weights", "w.txt", "-o", "{OUT}", "tr.ffm"], "w.txt"),
    ("train --dry-run -o TRAIN", ["train", "--dry-run", "-o", "{OUT}", "tr.ffm"], "tr.ffm"),
    ("predict -o MODEL", ["predict", "-o", "{OUT}", "m.fm", "va.ffm"], "m.fm"),
    ("predict -o DATA", ["predict", "-o", "{OUT}", "m.fm", "va.ffm"], "va.ffm"),
    ("convert libsvm -o INPUT", ["convert", "libsvm", "-o", "{OUT}", "tr.svm"], "tr.svm"),
    ("convert MODEL -o MODEL", ["convert", "m.fm", "--strip-state", "-o", "{OUT}"], "m.fm"),
]


def _clobber(box: Box, args: list[str], victim: str, spelling: str) -> None:
    box.path(f"link-{victim}").symlink_to(victim)
    os.link(box.path(victim), box.path(f"hard-{victim}"))
    box.path("sub").mkdir()
    box.path("dirlink").symlink_to(".")
    out = SPELLINGS[spelling](victim).replace("@ABS@", str(box.root) + "/")
    args = [a.replace("{OUT}", out) for a in args]
    unchanged(box, lambda: expect(box.fm(*args), 2), victim)


def _with_files(f):
    def run(box: Box) -> None:
        shutil.copyfile(SAMPLES / "train.svm", box.path("tr.svm"))
        box.path("w.txt").write_text("1\n" * 5000)
        box.model()
        f(box)
    return run


for _name, _args, _victim in CLOBBERS:
    for _spelling in SPELLINGS:
        case("clobber", f"{_name} ({_spelling})")(
            _with_files(lambda box, a=_args, v=_victim, sp=_spelling: _clobber(box, a, v, sp)))


@case("clobber", "warm start in place stays allowed")
def _(box):
    box.model("ctr.fm")
    expect(box.fm("train", "--init-model", "ctr.fm", "-t", "1", "-o", "ctr.fm", "tr.ffm"), 0)


@case("clobber", "checkpoints beside the data stay allowed")
def _(box):
    expect(box.fm("train", "-t", "2", "--checkpoint-dir", ".", "-o", "m.fm", "tr.ffm"), 0)
    if digest(box.path("tr.ffm")) != digest(SAMPLES / "train.ffm"):
        raise Failure("tr.ffm was changed")


@case("clobber", "data named like a checkpoint in --checkpoint-dir")
def _(box):
    shutil.copyfile(box.path("tr.ffm"), box.path("ckpt-00000001.fmc"))
    unchanged(box, lambda: expect(box.fm("train", "-t", "2", "--checkpoint-dir", ".", "-o", "m.fm",
                                         "ckpt-00000001.fmc"), 2), "ckpt-00000001.fmc")


# ---- 2. inputs read only once -------------------------------------------------

@case("read-once", "train <(cat TRAIN) uses every row")
def _(box):
    expect(box.fm(shell='$FM train --model lr -t 1 --no-shuffle -o pipe.fm <(cat tr.ffm)'), 0)
    expect(box.fm("train", "--model", "lr", "-t", "1", "--no-shuffle", "-o", "file.fm", "tr.ffm"), 0)
    same_predictions(box, "pipe.fm", "file.fm")


@case("read-once", "train from stdin uses every row")
def _(box):
    expect(box.fm(shell='$FM train --model lr -t 1 --no-shuffle -o pipe.fm - < tr.ffm'), 0)
    expect(box.fm("train", "--model", "lr", "-t", "1", "--no-shuffle", "-o", "file.fm", "tr.ffm"), 0)
    same_predictions(box, "pipe.fm", "file.fm")


@case("read-once", "predict MODEL <(cat DATA) and a model through a pipe")
def _(box):
    box.model()
    expect(box.fm(shell="$FM predict m.fm <(cat va.ffm) -o a.txt"), 0)
    expect(box.fm(shell="$FM predict <(cat m.fm) va.ffm -o b.txt"), 0)
    expect(box.fm("predict", "m.fm", "va.ffm", "-o", "c.txt"), 0)
    if not (box.path("a.txt").read_bytes() == box.path("b.txt").read_bytes() == box.path("c.txt").read_bytes()):
        raise Failure("predictions through a pipe differ")


@case("read-once", "inspect and warm start from a model through a pipe")
def _(box):
    box.model()
    expect(box.fm(shell="$FM inspect <(cat m.fm) > i.txt"), 0)
    if "ffm" not in box.path("i.txt").read_text():
        raise Failure("inspect through a pipe did not read the model")
    expect(box.fm(shell="$FM train -t 1 --init-model <(cat m.fm) -o w.fm tr.ffm"), 0)


@case("read-once", "a FIFO with no writer ends on SIGTERM")
def _(box):
    os.mkfifo(box.path("fifo"))
    env = dict(box.env)
    p = subprocess.Popen(FM + ["train", "-o", "f.fm", "fifo"], cwd=box.root, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    p.send_signal(signal.SIGTERM)
    try:
        _, err = p.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        p.kill()
        raise Failure("still running 20 s after SIGTERM") from None
    if p.returncode != 143 or box.path("f.fm").exists():
        raise Failure(f"exit {p.returncode}, expected 143 and no model; {err.strip()[-300:]}")


@case("read-once", "convert criteo <(cat RAW) equals the file")
def _(box):
    raw = box.path("raw.tsv")
    lines = []
    for i in range(300):
        ints = [str((i * 7 + j) % 50) if (i + j) % 9 else "" for j in range(13)]
        cats = [format((i * 31 + j * 17) % 4096, "08x") if (i + j) % 11 else "" for j in range(26)]
        lines.append("\t".join([str(i % 3 == 0)[0] == "T" and "1" or "0"] + ints + cats))
    raw.write_text("\n".join(lines) + "\n")
    expect(box.fm("convert", "criteo", "raw.tsv", "-o", "a.ffm"), 0)
    expect(box.fm(shell="$FM convert criteo <(cat raw.tsv) -o b.ffm"), 0)
    if box.path("a.ffm").read_bytes() != box.path("b.ffm").read_bytes():
        raise Failure("converted output through a pipe differs")


def same_predictions(box: Box, a: str, b: str) -> None:
    expect(box.fm("predict", a, "va.ffm", "-o", "pa.txt"), 0)
    expect(box.fm("predict", b, "va.ffm", "-o", "pb.txt"), 0)
    if box.path("pa.txt").read_bytes() != box.path("pb.txt").read_bytes():
        raise Failure(f"{a} and {b} predict differently")


# ---- 3. stale caches and --resume ---------------------------------------------

def flip_in_the_middle(path: Path) -> None:
    st = os.stat(path)
    lines = path.read_bytes().split(b"\n")
    for i in range(len(lines) // 2 - 40, len(lines) // 2 + 40):
        if lines[i][:1] in (b"0", b"1"):
            lines[i] = (b"1" if lines[i][:1] == b"0" else b"0") + lines[i][1:]
    path.write_bytes(b"\n".join(lines))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@case("stale-cache", "a file changed behind a restored mtime is re-read")
def _(box):
    box.model("a.fm")
    flip_in_the_middle(box.path("tr.ffm"))
    box.model("b.fm")
    box.model("c.fm", "--no-cache")
    same_predictions(box, "b.fm", "c.fm")


@case("stale-cache", "cp -p of changed data over the input is re-read")
def _(box):
    box.model("a.fm")
    shutil.copy2(box.path("tr.ffm"), box.path("t2.ffm"))
    flip_in_the_middle(box.path("t2.ffm"))
    shutil.copy2(box.path("t2.ffm"), box.path("tr.ffm"))
    box.model("b.fm")
    box.model("c.fm", "--no-cache")
    same_predictions(box, "b.fm", "c.fm")


@case("stale-cache", "--resume with a relative path works")
def _(box):
    expect(box.fm("train", "-t", "2", "--checkpoint-dir", "ck", "-o", "m.fm", "tr.ffm"), 0)
    expect(box.fm("train", "--resume", "ck"), 0)


@case("stale-cache", "--resume refuses flipped labels")
def _(box):
    expect(box.fm("train", "-t", "2", "--checkpoint-dir", "ck", "-o", "m.fm", "tr.ffm"), 0)
    flip_in_the_middle(box.path("tr.ffm"))
    expect(box.fm("train", "--resume", "ck"), 78, match="changed")


@case("stale-cache", "--resume accepts a restored unchanged copy")
def _(box):
    expect(box.fm("train", "-t", "2", "--checkpoint-dir", "ck", "-o", "m.fm", "tr.ffm"), 0)
    shutil.copy2(box.path("tr.ffm"), box.path("backup"))
    box.path("tr.ffm").unlink()
    shutil.copy2(box.path("backup"), box.path("tr.ffm"))
    expect(box.fm("train", "--resume", "ck"), 0)


# ---- 4. a cache changed while a run reads it ------------------------------------

def _damage_mid_run(box: Box, how: str) -> None:
    args = ["train", "--model", "ffm", "-s", "1", "--seed", "1", "--memory-budget", "1"]
    expect(box.fm(*args, "-t", "1", "-o", "a.fm", "tr.ffm"), 0)
    (cache,) = [p for p in box.cache.iterdir() if p.suffix == ".fmcache"]
    size = cache.stat().st_size
    if how == "truncate":
        os.truncate(cache, size // 2)
    elif how == "0xff":
        with open(cache, "r+b") as f:
            f.write(b"\xff" * size)
    else:
        with open(cache, "r+b") as f:
            f.seek(size // 3)
            f.write(os.urandom(8192))
    r = box.fm(*args, "-t", "2", "-o", "b.fm", "tr.ffm")
    expect(r, 0, 74)
    if r.returncode == 0:
        expect(box.fm(*args, "-t", "2", "--cache-dir", str(box.root / "clean"), "-o", "c.fm", "tr.ffm"), 0)
        same_predictions(box, "b.fm", "c.fm")


for _how in ("truncate", "0xff", "overwrite-part"):
    case("cache-damage", f"cache {_how} before a streamed run")(lambda box, how=_how: _damage_mid_run(box, how))


def _damage_during_run(box: Box, how: str) -> None:
    box.path("big.ffm").write_bytes(box.path("tr.ffm").read_bytes() * 100)    # 500,000 rows
    args = ["train", "--model", "ffm", "-s", "1", "--memory-budget", "1"]
    expect(box.fm(*args, "-t", "1", "-o", "a.fm", "big.ffm"), 0)
    (cache,) = [p for p in box.cache.iterdir() if p.suffix == ".fmcache"]
    p = subprocess.Popen(FM + args + ["-t", "40", "-o", "b.fm", "big.ffm"], cwd=box.root, env=box.env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(2.0)
    if p.poll() is not None:
        raise Failure("the run ended before the cache could be damaged")
    if how == "truncate":
        os.truncate(cache, cache.stat().st_size // 2)
    else:
        with open(cache, "r+b") as f:
            f.write(b"\xff" * cache.stat().st_size)
    _, err = p.communicate(timeout=300)
    expect(subprocess.CompletedProcess(args, p.returncode, "", err), 0, 74)
    if p.returncode == 0 and "rebuilding" not in err:
        raise Failure(f"exit 0 without rebuilding the damaged cache: {err.strip()[-300:]}")


for _how in ("truncate", "0xff"):
    case("cache-damage", f"cache {_how} by another process during a run")(
        lambda box, how=_how: _damage_during_run(box, how))


# ---- 5. undefined metrics never lose a model ------------------------------------

@case("metrics", "a validation set with one class still writes the model")
def _(box):
    rows = [line for line in box.path("va.ffm").read_text().splitlines() if line.startswith("0")]
    box.path("neg.ffm").write_text("\n".join(rows) + "\n")
    expect(box.fm("train", "-t", "2", "-p", "neg.ffm", "-o", "m.fm", "tr.ffm"), 0)
    expect(box.fm("inspect", "--json", "m.fm"), 0)


@case("metrics", "early stopping on AUC with one class is refused before training")
def _(box):
    rows = [line for line in box.path("va.ffm").read_text().splitlines() if line.startswith("0")]
    box.path("neg.ffm").write_text("\n".join(rows) + "\n")
    expect(box.fm("train", "-t", "2", "-p", "neg.ffm", "--auto-stop", "--early-stopping-metric", "auc",
                  "-o", "m.fm", "tr.ffm"), 78)
    if box.path("m.fm").exists():
        raise Failure("a model was written")


# ---- 6. non-finite parameters --------------------------------------------------

@case("nonfinite", "a NaN weight with a valid CRC is refused; p.txt kept")
def _(box):
    box.model()
    code = ("import numpy as np\nfrom fmcli.model import load_model\n"
            "m = load_model('m.fm', mmap=False)\na = np.array(m.params['factors'])\n"
            "a.reshape(-1)[1] = np.nan\nm.params['factors'] = a\nm.save('nan.fm')\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=box.root, capture_output=True, text=True)
    if r.returncode:
        raise Failure(f"could not make the NaN model: {r.stderr[-300:]}")
    box.path("p.txt").write_text("keep me\n")
    unchanged(box, lambda: expect(box.fm("predict", "nan.fm", "va.ffm", "-o", "p.txt"), 65), "p.txt")
    expect(box.fm("inspect", "--top-interactions", "5", "nan.fm"), 65)


def _hostile_model(box: Box, array: str, index: int, value: str) -> None:
    code = ("import numpy as np\nfrom fmcli.model import load_model\n"
            "m = load_model('m.fm', mmap=False)\n"
            f"group = m.state if {array!r}.endswith('_state') else m.params\n"
            f"name = {array!r}.removesuffix('_state') if {array!r}.endswith('_state') else {array!r}\n"
            "a = np.array(group[name])\n"
            f"a.reshape(-1)[{index}] = float({value!r})\ngroup[name] = a\nm.save('bad.fm')\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=box.root, capture_output=True, text=True)
    if r.returncode:
        raise Failure(f"could not make the model: {r.stderr[-300:]}")


for _array, _value in [("linear", "inf"), ("factors", "-inf"), ("bias", "nan"), ("factors_state", "nan")]:
    def _run(box, array=_array, value=_value):
        box.model()
        _hostile_model(box, array, 2 if array != "bias" else 0, value)
        box.path("p.txt").write_text("keep me\n")
        unchanged(box, lambda: expect(box.fm("predict", "bad.fm", "va.ffm", "-o", "p.txt"), 65), "p.txt")
        r = box.fm("predict", "bad.fm", "va.ffm")
        expect(r, 65)
        if r.stdout:
            raise Failure("predictions were printed before the error")
        expect(box.fm("train", "-t", "1", "--init-model", "bad.fm", "-o", "w.fm", "tr.ffm"), 65)
        if box.path("w.fm").exists():
            raise Failure("a warm start from it wrote a model")
    case("nonfinite", f"{_value} in {_array}: predict, stdout, warm start")(_run)


@case("metrics", "a validation set whose weights are all 0 still writes the model")
def _(box):
    rows = [line.split(" ", 1) for line in box.path("va.ffm").read_text().splitlines()]
    box.path("w0.ffm").write_text("".join(f"{label}:0 {rest}\n" for label, rest in rows))
    expect(box.fm("train", "-t", "2", "-p", "w0.ffm", "-o", "m.fm", "tr.ffm"), 0)
    expect(box.fm("train", "-t", "2", "-p", "w0.ffm", "--auto-stop", "-o", "n.fm", "tr.ffm"), 78)


@case("read-once", "train on a FIFO fed by a writer")
def _(box):
    os.mkfifo(box.path("fifo"))
    expect(box.fm(shell="cat tr.ffm > fifo & $FM train --model lr -t 1 --no-shuffle -o pipe.fm fifo; wait"), 0)
    expect(box.fm("train", "--model", "lr", "-t", "1", "--no-shuffle", "-o", "file.fm", "tr.ffm"), 0)
    same_predictions(box, "pipe.fm", "file.fm")


# ---- 7. wide Parquet by column name ----------------------------------------------

def _wide(box: Box) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    n = 3000
    cols = {f"c{j}": rng.integers(0, 20, n).astype(str) for j in range(4)}
    logit = sum((np.char.equal(cols[f"c{j}"], "3")).astype(float) * 2 - 0.3 for j in range(4))
    cols["label"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    pq.write_table(pa.table(cols), box.path("w.parquet"))
    pq.write_table(pa.table({k: cols[k] for k in ["label", "c3", "c1", "c0", "c2"]}), box.path("moved.parquet"))
    pq.write_table(pa.table({k: cols[k] for k in ["label", "c0", "c1", "c2"]}), box.path("missing.parquet"))
    expect(box.fm("train", "--model", "fm", "-t", "2", "-o", "w.fm", "w.parquet"), 0)


@case("parquet", "wide columns in another order score the same")
def _(box):
    _wide(box)
    expect(box.fm("predict", "w.fm", "w.parquet", "-o", "a.txt"), 0)
    expect(box.fm("predict", "w.fm", "moved.parquet", "-o", "b.txt"), 0)
    if box.path("a.txt").read_bytes() != box.path("b.txt").read_bytes():
        raise Failure("reordered columns score differently")


@case("parquet", "a missing wide column is refused")
def _(box):
    _wide(box)
    expect(box.fm("predict", "w.fm", "missing.parquet", "-o", "c.txt"), 65, match="c3")


@case("parquet", "a wide model scoring libffm text is refused")
def _(box):
    _wide(box)
    r = box.fm("predict", "w.fm", "va.ffm", "-o", "d.txt")
    expect(r, 65, 78)


# ---- 8. the environment -------------------------------------------------------

@case("environment", "FMCLI_CACHE_DIR names a regular file")
def _(box):
    box.path("afile").write_text("x\n")
    r = box.fm("train", "-t", "1", "-o", "m.fm", "tr.ffm", env={"FMCLI_CACHE_DIR": str(box.path("afile"))})
    expect(r, 0)
    if box.path("afile").read_text() != "x\n":
        raise Failure("the file named as the cache directory was changed")


@case("environment", "a read-only cache directory")
def _(box):
    expect(box.fm("train", "-t", "1", "-o", "m.fm", "tr.ffm", env={"FMCLI_CACHE_DIR": "/proc/self/nope"}), 0)


@case("environment", "a directory named as the training file")
def _(box):
    box.path("adir").mkdir()
    expect(box.fm("train", "-o", "m.fm", "adir"), 66)


@case("environment", "a string where the config wants a number")
def _(box):
    box.path("c.toml").write_text('[train]\nepochs = "5"\n')
    expect(box.fm("train", "--config", "c.toml", "-o", "m.fm", "tr.ffm"), 78)


@case("environment", "a string where the config wants a boolean")
def _(box):
    box.path("c.toml").write_text('[train]\nnorm = "false"\n')
    expect(box.fm("train", "--config", "c.toml", "-o", "m.fm", "tr.ffm"), 78)


@case("environment", "an unknown FM_TRAIN_ variable")
def _(box):
    expect(box.fm("train", "-o", "m.fm", "tr.ffm", env={"FM_TRAIN_EPOCH": "3"}), 78, match="FM_TRAIN_EPOCH")


@case("environment", "-o /dev/full")
def _(box):
    box.model()
    expect(box.fm("predict", "m.fm", "va.ffm", "-o", "/dev/full"), 74)


@case("environment", "a file name with a newline")
def _(box):
    expect(box.fm("train", "-o", "m.fm", "no\nsuch.ffm"), 66)


@case("environment", "an unwritable checkpoint directory, before training")
def _(box):
    box.path("afile").write_text("x\n")
    t0 = time.perf_counter()
    expect(box.fm("train", "--checkpoint-dir", "afile/ck", "-o", "m.fm", "tr.ffm"), 73, 74, 78)
    del t0


@case("environment", "an over-long output name, before training")
def _(box):
    expect(box.fm("train", "-o", "x" * 300 + ".fm", "tr.ffm"), 73)


# ---- 9. leftovers of kill -9 ---------------------------------------------------

@case("leftovers", "a stale temporary model file is swept by the next run")
def _(box):
    stale = box.path(".m.fm.deadbeef.tmp")
    stale.write_bytes(b"\0" * 4096)
    os.utime(stale, (time.time() - 60, time.time() - 60))    # a minute old, held by no process
    box.model()
    if stale.exists():
        raise Failure(f"{stale.name} was left")


@case("leftovers", "kill -9 mid-write leaves nothing after the next run")
def _(box):
    p = subprocess.Popen(FM + ["train", "-t", "200", "--checkpoint-dir", "ck", "-o", "m.fm", "tr.ffm"],
                         cwd=box.root, env=box.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(3.0)
    p.send_signal(signal.SIGKILL)
    p.wait()
    box.model()
    left = [str(p.relative_to(box.root)) for p in box.root.rglob("*.tmp")]
    left = [n for n in left if not n.startswith("ck/")]   # the checkpoint directory is swept by its own next run
    if left:
        raise Failure(f"left behind: {left}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default="", help="run only classes or cases whose name holds this")
    parser.add_argument("--list", action="store_true", help="list the cases")
    parser.add_argument("-v", "--verbose", action="store_true", help="print a failure's traceback")
    args = parser.parse_args(argv)
    chosen = [(k, n, f) for k, n, f in CASES if args.k in k or args.k in n]
    if args.list:
        for k, n, _ in chosen:
            print(f"{k}: {n}")
        return 0
    passed = failed = 0
    per_class: dict[str, list[int]] = {}
    for klass, name, f in chosen:
        with tempfile.TemporaryDirectory(prefix="fm-hostile-") as tmp:
            t0 = time.perf_counter()
            try:
                f(Box(Path(tmp)))
            except Exception as exc:  # noqa: BLE001 - report every way a case fails
                failed += 1
                per_class.setdefault(klass, [0, 0])[1] += 1
                print(f"FAIL {klass}: {name}: {exc}", flush=True)
                if args.verbose:
                    traceback.print_exc()
            else:
                passed += 1
                per_class.setdefault(klass, [0, 0])[0] += 1
                print(f"ok   {klass}: {name} ({time.perf_counter() - t0:.1f} s)", flush=True)
    for klass, (p, q) in per_class.items():
        print(f"  {klass}: {p} passed, {q} failed")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
