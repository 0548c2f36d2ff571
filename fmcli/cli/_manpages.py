"""Manual pages for fm(1) and its commands, generated from the click tree.

``python -m fmcli.cli._manpages [--date YYYY-MM-DD] DIR`` (``make man``)
writes DIR/fm.1 and DIR/fm-COMMAND.1: the name, synopsis, description and
every option as ``--help`` shows them, then the hand-written EXIT STATUS,
ENVIRONMENT, FILES, EXAMPLES and SEE ALSO sections below.  man/fm-model.5
is written by hand.
"""

from __future__ import annotations

import argparse
import inspect as _inspect
import os
import re

import click

from .._version import DISTRIBUTION

__all__ = ["render", "write_pages", "escape", "option_markup", "summary", "synopsis"]

# -- text -------------------------------------------------------------------------------


def escape(text: str) -> str:
    r"""Text for roff: backslashes as \e, hyphens as \- (so that options and
    commands can be copied from the page), and a line that would start with
    a control character made safe with \&."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in text.split("\n"))


def option_markup(name: str) -> str:
    """How an option name is written on a page: bold, with roff minus signs."""
    return f"\\fB{escape(name)}\\fR"


def _paragraphs(text: str) -> list[str]:
    """click help text: paragraphs, each reflowed unless it starts with \\b."""
    out = []
    for block in re.split(r"\n\s*\n", _inspect.cleandoc(text or "").strip()):
        lines = block.split("\n")
        if lines and lines[0].strip() == "\b":
            body = [line for line in lines[1:]]
            indent = min((len(line) - len(line.lstrip()) for line in body if line.strip()), default=0)
            out.append(".nf\n.RS 4\n" + "\n".join(escape(line[indent:]) for line in body) + "\n.RE\n.fi")
        else:
            out.append(escape(" ".join(line.strip() for line in lines if line.strip())))
    return [p for p in out if p]


def summary(command: click.Command, limit: int) -> str:
    """A command's one-line description: its short_help, or else the first
    sentence of its help, shortened at a word to `limit` characters with
    "...".  Made here rather than by click, whose rule for this changed
    between releases (8.5 reads "DATA... with" as one sentence), so that the
    pages do not depend on the click version that generates them."""
    if command.short_help:
        return " ".join(_inspect.cleandoc(command.short_help).split())
    words = _inspect.cleandoc(command.help or "").partition("\f")[0].partition("\n\n")[0].split()
    if words and words[0] == "\b":
        words = words[1:]
    # a period ends the sentence unless a lowercase word follows it ("DATA... with", "e.g. a")
    for i, word in enumerate(words):
        if word.endswith(".") and (i == len(words) - 1 or not words[i + 1][0].islower()):
            words = words[:i + 1]
            break
    text = " ".join(words)
    if len(text) <= limit:
        return text
    while words and len(" ".join(words)) + len("...") > limit:
        words = words[:-1]
    return " ".join(words) + "..."


def _metavar(arg: click.Argument) -> str:
    """An argument as the synopsis shows it, by the rule of click 8.5 (older
    releases wrote an optional choice as [[a|b]])."""
    if arg.metavar is not None:
        return arg.metavar
    if isinstance(arg.type, click.Choice):
        choices = "|".join(map(str, arg.type.choices))
        var = f"{{{choices}}}" if arg.required else f"[{choices}]"
    else:
        var = (arg.name or "").upper()
    if not arg.required and not (var.startswith("[") and var.endswith("]")):
        var = f"[{var}]"
    return var + ("..." if arg.nargs != 1 else "")


def synopsis(command: click.Command, ctx: click.Context) -> str:
    """What follows the command's name in its SYNOPSIS: [OPTIONS], then the
    arguments (and COMMAND [ARGS]... for a group)."""
    pieces = [command.options_metavar] if command.options_metavar else []
    pieces += [_metavar(p) for p in command.get_params(ctx) if isinstance(p, click.Argument)]
    if isinstance(command, click.Group):
        pieces.append(command.subcommand_metavar)
    return " ".join(pieces)


def _record(opts: str) -> str:
    """'-k, --factors INTEGER RANGE' -> bold options, italic metavars."""
    parts = []
    for token in opts.split(" "):
        if not token:
            continue
        if token == "/":
            parts.append("/")
        elif token.startswith("-"):
            comma = token.endswith(",")
            parts.append(option_markup(token.rstrip(",")) + ("," if comma else ""))
        else:
            parts.append(f"\\fI{escape(token)}\\fR")
    return " ".join(parts)


# -- the hand-written sections -----------------------------------------------------------

EXIT_CODES = [
    (0, "Success."),
    (1, "A runtime failure: training diverged (a non-finite score, loss or weight; no model is "
        "written), or memory ran out."),
    (2, "Usage error: an unknown option, a bad option value, a missing argument; or an output "
        "that is one of the inputs (the same file by any name, link or path) or another output: "
        "nothing is read or written."),
    (65, "Bad input data (reported as FILE:LINE: what is wrong); a corrupt, truncated or "
         "foreign model file, or one whose weights hold NaN or infinity; a score that is not a "
         "finite number; wide Parquet whose columns are not the model's."),
    (66, "An input file (data, model, weights, configuration file) does not exist, cannot "
         "be read, or is a directory; an input URL that its file system cannot find or read."),
    (69, "\\-\\-scheduler (fm train, fm predict): the Dask cluster cannot be reached within "
         "\\-\\-scheduler\\-timeout, has no worker (or fewer than \\-\\-min\\-workers) by then, runs "
         "another fmcli build, or the dask extra is "
         "not installed.  \\-\\-to onnx (fm convert): the onnx extra is not installed.  An input "
         "URL: fsspec, or its protocol's package (s3fs, gcsfs, ...), is not installed."),
    (70, "Internal error (a bug); fm \\-\\-debug shows the traceback."),
    (71, "fm serve cannot listen on \\-\\-host and \\-\\-port: the port is in use, a port below 1024 "
         "needs privileges, or the host is unknown."),
    (73, "An output file or the checkpoint directory cannot be created (no such directory, "
         "no permission, a read\\-only file system, a name too long, a URL: outputs are local "
         "files); checked before any work."),
    (74, "I/O error while writing an output: the disk is full, the file is larger than the "
         "file size limit (ulimit \\-f), the quota is exceeded, or the device failed (also "
         "\\-o /dev/full).  The file it would have replaced is left unchanged.  Also: the "
         "binary cache was changed by another process while a run read it and could not be "
         "rebuilt from the inputs (nothing was trained on its bytes); or fm cache clear could "
         "not remove a cache (no permission)."),
    (75, "The output is being written by another fm run (see FILES); try again later or give "
         "\\-\\-lock\\-timeout."),
    (78, "Invalid configuration: a bad combination of options, a bad value, a value of the "
         "wrong type or an unknown key in the \\-\\-config file, a bad value or an unknown name "
         "in an FM_* environment variable, early stopping on a metric the validation set "
         "leaves undefined, or \\-\\-resume on data that changed."),
    (130, "Interrupted by SIGINT (Ctrl\\-C); the previous output file, if any, is unchanged."),
    (141, "The reader of standard output went away (e.g. fm predict ... | head); nothing more "
          "is printed."),
    (143, "Terminated by SIGTERM; the previous output file, if any, is unchanged."),
]

# which exit statuses each page lists
_CODES = {
    "fm": None,
    "train": {0, 1, 2, 65, 66, 69, 70, 73, 74, 75, 78, 130, 143},
    "tune": {0, 1, 2, 65, 66, 70, 73, 74, 75, 78, 130, 143},
    "predict": {0, 2, 65, 66, 69, 70, 73, 74, 75, 78, 130, 141, 143},
    "convert": {0, 2, 65, 66, 69, 70, 73, 74, 75, 78, 130, 141, 143},
    "inspect": {0, 2, 65, 66, 70, 78, 130, 141, 143},
    "cache": {0, 2, 66, 70, 74, 78, 130, 141, 143},
    "serve": {0, 2, 65, 66, 70, 71, 78, 130, 143},
    "ffm-train": {0, 2, 65, 66, 70, 73, 74, 130, 143},
    "ffm-predict": {0, 2, 65, 66, 70, 73, 74, 130, 141, 143},
}

# libffm's own commands, installed beside fm (see fmcli.cli.libffm_compat)
LIBFFM_PROGRAMS = ("ffm-train", "ffm-predict")

_ENV_SETTINGS = (
    "Any option of fm {cmd}: the variable's name is FM_{CMD}_ and the option's long name in "
    "upper case with _ for \\-, e.g. {example}.  Flags take true/false, 1/0, yes/no{flag}.  "
    "The command line overrides the environment, which overrides a \\-\\-config file, which "
    "overrides the defaults; a bad value, or an FM_{CMD}_ name that is no option's (a typo), is an "
    "error with exit status 78."
)
_ENV_EXAMPLES = {
    "train": ("FM_TRAIN_EPOCHS=3, FM_TRAIN_LEARNING_RATE=0.05",
              "; a flag pair such as \\-\\-norm/\\-\\-no\\-norm is FM_TRAIN_NORM=false"),
    "predict": ("FM_PREDICT_THREADS=4, FM_PREDICT_STRICT_IDS=1", ""),
    "tune": ("FM_TUNE_TRIALS=50, FM_TUNE_BUDGET=10m", ""),
    "inspect": ("FM_INSPECT_JSON=1", ""),
    "convert": ("FM_CONVERT_MIN_COUNT=20, FM_CONVERT_HASH_SPACE=2000000", ""),
    "cache": ("FM_CACHE_CACHE_DIR=/var/cache/fm", ""),
    "serve": ("FM_SERVE_PORT=9000, FM_SERVE_THREADS=8", ""),
}

_LIBFFM_ENV = [
    ("FM_TRAIN_*, FM_PREDICT_*, \\-\\-config files",
     "Not read: a libffm script behaves the same however fm is configured."),
    ("FMCLI_CACHE_DIR, FMCLI_CACHE_MAX_SIZE",
     "Where the binary cache of the parsed rows is kept, and its cap (see fm\\-train(1), "
     "fm\\-cache(1))."),
]

_GOMP_SPINCOUNT = ("GOMP_SPINCOUNT",
                   "How long an idle thread of GNU OpenMP spins before it sleeps; fmcli sets 10000 when it "
                   "is unset (the library's default, 300000, takes a core from the thread that reads the "
                   "input).")

_OPENBLAS = ("OPENBLAS_THREAD_TIMEOUT",
             "How long an idle worker thread of OpenBLAS (numpy's linear algebra) spins before it "
             "sleeps, as a power of two of CPU cycles; the commands set 4 when it is unset (the "
             "library's default, 28, spins about 0.1 s after numpy loads and after each vector "
             "product, taking a core from fmcli's own threads).")

_ENV = {
    "ffm-train": _LIBFFM_ENV,
    "ffm-predict": _LIBFFM_ENV[:1],
    "fm": [
        ("FM_DEBUG", "Set to 1 to show Python tracebacks, as \\-\\-debug does."),
        ("FM_TRAIN_*, FM_PREDICT_*, FM_INSPECT_*",
         "Options of the commands (see fm\\-train(1), fm\\-predict(1), fm\\-inspect(1)), e.g. "
         "FM_TRAIN_EPOCHS=3 or FM_PREDICT_THREADS=4."),
        ("FMCLI_CACHE_DIR, XDG_CACHE_HOME", "Where fm train keeps its cache (see fm\\-train(1))."),
        ("FMCLI_CACHE_MAX_SIZE", "What all caches may take (see fm\\-train(1) and fm\\-cache(1))."),
        ("SOURCE_DATE_EPOCH", "Makes model files reproducible (see fm\\-train(1))."),
    ],
    "train": [
        ("FMCLI_CACHE_DIR",
         "Directory for the binary caches of parsed training data when \\-\\-cache\\-dir is not given.  "
         "A directory that cannot be used (read\\-only, a regular file) turns the cache off "
         "for the run, with a note."),
        ("XDG_CACHE_HOME",
         "Without FMCLI_CACHE_DIR, caches go to $XDG_CACHE_HOME/fmcli, or ~/.cache/fmcli when it "
         "is unset."),
        ("FMCLI_CACHE_MAX_SIZE",
         "The cap on what all caches of the directory may take when \\-\\-cache\\-max\\-size "
         "(or FM_TRAIN_CACHE_MAX_SIZE, or the cache\\-max\\-size key) is not given: a size such as "
         "2G; 0 keeps no cache after a run.  Default: the smaller of 10 GiB and a tenth of the space "
         "free on the cache's file system (the caches' own bytes counted as free)."),
        ("SOURCE_DATE_EPOCH",
         "A Unix time: the model file's created_at is that time and wall\\-clock timings are left "
         "out of it, so that the same data, settings and thread count (\\-s 1) give a "
         "byte\\-identical model file."),
        ("OMP_NUM_THREADS", "Not used: \\-s/\\-\\-threads sets the number of training threads."),
        _GOMP_SPINCOUNT,
        _OPENBLAS,
    ],
    "predict": [
        ("OMP_NUM_THREADS", "Not used: \\-s/\\-\\-threads sets the number of scoring threads "
                            "(by default every CPU the process may run on)."),
        _GOMP_SPINCOUNT,
        _OPENBLAS,
    ],
    "inspect": [],
    "cache": [
        ("FMCLI_CACHE_DIR, XDG_CACHE_HOME", "The cache directory, as for fm train (see fm\\-train(1))."),
        ("FMCLI_CACHE_MAX_SIZE", "The cap the list shows (see fm\\-train(1)); a bad value is an error "
                                 "with exit status 78."),
    ],
    "convert": [
        ("TMPDIR", "Where standard input is spooled when a raw log has to be read twice "
                   "(counting rare values) or its header read ahead."),
    ],
}

_FILES = {
    "train": [
        (".MODEL.lock",
         "Next to the model file being written (e.g. .ctr.fm.lock for ctr.fm): an advisory "
         "lock (flock) held from before training until the model is written, with the pid and "
         "start time of the run holding it.  A second run writing the same model exits with "
         "status 75, naming the holder, or waits up to \\-\\-lock\\-timeout seconds.  It is "
         "removed when the run ends."),
        (".MODEL.*.tmp",
         "The model being written; renamed over MODEL only once complete (removed on failure)."),
        ("$FMCLI_CACHE_DIR/*.fmcache",
         "Binary caches of parsed training data, one per set of inputs and parse options; a run "
         "reading one holds a shared flock on it, and its modification time is its last use.  "
         "See fm\\-cache(1)."),
    ],
    "cache": [
        ("$FMCLI_CACHE_DIR/*.fmcache",
         "The caches (by default under $XDG_CACHE_HOME/fmcli or ~/.cache/fmcli).  A run reading one "
         "holds a shared flock on it: eviction and fm cache clear take an exclusive lock without "
         "waiting before removing a cache, and skip one they cannot lock."),
        ("$FMCLI_CACHE_DIR/.fmcache-*.tmp",
         "A cache being written; fm cache clear removes those whose writer is gone."),
    ],
    "predict": [
        (".OUTPUT.lock", "As for fm train: the lock of \\-o OUTPUT while it is written."),
    ],
    "tune": [
        (".OUTPUT.lock", "As for fm train: the lock of \\-o OUTPUT while the search runs."),
        ("OUTPUT.tune/tune.json",
         "The search (\\-\\-dir): its base configuration, space, seed, the trials' configurations and "
         "the rung plan.  fm tune \\-\\-resume reads it."),
        ("OUTPUT.tune/results.jsonl",
         "One JSON line per finished (trial, rung), appended as each ends."),
        ("OUTPUT.tune/trials/NNNN/*.fm",
         "Each trial's models: the end of each rung (continued by the next) and its best epoch's."),
    ],
    "convert": [
        (".OUTPUT.lock", "As for fm train: the lock of each output (OUTPUT and, with \\-\\-split, its "
                         ".valid sibling) while it is written."),
        ("OUTPUT.spec.json",
         "Raw logs: the preprocessing spec (see PREPROCESSING SPEC)."),
    ],
}

_EXAMPLES = {
    "ffm-train": [
        ("A libffm script, unchanged: train with a validation set, stop when its logloss rises, "
         "then score the test set.  The model file is libffm's own binary format, so libffm's "
         "ffm\\-predict reads it too:",
         "ffm\\-train \\-k 4 \\-t 15 \\-p va.ffm \\-\\-auto\\-stop tr.ffm model\n"
         "ffm\\-predict te.ffm model out.txt"),
        ("Five\\-fold cross\\-validation (no model is written):", "ffm\\-train \\-v 5 tr.ffm"),
    ],
    "ffm-predict": [
        ("Score with a model from ffm\\-train, libffm itself or fm train; the probabilities go to "
         "out.txt and the logloss to standard output:",
         "ffm\\-predict te.ffm model out.txt"),
    ],
    "convert": [
        ("Raw Criteo logs to libffm with a 90/10 train/validation split, training with the spec, "
         "and scoring raw test rows through the same transform:",
         "fm convert criteo train.txt.gz \\-o tr.ffm \\-\\-split 0.9\n"
         "fm train \\-\\-spec tr.ffm.spec.json \\-p tr.valid.ffm \\-o ctr.fm tr.ffm\n"
         "fm predict \\-\\-no\\-label ctr.fm test.txt > p.txt"),
        ("The same transform for another day's logs (no counting pass):",
         "fm convert \\-\\-spec tr.ffm.spec.json day_1.gz \\-o day_1.ffm"),
        ("libffm to Parquet and back to compressed libffm; libsvm with a field map to libffm:",
         "fm convert tr.ffm \\-o tr.parquet\n"
         "fm convert tr.parquet \\-o tr.ffm.zst\n"
         "fm convert \\-\\-fields fields.txt tr.svm \\-o tr.ffm"),
        ("A smaller model for serving; libffm's model files in and out:",
         "fm convert ctr.fm \\-o small.fm \\-\\-dtype float16 \\-\\-strip\\-state\n"
         "fm convert train.model \\-\\-from libffm\\-model \\-o ctr.fm\n"
         "fm convert ctr.fm \\-\\-to libffm\\-bin\\-model \\-o ctr.model"),
        ("An ONNX graph of a model, for any ONNX runtime (needs pip install 'fm\\-ctr[onnx]'):",
         "fm convert ctr.fm \\-o ctr.onnx"),
    ],
    "cache": [
        ("The caches, their sizes, last use, inputs and whether a run is reading them:",
         "fm cache"),
        ("Remove the caches not used for a week (a daily cron job), or all that no run is reading:",
         "fm cache clear \\-\\-older\\-than 7d\nfm cache clear"),
        ("Keep at most 2 GiB of caches, for every run of this user:",
         "export FMCLI_CACHE_MAX_SIZE=2G"),
        ("Total size of the caches, as JSON:",
         "fm cache \\-\\-json | jq .total_bytes"),
    ],
    "fm": [
        ("Train an FFM model with validation, score a test file and look at the model:",
         "fm train \\-p va.ffm \\-o ctr.fm tr.ffm\nfm predict ctr.fm te.ffm > predictions.txt\n"
         "fm inspect ctr.fm"),
        ("Enable shell completion for bash (zsh and fish: zsh_source, fish_source):",
         'eval "$(_FM_COMPLETE=bash_source fm)"'),
    ],
    "train": [
        ("libffm's FFM with its defaults:",
         "fm train \\-\\-no\\-bias \\-\\-no\\-linear \\-k 4 \\-t 15 \\-r 0.2 \\-l 0.00002 \\-p va.ffm tr.ffm"),
        ("Stop when the validation logloss stops improving and keep the best epoch:",
         "fm train \\-t 50 \\-p va.ffm \\-\\-patience 2 \\-o ctr.fm tr.ffm"),
        ("Settings from a file (a [train] table: epochs = 20, learning\\-rate = 0.05, norm = false), "
         "one of them overridden from the environment and one on the command line:",
         "FM_TRAIN_EPOCHS=5 fm train \\-\\-config ctr.toml \\-k 8 \\-o ctr.fm tr.ffm"),
        ("How many parameters and how much memory a model of these data would need, without "
         "training:",
         "fm train \\-\\-dry\\-run \\-\\-model ffm \\-k 8 'day_*.ffm.gz'"),
        ("Log the run as JSON lines for a scheduler, and wait up to 10 minutes for another run "
         "writing the same model:",
         "fm train \\-\\-log\\-json runs.jsonl \\-\\-lock\\-timeout 600 \\-o ctr.fm tr.ffm"),
    ],
    "tune": [
        ("Search the default space with 27 trials on every CPU, for at most 10 minutes, and keep a "
         "leaderboard:",
         "fm tune \\-p va.ffm \\-\\-budget 10m \\-\\-leaderboard board.csv \\-o best.fm tr.ffm"),
        ("A space of one's own, reproducible (one thread per trial), continued after a crash:",
         "fm tune \\-s 1 \\-\\-param 'l2=loguniform(1e-6,1e-2)' \\-\\-param 'k=choice(4,8,16)' "
         "\\-p va.ffm \\-o best.fm tr.ffm\nfm tune \\-\\-resume best.fm.tune"),
    ],
    "serve": [
        ("Serve two models on port 9000; score libffm rows and JSON rows with curl:",
         "fm serve \\-\\-port 9000 ctr=ctr.fm multi.fm\n"
         "curl \\-\\-data\\-binary @te.ffm \\-H 'Content\\-Type: text/plain' "
         "localhost:9000/v1/models/ctr/predict\n"
         "curl \\-d '{\"fields\": [0, 1], \"features\": [3, 7]}' \\-H 'Content\\-Type: application/json' "
         "localhost:9000/v1/models/ctr/predict"),
        ("Retrain every night: the server picks up the new file (written atomically by fm train) "
         "without a failed request; every answer names the checksum of the model that scored it:",
         "fm train \\-p va.ffm \\-o ctr.fm tr.ffm"),
    ],
    "predict": [
        ("Probabilities to a file, metrics on standard error:",
         "fm predict ctr.fm te.ffm \\-o predictions.txt"),
        ("Score compressed data from standard input:",
         "zcat te.ffm.gz | fm predict \\-q ctr.fm \\- > predictions.txt"),
        ("Multiclass: the most probable label of each row:",
         "fm predict \\-\\-top1 multi.fm te.svm"),
    ],
    "inspect": [
        ("A model's header as JSON, e.g. its validation metrics:",
         "fm inspect \\-\\-json ctr.fm | jq .header.training.valid_metrics"),
        ("The 20 strongest interactions of an FFM model, the fields of its features learned from a "
         "sample of the training data, and its field\\-pair strengths:",
         "fm inspect \\-\\-top\\-interactions 20 \\-\\-field\\-pairs \\-\\-data 'day_0.ffm.gz' "
         "\\-\\-rows 1000000 ctr.fm"),
        ("Statistics of compressed training files (rows, ids, labels, bad rows):",
         "fm inspect \\-\\-max\\-bad\\-rows 100 'day_*.ffm.gz'"),
    ],
}

# further sections of a command's page: (title, paragraphs)
_SECTIONS = {
    "fm": [
        ("NOTES", [
            f"fm is installed by the Python distribution {escape(DISTRIBUTION)}: pip install "
            f"{escape(DISTRIBUTION)}, or pip install '{escape(DISTRIBUTION)}[gpu]' for CuPy and "
            "\\-\\-device cuda.  Its Python package is fmcli.  The unrelated distribution named "
            "fmcli on PyPI installs another program under the same package name, so the two cannot "
            "share one environment.",
        ]),
    ],
    "convert": [
        ("RAW LOG TRANSFORM", [
            "Every feature column is one field (in the order of the spec's columns) and gives one "
            "entry of value 1 per row.  Its token: an integer (criteo) or number (csv) x > 2 is "
            "b<floor(ln(x)^2)>, x <= 2 is v<floor(x)> (0 is v0, \\-2 is v\\-2), an empty value is "
            "the empty token; a categorical value is itself, or <rare> when it was seen fewer than "
            "\\-\\-min\\-count times in the training rows; Avazu's hour YYMMDDHH is HH.  With "
            "\\-\\-numeric\\-rule value a numeric column is one entry with the number as its value "
            "(none when empty).  The feature id is H(column, token) mod \\-\\-hash\\-space, H being "
            "64\\-bit FNV\\-1a over the column name's UTF\\-8 bytes, a zero byte and the token's, "
            "then MurmurHash3's 64\\-bit finaliser (the hash of Parquet wide tables: with a "
            "power\\-of\\-two space a categorical value gets the same id in both).",
            "Criteo rows hold the label, I1..I13 and C1..C26, tab\\-separated; a row whose trailing "
            "empty columns were left out is read as if they were there.  Avazu and csv input start "
            "with a header; columns are found by name in each file, and a file without the label "
            "column has no labels.  Values cannot contain line breaks.",
        ]),
        ("PREPROCESSING SPEC", [
            "A JSON object, version fmcli_spec 1: kind (criteo, avazu or csv), input (delimiter, "
            "header, layout, label), columns (name, field, type: numeric, categorical or hour, and "
            "how many values are kept), numeric_rule, min_count, tokens, hash (function fnv1a64\\-fmix64, "
            "space), rows (what the counting pass saw) and vocabulary: the kept values of each "
            "categorical column as base64 of their sorted little\\-endian 64\\-bit H.  A value is "
            "kept exactly when its H is in that set (a 64\\-bit hash: collisions are negligible).  "
            "fm train \\-\\-spec stores it in the model's header (key spec; the vocabulary goes to "
            "the array spec_vocabulary, see fm\\-model(5)); fm predict then transforms raw input "
            "with it and fm convert \\-\\-spec applies it to more logs.",
        ]),
    ],
    "cache": [
        ("JSON OUTPUT", [
            "fm cache \\-\\-json: one object, schema (fmcli.cache/1), directory, total_bytes, "
            "max_bytes (the cap), max_bytes_from (environment or default) and caches, most recently "
            "used first, each with file, path, bytes, last_used (UTC, ISO 8601), last_used_unix, "
            "last_used_seconds_ago, in_use, valid, problem (why an invalid one cannot be used), inputs "
            "(their absolute paths) and rows.  fm cache clear \\-\\-json: schema "
            "(fmcli.cache.clear/1), directory, dry_run, removed, in_use and failed (each a list of "
            "file and bytes; failed adds error) and freed_bytes.",
        ]),
    ],
    "inspect": [
        ("INTERACTION STRENGTHS", [
            "The strength of a pair of features is the magnitude of the weight the model gives to the "
            "product of their values: FM |<v_i, v_j>|; FwFM |r_ab <v_i, v_j>| for feature i in field "
            "a and j in field b; FmFM |v_i^T M_ab v_j|, the field pair's matrix taken with the lower "
            "field first (for a > b, |v_j^T M_ba v_i|; within one field, its symmetric part "
            "(M_aa + M_aa^T)/2); FFM |<w_i,b, w_j,a>|, w_i,b being feature i's vector for field b.  "
            "A multiclass model's strength is the largest over its classes, or that of \\-\\-class.",
            "\\-\\-top\\-interactions is exact: every candidate pair is scored, a block of features "
            "against chunks of the others at a time, keeping a running top N, and a block whose "
            "Cauchy\\-Schwarz bound (FmFM: times the matrix's spectral norm) cannot beat it is "
            "skipped.  FFM, FwFM and FmFM pairs are pairs of "
            "(feature, field) occurrences: their fields come from \\-\\-data, or from the "
            "feature\\-to\\-field map of the preprocessing spec stored in the model (fm convert's, when "
            "every categorical column has a kept vocabulary).  Two features of one field are a "
            "candidate only when \\-\\-data shows rows with several features in that field.  When "
            "the model file keeps optimizer state, features that training never updated are left out.",
            "\\-\\-field\\-pairs: FwFM's |r_ab|; FFM, FmFM and FM: the mean strength of the feature "
            "pairs that occur together in rows of \\-\\-data (the pairs are counted too); without "
            "\\-\\-data, FmFM: ||M_ab||_F / sqrt(k), the size of the learned matrix (|r| for M = r I, "
            "FwFM's figure), FFM and FM: the mean over all pairs of features of the two fields in the "
            "spec's map (at most 2048 "
            "features of a field, drawn at random).  \\-\\-features: score = |linear weight| + the "
            "norm of the feature's factor vector (FFM: of all its field blocks; multiclass: over all "
            "classes).",
        ]),
        ("DATA STATISTICS", [
            "Distinct fields and features are counted exactly, in a bitmap, while every id is below "
            "2^28, and estimated by HyperLogLog (about 1% error) beyond; the output says which.  "
            "Labels: positives and negatives (binary), the range of numbers (regression), the rows "
            "of each class (multiclass).",
        ]),
        ("JSON OUTPUT", [
            "One object.  For a model: schema (fmcli.inspect/1), type (model), path, file_bytes, "
            "header (the file's header as stored), n_parameters, has_optimizer_state, model, memory "
            "(parameter_bytes, optimizer_state_bytes, optimizer_state_slots, "
            "optimizer_state_in_file, spec_bytes, file_bytes), hyperparameters, optimizer, training, "
            "history (an object per epoch), spec (null without one) and, when asked for, sample, "
            "top_interactions, field_pairs and top_features.  For data: schema "
            "(fmcli.inspect.data/1), type (data), files, format, rows, truncated, entries, "
            "entries_per_row, rows_without_features, values_other_than_1, fields and features "
            "(distinct, exact, max_id), labels, weights, bad_rows, seconds.  NaN and infinities are "
            "written as null.",
        ]),
    ],
}


_NAMES = {
    "fm": "train and serve click-through-rate models (LR, FM, FFM, FwFM)",
    "train": "train a click-through-rate model on libffm, libsvm or Parquet data",
    "tune": "search hyperparameters and write the best model",
    "serve": "score rows over HTTP with one or more models, reloading replaced model files",
    "predict": "score data with a trained model",
    "inspect": "show what a model file or data files hold",
    "convert": "convert data (libffm, libsvm, Parquet, raw click logs) and model files",
    "cache": "list and clear the binary caches of parsed training data",
    "ffm-train": "train libffm's field-aware factorization machine, with libffm's options",
    "ffm-predict": "score data with a libffm or fmcli model, as libffm's ffm-predict does",
}


def _tp(term: str, text: str) -> str:
    return f".TP\n{term}\n{text}"


def _section(title: str, body: list[str]) -> str:
    return f".SH {title}\n" + "\n".join(body)


def _exit_status(name: str) -> str:
    wanted = _CODES.get(name)
    items = [_tp(f"\\fB{code}\\fR", text) for code, text in EXIT_CODES if wanted is None or code in wanted]
    return _section("EXIT STATUS", items)


def _environment(name: str, command: click.Command) -> str | None:
    items = []
    has_config = any(p.name == "config_file" for p in command.params)
    if name not in ("fm",) + LIBFFM_PROGRAMS and any(isinstance(p, click.Option) and p.envvar
                                                    for p in command.params):
        example, flag = _ENV_EXAMPLES.get(name, (f"FM_{name.upper()}_QUIET=1", ""))
        text = _ENV_SETTINGS.format(CMD=name.upper(), cmd=name, example=example, flag=flag)
        if not has_config:
            text = text.replace(", which overrides a \\-\\-config file,", ",")
        items.append(_tp(f"\\fBFM_{name.upper()}_\\fIOPTION\\fR", text))
    items += [_tp(f"\\fB{term}\\fR", text) for term, text in _ENV.get(name, [])]
    return _section("ENVIRONMENT", items) if items else None


def _configuration(name: str, command: click.Command) -> str | None:
    if not any(p.name == "config_file" for p in command.params):
        return None
    example = {"train": "[train]\nepochs = 20\nlearning\\-rate = 0.05\nnorm = false\ncache\\-dir = \"/var/cache/fm\"",
               "predict": "[predict]\nthreads = 4\nstrict\\-ids = true",
               "convert": "[convert]\nmin\\-count = 20\nhash\\-space = 2000000",
               "tune": "[tune]\ntrials = 50\nbudget = \"10m\"\nnorm = false",
               "serve": "[serve]\nport = 9000\nthreads = 8\nmax\\-request\\-bytes = \"64M\""}[name]
    return _section("CONFIGURATION FILE", [
        f"\\-\\-config FILE reads the [{name}] table of a TOML file (other commands' tables, such "
        "as [train] and [predict], may be in the same file).  Its keys are the long option names "
        "with \\- or _ (learning\\-rate or learning_rate); a flag pair is one boolean "
        "(norm = false for \\-\\-no\\-norm); paths are relative to the current directory.  "
        "An unknown key or table, or a value of the wrong type, is an error (exit status 78) "
        "naming the file and the key.  Options on the command line and FM_* environment "
        "variables override the file.",
        ".PP",
        ".nf\n.RS 4\n" + example + "\n.RE\n.fi",
    ] + ([".PP",
          "The model file records where each setting came from (config_sources: cli, env, "
          "config or default); fm inspect \\-\\-json shows it."] if name == "train" else []))


def _files(name: str) -> str | None:
    items = [_tp(f"\\fB{escape(term)}\\fR", text) for term, text in _FILES.get(name, [])]
    return _section("FILES", items) if items else None


def _examples(name: str) -> str:
    body = []
    for text, commands in _EXAMPLES[name]:
        body += [".PP", text, ".PP", ".nf\n.RS 4\n" + commands + "\n.RE\n.fi"]
    return _section("EXAMPLES", body[1:])


def _see_also(page: str, names: list[str]) -> str:
    refs = [f"\\fB{n}\\fR({s})" for n, s in [("fm", 1)] + [(f"fm\\-{c}", 1) for c in names]
            + [("fm\\-model", 5)] if n.replace("\\-", "-") != page]
    return _section("SEE ALSO", [", ".join(refs)])


def render(command: click.Command, ctx: click.Context, date: str, version: str,
           siblings: list[str], key: str | None = None) -> str:
    """One man page for `command` (the root group or one of its commands, or
    a program of its own such as ffm-train: then `key` names its entries in
    the tables above)."""
    path = ctx.command_path                  # "fm" or "fm train"
    page = path.replace(" ", "-")
    name = key or (ctx.info_name if ctx.parent is not None else "fm")
    short = _NAMES.get(name) or summary(command, 80).rstrip(".")
    lines = [f'.TH "{page.upper()}" "1" "{date}" "{DISTRIBUTION} {version}" "fmcli manual"',
             ".SH NAME", f"{escape(page)} \\- {escape(short)}",
             ".SH SYNOPSIS",
             f"\\fB{escape(path)}\\fR " + escape(synopsis(command, ctx))]
    description = _paragraphs(command.help or "")
    if description:
        lines.append(".SH DESCRIPTION")
        lines.append("\n.PP\n".join(description))
    records = [p.get_help_record(ctx) for p in command.get_params(ctx)
               if isinstance(p, click.Option) and not p.hidden]
    records = [r for r in records if r]
    if records:
        lines.append(".SH OPTIONS")
        for opts, help_text in records:
            lines.append(_tp(_record(opts), "\n.br\n".join(_paragraphs(help_text)) or ""))
    for title, paragraphs in _SECTIONS.get(name, []):
        lines.append(_section(title, ["\n.PP\n".join(paragraphs)]))
    if isinstance(command, click.Group):
        lines.append(".SH COMMANDS")
        for sub_name, sub in command.commands.items():
            if sub.hidden:
                continue
            lines.append(_tp(f"\\fB{escape(sub_name)}\\fR",
                             escape(summary(sub, 100))
                             + f"  See \\fBfm\\-{escape(sub_name)}\\fR(1)."))
    for section in (_configuration(name, command), _exit_status(name), _environment(name, command),
                    _files(name), _examples(name), _see_also(page, siblings)):
        if section:
            lines.append(section)
    return "\n".join(lines) + "\n"


def pages(cli: click.Group, date: str, version: str) -> dict[str, str]:
    """File name -> page, for the group and each visible command."""
    root = click.Context(cli, info_name="fm", **cli.context_settings)
    names = [n for n, c in cli.commands.items() if not c.hidden]
    out = {"fm.1": render(cli, root, date, version, names)}
    for name in names:
        ctx = click.Context(cli.commands[name], info_name=name, parent=root,
                            **cli.commands[name].context_settings)
        out[f"fm-{name}.1"] = render(cli.commands[name], ctx, date, version, names)
    from . import libffm_compat

    for prog, command in zip(LIBFFM_PROGRAMS, (libffm_compat.ffm_train, libffm_compat.ffm_predict)):
        ctx = click.Context(command, info_name=prog, **command.context_settings)
        out[f"{prog}.1"] = render(command, ctx, date, version, names, key=prog)
    return out


def write_pages(target_dir: str, date: str, version: str | None = None) -> list[str]:
    from .. import __version__
    from . import cli

    os.makedirs(target_dir, exist_ok=True)
    written = []
    for filename, text in pages(cli, date, version or __version__).items():
        path = os.path.join(target_dir, filename)
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write fm's manual pages into DIR.")
    parser.add_argument("dir")
    parser.add_argument("--date", default=None, help="the pages' date (default: SOURCE_DATE_EPOCH or today)")
    args = parser.parse_args(argv)
    date = args.date
    if date is None:
        import time

        date = time.strftime("%Y-%m-%d", time.gmtime(int(os.environ.get("SOURCE_DATE_EPOCH", time.time()))))
    for path in write_pages(args.dir, date):
        print(path)


if __name__ == "__main__":
    main()
