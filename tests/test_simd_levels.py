"""Every SIMD level of the float32 loops that this CPU has, against the SSE
level and against the NumPy reference.

Every level keeps the SSE loops' arithmetic (the same operations in the same
lane and summation order, no multiply-add contraction), so FFM training with
one thread gives the same parameter and optimizer-state arrays bit for bit at
every level, for every optimizer and k; scores, and `fm predict`'s output,
likewise.  Each level is also compared with tests/reference.py (an
independent oracle) at the float32 tolerances of the other fast-path tests.
A level the CPU lacks is skipped, naming the missing instructions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import reference as ref
from clirun import invoke, ok
from kernels_compat import score_rows, train_epoch
from test_matrix import csr, from_layout, problem, to_layout
from fmcli._core import _kernels
from fmcli.model import load_model, padded_k

OPTIMIZERS = ("sgd", "adagrad", "adam", "ftrl", "rowwise-adagrad")
KS = (1, 4, 5, 8, 16)
WIDE = ("avx", "avx2", "avx512")
NEEDS = {"avx": "AVX", "avx2": "AVX2 and FMA", "avx512": "AVX-512F"}


@pytest.fixture(scope="module")
def best():
    """The level in use at the start (restored after every test)."""
    return _kernels.simd()


@pytest.fixture(scope="module")
def top(best):
    """The best level this CPU has (FMCLI_SIMD may have chosen a lower one)."""
    level = _kernels.set_simd("avx512")
    _kernels.set_simd(best)
    return level


def use(level: str, best: str) -> None:
    """Switch to `level`, or skip when the CPU lacks it."""
    got = _kernels.set_simd(level)
    if got != level:
        _kernels.set_simd(best)
        pytest.skip(f"this CPU has no {NEEDS[level]}: the {level} level falls back to {got}")


@pytest.fixture(autouse=True)
def restore(best):
    yield
    _kernels.set_simd(best)


def mixed_rows(seed, kp, n_rows=300, n_fields=8, n_features=40):
    """One entry per field; every other row one-hot (the loops for uniform
    values), the others with real values; every 7th row repeats an entry (a
    pair whose two blocks are one block); a few entries outside the model."""
    rng = np.random.default_rng(seed)
    fields, features, vals, indptr = [], [], [], [0]
    for r in range(n_rows):
        f = np.arange(n_fields)
        j = rng.integers(0, n_features, n_fields)
        if r % 7 == 0:
            f, j = np.append(f, f[2]), np.append(j, j[2])
        if r % 11 == 0:
            j[1] = n_features + 3            # outside the model: skipped
        v = np.ones(f.size) if r % 2 == 0 else rng.uniform(0.3, 2.0, f.size)
        fields.append(f)
        features.append(j)
        vals.append(v)
        indptr.append(indptr[-1] + f.size)
    labels = (rng.random(n_rows) < 0.35).astype(np.float32)
    return (np.asarray(indptr, np.int64), np.concatenate(fields).astype(np.int32),
            np.concatenate(features).astype(np.int32), np.concatenate(vals).astype(np.float32), labels,
            n_features, n_fields)


def train_ffm(k, optimizer, refine, epochs=2):
    """Two epochs of FFM (libffm's model) with one thread at the current level;
    returns the factor array (weights and optimizer state), the losses and
    the scores of every row after training."""
    kp = padded_k(k)
    indptr, fields, features, values, labels, n, m = mixed_rows(k * 7 + len(optimizer), kp)
    rng = np.random.default_rng(3)
    if optimizer == "rowwise-adagrad":
        F = np.ones((n * m, kp + 1), np.float32)
    else:
        F = np.full((n * m, (1 + _kernels.n_state(optimizer)) * kp),
                    1.0 if optimizer == "adagrad" else 0.0, np.float32)
    F[:, :kp] = 0
    F[:, :k] = rng.random((n * m, k), dtype=np.float32) * 0.5
    F = F.reshape(-1)
    w = 1 + _kernels.n_state(optimizer)
    B, L, R = np.zeros(w, np.float32), np.zeros(w * n, np.float32), np.zeros(0, np.float32)
    order = np.random.default_rng(5).permutation(labels.size).astype(np.int64)
    losses = []
    for e in range(epochs):
        losses.append(train_epoch(
            "ffm", optimizer, "binary", B, L, F, R, n, m, kp, 1, indptr, fields, features, values, labels,
            np.zeros(0, np.float32), order, 0.1, l2_factors=2e-4, use_bias=False, use_linear=False,
            l1=0.001 if optimizer == "ftrl" else 0.0, threads=1, exact_rsqrt=refine, k=k,
            total_steps=epochs * labels.size, step0=e * labels.size))
    scores = np.empty(labels.size)
    score_rows("ffm", B, L, F, R, n, m, kp, _kernels.n_state(optimizer), indptr, fields, features, values,
               scores, False, False, True, 1, 1, False, optimizer == "rowwise-adagrad")
    return F, losses, scores


def test_levels_are_reported_and_fall_back(best, top):
    assert best in _kernels.SIMD_LEVELS and top in _kernels.SIMD_LEVELS
    assert _kernels.set_simd("sse") == "sse"
    assert _kernels.simd() == "sse"
    # this build has SSE: "scalar" means sse
    assert _kernels.set_simd("scalar") == "sse"
    # a level above the CPU's best gives the best
    for level in _kernels.SIMD_LEVELS[1:]:
        got = _kernels.set_simd(level)
        want = level if _kernels.SIMD_LEVELS.index(level) <= _kernels.SIMD_LEVELS.index(top) else top
        assert got == want


@pytest.mark.parametrize("env, expect", [("sse", "sse"), ("SSE", "sse"), ("scalar", "sse"),
                                          ("avx", "avx"), ("avx2", "avx2"), ("avx512", "avx512"),
                                          ("no-such-level", None), ("", None)])
def test_environment_chooses_the_level_at_import(top, env, expect):
    """FMCLI_SIMD picks the level once, at import; a level the CPU lacks falls
    back to the best it has, an unknown name is ignored."""
    order = _kernels.SIMD_LEVELS
    if expect is None or order.index(expect) > order.index(top):
        expect = top
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # this checkout's fmcli
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    out = subprocess.run([sys.executable, "-c", "from fmcli._core import _kernels; print(_kernels.simd())"],
                         env={**os.environ, "FMCLI_SIMD": env, "PYTHONPATH": path}, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == expect


@pytest.mark.parametrize("level", WIDE)
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("k", KS)
def test_ffm_training_equals_sse_bit_for_bit(best, level, optimizer, k):
    """Every optimizer and k (padded to 4, 8, 16), one thread: the same
    weights, optimizer state, losses and scores as the SSE level, bit for
    bit (AdaGrad and row-wise AdaGrad with the estimated and the refined
    1/sqrt)."""
    for refine in ((False, True) if "adagrad" in optimizer else (False,)):
        use("sse", best)
        F0, loss0, s0 = train_ffm(k, optimizer, refine)
        use(level, best)
        F1, loss1, s1 = train_ffm(k, optimizer, refine)
        np.testing.assert_array_equal(F1, F0)
        assert loss1 == loss0
        np.testing.assert_array_equal(s1, s0)
    # training moved the weights: the comparison is not vacuous
    assert np.abs(F0).sum() > 0 and not np.array_equal(s0, np.zeros_like(s0))


@pytest.mark.parametrize("level", ("sse",) + WIDE)
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("k", KS)
def test_ffm_training_matches_the_reference(best, level, optimizer, k):
    """The float32 loops at each level against the NumPy reference (float64),
    with the refined 1/sqrt: equal to float32 rounding."""
    use(level, best)
    l1 = 0.001 if optimizer == "ftrl" else 0.0
    models, rows, labels, order = problem("ffm", "binary", 30 + k, k=k)
    state = ref.init_state(models, optimizer, eta=0.05, l1=l1, l2_factors=0.01)
    B, L, F, R, kp = to_layout(models, state, optimizer, np.float32)
    expected = [mdl.copy() for mdl in models]
    ref.train_matrix(expected, rows, labels, order, task="binary", optimizer=optimizer, eta=0.05, l1=l1,
                     l2_factors=0.01)
    indptr, fields, features, values = csr(rows)
    train_epoch("ffm", optimizer, "binary", B, L, F, R, 20, 4, kp, 1, indptr, fields, features, values,
                labels.astype(np.float32), np.zeros(0, np.float32), order.astype(np.int64), 0.05, l1=l1,
                l2_factors=0.01, total_steps=len(rows), k=k, exact_rsqrt=True)
    got = from_layout(models, B, L, F, R, kp)
    np.testing.assert_allclose(got[0].factors, expected[0].factors, rtol=2e-4, atol=2e-5)
    assert not np.allclose(expected[0].factors, models[0].factors, atol=1e-4)


@pytest.mark.parametrize("level", WIDE)
@pytest.mark.parametrize("k", (4, 8, 16))
def test_ffm_scoring_equals_sse_bit_for_bit(best, level, k):
    """Scoring alone (fm predict's and validation's loop) on a trained model,
    several threads included: the same scores at every level."""
    use("sse", best)
    F, _, _ = train_ffm(k, "adagrad", False, epochs=1)
    kp = padded_k(k)
    indptr, fields, features, values, labels, n, m = mixed_rows(99, kp, n_rows=500)
    out = {}
    for lv in ("sse", level):
        use(lv, best)
        for threads in (1, 2):
            s = np.empty(labels.size)
            score_rows("ffm", np.zeros(2, np.float32), np.zeros(2 * n, np.float32), F, np.zeros(0, np.float32),
                       n, m, kp, 1, indptr, fields, features, values, s, False, False, True, threads)
            out[lv, threads] = s
    for threads in (1, 2):
        np.testing.assert_array_equal(out[level, threads], out["sse", threads])


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("simd")
    rng = np.random.default_rng(11)
    lines = []
    for r in range(400):
        y = int(rng.random() < 0.3)
        ents = [f"{f}:{rng.integers(0, 30)}:{1 if r % 2 else round(float(rng.uniform(0.2, 2)), 3)}"
                for f in range(6)]
        lines.append(f"{y} " + " ".join(ents))
    (d / "tr.ffm").write_text("\n".join(lines[:300]) + "\n")
    (d / "va.ffm").write_text("\n".join(lines[300:]) + "\n")
    return d


@pytest.mark.parametrize("model, k", [("ffm", 4), ("ffm", 8), ("ffm", 16), ("fm", 8), ("fwfm", 8)])
def test_fm_train_and_predict_are_equal_across_levels(best, small_data, tmp_path, model, k):
    """`fm train` (one thread) writes the same parameters and optimizer state
    and `fm predict` the same probabilities at every level this CPU has; the
    model's training metadata names the level."""
    levels = [lv for lv in ("sse",) + WIDE if _kernels.set_simd(lv) == lv]
    _kernels.set_simd(best)
    if len(levels) < 2:
        pytest.skip("this CPU has only the SSE level")
    outs = {}
    for lv in levels:
        _kernels.set_simd(lv)
        mfile, pfile = tmp_path / f"{lv}.fm", tmp_path / f"{lv}.txt"
        ok(invoke("train", small_data / "tr.ffm", "--model", model, "-k", k, "-t", 2, "-s", 1, "--seed", 3,
                  "-o", mfile))
        ok(invoke("predict", mfile, small_data / "va.ffm", "-o", pfile, "-s", 1))
        mdl = load_model(mfile, mmap=False)
        assert mdl.meta["training"]["simd"] == lv
        outs[lv] = {**mdl.params, **{f"state.{n}": a for n, a in mdl.state.items()}}, pfile.read_text()
    for lv in levels[1:]:
        assert outs[lv][0].keys() == outs["sse"][0].keys()
        for name, a in outs["sse"][0].items():
            np.testing.assert_array_equal(outs[lv][0][name], a, err_msg=f"{lv} {name}")
        assert outs[lv][1] == outs["sse"][1], lv
    assert len(outs["sse"][1].split()) == 100


def test_simd_benchmark_trains_the_same_model_at_every_level(small_data, tmp_path):
    """benchmarks/simd_levels.py times every level on the same slices; the
    levels train the same model, so their validation loglosses are equal."""
    script = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "simd_levels.py")
    out = tmp_path / "levels.json"
    subprocess.run([sys.executable, script, "--train", str(small_data / "tr.ffm"), "--valid",
                    str(small_data / "va.ffm"), "-k", "8", "--levels", "sse,avx,avx512", "--slice-rows", "64",
                    "--score-repeat", "2", "--json", str(out)], check=True, capture_output=True, text=True)
    doc = json.loads(out.read_text())
    assert [lv["level"] for lv in doc["levels"]] == ["sse", "avx", "avx512"]
    assert doc["rows"] == 300
    for lv in doc["levels"]:
        assert len(lv["train_rows_per_s"]) == 5 and min(lv["train_rows_per_s"]) > 0
        assert len(lv["score_rows_per_s"]) == 2
        assert lv["va_logloss"] == doc["levels"][0]["va_logloss"]
    assert 0 < doc["levels"][0]["va_logloss"] < 1


@pytest.mark.parametrize("given, expected", [(None, "10000"), ("123", "123")])
def test_openmp_threads_spin_briefly_unless_the_environment_says(given, expected):
    # set before the compiled core loads GNU OpenMP, which reads it then;
    # a value the user set is kept
    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    if given is not None:
        env["GOMP_SPINCOUNT"] = given
    out = subprocess.run([sys.executable, "-c", "import os, fmcli._core; print(os.environ['GOMP_SPINCOUNT'])"],
                         env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == expected
