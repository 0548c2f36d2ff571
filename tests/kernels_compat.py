"""The compiled core's previous two entry points, train_epoch and
score_rows, with their signatures and meaning, built on Layout, Trainer and
score_rows: the kernel tests written against them keep their meaning.

New tests call fmcli._core._kernels.Layout / Trainer / score_rows directly."""

from __future__ import annotations

from fmcli._core import _kernels

# train_epoch's keyword arguments that are hyperparameters of the Trainer
_HYPER = tuple(_kernels.HYPER_DEFAULTS)


def layout(kind, task, n_classes, n_features, n_fields, kp, n_state, *, use_bias=True,
           use_linear=True, normalize=True, half=False, row_state=False) -> _kernels.Layout:
    return _kernels.Layout(kind, task, n_classes, n_features, n_fields, kp, n_state,
                           use_bias=use_bias, use_linear=use_linear, normalize=normalize,
                           half=half, row_state=row_state)


def train_epoch(kind, optimizer, task, B, L, F, R, n_features, n_fields, kp, n_classes, indptr,
                fields, features, values, labels, weights, order, eta, *, l2_bias=0, l2_linear=0,
                l2_factors=0, l1=0, beta1=0.9, beta2=0.999, adam_eps=1e-8, ftrl_beta=1,
                label_smoothing=0, clip_norm=0, schedule="constant", warmup=0, total_steps=1,
                step0=0, batch_size=1, use_bias=True, use_linear=True, normalize=True, threads=1,
                exact_rsqrt=False, skip_nonfinite=False, half_factors=False, hot_features=None,
                hot_sync=256, balance=True, k=0):
    """One pass of training over the rows in `order` (a Trainer built for the
    one pass); returns (loss sum, weight sum, rows skipped, first bad
    position or -1)."""
    args = dict(locals())
    hyper = {name: args[name] for name in _HYPER}
    hyper.update(optimizer=optimizer, eta=eta)
    lay = layout(kind, task, n_classes, n_features, n_fields, kp, _kernels.n_state(optimizer),
                 use_bias=use_bias, use_linear=use_linear, normalize=normalize, half=half_factors,
                 row_state=optimizer == "rowwise-adagrad")
    trainer = _kernels.Trainer(lay, B, L, F, R, hyper, threads, hot_features, hot_sync, balance)
    return trainer.train(indptr, fields, features, values, labels, weights, order, step0)


def score_rows(kind, B, L, F, R, n_features, n_fields, kp, n_state_, indptr, fields, features,
               values, out, use_bias=True, use_linear=True, normalize=True, threads=1, n_classes=1,
               half_factors=False, row_state=False):
    """Raw scores of every row into `out` (n_classes per row); returns it."""
    lay = layout(kind, "multiclass" if n_classes > 1 else "binary", n_classes, n_features,
                 n_fields, kp, n_state_, use_bias=use_bias, use_linear=use_linear,
                 normalize=normalize, half=half_factors, row_state=row_state)
    return _kernels.score_rows(lay, B, L, F, R, indptr, fields, features, values, out, threads)
