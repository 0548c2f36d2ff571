"""Smaller things a new user meets: the click versions fm works with, the
build requirements, progress on a terminal, and options given with --resume."""

import gzip
import os
import pty
import re
import select
import subprocess
import sys
import sysconfig

import click
import numpy as np
import pytest
from click.testing import CliRunner

from fmcli import load_model
from fmcli.cli import _manpages, cli
from fmcli.config import Config
from fmcli.data.dataset import load_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FM = [sys.executable, "-m", "fmcli"]


def write_ffm(path, n_rows, seed=0, n_fields=5, per_field=40):
    rng = np.random.default_rng(seed)
    feats = np.arange(n_fields) * per_field + rng.integers(0, per_field, size=(n_rows, n_fields))
    labels = (rng.random(n_rows) < 1 / (1 + np.exp(-(feats % 7 - 3).sum(1) / 4))).astype(int)
    path.write_text("".join(f"{y} " + " ".join(f"{f}:{j}:1" for f, j in enumerate(row)) + "\n"
                            for y, row in zip(labels, feats)))
    return path


def fm(*args, env=None, **kwargs):
    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="fm", env=env, **kwargs)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("small")
    return {"train": write_ffm(d / "tr.ffm", 3000, 1), "valid": write_ffm(d / "va.ffm", 600, 2), "dir": d}


# ---------------------------------------------------------------------------
# 1. click: the man pages and FM_* variables do not depend on click's internals
# ---------------------------------------------------------------------------

def _command(help=None, short_help=None, params=()):
    return click.Command("x", help=help, short_help=short_help, params=list(params))


@pytest.mark.parametrize("help_text, limit, expected", [
    ("Score DATA... with MODEL_FILE: text or Parquet.\n\nMore.", 100,
     "Score DATA... with MODEL_FILE: text or Parquet."),           # click < 8.5 stopped at 'DATA...'
    ("Train a model, e.g. an FFM. Then more.", 100, "Train a model, e.g. an FFM."),
    ("One two three four five six seven", 15, "One two..."),
    ("\b\nA literal first paragraph.\n\nSecond.", 80, "A literal first paragraph."),
    ("", 80, ""),
])
def test_summary_is_made_without_click(help_text, limit, expected):
    assert _manpages.summary(_command(help=help_text), limit) == expected
    assert len(_manpages.summary(_command(help=help_text), limit)) <= max(limit, len(expected))


def test_summary_prefers_short_help():
    assert _manpages.summary(_command(help="Long. Text.", short_help="  short\n help "), 80) == "short help"


def test_synopsis_brackets_an_optional_choice_once():
    ctx = click.Context(_command())
    optional = _command(params=[click.Argument(["action"], type=click.Choice(["list", "clear"]),
                                               required=False, default="list")])
    assert _manpages.synopsis(optional, click.Context(optional)) == "[OPTIONS] [list|clear]"
    required = _command(params=[click.Argument(["action"], type=click.Choice(["a", "b"]))])
    assert _manpages.synopsis(required, click.Context(required)) == "[OPTIONS] {a|b}"
    files = _command(params=[click.Argument(["files"], nargs=-1, required=False)])
    assert _manpages.synopsis(files, click.Context(files)) == "[OPTIONS] [FILES]..."
    named = _command(params=[click.Argument(["data"], nargs=-1, metavar="DATA...")])
    assert _manpages.synopsis(named, click.Context(named)) == "[OPTIONS] DATA..."
    assert _manpages.synopsis(cli, click.Context(cli)) == "[OPTIONS] COMMAND [ARGS]..."
    assert ctx.command.name == "x"


def test_pages_use_neither_clicks_short_help_nor_its_usage(monkeypatch):
    # both changed between click releases; the pages must not change with them
    before = _manpages.pages(cli, "2026-01-01", "0")

    def broken(*args, **kwargs):
        raise AssertionError("click's version-dependent text was used")

    monkeypatch.setattr(click.Command, "get_short_help_str", broken)
    monkeypatch.setattr(click.Command, "collect_usage_pieces", broken)
    assert _manpages.pages(cli, "2026-01-01", "0") == before


def _source_recorded_late(monkeypatch):
    """Emulate click 8.4.0, which records a value's source only after
    converting it: a value that fails conversion has no source yet."""
    real = click.Context.get_parameter_source

    def late(self, name):
        if name == "epochs" and "epochs" not in self.params:
            return None
        return real(self, name)

    monkeypatch.setattr(click.Context, "get_parameter_source", late)


@pytest.mark.parametrize("late", [False, True])
def test_bad_variable_is_a_config_error_naming_it(data, monkeypatch, tmp_path, late):
    if late:
        _source_recorded_late(monkeypatch)
    r = fm("train", "-o", tmp_path / "m.fm", data["train"], env={"FM_TRAIN_EPOCHS": "two"})
    assert r.exit_code == 78, r.output
    assert r.stderr.strip().splitlines() == [
        "fm: error: environment variable FM_TRAIN_EPOCHS='two': 'two' is not a valid integer range"]


@pytest.mark.parametrize("late", [False, True])
def test_bad_command_line_value_is_not_blamed_on_the_variable(data, monkeypatch, tmp_path, late):
    if late:
        _source_recorded_late(monkeypatch)
    r = fm("train", "-t", "two", "-o", tmp_path / "m.fm", data["train"], env={"FM_TRAIN_EPOCHS": "3"})
    assert r.exit_code == 2
    assert "FM_TRAIN_EPOCHS" not in r.stderr and "'two'" in r.stderr


def _click_venv(tmp_path, version):
    """A venv with click==version in front of this interpreter's packages
    (numpy, rich, pyarrow, pytest: nothing else is downloaded)."""
    venv = tmp_path / f"click-{version}"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    got = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", site,
                          f"click=={version}"], capture_output=True, text=True, timeout=300)
    if got.returncode != 0:
        pytest.skip(f"cannot install click {version}: {got.stderr.strip().splitlines()[-1:]}")
    # after the venv's own site-packages: the packages of the interpreter running the tests
    with open(os.path.join(site, "zz_parent.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    return py


# The lower bound declared in pyproject.toml, and a release whose changes
# broke fm before (8.4.0 records where a value came from only after converting it).
@pytest.mark.slow
@pytest.mark.parametrize("version", ["8.1.0", "8.4.0"])
def test_fm_works_with_click(tmp_path, version):
    declared = re.search(r'"click>=([\d.]+)', open(os.path.join(ROOT, "pyproject.toml")).read()).group(1)
    assert version == "8.4.0" or version.startswith(declared)
    py = _click_venv(tmp_path, version)
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + str(tmp_path)}
    # click 8.1's CliRunner mixes stderr into the output unless told not to
    (tmp_path / "click81_runner.py").write_text(
        "import inspect, click.testing as t\n"
        "if 'mix_stderr' in inspect.signature(t.CliRunner.__init__).parameters:\n"
        "    init = t.CliRunner.__init__\n"
        "    t.CliRunner.__init__ = lambda self, *a, **k: init(self, *a, **{'mix_stderr': False, **k})\n")
    shown = subprocess.run([str(py), "-c", "import click, importlib.metadata as m; print(m.version('click'))"],
                           capture_output=True, text=True, env=env)
    assert shown.stdout.strip() == version
    tests = [os.path.join(ROOT, "tests", name) for name in
             ("test_safety_env.py", "test_ops.py", "test_small_things.py")]
    result = subprocess.run([str(py), "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-p", "click81_runner",
                             "-m", "not slow", *tests], capture_output=True, text=True, env=env, cwd=ROOT,
                            timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    # the man pages come out the same as with this interpreter's click
    for python, out in ((py, tmp_path / "man"), (sys.executable, tmp_path / "man-here")):
        subprocess.run([str(python), "-m", "fmcli.cli._manpages", "--date", "2026-01-01", str(out)],
                       check=True, env=env)
    for name in sorted(os.listdir(tmp_path / "man-here")):
        assert (tmp_path / "man" / name).read_text() == (tmp_path / "man-here" / name).read_text(), \
            f"{name} differs with click {version}"


# ---------------------------------------------------------------------------
# 2. build requirements: a setuptools that reads pyproject.toml without warnings
# ---------------------------------------------------------------------------

def test_build_requires_a_setuptools_that_does_not_warn():
    text = open(os.path.join(ROOT, "pyproject.toml")).read()
    requires = re.search(r"^requires = \[(.*)\]", text, re.M).group(1)
    assert '"setuptools>=77"' in requires
    # an SPDX expression: a license table is deprecated from setuptools 77 on
    assert re.search(r'^license = "BSD-3-Clause"', text, re.M)


def test_makefile_upgrades_setuptools_in_a_new_venv():
    make = open(os.path.join(ROOT, "Makefile")).read()
    venv_rule = make.split("$(PY):\n", 1)[1].split("\n\n", 1)[0]
    assert "--upgrade pip 'setuptools>=77'" in venv_rule
    assert "'setuptools>=64'" not in make


# ---------------------------------------------------------------------------
# 3. progress: on a terminal, never in redirected output
# ---------------------------------------------------------------------------

def test_load_dataset_reports_bytes_and_rows(data, tmp_path):
    calls = []
    ds = load_dataset(str(data["train"]), cache_dir=str(tmp_path / "cache"),
                      on_read=lambda *a: calls.append(a))
    assert calls, "no progress while reading"
    size = os.path.getsize(data["train"])
    names, done, totals, rows = zip(*calls)
    assert set(totals) == {size} and done[-1] == size and rows[-1] == ds.n_rows == 3000
    assert list(done) == sorted(done) and list(rows) == sorted(rows)
    assert names[-1] == str(data["train"])
    # from the cache: nothing is read, nothing reported
    calls.clear()
    assert load_dataset(str(data["train"]), cache_dir=str(tmp_path / "cache"),
                        on_read=lambda *a: calls.append(a)).cached_from == "hit"
    assert calls == []


def test_load_dataset_size_is_unknown_for_compressed_input(data, tmp_path):
    gz = tmp_path / "tr.ffm.gz"
    gz.write_bytes(gzip.compress(data["train"].read_bytes()))
    disguised = tmp_path / "plain-looking.ffm"       # compressed, whatever the name says
    disguised.write_bytes(gz.read_bytes())
    for path in (gz, disguised):
        calls = []
        load_dataset(str(path), on_read=lambda *a: calls.append(a))
        assert calls and all(c[2] is None for c in calls)
        assert calls[-1][1] == os.path.getsize(data["train"]) and calls[-1][3] == 3000


def test_several_inputs_add_up(data):
    calls = []
    load_dataset([str(data["train"]), str(data["valid"])], on_read=lambda *a: calls.append(a))
    total = os.path.getsize(data["train"]) + os.path.getsize(data["valid"])
    assert calls[-1][1:] == (total, total, 3600)


def test_train_passes_on_read(data):
    from fmcli import train

    calls = []
    train(Config(epochs=1, k=2, cache=False), str(data["train"]), str(data["valid"]),
          on_read=lambda *a: calls.append(a))
    assert {c[0] for c in calls} == {str(data["train"]), str(data["valid"])}


def run_on_terminal(args, cwd, quiet_stdout=True, timeout=120):
    """Run fm with stderr on a pseudo-terminal (stdout to a pipe unless
    told otherwise); returns (exit status, stdout, what the terminal got)."""
    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(FM + [str(a) for a in args], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE if quiet_stdout else slave, stderr=slave)
    os.close(slave)
    seen = b""
    while True:
        ready, _, _ = select.select([master], [], [], timeout)
        if not ready:
            proc.kill()
            raise AssertionError("fm did not finish")
        try:
            chunk = os.read(master, 65536)
        except OSError:      # the other end closed: the process is done
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    out = proc.stdout.read() if quiet_stdout else b""
    return proc.wait(timeout=timeout), out, seen.decode("utf-8", "replace")


def run_redirected(args, cwd):
    return subprocess.run(FM + [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=120)


BAR = re.compile(r"\x1b\[|\r|━")


def test_train_shows_reading_progress_on_a_terminal_only(data, tmp_path):
    args = ["train", "-t", "1", "-k", "2", "--no-cache", "-p", data["valid"], "-o", tmp_path / "m.fm",
            data["train"]]
    code, _, tty = run_on_terminal(args, tmp_path)
    assert code == 0, tty
    assert "reading tr.ffm" in tty or f"reading {data['train']}" in tty
    assert "3,000 rows" in tty and "MB" in tty
    plain = run_redirected(args, tmp_path)
    assert plain.returncode == 0
    assert not BAR.search(plain.stderr) and "reading " not in plain.stderr.replace(str(tmp_path), "")
    assert "read 3000 rows" in plain.stderr          # the plain log line stays
    code, _, quiet = run_on_terminal(args + ["-q"], tmp_path)
    assert code == 0 and quiet.strip() == ""


def test_predict_shows_rows_scored_on_a_terminal_only(data, tmp_path):
    model = tmp_path / "m.fm"
    assert fm("train", "-q", "-t", "1", "-k", "2", "-o", model, data["train"]).exit_code == 0
    code, out, tty = run_on_terminal(["predict", model, data["valid"]], tmp_path)
    assert code == 0
    assert "scoring" in tty and "600 rows" in tty and "rows/s" in tty
    assert len(out.splitlines()) == 600 and b"\x1b" not in out and b"scoring" not in out
    plain = run_redirected(["predict", model, data["valid"], "-o", tmp_path / "p.txt"], tmp_path)
    assert plain.returncode == 0 and "scoring" not in plain.stderr and not BAR.search(plain.stderr)
    # predictions on the terminal itself: no bar mixed into them
    code, _, both = run_on_terminal(["predict", "-q", model, data["valid"]], tmp_path, quiet_stdout=False)
    assert code == 0 and "scoring" not in both
    code, _, quiet = run_on_terminal(["predict", "-q", model, data["valid"], "-o", tmp_path / "q.txt"], tmp_path)
    assert code == 0 and "scoring" not in quiet


def test_convert_shows_rows_and_bytes_on_a_terminal_only(data, tmp_path):
    args = ["convert", data["train"], "-o", tmp_path / "tr.parquet"]
    code, _, tty = run_on_terminal(args, tmp_path)
    assert code == 0, tty
    assert "converting" in tty and "3,000 rows" in tty and "kB" in tty
    plain = run_redirected(["convert", data["train"], "-o", tmp_path / "tr2.parquet"], tmp_path)
    assert plain.returncode == 0 and "converting" not in plain.stderr and not BAR.search(plain.stderr)


def test_the_core_imports_neither_rich_nor_click():
    code = ("import sys, fmcli, fmcli.train, fmcli.predict, fmcli.convert, fmcli.data.dataset; "
            "print(sorted(m for m in ('rich', 'click') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---------------------------------------------------------------------------
# 4. --resume: options that would change the run are refused, the others apply
# ---------------------------------------------------------------------------

@pytest.fixture
def finished(data, tmp_path):
    """A finished 3-epoch run with its checkpoints (the last: the start of epoch 3)."""
    ck = tmp_path / "ck"
    r = fm("train", "-q", "-t", "3", "-k", "2", "--checkpoint-dir", ck, "-o", tmp_path / "a.fm", data["train"])
    assert r.exit_code == 0, r.output
    return ck


def arrays_equal(a, b):
    a, b = load_model(str(a)), load_model(str(b))
    return (a.params.keys() == b.params.keys() and all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
            and all(np.array_equal(a.state[k], b.state[k]) for k in (a.state or {})))


def test_more_epochs_extend_a_finished_run_exactly(data, tmp_path, finished):
    r = fm("train", "--resume", finished, "-t", "5", "-o", tmp_path / "a5.fm")
    assert r.exit_code == 0, r.stderr
    assert "5 epochs" in r.stderr
    assert fm("train", "-q", "-t", "5", "-k", "2", "-o", tmp_path / "b5.fm", data["train"]).exit_code == 0
    assert arrays_equal(tmp_path / "a5.fm", tmp_path / "b5.fm")
    meta = load_model(str(tmp_path / "a5.fm")).meta
    assert meta["training"]["epochs_run"] == 5 and meta["hyperparameters"]["epochs"] == 5


def test_epochs_from_the_environment_apply_too(data, tmp_path, finished):
    r = fm("train", "-q", "--resume", finished, "-o", tmp_path / "a4.fm", env={"FM_TRAIN_EPOCHS": "4"})
    assert r.exit_code == 0, r.stderr
    assert load_model(str(tmp_path / "a4.fm")).meta["training"]["epochs_run"] == 4


@pytest.mark.parametrize("args, named", [
    (["-k", "8"], "-k/--factors"),
    (["--model", "fm", "-l", "0.1"], "--model, -l/--l2"),
    (["-r", "0.5", "--optimizer", "sgd"], "-r/--learning-rate, --optimizer"),
    (["--seed", "3"], "--seed"),
    (["--no-norm"], "--norm/--no-norm"),
])
def test_options_that_change_the_model_are_refused(tmp_path, finished, args, named):
    r = fm("train", "--resume", finished, *args, "-o", tmp_path / "x.fm")
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fm: error: --resume")
    assert f": {named} cannot change" in lines[0]
    assert not (tmp_path / "x.fm").exists()


def test_other_data_is_refused_the_same_data_accepted(data, tmp_path, finished):
    r = fm("train", "--resume", finished, "-p", data["valid"], data["valid"], "-o", tmp_path / "x.fm")
    assert r.exit_code == 2 and "TRAIN_FILE..., -p/--valid cannot change" in r.stderr
    # a script that adds --resume to its own command line: the same values are fine
    r = fm("train", "-q", "--resume", finished, "-t", "3", "-k", "2", "--checkpoint-dir", finished,
           "-o", tmp_path / "same.fm", data["train"])
    assert r.exit_code == 0, r.stderr
    assert arrays_equal(tmp_path / "same.fm", tmp_path / "a.fm")


def test_refused_from_environment_and_config_file(tmp_path, finished):
    r = fm("train", "--resume", finished, env={"FM_TRAIN_FACTORS": "16"})
    assert r.exit_code == 2 and "-k/--factors cannot change" in r.stderr
    conf = tmp_path / "fm.toml"
    conf.write_text("[train]\nl2 = 0.5\n")
    r = fm("train", "--resume", finished, "--config", conf)
    assert r.exit_code == 2 and "-l/--l2 cannot change" in r.stderr
    # defaults are not "given": a plain --resume works
    assert fm("train", "-q", "--resume", finished, "-o", tmp_path / "plain.fm").exit_code == 0


def test_fewer_epochs_than_trained_is_refused(tmp_path, finished):
    r = fm("train", "--resume", finished, "-t", "1", "-o", tmp_path / "x.fm")
    assert r.exit_code == 2 and "-t/--epochs 1" in r.stderr and "2 epochs trained" in r.stderr
    # ending at the epoch the checkpoint starts from is exact: the model after epoch 2
    r = fm("train", "-q", "--resume", finished, "-t", "2", "-o", tmp_path / "two.fm")
    assert r.exit_code == 0, r.stderr
    assert load_model(str(tmp_path / "two.fm")).meta["training"]["epochs_run"] == 2


def test_epochs_cannot_change_with_a_schedule_over_the_run(data, tmp_path):
    ck = tmp_path / "ck"
    assert fm("train", "-q", "-t", "2", "-k", "2", "--lr-schedule", "cosine", "--checkpoint-dir", ck,
              "-o", tmp_path / "a.fm", data["train"]).exit_code == 0
    r = fm("train", "--resume", ck, "-t", "4", "-o", tmp_path / "b.fm")
    assert r.exit_code == 2 and "--lr-schedule cosine" in r.stderr
    assert fm("train", "-q", "--resume", ck, "-o", tmp_path / "b.fm").exit_code == 0


def test_output_options_apply(tmp_path, finished):
    r = fm("train", "-q", "--resume", finished, "-s", "2", "--no-optimizer-state", "-o", tmp_path / "small.fm",
           "--log-json", tmp_path / "log.jsonl")
    assert r.exit_code == 0, r.stderr
    assert r.stderr == ""
    assert not load_model(str(tmp_path / "small.fm")).state
    assert (tmp_path / "log.jsonl").read_text().count('"run_end"') == 1


def test_resume_help_says_what_applies():
    text = " ".join(fm("train", "--help").output.split())
    assert "-t N extends" in text and "refused (exit status 2)" in text


@pytest.mark.parametrize("given, expected", [(None, "4"), ("20", "20")])
def test_the_cli_keeps_openblas_threads_from_spinning(given, expected):
    # The CLI sets it (before numpy's import: OpenBLAS reads it when it
    # loads) unless the user did; the Python API leaves the environment alone.
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    if given is not None:
        env["OPENBLAS_THREAD_TIMEOUT"] = given
    code = ("import os; import fmcli.model, fmcli.predict; print(os.environ.get('OPENBLAS_THREAD_TIMEOUT')); "
            "import fmcli.cli; print(os.environ.get('OPENBLAS_THREAD_TIMEOUT'))")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(given), expected]
