#!/usr/bin/env python3
"""Benchmark fmcli against libffm, side by side in one run.

Shared machines are noisy, so figures are only ever compared within one
run: every repeat runs fmcli and then libffm on the same configuration,
one after the other, and the report gives medians over repeats and the
ratios between the two tools.

Measured per (model, k, threads):

* parse MB/s: fmcli's text reader over the training file, in-process;
  libffm's text-to-binary conversion of the training file;
* cache read rows/s: one pass over every chunk of fmcli's binary cache of
  the training file, in-process (the cache is built once per repeat);
* training rows/s and seconds per epoch from each tool's own epoch timer
  (training only; neither tool counts its validation pass there);
* "all-in" seconds per epoch: (whole train command wall time - time spent
  reading the text input) / epochs, i.e. including validation, start-up,
  initialisation and writing the model, for both tools;
* best validation logloss over the epochs;
* whole-command wall time and peak RSS of training and of prediction, and
  prediction rows/s.

Tools: ``fmcli`` (``fm train --no-bias --no-linear``, libffm's model),
``fmcli+linear`` (fmcli's defaults), ``libffm`` (ffm only) and, for every
``--variant NAME=ARGS``, ``fmcli:NAME`` (the ``fmcli`` command plus ARGS).
Ratios: every fmcli tool against libffm, every variant against ``fmcli``,
and every tool's N-thread figures against its 1-thread ones.

Usage::

    python benchmarks/bench.py --train train.ffm --valid va.ffm \\
        --libffm-dir /path/to/libffm --epochs 15 --threads 1,2 --json out.json
    python benchmarks/bench.py --models ffm,fwfm --k 4,8 \\
        --variant "b8=--batch-size 8" --markdown

Without --train/--valid a dataset is generated with benchmarks/synth.py.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
SYNTH = HERE / "synth.py"

# libffm's defaults, passed explicitly to both tools.
LEARNING_RATE = "0.2"
L2 = "0.00002"
TRAIN_SEED, VALID_SEED = 1, 2

MODELS = ("lr", "fm", "ffm", "fwfm", "fmfm")
FMCLI = "fmcli"                 # --no-bias --no-linear: libffm's model
FMCLI_LINEAR = "fmcli+linear"   # fmcli's defaults: bias + linear + pairwise
LIBFFM = "libffm"
VARIANT_PREFIX = "fmcli:"       # fmcli:NAME = FMCLI plus a --variant's arguments
_VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")

INSTALL_HINT = "run `make bench`, which installs fmcli into the virtual environment first"


class BenchError(Exception):
    """A problem the user can fix; reported as a message, not a traceback."""


# --------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------


@dataclass
class Epoch:
    epoch: int
    tr_logloss: float
    va_logloss: float | None
    seconds: float | None      # this epoch's training time, validation excluded
    rows_per_s: float | None
    va_auc: float | None = None
    tr_time_cumulative: float | None = None  # libffm's printed tr_time


@dataclass
class ParseRun:
    """fmcli's TextReader over the training file, in-process."""

    repeat: int
    bytes: int
    rows: int
    seconds: float
    mb_per_s: float


@dataclass
class CacheReadRun:
    """One pass over fmcli's binary cache of the training file, in-process.

    The cache is built (untimed here: build_s) into a temporary directory,
    then opened as a cache hit (open_s: the file's checks, every chunk's
    CRC-32 included) and read: read_s is one pass over every chunk, with
    every array summed so that all of its pages are really read."""

    repeat: int
    rows: int
    nnz: int
    cache_bytes: int
    chunks: int
    build_s: float
    open_s: float
    read_s: float
    rows_per_s: float            # rows / read_s
    open_read_rows_per_s: float  # rows / (open_s + read_s): a cache hit's first pass


@dataclass
class Variant:
    """A --variant: the exact fmcli tool plus extra `fm train` arguments."""

    name: str
    args: list[str]
    models: tuple[str, ...] = ()     # the models it runs on (empty: every model but lr)

    @property
    def tool(self) -> str:
        return VARIANT_PREFIX + self.name

    def runs_on(self, model: str) -> bool:
        return model in self.models if self.models else model != "lr"


@dataclass
class Measured:
    """One finished command."""

    argv: list[str]
    wall_s: float
    peak_rss_mb: float | None
    returncode: int
    stdout: str
    stderr: str


@dataclass
class TrainRun:
    tool: str
    model: str
    k: int
    threads: int
    repeat: int
    argv: list[str]
    wall_s: float
    peak_rss_mb: float | None
    epochs: list[Epoch]
    load_s: float | None              # reading (fmcli) / converting or cache-checking (libffm) the text input
    train_parse_mb_s: float | None    # train bytes / seconds spent reading or converting it, inside the command
    converted: bool | None = None     # libffm: converted text to binary in this run (False: reused .bin cache)
    model_bytes: int | None = None

    @property
    def best_va_logloss(self) -> float | None:
        return min((e.va_logloss for e in self.epochs if e.va_logloss is not None), default=None)

    @property
    def all_in_epoch_s(self) -> float | None:
        if self.load_s is None or not self.epochs:
            return None
        return (self.wall_s - self.load_s) / len(self.epochs)


@dataclass
class PredictRun:
    tool: str
    model: str
    k: int
    threads: int
    repeat: int
    argv: list[str]
    wall_s: float
    peak_rss_mb: float | None
    rows: int
    rows_per_s: float
    logloss: float | None


@dataclass
class Summary:
    """Medians over repeats for one (model, k, threads, tool)."""

    model: str
    k: int
    threads: int
    tool: str
    runs: int
    parse_mb_s: float | None
    cache_read_rows_s: float | None   # fmcli tools: the in-process binary cache pass
    train_rows_s: float | None
    epoch_s: float | None
    all_in_epoch_s: float | None
    best_va_logloss: float | None
    predict_rows_s: float | None
    predict_logloss: float | None
    wall_s: float | None
    peak_rss_mb: float | None
    predict_wall_s: float | None
    predict_rss_mb: float | None
    converted: list[bool] | None = None


@dataclass
class Ratio:
    """fmcli against libffm for one (model, k, threads).

    Speed ratios are fmcli/libffm, > 1 when fmcli is faster (for times:
    libffm's time / fmcli's time).  peak_rss (train) and predict_peak_rss
    are fmcli/libffm (< 1: fmcli smaller).  va_logloss_diff_pct < 0 when
    fmcli's logloss is lower."""

    model: str
    k: int
    threads: int
    tool: str
    parse: float | None
    train_rows_s: float | None
    all_in_epoch: float | None
    predict_rows_s: float | None
    train_wall: float | None
    peak_rss: float | None
    va_logloss_diff_pct: float | None
    predict_peak_rss: float | None = None


@dataclass
class VariantRatio:
    """A --variant against the exact fmcli tool on the same (model, k, threads).

    Same conventions as Ratio, with the variant in fmcli's place and the
    exact fmcli tool in libffm's: speed > 1 when the variant is faster,
    peak RSS < 1 when it is smaller, va_logloss_diff_pct < 0 when its best
    validation logloss is lower."""

    model: str
    k: int
    threads: int
    tool: str
    baseline: str
    train_rows_s: float | None
    all_in_epoch: float | None
    predict_rows_s: float | None
    peak_rss: float | None
    predict_peak_rss: float | None
    va_logloss_diff_pct: float | None


@dataclass
class Scaling:
    """One tool's figures at `threads` over its figures at `base_threads` (1).

    > 1 when more threads are faster: train_rows_s and predict_rows_s are
    rows/s at `threads` / rows/s at `base_threads`; all_in_epoch is the
    all-in epoch time at `base_threads` / at `threads`."""

    model: str
    k: int
    tool: str
    threads: int
    base_threads: int
    train_rows_s: float | None
    all_in_epoch: float | None
    predict_rows_s: float | None


@dataclass
class Case:
    model: str
    k: int
    threads: int


@dataclass
class Dataset:
    train: Path
    valid: Path
    train_bytes: int
    valid_bytes: int
    train_rows: int = 0
    valid_rows: int = 0


@dataclass
class Results:
    meta: dict
    data: dict
    parse: list[ParseRun] = field(default_factory=list)
    cache_read: list[CacheReadRun] = field(default_factory=list)
    train: list[TrainRun] = field(default_factory=list)
    predict: list[PredictRun] = field(default_factory=list)


# --------------------------------------------------------------------------
# Running commands
# --------------------------------------------------------------------------


def _gnu_time() -> str | None:
    """/usr/bin/time when it understands -f/-o (GNU time), else None."""
    path = "/usr/bin/time"
    if not os.access(path, os.X_OK):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rss"
        try:
            proc = subprocess.run(
                [path, "-f", "%M", "-o", str(out), sys.executable, "-c", "pass"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        except OSError:
            return None
        return path if proc.returncode == 0 and _last_int(out) is not None else None


def _last_int(path: Path) -> int | None:
    """The last line of GNU time's -o file, as an integer."""
    try:
        lines = path.read_text().split()
    except OSError:
        return None
    return int(lines[-1]) if lines and lines[-1].isdigit() else None


def _maxrss_mb(ru_maxrss: int) -> float:
    # ru_maxrss is in kilobytes on Linux, bytes on macOS.
    return ru_maxrss / 2**20 if sys.platform == "darwin" else ru_maxrss / 1024


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


class Runner:
    """Runs commands and measures their whole wall time and peak RSS.

    Peak RSS comes from GNU `/usr/bin/time -f %M` when available, else from
    the child's own rusage (os.wait4), which is exact per child too."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.time_bin = _gnu_time()
        if self.time_bin:
            self.rss_method = "/usr/bin/time -f %M"
        elif hasattr(os, "wait4"):
            self.rss_method = "os.wait4 rusage"
        else:
            self.rss_method = None

    def run(self, argv: Sequence[str], label: str, cwd: Path | None = None) -> Measured:
        argv = [str(a) for a in argv]
        out_path = self.log_dir / f"{label}.out"
        err_path = self.log_dir / f"{label}.err"
        rss_path = self.log_dir / f"{label}.rss"
        cmd = [self.time_bin, "-f", "%M", "-o", str(rss_path), *argv] if self.time_bin else argv
        rss: float | None = None
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            t0 = time.perf_counter()
            try:
                proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=cwd)
            except OSError as exc:
                raise BenchError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
            if not self.time_bin and self.rss_method:
                _, status, usage = os.wait4(proc.pid, 0)
                wall = time.perf_counter() - t0
                proc.returncode = os.waitstatus_to_exitcode(status)
                rss = _maxrss_mb(usage.ru_maxrss)
            else:
                proc.wait()
                wall = time.perf_counter() - t0
        if self.time_bin:
            kb = _last_int(rss_path)
            rss = kb / 1024 if kb is not None else None
        stdout = out_path.read_text(errors="replace")
        stderr = err_path.read_text(errors="replace")
        if proc.returncode != 0:
            raise BenchError(
                f"{label}: command failed with exit status {proc.returncode}:\n  {' '.join(argv)}\n"
                + _tail(stderr + stdout)
            )
        return Measured(argv, wall, rss, proc.returncode, stdout, stderr)


# --------------------------------------------------------------------------
# Output parsers
# --------------------------------------------------------------------------

_FLOAT = r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|nan|inf)"
_FM_READ = re.compile(rf"^read (\d+) rows from (.*) in ({_FLOAT}) s(?: \(({_FLOAT}) MB/s\))?\s*$")
_FM_EPOCH = re.compile(
    rf"^\s*(\d+)\s+({_FLOAT})\s+({_FLOAT}|-)\s+({_FLOAT}|-)\s+({_FLOAT})\s+({_FLOAT})\s*$"
)
_FM_PREDICT = re.compile(rf"logloss = ({_FLOAT})\s+auc = ({_FLOAT})\s+rows = (\d+)")
_FFM_CHECK = re.compile(rf"First check if the text file .*\(({_FLOAT}) seconds\)")
_FFM_CONVERT = re.compile(rf"Convert text file to binary file \(({_FLOAT}) seconds\)")
_FFM_EPOCH = re.compile(rf"^\s*(\d+)\s+({_FLOAT})\s+({_FLOAT})\s+({_FLOAT})\s*$")
_FFM_LOGLOSS = re.compile(rf"logloss = ({_FLOAT})")


def _opt_float(text: str) -> float | None:
    return None if text == "-" else float(text)


def parse_fmcli_train(stderr: str) -> tuple[list[Epoch], list[tuple[int, float, float | None]]]:
    """Epoch table and the 'read N rows ... in S s (M MB/s)' lines of `fm train`."""
    epochs: list[Epoch] = []
    reads: list[tuple[int, float, float | None]] = []
    in_table = False
    for line in stderr.splitlines():
        if m := _FM_READ.match(line):
            reads.append((int(m[1]), float(m[3]), float(m[4]) if m[4] else None))
        elif line.split()[:1] == ["epoch"]:
            in_table = True
        elif in_table and (m := _FM_EPOCH.match(line)):
            epochs.append(Epoch(
                epoch=int(m[1]), tr_logloss=float(m[2]), va_logloss=_opt_float(m[3]),
                va_auc=_opt_float(m[4]), seconds=float(m[5]), rows_per_s=float(m[6]),
            ))
    return epochs, reads


@dataclass
class LibffmLoad:
    check_s: float
    convert_s: float | None  # cumulative from the start of the check, as libffm prints it

    @property
    def seconds(self) -> float:
        return self.convert_s if self.convert_s is not None else self.check_s


def parse_libffm_train(stdout: str, train_rows: int) -> tuple[list[Epoch], list[LibffmLoad]]:
    """libffm's cache/conversion lines (train file first, then validation) and its table.

    tr_time is cumulative training time; libffm stops its timer before the
    validation pass, so the per-epoch difference is training only."""
    loads: list[LibffmLoad] = []
    epochs: list[Epoch] = []
    in_table = False
    previous = 0.0
    for line in stdout.splitlines():
        if m := _FFM_CHECK.search(line):
            loads.append(LibffmLoad(float(m[1]), None))
        if (m := _FFM_CONVERT.search(line)) and loads:
            loads[-1].convert_s = float(m[1])
        if line.split()[:1] == ["iter"]:
            in_table = True
        elif in_table and (m := _FFM_EPOCH.match(line)):
            cumulative = float(m[4])
            seconds = cumulative - previous
            previous = cumulative
            epochs.append(Epoch(
                epoch=int(m[1]), tr_logloss=float(m[2]), va_logloss=float(m[3]),
                seconds=seconds, rows_per_s=train_rows / seconds if seconds > 0 else None,
                tr_time_cumulative=cumulative,
            ))
    return epochs, loads


# --------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------


def find_fm() -> Path:
    """The `fm` console script installed next to this Python."""
    bindir = Path(sys.executable).parent  # not resolved: keep the virtual environment's bin/
    found = shutil.which("fm", path=str(bindir))
    if not found:
        raise BenchError(f"no `fm` command next to {sys.executable}; {INSTALL_HINT}")
    try:
        importlib.import_module("fmcli.data.text")
    except ImportError as exc:
        raise BenchError(f"cannot import fmcli ({exc}); {INSTALL_HINT}") from None
    return Path(found)


def count_rows(path: Path) -> tuple[int, int]:
    """(rows, bytes) of a data file, read with fmcli's reader."""
    from fmcli.data.text import TextReader

    reader = TextReader(path)
    rows = sum(batch.n_rows for batch in reader)
    return rows, reader.bytes_read


def measure_parse(path: Path, repeat: int) -> ParseRun:
    """Time fmcli's TextReader parsing a whole file, in this process, as
    `fm train` reads its inputs into a data set: blocks of the same size,
    the same parser threads, line numbers kept (the blocks are dropped as
    they come: the cache and the chunks are not part of this figure)."""
    from fmcli.data.dataset import PARSE_WORKERS, TEXT_BLOCK_BYTES
    from fmcli.data.text import TextReader

    t0 = time.perf_counter()
    reader = TextReader(path, block_bytes=TEXT_BLOCK_BYTES, track_lines=True)
    reader.workers = PARSE_WORKERS
    rows = sum(b.n_rows for b in reader)
    seconds = time.perf_counter() - t0
    return ParseRun(repeat, reader.bytes_read, rows, seconds, reader.bytes_read / 1e6 / seconds)


def _touch(batch) -> float:
    """A sum over every array of a chunk, so that every page of it is read."""
    total = float(batch.labels.sum(dtype="float64")) + float(batch.values.sum(dtype="float64"))
    total += int(batch.indptr[-1]) + int(batch.fields.sum(dtype="int64")) + int(batch.features.sum(dtype="int64"))
    if batch.lines is not None:
        total += int(batch.lines.sum(dtype="int64"))
    if batch.weights is not None:
        total += float(batch.weights.sum(dtype="float64"))
    return total


def measure_cache_read(path: Path, repeat: int, scratch: Path) -> CacheReadRun:
    """Time one pass over fmcli's binary cache of `path`, in this process.

    fmcli.data.dataset.load_dataset builds the cache into a temporary
    directory under `scratch` (the first call parses the text and writes
    it); a second call finds it, as a later `fm train` on the same input
    would (open_s: opening and checking it), and Dataset.chunks then hands
    out every chunk as training does.  Only that pass is read_s; the
    temporary directory is removed afterwards."""
    from fmcli.data.dataset import load_dataset

    with tempfile.TemporaryDirectory(prefix="fmcache-", dir=scratch) as cache_dir:
        t0 = time.perf_counter()
        built = load_dataset(str(path), cache_dir=cache_dir)
        build_s = time.perf_counter() - t0
        cached_from = built.cached_from
        built.close()
        del built
        if cached_from != "built":
            raise BenchError(f"fmcli did not build a binary cache of {path} (got {cached_from!r})")
        cache_bytes = sum(f.stat().st_size for f in Path(cache_dir).glob("*.fmcache"))

        t0 = time.perf_counter()
        ds = load_dataset(str(path), cache_dir=cache_dir)
        open_s = time.perf_counter() - t0
        try:
            if ds.cached_from != "hit":
                raise BenchError(f"fmcli did not reuse its binary cache of {path} (got {ds.cached_from!r})")
            rows = nnz = chunks = 0
            checksum = 0.0   # only so that every page is read
            t0 = time.perf_counter()
            for _, batch, _ in ds.chunks():
                rows += batch.n_rows
                nnz += batch.features.size
                checksum += _touch(batch)
                chunks += 1
                del batch
            read_s = max(time.perf_counter() - t0, 1e-9)
        finally:
            ds.close()
        if rows != ds.n_rows or nnz != ds.nnz:
            raise BenchError(f"fmcli's binary cache of {path}: read {rows} rows / {nnz} values, "
                             f"expected {ds.n_rows} / {ds.nnz}")
    return CacheReadRun(
        repeat=repeat, rows=rows, nnz=nnz, cache_bytes=cache_bytes, chunks=chunks,
        build_s=build_s, open_s=open_s, read_s=read_s,
        rows_per_s=rows / read_s, open_read_rows_per_s=rows / (open_s + read_s),
    )


class Bench:
    """Runs the measurements of one benchmark invocation."""

    def __init__(self, args: argparse.Namespace, data: Dataset, runner: Runner, fm: Path,
                 libffm_dir: Path | None, scratch: Path, say: Callable[[str], None]):
        self.args = args
        self.data = data
        self.runner = runner
        self.fm = fm
        self.libffm_dir = libffm_dir
        self.scratch = scratch
        self.say = say
        self.variants = {v.tool: v for v in args.variant}

    # -- fmcli ------------------------------------------------------------

    def fmcli_train(self, tool: str, case: Case, repeat: int) -> TrainRun:
        """`fm train` as `tool`: FMCLI, FMCLI_LINEAR or a variant's fmcli:NAME."""
        model_path = self.scratch / "fmcli.fm"
        argv = [
            self.fm, "train", "--model", case.model, "-k", case.k, "-t", self.args.epochs,
            "-s", case.threads, "-r", LEARNING_RATE, "-l", L2,
            "-p", self.data.valid, "-o", model_path,
        ]
        variant = self.variants.get(tool)
        if tool == FMCLI or variant is not None:
            argv += ["--no-bias", "--no-linear"]
        if variant is not None:
            argv += variant.args
        if not self.args.fmcli_keep_cache:
            argv.append("--no-cache")
        argv.append(self.data.train)
        m = self.runner.run(argv, _label(repeat, case, tool, "train"))
        epochs, reads = parse_fmcli_train(m.stderr)
        if len(epochs) != self.args.epochs:
            raise BenchError(f"could not read fm train's epoch table:\n{_tail(m.stderr)}")
        load_s = sum(r[1] for r in reads[:2]) if len(reads) >= 2 else None
        train_mb_s = None
        if reads:
            _, seconds, mb_s = reads[0]
            train_mb_s = mb_s if mb_s is not None else (self.data.train_bytes / 1e6 / seconds if seconds else None)
        return TrainRun(tool, case.model, case.k, case.threads, repeat, m.argv, m.wall_s, m.peak_rss_mb,
                        epochs, load_s, train_mb_s, None, _size(model_path))

    def fmcli_predict(self, tool: str, case: Case, repeat: int) -> PredictRun:
        model_path = self.scratch / "fmcli.fm"
        out = self.scratch / "fmcli.pred"
        argv = [self.fm, "predict", "-s", case.threads, model_path, self.data.valid, "-o", out]
        m = self.runner.run(argv, _label(repeat, case, tool, "predict"))
        found = _FM_PREDICT.search(m.stderr)
        rows = int(found[3]) if found else self.data.valid_rows
        _remove(model_path, out)
        return PredictRun(tool, case.model, case.k, case.threads, repeat, m.argv, m.wall_s, m.peak_rss_mb,
                          rows, rows / m.wall_s, float(found[1]) if found else None)

    # -- libffm -----------------------------------------------------------

    def libffm_caches(self) -> list[Path]:
        """libffm writes its binary cache as basename(FILE).bin in its working directory."""
        return [self.scratch / (self.data.train.name + ".bin"), self.scratch / (self.data.valid.name + ".bin")]

    def libffm_train(self, case: Case, repeat: int, fresh: bool) -> TrainRun:
        assert self.libffm_dir is not None
        if fresh:
            _remove(*self.libffm_caches())
        model_path = self.scratch / "libffm.model"
        argv = [
            self.libffm_dir / "ffm-train", "-k", case.k, "-t", self.args.epochs, "-s", case.threads,
            "-l", L2, "-r", LEARNING_RATE, "-p", self.data.valid, self.data.train, model_path,
        ]
        m = self.runner.run(argv, _label(repeat, case, LIBFFM, "train"), cwd=self.scratch)
        epochs, loads = parse_libffm_train(m.stdout, self.data.train_rows)
        if len(epochs) != self.args.epochs or not loads:
            raise BenchError(f"could not read ffm-train's output:\n{_tail(m.stdout)}")
        train_load = loads[0]
        converted = train_load.convert_s is not None
        parse_mb_s = (
            self.data.train_bytes / 1e6 / train_load.convert_s
            if converted and train_load.convert_s > 0 else None
        )
        return TrainRun(LIBFFM, case.model, case.k, case.threads, repeat, m.argv, m.wall_s, m.peak_rss_mb,
                        epochs, sum(load.seconds for load in loads), parse_mb_s, converted,
                        _size(model_path))

    def libffm_predict(self, case: Case, repeat: int) -> PredictRun:
        assert self.libffm_dir is not None
        model_path = self.scratch / "libffm.model"
        out = self.scratch / "libffm.pred"
        argv = [self.libffm_dir / "ffm-predict", self.data.valid, model_path, out]
        m = self.runner.run(argv, _label(repeat, case, LIBFFM, "predict"), cwd=self.scratch)
        found = _FFM_LOGLOSS.search(m.stdout)
        rows = self.data.valid_rows
        _remove(model_path, out)
        return PredictRun(LIBFFM, case.model, case.k, case.threads, repeat, m.argv, m.wall_s, m.peak_rss_mb,
                          rows, rows / m.wall_s, float(found[1]) if found else None)

    # -- the run ----------------------------------------------------------

    def tools_for(self, model: str) -> list[str]:
        """The tools run on a case, in the order they alternate:
        fmcli, libffm (ffm only), the variants in the order given, fmcli+linear."""
        if model == "lr":
            return [FMCLI_LINEAR]  # lr has only bias and linear terms
        tools = []
        if self.args.libffm_exact:
            tools.append(FMCLI)
        if self.libffm_dir is not None and model == "ffm":
            tools.append(LIBFFM)
        tools += [tool for tool, v in self.variants.items() if v.runs_on(model)]
        if self.args.with_linear or not self.args.libffm_exact:
            tools.append(FMCLI_LINEAR)
        return tools

    def run(self, cases: list[Case], results: Results) -> None:
        reps = self.args.repeat
        _remove(*self.libffm_caches())  # the first libffm run always converts
        for rep in range(1, reps + 1):
            p = measure_parse(self.data.train, rep)
            results.parse.append(p)
            self.say(f"[{rep}/{reps}] parse {self.data.train.name}: {p.seconds:.2f} s, {p.mb_per_s:.0f} MB/s")
            c = measure_cache_read(self.data.train, rep, self.scratch)
            results.cache_read.append(c)
            self.say(f"[{rep}/{reps}] cache read {self.data.train.name}: {c.rows:,} rows in {c.read_s:.3f} s, "
                     f"{c.rows_per_s:,.0f} rows/s (open and check {c.open_s:.3f} s, "
                     f"build {c.build_s:.2f} s, {c.cache_bytes / 1e6:.1f} MB)")
            for case in cases:
                for tool in self.tools_for(case.model):
                    if tool == LIBFFM:
                        tr = self.libffm_train(case, rep, fresh=not self.args.libffm_keep_cache)
                        pr = self.libffm_predict(case, rep)
                    else:
                        tr = self.fmcli_train(tool, case, rep)
                        pr = self.fmcli_predict(tool, case, rep)
                    results.train.append(tr)
                    results.predict.append(pr)
                    self.say(_progress_line(rep, reps, case, tr, pr))
        _remove(*self.libffm_caches())


def _label(repeat: int, case: Case, tool: str, what: str) -> str:
    """Log file stem of one command (a variant's fmcli:NAME becomes fmcli_NAME)."""
    return f"r{repeat}-{case.model}-k{case.k}-s{case.threads}-{tool.replace(':', '_')}-{what}"


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _remove(*paths: Path) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def _progress_line(rep: int, reps: int, case: Case, tr: TrainRun, pr: PredictRun) -> str:
    va = f"{tr.best_va_logloss:.5f}" if tr.best_va_logloss is not None else "-"
    cache = "" if tr.converted is None else ("  (converted)" if tr.converted else "  (.bin cache reused)")
    return (
        f"[{rep}/{reps}] {case.model:<4} k={case.k} s={case.threads} {tr.tool:<12} "
        f"train {tr.wall_s:6.1f} s {_fmt(tr.peak_rss_mb, '.0f')} MB  best va {va}  "
        f"predict {pr.wall_s:5.2f} s{cache}"
    )


# --------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------


def _median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize(results: Results, cases: list[Case], tools_for: Callable[[str], list[str]]) -> list[Summary]:
    fmcli_parse = _median(p.mb_per_s for p in results.parse)
    fmcli_cache_read = _median(c.rows_per_s for c in results.cache_read)
    rows = []
    for case in cases:
        for tool in tools_for(case.model):
            def match(r):
                return (r.model, r.k, r.threads, r.tool) == (case.model, case.k, case.threads, tool)
            trains = [r for r in results.train if match(r)]
            preds = [r for r in results.predict if match(r)]
            epochs = [e for r in trains for e in r.epochs]
            rows.append(Summary(
                model=case.model, k=case.k, threads=case.threads, tool=tool, runs=len(trains),
                parse_mb_s=_median(r.train_parse_mb_s for r in trains) if tool == LIBFFM else fmcli_parse,
                cache_read_rows_s=None if tool == LIBFFM else fmcli_cache_read,
                train_rows_s=_median(e.rows_per_s for e in epochs),
                epoch_s=_median(e.seconds for e in epochs),
                all_in_epoch_s=_median(r.all_in_epoch_s for r in trains),
                best_va_logloss=_median(r.best_va_logloss for r in trains),
                predict_rows_s=_median(p.rows_per_s for p in preds),
                predict_logloss=_median(p.logloss for p in preds),
                wall_s=_median(r.wall_s for r in trains),
                peak_rss_mb=_median(r.peak_rss_mb for r in trains),
                predict_wall_s=_median(p.wall_s for p in preds),
                predict_rss_mb=_median(p.peak_rss_mb for p in preds),
                converted=[bool(r.converted) for r in trains] if tool == LIBFFM else None,
            ))
    return rows


def _div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def compute_ratios(summaries: list[Summary]) -> list[Ratio]:
    """Every fmcli variant against libffm on the same (model, k, threads)."""
    ratios = []
    for ref in (s for s in summaries if s.tool == LIBFFM):
        for s in summaries:
            if s.tool == LIBFFM or (s.model, s.k, s.threads) != (ref.model, ref.k, ref.threads):
                continue
            diff = _div(s.best_va_logloss, ref.best_va_logloss)
            ratios.append(Ratio(
                model=s.model, k=s.k, threads=s.threads, tool=s.tool,
                parse=_div(s.parse_mb_s, ref.parse_mb_s),
                train_rows_s=_div(s.train_rows_s, ref.train_rows_s),
                all_in_epoch=_div(ref.all_in_epoch_s, s.all_in_epoch_s),
                predict_rows_s=_div(s.predict_rows_s, ref.predict_rows_s),
                train_wall=_div(ref.wall_s, s.wall_s),
                peak_rss=_div(s.peak_rss_mb, ref.peak_rss_mb),
                va_logloss_diff_pct=(diff - 1) * 100 if diff is not None else None,
                predict_peak_rss=_div(s.predict_rss_mb, ref.predict_rss_mb),
            ))
    return ratios


def compute_variant_ratios(summaries: list[Summary]) -> list[VariantRatio]:
    """Every --variant against the exact fmcli tool on the same (model, k, threads)."""
    ratios = []
    for ref in (s for s in summaries if s.tool == FMCLI):
        for s in summaries:
            if not s.tool.startswith(VARIANT_PREFIX) or (s.model, s.k, s.threads) != (ref.model, ref.k, ref.threads):
                continue
            diff = _div(s.best_va_logloss, ref.best_va_logloss)
            ratios.append(VariantRatio(
                model=s.model, k=s.k, threads=s.threads, tool=s.tool, baseline=ref.tool,
                train_rows_s=_div(s.train_rows_s, ref.train_rows_s),
                all_in_epoch=_div(ref.all_in_epoch_s, s.all_in_epoch_s),
                predict_rows_s=_div(s.predict_rows_s, ref.predict_rows_s),
                peak_rss=_div(s.peak_rss_mb, ref.peak_rss_mb),
                predict_peak_rss=_div(s.predict_rss_mb, ref.predict_rss_mb),
                va_logloss_diff_pct=(diff - 1) * 100 if diff is not None else None,
            ))
    return ratios


def compute_scaling(summaries: list[Summary], base_threads: int = 1) -> list[Scaling]:
    """Every tool at every thread count over the same tool at `base_threads`,
    for each (model, k) where both ran."""
    base = {(s.model, s.k, s.tool): s for s in summaries if s.threads == base_threads}
    out = []
    for s in summaries:
        ref = base.get((s.model, s.k, s.tool))
        if ref is None or s.threads == base_threads:
            continue
        out.append(Scaling(
            model=s.model, k=s.k, tool=s.tool, threads=s.threads, base_threads=base_threads,
            train_rows_s=_div(s.train_rows_s, ref.train_rows_s),
            all_in_epoch=_div(ref.all_in_epoch_s, s.all_in_epoch_s),
            predict_rows_s=_div(s.predict_rows_s, ref.predict_rows_s),
        ))
    return out


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------

HEADERS = [
    "model", "k", "threads", "tool", "parse MB/s", "cache read rows/s", "train rows/s", "epoch s",
    "epoch s all-in", "best va_logloss", "predict rows/s", "wall s", "peak RSS MB", "predict RSS MB",
]


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _seconds(value: float | None) -> str:
    return _fmt(value, ".2f" if value is None or value >= 1 else ".3f")


def table_rows(summaries: list[Summary]) -> list[list[str]]:
    return [
        [
            s.model, "-" if s.model == "lr" else str(s.k), str(s.threads), s.tool,
            _fmt(s.parse_mb_s, ".0f"), _fmt(s.cache_read_rows_s, ",.0f"), _fmt(s.train_rows_s, ",.0f"),
            _seconds(s.epoch_s),
            _seconds(s.all_in_epoch_s), _fmt(s.best_va_logloss, ".5f"),
            _fmt(s.predict_rows_s, ",.0f"), _fmt(s.wall_s, ".1f"), _fmt(s.peak_rss_mb, ".0f"),
            _fmt(s.predict_rss_mb, ".0f"),
        ]
        for s in summaries
    ]


def render_plain(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    text_cols = {0, 3}  # model, tool: left-aligned

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i in text_cols else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def render_markdown(headers: list[str], rows: list[list[str]]) -> str:
    align = ["---" if i in (0, 3) else "---:" for i in range(len(headers))]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in [headers, align, *rows])


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}%"


def _threads(n: int) -> str:
    return f"{n} thread" if n == 1 else f"{n} threads"


def _case(model: str, k: int) -> str:
    return model if model == "lr" else f"{model} k={k}"


def _ratio_line(r: Ratio | VariantRatio, baseline: str, speed: list[tuple[str, float | None]]) -> str:
    """`r` against `baseline`: the given speed ratios, then memory and logloss."""
    speeds = ", ".join(f"{name} {_x(value)}" for name, value in speed)
    return (f"{r.tool} vs {baseline}, {_case(r.model, r.k)}, {_threads(r.threads)}: {speeds}; "
            f"peak RSS train {_x(r.peak_rss)}, predict {_x(r.predict_peak_rss)}; "
            f"best va_logloss {_pct(r.va_logloss_diff_pct)}")


def ratio_lines(ratios: list[Ratio]) -> list[str]:
    """One line per fmcli tool, model, k and thread count against libffm."""
    return [_ratio_line(r, "libffm", [("parse", r.parse), ("train rows/s", r.train_rows_s),
                                      ("epoch all-in", r.all_in_epoch), ("predict rows/s", r.predict_rows_s),
                                      ("train wall", r.train_wall)])
            for r in ratios]


def variant_ratio_lines(ratios: list[VariantRatio]) -> list[str]:
    """One line per variant, model, k and thread count against the exact fmcli tool."""
    return [_ratio_line(r, r.baseline, [("train rows/s", r.train_rows_s), ("epoch all-in", r.all_in_epoch),
                                        ("predict rows/s", r.predict_rows_s)])
            for r in ratios]


def scaling_lines(scaling: list[Scaling]) -> list[str]:
    """One line per tool, model, k and thread count against the same tool on 1 thread."""
    return [
        f"{c.tool}, {_case(c.model, c.k)}: {_threads(c.threads)} / {_threads(c.base_threads)}: "
        f"train rows/s {_x(c.train_rows_s)}, epoch all-in {_x(c.all_in_epoch)}, "
        f"predict rows/s {_x(c.predict_rows_s)}"
        for c in scaling
    ]


def report(results: Results, summaries: list[Summary], ratios: list[Ratio], markdown: bool,
           variant_ratios: Sequence[VariantRatio] = (), scaling: Sequence[Scaling] = ()) -> str:
    d = results.data
    out = [
        f"train: {d['train']} ({d['train_bytes'] / 1e6:.1f} MB, {d['train_rows']:,} rows); "
        f"valid: {d['valid']} ({d['valid_bytes'] / 1e6:.1f} MB, {d['valid_rows']:,} rows)",
        f"{results.meta['epochs']} epochs, {results.meta['repeat']} repeats (medians shown), "
        f"{results.meta['cpu_count']} CPUs, peak RSS via {results.meta['rss_method'] or 'unavailable'}",
        "",
    ]
    rows = table_rows(summaries)
    out.append(render_markdown(HEADERS, rows) if markdown else render_plain(HEADERS, rows))
    bullet = "- " if markdown else ""
    if ratios:
        out += ["", "Ratios fmcli/libffm (speed: > 1 means fmcli is faster; "
                    "peak RSS: < 1 means fmcli uses less; va_logloss: negative means fmcli is better):"]
        out += [bullet + line for line in ratio_lines(ratios)]
    if variant_ratios:
        out += ["", f"Variants against {FMCLI} (speed: > 1 means the variant is faster; "
                    "peak RSS: < 1 means it uses less; va_logloss: negative means it is better):"]
        out += [bullet + line for line in variant_ratio_lines(list(variant_ratios))]
    if scaling:
        out += ["", "Thread scaling, N threads over 1 thread (> 1 means more threads are faster):"]
        out += [bullet + line for line in scaling_lines(list(scaling))]
    notes = [
        f"{FMCLI} = fm train --no-bias --no-linear (libffm's model); "
        f"{FMCLI_LINEAR} = fm train defaults (bias + linear + pairwise).",
        *(f"{VARIANT_PREFIX}{name} = {FMCLI} plus {shlex.join(args)}."
          for name, args in results.meta.get("variants", {}).items()),
        "train rows/s, epoch s: each tool's own epoch timer, training only; "
        "neither tool includes its validation pass there (libffm's tr_time has 0.1 s resolution).",
        "epoch s all-in: (train command wall - reading/converting the text input) / epochs; "
        "includes validation, start-up, initialisation and writing the model, for both tools.",
        "parse MB/s: fmcli = TextReader over the train file, in-process; "
        "libffm = its text-to-binary conversion of the train file (includes hashing and writing the .bin cache).",
        "cache read rows/s: fmcli only; one pass over every chunk of fmcli's binary cache of the train file, "
        "in-process, every array read (opening and checking the cache is not included; see the JSON's open_s).",
        "wall s, peak RSS MB: whole `train` command; predict rows/s, predict RSS MB: whole `predict` "
        "command on the validation file, including start-up and model load (fmcli scores with the "
        "row's thread count; ffm-predict is single-threaded).",
    ]
    conv = [c for s in summaries if s.converted is not None for c in s.converted]
    if conv:
        reused = len(conv) - sum(conv)
        notes.append(f"libffm converted its text input in {sum(conv)} of {len(conv)} runs"
                     + (f"; {reused} reused its .bin cache." if reused else
                        " (its .bin cache is removed before every run)."))
    out += ["", "Notes:"] + [("- " if markdown else "  ") + n for n in notes]
    return "\n".join(out)


def to_json(value):
    """JSON-ready copy of results (dataclasses, paths)."""
    if hasattr(value, "__dataclass_fields__"):
        return to_json(asdict(value))
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: Path, results: Results, summaries: list[Summary], ratios: list[Ratio],
               variant_ratios: Sequence[VariantRatio] = (), scaling: Sequence[Scaling] = ()) -> None:
    """Every raw figure (each run, each epoch), the summaries and all ratios, as JSON."""
    train = []
    for r in results.train:
        row = to_json(r)
        row.update(best_va_logloss=r.best_va_logloss, all_in_epoch_s=r.all_in_epoch_s)
        train.append(row)
    doc = {
        "meta": results.meta,
        "data": results.data,
        "parse": to_json(results.parse),
        "cache_read": to_json(results.cache_read),
        "train": train,
        "predict": to_json(results.predict),
        "summary": to_json(summaries),
        "ratios": to_json(ratios),
        "variant_ratios": to_json(variant_ratios),
        "scaling": to_json(scaling),
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(path)


# --------------------------------------------------------------------------
# Setup
# --------------------------------------------------------------------------


def generate_dataset(work_dir: Path, rows: int, say: Callable[[str], None]) -> tuple[Path, Path]:
    """Training and validation files made by benchmarks/synth.py, reused when present."""
    valid_rows = max(1, rows // 5)
    work_dir.mkdir(parents=True, exist_ok=True)
    train = work_dir / f"train-{rows}-seed{TRAIN_SEED}.ffm"
    valid = work_dir / f"valid-{valid_rows}-seed{VALID_SEED}.ffm"
    for path, n, seed in ((train, rows, TRAIN_SEED), (valid, valid_rows, VALID_SEED)):
        if path.exists():
            say(f"reusing {path}")
            continue
        if not SYNTH.exists():
            raise BenchError(f"{SYNTH.name} not found next to bench.py; pass --train and --valid")
        partial = path.with_name(path.stem + ".partial.ffm")
        say(f"generating {path} ({n:,} rows, seed {seed})")
        proc = subprocess.run(
            [sys.executable, str(SYNTH), "--rows", str(n), "--seed", str(seed), "--out", str(partial)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        if proc.returncode != 0:
            _remove(partial)
            raise BenchError(f"{SYNTH.name} failed:\n{_tail(proc.stdout)}")
        partial.replace(path)
    return train, valid


def find_libffm(directory: Path | None) -> Path | None:
    if directory is None:
        return None
    directory = directory.resolve()
    for name in ("ffm-train", "ffm-predict"):
        if not os.access(directory / name, os.X_OK):
            raise BenchError(f"{directory / name} not found or not executable; "
                             "--libffm-dir must hold an already-built libffm")
    return directory


def warm_page_cache(*paths: Path) -> None:
    """Read the inputs once so that no tool pays for the first, cold read."""
    for path in paths:
        with open(path, "rb") as f:
            while f.read(16 << 20):
                pass


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _model_list(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in MODELS]
    if not values or bad:
        raise argparse.ArgumentTypeError(f"models must be among {', '.join(MODELS)}, got {text!r}")
    return values


def _variant(text: str) -> Variant:
    """NAME[@MODELS]=ARGS: the tool fmcli:NAME, `fm train` with ARGS split as a
    shell would, on the comma-listed MODELS (default: every model but lr)."""
    name, sep, rest = text.partition("=")
    name, _, only = name.strip().partition("@")
    models = tuple(m.strip() for m in only.split(",") if m.strip()) if only else ()
    if not sep or not _VARIANT_NAME.match(name) or any(m not in MODELS or m == "lr" for m in models):
        raise argparse.ArgumentTypeError(
            f"expected NAME[@MODELS]=ARGS with NAME of letters, digits and _.+- and MODELS a comma "
            f"list of {', '.join(m for m in MODELS if m != 'lr')} (e.g. \"b8=--batch-size 8\", "
            f"\"f16@ffm=--storage float16\"), got {text!r}")
    try:
        args = shlex.split(rest)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"cannot split the arguments of {text!r}: {exc}") from None
    return Variant(name, args, models)


def build_cases(args: argparse.Namespace) -> list[Case]:
    cases = []
    for model in args.models:
        for k in (args.k[:1] if model == "lr" else args.k):  # lr has no factors
            for threads in args.threads:
                cases.append(Case(model, k, threads))
    return cases


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="Benchmark fmcli (and libffm, side by side) on speed, memory and accuracy.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = ap.add_argument_group("data")
    data.add_argument("--train", type=Path, help="training file (default: generated with synth.py)")
    data.add_argument("--valid", type=Path, help="validation file (default: generated with synth.py)")
    data.add_argument("--rows", type=int, default=200_000,
                      help="training rows to generate when --train is not given (validation: rows/5)")
    data.add_argument("--work-dir", type=Path, default=Path("bench-out"),
                      help="generated data, logs and scratch files")
    runs = ap.add_argument_group("runs")
    runs.add_argument("--models", type=_model_list, default=["ffm"], help="comma list of lr,fm,ffm,fwfm,fmfm")
    runs.add_argument("--k", type=_int_list, default=[4], help="comma list of factor lengths")
    runs.add_argument("--epochs", type=int, default=3, help="epochs per training run")
    runs.add_argument("--threads", type=_int_list, default=[1, 2], help="comma list of thread counts")
    runs.add_argument("--repeat", type=int, default=3, help="repetitions (medians are reported)")
    ref = ap.add_argument_group("libffm")
    ref.add_argument("--libffm-dir", type=Path, help="directory with a built ffm-train and ffm-predict")
    ref.add_argument("--libffm-exact", action=argparse.BooleanOptionalAction, default=True,
                     help="run fmcli as libffm's model (--no-bias --no-linear)")
    ref.add_argument("--with-linear", action="store_true",
                     help="also run fmcli with its defaults (bias and linear terms)")
    ref.add_argument("--libffm-keep-cache", action="store_true",
                     help="let libffm reuse its .bin cache after the first run "
                          "(default: removed before every run, so every run converts text like fmcli)")
    ref.add_argument("--time-to-quality", action=argparse.BooleanOptionalAction, default=True,
                     help="with libffm: also time fm train (its defaults, --auto-stop) until its validation "
                          "logloss reaches libffm's best, against libffm's time to its best epoch "
                          "(benchmarks/time_to_quality.py, the first --k, --repeat repeats, up to 15 epochs)")
    runs.add_argument("--fmcli-keep-cache", action="store_true",
                      help="let fmcli use its binary cache (default: --no-cache, every run parses text)")
    runs.add_argument("--variant", type=_variant, action="append", default=[],
                      metavar="NAME[@MODELS]=ARGS",
                      help="repeatable: also run, on every case but lr (or only on the comma-listed "
                           "MODELS), the tool fmcli:NAME, i.e. fm train --no-bias --no-linear plus "
                           "ARGS (e.g. \"b8=--batch-size 8\", \"f16@ffm=--storage float16\"), "
                           "compared with fmcli and libffm")
    out = ap.add_argument_group("output")
    out.add_argument("--json", type=Path, help="write every raw figure here")
    out.add_argument("--markdown", action="store_true", help="print the table as markdown")
    out.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    args = ap.parse_args(argv)
    if args.epochs < 1 or args.repeat < 1 or args.rows < 1:
        ap.error("--epochs, --repeat and --rows must be at least 1")
    if (args.train is None) != (args.valid is None):
        ap.error("give both --train and --valid, or neither (then data is generated)")
    names = [v.name for v in args.variant]
    if len(set(names)) != len(names):
        ap.error(f"--variant names must differ, got {', '.join(names)}")
    if args.variant and not args.libffm_exact:
        ap.error("--variant runs are compared with the exact fmcli tool: drop --no-libffm-exact")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    say = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    try:
        fm = find_fm()
        libffm_dir = find_libffm(args.libffm_dir)
        if args.train is not None:
            for path in (args.train, args.valid):
                if not path.is_file():
                    raise BenchError(f"{path}: no such file")
            train, valid = args.train.resolve(), args.valid.resolve()
        else:
            train, valid = generate_dataset(args.work_dir, args.rows, say)
            train, valid = train.resolve(), valid.resolve()
        if libffm_dir is not None and train.name == valid.name:
            raise BenchError("the training and validation files need different names "
                             "(libffm names its cache after the file name)")
        work = args.work_dir.resolve()
        log_dir, scratch = work / "logs", work / "scratch"
        log_dir.mkdir(parents=True, exist_ok=True)
        scratch.mkdir(parents=True, exist_ok=True)

        warm_page_cache(train, valid)
        train_rows, train_bytes = count_rows(train)
        valid_rows, valid_bytes = count_rows(valid)
        data = Dataset(train, valid, train_bytes, valid_bytes, train_rows, valid_rows)
        runner = Runner(log_dir)
        cpus = os.cpu_count() or 1
        if max(args.threads) > cpus:
            say(f"warning: {max(args.threads)} threads on a machine with {cpus} CPUs")
        from fmcli import __version__ as fmcli_version

        results = Results(
            meta={
                "started": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
                "fmcli_version": fmcli_version,
                "python": platform.python_version(),
                "platform": platform.platform(),
                "cpu_count": cpus,
                "rss_method": runner.rss_method,
                "libffm": libffm_dir is not None,
                "models": args.models, "k": args.k, "threads": args.threads,
                "epochs": args.epochs, "repeat": args.repeat,
                "learning_rate": float(LEARNING_RATE), "l2": float(L2),
                "libffm_exact": args.libffm_exact, "with_linear": args.with_linear,
                "libffm_keep_cache": args.libffm_keep_cache,
                "fmcli_keep_cache": args.fmcli_keep_cache,
                "variants": {v.name: v.args for v in args.variant},
                "order": "every repeat times fmcli's parser and cache read, then runs each case's tools "
                         "back to back (fmcli, libffm, fmcli:NAME..., fmcli+linear)",
            },
            data={
                "train": train.name, "valid": valid.name,
                "train_bytes": train_bytes, "train_rows": train_rows,
                "valid_bytes": valid_bytes, "valid_rows": valid_rows,
            },
        )
        bench = Bench(args, data, runner, fm, libffm_dir, scratch, say)
        cases = build_cases(args)
        runner.run([fm, "--version"], "warm-up")  # first start-up pays for cold imports
        try:
            bench.run(cases, results)
        finally:
            for leftover in ("fmcli.fm", "fmcli.pred", "libffm.model", "libffm.pred"):
                _remove(scratch / leftover)
        summaries = summarize(results, cases, bench.tools_for)
        ratios = compute_ratios(summaries)
        variant_ratios = compute_variant_ratios(summaries)
        scaling = compute_scaling(summaries)
        print(report(results, summaries, ratios, args.markdown, variant_ratios, scaling))
        if args.json:
            write_json(args.json, results, summaries, ratios, variant_ratios, scaling)
            say(f"wrote {args.json}")
        if libffm_dir is not None and args.time_to_quality:
            import time_to_quality

            say("time to quality: fm train (defaults, --auto-stop) against libffm's best epoch")
            ttq = ["--train", str(train), "--valid", str(valid), "--libffm-dir", str(libffm_dir),
                   "-k", str(args.k[0]), "--repeat", str(args.repeat)]
            if args.json:
                ttq += ["--json", str(args.json.with_name(args.json.stem + "-time-to-quality.json"))]
            time_to_quality.main(ttq)
    except BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
