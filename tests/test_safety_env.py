"""Every ordinary problem of the environment is one line and its exit code.

Not bad data but a bad setting or a bad place: a wrongly typed value in the
configuration file, a misspelt FM_* variable, an input that is a directory
or cannot be read (named on the command line or matched by a glob), a full
device as the output, a checkpoint directory that cannot be written, an
output name too long for the file system, a file name holding a newline.
Each must give one printable line ``fm: error: ...`` naming the file (or
key, or variable) and the documented exit status -- never click's usage
block, never a traceback, never exit status 70 -- and must fail before any
training, leaving no output behind.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import subprocess
import sys

import pytest

from fmcli.cli import cli
from fmcli.errors import printable
from clirun import invoke

GOOD = b"1 0:1:1 1:2:1 2:3:0.5\n0 0:4:1 1:5:1 2:6:1\n1 0:1:1 1:5:1 2:3:1\n"
ROOT_UNREADABLE = "/sys/bus/pci/rescan"   # write-only: even root cannot open it for reading


@pytest.fixture(autouse=True)
def _no_fm_variables(monkeypatch):
    """The tests set the FM_* variables they need and no others."""
    for name in list(os.environ):
        if name.startswith("FM_"):
            monkeypatch.delenv(name)


def fm(tmp_path, *args, env=None):
    return invoke(*args, cwd=tmp_path, env=env, catch_exceptions=False)


def one_line(result, code: int) -> str:
    """The single error line of a failed command, checked to be clean."""
    err = result.stderr
    assert result.exit_code == code, (result.exit_code, err)
    assert "Traceback" not in err and "Usage:" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("fm: error: "), err
    assert all(32 <= ord(ch) < 127 for ch in lines[0]), f"non-printable characters in {lines[0]!r}"
    return lines[0]


@pytest.fixture()
def data(tmp_path):
    (tmp_path / "tr.ffm").write_bytes(GOOD)
    return tmp_path / "tr.ffm"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    (d / "tr.ffm").write_bytes(GOOD)
    res = fm(d, "train", "-q", "-t", "1", "tr.ffm", "-o", "m.fm")
    assert res.exit_code == 0, res.stderr
    return d / "m.fm"


# --------------------------------------------------------------------------
# The configuration file: one type rule for every key
# --------------------------------------------------------------------------

TRAIN_TYPE_CASES = [
    ('epochs = "1"', r"\[train\] epochs: expected an integer, found '1' \(a string; write 1 without quotes\)"),
    ('norm = "false"', r"\[train\] norm: expected true or false, found 'false' \(a string; write false"),
    ('bias = 1', r"\[train\] bias: expected true or false, found 1"),
    ('learning-rate = "0.1"', r"\[train\] learning-rate: expected a number, found '0.1'"),
    ('l2 = "1e-5"', r"\[train\] l2: expected a number, found '1e-5'"),
    ('seed = "seven"', r"\[train\] seed: expected an integer, found 'seven'$"),
    ('epochs = 1.5', r"\[train\] epochs: expected an integer, found 1.5"),
    ('model = 5', r"\[train\] model: expected one of lr, fm, ffm, fwfm, fmfm, found 5"),
    ('valid = 3', r"\[train\] valid: expected a path \(a string\), found 3"),
    ('label-column = 7', r"\[train\] label-column: expected a string, found 7"),
    ('epochs = true', r"\[train\] epochs: expected an integer, found true"),
]


@pytest.mark.parametrize("line,pattern", TRAIN_TYPE_CASES, ids=[c[0] for c in TRAIN_TYPE_CASES])
def test_config_value_of_the_wrong_type(tmp_path, data, line, pattern):
    (tmp_path / "c.toml").write_text(f"[train]\n{line}\n")
    msg = one_line(fm(tmp_path, "train", "--config", "c.toml", data, "-o", "m.fm"), 78)
    assert msg.startswith("fm: error: c.toml: "), msg
    assert re.search(pattern, msg), msg
    assert not (tmp_path / "m.fm").exists()


@pytest.mark.parametrize("line", ["epochs = 1", "epochs = 1.0", "norm = false", "learning-rate = 1",
                                  "memory-budget = \"64M\"", "memory-budget = 67108864",
                                  "hot-features = \"auto\"", "hot-features = 0", "model = \"fm\""])
def test_config_values_of_the_right_type_still_work(tmp_path, data, line):
    (tmp_path / "c.toml").write_text(f"[train]\nepochs = 1\n{line}\n" if "epochs" not in line
                                     else f"[train]\n{line}\n")
    res = fm(tmp_path, "train", "-q", "--config", "c.toml", data, "-o", "m.fm")
    assert res.exit_code == 0, res.stderr
    assert (tmp_path / "m.fm").exists()


def test_config_types_for_predict_and_convert(tmp_path, data, model):
    (tmp_path / "p.toml").write_text('[predict]\nthreads = "2"\n')
    msg = one_line(fm(tmp_path, "predict", "--config", "p.toml", model, data), 78)
    assert "p.toml: [predict] threads: expected an integer, found '2'" in msg
    (tmp_path / "c.toml").write_text('[convert]\nmin-count = "20"\n')
    msg = one_line(fm(tmp_path, "convert", "--config", "c.toml", data, "-o", "o.svm"), 78)
    assert "c.toml: [convert] min-count: expected an integer, found '20'" in msg
    assert not (tmp_path / "o.svm").exists()


# --------------------------------------------------------------------------
# FM_<COMMAND>_* variables: a typo is an error, as an unknown config key is
# --------------------------------------------------------------------------

@pytest.mark.parametrize("name,args,suggestion", [
    ("FM_TRAIN_EPOCH", ["train", "tr.ffm", "-o", "m.fm"], "FM_TRAIN_EPOCHS"),
    ("FM_TRAIN_LEARNINGRATE", ["train", "tr.ffm", "-o", "m.fm"], "FM_TRAIN_LEARNING_RATE"),
    ("FM_TRAIN_NO_NORM", ["train", "tr.ffm", "-o", "m.fm"], "FM_TRAIN_NORM"),
    ("FM_TRAIN_HELP", ["train", "tr.ffm", "-o", "m.fm"], None),
    ("FM_PREDICT_THREAD", ["predict", "MODEL", "tr.ffm"], "FM_PREDICT_THREADS"),
    ("FM_CONVERT_MIN_COUNTS", ["convert", "tr.ffm", "-o", "o.svm"], "FM_CONVERT_MIN_COUNT"),
    ("FM_INSPECT_JSONN", ["inspect", "MODEL"], "FM_INSPECT_JSON"),
    ("FM_CONVERT_XYZZY", ["convert", "tr.ffm", "-o", "o.svm"], None),
])
def test_unknown_command_variable(tmp_path, data, model, name, args, suggestion):
    args = [model if a == "MODEL" else a for a in args]
    msg = one_line(fm(tmp_path, *args, env={name: "3"}), 78)
    assert f"environment variable {name}: no option of fm {args[0]} reads it" in msg
    if suggestion:
        assert f"(did you mean {suggestion}?)" in msg
    else:
        assert "did you mean" not in msg
    assert not (tmp_path / "m.fm").exists() and not (tmp_path / "o.svm").exists()


def test_known_variables_still_work(tmp_path, data):
    (tmp_path / "c.toml").write_text("[train]\nepochs = 1\n")
    env = {"FM_TRAIN_EPOCHS": "1", "FM_TRAIN_NORM": "false", "FM_TRAIN_CONFIG": "c.toml",
           "FM_TRAIN_QUIET": "1", "FM_DEBUG": "0",
           # another command's variables (a typo included) are that command's business
           "FM_PREDICT_THREADS": "2", "FM_PREDICT_THREADZ": "2",
           # not command options: never checked here
           "FMCLI_DEBUG": "0", "FM_TRAINING_NOTE": "x"}
    res = fm(tmp_path, "train", data, "-o", "m.fm", env=env)
    assert res.exit_code == 0, res.stderr
    assert (tmp_path / "m.fm").exists()


def test_every_option_variable_is_known():
    from fmcli.settings import _options, check_envvars

    for name, command in cli.commands.items():
        environ = {p.envvar: "x" for p in _options(command) if isinstance(p.envvar, str)}
        assert environ, name
        check_envvars(cli, name, environ)     # raises nothing


def test_bad_variable_value_is_one_printable_line(tmp_path, data):
    msg = one_line(fm(tmp_path, "train", data, "-o", "m.fm", env={"FM_TRAIN_EPOCHS": "1\n2"}), 78)
    assert "FM_TRAIN_EPOCHS='1\\n2'" in msg


# --------------------------------------------------------------------------
# Inputs that are directories or cannot be read: exit 66, one line
# --------------------------------------------------------------------------

def _unreadable(tmp_path, name: str) -> str:
    """A file under tmp_path that this process cannot open for reading."""
    path = tmp_path / name
    if os.geteuid() != 0:
        path.write_bytes(GOOD)
        path.chmod(0)
        return name
    try:
        with open(ROOT_UNREADABLE, "rb"):
            pass
    except PermissionError:
        path.symlink_to(ROOT_UNREADABLE)
        return name
    except OSError:
        pass
    pytest.skip("no file that root cannot read on this system")


# (id, arguments with BAD for the path under test)
INPUT_CASES = [
    ("train-file", ["train", "BAD", "-o", "m.fm"]),
    ("train-valid", ["train", "tr.ffm", "-p", "BAD", "-o", "m.fm"]),
    ("train-weights", ["train", "tr.ffm", "--weights", "BAD", "-o", "m.fm"]),
    ("train-init-model", ["train", "tr.ffm", "--init-model", "BAD", "-o", "m.fm"]),
    ("train-spec", ["train", "tr.ffm", "--spec", "BAD", "-o", "m.fm"]),
    ("train-config", ["train", "tr.ffm", "--config", "BAD", "-o", "m.fm"]),
    ("predict-model", ["predict", "BAD", "tr.ffm", "-o", "m.fm"]),
    ("predict-data", ["predict", "MODEL", "BAD", "-o", "m.fm"]),
    ("predict-config", ["predict", "--config", "BAD", "MODEL", "tr.ffm", "-o", "m.fm"]),
    ("inspect-input", ["inspect", "BAD"]),
    ("inspect-data", ["inspect", "MODEL", "--features", "1", "--data", "BAD"]),
    ("convert-input", ["convert", "BAD", "-o", "m.ffm"]),
    ("convert-fields", ["convert", "tr.ffm", "--fields", "BAD", "-o", "m.ffm"]),
    ("convert-spec", ["convert", "criteo", "raw.txt", "--spec", "BAD", "-o", "m.ffm"]),
    ("convert-config", ["convert", "--config", "BAD", "tr.ffm", "-o", "m.ffm"]),
]


def _args(case_args, bad, model):
    return [bad if a == "BAD" else model if a == "MODEL" else a for a in case_args]


@pytest.mark.parametrize("how", ["relative", "absolute", "symlink"])
@pytest.mark.parametrize("case,args", INPUT_CASES, ids=[c[0] for c in INPUT_CASES])
def test_directory_as_input(tmp_path, data, model, case, args, how):
    (tmp_path / "sub.ffm").mkdir()
    bad = {"relative": "sub.ffm", "absolute": str(tmp_path / "sub.ffm"), "symlink": "link.ffm"}[how]
    if how == "symlink":
        (tmp_path / "link.ffm").symlink_to("sub.ffm")
    msg = one_line(fm(tmp_path, *_args(args, bad, model)), 66)
    assert msg.startswith(f"fm: error: {bad}: is a directory, expected "), msg
    assert not (tmp_path / "m.fm").exists() and not (tmp_path / "m.ffm").exists()


@pytest.mark.parametrize("case,args", INPUT_CASES, ids=[c[0] for c in INPUT_CASES])
def test_unreadable_input(tmp_path, data, model, case, args):
    bad = _unreadable(tmp_path, "secret.ffm")
    msg = one_line(fm(tmp_path, *_args(args, bad, model)), 66)
    assert msg == f"fm: error: cannot read {bad}: Permission denied", msg
    assert not (tmp_path / "m.fm").exists() and not (tmp_path / "m.ffm").exists()


@pytest.mark.parametrize("case,args", INPUT_CASES, ids=[c[0] for c in INPUT_CASES])
def test_unreadable_input_permission_bits(tmp_path, data, model, case, args, monkeypatch):
    """What chmod 000 does for anyone but root, simulated where the tests run as root."""
    (tmp_path / "secret.ffm").write_bytes(GOOD)
    real_open = os.open

    def no_permission(path, flags, *rest, **kw):
        if os.path.basename(os.fspath(path)) == "secret.ffm":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return real_open(path, flags, *rest, **kw)

    monkeypatch.setattr(os, "open", no_permission)
    msg = one_line(fm(tmp_path, *_args(args, "secret.ffm", model)), 66)
    assert msg == "fm: error: cannot read secret.ffm: Permission denied", msg
    assert not (tmp_path / "m.fm").exists() and not (tmp_path / "m.ffm").exists()


@pytest.mark.parametrize("command", ["train", "predict", "inspect", "convert"])
def test_unreadable_file_matched_by_a_glob(tmp_path, model, command):
    (tmp_path / "day_0.ffm").write_bytes(GOOD)
    bad = _unreadable(tmp_path, "day_1.ffm")
    args = {"train": ["train", "day_*.ffm", "-o", "m.fm"], "predict": ["predict", model, "day_*.ffm", "-o", "m.fm"],
            "inspect": ["inspect", "day_*.ffm"], "convert": ["convert", "day_*.ffm", "-o", "m.ffm"]}[command]
    msg = one_line(fm(tmp_path, *args), 66)
    assert msg == f"fm: error: cannot read {bad}: Permission denied", msg
    assert not (tmp_path / "m.fm").exists() and not (tmp_path / "m.ffm").exists()


def test_directory_matched_by_a_glob(tmp_path):
    (tmp_path / "day_0.ffm").write_bytes(GOOD)
    (tmp_path / "day_1.ffm").mkdir()
    msg = one_line(fm(tmp_path, "train", "day_*.ffm", "-o", "m.fm"), 66)
    assert msg.startswith("fm: error: day_1.ffm: is a directory"), msg


def test_resume_from_a_file(tmp_path, data):
    msg = one_line(fm(tmp_path, "train", "--resume", data.name), 66)
    assert msg == "fm: error: tr.ffm: is not a directory, expected a checkpoint directory", msg


def test_output_that_is_a_directory(tmp_path, data, model):
    (tmp_path / "out").mkdir()
    for args in (["train", data, "-o", "out"], ["predict", model, data, "-o", "out"],
                 ["convert", data, "-o", "out", "--to", "libsvm"], ["train", data, "-o", "m.fm", "--log-json", "out"]):
        res = fm(tmp_path, *args)
        msg = one_line(res, 73)
        assert "out" in msg


# --------------------------------------------------------------------------
# Devices and streams as outputs: written in place; a full device is exit 74
# --------------------------------------------------------------------------

needs_dev_full = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")


@needs_dev_full
@pytest.mark.parametrize("args", [
    ["predict", "MODEL", "tr.ffm", "-o", "/dev/full"],
    ["train", "-q", "-t", "1", "tr.ffm", "-o", "/dev/full"],
    ["convert", "tr.ffm", "-o", "/dev/full", "--to", "libffm"],
    ["convert", "MODEL", "-o", "/dev/full"],
], ids=["predict", "train", "convert-data", "convert-model"])
def test_dev_full(tmp_path, data, model, args):
    msg = one_line(fm(tmp_path, *[model if a == "MODEL" else a for a in args]), 74)
    assert msg == "fm: error: cannot write output /dev/full: No space left on device", msg
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="no /dev/null")
def test_dev_null_is_written_in_place(tmp_path, data, model):
    for args in (["predict", model, data, "-o", "/dev/null"], ["train", "-q", "-t", "1", data, "-o", "/dev/null"]):
        res = fm(tmp_path, *args)
        assert res.exit_code == 0, res.stderr
        assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def _fm_process(args, cwd, stdout):
    return subprocess.run([sys.executable, "-m", "fmcli", *map(str, args)], cwd=cwd, stdout=stdout,
                          stderr=subprocess.PIPE, timeout=120)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="no /proc/self/fd")
@pytest.mark.parametrize("target", ["/proc/self/fd/1", "/dev/stdout"])
def test_link_to_redirected_stdout(tmp_path, data, model, target):
    """-o through a link to stdout, stdout redirected to a file: the
    predictions go to that file, and the link stays a link (renaming a new
    file onto it would replace the link, not write to the stream)."""
    if not os.path.exists(target):
        pytest.skip(f"no {target}")
    (tmp_path / "out").symlink_to(target)
    with open(tmp_path / "p.txt", "wb") as sink:
        proc = _fm_process(["predict", "-q", model, data, "-o", "out"], tmp_path, sink)
    assert proc.returncode == 0, proc.stderr
    assert os.path.islink(tmp_path / "out")
    assert len((tmp_path / "p.txt").read_text().splitlines()) == 3


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="no /proc/self/fd")
def test_link_to_stdout_appended_with_shell_append(tmp_path, data, model):
    """`-o /dev/stdout >> all.txt` adds to all.txt; it must not truncate it."""
    (tmp_path / "out").symlink_to("/proc/self/fd/1")
    (tmp_path / "all.txt").write_text("earlier line\n")
    with open(tmp_path / "all.txt", "ab") as sink:
        proc = _fm_process(["predict", "-q", model, data, "-o", "out"], tmp_path, sink)
    assert proc.returncode == 0, proc.stderr
    lines = (tmp_path / "all.txt").read_text().splitlines()
    assert lines[0] == "earlier line" and len(lines) == 4


def test_fd_links_are_streams(tmp_path):
    from fmcli.atomic import is_special

    (tmp_path / "plain").write_bytes(b"x")
    (tmp_path / "link").symlink_to("plain")
    assert not is_special(tmp_path / "plain") and not is_special(tmp_path / "link")
    assert not is_special(tmp_path)
    with open(tmp_path / "plain", "rb") as f:
        assert is_special(f"/proc/self/fd/{f.fileno()}") == os.path.isdir("/proc/self/fd")
        if os.path.isdir("/dev/fd"):
            assert is_special(f"/dev/fd/{f.fileno()}")


# --------------------------------------------------------------------------
# Checkpoint directories and over-long names: checked before training
# --------------------------------------------------------------------------

def _trained(result) -> bool:
    return "tr_logloss" in result.stderr or "epoch" in result.stderr.lower()


@pytest.mark.parametrize("where", ["under-a-file", "a-file", "proc", "too-long"])
def test_unwritable_checkpoint_dir_fails_before_training(tmp_path, data, where):
    ckpt = {"under-a-file": "tr.ffm/ck", "a-file": "tr.ffm.bak", "proc": "/proc/self",
            "too-long": "c" * 300}[where]
    if where == "a-file":
        (tmp_path / ckpt).write_bytes(b"keep me\n")
    if where == "proc" and not os.path.isdir(ckpt):
        pytest.skip("no /proc")
    res = fm(tmp_path, "train", "-t", "3", data, "-o", "m.fm", "--checkpoint-dir", ckpt)
    msg = one_line(res, 73)
    assert f"checkpoint directory {ckpt}" in msg, msg
    assert not _trained(res)
    assert not (tmp_path / "m.fm").exists()
    if where == "a-file":
        assert (tmp_path / ckpt).read_bytes() == b"keep me\n"


def test_checkpoint_dir_preflight_in_the_api(tmp_path):
    from fmcli import Config
    from fmcli.errors import OutputError
    from fmcli.train import train

    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(OutputError, match="checkpoint directory"):
        # the data does not even exist: the directory is refused first
        train(Config(checkpoint_dir=str(tmp_path / "f" / "ck")), str(tmp_path / "missing.ffm"))


def test_new_nested_checkpoint_dir_still_works(tmp_path, data):
    res = fm(tmp_path, "train", "-q", "-t", "2", data, "-o", "m.fm", "--checkpoint-dir", "a/b/ck")
    assert res.exit_code == 0, res.stderr
    names = os.listdir(tmp_path / "a" / "b" / "ck")
    assert names and all(n.startswith("ckpt-") for n in names)      # no probe file left behind


@pytest.mark.parametrize("command", ["train", "predict", "convert"])
def test_output_name_too_long(tmp_path, data, model, command):
    name = "n" * 250 + ".fm"
    args = {"train": ["train", "-t", "3", data, "-o", name], "predict": ["predict", model, data, "-o", name],
            "convert": ["convert", data, "-o", name, "--to", "libsvm"]}[command]
    res = fm(tmp_path, *args)
    msg = one_line(res, 73)
    assert msg.startswith(f"fm: error: cannot create output {name}: the file name is too long (253 bytes; at most ")
    assert not _trained(res)
    assert os.listdir(tmp_path) == [data.name]     # no output, no temporary or lock file


def test_output_path_too_long(tmp_path, data):
    deep = "/".join(["d" * 200] * 21) + "/m.fm"
    res = fm(tmp_path, "train", "-t", "3", data, "-o", deep)
    msg = one_line(res, 73)
    assert ": the path is too long (" in msg
    assert not _trained(res)


def test_longest_accepted_name_works(tmp_path, data, model):
    name = "n" * 238 + ".fm"      # 241 bytes: room left for '.NAME.XXXXXXXX.tmp'
    res = fm(tmp_path, "predict", "-q", model, data, "-o", name)
    assert res.exit_code == 0, res.stderr
    assert len((tmp_path / name).read_text().splitlines()) == 3


# --------------------------------------------------------------------------
# Control characters in names never split or colour the error line
# --------------------------------------------------------------------------

def test_printable_escapes_control_characters():
    assert printable("plain/name é.ffm") == "plain/name é.ffm"
    assert printable("a\nb\tc\rd") == "a\\nb\\tc\\rd"
    assert printable("x\x1b[31my\x7f") == "x\\x1b[31my\\x7f"
    assert printable(os.fsdecode(b"bad\xff")) == "bad\\xff"
    assert printable("line\u2028sep") == "line\\u2028sep"


@pytest.mark.parametrize("name", ["a\nb.ffm", "tab\there.ffm", "esc\x1b[31m.ffm", "cr\rx.ffm"])
def test_newline_in_data_file_name(tmp_path, name):
    (tmp_path / name).write_bytes(GOOD + b"1 a:b:c\n")
    msg = one_line(fm(tmp_path, "train", name, "-o", "m.fm"), 65)
    assert msg.startswith(f"fm: error: {printable(name)}:4: "), msg
    assert not (tmp_path / "m.fm").exists()


def test_newline_in_directory_and_output_names(tmp_path, data, model):
    (tmp_path / "dir\nx.ffm").mkdir()
    msg = one_line(fm(tmp_path, "predict", model, "dir\nx.ffm"), 66)
    assert msg == "fm: error: dir\\nx.ffm: is a directory, expected a data file"
    msg = one_line(fm(tmp_path, "train", data, "-o", "no\ndir/m.fm"), 73)
    assert "no\\ndir" in msg
    (tmp_path / "bad\n.toml").write_text('[train]\nepochs = "2"\n')
    msg = one_line(fm(tmp_path, "train", "--config", "bad\n.toml", data, "-o", "m.fm"), 78)
    assert msg.startswith("fm: error: bad\\n.toml: [train] epochs: ")
