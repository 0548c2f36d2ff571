"""`fm train`: parse options into a Config, train, write the model atomically."""

from __future__ import annotations

import os

import click

from .._version import DISTRIBUTION
from ..atomic import check_writable
from ..config import AUTO_MAX_THREADS, AUTO_THREADS_ROWS, CACHE_CHECKS, DEVICES, FORMATS, LEARNING_RATES, MAX_HOT_FEATURES, MODELS, ON_NONFINITE, OPTIMIZERS, SCHEDULES, STORAGES, TASKS, Config
from ..metrics import METRICS
from ..safepaths import refuse_clobber
from . import _render
from . import _ops
from ._options import AutoCount, ByteSize, Duration, InputPath, OutputPath, Threads, read_limit_options
from ._search import default_output

D = Config()  # defaults come from the config, nowhere else

def _absolute(path: str | None) -> str | None:
    """A path (or glob) made absolute, so that --resume works from any directory."""
    return path if path in (None, "-") else os.path.abspath(path)


@click.command(context_settings={"show_default": True})
@click.argument("train_files", nargs=-1, required=False, metavar="TRAIN_FILE...",
                type=InputPath("a data file", allow_dash=True))
@click.option("-o", "--output", type=OutputPath(),
              help="Model file to write.  [default: TRAIN_FILE's base name + .fm]", show_default=False)
@click.option("-p", "--valid", type=InputPath("a data file"),
              help="Validation file, scored after every epoch.")
@click.option("--model", type=click.Choice(MODELS), default=D.model, help="Model family.")
@click.option("--task", type=click.Choice(TASKS), default=D.task,
              help="binary (logistic loss, labels 0/1 or -1/1), regression (squared loss), multiclass "
                   "(softmax over the distinct labels); auto decides from the labels when unambiguous.")
@click.option("-k", "--factors", "k", type=click.IntRange(1, 1024), default=D.k, help="Latent factors per feature (per field for FFM).")
@click.option("-t", "--epochs", type=click.IntRange(1), default=D.epochs, help="Passes over the training data.")
@click.option("-r", "--learning-rate", type=float, default=None, show_default=False,
              help="Step size (eta).  [default: " + ", ".join(f"{k} {v}" for k, v in LEARNING_RATES.items())
                   + "; FTRL uses --ftrl-alpha]")
@click.option("-l", "--l2", type=float, default=D.l2, help="L2 regularisation (libffm's lambda) on linear weights and factors.")
@click.option("--l2-bias", type=float, default=D.l2_bias, help="L2 on the bias.")
@click.option("--l2-linear", type=float, default=None, show_default=False, help="L2 on linear weights.  [default: --l2]")
@click.option("--l2-factors", type=float, default=None, show_default=False, help="L2 on factors.  [default: --l2]")
@click.option("--l1", type=float, default=D.l1, help="L1 on linear weights and factors (FTRL; gives exact zeros).")
@click.option("-s", "--threads", type=Threads(), default="auto",
              help="Training threads (Hogwild: rows train in parallel on one shared model; 1 is "
                   "bit-for-bit reproducible for a seed).  auto: every CPU this process may use, up to "
                   f"{AUTO_MAX_THREADS}, on {AUTO_THREADS_ROWS:,} training rows or more (the CPU, one row "
                   "at a time, one process); 1 otherwise.  Text input is parsed on up to 4 threads "
                   "whatever this says (the same rows; the CPUs this process may use, e.g. under taskset).")
@click.option("--device", type=click.Choice(DEVICES), default=D.device,
              help=f"cpu; cuda: a CUDA GPU (needs CuPy: pip install '{DISTRIBUTION}[gpu]'); auto: the GPU when one "
                   "is usable, else the CPU.  On the GPU --batch-size 1 is Hogwild across rows, larger "
                   "batches are exact (deterministic).")
@click.option("--scheduler", default=None, show_default=False,
              help="Train data-parallel on Dask: local:N (a cluster of N worker processes on this "
                   "machine, closed with the run) or a scheduler's address (tcp://HOST:8786, tls://...).  "
                   "Each round, every worker trains its share of the round's rows on a copy of the "
                   "model; their changes are merged in a fixed order (AdaGrad: moves weighted by each "
                   f"worker's accumulator increment).  Needs pip install '{DISTRIBUTION}[dask]'.")
@click.option("--scheduler-file", type=InputPath("a scheduler file"), default=None, show_default=False,
              help="Train on Dask with the scheduler named in this file (dask scheduler --scheduler-file).")
@click.option("--scheduler-timeout", type=click.FloatRange(min=0, min_open=True), default=D.scheduler_timeout,
              help="Seconds to wait for the scheduler and its first worker (or --min-workers) before giving up "
                   "(exit status 69).")
@click.option("--min-workers", type=click.IntRange(1), default=D.min_workers,
              help="With --scheduler ADDRESS or --scheduler-file: wait (up to --scheduler-timeout) until this "
                   "many workers have joined; a run trains on the workers there when it starts.  "
                   "local:N waits for its N.")
@click.option("--rows-per-round", type=click.IntRange(0), default=D.rows_per_round,
              help="With --scheduler: rows of a synchronisation round, all workers together (0: "
                   "--syncs-per-epoch rounds per epoch; --eval-every / --checkpoint-every rows also end a round).")
@click.option("--syncs-per-epoch", type=click.IntRange(1), default=D.syncs_per_epoch,
              help="With --scheduler: rounds per epoch (the workers' models are merged this many times "
                   "an epoch, and at every --eval-every / --checkpoint-every rows); or give --rows-per-round.")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=D.optimizer,
              help="Update rule.  rowwise-adagrad: AdaGrad with one accumulator per factor vector "
                   "(k + 1 values per vector instead of 2k while training; CPU only).")
@click.option("--adam-beta1", type=float, default=D.adam_beta1, help="Adam: decay of the gradient mean.")
@click.option("--adam-beta2", type=float, default=D.adam_beta2, help="Adam: decay of the squared-gradient mean.")
@click.option("--adam-eps", type=float, default=D.adam_eps, help="Adam: denominator epsilon.")
@click.option("--ftrl-alpha", type=float, default=D.ftrl_alpha, help="FTRL: step size alpha.")
@click.option("--ftrl-beta", type=float, default=D.ftrl_beta, help="FTRL: beta (smooths early per-coordinate steps).")
@click.option("--batch-size", type=click.IntRange(1), default=D.batch_size,
              help="Rows per update: 1 steps after every row (libffm); more averages the rows' gradients.")
@click.option("--lr-schedule", type=click.Choice(SCHEDULES), default=D.lr_schedule,
              help="Step-size schedule over the run's updates (after warm-up).")
@click.option("--warmup-steps", type=click.IntRange(0), default=D.warmup_steps,
              help="Updates over which the step size rises linearly from 0.")
@click.option("--clip-norm", type=float, default=D.clip_norm,
              help="Scale each parameter vector's gradient to at most this L2 norm (0: off).")
@click.option("--label-smoothing", type=float, default=D.label_smoothing,
              help="Mix targets with the uniform distribution: y(1-e) + e/C.")
@click.option("--class-weight", type=str, default=None, show_default=False,
              help="'balanced' or LABEL=W[,LABEL=W...]: multiply the loss of rows with that label.")
@click.option("--weights", "weights_file", type=InputPath("a weights file"), default=None,
              help="File with one weight per training row (or give LABEL:WEIGHT labels inline).")
@click.option("--on-nonfinite", type=click.Choice(ON_NONFINITE), default=D.on_nonfinite,
              help="A row with a NaN/inf score or loss: stop with an error, or skip its update and count it.")
@click.option("--norm/--no-norm", "normalize", default=D.normalize, help="Instance-wise normalization (scale each row to unit length).")
@click.option("--bias/--no-bias", "use_bias", default=D.use_bias, help="Global bias term.")
@click.option("--linear/--no-linear", "use_linear", default=D.use_linear, help="Per-feature linear weights.")
@click.option("--auto-stop", is_flag=True, default=D.auto_stop, help="Stop when the validation metric gets worse; keep the best epoch's model (--patience 1).")
@click.option("--patience", type=click.IntRange(0), default=D.patience,
              help="Stop after this many epochs (validations, with --eval-every) without a better validation "
                   "metric; keep the best model (0: off).")
@click.option("--eval-every", type=click.IntRange(0), default=D.eval_every,
              help="Also validate every this many training rows (needs -p): logged, kept as the best model, "
                   "and counted by --patience, which then stops within an epoch (0: at epoch ends only).")
@click.option("--early-stopping-metric", type=click.Choice(list(METRICS)), default=None, show_default=False,
              help="Validation metric for --patience.  [default: logloss; rmse for regression]")
@click.option("--shuffle/--no-shuffle", default=D.shuffle, help="Shuffle rows every epoch.")
@click.option("--seed", type=click.IntRange(0), default=D.seed, help="Seed for initialisation and shuffling.")
@click.option("--init-scale", type=float, default=D.init_scale, help="Factor initialisation: U(0, init_scale)/sqrt(k).")
@click.option("--storage", type=click.Choice(STORAGES), default=D.storage,
              help="How FFM factor weights are held while training: float16 halves the weights' "
                   "memory traffic (float32 arithmetic and AdaGrad state; FFM, AdaGrad, CPU only).")
@click.option("--hot-features", type=AutoCount(MAX_HOT_FEATURES), default="auto", show_default=True,
              help="FM, FFM, FwFM and FmFM with 2+ threads: train the N features most rows carry "
                   "on a copy per thread, merged into the model every 256 rows (features on fewer "
                   "than 1 in 16 rows every 1,024, 4,096, 16,384, 65,536 or 262,144 rows, by their "
                   "share; the bias and field-pair weights, also copied, every 4), instead of every "
                   "thread writing their shared cache lines (auto: on 100k rows or more, those on "
                   "0.02% of rows or more, up to 8 MiB per thread; 0: plain Hogwild, no copies).  "
                   "--device cuda, batch size 1: "
                   "the bias, the field-pair parameters and the N features most rows carry step once "
                   "per wave of rows in flight with the sum of the rows' steps (auto: those the rows "
                   "in flight share; sgd, adagrad, ftrl).")
@click.option("--exact-adagrad", is_flag=True, default=D.exact_adagrad,
              help="Refine AdaGrad's (and rowwise-adagrad's) 1/sqrt to float32 precision (slower); by "
                   "default the CPU's estimate, as libffm.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=D.format, help="Input format (auto: from the first row).")
@read_limit_options
@click.option("--max-feature-id", type=click.IntRange(0, 2**31 - 1), default=D.max_feature_id,
              help="Largest accepted feature id; a larger one is a bad row.")
@click.option("--max-memory", type=ByteSize(), default=None, show_default=False,
              help="Refuse a model larger than this (e.g. 8G) before allocating it.  [default: physical memory]")
@click.option("--label-column", default=D.label_column, help="Parquet: the label column.")
@click.option("--weight-column", default=None, show_default=False,
              help="Parquet: a column of row weights.  [default: 'weight' when the sparse schema has it]")
@click.option("--columns", default=None, show_default=False,
              help="Parquet wide tables: the columns to use as fields, comma-separated.  [default: all others]")
@click.option("--hash-bits", type=click.IntRange(1, 31), default=D.hash_bits,
              help="Parquet wide tables: categorical values are hashed into 2^N feature ids.")
@click.option("--float-columns", type=click.Choice(["value", "bucket"]), default=D.float_columns,
              help="Parquet wide tables: a float column is one feature with the number as its value, or "
                   "a categorical feature per bucket floor(ln(x)^2) (x > 2; else floor(x)).")
@click.option("--cache/--no-cache", default=D.cache,
              help="Keep parsed rows in a binary cache for later epochs and runs (checked against the inputs).")
@click.option("--cache-dir", type=click.Path(), default=None, show_default=False,
              help="Where caches live.  [default: $FMCLI_CACHE_DIR, else $XDG_CACHE_HOME/fmcli or ~/.cache/fmcli]")
@click.option("--cache-max-size", type=ByteSize(minimum=0), default=None, show_default=False,
              help="What all caches of the cache directory may take: when a cache is written, the least "
                   "recently used others (never one a run is reading) are removed to make room, and a "
                   "cache larger than this alone is used for this run only (0: no cache is kept after the "
                   "run).  [default: $FMCLI_CACHE_MAX_SIZE, else the smaller of 10G and a tenth of the "
                   "cache file system's free space]")
@click.option("--cache-check", type=click.Choice(CACHE_CHECKS), default=D.cache_check,
              help="How a cached input is recognised: stat (inode, size, change and modification "
                   "times, first and last MiB) or content (a hash of every byte, read once more per run).")
@click.option("--memory-budget", type=ByteSize(), default=D.memory_budget, show_default="1G",
              help="Parsed data up to this size is held in memory (exact shuffles); more is streamed "
                   "in chunks from the cache.")
@click.option("--checkpoint-dir", type=OutputPath(directory=True), default=None, show_default=False,
              help="Write checkpoints here (at every epoch's end, every --checkpoint-every rows, and on "
                   "SIGINT/SIGTERM) so that --resume can continue the run.")
@click.option("--checkpoint-every", type=click.IntRange(0), default=D.checkpoint_every,
              help="Also checkpoint every this many training rows (0: at epoch ends only).")
@click.option("--keep-checkpoints", type=click.IntRange(1), default=D.keep_checkpoints,
              help="Checkpoints to keep (older ones are removed).")
@click.option("--init-model", type=InputPath("a model file"), default=None, show_default=False,
              help="Warm start: continue from this model's weights and optimizer state (new feature "
                   "and field ids start fresh).")
@click.option("--resume", "resume_dir", type=InputPath("a checkpoint directory", directory=True), default=None,
              show_default=False,
              help="Continue the run whose checkpoints are in this directory, with its settings, inputs "
                   "and output.  -t N extends (or ends sooner) the run to N epochs, exactly as if it had "
                   "been started so (a finished run trains its last epoch again; not with --lr-schedule "
                   "linear or cosine); -o, -q, -s, --log-json, --lock-timeout, --no-optimizer-state, "
                   "--max-memory, --keep-checkpoints and the cache options apply.  Any other option "
                   "(command line, FM_TRAIN_* or --config) that differs from the checkpoint's "
                   "(-k, --model, -l, -r, the optimizer's, the data files, ...) is refused (exit status 2).")
@click.option("--no-optimizer-state", is_flag=True, help="Leave optimizer state out of the model file (smaller; no warm start).")
@click.option("--spec", "spec_file", type=InputPath("a spec file"), default=None, show_default=False,
              help="Preprocessing spec written by fm convert for raw logs: stored in the model, so that "
                   "fm predict can score raw rows with the very same transform.")
@click.option("--tune-budget", type=Duration(), default=None, show_default=False,
              help="Search the hyperparameters for this long first (e.g. 2m) and write the best model: "
                   "fm tune --budget with its default space, the options given fixed for every trial, "
                   "the search in OUTPUT.tune.  Needs -p; not with the options fm tune refuses (-t, "
                   "--auto-stop, --resume, --init-model, ...).")
@_ops.train_options
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
def train(train_files, output, valid, quiet, no_optimizer_state, fmt, weights_file, resume_dir, spec_file,
          tune_budget, **options):
    """Train a model on TRAIN_FILE... (libffm or libsvm text, plain or .gz,
    .bz2, .zst, .lz4; Parquet; '-' reads stdin).  Several files and quoted
    globs ('day_*.ffm.gz') are read one after another as one data set.  An
    input may be a URL that fsspec reads ('s3://ctr/day_*.ffm.gz'; needs
    the [dask] extra and the protocol's package).

    With --no-bias --no-linear and the default AdaGrad this is libffm's FFM.
    The model file is written only when training succeeds, atomically.
    """
    from ..train import train as run_training

    if tune_budget is not None:
        if resume_dir is not None:
            raise click.UsageError("--resume does not go with --tune-budget: fm tune --resume DIR continues "
                                   "a search")
        from ._search import tune_in_train

        return tune_in_train(click.get_current_context(), tune_budget)
    if resume_dir is not None:
        from ..train import resume_arguments

        from ._resume import resume_settings

        saved = resume_arguments(resume_dir)
        run = saved["run"]
        # the checkpoint's settings; options that would change them are refused
        cfg, given = resume_settings(click.get_current_context(), saved)
        train_files = tuple(run.get("train_files") or ())
        valid, weights_file = run.get("valid"), run.get("weights")
        spec_file = run.get("spec")
        output = output or run.get("output")
        if "no_optimizer_state" not in given:
            no_optimizer_state = bool(run.get("no_optimizer_state", no_optimizer_state))
        if not train_files or not output:
            raise click.UsageError(f"{saved['path']} does not say which files to train on or where to write")
        _render.info(f"resuming {saved['path']} with its settings; writing {output}"
                     + (f"; {cfg.epochs} epochs" if cfg.epochs != saved["config"].epochs else ""), quiet)
    else:
        if not train_files:
            raise click.UsageError("Missing argument 'TRAIN_FILE...'.")
        cfg = Config(format=fmt, **options)
    if output is None:
        from ..data.source import reads_once

        if reads_once(train_files[0]) or any(c in train_files[0] for c in "*?["):
            raise click.UsageError("training from stdin, a pipe or a glob needs -o/--output")
        output = default_output(train_files[0])
    # No output may be an input (nor two outputs one file), --dry-run included.
    from ..checkpoint import OWNED_NAMES

    refuse_clobber(
        {"the training file": train_files, "the validation file": valid, "the --weights file": weights_file,
         "the --init-model file": cfg.init_model, "the --spec file": spec_file,
         "the --config file": click.get_current_context().meta.get("fm.config_file"),
         "the --resume directory": resume_dir},
        {"-o": output, "--log-json": _ops.current_run().log_json},
        directories={"--checkpoint-dir": (cfg.checkpoint_dir, OWNED_NAMES)},
        allow={("-o", "the --init-model file"), ("--checkpoint-dir", "the --resume directory")})
    spec = None
    if spec_file is not None:
        from ..data.criteo import load_spec

        spec = load_spec(spec_file)   # a bad spec fails before training
    session = _ops.current_run()
    if session.dry_run:
        return session.plan(cfg, train_files, valid, output, weights_file, resume_dir)
    session.begin(cfg, output, list(train_files), valid, weights_file)
    check_writable(output)
    model = run_training(
        cfg,
        list(train_files),
        valid,
        weights=weights_file,
        resume=resume_dir,
        run_info={"train_files": [_absolute(f) for f in train_files], "valid": _absolute(valid),
                  "weights": _absolute(weights_file), "output": os.path.abspath(output),
                  "no_optimizer_state": no_optimizer_state, "spec": _absolute(spec_file),
                  **session.run_info()},
        on_epoch=session.on_epoch(_render.EpochTable(quiet)),
        on_eval=session.on_eval(lambda stats: _render.info(_render.eval_line(stats), quiet)),
        log=lambda msg: _render.info(msg, quiet),
        **session.callbacks(run_training),
    )
    session.trained(model)
    if spec is not None:
        from ..data.criteo import attach_spec

        attach_spec(model, spec)
    model.save(output, include_state=not no_optimizer_state)
    session.saved(output)
    t = model.meta["training"]
    summary = f"wrote {output} (epoch {t['model_epoch']}"
    for name, value in (t.get("valid_metrics") or {}).items():
        summary += f", va_{name} " + ("n/a" if value is None else f"{value:.5f}")   # None: undefined
    if cfg.l1:
        summary += f", {t['zero_weights']} weights exactly zero"
    _render.info(summary + ")", quiet)
