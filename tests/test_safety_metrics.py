"""A model is never lost to a metric, and a non-finite one is never used.

* Undefined validation metrics (AUC of one class, anything over a total
  weight of 0) are recorded as null in the model header, checkpoints, run
  logs and `fm inspect`, shown as "n/a", and the model is written; early
  stopping on such a metric is refused before the first epoch (exit 78).
* A model (or checkpoint) whose parameters or optimizer state hold NaN or
  infinity, checksum valid, is refused on load (exit 65) by every command
  that reads its weights, before any output is touched; a score that
  overflows on a row is an error naming the row, not a "nan" line.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest

from fmcli.errors import DataError, ModelFormatError
from fmcli.model import load_model
from fmcli.modelfile import read_model_file, write_model_file
from clirun import invoke

TRAIN = b"1 0:1:1 1:2:1\n0 0:3:1 1:4:1\n1 0:1:1 1:4:1\n0 0:3:1 1:2:1\n"
ONE_CLASS = b"0 0:1:1 1:2:1\n0 0:3:1 1:4:1\n"            # a slice without clicks
ZERO_WEIGHT = b"1:0 0:1:1 1:2:1\n0:0 0:3:1 1:4:1\n"       # LABEL:WEIGHT, all weights 0
POSITIVES_UNWEIGHTED = b"1:0 0:1:1 1:2:1\n0:1 0:3:1 1:4:1\n"
SENTINEL = b"previous output, must survive\n"


def run(args, cwd, input=None):
    return invoke(*args, cwd=cwd, input=input, catch_exceptions=False)


def last_error(result) -> str:
    err = result.stderr
    assert "Traceback" not in err and "internal error" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("fm: error: "), err
    return line


def strict_json(text: str):
    """json.loads that refuses NaN and Infinity, as other JSON readers do."""
    def refuse(name):
        raise ValueError(f"{name} in JSON")
    return json.loads(text, parse_constant=refuse)


def no_temp_files(directory) -> bool:
    return not [n for n in os.listdir(directory) if n.endswith(".tmp")]


# ------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A directory with training and validation data and a good FFM model
    (no bias or linear terms, so that it can be exported as a libffm model)."""
    d = tmp_path_factory.mktemp("safety")
    (d / "tr.ffm").write_bytes(TRAIN)
    (d / "one.ffm").write_bytes(ONE_CLASS)
    (d / "zero.ffm").write_bytes(ZERO_WEIGHT)
    result = run(["train", "-q", "-t", "2", "--no-bias", "--no-linear", "-o", "good.fm", "tr.ffm"], d)
    assert result.exit_code == 0, result.stderr
    return d


def hostile(work, name, value=np.nan, array="factors", state=False, dtype="float32", index=(1,)):
    """A copy of good.fm with `array` (its optimizer state with `state`) set to
    `value` at `index`, written by the project's own writer: the checksum is valid."""
    model = load_model(work / "good.fm", mmap=False)
    arrays = model.state if state else model.params
    a = np.array(arrays[array])
    a[index] = value
    arrays[array] = a
    model.save(work / name, dtype=dtype)
    return work / name


@pytest.fixture(scope="module")
def nan_model(work):
    return hostile(work, "nan.fm")


# ============================================================ point 6: loading

@pytest.mark.parametrize("value, shown", [(np.nan, "NaN"), (np.inf, r"\+inf"), (-np.inf, "-inf")])
def test_predict_refuses_a_non_finite_weight_and_keeps_the_output(work, value, shown):
    model = hostile(work, f"bad{shown[-3:]}.fm", value)
    (work / "p.txt").write_bytes(SENTINEL)
    result = run(["predict", model.name, "tr.ffm", "-o", "p.txt"], work)
    assert result.exit_code == 65
    assert re.fullmatch(rf"fm: error: {model.name}: parameter array 'factors' holds a non-finite value "
                        rf"\({shown}\) at \[1, 0, 0\]: .*", last_error(result))
    assert (work / "p.txt").read_bytes() == SENTINEL
    assert result.stdout == ""
    assert no_temp_files(work)


def test_predict_to_a_new_file_creates_nothing(work, nan_model, tmp_path):
    result = run(["predict", nan_model, work / "tr.ffm", "-o", tmp_path / "new.txt"], tmp_path)
    assert result.exit_code == 65
    assert os.listdir(tmp_path) == []


def test_predict_to_stdout_prints_nothing(work, nan_model):
    result = run(["predict", nan_model.name, "tr.ffm"], work)
    assert result.exit_code == 65
    assert result.stdout == ""
    assert "parameter array 'factors'" in last_error(result)


def test_predict_from_stdin_prints_nothing(work, nan_model):
    result = run(["predict", nan_model.name, "-"], work, input=TRAIN)
    assert result.exit_code == 65 and result.stdout == ""


def test_predict_through_links_keeps_the_files(work, nan_model, tmp_path):
    real = tmp_path / "real.txt"
    real.write_bytes(SENTINEL)
    (tmp_path / "sym.txt").symlink_to(real)
    os.link(real, tmp_path / "hard.txt")
    os.symlink(nan_model, tmp_path / "model-link.fm")
    for out in ("sym.txt", "hard.txt", str(tmp_path / "sym.txt")):
        result = run(["predict", "model-link.fm", work / "tr.ffm", "-o", out], tmp_path)
        assert result.exit_code == 65, result.stderr
    assert real.read_bytes() == SENTINEL
    assert (tmp_path / "sym.txt").is_symlink() and os.path.samefile(real, tmp_path / "hard.txt")
    assert no_temp_files(tmp_path)


def test_optimizer_state_and_float16_files_are_checked(work):
    state = hostile(work, "state.fm", np.inf, state=True)
    half = hostile(work, "half.fm", np.nan, dtype="float16")
    (work / "p.txt").write_bytes(SENTINEL)
    result = run(["predict", state.name, "tr.ffm", "-o", "p.txt"], work)
    assert result.exit_code == 65
    assert "optimizer state array 'factors_state' holds a non-finite value (+inf)" in last_error(result)
    result = run(["predict", half.name, "tr.ffm", "-o", "p.txt"], work)
    assert result.exit_code == 65
    assert "parameter array 'factors' holds a non-finite value (NaN)" in last_error(result)
    assert (work / "p.txt").read_bytes() == SENTINEL


def test_an_int8_model_with_an_infinite_scale_is_refused(work):
    load_model(work / "good.fm").save(work / "q.fm", dtype="int8")
    header, arrays = read_model_file(work / "q.fm")
    arrays = {k: np.array(v) for k, v in arrays.items()}
    arrays["factors_scale"][1, 0] = np.inf
    write_model_file(work / "q.fm", {k: v for k, v in header.items() if k not in ("arrays", "format")}, arrays)
    result = run(["predict", "q.fm", "tr.ffm"], work)
    assert result.exit_code == 65 and result.stdout == ""
    assert "quantization scale array 'factors_scale' holds a non-finite value (+inf) at [1, 0]" in last_error(result)


@pytest.mark.parametrize("mmap", [True, False])
def test_load_model_raises_model_format_error(nan_model, mmap):
    with pytest.raises(ModelFormatError, match=r"parameter array 'factors' holds a non-finite value"):
        load_model(nan_model, mmap=mmap)


def test_a_corrupt_checksum_is_reported_before_the_values(nan_model, tmp_path):
    data = bytearray(nan_model.read_bytes())
    data[-40] ^= 0xFF          # inside the last array: the checksum no longer matches
    (tmp_path / "c.fm").write_bytes(data)
    with pytest.raises(ModelFormatError, match="checksum mismatch"):
        load_model(tmp_path / "c.fm")


def test_inspect_analyses_refuse_the_model(work, nan_model):
    for extra in (["--features", "3"], ["--top-interactions", "3", "--data", "tr.ffm"]):
        result = run(["inspect", nan_model.name, *extra], work)
        assert result.exit_code == 65, result.stderr
        assert "parameter array 'factors' holds a non-finite value" in last_error(result)
        assert result.stdout == ""


def test_plain_inspect_still_shows_the_header(work, nan_model):
    # It reads the header only (no checksum, no weights): what to look at
    # when another command refused the model.
    result = run(["inspect", "--json", nan_model.name], work)
    assert result.exit_code == 0
    assert strict_json(result.stdout)["header"]["model"]["kind"] == "ffm"


@pytest.mark.parametrize("args", [["--to", "libffm-model", "-o", "out.model"],
                                  ["-o", "out.fm", "--dtype", "float16"],
                                  ["-o", "out.fm", "--strip-state"]])
def test_convert_refuses_the_model(work, nan_model, args):
    out = work / args[args.index("-o") + 1]
    out.write_bytes(SENTINEL)
    result = run(["convert", nan_model.name, *args], work)
    assert result.exit_code == 65, result.stderr
    assert "holds a non-finite value" in last_error(result)
    assert out.read_bytes() == SENTINEL


def test_the_good_model_still_exports(work):
    result = run(["convert", "good.fm", "--to", "libffm-model", "-o", "good.model"], work)
    assert result.exit_code == 0, result.stderr


@pytest.mark.parametrize("dry_run", [False, True])
def test_warm_start_refuses_the_model(work, nan_model, dry_run):
    (work / "warm.fm").write_bytes(SENTINEL)
    result = run(["train", "-q", "-t", "1", "--no-bias", "--no-linear", "--init-model", nan_model.name,
                  "-o", "warm.fm", "tr.ffm"] + (["--dry-run"] if dry_run else []), work)
    assert result.exit_code == 65, result.stderr
    assert f"{nan_model.name}: parameter array 'factors'" in last_error(result)
    assert (work / "warm.fm").read_bytes() == SENTINEL


def test_resume_refuses_a_non_finite_checkpoint(work, tmp_path):
    (tmp_path / "tr.ffm").write_bytes(TRAIN)
    result = run(["train", "-q", "-t", "3", "--checkpoint-dir", "ck", "-o", "r.fm", "tr.ffm"], tmp_path)
    assert result.exit_code == 0, result.stderr
    newest = sorted((tmp_path / "ck").glob("ckpt-*.fmc"))[-1]
    header, arrays = read_model_file(newest)
    arrays = {k: np.array(v) for k, v in arrays.items()}
    arrays["L"][1, 0] = np.nan
    write_model_file(newest, {k: v for k, v in header.items() if k not in ("arrays", "format")}, arrays)
    (tmp_path / "r.fm").write_bytes(SENTINEL)
    result = run(["train", "-q", "--resume", "ck"], tmp_path)
    assert result.exit_code == 65, result.stderr
    assert re.fullmatch(rf"fm: error: .*{newest.name}: the weights or optimizer state hold a non-finite "
                        r"value \(NaN or inf\): the checkpoint is corrupt; .*", last_error(result))
    assert (tmp_path / "r.fm").read_bytes() == SENTINEL


def test_an_overflowing_score_is_an_error_naming_the_line(work):
    # finite weights whose products overflow on the row of features 3 and 4 (line 2)
    big = hostile(work, "big.fm", 1e30, index=(slice(3, 5),))
    (work / "p.txt").write_bytes(SENTINEL)
    for out in (["-o", "p.txt"], []):
        result = run(["predict", big.name, "tr.ffm", *out], work)
        assert result.exit_code == 65, result.stderr
        assert last_error(result) == (f"fm: error: tr.ffm:2: the model {big.name} scores this row +inf, "
                                      "not a finite number (its weights overflow on the row's values)")
        assert "nan" not in result.stdout and "inf" not in result.stdout
    assert (work / "p.txt").read_bytes() == SENTINEL
    assert no_temp_files(work)


def test_the_python_api_refuses_an_overflowing_score(work):
    import fmcli
    from fmcli.data.text import read_text

    big = load_model(hostile(work, "big2.fm", 1e30, index=(slice(3, 5),)))
    with pytest.raises(DataError, match=r"tr.ffm: the model .*big2.fm scores row 2 \+inf"):
        fmcli.predict(big, str(work / "tr.ffm"))
    batch, _ = read_text(work / "tr.ffm")
    with pytest.raises(DataError, match=r"scores row 2 \+inf"):
        fmcli.predict(big, batch)


# ===================================================== point 5: undefined metrics

def _header(path):
    header, _ = read_model_file(path)
    return header


@pytest.mark.parametrize("valid, undefined", [("one.ffm", {"auc", "ne"}),
                                              ("zero.ffm", {"logloss", "auc", "ne", "ece"})])
def test_undefined_metrics_are_null_and_the_model_is_written(work, valid, undefined):
    out = f"m-{valid}.fm"
    log = work / f"log-{valid}.jsonl"
    result = run(["train", "-t", "2", "-p", valid, "-o", out, "--log-json", log.name, "tr.ffm"], work)
    assert result.exit_code == 0, result.stderr
    t = _header(work / out)["training"]
    assert {k for k, v in t["valid_metrics"].items() if v is None} == undefined
    assert all(isinstance(v, float) for k, v in t["valid_metrics"].items() if k not in undefined)
    for h in t["history"]:
        assert {k for k, v in h.items() if v is None} == {f"valid_{m}" for m in undefined}
    if "logloss" in undefined:
        assert t["valid_logloss"] is None and t["best_epoch"] is None
    else:
        assert t["best_epoch"] in (1, 2)
    assert t["valid_auc"] is None
    # the run log: strict JSON, null where undefined
    epochs = [strict_json(line) for line in log.read_text().splitlines()]
    epochs = [e for e in epochs if e["event"] == "epoch"]
    assert len(epochs) == 2 and all(e["valid"]["auc"] is None for e in epochs)
    # the epoch table and the summary say n/a
    assert re.search(r"^\s+1\s+\S+\s+.*n/a", result.stderr, re.M)
    assert "va_auc n/a" in result.stderr
    # fm inspect: null in --json, n/a in the text
    ins = run(["inspect", "--json", out], work)
    assert ins.exit_code == 0
    assert strict_json(ins.stdout)["header"]["training"]["valid_metrics"]["auc"] is None
    text = run(["inspect", out], work)
    assert text.exit_code == 0 and "auc n/a" in text.stdout
    # and the model scores
    assert run(["predict", "-q", out, "tr.ffm"], work).exit_code == 0


@pytest.mark.parametrize("valid, args, message", [
    ("one.ffm", ["--auto-stop", "--early-stopping-metric", "auc"],
     "-p one.ffm has only one class (no positive rows): AUC is undefined, so it cannot select the epoch "
     "for early stopping; choose another --early-stopping-metric"),
    ("one.ffm", ["--patience", "2", "--early-stopping-metric", "ne"],
     "-p one.ffm has only one class (no positive rows): normalized entropy is undefined"),
    ("pos.ffm", ["--auto-stop", "--early-stopping-metric", "auc"],
     "-p pos.ffm has only one class (no negative rows): AUC is undefined"),
    ("unweighted.ffm", ["--auto-stop", "--early-stopping-metric", "auc"],
     "-p unweighted.ffm has only one class (no positive rows of positive weight): AUC is undefined"),
    ("zero.ffm", ["--auto-stop"],
     "-p zero.ffm has a total row weight of 0: logloss is undefined, so it cannot select the epoch for "
     "early stopping; give its rows a positive weight, or train without --patience/--auto-stop"),
])
def test_early_stopping_on_an_undefined_metric_is_refused_before_training(work, valid, args, message):
    (work / "pos.ffm").write_bytes(ONE_CLASS.replace(b"0 ", b"1 ", 2))
    (work / "unweighted.ffm").write_bytes(POSITIVES_UNWEIGHTED)
    (work / "es.fm").write_bytes(SENTINEL)
    log = work / "es.jsonl"
    log.unlink(missing_ok=True)
    result = run(["train", "-t", "3", "-p", valid, "-o", "es.fm", "--log-json", log.name, *args, "tr.ffm"], work)
    assert result.exit_code == 78, result.stderr
    assert last_error(result).startswith(f"fm: error: {message}")
    assert "epoch" not in result.stderr.split("fm: error:")[0]          # before epoch 1
    assert not [e for e in map(strict_json, log.read_text().splitlines()) if e["event"] == "epoch"]
    assert (work / "es.fm").read_bytes() == SENTINEL


def test_early_stopping_on_a_defined_metric_of_a_one_class_set_trains(work):
    result = run(["train", "-q", "-t", "3", "-p", "one.ffm", "--auto-stop", "-o", "es1.fm", "tr.ffm"], work)
    assert result.exit_code == 0, result.stderr
    assert _header(work / "es1.fm")["training"]["valid_metrics"]["auc"] is None


def test_regression_with_zero_weights(tmp_path):
    (tmp_path / "tr.ffm").write_bytes(b"1.5 0:1:1\n-2 0:2:1\n0.5 0:1:1 1:3:1\n")
    (tmp_path / "va.ffm").write_bytes(b"1.5:0 0:1:1\n-2:0 0:2:1\n")
    (tmp_path / "const.ffm").write_bytes(b"1 0:1:1\n1 0:2:1\n")
    common = ["train", "-q", "-t", "2", "--task", "regression", "--model", "lr"]
    result = run(common + ["-p", "va.ffm", "--patience", "1", "-o", "m.fm", "tr.ffm"], tmp_path)
    assert result.exit_code == 78
    assert "-p va.ffm has a total row weight of 0: RMSE is undefined" in last_error(result)
    assert run(common + ["-p", "va.ffm", "-o", "m.fm", "tr.ffm"], tmp_path).exit_code == 0
    assert _header(tmp_path / "m.fm")["training"]["valid_metrics"] == {"rmse": None, "mae": None}
    # a constant label leaves RMSE defined
    assert run(common + ["-p", "const.ffm", "--patience", "1", "-o", "c.fm", "tr.ffm"], tmp_path).exit_code == 0


def test_resume_with_undefined_metrics_writes_the_model(tmp_path):
    (tmp_path / "tr.ffm").write_bytes(TRAIN)
    (tmp_path / "va.ffm").write_bytes(ONE_CLASS)
    result = run(["train", "-q", "-t", "3", "-p", "va.ffm", "--checkpoint-dir", "ck", "-o", "r.fm", "tr.ffm"],
                 tmp_path)
    assert result.exit_code == 0, result.stderr
    info = _header(sorted((tmp_path / "ck").glob("ckpt-*.fmc"))[-1])["checkpoint"]
    assert info["history"][0]["valid"]["auc"] is None
    os.unlink(tmp_path / "r.fm")
    result = run(["train", "-q", "--resume", "ck"], tmp_path)
    assert result.exit_code == 0, result.stderr
    t = _header(tmp_path / "r.fm")["training"]
    assert t["epochs_run"] == 3 and [h["valid_auc"] for h in t["history"]] == [None] * 3


def test_resume_refuses_early_stopping_once_the_validation_set_lost_a_class(tmp_path):
    (tmp_path / "tr.ffm").write_bytes(TRAIN)
    (tmp_path / "va.ffm").write_bytes(TRAIN)
    result = run(["train", "-q", "-t", "3", "-p", "va.ffm", "--auto-stop", "--early-stopping-metric", "auc",
                  "--checkpoint-dir", "ck", "-o", "r.fm", "tr.ffm"], tmp_path)
    assert result.exit_code == 0, result.stderr
    (tmp_path / "va.ffm").write_bytes(ONE_CLASS)
    before = (tmp_path / "r.fm").read_bytes()
    result = run(["train", "-q", "--resume", "ck"], tmp_path)
    assert result.exit_code == 78
    assert "has only one class (no positive rows): AUC is undefined" in last_error(result)
    assert (tmp_path / "r.fm").read_bytes() == before


# ------------------------------------------------------- the JSON writers

def test_model_save_writes_non_finite_metadata_as_null(work, tmp_path):
    model = load_model(work / "good.fm")
    model.meta["training"]["valid_metrics"] = {"auc": float("nan"), "logloss": np.float32("inf"),
                                               "ne": np.float64("-inf"), "ece": 0.25}
    model.meta["extra"] = {"array": np.array([1.0, np.nan]), "tuple": (np.int64(3), float("nan"))}
    model.save(tmp_path / "m.fm")
    header = _header(tmp_path / "m.fm")
    assert header["training"]["valid_metrics"] == {"auc": None, "logloss": None, "ne": None, "ece": 0.25}
    assert header["extra"] == {"array": [1.0, None], "tuple": [3, None]}


def test_write_model_file_itself_stays_strict(tmp_path):
    with pytest.raises(ValueError):
        write_model_file(tmp_path / "x.fm", {"x": float("nan")}, {})
    assert not (tmp_path / "x.fm").exists()


def test_checkpoint_and_run_log_writers_take_numpy_non_finite_values(tmp_path):
    from fmcli import checkpoint
    from fmcli.runlog import RunLog

    path = checkpoint.save(str(tmp_path / "ck"), {"best": [np.float32("nan"), 1], "x": np.array([np.inf])},
                           {"B": np.zeros((1, 2), np.float32)}, keep=2)
    assert _header(path)["checkpoint"]["best"] == [None, 1]
    with RunLog(str(tmp_path / "log.jsonl")) as log:
        log.write("epoch", valid={"auc": np.float32("nan")}, scores=np.array([1.0, np.nan]), loss=float("inf"))
    record = strict_json((tmp_path / "log.jsonl").read_text())
    assert record["valid"] == {"auc": None} and record["scores"] == [1.0, None] and record["loss"] is None


# ------------------------------------- checks made while the first rows score

@pytest.fixture
def slow_checks(monkeypatch):
    """fm predict checks the model file (checksum, values) in a background
    thread while the first blocks are scored; here the checks end after the
    scoring has, so what was scored meanwhile must wait for them."""
    import time

    from fmcli import modelfile

    real = modelfile._scan_file

    def slow(*args, **kwargs):
        time.sleep(0.5)
        return real(*args, **kwargs)

    monkeypatch.setattr(modelfile, "_scan_file", slow)


def broken_checksum(src, dst):
    """A copy of model file `src` with a byte of its last array flipped."""
    data = bytearray(src.read_bytes())
    data[-40] ^= 0xFF
    dst.write_bytes(data)
    return dst


@pytest.mark.parametrize("to_file", [True, False])
def test_nothing_is_written_before_the_checksum_fails(work, slow_checks, to_file):
    model = broken_checksum(work / "good.fm", work / "late-crc.fm")
    (work / "p.txt").write_bytes(SENTINEL)
    result = run(["predict", model.name, "tr.ffm", *(["-o", "p.txt"] if to_file else [])], work)
    assert result.exit_code == 65
    assert "checksum mismatch" in last_error(result)
    assert result.stdout == ""
    assert (work / "p.txt").read_bytes() == SENTINEL
    assert no_temp_files(work)


def test_a_failure_while_scoring_a_corrupt_file_names_the_file_not_the_row(work, slow_checks):
    # Its weights score NaN, which would be an error naming the row; the
    # corrupt file is the cause, and the error says so.
    model = broken_checksum(hostile(work, "late-nan.fm"), work / "late-nan-crc.fm")
    for command in (["predict", model.name, "tr.ffm"], ["predict", model.name, "tr.ffm", "-o", "p.txt"]):
        result = run(command, work)
        assert result.exit_code == 65 and result.stdout == ""
        assert "checksum mismatch" in last_error(result)


def test_scores_wait_for_checks_that_pass_and_are_the_same(work, monkeypatch):
    expected = run(["predict", "good.fm", "tr.ffm"], work)
    assert expected.exit_code == 0 and expected.stdout.count("\n") == 4
    from fmcli import modelfile

    real, calls = modelfile._scan_file, []

    def slow(*args, **kwargs):
        import time

        time.sleep(0.3)
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(modelfile, "_scan_file", slow)
    late = run(["predict", "good.fm", "tr.ffm"], work)
    assert calls and (late.exit_code, late.stdout, late.stderr) == (0, expected.stdout, expected.stderr)
    result = run(["predict", "good.fm", "tr.ffm", "-o", "late.txt"], work)
    assert result.exit_code == 0 and (work / "late.txt").read_text() == expected.stdout


def test_held_output_is_written_in_order_once_the_checks_pass():
    import io

    from fmcli.predict import HeldUntilChecked

    class Check:
        finished, failure, waits = False, None, 0

        def done(self):
            return self.finished

        def wait(self):
            self.waits += 1
            self.finished = True
            if self.failure:
                raise self.failure

    out, check = io.StringIO(), Check()
    held = HeldUntilChecked(out, check, limit=10)
    held.write("a\n")
    held.write("bb\n")
    assert out.getvalue() == "" and check.waits == 0        # kept while the checks run
    held.write("cccccc\n")                                  # beyond the limit: waits for them
    assert out.getvalue() == "a\nbb\ncccccc\n" and check.waits == 1
    held.write("d\n")
    held.flush()
    assert out.getvalue() == "a\nbb\ncccccc\nd\n"

    out, check = io.StringIO(), Check()
    check.failure = ModelFormatError("checksum mismatch", "m.fm")
    held = HeldUntilChecked(out, check)
    held.write("a\n")
    with pytest.raises(ModelFormatError):
        held.flush()
    assert out.getvalue() == ""


def test_ffm_predict_writes_nothing_before_the_checksum_fails(work, slow_checks):
    from click.testing import CliRunner

    from fmcli.cli.libffm_compat import ffm_predict

    model = broken_checksum(work / "good.fm", work / "late-crc2.fm")
    (work / "p.txt").write_bytes(SENTINEL)
    result = CliRunner().invoke(ffm_predict, [str(work / "tr.ffm"), str(model), str(work / "p.txt")])
    assert result.exit_code == 65, result.output
    assert "checksum mismatch" in result.output
    assert (work / "p.txt").read_bytes() == SENTINEL
