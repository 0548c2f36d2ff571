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

__all__ = ["render", "write_pages", "escape", "option_markup"]

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
    (2, "Usage error: an unknown option, a bad option value, a missing argument."),
    (65, "Bad input data (reported as FILE:LINE: what is wrong), or a corrupt, truncated or "
         "foreign model file."),
    (66, "An input file (data, model, weights, configuration file) does not exist or cannot "
         "be opened."),
    (70, "Internal error (a bug); fm \\-\\-debug shows the traceback."),
    (73, "An output file cannot be created (no such directory, no permission)."),
    (74, "I/O error while writing an output: the disk is full, the file is larger than the "
         "file size limit (ulimit \\-f), the quota is exceeded, or the device failed.  The "
         "file it would have replaced is left unchanged."),
    (75, "The output is being written by another fm run (see FILES); try again later or give "
         "\\-\\-lock\\-timeout."),
    (78, "Invalid configuration: a bad combination of options, a bad value or an unknown key "
         "in the \\-\\-config file, or a bad value in an FM_* environment variable."),
    (130, "Interrupted by SIGINT (Ctrl\\-C); the previous output file, if any, is unchanged."),
    (141, "The reader of standard output went away (e.g. fm predict ... | head); nothing more "
          "is printed."),
    (143, "Terminated by SIGTERM; the previous output file, if any, is unchanged."),
]

# which exit statuses each page lists
_CODES = {
    "fm": None,
    "train": {0, 1, 2, 65, 66, 70, 73, 74, 75, 78, 130, 143},
    "predict": {0, 2, 65, 66, 70, 73, 74, 75, 78, 130, 141, 143},
    "inspect": {0, 2, 65, 66, 70, 130, 141, 143},
}

_ENV_SETTINGS = (
    "Any option of fm {cmd}: the variable's name is FM_{CMD}_ and the option's long name in "
    "upper case with _ for \\-, e.g. {example}.  Flags take true/false, 1/0, yes/no{flag}.  "
    "The command line overrides the environment, which overrides a \\-\\-config file, which "
    "overrides the defaults; a bad value is an error with exit status 78."
)
_ENV_EXAMPLES = {
    "train": ("FM_TRAIN_EPOCHS=3, FM_TRAIN_LEARNING_RATE=0.05",
              "; a flag pair such as \\-\\-norm/\\-\\-no\\-norm is FM_TRAIN_NORM=false"),
    "predict": ("FM_PREDICT_THREADS=4, FM_PREDICT_STRICT_IDS=1", ""),
    "inspect": ("FM_INSPECT_JSON=1", ""),
}

_ENV = {
    "fm": [
        ("FM_DEBUG", "Set to 1 to show Python tracebacks, as \\-\\-debug does."),
        ("FM_TRAIN_*, FM_PREDICT_*, FM_INSPECT_*",
         "Options of the commands (see fm\\-train(1), fm\\-predict(1), fm\\-inspect(1)), e.g. "
         "FM_TRAIN_EPOCHS=3 or FM_PREDICT_THREADS=4."),
        ("FMCLI_CACHE_DIR, XDG_CACHE_HOME", "Where fm train keeps its cache (see fm\\-train(1))."),
        ("SOURCE_DATE_EPOCH", "Makes model files reproducible (see fm\\-train(1))."),
    ],
    "train": [
        ("FMCLI_CACHE_DIR",
         "Directory for the binary caches of parsed training data when \\-\\-cache\\-dir is not given."),
        ("XDG_CACHE_HOME",
         "Without FMCLI_CACHE_DIR, caches go to $XDG_CACHE_HOME/fmcli, or ~/.cache/fmcli when it "
         "is unset."),
        ("SOURCE_DATE_EPOCH",
         "A Unix time: the model file's created_at is that time and wall\\-clock timings are left "
         "out of it, so that the same data, settings and thread count (\\-s 1) give a "
         "byte\\-identical model file."),
        ("OMP_NUM_THREADS", "Not used: \\-s/\\-\\-threads sets the number of training threads."),
    ],
    "predict": [
        ("OMP_NUM_THREADS", "Not used: \\-s/\\-\\-threads sets the number of scoring threads "
                            "(by default every CPU the process may run on)."),
    ],
    "inspect": [],
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
        ("$FMCLI_CACHE_DIR/*.fmcache", "Binary caches of parsed training data."),
    ],
    "predict": [
        (".OUTPUT.lock", "As for fm train: the lock of \\-o OUTPUT while it is written."),
    ],
}

_EXAMPLES = {
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
    ],
}


_NAMES = {
    "fm": "train and serve click-through-rate models (LR, FM, FFM, FwFM)",
    "train": "train a click-through-rate model on libffm, libsvm or Parquet data",
    "predict": "score data with a trained model",
    "inspect": "show what a model file holds",
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
    if name != "fm" and any(isinstance(p, click.Option) and p.envvar for p in command.params):
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
               "predict": "[predict]\nthreads = 4\nstrict\\-ids = true"}[name]
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
           siblings: list[str]) -> str:
    """One man page for `command` (the root group or one of its commands)."""
    path = ctx.command_path                  # "fm" or "fm train"
    page = path.replace(" ", "-")
    name = ctx.info_name if ctx.parent is not None else "fm"
    short = _NAMES.get(name) or command.get_short_help_str(limit=80).rstrip(".")
    lines = [f'.TH "{page.upper()}" "1" "{date}" "fmcli {version}" "fmcli manual"',
             ".SH NAME", f"{escape(page)} \\- {escape(short)}",
             ".SH SYNOPSIS",
             f"\\fB{escape(path)}\\fR " + escape(" ".join(command.collect_usage_pieces(ctx)))]
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
    if isinstance(command, click.Group):
        lines.append(".SH COMMANDS")
        for sub_name, sub in command.commands.items():
            if sub.hidden:
                continue
            lines.append(_tp(f"\\fB{escape(sub_name)}\\fR",
                             escape(sub.get_short_help_str(limit=100))
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
