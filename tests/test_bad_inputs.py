"""Every bad input gets one clear line, its exit code, and loses nothing.

Each case runs the real CLI (click's CliRunner) on a file made for it and
checks the exit status, the `FILE:LINE` (or file) prefix and wording of the
message, that no traceback escaped, and that an existing output file is
byte-for-byte unchanged (or, when there was none, not created).
"""

from __future__ import annotations

import bz2
import gzip
import os
import re

import numpy as np
import pytest
from click.testing import CliRunner

from fmcli.cli import cli

GOOD = b"1 0:1:1 1:2:1 2:3:0.5\n0 0:4:1 1:5:1 2:6:1\n1 0:1:1 1:5:1 2:3:1\n"
SENTINEL = b"previous model, must survive\n"


def run(args, tmp_path, input=None):
    runner = CliRunner()
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        return runner.invoke(cli, args, input=input, catch_exceptions=False)
    finally:
        os.chdir(cwd)


def assert_one_clean_line(result):
    err = result.stderr
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("fm: error: "), err
    assert all(32 <= ord(ch) < 127 for ch in last), f"non-printable characters in {last!r}"
    return last


# (id, file name, content, extra train options, expected line or None, message pattern)
TRAIN_CASES = [
    ("field-feature-only", "d.ffm", GOOD + b"1 1:2\n", [], 4, r"expected field:feature:value, found '1:2'"),
    ("letters", "d.ffm", GOOD + b"1 a:b:c\n", [], 4, r"expected field:feature:value, found 'a:b:c'"),
    ("empty-feature", "d.ffm", b"1 1::0.5\n" + GOOD, [], 1, r"expected field:feature:value, found '1::0.5'"),
    ("trailing-colon", "d.ffm", GOOD + b"0 1:2:\n", [], 4, r"expected field:feature:value, found '1:2:'"),
    ("negative-feature", "d.ffm", GOOD + b"1 0:-3:1\n", [], 4, r"expected a non-negative id, found '0:-3:1'"),
    ("negative-field", "d.ffm", GOOD + b"1 -1:3:1\n", [], 4, r"expected a non-negative id, found '-1:3:1'"),
    ("id-over-2^31", "d.ffm", GOOD + b"1 0:2147483648:1\n", [], 4, r"expected an id below 2\^31"),
    ("id-over-2^32", "d.ffm", GOOD + b"1 0:4294967297:1\n", [], 4, r"expected an id below 2\^31"),
    ("id-over-max-feature-id", "d.ffm", GOOD + b"1 0:1001:1\n", ["--max-feature-id", "1000"], 4,
     r"expected a feature id at most 1000 \(--max-feature-id\), found '0:1001:1'"),
    ("value-nan", "d.ffm", GOOD + b"1 0:1:nan\n", [], 4, r"expected a number as the value, found '0:1:nan'"),
    ("value-inf", "d.ffm", GOOD + b"1 0:1:inf\n", [], 4, r"expected a number as the value, found '0:1:inf'"),
    ("value-1e400", "d.ffm", GOOD + b"1 0:1:1e400\n", [], 4, r"expected a finite number within float32 range"),
    ("value-1e39", "d.ffm", GOOD + b"1 0:1:1e39\n", [], 4, r"expected a finite number within float32 range"),
    ("value-hex", "d.ffm", GOOD + b"1 0:1:0x1p3\n", [], 4, r"expected a number as the value, found '0:1:0x1p3'"),
    ("label-nan", "d.ffm", GOOD + b"nan 0:1:1\n", [], 4, r"expected a numeric label, found 'nan'"),
    ("label-yes", "d.ffm", GOOD + b"yes 0:1:1\n", [], 4, r"expected a numeric label, found 'yes'"),
    ("label-2", "d.ffm", GOOD + b"2 0:1:1\n", [], 4, r"expected a binary label \(0/1 or -1/\+1\), found '2'"),
    ("label-0.5", "d.ffm", GOOD + b"0.5 0:1:1\n", [], 4, r"expected a binary label \(0/1 or -1/\+1\), found '0.5'"),
    ("labels-0-and-minus-1", "d.ffm", GOOD + b"-1 0:1:1\n", [], 4,
     r"binary labels use both 0 and -1 for the negative class"),
    ("empty-file", "d.ffm", b"", [], None, r"no data rows"),
    ("blank-only", "d.ffm", b"\n  \n\t\n", [], None, r"no data rows"),
    ("comment-only", "d.ffm", b"# nothing\n# here\n", [], None, r"no data rows"),
    ("lone-cr", "d.ffm", b"1 0:1:1\r0 0:2:1\r", [], 1, r"carriage return inside a line"),
    ("nul-byte", "d.ffm", GOOD + b"1 0:1:\x001\n", [], 4, r"found '0:1:\\x001'"),
    ("non-utf8", "d.ffm", GOOD + b"1 0:1:\xff\xfe\n", [], 4, r"found '0:1:\\xff\\xfe'"),
    ("long-line", "d.ffm", GOOD + b"1" + b" 0:1:1" * 200 + b"\n", ["--max-line-bytes", "512"], 4,
     r"line longer than 512 bytes \(--max-line-bytes\)"),
    ("model-over-max-memory", "d.ffm", GOOD + b"1 200:65000:1\n", ["--max-memory", "16M"], None,
     r"need a ffm model of [0-9.]+ GiB \(k=4\), more than --max-memory 0.02 GiB"),
    ("too-many-bad-rows", "d.ffm", GOOD + b"1 x\n1 y\n", ["--max-bad-rows", "1"], 5,
     r"expected field:feature:value, found 'y' \(more than --max-bad-rows 1 bad rows\)"),
    ("libsvm-for-ffm", "d.svm", b"1 1:1 2:1\n0 3:1\n", [], None, r"libsvm \(no field ids\)"),
    ("bad-row-in-gzip", "d.ffm.gz", gzip.compress(GOOD + b"1 1:2\n"), [], 4,
     r"expected field:feature:value, found '1:2'"),
    ("truncated-gzip", "d.ffm.gz", gzip.compress(GOOD * 50)[:-12], [], 1, r"truncated or corrupt gzip data$"),
    ("truncated-bz2", "d.ffm.bz2", bz2.compress(GOOD * 50)[:40], [], 1, r"truncated or corrupt bz2 data$"),
    ("corrupt-gzip", "d.ffm.gz", gzip.compress(GOOD)[:-8] + b"\0" * 8, [], 1, r"truncated or corrupt gzip data$"),
    ("gz-not-gzip", "d.ffm.gz", GOOD, [], None, r"not gzip data, though the name ends in \.gz$"),
]


@pytest.mark.parametrize("case", TRAIN_CASES, ids=[c[0] for c in TRAIN_CASES])
@pytest.mark.parametrize("existing", [False, True], ids=["no-model", "existing-model"])
def test_train_rejects_bad_input(tmp_path, case, existing):
    _, name, content, options, line, pattern = case
    (tmp_path / name).write_bytes(content)
    model = tmp_path / "m.fm"
    if existing:
        model.write_bytes(SENTINEL)
    result = run(["train", "-t", "1", *options, "-o", "m.fm", name], tmp_path)
    expected_code = 78 if case[0] == "libsvm-for-ffm" else 65
    assert result.exit_code == expected_code, result.stderr
    last = assert_one_clean_line(result)
    prefix = f"fm: error: {name}:{line}: " if line is not None else f"fm: error: {name}"
    assert last.startswith(prefix), last
    assert re.search(pattern, last), last
    if existing:
        assert model.read_bytes() == SENTINEL
    else:
        assert not model.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".m.fm")] == []


ACCEPTED = [
    ("row-without-features", b"1\n0 0:1:1 1:2:1\n1 0:3:1\n"),
    ("crlf-no-final-newline", b"1 0:1:1 1:2:1\r\n0 0:3:1 1:4:1\r\n1 0:1:1 1:4:1"),
    ("utf8-bom", b"\xef\xbb\xbf1 0:1:1 1:2:1\n0 0:3:1 1:4:1\n"),
    ("duplicate-and-unsorted-ids", b"1 1:2:1 0:1:1 1:2:1\n0 0:3:1 0:3:1 1:4:1\n"),
    ("comments-and-blank-lines", b"# header\n\n1 0:1:1 1:2:1 # note 0:9:9\n0 0:3:1 1:4:1\n"),
]


@pytest.mark.parametrize("case", ACCEPTED, ids=[c[0] for c in ACCEPTED])
def test_train_accepts_documented_edge_cases(tmp_path, case):
    (tmp_path / "d.ffm").write_bytes(case[1])
    result = run(["train", "-q", "-t", "2", "-o", "m.fm", "d.ffm"], tmp_path)
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "m.fm").exists()


def test_libsvm_qid_and_comment_tails_are_accepted(tmp_path):
    (tmp_path / "d.svm").write_bytes(b"1 qid:1 1:1 2:1 # c\n0 qid:2 3:1 # more\n")
    result = run(["train", "-q", "--model", "fm", "-t", "1", "-o", "m.fm", "d.svm"], tmp_path)
    assert result.exit_code == 0, result.stderr


def test_max_bad_rows_skips_and_counts(tmp_path):
    (tmp_path / "d.ffm").write_bytes(GOOD + b"1 x\n1 0:1:1\n1 y\n")
    result = run(["train", "-t", "1", "--max-bad-rows", "2", "-o", "m.fm", "d.ffm"], tmp_path)
    assert result.exit_code == 0, result.stderr
    assert "skipped 2 malformed rows of d.ffm" in result.stderr
    assert "d.ffm:4: expected field:feature:value, found 'x'" in result.stderr
    from fmcli.model import load_model

    t = load_model(tmp_path / "m.fm").meta["training"]
    assert t["train_rows"] == 4 and t["skipped_rows"] == 2


@pytest.fixture
def trained(tmp_path):
    (tmp_path / "d.ffm").write_bytes(GOOD * 5)
    assert run(["train", "-q", "-t", "2", "-o", "m.fm", "d.ffm"], tmp_path).exit_code == 0
    return tmp_path


@pytest.mark.parametrize("existing", [False, True], ids=["no-output", "existing-output"])
def test_predict_bad_data_keeps_output(trained, existing):
    (trained / "t.ffm").write_bytes(GOOD + b"1 0:1:abc\n")
    out = trained / "p.txt"
    if existing:
        out.write_bytes(SENTINEL)
    result = run(["predict", "m.fm", "t.ffm", "-o", "p.txt"], trained)
    assert result.exit_code == 65
    last = assert_one_clean_line(result)
    assert last.startswith("fm: error: t.ffm:4: expected a number as the value, found '0:1:abc'")
    assert out.read_bytes() == SENTINEL if existing else not out.exists()


def test_predict_unseen_ids_are_counted_or_refused(trained):
    (trained / "t.ffm").write_bytes(b"1 0:1:1 1:2:1\n0 0:1:1 7:2:1 1:999:1\n")
    ok = run(["predict", "m.fm", "t.ffm", "-o", "p.txt"], trained)
    assert ok.exit_code == 0
    assert "ignored 2 feature occurrences in 1 rows" in ok.stderr and "t.ffm:2" in ok.stderr
    strict = run(["predict", "--strict-ids", "m.fm", "t.ffm", "-o", "q.txt"], trained)
    assert strict.exit_code == 65
    assert assert_one_clean_line(strict).startswith("fm: error: t.ffm:2: feature ")
    assert not (trained / "q.txt").exists()


@pytest.mark.parametrize("row", [b"0 7:1:1 0:1:1", b"0 0:999:1 0:1:1", b"0 0:1:1 0:1:1 1:2:1"],
                         ids=["field-outside", "feature-outside", "none-outside"])
def test_predict_counts_a_field_or_a_feature_outside_alone(trained, row):
    # the check first compares the block's largest ids with the model's
    # sizes: a field alone or a feature alone beyond them must still count
    (trained / "t.ffm").write_bytes(b"1 0:1:1 1:2:1\n" + row + b"\n")
    ok = run(["predict", "m.fm", "t.ffm", "-o", "p.txt"], trained)
    assert ok.exit_code == 0
    if row.endswith(b"1:2:1"):
        assert "ignored" not in ok.stderr
    else:
        assert "ignored 1 feature occurrences in 1 rows" in ok.stderr and "t.ffm:2" in ok.stderr


@pytest.mark.parametrize(
    "content, code",
    [
        (b"", 65),
        (b"\x89FMM\r\n\x1a\n" + b"\x00" * 40, 65),
        (os.urandom(300), 65),
        (b"PK\x03\x04" + b"\x00" * 100, 65),
        (b"\x80\x04\x95" + b"\x00" * 64, 65),   # a pickle header
        (b"4 39 4 1\n0.1 0.2\n", 65),            # text, e.g. a libffm model
    ],
    ids=["empty", "truncated-header", "random", "zip", "pickle", "text"],
)
def test_predict_refuses_hostile_model_files(trained, content, code):
    (trained / "bad.fm").write_bytes(content)
    (trained / "t.ffm").write_bytes(GOOD)
    result = run(["predict", "bad.fm", "t.ffm", "-o", "p.txt"], trained)
    assert result.exit_code == code
    assert assert_one_clean_line(result).startswith("fm: error: bad.fm")
    assert not (trained / "p.txt").exists()


def test_truncated_real_model_is_refused_at_every_tenth_byte(trained):
    data = (trained / "m.fm").read_bytes()
    (trained / "t.ffm").write_bytes(GOOD)
    for cut in range(0, len(data), max(1, len(data) // 10)):
        (trained / "cut.fm").write_bytes(data[:cut])
        result = run(["predict", "cut.fm", "t.ffm", "-o", "p.txt"], trained)
        assert result.exit_code == 65, cut
        assert_one_clean_line(result)


def test_directory_as_model_and_missing_input(trained):
    os.mkdir(trained / "adir")
    result = run(["predict", "adir", "d.ffm"], trained)
    assert result.exit_code in (2, 66)
    assert "Traceback" not in result.stderr
    missing = run(["train", "-o", "x.fm", "nope.ffm"], trained)
    assert missing.exit_code == 66
    assert assert_one_clean_line(missing) == "fm: error: nope.ffm: no such file"


def test_uncreatable_output_is_refused_before_training(trained):
    result = run(["train", "-q", "-o", "no/such/dir/m.fm", "d.ffm"], trained)
    assert result.exit_code == 73
    assert assert_one_clean_line(result).startswith("fm: error: cannot create output no/such/dir/m.fm")


def test_random_binary_input_never_gives_a_traceback(tmp_path):
    rng = np.random.default_rng(7)
    for i in range(20):
        (tmp_path / "r.ffm").write_bytes(rng.integers(0, 256, int(rng.integers(1, 400)), dtype=np.uint8).tobytes())
        result = run(["train", "-q", "-t", "1", "-o", "m.fm", "r.ffm"], tmp_path)
        assert result.exit_code in (0, 65, 78), (i, result.stderr)
        assert "Traceback" not in result.stderr


def test_closed_stdout_pipe_stops_quietly(trained):
    import subprocess
    import sys

    (trained / "big.ffm").write_bytes(GOOD * 150000)  # several 8 MB blocks, each written separately
    proc = subprocess.Popen(
        [sys.executable, "-m", "fmcli", "predict", "-q", "m.fm", "big.ffm"],
        cwd=trained, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    first = proc.stdout.readline()
    proc.stdout.close()                               # like `| head -1`
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 141
    assert float(first) > 0
    assert err == b""


def test_model_flags_must_be_booleans(trained):
    import json

    from fmcli.errors import ModelFormatError
    from fmcli.model import load_model
    from fmcli.modelfile import read_model_file, write_model_file

    header, arrays = read_model_file(trained / "m.fm")
    header.pop("arrays")
    header.pop("format")
    header["model"] = {**header["model"], "use_bias": "no"}
    write_model_file(trained / "flags.fm", json.loads(json.dumps(header)), arrays)
    with pytest.raises(ModelFormatError, match="must be true or false"):
        load_model(trained / "flags.fm")


def test_header_says_whether_optimizer_state_was_saved(trained):
    from fmcli.model import inspect_header

    assert inspect_header(trained / "m.fm")["optimizer"]["state"] is True
    assert run(["train", "-q", "-t", "1", "--no-optimizer-state", "-o", "s.fm", "d.ffm"], trained).exit_code == 0
    assert inspect_header(trained / "s.fm")["optimizer"]["state"] is False
