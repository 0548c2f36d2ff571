"""`fm train`: parse options into a Config, train, write the model atomically."""

from __future__ import annotations

import os

import click

from ..atomic import check_writable
from ..config import FORMATS, MODELS, OPTIMIZERS, Config
from . import _render
from ._options import ByteSize, read_limit_options

D = Config()  # defaults come from the config, nowhere else

_DATA_SUFFIXES = (".ffm", ".libffm", ".svm", ".libsvm", ".txt")


def default_output(train_file: str) -> str:
    """libffm-style default: the training file's base name, with '.fm'."""
    base = os.path.basename(train_file)
    for suffix in _DATA_SUFFIXES:
        if base.endswith(suffix) and len(base) > len(suffix):
            base = base[: -len(suffix)]
            break
    return base + ".fm"


@click.command(context_settings={"show_default": True})
@click.argument("train_file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Model file to write.  [default: TRAIN_FILE's base name + .fm]", show_default=False)
@click.option("-p", "--valid", type=click.Path(dir_okay=False),
              help="Validation file, scored after every epoch.")
@click.option("--model", type=click.Choice(MODELS), default=D.model, help="Model family.")
@click.option("-k", "--factors", "k", type=click.IntRange(1, 1024), default=D.k, help="Latent factors per feature (per field for FFM).")
@click.option("-t", "--epochs", type=click.IntRange(1), default=D.epochs, help="Passes over the training data.")
@click.option("-r", "--learning-rate", type=float, default=D.learning_rate, help="Learning rate (eta).")
@click.option("-l", "--l2", type=float, default=D.l2, help="L2 regularisation (libffm's lambda) on linear weights and factors.")
@click.option("-s", "--threads", type=click.IntRange(1), default=D.threads, help="Training threads (Hogwild; 1 is bit-for-bit reproducible).")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=D.optimizer, help="Update rule.")
@click.option("--norm/--no-norm", "normalize", default=D.normalize, help="Instance-wise normalization (scale each row to unit length).")
@click.option("--bias/--no-bias", "use_bias", default=D.use_bias, help="Global bias term.")
@click.option("--linear/--no-linear", "use_linear", default=D.use_linear, help="Per-feature linear weights.")
@click.option("--auto-stop", is_flag=True, default=D.auto_stop, help="Stop when validation logloss rises; keep the best epoch's model.")
@click.option("--shuffle/--no-shuffle", default=D.shuffle, help="Shuffle rows every epoch.")
@click.option("--seed", type=click.IntRange(0), default=D.seed, help="Seed for initialisation and shuffling.")
@click.option("--init-scale", type=float, default=D.init_scale, help="Factor initialisation: U(0, init_scale)/sqrt(k).")
@click.option("--exact-adagrad", is_flag=True, default=D.exact_adagrad,
              help="Refine AdaGrad's 1/sqrt to float32 precision (slower); by default the CPU's estimate, as libffm.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=D.format, help="Input format (auto: from the first row).")
@read_limit_options
@click.option("--max-feature-id", type=click.IntRange(0, 2**31 - 1), default=D.max_feature_id,
              help="Largest accepted feature id; a larger one is a bad row.")
@click.option("--max-memory", type=ByteSize(), default=None, show_default=False,
              help="Refuse a model larger than this (e.g. 8G) before allocating it.  [default: physical memory]")
@click.option("--no-optimizer-state", is_flag=True, help="Leave optimizer state out of the model file (smaller; no warm start).")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
def train(train_file, output, valid, quiet, no_optimizer_state, fmt, **options):
    """Train a model on TRAIN_FILE (libffm or libsvm text; '-' reads stdin).

    With --no-bias --no-linear and the default AdaGrad this is libffm's FFM.
    The model file is written only when training succeeds, atomically.
    """
    from ..train import train as run_training

    cfg = Config(format=fmt, **options)
    if output is None:
        if train_file == "-":
            raise click.UsageError("training from stdin needs -o/--output")
        output = default_output(train_file)
    check_writable(output)
    model = run_training(
        cfg,
        train_file,
        valid,
        on_epoch=_render.EpochTable(quiet),
        log=lambda msg: _render.info(msg, quiet),
    )
    model.save(output, include_state=not no_optimizer_state)
    t = model.meta["training"]
    summary = f"wrote {output} (epoch {t['model_epoch']}"
    if t.get("valid_logloss") is not None:
        summary += f", va_logloss {t['valid_logloss']:.5f}, va_auc {t['valid_auc']:.4f}"
    _render.info(summary + ")", quiet)
