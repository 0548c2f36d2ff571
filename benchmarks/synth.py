#!/usr/bin/env python3
"""Synthetic click-through-rate data shaped like the Criteo display-ads set.

Every row has exactly one active feature per field.  The default 39 fields
are 13 "numeric bucket" fields (about 50 ordered buckets each, small buckets
most common, like binned counts) followed by 26 categorical fields whose
cardinalities are spread log-uniformly between 5 and 50,000.  Within each
field the values follow a Zipf-like popularity law.  Feature ids are global:
field ``f`` owns the ids ``offset[f] .. offset[f] + cardinality[f] - 1``.

Labels are drawn from a planted model::

    logit = bias + sum_f w[x_f] + sum_{(a,b) in P} <V[a][b][x_a], V[b][a][x_b]>

where ``P`` is a random subset of field pairs and the field-aware factors
have k = 4.  The bias is calibrated so that the mean click rate is about
0.25.  Everything about the model (cardinalities, popularity, weights,
pairs) depends only on ``--model-seed``; the rows depend only on ``--seed``.
So a training and a validation file made with different ``--seed`` values
and the same ``--model-seed`` come from the same distribution, and a file
of N rows is a prefix of a file of M > N rows with the same seeds.

Command line::

    python benchmarks/synth.py --rows 1000000 --seed 1 --out train.ffm \\
        [--libsvm train.svm] [--fields 39] [--model-seed 0]

Output lines are ``label field:feature:1 ...`` (libffm) and
``label feature:1 ...`` (libsvm) with 0/1 labels.

As a module::

    from synth import generate
    data = generate(10_000, seed=1)      # data.labels, data.features, ...
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

import numpy as np

K = 4                    # planted factor length
BLOCK_ROWS = 1 << 16     # rows per random-number block (fixes the stream)
TARGET_CTR = 0.25
NUMERIC_SHARE = 13 / 39  # Criteo: 13 integer columns out of 39
MIN_CARD, MAX_CARD = 5, 50_000
LINEAR_STD = 1.0         # standard deviation of the summed linear part
PAIRWISE_STD = 0.8       # standard deviation of the summed pairwise part


@dataclass
class PlantedModel:
    """The hidden model that decides click probabilities."""

    n_fields: int
    n_numeric: int
    cards: np.ndarray            # int64 (n_fields,)
    offsets: np.ndarray          # int64 (n_fields,)  first global id of each field
    cdfs: list                   # per field: float64 cumulative popularity by rank
    rank_to_local: list          # per field: int64 permutation, popularity rank -> local id
    linear: np.ndarray           # float32 (n_features,)
    pairs: list                  # [(a, b, Va (card_a, K), Vb (card_b, K))]
    bias: float = 0.0

    @property
    def n_features(self) -> int:
        return int(self.offsets[-1] + self.cards[-1]) if self.n_fields else 0

    def logits(self, local: np.ndarray) -> np.ndarray:
        """Logits of rows given field-major as local ids, shape (n_fields, n)."""
        z = np.full(local.shape[1], self.bias, np.float64)
        for f in range(self.n_fields):
            z += np.take(self.linear, local[f] + self.offsets[f])
        for a, b, va, vb in self.pairs:
            z += np.einsum("ij,ij->i", np.take(va, local[a], axis=0), np.take(vb, local[b], axis=0))
        return z


def _zipf_cdf(card: int, exponent: float) -> np.ndarray:
    p = np.arange(1, card + 1, dtype=np.float64) ** -exponent
    c = np.cumsum(p)
    c /= c[-1]
    return c


def build_model(n_fields: int = 39, model_seed: int = 0) -> PlantedModel:
    """The planted model for ``n_fields`` fields; a pure function of its arguments."""
    if n_fields < 1:
        raise ValueError("need at least one field")
    rng = np.random.default_rng(np.random.SeedSequence(model_seed, spawn_key=(0,)))
    n_numeric = int(round(n_fields * NUMERIC_SHARE))
    n_cat = n_fields - n_numeric

    cards = np.concatenate([
        rng.integers(40, 61, size=n_numeric),
        np.exp(rng.uniform(np.log(MIN_CARD), np.log(MAX_CARD), size=n_cat)).round(),
    ]).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(cards)[:-1]]).astype(np.int64)
    n_features = int(cards.sum())

    cdfs, rank_to_local = [], []
    linear = np.empty(n_features, np.float32)
    w_std = LINEAR_STD / np.sqrt(n_fields)
    for f in range(n_fields):
        card = int(cards[f])
        if f < n_numeric:
            # Ordered buckets: low buckets are common, the effect drifts smoothly.
            cdfs.append(_zipf_cdf(card, rng.uniform(0.8, 1.2)))
            rank_to_local.append(np.arange(card, dtype=np.int64))
            walk = np.cumsum(rng.normal(size=card))
            walk -= walk.mean()
            walk /= walk.std() or 1.0
            w = w_std * walk + rng.normal(0.0, 0.2 * w_std, size=card)
        else:
            cdfs.append(_zipf_cdf(card, rng.uniform(1.0, 1.4)))
            rank_to_local.append(rng.permutation(card).astype(np.int64))
            w = rng.normal(0.0, w_std, size=card)
        linear[offsets[f]:offsets[f] + card] = w

    all_pairs = [(a, b) for a in range(n_fields) for b in range(a + 1, n_fields)]
    n_pairs = min(len(all_pairs), max(1, 3 * n_fields)) if all_pairs else 0
    chosen = sorted(rng.choice(len(all_pairs), size=n_pairs, replace=False)) if n_pairs else []
    pairs = []
    if n_pairs:
        # Each pair's inner product of two N(0, s^2) K-vectors has variance K s^4.
        s = (PAIRWISE_STD ** 2 / (n_pairs * K)) ** 0.25
        for i in chosen:
            a, b = all_pairs[i]
            va = rng.normal(0.0, s, size=(int(cards[a]), K)).astype(np.float32)
            vb = rng.normal(0.0, s, size=(int(cards[b]), K)).astype(np.float32)
            pairs.append((a, b, va, vb))

    model = PlantedModel(n_fields, n_numeric, cards, offsets, cdfs, rank_to_local, linear, pairs)
    # Calibrate the bias on a sample drawn from the model's own stream.
    z = model.logits(_sample_local(model, 20_000, rng))
    lo, hi = -20.0, 20.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if _sigmoid(z + mid).mean() < TARGET_CTR:
            lo = mid
        else:
            hi = mid
    model.bias = 0.5 * (lo + hi)
    return model


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _sample_local(model: PlantedModel, n: int, rng: np.random.Generator) -> np.ndarray:
    """Local ids of n rows, field-major: shape (n_fields, n)."""
    local = np.empty((model.n_fields, n), np.int64)
    u = rng.random((model.n_fields, n))
    for f in range(model.n_fields):
        rank = np.searchsorted(model.cdfs[f], u[f], side="right")
        np.minimum(rank, model.cards[f] - 1, out=rank)
        np.take(model.rank_to_local[f], rank, out=local[f])
    return local


def _block(model: PlantedModel, seed: int, index: int, n: int):
    """Rows of block ``index`` (the first n of its BLOCK_ROWS)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, index)))
    local = _sample_local(model, BLOCK_ROWS, rng)[:, :n]
    ctr = _sigmoid(model.logits(local))
    labels = (rng.random(BLOCK_ROWS)[:n] < ctr).astype(np.int8)
    features = (local.T + model.offsets).astype(np.int32)
    return labels, features, ctr


def iter_chunks(rows: int, seed: int, model: PlantedModel):
    """Yield (labels int8, features int32 (n, n_fields), true ctr float64) blocks."""
    done, index = 0, 0
    while done < rows:
        n = min(BLOCK_ROWS, rows - done)
        yield _block(model, seed, index, n)
        done += n
        index += 1


@dataclass
class SynthData:
    labels: np.ndarray     # int8 (rows,), 0/1
    features: np.ndarray   # int32 (rows, n_fields), global feature ids; field f is column f
    ctr: np.ndarray        # float64 (rows,), the planted click probability
    model: PlantedModel


def generate(rows: int, seed: int, fields: int = 39, model_seed: int = 0,
             model: PlantedModel | None = None) -> SynthData:
    """Generate ``rows`` rows in memory; identical to what the command line writes."""
    if model is None:
        model = build_model(fields, model_seed)
    parts = list(iter_chunks(rows, seed, model))
    if not parts:
        return SynthData(np.zeros(0, np.int8), np.zeros((0, model.n_fields), np.int32),
                         np.zeros(0), model)
    labels, feats, ctr = (np.concatenate(x) for x in zip(*parts))
    return SynthData(labels, feats, ctr, model)


class _Formatter:
    """Turns rows into text without a Python call per row or token.

    Every global feature id's token (" field:feature:1" or " feature:1") is
    rendered once into a fixed-width byte table; a block of rows is then a
    gather from that table plus a mask that drops the padding.
    """

    def __init__(self, model: PlantedModel, libffm: bool):
        field_of = np.repeat(np.arange(model.n_fields), model.cards)
        if libffm:
            tokens = [f" {f}:{j}:1" for j, f in enumerate(field_of.tolist())]
        else:
            tokens = [f" {j}:1" for j in range(model.n_features)]
        width = max(map(len, tokens))
        self.table = np.array(tokens, dtype=f"S{width}").view(np.uint8).reshape(-1, width)
        self.lengths = np.fromiter(map(len, tokens), np.int64, len(tokens))
        self.width = width

    def __call__(self, labels: np.ndarray, feats: np.ndarray) -> bytes:
        n, m = feats.shape
        w = self.width
        buf = np.empty((n, 1 + m * w + 1), np.uint8)
        buf[:, 0] = labels.astype(np.uint8) + ord("0")
        buf[:, 1:-1] = self.table[feats].reshape(n, m * w)
        buf[:, -1] = ord("\n")
        keep = np.ones(buf.shape, bool)
        keep[:, 1:-1] = (np.arange(w) < self.lengths[feats][..., None]).reshape(n, m * w)
        return buf[keep].tobytes()


def write(rows: int, seed: int, out: str, libsvm: str | None = None,
          fields: int = 39, model_seed: int = 0) -> dict:
    """Write libffm (and optionally libsvm) files; returns a small summary."""
    model = build_model(fields, model_seed)
    ffm_text = _Formatter(model, libffm=True)
    svm_text = _Formatter(model, libffm=False) if libsvm else None
    clicks = 0
    written = 0
    with open(out, "wb") as ffm_out, (open(libsvm, "wb") if libsvm else _Null()) as svm_out:
        for labels, feats, _ in iter_chunks(rows, seed, model):
            # Format in slices to keep the temporary buffers small.
            for lo in range(0, labels.shape[0], 16384):
                lab, ft = labels[lo:lo + 16384], feats[lo:lo + 16384]
                ffm_out.write(ffm_text(lab, ft))
                if svm_text is not None:
                    svm_out.write(svm_text(lab, ft))
            clicks += int(labels.sum())
            written += labels.shape[0]
    return {"rows": written, "fields": model.n_fields, "features": model.n_features,
            "ctr": clicks / written if written else float("nan")}


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def write(self, _text):
        pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Write synthetic Criteo-like CTR data (libffm, optionally libsvm).")
    ap.add_argument("--rows", type=int, required=True, help="number of rows")
    ap.add_argument("--seed", type=int, required=True, help="seed for the rows")
    ap.add_argument("--out", required=True, help="libffm output file")
    ap.add_argument("--libsvm", help="also write the same rows in libsvm form here")
    ap.add_argument("--fields", type=int, default=39, help="number of fields (default 39)")
    ap.add_argument("--model-seed", type=int, default=0,
                    help="seed of the planted model; keep it equal across train/validation (default 0)")
    ap.add_argument("-q", "--quiet", action="store_true", help="no summary on stderr")
    args = ap.parse_args(argv)
    if args.rows < 0:
        ap.error("--rows must be non-negative")
    if args.fields < 1:
        ap.error("--fields must be at least 1")
    if args.seed < 0 or args.model_seed < 0:
        ap.error("seeds must be non-negative")
    t0 = time.perf_counter()
    info = write(args.rows, args.seed, args.out, args.libsvm, args.fields, args.model_seed)
    if not args.quiet:
        print(f"synth: {info['rows']} rows, {info['fields']} fields, {info['features']} features, "
              f"ctr {info['ctr']:.4f}, {time.perf_counter() - t0:.1f} s -> {args.out}"
              + (f", {args.libsvm}" if args.libsvm else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
