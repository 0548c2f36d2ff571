"""The C scorer (fmcli/include/fmscore.c) against fmcli's own scoring.

The C sources are compiled once per module with the system compiler: as a
shared library called through ctypes (scores of many models, error codes),
as the example program (its printed scores against `fm predict`) and as a
small pthreads harness (threads share one model).  The oracle is
fmcli.predict on the float32 model the inference file was written from.

Agreement: raw scores (and regression's values) within 1e-6 * max(1,
|score|) (relative for large scores, absolute near zero); probabilities
within 1e-6 absolute.  The C scorer does fmcli's float32 operations in
fmcli's order, so on x86-64 the raw scores are equal bit for bit (checked
there too); the library is also built without its SSE loop
(-DFMS_NO_SIMD), which must give the same numbers.
"""

from __future__ import annotations

import ctypes
import math
import os
import platform
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import fmcli
from fmcli.cli import cli
from fmcli.config import Config
from fmcli.data.dataset import make_reader
from fmcli.data.text import ReadLimits
from fmcli.inference import (API_VERSION, FORMAT_MAJOR, HEADER_SIZE, MAGIC, get_include, inference_bytes,
                             write_inference)
from fmcli.model import Model, ModelSpec, load_model
from fmcli.predict import iter_scores, predict
from fmcli.registry import MODELS, kind as model_kind
from fmcli.train import train

from synthdata import write_synth

FIXTURES = Path(__file__).parent / "fixtures"
TASKS = ("binary", "regression", "multiclass")
CLASSES = ("a", "b", "c")
ERR = {"ok": 0, "io": 1, "magic": 2, "version": 3, "truncated": 4, "checksum": 5, "format": 6,
       "argument": 8, "nonfinite": 9}

CC = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler (cc, gcc or clang) on PATH")

RAW_TOL = 1e-6      # raw scores: |c - py| <= RAW_TOL * max(1, |py|)
PROB_TOL = 1e-6     # probabilities: absolute
# fmcli's kernels use SSE on x86-64 and the C scorer repeats their float32
# operations there (unless fmcli was built with FMCLI_NATIVE=1, whose
# -march=native may fuse multiplications and additions)
BIT_FOR_BIT = platform.machine().lower() in ("x86_64", "amd64") and not os.environ.get("FMCLI_NATIVE")


# ---------------------------------------------------------------- building

THREADS_HARNESS = r"""
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "fmscore.h"

#define ROWS 2000
#define NNZ 12
#define THREADS 8
#define ROUNDS 5

static fms_model *model;
static int64_t indptr[ROWS + 1];
static int32_t fields[ROWS * NNZ], features[ROWS * NNZ];
static float values[ROWS * NNZ];
static double *expected;

static void *work(void *arg) {
    double *out = malloc(sizeof(double) * ROWS * fms_outputs(model));
    long bad = 0;
    (void)arg;
    for (int round = 0; round < ROUNDS; round++) {
        if (fms_score(model, ROWS, indptr, fields, features, values, out) != FMS_OK) bad++;
        else if (memcmp(out, expected, sizeof(double) * ROWS * fms_outputs(model)) != 0) bad++;
    }
    free(out);
    return (void *)bad;
}

int main(int argc, char **argv) {
    fms_error err;
    pthread_t t[THREADS];
    unsigned long long s = 12345;
    long bad = 0;
    (void)argc;
    model = fms_open(argv[1], &err);
    if (!model) { fprintf(stderr, "%s\n", err.message); return 1; }
    const fms_info *info = fms_model_info(model);
    for (int r = 0; r <= ROWS; r++) indptr[r] = (int64_t)r * NNZ;
    for (int i = 0; i < ROWS * NNZ; i++) {   /* a fixed pseudo-random sequence */
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        fields[i] = (int32_t)((s >> 33) % (unsigned long long)(info->n_fields + 1));
        features[i] = (int32_t)((s >> 20) % (unsigned long long)(info->n_features + 3));
        values[i] = (float)((s >> 40) % 1000) / 500.0f;
    }
    expected = malloc(sizeof(double) * ROWS * fms_outputs(model));
    if (fms_score(model, ROWS, indptr, fields, features, values, expected) != FMS_OK) return 2;
    for (int i = 0; i < THREADS; i++) pthread_create(&t[i], NULL, work, NULL);
    for (int i = 0; i < THREADS; i++) { void *r; pthread_join(t[i], &r); bad += (long)r; }
    printf("%ld %.17g\n", bad, expected[0]);
    fms_close(model);
    free(expected);
    return bad != 0;
}
"""


def _compile(out: Path, sources: list[Path], *flags: str) -> Path:
    include = Path(get_include())
    cmd = [CC, "-std=c99", "-O2", "-Wall", "-Wextra", "-pedantic", "-Werror", f"-I{include}",
           *map(str, sources), str(include / "fmscore.c"), "-o", str(out), *flags, "-lm"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stderr}"
    return out


class _Err(ctypes.Structure):
    _fields_ = [("code", ctypes.c_int), ("message", ctypes.c_char * 256)]


class _Info(ctypes.Structure):
    _fields_ = [("kind", ctypes.c_int), ("task", ctypes.c_int), ("n_classes", ctypes.c_int),
                ("k", ctypes.c_int), ("n_features", ctypes.c_int64), ("n_fields", ctypes.c_int64),
                ("use_bias", ctypes.c_int), ("use_linear", ctypes.c_int), ("normalize", ctypes.c_int),
                ("has_id_map", ctypes.c_int), ("format_major", ctypes.c_int),
                ("format_minor", ctypes.c_int), ("dtype", ctypes.c_int), ("source_crc", ctypes.c_uint32)]


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """The compiled library (ctypes), example program and thread harness."""
    d = tmp_path_factory.mktemp("cscorer")
    include = Path(get_include())
    lib_path = _compile(d / "libfmscore.so", [], "-shared", "-fPIC")
    portable_path = _compile(d / "libfmscore-portable.so", [], "-shared", "-fPIC", "-DFMS_NO_SIMD")
    example = _compile(d / "score_example", [include / "example" / "score_example.c"])
    (d / "threads.c").write_text(THREADS_HARNESS)
    threads = _compile(d / "threads", [d / "threads.c"], "-pthread")
    lib, portable = _load(lib_path), _load(portable_path)
    return {"lib": lib, "libs": (lib, portable), "example": example, "threads": threads, "dir": d}


def _load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    vp = ctypes.c_void_p
    lib.fms_open.restype = vp
    lib.fms_open.argtypes = [ctypes.c_char_p, ctypes.POINTER(_Err)]
    lib.fms_open_memory.restype = vp
    lib.fms_open_memory.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(_Err)]
    for name in ("fms_score", "fms_score_raw"):
        getattr(lib, name).argtypes = [vp, ctypes.c_size_t, vp, vp, vp, vp, vp]
    lib.fms_close.argtypes = [vp]
    lib.fms_model_info.restype = ctypes.POINTER(_Info)
    lib.fms_model_info.argtypes = [vp]
    lib.fms_outputs.argtypes = [vp]
    return lib


class CModel:
    """An inference file opened by the compiled library."""

    def __init__(self, lib, data: bytes | Path):
        self.lib = lib
        err = _Err()
        if isinstance(data, Path):
            self.h = lib.fms_open(os.fsencode(data), ctypes.byref(err))
        else:
            self.h = lib.fms_open_memory(data, len(data), ctypes.byref(err))
        self.code, self.message = err.code, err.message.decode()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.h:
            self.lib.fms_close(self.h)

    def score(self, batch, raw: bool = False, fields: bool = True) -> tuple[int, np.ndarray]:
        c = self.lib.fms_outputs(self.h)
        out = np.full(batch.n_rows * c, -7.0)
        ptr = lambda a: a.ctypes.data_as(ctypes.c_void_p) if a is not None else None  # noqa: E731
        fn = self.lib.fms_score_raw if raw else self.lib.fms_score
        values = batch.values if batch.values.size else None
        rc = fn(self.h, batch.n_rows, ptr(batch.indptr), ptr(batch.fields) if fields else None,
                ptr(batch.features), ptr(values), ptr(out))
        return rc, out.reshape(batch.n_rows, c) if c > 1 else out


def _batch(path: Path, model: Model):
    classes = list(model.spec.classes) if model.spec.task == "multiclass" else None
    blocks = list(make_reader(str(path), "auto", "class" if classes else "real", ReadLimits(),
                              classes=classes))
    assert len(blocks) == 1
    return blocks[0]


def _raw_scores(model: Model, path: Path) -> np.ndarray:
    return np.concatenate([s for s, _ in iter_scores(model, path)])


def _check(libs, model: Model, path: Path, data: bytes | None = None) -> None:
    """The C scores (raw and predictions) of `path`'s rows equal fmcli's,
    from each library in `libs` (or the one library given)."""
    for lib in libs if isinstance(libs, tuple) else (libs,):
        _check_one(lib, model, path, data)


def _check_one(lib, model: Model, path: Path, data: bytes | None) -> None:
    data = data if data is not None else inference_bytes(model, storage="float32")
    batch = _batch(path, model)
    with CModel(lib, data) as c:
        assert c.h, c.message
        rc, raw = c.score(batch, raw=True)
        assert rc == 0
        expected = _raw_scores(model, path)
        np.testing.assert_allclose(raw, expected, rtol=0, atol=RAW_TOL * max(1.0, float(np.abs(expected).max())))
        assert np.all(np.abs(raw - expected) <= RAW_TOL * np.maximum(1.0, np.abs(expected)))
        if BIT_FOR_BIT:
            assert np.array_equal(raw, expected), np.abs(raw - expected).max()
        rc, preds = c.score(batch)
        assert rc == 0
        if model.spec.task == "regression":   # the prediction is the raw score
            assert np.array_equal(preds, raw)
        else:
            np.testing.assert_allclose(preds, predict(model, path), rtol=0, atol=PROB_TOL)


# ---------------------------------------------------------------- models

def _random_model(kind: str, task: str, *, k=5, n=40, m=4, bias=True, linear=True, normalize=True,
                  seed=0, ids=None) -> Model:
    """A model with random weights of every array its kind has (scale 0.5)."""
    C = 3 if task == "multiclass" else 1
    spec = ModelSpec(kind, task, k, n, m, bias, linear, normalize, C,
                     CLASSES if task == "multiclass" else None)
    rng = np.random.default_rng(seed)
    params = {name: rng.normal(0, 0.5, shape).astype(np.float32) for name, shape in spec.shapes().items()}
    pair = model_kind(kind).pair_param
    if pair == "field_weights":     # symmetric, as training saves them
        r = params[pair]
        params[pair] = (r + np.swapaxes(r, -1, -2)) / 2
    return Model(spec=spec, params=params, feature_ids=ids)


def _rows_file(path: Path, *, n_rows=60, max_feature=50, max_field=5, labels=("0",), seed=1) -> Path:
    """libffm rows with random values, repeated entries, ids and fields
    beyond the models' (unseen), empty rows."""
    rng = np.random.default_rng(seed)
    lines = []
    for r in range(n_rows):
        nnz = 0 if r % 17 == 5 else int(rng.integers(1, 9))
        ents = [f"{rng.integers(0, max_field + 1)}:{rng.integers(0, max_feature + 1)}:"
                f"{rng.uniform(-2, 2):.5g}" for _ in range(nnz)]
        if nnz > 2 and r % 3 == 0:
            ents.append(ents[0])       # the same entry twice in a row
        lines.append(" ".join([labels[r % len(labels)], *ents]))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    d = tmp_path_factory.mktemp("rows")
    return {"binary": _rows_file(d / "b.ffm"), "regression": _rows_file(d / "r.ffm", labels=("0.5",)),
            "multiclass": _rows_file(d / "m.ffm", labels=CLASSES)}


@pytest.mark.parametrize("k", [4, 5])      # 4: the SSE loop, 5: the portable one
@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("kind", MODELS)
def test_random_models_every_kind_and_task(build, rows, kind, task, k):
    _check(build["libs"], _random_model(kind, task, k=k), rows[task])


@pytest.mark.parametrize("flags", [(False, False, False), (True, False, True), (False, True, False),
                                   (True, True, False)])
@pytest.mark.parametrize("kind", MODELS)
def test_bias_linear_normalisation(build, rows, kind, flags):
    bias, linear, normalize = flags
    for task in ("binary", "multiclass"):
        model = _random_model(kind, task, bias=bias, linear=linear, normalize=normalize, seed=3, k=3)
        _check(build["libs"], model, rows[task])


@pytest.mark.parametrize("kind", MODELS)
def test_id_map(build, tmp_path, kind):
    """A model with an id map: ids are looked up (slots in another order
    than the ids, as after a warm start); unknown ids add nothing."""
    ids = np.array([70000, 5, 123456, 99, 65536, 3, 2**31 - 2, 42] + list(range(1000, 1032)), np.int64)
    model = _random_model(kind, "binary", ids=ids, seed=4)
    path = tmp_path / "ids.ffm"
    rng = np.random.default_rng(9)
    pool = np.concatenate([ids, [0, 1, 6, 70001, 2**31 - 1, 123455]])
    path.write_text("".join("1 " + " ".join(f"{rng.integers(0, 5)}:{rng.choice(pool)}:1" for _ in range(6))
                            + "\n" for _ in range(50)))
    data = inference_bytes(model)
    with CModel(build["lib"], data) as c:
        assert c.lib.fms_model_info(c.h).contents.has_id_map == 1
    _check(build["libs"], model, path, data)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Models trained briefly on synthetic data, every kind and task."""
    d = tmp_path_factory.mktemp("trained")
    write_synth(d, 300, seed=2, fields=5)
    lines = (d / "tr.ffm").read_text().splitlines()
    files = {"binary": d / "tr.ffm"}
    (d / "reg.ffm").write_text("".join(f"{i % 7 / 3:.3f} " + ln.split(" ", 1)[1] + "\n"
                                       for i, ln in enumerate(lines)))
    files["regression"] = d / "reg.ffm"
    (d / "multi.ffm").write_text("".join(f"{CLASSES[i % 3]} " + ln.split(" ", 1)[1] + "\n"
                                         for i, ln in enumerate(lines)))
    files["multiclass"] = d / "multi.ffm"
    models = {}
    for kind in MODELS:
        for task in TASKS:
            cfg = Config(model=kind, task=task, k=4, epochs=2, threads=1, cache=False, seed=1)
            models[kind, task] = train(cfg, str(files[task]), log=lambda _m: None)
    return models, files


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("kind", MODELS)
def test_trained_models(build, trained, kind, task):
    models, files = trained
    _check(build["libs"], models[kind, task], files[task])


@pytest.mark.parametrize("storage", ["float16", "int8"])
@pytest.mark.parametrize("kind", MODELS)
def test_smaller_storage_scores_as_the_model_file_of_that_dtype(build, rows, tmp_path, kind, storage):
    """A float16 / int8 inference file scores as fmcli scores the .fm file
    saved with the same --dtype (the same rounding of every weight)."""
    model = _random_model(kind, "multiclass", seed=5)
    model.save(tmp_path / "m.fm", dtype=storage)
    small = load_model(tmp_path / "m.fm")
    data = inference_bytes(model, storage=storage)
    assert len(data) < len(inference_bytes(model))
    _check(build["libs"], small, rows["multiclass"], data)


# ---------------------------------------------------------------- the fixtures and the example program

FIXTURE_CASES = [("v1-ffm", "valid40.ffm"), ("v1-ffm-libffm", "valid40.ffm"), ("v1-fm", "valid40.svm"),
                 ("v1-lr", "valid40.svm"), ("v1.3-fwfm", "valid40.ffm"), ("v1.4-fmfm", "valid40.ffm")]


def test_every_fixture_is_covered():
    assert {p.stem for p in FIXTURES.glob("*.fm")} == {name for name, _ in FIXTURE_CASES}


def _example(build, fmi: Path, data: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(build["example"]), str(fmi), str(data), *extra], capture_output=True, text=True)


def _one_digit_apart(a: float, b: float, digits: int = 6) -> bool:
    """Whether a and b, printed with `digits` significant digits, differ by
    at most one unit in the last digit (a tie rounded the other way)."""
    if a == b:
        return True
    unit = 10.0 ** (math.floor(math.log10(abs(b))) - digits + 1) if b else 10.0 ** -digits
    return abs(a - b) <= unit * 1.0001


@pytest.mark.parametrize("name,data", FIXTURE_CASES)
def test_frozen_fixtures_through_fm_convert_and_the_example(build, tmp_path, name, data):
    """fm convert FIXTURE --to inference, then the example program's scores:
    at 17 digits equal to fmcli's predictions to 1e-6, and its default
    output (6 digits) the same lines as `fm predict` (one unit in the last
    digit where the two round a tie differently)."""
    fmi = tmp_path / f"{name}.fmi"
    res = CliRunner().invoke(cli, ["convert", str(FIXTURES / f"{name}.fm"), "-o", str(fmi), "-q"])
    assert res.exit_code == 0, res.output
    model = load_model(FIXTURES / f"{name}.fm")
    full = _example(build, fmi, FIXTURES / data, "17")
    assert full.returncode == 0, full.stderr
    got = np.array([float(x) for x in full.stdout.split()])
    np.testing.assert_allclose(got, predict(model, FIXTURES / data), rtol=0, atol=PROB_TOL)
    _check(build["libs"], model, FIXTURES / data, fmi.read_bytes())

    res = CliRunner().invoke(cli, ["predict", str(FIXTURES / f"{name}.fm"), str(FIXTURES / data), "-q"])
    assert res.exit_code == 0
    short = _example(build, fmi, FIXTURES / data)
    assert short.returncode == 0
    ours, theirs = short.stdout.splitlines(), res.stdout.splitlines()
    assert len(ours) == len(theirs) == 40
    assert all(_one_digit_apart(float(a), float(b)) for a, b in zip(ours, theirs)), (ours, theirs)
    # the file records the checksum of the model file it came from
    raw = (FIXTURES / f"{name}.fm").read_bytes()
    assert struct.unpack_from("<I", fmi.read_bytes(), 60)[0] == struct.unpack_from("<I", raw, len(raw) - 8)[0]


def test_example_multiclass_and_stdin(build, trained, tmp_path):
    models, files = trained
    model = models["ffm", "multiclass"]
    fmi = tmp_path / "m.fmi"
    write_inference(model, fmi)
    text = files["multiclass"].read_text()
    done = subprocess.run([str(build["example"]), str(fmi), "-", "17"], input=text, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    got = np.array([[float(x) for x in ln.split()] for ln in done.stdout.splitlines()])
    np.testing.assert_allclose(got, predict(model, files["multiclass"]), rtol=0, atol=PROB_TOL)


def test_example_reports_bad_lines_and_models(build, tmp_path):
    fmi = tmp_path / "m.fmi"
    write_inference(_random_model("ffm", "binary"), fmi)
    bad = tmp_path / "bad.ffm"
    bad.write_text("1 0:1:1\n1 0:1:x\n")
    done = _example(build, fmi, bad)
    assert done.returncode == 65 and done.stderr.strip() == f"{bad}:2: bad value"
    done = _example(build, bad, bad)
    assert done.returncode == 66 and "not an fmcli inference file" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    # blank lines are skipped and rows without entries scored, as fm predict does
    odd = tmp_path / "odd.ffm"
    odd.write_text("1 0:1:1 1:2:0.5\n\n0\n  \n1 3:7:2\n")
    done = _example(build, fmi, odd, "17")
    assert done.returncode == 0, done.stderr
    got = np.array([float(v) for v in done.stdout.split()])
    assert got.shape == (3,)
    np.testing.assert_allclose(got, predict(load_model_of(fmi, tmp_path), odd), rtol=0, atol=PROB_TOL)
    # a row whose score overflows: its line
    big = _random_model("lr", "binary", normalize=False)
    big.params["linear"][:] = 3e38
    write_inference(big, fmi)
    odd.write_text("1 0:1:1\n\n1 0:2:1e30\n")
    done = _example(build, fmi, odd)
    assert done.returncode == 65 and done.stderr.strip() == f"{odd}:3: the row scores a non-finite number"


def load_model_of(fmi: Path, tmp_path: Path) -> Model:
    """The model _random_model("ffm", "binary") wrote to `fmi` (checked against its bytes)."""
    model = _random_model("ffm", "binary")
    assert fmi.read_bytes() == inference_bytes(model)
    return model


# ---------------------------------------------------------------- validation

def _valid_file(tmp_path) -> tuple[Path, bytes]:
    data = inference_bytes(_random_model("fmfm", "binary"))
    return tmp_path / "m.fmi", data


def _recrc(data: bytearray) -> bytearray:
    """`data` with its trailer's CRC-32 made right again."""
    end = len(data) - 24
    struct.pack_into("<I", data, end + 16, zlib.crc32(bytes(data[:end])))
    return data


def _open(build, path: Path, data: bytes) -> CModel:
    path.write_bytes(bytes(data))
    c = CModel(build["lib"], path)
    assert not c.h
    assert c.message.startswith(f"{path}: ") and "\n" not in c.message
    return c


def test_valid_file_opens(build, tmp_path):
    path, data = _valid_file(tmp_path)
    path.write_bytes(data)
    with CModel(build["lib"], path) as c:
        assert c.h and c.code == 0
        info = c.lib.fms_model_info(c.h).contents
        assert (info.kind, info.task, info.n_classes, info.k, info.n_features, info.n_fields) == (4, 0, 1, 5, 40, 4)
        assert (info.format_major, info.dtype) == (FORMAT_MAJOR, 0)
    assert build["lib"].fms_api_version() == API_VERSION


def test_corrupt_byte_is_a_checksum_error(build, tmp_path):
    path, data = _valid_file(tmp_path)
    for where in (HEADER_SIZE + 3, len(data) // 2, len(data) - 30, 40):
        bad = bytearray(data)
        bad[where] ^= 0x10
        c = _open(build, path, bad)
        assert c.code == ERR["checksum"], (where, c.message)
        assert "checksum" in c.message


def test_truncated_file(build, tmp_path):
    path, data = _valid_file(tmp_path)
    for size in (len(data) - 1, len(data) // 2, 300, 100, 12):
        c = _open(build, path, data[:size])
        assert c.code == ERR["truncated"], (size, c.message)
        assert "truncated" in c.message


def test_wrong_magic_and_other_files(build, tmp_path):
    path, data = _valid_file(tmp_path)
    c = _open(build, path, b"\x89FMM" + data[4:])
    assert c.code == ERR["magic"] and "fm convert MODEL --to inference" in c.message
    c = _open(build, path, (FIXTURES / "v1-ffm.fm").read_bytes())     # a .fm model file
    assert c.code == ERR["magic"]
    c = _open(build, path, b"")
    assert c.code == ERR["magic"]
    c = CModel(build["lib"], tmp_path / "missing.fmi")
    assert not c.h and c.code == ERR["io"] and str(tmp_path / "missing.fmi") in c.message
    c = CModel(build["lib"], tmp_path)        # a directory
    assert not c.h and c.code == ERR["io"]


def test_newer_versions_are_refused(build, tmp_path):
    path, data = _valid_file(tmp_path)
    newer = _recrc(bytearray(data))
    struct.pack_into("<H", newer, 8, FORMAT_MAJOR + 1)
    c = _open(build, path, _recrc(newer))
    assert c.code == ERR["version"] and f"format {FORMAT_MAJOR + 1}.0" in c.message
    needs = bytearray(data)
    struct.pack_into("<I", needs, 12, API_VERSION + 1)
    c = _open(build, path, _recrc(needs))
    assert c.code == ERR["version"] and f"API version {API_VERSION + 1}" in c.message
    # a newer minor version of the same major is read
    minor = bytearray(data)
    struct.pack_into("<H", minor, 10, 7)
    path.write_bytes(bytes(_recrc(minor)))
    with CModel(build["lib"], path) as c:
        assert c.h, c.message


def test_inconsistent_header_with_a_valid_checksum(build, tmp_path):
    path, data = _valid_file(tmp_path)
    cases = {
        36: 6,          # k 6: the arrays no longer have their sizes
        24: 9,          # kind 9
        32: 2,          # two classes for a binary model
        48: 1 | 2 | 4 | 64,   # an unknown flag
    }
    for offset, value in cases.items():
        bad = bytearray(data)
        struct.pack_into("<I", bad, offset, value)
        c = _open(build, path, _recrc(bad))
        assert c.code == ERR["format"], (offset, c.message)
    # an array moved off its 64-byte boundary
    bad = bytearray(data)
    off = struct.unpack_from("<Q", bad, 64 + 16 * 2)[0]
    struct.pack_into("<Q", bad, 64 + 16 * 2, off + 4)
    c = _open(build, path, _recrc(bad))
    assert c.code == ERR["format"] and "aligned" in c.message
    # bytes after the declared end
    c = _open(build, path, data + b"\0")
    assert c.code == ERR["format"]
    # a NaN weight
    bad = bytearray(data)
    off = struct.unpack_from("<Q", bad, 64 + 16 * 2)[0]
    struct.pack_into("<f", bad, off + 8, float("nan"))
    c = _open(build, path, _recrc(bad))
    assert c.code == ERR["format"] and "NaN" in c.message


def test_score_arguments(build, rows):
    model = _random_model("ffm", "binary")
    batch = _batch(rows["binary"], model)
    with CModel(build["lib"], inference_bytes(model)) as c:
        rc, _ = c.score(batch, fields=False)     # FFM reads fields
        assert rc == ERR["argument"]
        batch.indptr[3], batch.indptr[4] = batch.indptr[4], batch.indptr[3] - 1
        rc, _ = c.score(batch)
        assert rc == ERR["argument"]
    model = _random_model("fm", "binary")
    batch = _batch(rows["binary"], model)
    with CModel(build["lib"], inference_bytes(model)) as c:
        assert c.score(batch, fields=False)[0] == 0     # FM does not


def test_non_finite_score_is_reported(build, tmp_path):
    model = _random_model("lr", "regression", normalize=False)
    model.params["linear"][:] = 3e38
    path = tmp_path / "big.ffm"
    path.write_text("0 0:1:1e30\n0 0:1:1\n")      # 3e38 * 1e30 overflows float32, as in fmcli
    with CModel(build["lib"], inference_bytes(model)) as c:
        rc, out = c.score(_batch(path, model), raw=True)
    assert rc == ERR["nonfinite"]
    assert math.isinf(out[0]) and out[1] == pytest.approx(3e38 + float(model.params["bias"][0]), rel=1e-6)
    with pytest.raises(fmcli.errors.DataError, match="not a finite number"):
        predict(model, path)


# ---------------------------------------------------------------- threads, finding the sources

@pytest.mark.parametrize("kind", ["ffm", "fmfm"])
def test_threads_share_one_model(build, tmp_path, kind):
    """Eight pthreads scoring the same rows on one open model, five times
    each, all get the single-threaded scores bit for bit."""
    fmi = tmp_path / "m.fmi"
    write_inference(_random_model(kind, "multiclass", n=300, m=6, k=8), fmi)
    done = subprocess.run([str(build["threads"]), str(fmi)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.split()[0] == "0"


def test_get_include_and_the_command_line(tmp_path):
    include = Path(fmcli.get_include())
    assert include == Path(get_include())
    for name in ("fmscore.h", "fmscore.c", "example/score_example.c"):
        assert (include / name).is_file()
    assert "#define FMS_API_VERSION 1" in (include / "fmscore.h").read_text()
    done = subprocess.run([sys.executable, "-m", "fmcli.inference", "--include-dir"], capture_output=True,
                          text=True)
    assert done.returncode == 0 and done.stdout.strip() == str(include)
    done = subprocess.run([sys.executable, "-m", "fmcli.inference", "--bogus"], capture_output=True, text=True)
    assert done.returncode == 2 and "--include-dir" in done.stderr


def test_fm_convert_to_inference(tmp_path):
    src = FIXTURES / "v1-ffm.fm"
    out = tmp_path / "model.bin"
    res = CliRunner().invoke(cli, ["convert", str(src), "--to", "inference", "--dtype", "float16",
                                   "-o", str(out)])
    assert res.exit_code == 0, res.output
    data = out.read_bytes()
    assert data[:8] == MAGIC and struct.unpack_from("<I", data, 52)[0] == 1      # float16
    assert data == inference_bytes(load_model(src), storage="float16",
                                   source_crc=struct.unpack_from("<I", data, 60)[0])
    res = CliRunner().invoke(cli, ["convert", str(FIXTURES / "valid40.ffm"), "--to", "inference",
                                   "-o", str(tmp_path / "x.fmi")])
    assert res.exit_code == 2 and "is for model files" in res.output
    assert not (tmp_path / "x.fmi").exists()


def test_kind_codes_follow_the_registry():
    """fmscore.h's model kinds are the registry's codes, and every kind of
    the registry has a layout in the format."""
    from fmcli.inference import KINDS

    header = (Path(get_include()) / "fmscore.h").read_text()
    assert set(KINDS) == set(MODELS)
    for name in KINDS:
        assert f"FMS_{name.upper()} = {model_kind(name).code}" in header
