"""The training layout of a model's parameters, on the host.

:class:`HostParams` holds the parameters and the optimizer state in the
interleaved layout that the CPU kernels train in place and the GPU kernels
copy to the device (fmcli/_core/_kernels.pyx): it draws the initial
weights, takes over a parent model's (warm starts), sizes the memory a run
needs and turns the layout back into a :class:`~fmcli.model.Model`.  The
backends (fmcli.cpu, fmcli.gpu.state) build on it; it runs no kernel.

What varies with the model kind comes from fmcli.registry.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .config import Config
from .errors import ConfigError
from .model import Model, ModelSpec, padded_k
from .registry import kind as model_kind, optimizer as optimizer_entry


def aligned_zeros(shape: tuple[int, ...], dtype, align: int = 64) -> np.ndarray:
    """Zero-filled C-contiguous array whose data starts on an `align`-byte boundary.

    Factor blocks are 32 or 64 bytes; starting them on a cache-line boundary
    keeps each block in as few cache lines as possible."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64))
    raw = np.zeros(n * dtype.itemsize + align, np.uint8)
    offset = (-raw.ctypes.data) % align
    return raw[offset : offset + n * dtype.itemsize].view(dtype).reshape(shape)


class HostParams:
    """Parameters and optimizer state in the kernels' interleaved layout.

    Each array holds one parameter set per class (one for binary and
    regression), class after class: B (C, w), L (C * n_features, w),
    F (C * blocks, words), R the field-pair parameters, w = 1 + state slots:
    one (w) row per field pair for scalar pairs (FwFM), kp factor-format
    blocks per field pair for matrix pairs (FmFM: one block per matrix row).
    A factor block (words wide) is kp weights and their state, kp per slot;
    with --storage float16, kp float16 weights then the state (see
    slot_view); with row-wise AdaGrad, kp weights then one accumulator."""

    half = False    # float16 factor weights (set from the config)
    rowwise = False # one AdaGrad accumulator per factor block (set from the config)

    def __init__(self, cfg: Config, n_features: int, n_fields: int, rng: np.random.Generator,
                 task: str = "binary", classes: list[str] | None = None, slot_ids: np.ndarray | None = None):
        """slot_ids: for a model of compact ids (fmcli.data.idmap), the
        original id of each slot, all below n_features of the dense model:
        each slot starts from the values the dense model gives its id, and
        `rng` ends where the dense model leaves it, so with one thread the
        two train alike."""
        self.cfg = cfg
        self.kind = model_kind(cfg.model)
        C = len(classes) if task == "multiclass" else 1
        self.n_classes = C
        self.spec = ModelSpec(
            kind=cfg.model,
            task=task,
            k=cfg.k,
            n_features=n_features if slot_ids is None else len(slot_ids),
            n_fields=n_fields,
            use_bias=cfg.use_bias,
            use_linear=cfg.use_linear,
            normalize=cfg.normalize,
            n_classes=C,
            classes=tuple(classes) if task == "multiclass" else None,
        )
        dtype = np.dtype(cfg.dtype)
        self.ns = optimizer_entry(cfg.optimizer).n_state
        self.kp = padded_k(cfg.k)
        width = 1 + self.ns
        dense_features = n_features
        if slot_ids is not None:
            n_features = len(slot_ids)
        n_blocks = self.kind.blocks(n_features, n_fields)
        pairs = self.kind.pair_count(n_fields)
        self.B = np.zeros((C, width), dtype)
        self.L = np.zeros((C * n_features, width), dtype)
        self.half = cfg.storage == "float16"
        self.rowwise = optimizer_entry(cfg.optimizer).row_state
        words = self.factor_words(cfg)
        self.F = aligned_zeros((C * n_blocks, words), dtype)
        if self.kind.pairs == "matrix":
            # FmFM: kp factor-format blocks per field pair, one per matrix row;
            # every matrix starts as the identity (FmFM then starts as FM)
            self.R = aligned_zeros((C * pairs * self.kp, words), dtype)
            eye = self.slot_view(self.R, 0).reshape(C * pairs, self.kp, self.kp)
            eye[:, np.arange(cfg.k), np.arange(cfg.k)] = 1.0
        else:
            # FwFM's field-pair weights start at 1 (FwFM then starts as FM).
            self.R = np.zeros((C * pairs, width), dtype)
            self.R[:, 0] = 1.0
        if n_blocks and slot_ids is not None:
            scale = np.float32(cfg.init_scale / np.sqrt(cfg.k))
            _draw_as_dense(self.factor_slot(0), rng, slot_ids, C, self.kind.blocks(dense_features, n_fields),
                           n_blocks // max(n_features, 1), cfg.k, scale)
        elif n_blocks:
            # libffm's initialisation: U(0, 1) / sqrt(k), padding stays zero.
            scale = np.float32(cfg.init_scale / np.sqrt(cfg.k))
            step = 1 << 20  # fill in slices so no full-size temporary is made
            for start in range(0, C * n_blocks, step):
                stop = min(start + step, C * n_blocks)
                self.factor_slot(0)[start:stop, : cfg.k] = (
                    rng.random((stop - start, cfg.k), dtype=np.float32) * scale)
        self._init_state()

    @staticmethod
    def factor_words(cfg: Config) -> int:
        """Four-byte words per factor block: kp weights and their state, kp
        per slot; float16 storage: kp float16 weights (kp / 2 words) then kp
        float32 accumulators; row-wise AdaGrad: kp weights then one accumulator."""
        opt = optimizer_entry(cfg.optimizer)
        kp, ns = padded_k(cfg.k), opt.n_state
        if cfg.storage == "float16":
            return kp // 2 + ns * kp
        if opt.row_state:
            return kp + 1
        return (1 + ns) * kp

    def slot_view(self, a: np.ndarray, slot: int) -> np.ndarray:
        """Slot `slot` of every factor-format block of `a` (F, or FmFM's R),
        (blocks, kp): 0 the weights (float16 with --storage float16), 1.. the
        optimizer's state ((blocks, 1) for row-wise AdaGrad's accumulator)."""
        kp = self.kp
        if self.rowwise and slot:
            return a[:, kp : kp + 1]
        if not self.half:
            return a[:, slot * kp : (slot + 1) * kp]
        halves = a.view(np.float16)
        return halves[:, :kp] if slot == 0 else halves[:, kp:].view(np.float32)

    def factor_slot(self, slot: int) -> np.ndarray:
        """Slot `slot` of every factor block (see slot_view)."""
        return self.slot_view(self.F, slot)

    def _block_arrays(self) -> tuple[np.ndarray, ...]:
        """The arrays made of factor-format blocks (F, and R for matrix pairs)."""
        return (self.F, self.R) if self.kind.pairs == "matrix" else (self.F,)

    def _scalar_arrays(self) -> tuple[np.ndarray, ...]:
        """The arrays of (weight, state...) rows."""
        return (self.B, self.L) if self.kind.pairs == "matrix" else (self.B, self.L, self.R)

    def _init_state(self) -> None:
        cfg, kp = self.cfg, self.kp
        if cfg.optimizer in ("adagrad", "rowwise-adagrad"):
            # libffm's AdaGrad accumulators start at 1
            for a in self._scalar_arrays():
                a[:, 1:] = 1.0
            for a in self._block_arrays():
                for slot in range(1, 1 + self.ns):
                    self.slot_view(a, slot)[...] = 1.0
        elif cfg.optimizer == "ftrl":
            # z such that FTRL's closed form at n = 0 gives back the initial weights
            alpha, beta, l1 = cfg.ftrl_alpha, cfg.ftrl_beta, cfg.l1
            for a, l1_, l2 in ((self.B, 0.0, cfg.l2_of("bias")), (self.L, l1, cfg.l2_of("linear")),
                               (self.R, 0.0, 0.0)):
                if a is self.R and self.kind.pairs == "matrix":
                    continue
                a[:, 1] = -(a[:, 0] * (beta / alpha + l2) + np.sign(a[:, 0]) * l1_)
            # field matrices: no L1 or L2, as the field-pair weights
            blocks = [(self.F, np.float32(beta / alpha + cfg.l2_of("factors")), np.float32(l1))]
            if self.kind.pairs == "matrix":
                blocks.append((self.R, np.float32(beta / alpha), np.float32(0.0)))
            step = 1 << 18
            for a, scale, l1_ in blocks:
                for start in range(0, a.shape[0], step):
                    w = a[start : start + step, :kp]
                    a[start : start + step, kp : 2 * kp] = -(w * scale + np.sign(w) * l1_)

    def warm_start(self, parent: Model, path: str, say: Callable[[str], None]) -> int:
        """Start from `parent`'s weights (and optimizer state when it has the
        same optimizer's); ids beyond its range keep their fresh values.
        Returns the updates the parent had made (Adam's step count and the
        schedules continue from there)."""
        p, s, cfg = parent.spec, self.spec, self.cfg
        for name, mine, theirs in (("model", s.kind, p.kind), ("task", s.task, p.task), ("k", s.k, p.k),
                                   ("bias term", s.use_bias, p.use_bias),
                                   ("linear term", s.use_linear, p.use_linear),
                                   ("normalization", s.normalize, p.normalize),
                                   ("classes", s.classes, p.classes)):
            if mine != theirs:
                raise ConfigError(f"{path}: --init-model has {name} {theirs!r} but this run trains {mine!r}")
        C, n0, m0, k, kp = self.n_classes, p.n_features, p.n_fields, s.k, self.kp
        n, m = s.n_features, s.n_fields
        width = 1 + self.ns
        same_opt = (parent.meta.get("optimizer") or {}).get("name") == cfg.optimizer
        if not same_opt:
            say(f"{path} was trained with another optimizer: its weights are kept, the "
                f"{cfg.optimizer} state starts fresh")
        elif self.ns and not parent.state:
            say(f"{path} has no optimizer state (--no-optimizer-state): it starts fresh")

        def slots(name: str, shape: tuple[int, ...], state_shape: tuple[int, ...] | None = None):
            """The parent's parameter and state slots of one array, each (C, *shape)
            (the state (C, *state_shape) when given)."""
            out = [np.asarray(parent.params[name], np.float32).reshape((C,) + shape)]
            st = parent.state.get(name) if same_opt else None
            if st is not None and self.ns:
                st = np.asarray(st, np.float32)
                sh = (C,) + (shape if state_shape is None else state_shape)
                out += [x.reshape(sh) for x in (st[None] if self.ns == 1 else st)]
            return out

        def blocks_from(a: np.ndarray, name: str, old: tuple[int, ...], new: tuple[int, ...]) -> None:
            """Copy the parent's k-vectors (shape old + (k,)) into the blocks of a (new + (kp,))."""
            within = (slice(None),) + tuple(slice(0, x) for x in old)
            for i, v in enumerate(slots(name, old + (k,), old if self.rowwise else None)):
                if i and self.rowwise:   # one accumulator per block
                    self.slot_view(a, i).reshape((C,) + new)[within] = v
                else:
                    self.slot_view(a, i).reshape((C,) + new + (kp,))[within + (slice(0, k),)] = v

        if s.use_bias and "bias" in parent.params:
            for i, a in enumerate(slots("bias", ())):
                self.B[:, i] = a
        if s.use_linear and "linear" in parent.params:
            L = self.L.reshape(C, n, width)
            for i, a in enumerate(slots("linear", (n0,))):
                L[:, :n0, i] = a
        if "factors" in parent.params:
            # a block per feature (FM, FwFM, FmFM) or per feature and field (FFM)
            old, new = ((n0, m0), (n, m)) if self.kind.factors == "feature-field" else ((n0,), (n,))
            blocks_from(self.F, "factors", old, new)
        if self.kind.pairs == "scalar":
            R = self.R.reshape(C, m, m, width)
            for i, a in enumerate(slots(self.kind.pair_param, (m0, m0))):
                R[:, :m0, :m0, i] = a
        elif self.kind.pairs == "matrix":
            # matrix rows: (m, m, k) blocks of k weights
            blocks_from(self.R, self.kind.pair_param, (m0, m0, k), (m, m, kp))
        if n > n0 or m > m0:
            say(f"{path} knew {n0} features and {m0} fields; this data has {n} and {m}: "
                "the new ones start from fresh values")
        return int((parent.meta.get("optimizer") or {}).get("steps") or 0) if same_opt else 0

    @classmethod
    def bytes_needed(cls, cfg: Config, n_features: int, n_fields: int, n_classes: int = 1) -> int:
        """Memory for parameters, optimizer state and mini-batch gradient sums
        (the early-stopping copy not included)."""
        kind = model_kind(cfg.model)
        kp = padded_k(cfg.k)
        sums = cfg.threads if cfg.batch_size > 1 else 0   # one gradient sum per weight and thread
        blocks = kind.blocks(n_features, n_fields)
        pairs = kind.pair_count(n_fields)
        if kind.pairs == "matrix":
            blocks += pairs * kp
            pairs = 0
        scalars = (n_features + 1 + pairs) * (1 + optimizer_entry(cfg.optimizer).n_state + sums)
        factors = blocks * (cls.factor_words(cfg) + sums * kp)
        return (scalars + factors) * n_classes * np.dtype(cfg.dtype).itemsize

    def arrays(self) -> tuple[np.ndarray, ...]:
        return self.B, self.L, self.F, self.R

    def flat(self) -> tuple[np.ndarray, ...]:
        return tuple(a.reshape(-1) for a in self.arrays())

    def snapshot(self, into: tuple[np.ndarray, ...] | None = None) -> tuple[np.ndarray, ...]:
        """A copy of the parameters and state; written over `into` (an
        earlier snapshot of the same arrays) when given: a model's worth of
        fresh memory costs its page faults on every copy otherwise."""
        arrays = self.arrays()
        if into is not None and isinstance(into, tuple) and len(into) == len(arrays) and all(
                isinstance(t, np.ndarray) and t.shape == a.shape and t.dtype == a.dtype and t.flags.writeable
                for t, a in zip(into, arrays)):
            for t, a in zip(into, arrays):
                np.copyto(t, a)
            return into
        return tuple(a.copy() for a in arrays)

    def restore(self, snap: tuple[np.ndarray, ...]) -> None:
        for a, saved in zip(self.arrays(), snap):
            a[...] = saved

    def all_finite(self) -> bool:
        arrays = self.arrays()
        if self.half:   # F holds float16 and float32 words: look at each
            arrays = arrays[:2] + arrays[3:] + tuple(self.factor_slot(i) for i in range(1 + self.ns))
        step = 1 << 16   # in slices: no temporary the size of the model
        return all(bool(np.isfinite(a[i : i + step]).all()) for a in arrays for i in range(0, len(a), step))

    @classmethod
    def from_arrays(cls, cfg: Config, spec: ModelSpec, arrays) -> "HostParams":
        """A HostParams holding `arrays` (B, L, F, R in this layout's shapes), e.g.
        host copies of a device's, without drawing anything."""
        host = cls.__new__(cls)
        host.cfg, host.spec, host.kind = cfg, spec, model_kind(spec.kind)
        host.n_classes = spec.n_classes
        host.ns, host.kp = optimizer_entry(cfg.optimizer).n_state, padded_k(spec.k)
        host.half = cfg.storage == "float16"
        host.rowwise = optimizer_entry(cfg.optimizer).row_state
        host.B, host.L, host.F, host.R = arrays
        return host

    def to_model(self, meta: dict) -> Model:
        """The trained model; its arrays are views of this layout where possible."""
        s, k, C = self.spec, self.cfg.k, self.n_classes
        lead = (C,) if s.task == "multiclass" else ()
        m = s.n_fields

        def take(a: np.ndarray, slot: int, shape: tuple[int, ...]) -> np.ndarray:
            return a[:, slot : slot + 1].astype(np.float32, copy=False).reshape(lead + shape)

        def pairs(a: np.ndarray, slot: int) -> np.ndarray:
            return np.stack([_symmetric(x) for x in a[:, slot].reshape(C, m, m)]).reshape(lead + (m, m))

        def matrices(slot: int) -> np.ndarray:
            """(C, m, m, k, k) from the upper triangle of field pairs, M[b, a] = M[a, b]^T
            (row-wise AdaGrad's accumulators: (C, m, m, k), M[b, a] = M[a, b])."""
            v = self.slot_view(self.R, slot)
            if self.rowwise and slot:
                return _mirrored(v[:, 0].reshape(C, m, m, self.kp)[..., :k], False).reshape(lead + (m, m, k))
            x = v.reshape(C, m, m, self.kp, self.kp)[..., :k, :k].astype(np.float32)
            return _mirrored(x, True).reshape(lead + (m, m, k, k))

        params: dict[str, np.ndarray] = {}
        state: dict[str, np.ndarray] = {}
        shape = s.factor_shape()
        for slot in range(1 + self.ns):
            out = params if slot == 0 else {}
            if s.use_bias:
                out["bias"] = take(self.B, slot, (1,) if not lead else ())
            if s.use_linear:
                out["linear"] = take(self.L, slot, (s.n_features,))
            if shape is not None and slot and self.rowwise:
                # one accumulator per k-vector
                out["factors"] = self.factor_slot(slot)[:, 0].reshape(lead + shape[:-1])
            elif shape is not None:
                # float16 weights stay float16 here (a view, no model-sized copy
                # while the training data is still held); saving widens them
                f = self.factor_slot(slot)[:, :k]
                out["factors"] = (f if f.dtype == np.float16 else f.astype(np.float32, copy=False)).reshape(
                    lead + shape)
            if self.kind.pairs == "scalar":
                out[self.kind.pair_param] = pairs(self.R, slot)
            elif self.kind.pairs == "matrix":
                out[self.kind.pair_param] = matrices(slot)
            if slot:
                for name, a in out.items():
                    state.setdefault(name, []).append(a)
        # one state slot: the parameter's shape; more: (slots, *shape)
        state = {name: (v[0] if len(v) == 1 else np.stack(v)) for name, v in state.items()}
        return Model(spec=s, params=params, state=state, meta=meta)


def _symmetric(upper: np.ndarray) -> np.ndarray:
    """The full symmetric matrix whose upper triangle (diagonal included) is `upper`'s."""
    u = np.triu(upper.astype(np.float32))
    return u + np.triu(u, 1).T


def _mirrored(x: np.ndarray, transpose: bool) -> np.ndarray:
    """x (C, m, m, ...) with every entry [c, b, a] below the diagonal of field
    pairs replaced by [c, a, b] (transposed over the last two axes when
    `transpose`): the upper triangle is what was trained."""
    out = np.array(x, np.float32)
    m = out.shape[1]
    for a in range(m):
        for b in range(a + 1, m):
            upper = out[:, a, b]
            out[:, b, a] = np.swapaxes(upper, -1, -2) if transpose else upper
    return out


# _draw_as_dense jumps over gaps of more draws than this between the blocks
# it needs, and draws through smaller ones (a jump costs about as much as
# drawing some ten thousand values)
_DRAW_GAP = 1 << 14


def _draw_as_dense(out: np.ndarray, rng: np.random.Generator, slot_ids: np.ndarray, n_classes: int,
                   dense_blocks: int, per_feature: int, k: int, scale: np.float32) -> None:
    """Fill `out` (slot blocks, class after class) with the initial factors
    the dense model (dense_blocks blocks per class) would give the slots'
    original ids, then leave `rng` where the dense draws leave it.

    The dense model draws its blocks in order, one float32 per uint32 of
    the PCG64 stream (two per 64-bit output, the low half first), so the
    values of any block are found by advancing a copy of the generator to
    it (PCG64.advance: O(log n)), without drawing the others."""
    start = rng.bit_generator.state
    if start["bit_generator"] != "PCG64" or start["has_uint32"]:
        raise ValueError("the dense draws are reproduced only for a fresh PCG64 generator")
    bg = np.random.PCG64()
    ids = np.asarray(slot_ids, np.int64)
    n = ids.shape[0]
    width = per_feature * k                        # uint32 draws of one feature's blocks
    order = np.argsort(ids, kind="stable")         # slots by where their draws lie
    sorted_ids = ids[order]
    rows = out.reshape(n_classes * n, per_feature, out.shape[1])     # a view: the slots' blocks, slot after slot
    for c in range(n_classes):
        u0 = (c * dense_blocks + sorted_ids * per_feature) * k      # first uint32 of each slot's blocks
        # segments of slots whose draws lie close together (gaps under
        # _DRAW_GAP draws): one jump and one draw per segment; the draws of
        # a segment are one row per feature id, the slots' rows gathered whole
        cuts = np.flatnonzero(np.diff(u0) > width + _DRAW_GAP) + 1
        for a, z in zip(np.concatenate([[0], cuts]).tolist(), np.concatenate([cuts, [n]]).tolist()):
            first, end = int(u0[a]), int(u0[z - 1]) + width
            base = (first // 2) * 2
            bg.state = start
            bg.advance(base // 2)
            raw = bg.random_raw((end - base + 1) // 2)
            if np.little_endian:
                halves = raw.view(np.uint32)           # the low half of each draw first
            else:
                halves = np.empty(raw.shape[0] * 2, np.uint32)
                halves[0::2] = raw & np.uint64(0xFFFFFFFF)
                halves[1::2] = raw >> np.uint64(32)
            span = int(sorted_ids[z - 1] - sorted_ids[a]) + 1
            table = halves[first - base: first - base + span * width].reshape(span, width)
            u = np.take(table, sorted_ids[a:z] - sorted_ids[a], axis=0)       # (slots, width)
            values = (u >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / 16777216.0)
            values = values.reshape(z - a, per_feature, k) * scale
            rows[c * n + order[a:z], :, :k] = values
    # where the dense model's C * dense_blocks * k draws leave the generator
    total = n_classes * dense_blocks * k
    bg.state = start
    bg.advance(total // 2)
    end = bg.state
    if total % 2:
        last = int(bg.random_raw())
        end = {**bg.state, "has_uint32": 1, "uinteger": last >> 32}
    rng.bit_generator.state = end
