"""The GPU backend (fmcli.gpu).

Without a device:
- the host logic (layout arrays, launch geometry, exact-mode slot plan and
  sort) is checked with NumPy as the array module, against tests/reference.py;
- the kernels themselves run through fmcli.gpu.emulate (the CUDA source
  compiled for the CPU with a SIMT emulation): exact mode against the
  reference's mini-batch training, per-row mode with one warp against its
  per-row training, scores against the CPU core, and `fm train --device cuda`
  end to end;
- nvcc compiles every kernel instantiation (skipped without nvcc);
- --device cuda fails with one clear line, auto falls back to the CPU.

Tests marked `gpu` need CuPy and a CUDA device and are skipped otherwise.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import reference as ref
from fmcli._core import _kernels
from fmcli.cli import cli
from fmcli.config import Config
from fmcli.data.batch import Batch
from fmcli.errors import ConfigError, DeviceError
from fmcli.gpu import device as gpu_device
from fmcli.gpu import emulate, layout, plan
from fmcli.gpu import state as gpu_state
from fmcli.gpu.state import GpuScorer, GpuState
from fmcli.model import load_model, padded_k
from fmcli.predict import Scorer, make_scorer
from fmcli.cpu import CpuBackend as TrainState


def train_pass(backend, batch, order, weights, step0, total_steps):
    """One pass of a backend over `order`, the run being total_steps long."""
    backend.total_steps = total_steps
    return backend.train_slice(batch, order, weights, step0)

KINDS = ("lr", "fm", "ffm", "fwfm")
TASKS = ("binary", "regression", "multiclass")
OPTIMIZERS = ("sgd", "adagrad", "adam", "ftrl")
SLOTS = {"sgd": (), "adagrad": ("G",), "adam": ("m", "v"), "ftrl": ("z", "n")}
ALL_CELLS = [(k, t, o) for k in KINDS for t in TASKS for o in OPTIMIZERS]
# every kind, task and optimizer at least once per mode in the default run; all cells with -m slow
FAST_EXACT = [(KINDS[i], TASKS[i % 3], OPTIMIZERS[i]) for i in range(4)]
FAST_ROWS = [(KINDS[i], TASKS[(i + 1) % 3], OPTIMIZERS[(i + 2) % 4]) for i in range(4)]
# kp = 4 (a lane per item), 12 (groups of 4 lanes, one without a chunk),
# 132 (whole-warp groups, two chunks on lane 0)
EMULATED = [(np.float64, 4), (np.float64, 12), (np.float64, 132), (np.float32, 4)]


# ---------------------------------------------------------------------------
# Problems in the reference's terms, and their GPU layout


def distinct_rows(rng, n_rows, n_features, n_fields, max_nnz):
    """libffm-like rows: distinct fields and distinct features within a row."""
    rows = []
    for _ in range(n_rows):
        nnz = int(rng.integers(1, max_nnz + 1))
        rows.append(ref.make_row(rng.choice(n_fields, nnz, replace=False),
                                 rng.choice(n_features, nnz, replace=False),
                                 rng.uniform(0.1, 2.0, nnz).astype(np.float32)))
    return rows


def problem(kind, task, seed, *, n_rows=24, k=3, distinct=False, n_classes=3):
    rng = np.random.default_rng(seed)
    n_features, n_fields = 20, 4
    C = n_classes if task == "multiclass" else 1
    models = [ref.RefModel.random(kind, n_features, n_fields, k, rng, scale=0.3) for _ in range(C)]
    if distinct:
        rows = distinct_rows(rng, n_rows, n_features, n_fields, 4)
    else:
        rows = [ref.make_row(r.fields, r.features, r.values.astype(np.float32))
                for r in ref.random_rows(rng, n_rows, n_features, n_fields, max_nnz=5)]
    if task == "binary":
        labels = rng.integers(0, 2, n_rows).astype(np.float64)
    elif task == "regression":
        labels = rng.normal(0, 1.5, n_rows).astype(np.float32).astype(np.float64)
    else:
        labels = rng.integers(0, C, n_rows).astype(np.float64)
    return models, rows, labels, rng.permutation(n_rows)


def to_arrays(models, state, optimizer):
    """Reference models and optimizer state -> HostParams-shaped B, L, F, R (float64)."""
    slots = SLOTS[optimizer]
    w = 1 + len(slots)
    kp = padded_k(models[0].k)
    Bs, Ls, Fs, Rs = [], [], [], []
    for c, m in enumerate(models):
        cs = state["classes"][c]
        B = np.zeros((1, w))
        L = np.zeros((m.n_features, w))
        B[0, 0], L[:, 0] = m.bias, m.linear
        for s, name in enumerate(slots, start=1):
            B[0, s], L[:, s] = cs[name]["bias"], cs[name]["linear"]
        blocks = np.zeros((0, m.k)) if m.factors is None else m.factors.reshape(-1, m.k)
        F = np.zeros((blocks.shape[0], w * kp))
        if optimizer == "adagrad":
            F[:, kp:] = 1.0
        F[:, : m.k] = blocks
        for s, name in enumerate(slots, start=1):
            if m.factors is not None:
                F[:, s * kp : s * kp + m.k] = cs[name]["factors"].reshape(-1, m.k)
        R = np.zeros((m.n_fields ** 2 if m.kind == "fwfm" else 0, w))
        if m.kind == "fwfm":
            R[:, 0] = m.field_weights.reshape(-1)
            for s, name in enumerate(slots, start=1):
                R[:, s] = cs[name]["field_weights"].reshape(-1)
        Bs.append(B), Ls.append(L), Fs.append(F), Rs.append(R)
    return tuple(np.concatenate(p) for p in (Bs, Ls, Fs, Rs))


def from_arrays(models, arrays):
    B, L, F, R = arrays
    C = len(models)
    out = []
    for c, m in enumerate(models):
        got = m.copy()
        got.bias = float(B[c, 0])
        got.linear = L.reshape(C, m.n_features, -1)[c, :, 0].astype(np.float64)
        if m.factors is not None:
            got.factors = F.reshape(C, -1, F.shape[1])[c, :, : m.k].astype(np.float64).reshape(m.factors.shape)
        if m.kind == "fwfm":
            got.field_weights = R.reshape(C, -1, R.shape[1])[c, :, 0].astype(np.float64).reshape(
                m.n_fields, m.n_fields)
        out.append(got)
    return out


def as_batch(rows, labels):
    indptr = np.zeros(len(rows) + 1, np.int64)
    indptr[1:] = np.cumsum([len(r.features) for r in rows])
    return Batch(labels=np.asarray(labels, np.float32), indptr=indptr,
                 fields=np.concatenate([r.fields for r in rows]).astype(np.int32),
                 features=np.concatenate([r.features for r in rows]).astype(np.int32),
                 values=np.concatenate([r.values for r in rows]).astype(np.float32))


def config_for(kind, task, optimizer, *, k, batch_size, eta, dtype="float64", **hp):
    return Config(
        model=kind, task=task, optimizer=optimizer, k=k, batch_size=batch_size, dtype=dtype, l2=0.0,
        l2_bias=hp.get("l2_bias", 0.0), l2_linear=hp.get("l2_linear", 0.0),
        l2_factors=hp.get("l2_factors", 0.0), l1=hp.get("l1", 0.0), clip_norm=hp.get("clip_norm", 0.0),
        label_smoothing=hp.get("label_smoothing", 0.0), lr_schedule=hp.get("schedule", "constant"),
        warmup_steps=hp.get("warmup", 0),
        **({"ftrl_alpha": eta} if optimizer == "ftrl" else {"learning_rate": eta}))


def gpu_run(backend, kind, task, optimizer, *, batch_size, epochs=2, eta=0.05, k=3, seed=0,
            distinct=False, weights=None, dtype="float64", **hp):
    """Train one problem with GpuState on `backend` and with the reference."""
    models, rows, labels, order = problem(kind, task, seed, k=k, distinct=distinct)
    reg = {n: hp.get(n, 0.0) for n in ("l1", "l2_bias", "l2_linear", "l2_factors")}
    state = ref.init_state(models, optimizer, eta=eta, **reg)
    arrays = to_arrays(models, state, optimizer)
    expected = [m.copy() for m in models]
    _, ref_losses = ref.train_matrix(expected, rows, labels, order, task=task, optimizer=optimizer,
                                     eta=eta, epochs=epochs, weights=weights, batch_size=batch_size, **hp)
    cfg = config_for(kind, task, optimizer, k=k, batch_size=batch_size, eta=eta, dtype=dtype, **hp)
    classes = [str(c) for c in range(len(models))] if task == "multiclass" else None
    gs = GpuState(cfg, 20, 4, np.random.default_rng(1), task, classes, backend=backend)
    gs.restore(arrays)
    batch = as_batch(rows, labels)
    w = None if weights is None else np.asarray(weights, np.float32)
    steps = len(rows) if batch_size == 1 else -(-len(rows) // batch_size)
    losses = []
    for epoch in range(epochs):
        loss, wsum, bad, first = train_pass(gs, batch, order.astype(np.int64), w, epoch * steps,
                                                epochs * steps)
        assert (bad, first) == (0, -1)
        losses.append(loss / wsum)
    return from_arrays(models, gs.arrays()), expected, losses, ref_losses


def assert_same(got, expected, rtol=1e-9, atol=1e-12):
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g.bias, e.bias, rtol=rtol, atol=atol)
        np.testing.assert_allclose(g.linear, e.linear, rtol=rtol, atol=atol)
        if e.factors is not None:
            np.testing.assert_allclose(g.factors, e.factors, rtol=rtol, atol=atol)
        if e.field_weights is not None:
            np.testing.assert_allclose(np.triu(g.field_weights), np.triu(e.field_weights), rtol=rtol, atol=atol)


def hp_for(optimizer):
    return {"l2_linear": 0.01, "l2_factors": 0.02, "l2_bias": 0.005,
            **({"l1": 0.001} if optimizer == "ftrl" else {})}


# ---------------------------------------------------------------------------
# Host logic (NumPy only)


def test_layout_names_match_the_kernel_source():
    src = layout.load_source()
    assert [n.lower() for n in layout.parse_enum(src, "SH_KIND")] == [
        "sh_" + f for f in layout.SHAPE_FIELDS] + ["sh_size"]
    assert [n.lower() for n in layout.parse_enum(src, "HP_ETA")] == [
        "hp_" + f for f in layout.HYPER_FIELDS] + ["hp_size"]
    assert layout.parse_enum(src, "KIND_LR") == ["KIND_" + k.upper() for k in layout.KINDS]
    assert layout.parse_enum(src, "TASK_BINARY") == ["TASK_" + t.upper() for t in layout.TASKS]
    assert layout.parse_enum(src, "OPT_SGD") == ["OPT_" + o.upper() for o in layout.OPTIMIZERS]
    assert layout.parse_enum(src, "SCHED_CONSTANT") == ["SCHED_CONSTANT", "SCHED_LINEAR", "SCHED_COSINE",
                                                        "SCHED_INVSQRT"]
    assert layout.parse_enum(src, "ROW_NOT_RUN") == ["ROW_NOT_RUN", "ROW_OK", "ROW_SKIPPED", "ROW_BAD"]
    assert (layout.ROW_NOT_RUN, layout.ROW_OK, layout.ROW_SKIPPED, layout.ROW_BAD) == (0, 1, 2, 3)
    for kernel in layout.KERNELS:
        assert f"__global__ void {kernel}(" in src
    assert "#include" not in src and src.count("#define FM_DEVICE_CU") == 1


def test_codes_match_the_cpu_core():
    assert {k: layout.KINDS.index(k) for k in layout.KINDS} == _kernels.KIND_CODES
    assert {o: layout.OPTIMIZERS.index(o) for o in layout.OPTIMIZERS} == {
        o: code for o, code in _kernels.OPT_CODES.items() if o in layout.OPTIMIZERS}
    # the one optimizer only the CPU runs (its codes come after the shared ones)
    assert set(_kernels.OPT_CODES) - set(layout.OPTIMIZERS) == {"rowwise-adagrad"}
    assert _kernels.OPT_CODES["rowwise-adagrad"] == len(layout.OPTIMIZERS)
    assert {t: layout.TASKS.index(t) for t in layout.TASKS} == _kernels.TASK_CODES
    assert {s: layout.SCHEDULES.index(s) for s in layout.SCHEDULES} == _kernels.SCHEDULE_CODES


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_shape_array_describes_the_train_state_layout(kind, optimizer):
    cfg = Config(model=kind, optimizer=optimizer, task="multiclass", k=5)
    ts = TrainState(cfg, 7, 3, np.random.default_rng(0), "multiclass", ["a", "b", "c"])
    sh = dict(zip(layout.SHAPE_FIELDS, layout.shape_array(
        kind, "multiclass", optimizer, "constant", 3, 7, 3, ts.kp, ts.ns, use_bias=True,
        use_linear=True, normalize=True).tolist()))
    assert sh["kp"] == 8 and sh["nstate"] == _kernels.n_state(optimizer)
    assert ts.B.size == 3 * sh["cb"] and ts.L.size == 3 * sh["cl"]
    assert ts.F.size == 3 * sh["cf"] and ts.R.size == 3 * sh["cr"]
    assert ts.F.shape[1] == sh["fstride"] and ts.B.shape[1] == sh["lstride"]
    # one id per block: bias, linear weights, factor blocks, field-pair weights, class after class
    assert sh["n_ids"] == ts.B.shape[0] + ts.L.shape[0] + ts.F.shape[0] + ts.R.shape[0]
    assert sh["id_l"] - sh["id_b"] == ts.B.shape[0] and sh["id_f"] - sh["id_l"] == ts.L.shape[0]


def test_hyper_array_takes_the_config_values():
    cfg = Config(optimizer="adam", learning_rate=0.01, l2=0.5, l2_bias=0.25, clip_norm=2.0,
                 label_smoothing=0.1, warmup_steps=7, lr_schedule="cosine")
    hp = dict(zip(layout.HYPER_FIELDS, layout.hyper_array(cfg).tolist()))
    assert hp == {"eta": 0.01, "l2_bias": 0.25, "l2_linear": 0.5, "l2_factors": 0.5, "l1": 0.0,
                  "beta1": 0.9, "beta2": 0.999, "adam_eps": 1e-8, "ftrl_beta": 1.0, "clip": 2.0,
                  "smoothing": 0.1, "warmup": 7.0}
    assert layout.hyper_array(Config(optimizer="ftrl", ftrl_alpha=0.3))[0] == 0.3


@pytest.mark.parametrize("kp", [4, 8, 12, 16, 20, 36, 64, 128, 132, 256, 1024])
def test_lane_groups_cover_every_width(kp):
    g = layout.group_size(kp)
    assert g & (g - 1) == 0 and 1 <= g <= 32
    assert g >= min(kp // 4, 32) and (g == 1 or g // 2 < kp // 4)
    chunks = -(-(kp // 4) // g)
    assert chunks * g >= kp // 4 and plan.vector_items_per_warp(kp) * g == 32
    assert layout.kernel_name("fm_train_rows", np.float32, kp) == f"fm_train_rows<float,{kp}>"


def test_launch_geometry():
    for n, sm in [(1, 132), (7, 132), (10**6, 132), (10**6, 1), (0, 4)]:
        g = plan.row_launch(n, sm)
        assert g.grid >= 1 and g.block % 32 == 0 and 1 <= g.warps <= max(n, 1) + 3
        assert g.warps <= max(sm, 1) * 8 * 4
    assert plan.row_launch(10**6, 132, max_warps=5).warps <= 8
    assert plan.row_launch(10**6, 132, warps_per_block=1, blocks_per_sm=1).warps == 132
    g = plan.item_launch(1000, 8, 132)
    assert g.warps * 8 >= 1000 and g.block == 128
    assert plan.item_launch(0, 32, 4).grid == 1
    assert plan.item_launch(10**9, 1, 2).warps <= 2 * 32 * 4


def test_pack_rows_converts_and_pads():
    b = Batch(labels=np.array([1, 0], np.float64), indptr=np.array([0, 2, 2], np.int32),
              fields=np.array([0, 1]), features=np.array([3, 4]), values=np.array([1.0, 2.0]))
    rows = plan.pack_rows(np, b)
    assert rows.indptr.dtype == np.int64 and rows.fields.dtype == np.int32 and rows.values.dtype == np.float32
    assert rows.labels.dtype == np.float32 and rows.max_nnz == 2 and rows.n_rows == 2
    empty = plan.pack_rows(np, Batch.empty())
    assert empty.n_rows == 0 and empty.features.size == 1 and empty.max_nnz == 0


@pytest.mark.parametrize("kind", KINDS)
def test_exact_plan_gives_each_row_its_slots(kind):
    rng = np.random.default_rng(3)
    nnz = rng.integers(0, 7, 50)
    indptr = np.concatenate([[0], np.cumsum(nnz)]).astype(np.int64)
    order = rng.permutation(50).astype(np.int64)
    pl = plan.exact_plan(np, np.asarray, indptr, order, 8, kind, 3, True, True)
    n = nnz[order]
    p = n * (n - 1) // 2
    scalar = 3 * (1 + n + (p if kind == "fwfm" else 0))
    vector = 3 * {"lr": 0 * n, "fm": n, "fwfm": n, "ffm": 2 * p}[kind]
    assert np.array_equal(np.diff(pl.sofs), scalar) and np.array_equal(np.diff(pl.vofs), vector)
    assert pl.n_batches == 7 and list(pl.bounds) == [0, 8, 16, 24, 32, 40, 48, 50]
    assert pl.scalar_slots(6) == scalar[48:].sum() and pl.max_vector == max(
        vector[i:i + 8].sum() for i in range(0, 50, 8))


def test_sort_contributions_groups_blocks_in_slot_order():
    rng = np.random.default_rng(5)
    gid = rng.integers(0, 9, 400).astype(np.int64)
    gid[rng.random(400) < 0.2] = 9                     # dead slots (n_ids = 9)
    vals = rng.normal(size=400)
    for n_ids in (9, 2**61):                            # the fast key and the lexsort fallback
        g = gid.copy()
        g[g == 9] = n_ids
        perm, sg = plan.sort_contributions(np, g, n_ids)
        assert np.array_equal(sg, g[perm]) and np.all(np.diff(sg) >= 0)
        for b in range(9):
            assert np.array_equal(perm[sg == b], np.flatnonzero(g == b))   # slot order within a block
        sums = plan.segment_sums(perm, sg, vals, n_ids)
        assert sorted(sums) == sorted(set(range(9)) & set(g.tolist()))
        for b, total in sums.items():
            expect = 0.0
            for v in vals[g == b]:                      # front to back, as the kernels add
                expect = expect + v
            assert total == expect


@pytest.mark.parametrize("kind", ["fm", "ffm", "fwfm"])
def test_host_reduction_equals_reference_minibatch_gradients(kind):
    """Contributions emitted per row in the kernels' slot layout, sorted and
    summed by the exact-mode plan, are the reference's mini-batch sums."""
    models, rows, labels, order = problem(kind, "binary", 11, n_rows=9)
    m = models[0]
    kappas = [ref.task_dloss("binary", labels[i], [ref.score(m, rows[i])])[0] for i in order]
    batch_rows = [rows[i] for i in order]
    expect = ref._batch_data_gradients(m, batch_rows, kappas)
    n_blocks = layout.n_blocks(kind, m.n_features, m.n_fields)
    gids, vals = [], []
    for row, kappa in zip(batch_rows, kappas):
        xt = ref.normalized_values(m, row)
        j, f, n = row.features, row.fields, len(row.features)
        if kind == "ffm":
            for i in range(n):
                for l in range(i + 1, n):
                    kv = kappa * xt[i] * xt[l]
                    gids += [j[i] * m.n_fields + f[l], j[l] * m.n_fields + f[i]]
                    vals += [kv * m.factors[j[l], f[i]], kv * m.factors[j[i], f[l]]]
        else:
            for i in range(n):
                s = sum((m.field_weights[ref.field_pair(f[i], f[l])] if kind == "fwfm" else 1.0)
                        * m.factors[j[l]] * xt[l] for l in range(n) if l != i) + np.zeros(m.k)
                gids.append(j[i])
                vals.append(kappa * xt[i] * s)
    perm, sg = plan.sort_contributions(np, np.array(gids, np.int64), n_blocks)
    sums = plan.segment_sums(perm, sg, np.array(vals), n_blocks)
    blocks = {(b // m.n_fields, b % m.n_fields) if kind == "ffm" else b: v for b, v in sums.items()}
    assert set(blocks) == set(expect["factors"])
    for b, v in blocks.items():
        np.testing.assert_allclose(v, expect["factors"][b], rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------
# The kernels, emulated on the CPU


@pytest.fixture(scope="module")
def emu():
    """One warp: per-row training is sequential (the reference's order)."""
    ok, why = emulate.available()
    if not ok:
        pytest.skip(why)
    return emulate.EmulatedBackend(instances=EMULATED)


@pytest.fixture(scope="module")
def emu_warps(emu):
    """Several blocks of several warps (grid-stride loops, Hogwild between warps)."""
    return emulate.EmulatedBackend(sm_count=2, blocks_per_sm=2, warps_per_block=2, instances=EMULATED)


def _exact_cell(backend, kind, task, optimizer):
    got, expected, losses, ref_losses = gpu_run(backend, kind, task, optimizer, batch_size=5,
                                                seed=len(kind) * 31 + len(task) * 7 + len(optimizer),
                                                **hp_for(optimizer))
    assert_same(got, expected)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-9)


def _row_cell(backend, kind, task, optimizer):
    got, expected, losses, ref_losses = gpu_run(backend, kind, task, optimizer, batch_size=1,
                                                seed=len(kind) * 13 + len(task) + len(optimizer),
                                                **hp_for(optimizer))
    assert_same(got, expected)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-9)


@pytest.mark.parametrize("kind,task,optimizer", FAST_EXACT)
def test_emulated_exact_mode_matches_reference(emu_warps, kind, task, optimizer):
    _exact_cell(emu_warps, kind, task, optimizer)


@pytest.mark.slow
@pytest.mark.parametrize("kind,task,optimizer", [c for c in ALL_CELLS if c not in FAST_EXACT])
def test_emulated_exact_mode_matches_reference_everywhere(emu_warps, kind, task, optimizer):
    _exact_cell(emu_warps, kind, task, optimizer)


@pytest.mark.parametrize("kind,task,optimizer", FAST_ROWS)
def test_emulated_per_row_mode_with_one_warp_matches_reference(emu, kind, task, optimizer):
    _row_cell(emu, kind, task, optimizer)


@pytest.mark.slow
@pytest.mark.parametrize("kind,task,optimizer", [c for c in ALL_CELLS if c not in FAST_ROWS])
def test_emulated_per_row_mode_with_one_warp_matches_reference_everywhere(emu, kind, task, optimizer):
    _row_cell(emu, kind, task, optimizer)


CONTROLS = [
    {"clip_norm": 0.05, "optimizer": "adam"},
    {"label_smoothing": 0.1, "optimizer": "sgd"},
    {"schedule": "cosine", "warmup": 7, "optimizer": "adam"},
    {"schedule": "inverse-sqrt", "warmup": 3, "optimizer": "adagrad"},
    {"schedule": "linear", "optimizer": "sgd", "weights": True},
]
CONTROL_CASES = [(i, b, kind) for i in range(len(CONTROLS)) for b in (1, 4) for kind in KINDS]
FAST_CONTROL_CASES = [(i, 1 + 3 * (i % 2), KINDS[i % 4]) for i in range(len(CONTROLS))]


def _controls_case(backend, i, batch_size, kind):
    controls = dict(CONTROLS[i])
    optimizer = controls.pop("optimizer")
    if controls.pop("weights", False):
        weights = np.random.default_rng(3).uniform(0, 3, 24).astype(np.float32).astype(np.float64)
        weights[::5] = 0
        controls["weights"] = weights
    got, expected, losses, ref_losses = gpu_run(backend, kind, "binary", optimizer, batch_size=batch_size,
                                                seed=9, eta=0.2, l2_factors=0.01, **controls)
    assert_same(got, expected)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-9)


@pytest.mark.parametrize("i,batch_size,kind", FAST_CONTROL_CASES)
def test_emulated_training_controls_match_reference(emu, i, batch_size, kind):
    _controls_case(emu, i, batch_size, kind)


@pytest.mark.slow
@pytest.mark.parametrize("i,batch_size,kind", [c for c in CONTROL_CASES if c not in FAST_CONTROL_CASES])
def test_emulated_training_controls_match_reference_everywhere(emu, i, batch_size, kind):
    _controls_case(emu, i, batch_size, kind)


@pytest.mark.parametrize("k", [11, 130])
@pytest.mark.parametrize("kind", ["fm", "ffm", "fwfm"])
def test_emulated_wide_factors_match_reference(emu, k, kind):
    """Groups of several lanes per item (and lanes without a chunk)."""
    for batch_size in (1, 4):
        got, expected, _, _ = gpu_run(emu, kind, "binary", "adam", batch_size=batch_size, k=k, seed=4,
                                      distinct=True, clip_norm=0.3, l2_factors=0.01, epochs=1)
        assert_same(got, expected)


def test_emulated_float32_matches_reference_to_float32_precision(emu):
    for kind in ("fm", "ffm"):
        for batch_size in (1, 4):
            got, expected, _, _ = gpu_run(emu, kind, "binary", "adagrad", batch_size=batch_size,
                                          dtype="float32", l2_factors=0.01)
            assert_same(got, expected, rtol=1e-4, atol=1e-5)


def _nonfinite_state(backend, batch_size, skip):
    models, rows, labels, order = problem("fm", "binary", 1)
    cfg = Config(model="fm", k=3, dtype="float64", batch_size=batch_size, normalize=False, optimizer="sgd",
                 on_nonfinite="skip" if skip else "stop")
    gs = GpuState(cfg, 20, 4, np.random.default_rng(0), backend=backend)
    gs.restore(to_arrays(models, ref.init_state(models, "sgd"), "sgd"))
    batch = as_batch(rows, labels)
    batch.values[batch.indptr[3]] = np.inf      # row 3's score is not finite
    return gs, batch


@pytest.mark.parametrize("batch_size", [1, 5])
def test_emulated_nonfinite_rows_stop_or_are_skipped(emu, batch_size):
    gs, batch = _nonfinite_state(emu, batch_size, skip=False)
    loss, wsum, bad, first = train_pass(gs, batch, np.arange(24, dtype=np.int64), None, 0, 24)
    assert (bad, first) == (0, 3)
    gs, batch = _nonfinite_state(emu, batch_size, skip=True)
    b0 = gs.arrays()[0].copy()
    loss, wsum, bad, first = train_pass(gs, batch, np.arange(24, dtype=np.int64), None, 0, 24)
    assert (bad, first, wsum) == (1, -1, 23.0) and np.isfinite(loss)
    assert not np.array_equal(gs.arrays()[0], b0) and gs.all_finite()


def test_emulated_exact_mode_stops_before_the_bad_batch(emu):
    gs, batch = _nonfinite_state(emu, 5, skip=False)
    order = np.r_[5:24, 0:5].astype(np.int64)       # row 3 is in the last batch
    cpu = TrainState(gs.cfg, 20, 4, np.random.default_rng(0))
    cpu.restore(gs.arrays())
    out = train_pass(cpu, batch, order, None, 0, 5)
    got = train_pass(gs, batch, order, None, 0, 5)
    assert got[2:] == out[2:] == (0, 24 - 5 + 3)
    for a, b in zip(gs.arrays(), cpu.arrays()):
        np.testing.assert_allclose(a, b, rtol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_emulated_scores_match_the_cpu(emu_warps, kind):
    task = "multiclass" if kind == "fm" else "binary"
    cfg = Config(model=kind, task=task, k=3, dtype="float64")
    classes = ["x", "y", "z"] if task == "multiclass" else None
    models, rows, labels, _ = problem(kind, task, 2)
    batch = as_batch(rows, labels)
    batch.features[::7] = 25                  # ids outside the model add nothing
    gs = GpuState(cfg, 20, 4, np.random.default_rng(0), task, classes, backend=emu_warps)
    ts = TrainState(cfg, 20, 4, np.random.default_rng(0), task, classes)
    np.testing.assert_allclose(gs.scores(batch), ts.scores(batch, 1), rtol=1e-12)
    model = ts.to_model({})
    np.testing.assert_allclose(GpuScorer(model, backend=emu_warps).scores(batch),
                               Scorer(model).scores(batch), rtol=1e-5, atol=1e-6)


def test_emulated_hogwild_warps_train_about_as_well_as_the_cpu(emu_warps):
    """Warps race on shared weights like CPU threads: not the same weights,
    about the same loss."""
    rng = np.random.default_rng(8)
    rows = distinct_rows(rng, 200, 20, 4, 4)
    w_true = rng.normal(0, 1, 20)
    labels = np.array([float(w_true[r.features].sum() > 0) for r in rows])
    batch = as_batch(rows, labels)
    cfg = Config(model="ffm", k=4, optimizer="adagrad", learning_rate=0.3, dtype="float32")
    losses = []
    for st in (TrainState(cfg, 20, 4, np.random.default_rng(0)),
               GpuState(cfg, 20, 4, np.random.default_rng(0), backend=emu_warps)):
        order_rng = np.random.default_rng(1)
        for epoch in range(4):
            train_pass(st, batch, order_rng.permutation(200).astype(np.int64), None, epoch * 200, 800)
        s = st.scores(batch, 1)
        losses.append(float(np.mean(np.logaddexp(0, -(2 * labels - 1) * s))))
    assert losses[0] < np.log(2) - 0.1
    assert losses[1] == pytest.approx(losses[0], rel=0.1)


def test_state_interface_round_trips(emu):
    cfg = Config(model="fwfm", k=3, optimizer="ftrl", dtype="float64")
    gs = GpuState(cfg, 20, 4, np.random.default_rng(0), backend=emu)
    ts = TrainState(cfg, 20, 4, np.random.default_rng(0))
    for a, b in zip(gs.arrays(), ts.arrays()):    # same initial draws, same layout
        assert a.shape == b.shape and np.array_equal(a, b)
    snap = gs.snapshot()
    gs.restore(tuple(np.full_like(a, 7.0) for a in snap))
    assert gs.arrays()[1][0, 0] == 7.0
    gs.restore(snap)
    assert gs.all_finite() and np.array_equal(gs.arrays()[2], ts.arrays()[2])
    gs.restore(tuple(np.full_like(a, np.nan) for a in snap))
    assert not gs.all_finite()
    gs.restore(snap)
    m_gpu, m_cpu = gs.to_model({"x": 1}), ts.to_model({"x": 1})
    for name in m_cpu.params:
        assert np.array_equal(m_gpu.params[name], m_cpu.params[name])
    for name in m_cpu.state:
        assert np.array_equal(m_gpu.state[name], m_cpu.state[name])


def test_emulation_refuses_mismatched_arguments(emu):
    kernels = emu.module(np.float64, 4)
    sh = np.zeros(len(layout.SHAPE_FIELDS), np.int64)
    args = [sh, np.zeros(4, np.float32), np.zeros(4), np.zeros(4), np.zeros(4), np.zeros(2, np.int64),
            np.zeros(1, np.int32), np.zeros(1, np.int32), np.zeros(1, np.float32), np.int64(0), np.zeros(1)]
    with pytest.raises(emulate.EmulationError, match="float32 array for a pointer to floating values of 8"):
        kernels["fm_score_rows"]((1,), (32,), tuple(args))
    args[1] = np.zeros(4)
    args[9] = 0
    with pytest.raises(emulate.EmulationError, match="give NumPy arrays and NumPy scalars"):
        kernels["fm_score_rows"]((1,), (32,), tuple(args))


def test_emulation_refuses_divergent_warp_calls(emu):
    src = ("__global__ void bad(int* out) { if (threadIdx.x < 16) out[0] = __shfl_sync(0xffffffffu, 1, 0); }\n"
           "__global__ void good(int* out) { int v = __shfl_xor_sync(0xffffffffu, (int)threadIdx.x, 1);"
           " out[threadIdx.x] = v; }\n")
    import ctypes

    lib = ctypes.CDLL(emulate.build(["bad", "good"], src))
    bad, good = emulate.EmulatedKernel(lib, 0, "bad"), emulate.EmulatedKernel(lib, 1, "good")
    out = np.zeros(64, np.int32)
    good((2,), (32,), (out,))
    assert out[:32].tolist() == [i ^ 1 for i in range(32)]
    with pytest.raises(emulate.EmulationError, match="not every lane"):
        bad((1,), (32,), (out,))


# ---------------------------------------------------------------------------
# The CUDA source compiles (nvcc; NVRTC compiles it the same way at run time)

NVCC_INSTANCES = [(d, k) for d in (np.float32, np.float64) for k in (4, 8, 16)]
# widths whose lane groups are not a power of two wide, or span several chunks
NVCC_MORE = [(d, k) for d in (np.float32, np.float64) for k in (12, 132, 1024)]


def _nvcc_source(tmp_path, instances):
    names = [n for d, k in instances for n in layout.kernel_names(d, k)]
    path = tmp_path / "fm_all.cu"
    path.write_text(layout.load_source() + "\nvoid* fm_instances[] = {\n"
                    + "".join(f"    (void*)&{n},\n" for n in names) + "};\n")
    return path


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_nvcc_compiles_every_kernel_instantiation(tmp_path):
    src = _nvcc_source(tmp_path, NVCC_INSTANCES)
    proc = subprocess.run(["nvcc", "--std=c++17", "-arch=sm_90", "-ptx", "-Xcicc", "-O0", str(src),
                           "-o", str(tmp_path / "fm.ptx")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    ptx = (tmp_path / "fm.ptx").read_text()
    assert ptx.count(".entry") == len(NVCC_INSTANCES) * len(layout.KERNELS)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_nvcc_builds_optimised_device_code(tmp_path):
    src = _nvcc_source(tmp_path, NVCC_INSTANCES + NVCC_MORE)
    proc = subprocess.run(["nvcc", "--std=c++17", "-arch=sm_90", "-c", "--resource-usage", str(src),
                           "-o", str(tmp_path / "fm.o")], capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr


def _find_nvrtc():
    import ctypes.util
    import glob

    found = ctypes.util.find_library("nvrtc")
    if found:
        return found
    for entry in sys.path:   # the nvidia-cuda-nvrtc-cu12 wheel
        hits = sorted(glob.glob(os.path.join(entry, "nvidia", "cuda_nvrtc", "lib", "libnvrtc.so*")))
        if hits:
            return hits[0]
    return None


@pytest.mark.slow
@pytest.mark.skipif(_find_nvrtc() is None, reason="libnvrtc is not installed")
@pytest.mark.parametrize("dtype,kp", [(np.float32, 4), (np.float64, 12)])
def test_nvrtc_compiles_the_source_as_cupy_does(dtype, kp):
    """NVRTC (what CuPy's RawModule runs) with the name expressions and options fmcli gives it."""
    import ctypes

    lib = ctypes.CDLL(_find_nvrtc())
    prog = ctypes.c_void_p()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), layout.load_source().encode(), b"fm_kernels.cu",
                                  0, None, None) == 0
    names = layout.kernel_names(dtype, kp)
    for name in names:
        assert lib.nvrtcAddNameExpression(prog, name.encode()) == 0
    opts = (ctypes.c_char_p * 2)(b"-std=c++17", b"--gpu-architecture=compute_90")
    rc = lib.nvrtcCompileProgram(prog, 2, opts)
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value + 1)
    lib.nvrtcGetProgramLog(prog, log)
    assert rc == 0, log.value.decode()
    for name in names:
        lowered = ctypes.c_char_p()
        assert lib.nvrtcGetLoweredName(prog, name.encode(), ctypes.byref(lowered)) == 0
        assert lowered.value.decode().startswith("_Z")


# ---------------------------------------------------------------------------
# Choosing the device


def write_ffm(path, n_rows, seed, n_fields=5, per_field=10):
    rng = np.random.default_rng(seed)
    w = np.random.default_rng(99).normal(0, 1.5, n_fields * per_field)
    feats = np.arange(n_fields) * per_field + rng.integers(0, per_field, size=(n_rows, n_fields))
    labels = (rng.random(n_rows) < 1 / (1 + np.exp(-w[feats].sum(1)))).astype(int)
    path.write_text("".join(f"{y} " + " ".join(f"{f}:{j}:1" for f, j in enumerate(r)) + "\n"
                            for y, r in zip(labels, feats)))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("gpudata")
    return {"train": write_ffm(d / "tr.ffm", 300, 1), "valid": write_ffm(d / "va.ffm", 100, 2)}


@pytest.fixture
def no_device(monkeypatch):
    monkeypatch.setattr(gpu_device, "probe", lambda: (False, "no CUDA device found"))


def fm(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="fm")


def test_device_cuda_without_a_device_is_one_clear_error(data, tmp_path, no_device):
    out = tmp_path / "m.fm"
    result = fm("train", "--device", "cuda", "-t", "1", "-o", out, data["train"])
    assert result.exit_code == 1 and DeviceError.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == ("fm: error: device cuda is not available: no CUDA device found; "
                         "--device auto falls back to the CPU")
    assert "Traceback" not in result.output and not out.exists()
    assert fm("train", "-t", "1", "-o", out, data["train"]).exit_code == 0
    result = fm("predict", "--device", "cuda", out, data["valid"])
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines()[-1].startswith("fm: error: device cuda is not available")


@pytest.mark.skipif(gpu_device.probe()[0], reason="a CUDA device is present")
def test_device_cuda_here_names_what_is_missing(data, tmp_path):
    result = fm("train", "--device", "cuda", "-t", "1", "-o", tmp_path / "m.fm", data["train"])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1].startswith("fm: error: device cuda is not available: ")
    with pytest.raises(DeviceError):
        gpu_device.resolve("cuda")


def test_device_auto_falls_back_to_the_cpu(data, tmp_path, no_device):
    out = tmp_path / "m.fm"
    result = fm("train", "--device", "auto", "-t", "2", "-p", data["valid"], "-o", out, data["train"])
    assert result.exit_code == 0, result.output
    assert "device auto: no CUDA device found; running on the CPU" in result.stderr
    model = load_model(out)
    assert model.meta["hyperparameters"]["device"] == "auto" and model.meta["training"]["device"] == "cpu"
    cpu = tmp_path / "cpu.fm"
    assert fm("train", "-t", "2", "-p", data["valid"], "-o", cpu, data["train"]).exit_code == 0
    assert np.array_equal(load_model(cpu).params["factors"], model.params["factors"])
    result = fm("predict", "--device", "auto", out, data["valid"])
    assert result.exit_code == 0 and "device auto: no CUDA device found; running on the CPU" in result.stderr
    assert result.stdout == fm("predict", out, data["valid"]).stdout


def test_device_is_validated():
    with pytest.raises(ConfigError, match="device must be one of cpu, cuda, auto"):
        Config(device="gpu")
    with pytest.raises(ConfigError):
        make_scorer(None, device="tpu")
    assert fm("train", "--device", "gpu", "x.ffm").exit_code == 2
    assert gpu_device.resolve("cpu") == "cpu"


def test_the_cpu_path_never_imports_the_gpu_backend(data, tmp_path):
    code = ("import sys; from click.testing import CliRunner; from fmcli.cli import cli; "
            f"r = CliRunner().invoke(cli, ['train', '-q', '-t', '1', '-o', {str(tmp_path / 'm.fm')!r}, "
            f"{str(data['train'])!r}]); assert r.exit_code == 0, r.output; "
            f"r = CliRunner().invoke(cli, ['predict', '-q', {str(tmp_path / 'm.fm')!r}, {str(data['valid'])!r}]); "
            "assert r.exit_code == 0, r.output; "
            "bad = [m for m in sys.modules if m.startswith(('fmcli.gpu', 'cupy'))]; assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_fm_train_device_cuda_end_to_end_on_the_emulation(data, tmp_path, monkeypatch, emu):
    """The whole command on the emulated device: the model file is the CPU's
    format, loads and predicts on the CPU as on the device."""
    monkeypatch.setattr(gpu_device, "probe", lambda: (True, "emulated device"))
    monkeypatch.setattr(gpu_state, "default_backend",
                        lambda: emulate.EmulatedBackend(sm_count=1, blocks_per_sm=2, warps_per_block=2,
                                                        instances=EMULATED))
    out = tmp_path / "gpu.fm"
    result = fm("train", "--device", "cuda", "-t", "2", "--auto-stop", "-p", data["valid"], "-o", out,
                data["train"])
    assert result.exit_code == 0, result.output
    assert "device: emulated device (CUDA)" in result.stderr
    model = load_model(out)
    assert model.meta["hyperparameters"]["device"] == "cuda" and model.meta["training"]["device"] == "cuda"
    assert model.meta["training"]["valid_logloss"] < 0.66
    on_cpu = fm("predict", "-q", out, data["valid"])
    on_gpu = fm("predict", "-q", "--device", "cuda", out, data["valid"])
    assert on_cpu.exit_code == on_gpu.exit_code == 0
    np.testing.assert_allclose(np.loadtxt(on_cpu.stdout.splitlines()),
                               np.loadtxt(on_gpu.stdout.splitlines()), rtol=2e-5, atol=1e-6)
    exact = tmp_path / "exact.fm"
    args = ["train", "-t", "1", "--batch-size", "16", "--optimizer", "adam", "-o"]
    assert fm(*args, exact, "--device", "cuda", data["train"]).exit_code == 0
    assert fm(*args, tmp_path / "cpu.fm", data["train"]).exit_code == 0
    np.testing.assert_allclose(load_model(exact).params["factors"],
                               load_model(tmp_path / "cpu.fm").params["factors"], rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------
# On a CUDA device (CuPy)


# (the `cuda` fixture is tests/conftest.py's)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,kp", NVCC_INSTANCES + NVCC_MORE)
def test_gpu_nvrtc_compiles_every_kernel(cuda, dtype, kp):
    assert set(cuda.module(dtype, kp)) == set(layout.KERNELS)


@pytest.mark.gpu
@pytest.mark.parametrize("kind,task,optimizer", ALL_CELLS)
def test_gpu_exact_mode_matches_reference(cuda, kind, task, optimizer):
    got, expected, losses, ref_losses = gpu_run(cuda, kind, task, optimizer, batch_size=5,
                                                **hp_for(optimizer))
    assert_same(got, expected, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("k", [3, 11, 130])
def test_gpu_exact_mode_matches_reference_at_every_width(cuda, kind, k):
    got, expected, _, _ = gpu_run(cuda, kind, "binary", "adam", batch_size=4, k=k, clip_norm=0.3,
                                  l2_factors=0.01)
    assert_same(got, expected, rtol=1e-6, atol=1e-9)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", KINDS)
def test_gpu_per_row_mode_is_close_to_the_cpu(cuda, kind):
    """Hogwild across warps: the validation loss of the CPU's per-row training."""
    rng = np.random.default_rng(8)
    n_rows, n_train = 50_000, 40_000
    rows = distinct_rows(rng, n_rows, 5000, 8, 8)
    w_true = rng.normal(0, 1, 5000)
    labels = np.array([float(w_true[r.features].sum() > 0) for r in rows])
    train, valid = as_batch(rows[:n_train], labels[:n_train]), as_batch(rows[n_train:], labels[n_train:])
    cfg = Config(model=kind, k=4, optimizer="adagrad", learning_rate=0.1)
    losses = []
    for st in (TrainState(cfg, 5000, 8, np.random.default_rng(0)),
               GpuState(cfg, 5000, 8, np.random.default_rng(0), backend=cuda)):
        order_rng = np.random.default_rng(1)
        for epoch in range(3):
            train_pass(st, train, order_rng.permutation(n_train).astype(np.int64), None, epoch * n_train,
                           3 * n_train)
        s = st.scores(valid, 1)
        losses.append(float(np.mean(np.logaddexp(0, -(2 * labels[n_train:] - 1) * s))))
    assert losses[0] < np.log(2) - 0.1
    assert losses[1] <= losses[0] * 1.05     # thousands of rows in flight at once cost little


@pytest.mark.gpu
@pytest.mark.parametrize("kind", KINDS)
def test_gpu_predictions_equal_the_cpu(cuda, kind):
    task = "multiclass" if kind == "fwfm" else "binary"
    classes = ["x", "y", "z"] if task == "multiclass" else None
    cfg = Config(model=kind, task=task, k=6)
    models, rows, labels, _ = problem(kind, task, 2, n_rows=500)
    batch = as_batch(rows, labels)
    model = TrainState(cfg, 20, 4, np.random.default_rng(0), task, classes).to_model({})
    np.testing.assert_allclose(GpuScorer(model, backend=cuda).scores(batch), Scorer(model).scores(batch),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
def test_gpu_fm_train_and_predict(cuda, data, tmp_path):
    out = tmp_path / "gpu.fm"
    result = fm("train", "--device", "cuda", "-t", "3", "-p", data["valid"], "-o", out, data["train"])
    assert result.exit_code == 0, result.output
    model = load_model(out)
    assert model.meta["training"]["device"] == "cuda"
    on_cpu = fm("predict", "-q", out, data["valid"])
    on_gpu = fm("predict", "-q", "--device", "cuda", out, data["valid"])
    np.testing.assert_allclose(np.loadtxt(on_cpu.stdout.splitlines()),
                               np.loadtxt(on_gpu.stdout.splitlines()), rtol=2e-5, atol=1e-6)
    info = json.loads(fm("inspect", "--json", out).stdout)
    assert info["header"]["hyperparameters"]["device"] == "cuda"


def test_rowwise_adagrad_runs_on_the_cpu(data, tmp_path, monkeypatch):
    """The GPU kernels have no row-wise AdaGrad: --device cuda is refused up
    front, and --device auto with a device trains on the CPU, saying why."""
    out = tmp_path / "m.fm"
    result = fm("train", "--device", "cuda", "--optimizer", "rowwise-adagrad", "-t", "1", "-o", out, data["train"])
    assert result.exit_code == ConfigError.exit_code and not out.exists()
    assert result.stderr.strip().splitlines()[-1] == (
        "fm: error: --optimizer rowwise-adagrad runs on the CPU; it needs --device cpu (or auto)")
    monkeypatch.setattr(gpu_device, "probe", lambda: (True, "a test device"))
    result = fm("train", "--device", "auto", "--optimizer", "rowwise-adagrad", "-t", "1", "-o", out, data["train"])
    assert result.exit_code == 0, result.output
    assert "device auto: the GPU kernels have no rowwise-adagrad optimizer; running on the CPU" in result.stderr
    assert load_model(out).meta["training"]["device"] == "cpu"


# ---------------------------------------------------------------------------
# Device memory: planned before anything is allocated


def test_device_memory_plan_covers_what_the_state_allocates(emu):
    rows = distinct_rows(np.random.default_rng(4), 50, 20, 4, 4)
    batch = as_batch(rows, np.zeros(len(rows)))
    for cfg in (Config(model="ffm", k=4, dtype="float64"), Config(model="fm", k=8, optimizer="ftrl"),
                Config(model="fwfm", k=4, batch_size=8)):
        need = plan.device_memory(cfg, 20, 4, 1, rows=batch.n_rows, nnz=batch.nnz)
        gs = GpuState(cfg, 20, 4, np.random.default_rng(0), backend=emu)
        arrays = sum(a.nbytes for a in gs.device_arrays())
        assert need.parameters + need.state == arrays
        assert need.parameters * (1 + gs.ns) == arrays
        packed = plan.pack_rows(np, batch)
        held = sum(getattr(packed, f).nbytes for f in ("indptr", "fields", "features", "values", "labels"))
        assert need.data == held + 8 * batch.n_rows     # and the pass's row order
        assert need.scratch > 0 and need.total == need.parameters + need.state + need.data + need.scratch


def test_dry_run_states_the_device_memory_without_a_device(data, tmp_path, no_device):
    result = fm("train", "--dry-run", "--device", "cuda", "-p", data["valid"], "-o", tmp_path / "m.fm",
                data["train"])
    assert result.exit_code == 0, result.output
    line = next(x for x in result.stdout.splitlines() if x.strip().startswith("device memory"))
    assert " on a CUDA device: " in line and "parameters" in line and "optimizer state" in line
    assert "resident data" in line and "scratch" in line
    assert line.endswith("no device here (no CUDA device found)")
    assert "device memory" not in fm("train", "--dry-run", data["train"]).stdout   # the CPU: no such line


def test_dry_run_refuses_a_run_the_device_cannot_hold(data, tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_device, "free_memory", lambda: (1000, "Fake GPU"))
    args = ["train", "--dry-run", "-p", data["valid"], "-o", tmp_path / "m.fm", data["train"]]
    result = fm(*args[:2], "--device", "cuda", *args[2:])
    assert result.exit_code == 1 and not (tmp_path / "m.fm").exists()
    assert "device memory" in result.stdout and "Fake GPU: 1000 bytes free" in result.stdout
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("fm: error: the run needs ") and "more than the 1000 bytes free on Fake GPU" in last
    auto = fm(*args[:2], "--device", "auto", *args[2:])
    assert auto.exit_code == 0 and "(does not fit: --device auto would train on the CPU)" in auto.stdout
    monkeypatch.setattr(gpu_device, "free_memory", lambda: (80 << 30, "Fake GPU"))
    roomy = fm(*args[:2], "--device", "cuda", *args[2:])
    assert roomy.exit_code == 0 and "Fake GPU: 80.00 GiB free" in roomy.stdout


def test_a_run_that_does_not_fit_the_device_stops_before_allocating(data, tmp_path, monkeypatch, emu):
    monkeypatch.setattr(gpu_device, "probe", lambda: (True, "emulated device"))
    small = emulate.EmulatedBackend(instances=EMULATED)
    small.free_memory = lambda: 1000
    monkeypatch.setattr(gpu_state, "default_backend", lambda: small)
    made = []
    monkeypatch.setattr(gpu_state, "HostParams", type("Watch", (gpu_state.HostParams,), {
        "__init__": lambda self, *a, **k: made.append(1) or gpu_state.HostParams.__init__(self, *a, **k)}))
    out = tmp_path / "m.fm"
    result = fm("train", "--device", "cuda", "-t", "1", "-o", out, data["train"])
    assert result.exit_code == 1 and not out.exists() and not made
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("fm: error: the run needs (parameters, optimizer state, resident data, scratch) ")
    assert last.endswith("GiB of device memory and CPU emulation of the CUDA kernels has 0.00 GiB free")
