"""fm convert: sparse formats, raw click logs and their spec, model files."""

import bz2
import gzip
import json
import math
import os
import struct

import numpy as np
import pytest

from fmcli.convert import format_float32, render_text, valid_sibling
from fmcli.data.criteo import CRITEO_CATEGORICAL, CRITEO_INTEGERS, Spec, load_spec, token_hash
from fmcli.data.text import read_text
from fmcli.model import load_model
from clirun import invoke, ok

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLES = os.path.join(ROOT, "data", "samples")


def fm(*args, input=None):
    return invoke(*args, input=input)


# -- reference hash: the obvious implementation of the documented formula ----------------


def H(column, token):
    h = 0xCBF29CE484222325
    for b in column.encode() + b"\0" + token.encode():
        h = ((h ^ b) * 0x100000001B3) % 2**64
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) % 2**64
    h ^= h >> 33
    h = (h * 0xC4CEB93FE53BE185) % 2**64
    return h ^ (h >> 33)


def fid(column, token, space=10**6):
    return H(column, token) % space


# -- generated Criteo/Avazu-shaped rows --------------------------------------------------


def criteo_rows(n, seed, cards=(3, 40, 400)):
    """Tab-separated rows: label, 13 integers (some empty or negative), 26
    categorical 8-hex-digit values (some empty), popular values common."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        label = "1" if rng.random() < 0.3 else "0"
        ints = []
        for i in range(13):
            r = rng.random()
            ints.append("" if r < 0.15 else str(int(rng.integers(-2, 3))) if r < 0.4
                        else str(int(rng.geometric(0.01))))
        cats = []
        for j in range(26):
            card = cards[j % len(cards)]
            cats.append("" if rng.random() < 0.1 else "%08x" % (min(int(rng.zipf(1.5)), card) * 2654435761 % 2**32))
        rows.append([label] + ints + cats)
    return rows


def tsv(rows, strip=False, final_newline=True):
    lines = []
    for r in rows:
        r = list(r)
        if strip:
            while r and r[-1] == "":
                r.pop()
        lines.append("\t".join(r))
    return "\n".join(lines) + ("\n" if final_newline else "")


AVAZU_HEADER = ("id,click,hour,C1,banner_pos,site_id,site_domain,site_category,app_id,app_domain,"
                "app_category,device_id,device_ip,device_model,device_type,device_conn_type,C14,C15,C16,"
                "C17,C18,C19,C20,C21").split(",")


def avazu_rows(n, seed, label=True):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        row = [str(10**18 + i), str(int(rng.random() < 0.2)), "141021%02d" % rng.integers(0, 24)]
        row += ["%x" % min(int(rng.zipf(1.6)), 50) for _ in range(len(AVAZU_HEADER) - 3)]
        if not label:
            del row[1]
        out.append(row)
    return out


def csv_text(header, rows, sep=","):
    return "\n".join(sep.join(r) for r in [header] + rows) + "\n"


# -- numbers and text ------------------------------------------------------------------


def test_float32_text_round_trips_shortest():
    rng = np.random.default_rng(0)
    v = np.concatenate([rng.normal(0, 10, 2000).astype(np.float32),
                        np.float32([0, 1, -1, 0.1, 0.5, 1e-5, 3.25, 1e30, -2.5e-38, 16777217])])
    text = format_float32(v)
    assert (text.astype(np.float32) == v).all()
    assert text[-10:].tolist() == [b"0", b"1", b"-1", b"0.1", b"0.5", b"1e-05", b"3.25", b"1e+30",
                                   b"-2.5e-38", b"16777216"]


def test_render_text_matches_the_formats():
    labels = np.array([b"1", b"0", b"1:0.5"])
    indptr = np.array([0, 2, 2, 3])
    out = render_text(labels, indptr, np.array([0, 12, 3]), np.array([7, 1000000, 0]),
                      np.array([b"1", b"0.25", b"3"]))
    assert out == b"1 0:7:1 12:1000000:0.25\n0\n1:0.5 3:0:3\n"
    assert render_text(labels, indptr, None, np.array([7, 10, 0]), None) == b"1 7:1 10:1\n0\n1:0.5 0:1\n"


# -- between sparse formats --------------------------------------------------------------


@pytest.mark.parametrize("name", ["train.ffm", "valid.ffm"])
def test_libffm_parquet_libffm_is_byte_identical(tmp_path, name):
    src = os.path.join(SAMPLES, name)
    ok(fm("convert", "-q", src, "-o", tmp_path / "x.parquet"))
    ok(fm("convert", "-q", tmp_path / "x.parquet", "-o", tmp_path / "back.ffm"))
    assert (tmp_path / "back.ffm").read_bytes() == open(src, "rb").read()


@pytest.mark.parametrize("name", ["train.svm", "valid.svm"])
def test_libsvm_libffm_libsvm_is_byte_identical(tmp_path, name):
    src = os.path.join(SAMPLES, name)
    res = ok(fm("convert", src, "-o", tmp_path / "x.ffm"))
    assert "field 0" in res.stderr
    ok(fm("convert", "-q", tmp_path / "x.ffm", "-o", tmp_path / "back.svm"))
    assert (tmp_path / "back.svm").read_bytes() == open(src, "rb").read()


def test_values_labels_and_weights_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    vals = rng.normal(0, 3, 300).astype(np.float32)
    lines = []
    for i in range(100):
        label = ["0", "1", "-1", "2.5", "1:0.25"][i % 5]
        toks = [f"{f}:{int(rng.integers(0, 10**6))}:{format_float32(vals[3 * i + f:3 * i + f + 1])[0].decode()}"
                for f in range(3)]
        lines.append(" ".join([label] + toks))
    lines.append("1")                          # a row without features
    text = "\n".join(lines) + "\n"
    (tmp_path / "a.ffm").write_text(text)
    for fmt in ("parquet", "libffm"):
        ok(fm("convert", "-q", tmp_path / "a.ffm", "-o", tmp_path / f"b.{fmt}", "--to", fmt))
        ok(fm("convert", "-q", tmp_path / f"b.{fmt}", "-o", tmp_path / "c.ffm", "--from", fmt,
              "--to", "libffm"))
        assert (tmp_path / "c.ffm").read_text() == text


@pytest.mark.parametrize("suffix,opener", [(".gz", gzip.open), (".bz2", bz2.open), (".zst", None),
                                           (".lz4", None)])
def test_compressed_output(tmp_path, suffix, opener):
    src = os.path.join(SAMPLES, "valid.ffm")
    out = tmp_path / ("v.ffm" + suffix)
    ok(fm("convert", "-q", src, "-o", out))
    if opener is not None:
        with opener(out, "rb") as f:
            assert f.read() == open(src, "rb").read()
    res = ok(fm("convert", "-q", out, "-o", "-", "--to", "libffm"))
    assert res.stdout_bytes == open(src, "rb").read()


def test_stdin_to_stdout_and_errors_name_stdin(tmp_path):
    data = open(os.path.join(SAMPLES, "valid.svm"), "rb").read()
    res = ok(fm("convert", "-q", "-", "-o", "-", "--to", "libsvm", input=data))
    assert res.stdout_bytes == data
    res = fm("convert", "-", "-o", "-", "--to", "libffm", input=b"1 0:1:1\nx 0:1:1\n")
    assert res.exit_code == 65 and "<stdin>:2:" in res.stderr
    res = fm("convert", "-", "-o", "-", input=b"1 0:1:1\n")
    assert res.exit_code == 78 and "--to" in res.stderr
    assert fm("convert", "-q", os.path.join(SAMPLES, "valid.ffm"), "-o", tmp_path / "a.parquet.gz").exit_code == 78


def test_field_map_for_libsvm(tmp_path):
    (tmp_path / "a.svm").write_text("1 3:1 150:0.5 7000:2\n0\n")
    (tmp_path / "f.txt").write_text("# features to fields\n0-99 0\n100-6999 4\n7000 2\n")
    ok(fm("convert", "-q", "--fields", tmp_path / "f.txt", tmp_path / "a.svm", "-o", tmp_path / "a.ffm"))
    assert (tmp_path / "a.ffm").read_text() == "1 0:3:1 4:150:0.5 2:7000:2\n0\n"
    (tmp_path / "g.txt").write_text("0-99 0\n")
    res = fm("convert", "--fields", tmp_path / "g.txt", tmp_path / "a.svm", "-o", tmp_path / "b.ffm")
    assert res.exit_code == 65 and "a.svm:1: feature 150 has no field" in res.stderr
    assert not (tmp_path / "b.ffm").exists()


# -- Criteo ------------------------------------------------------------------------------


def test_criteo_recipe_by_hand(tmp_path):
    ints = ["0", "1", "2", "3", "100", "-2", "", "7", "", "", "", "", "5000"]
    cats = ["68fd1e64"] + [""] * 24 + ["abc"]
    (tmp_path / "t.tsv").write_text("\t".join(["1"] + ints + cats) + "\n")
    ok(fm("convert", "-q", "criteo", tmp_path / "t.tsv", "-o", tmp_path / "t.ffm", "--min-count", "1"))
    # x > 2: b + floor(ln(x)^2); x <= 2: v + x; missing: ""
    tokens = ["v0", "v1", "v2", "b1", "b21", "v-2", "", "b3", "", "", "", "", "b72"]
    assert math.floor(math.log(100) ** 2) == 21 and math.floor(math.log(7) ** 2) == 3
    assert math.floor(math.log(5000) ** 2) == 72
    entries = [f"{i}:{fid(f'I{i + 1}', t)}:1" for i, t in enumerate(tokens)]
    entries += [f"{13 + j}:{fid(f'C{j + 1}', v)}:1" for j, v in enumerate(cats)]
    assert (tmp_path / "t.ffm").read_text() == "1 " + " ".join(entries) + "\n"
    assert fid("C1", "68fd1e64") == token_hash("C1", "68fd1e64") % 10**6


def test_criteo_trailing_columns_stripped_is_the_same(tmp_path):
    rows = criteo_rows(400, 1)
    for r in rows[::3]:
        r[-3:] = ["", "", ""]
    rows[-1][-6:] = [""] * 6
    (tmp_path / "clean.tsv").write_text(tsv(rows))
    (tmp_path / "ragged.tsv").write_text(tsv(rows, strip=True, final_newline=False))
    for name in ("clean", "ragged"):
        ok(fm("convert", "-q", "criteo", tmp_path / f"{name}.tsv", "-o", tmp_path / f"{name}.ffm",
              "--min-count", "3"))
    assert (tmp_path / "clean.ffm").read_bytes() == (tmp_path / "ragged.ffm").read_bytes()
    a = load_spec(tmp_path / "clean.ffm.spec.json")
    b = load_spec(tmp_path / "ragged.ffm.spec.json")
    assert a.to_json() == b.to_json()
    assert len((tmp_path / "clean.ffm").read_text().splitlines()) == 400


def test_min_count_collapses_rare_values(tmp_path):
    rows = []
    values = ["aaaa"] * 5 + ["bbbb"] * 3 + ["cccc"] * 2 + ["dddd"]
    for v in values:
        rows.append(["0"] + ["1"] * 13 + [v] + ["x"] * 25)
    (tmp_path / "r.tsv").write_text(tsv(rows))
    ok(fm("convert", "-q", "criteo", tmp_path / "r.tsv", "-o", tmp_path / "r.ffm", "--min-count", "3",
          "--hash-space", "1000003"))
    c1 = [int(line.split()[14].split(":")[1]) for line in (tmp_path / "r.ffm").read_text().splitlines()]
    rare = fid("C1", "<rare>", 1000003)
    assert c1 == [fid("C1", "aaaa", 1000003)] * 5 + [fid("C1", "bbbb", 1000003)] * 3 + [rare] * 3
    spec = load_spec(tmp_path / "r.ffm.spec.json")
    assert spec.min_count == 3 and spec.hash_space == 1000003
    c1spec = spec.columns[13]
    assert c1spec.name == "C1" and sorted(c1spec.kept.tolist()) == sorted([H("C1", "aaaa"), H("C1", "bbbb")])
    assert spec.columns[14].kept.tolist() == [H("C2", "x")]


def test_criteo_bad_rows(tmp_path):
    good = "\t".join(["0"] + ["1"] * 13 + ["a"] * 26)
    lines = [good, "\t".join(["1"] + ["x"] + ["1"] * 12 + ["a"] * 26), good,
             "\t".join(["0"] + ["1"] * 13 + ["a"] * 27), "", "yes\t1"]
    (tmp_path / "b.tsv").write_text("\n".join(lines) + "\n")
    res = fm("convert", "criteo", tmp_path / "b.tsv", "-o", tmp_path / "b.ffm")
    assert res.exit_code == 65
    assert res.stderr.strip() == (f"fm: error: {tmp_path / 'b.tsv'}:2: column 'I1': expected an integer "
                                  "or nothing, found 'x'")
    assert not (tmp_path / "b.ffm").exists() and not (tmp_path / "b.ffm.spec.json").exists()
    res = fm("convert", "criteo", tmp_path / "b.tsv", "-o", tmp_path / "b.ffm", "--max-bad-rows", "2")
    assert res.exit_code == 65 and "b.tsv:6: column 'label': expected a numeric label" in res.stderr
    assert "more than --max-bad-rows 2" in res.stderr
    res = ok(fm("convert", "criteo", tmp_path / "b.tsv", "-o", tmp_path / "b.ffm", "--max-bad-rows", "3"))
    assert "skipped 3 bad rows" in res.stderr and "b.tsv:2:" in res.stderr
    assert len((tmp_path / "b.ffm").read_text().splitlines()) == 2
    res = fm("convert", "criteo", tmp_path / "b.tsv", "-o", tmp_path / "c.ffm", "--max-bad-rows", "1")
    assert res.exit_code == 65 and "b.tsv:4: expected 40 columns, found 41" in res.stderr


def test_split_is_deterministic_and_complete(tmp_path):
    rows = criteo_rows(1000, 2)
    rows += rows[:50]                              # duplicates go to the same side
    (tmp_path / "d.tsv").write_text(tsv(rows))
    outs = []
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        ok(fm("convert", "-q", "criteo", tmp_path / "d.tsv", "-o", tmp_path / run / "tr.ffm", "--split", "0.8",
              "--min-count", "1"))
        outs.append([(tmp_path / run / n).read_bytes() for n in ("tr.ffm", "tr.valid.ffm")])
    assert outs[0] == outs[1]
    ok(fm("convert", "-q", "criteo", tmp_path / "d.tsv", "-o", tmp_path / "all.ffm", "--min-count", "1"))
    tr, va = (x.decode().splitlines() for x in outs[0])
    everything = (tmp_path / "all.ffm").read_text().splitlines()
    assert sorted(tr + va) == sorted(everything)
    assert 0.7 < len(tr) / len(everything) < 0.9
    assert not set(tr) & set(va)
    assert valid_sibling("x/tr.ffm.gz") == os.path.join("x", "tr.valid.ffm.gz")
    assert valid_sibling("data") == "data.valid"


def test_split_counts_rare_values_on_training_rows_only(tmp_path):
    rows = criteo_rows(600, 4)
    (tmp_path / "d.tsv").write_text(tsv(rows))
    ok(fm("convert", "-q", "criteo", tmp_path / "d.tsv", "-o", tmp_path / "tr.ffm", "--split", "0.7"))
    spec = load_spec(tmp_path / "tr.ffm.spec.json")
    n_train = len((tmp_path / "tr.ffm").read_text().splitlines())
    assert spec.rows["counted"] == n_train == spec.rows["train"]


# -- Avazu and CSV ----------------------------------------------------------------------


def test_avazu_hour_of_day_and_no_id(tmp_path):
    rows = avazu_rows(300, 5)
    (tmp_path / "a.csv").write_text(csv_text(AVAZU_HEADER, rows))
    ok(fm("convert", "-q", "avazu", tmp_path / "a.csv", "-o", tmp_path / "a.ffm", "--min-count", "1"))
    lines = (tmp_path / "a.ffm").read_text().splitlines()
    assert len(lines) == 300
    first = lines[0].split()
    assert first[0] == rows[0][1]
    assert len(first) == 1 + 22                     # id and click are not features
    assert first[1] == f"0:{fid('hour', rows[0][2][-2:])}:1"
    assert first[2] == f"1:{fid('C1', rows[0][3])}:1"
    spec = load_spec(tmp_path / "a.ffm.spec.json")
    assert spec.columns[0].type == "hour" and spec.label == "click" and spec.drop == ["id"]
    # the test file has no click column: label 0, and bad hours are bad rows
    test = avazu_rows(5, 6, label=False)
    test[2][1] = "14102125"
    hdr = [c for c in AVAZU_HEADER if c != "click"]
    (tmp_path / "t.csv").write_text(csv_text(hdr, test))
    res = fm("convert", "--spec", tmp_path / "a.ffm.spec.json", tmp_path / "t.csv", "-o", tmp_path / "t.ffm")
    assert res.exit_code == 65 and "t.csv:4: column 'hour': expected an hour YYMMDDHH" in res.stderr


def test_csv_generic(tmp_path):
    text = ('y;city;age;score;note\n1;"Paris; FR";33;0.5;x\n0;Oslo;;7;y\n'
            '1;Oslo;2;;z\n')
    (tmp_path / "g.csv").write_text(text)
    ok(fm("convert", "-q", "csv", tmp_path / "g.csv", "-o", tmp_path / "g.ffm", "--label", "y",
          "--categorical", "city", "--numeric", "age,score", "--delimiter", ";", "--min-count", "2"))
    lines = (tmp_path / "g.ffm").read_text().splitlines()
    f = lambda c, t: fid(c, t)  # noqa: E731
    assert lines == [
        f"1 0:{f('city', '<rare>')}:1 1:{f('age', 'b12')}:1 2:{f('score', 'v0')}:1",
        f"0 0:{f('city', 'Oslo')}:1 1:{f('age', '')}:1 2:{f('score', 'b3')}:1",
        f"1 0:{f('city', 'Oslo')}:1 1:{f('age', 'v2')}:1 2:{f('score', '')}:1",
    ]
    ok(fm("convert", "-q", "csv", tmp_path / "g.csv", "-o", tmp_path / "v.ffm", "--label", "y",
          "--numeric", "age", "--numeric-rule", "value", "--delimiter", ";"))
    assert (tmp_path / "v.ffm").read_text().splitlines() == [
        f"1 0:{f('age', '<value>')}:33", "0", f"1 0:{f('age', '<value>')}:2"]
    res = fm("convert", "csv", tmp_path / "g.csv", "-o", tmp_path / "x.ffm", "--label", "y",
             "--categorical", "town", "--delimiter", ";")
    assert res.exit_code == 78 and "no column 'town'" in res.stderr


# -- spec, training and raw prediction ------------------------------------------------------


def test_raw_predict_equals_converted_predict(tmp_path):
    rows = criteo_rows(700, 7)
    (tmp_path / "train.tsv").write_text(tsv(rows))
    test_rows = criteo_rows(200, 8)
    (tmp_path / "test.tsv").write_text(tsv(test_rows, strip=True))
    ok(fm("convert", "-q", "criteo", tmp_path / "train.tsv", "-o", tmp_path / "tr.ffm", "--split", "0.8",
          "--min-count", "3", "--hash-space", "5000"))
    spec = tmp_path / "tr.ffm.spec.json"
    json.loads(spec.read_text())
    ok(fm("train", "-q", "--spec", spec, "-t", "2", "-p", tmp_path / "tr.valid.ffm", "-o", tmp_path / "m.fm",
          tmp_path / "tr.ffm"))
    model = load_model(tmp_path / "m.fm")
    assert model.meta["spec"]["kind"] == "criteo" and "spec_vocabulary" in model.extras
    ok(fm("convert", "-q", "--spec", spec, tmp_path / "test.tsv", "-o", tmp_path / "te.ffm"))
    a = ok(fm("predict", tmp_path / "m.fm", tmp_path / "te.ffm"))
    b = ok(fm("predict", tmp_path / "m.fm", tmp_path / "test.tsv"))           # detected as raw
    c = ok(fm("predict", "--raw", tmp_path / "m.fm", "-", input=(tmp_path / "test.tsv").read_bytes()))
    assert a.stdout == b.stdout == c.stdout and len(a.stdout.splitlines()) == 200
    assert a.stderr.split("rows")[0] == b.stderr.split("rows")[0]
    # without a label column: same probabilities, no metrics
    (tmp_path / "nolabel.tsv").write_text(tsv([r[1:] for r in test_rows]))
    d = ok(fm("predict", "--no-label", tmp_path / "m.fm", tmp_path / "nolabel.tsv"))
    assert d.stdout == a.stdout and "logloss" not in d.stderr
    # a float16 copy carries the spec too
    ok(fm("convert", "-q", tmp_path / "m.fm", "-o", tmp_path / "s.fm", "--dtype", "float16", "--strip-state"))
    e = ok(fm("predict", tmp_path / "s.fm", tmp_path / "test.tsv"))
    assert np.allclose(np.array(e.stdout.split(), float), np.array(a.stdout.split(), float), atol=1e-3)


def test_spec_json_round_trip_and_checks(tmp_path):
    spec = Spec.criteo(min_count=5, hash_space=1234)
    spec.columns[13].kept = np.array(sorted([H("C1", "a"), H("C1", "b")]), np.uint64)
    again = Spec.from_json(json.loads(spec.dumps()))
    assert again.to_json() == spec.to_json()
    header, arrays = spec.to_header()
    assert Spec.from_json(header, arrays).to_json() == spec.to_json()
    assert [c.name for c in spec.columns] == CRITEO_INTEGERS + CRITEO_CATEGORICAL
    bad = json.loads(spec.dumps())
    bad["fmcli_spec"] = 99
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    (tmp_path / "a.ffm").write_text("1 0:1:1\n")
    res = fm("train", "--spec", tmp_path / "bad.json", "-o", tmp_path / "m.fm", tmp_path / "a.ffm")
    assert res.exit_code == 78 and "spec version 99" in res.stderr and not (tmp_path / "m.fm").exists()
    res = fm("train", "--spec", tmp_path / "none.json", "-o", tmp_path / "m.fm", tmp_path / "a.ffm")
    assert res.exit_code == 66


# -- models ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ffm_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    ok(fm("train", "-q", "--model", "ffm", "--no-bias", "--no-linear", "-t", "2", "-o", d / "ffm.fm",
          os.path.join(SAMPLES, "train.ffm")))
    ok(fm("train", "-q", "-t", "3", "-o", d / "full.fm", os.path.join(SAMPLES, "train.ffm")))
    return d


def scores(model, data=os.path.join(SAMPLES, "valid.ffm")):
    res = ok(fm("predict", "-q", model, data))
    return np.array(res.stdout.split(), float)


def test_float16_and_int8_models(ffm_model, tmp_path):
    full = ffm_model / "full.fm"
    base = scores(full)
    res = ok(fm("convert", full, "-o", tmp_path / "h.fm", "--dtype", "float16", "--strip-state"))
    assert "float16" in res.stderr and "->" in res.stderr
    assert os.path.getsize(tmp_path / "h.fm") < 0.3 * os.path.getsize(full)
    m = load_model(tmp_path / "h.fm")
    assert m.stored_dtype == "float16" and not m.state and m.params["factors"].dtype == np.float32
    assert np.abs(scores(tmp_path / "h.fm") - base).max() < 1e-3
    ok(fm("convert", "-q", full, "-o", tmp_path / "q.fm", "--dtype", "int8", "--strip-state"))
    assert os.path.getsize(tmp_path / "q.fm") < os.path.getsize(tmp_path / "h.fm")
    assert np.abs(scores(tmp_path / "q.fm") - base).max() < 1e-2
    ok(fm("convert", "-q", full, "-o", tmp_path / "s.fm", "--strip-state"))
    assert load_model(tmp_path / "s.fm").stored_dtype == "float32"
    assert np.array_equal(scores(tmp_path / "s.fm"), base)
    # converting a float16 file again keeps it float16
    ok(fm("convert", "-q", tmp_path / "h.fm", "-o", tmp_path / "h2.fm"))
    assert load_model(tmp_path / "h2.fm").stored_dtype == "float16"


def test_libffm_model_export_import(ffm_model, tmp_path):
    src = ffm_model / "ffm.fm"
    base = scores(src)
    ok(fm("convert", "-q", src, "--to", "libffm-model", "-o", tmp_path / "m.txt"))
    head = (tmp_path / "m.txt").read_text().splitlines()
    assert head[:4] == ["n 6256", "m 8", "k 4", "normalization 1"] and head[4].startswith("w0,0 ")
    assert head[4].endswith(" ") and head[5].startswith("w0,1 ")
    ok(fm("convert", "-q", tmp_path / "m.txt", "--from", "libffm-model", "-o", tmp_path / "back.fm"))
    assert np.abs(scores(tmp_path / "back.fm") - base).max() < 1e-6
    assert np.array_equal(load_model(tmp_path / "back.fm").params["factors"], load_model(src).params["factors"])
    ok(fm("convert", "-q", src, "--to", "libffm-bin-model", "-o", tmp_path / "m.bin"))
    ok(fm("convert", "-q", tmp_path / "m.bin", "--from", "libffm-model", "-o", tmp_path / "b.fm"))
    ok(fm("convert", "-q", tmp_path / "b.fm", "--to", "libffm-bin-model", "-o", tmp_path / "m2.bin"))
    assert (tmp_path / "m.bin").read_bytes() == (tmp_path / "m2.bin").read_bytes()
    assert np.abs(scores(tmp_path / "b.fm") - base).max() < 1e-6
    res = fm("convert", ffm_model / "full.fm", "--to", "libffm-model", "-o", tmp_path / "no.txt")
    assert res.exit_code == 78 and "bias" in res.stderr and not (tmp_path / "no.txt").exists()


def _libffm_score(W, rows, norm):
    out = []
    for row in rows:
        r = 1 / sum(v * v for _, _, v in row) if norm else 1.0
        t = 0.0
        for a in range(len(row)):
            for b in range(a + 1, len(row)):
                (f1, j1, v1), (f2, j2, v2) = row[a], row[b]
                t += float(np.dot(W[j1, f2], W[j2, f1])) * v1 * v2 * r
        out.append(1 / (1 + math.exp(-t)))
    return np.array(out)


@pytest.mark.parametrize("layout", ["text", "binary-sse", "binary-plain"])
def test_libffm_model_files_by_hand(tmp_path, layout):
    n, m, k = 3, 2, 3
    W = np.random.default_rng(1).normal(0, 0.5, (n, m, k)).astype(np.float32)
    path = tmp_path / "model"
    if layout == "text":
        lines = ["n 3", "m 2", "k 3", "normalization 1"]
        lines += [f"w{j},{f} " + " ".join("%.9g" % x for x in W[j, f]) + " " for j in range(n) for f in range(m)]
        path.write_text("\n".join(lines) + "\n")
    else:
        align = 4 if layout == "binary-sse" else 1
        k_al = -(-k // align) * align
        blob = struct.pack("<iii?", n, m, k, True)
        for j in range(n):
            for f in range(m):
                w = np.zeros(k_al, np.float32)
                w[:k] = W[j, f]
                g = np.full(k_al, 1.5, np.float32)
                for b in range(k_al // align):
                    blob += w[b * align:(b + 1) * align].tobytes() + g[b * align:(b + 1) * align].tobytes()
        path.write_bytes(blob)
    ok(fm("convert", "-q", path, "--from", "libffm-model", "-o", tmp_path / "m.fm"))
    rows = [[(0, 0, 1.0), (1, 2, 1.0)], [(0, 1, 0.5), (1, 2, 2.0), (1, 0, 1.0)], [(0, 2, 1.0)]]
    (tmp_path / "d.ffm").write_text("".join("1 " + " ".join(f"{f}:{j}:{v:g}" for f, j, v in r) + "\n"
                                            for r in rows))
    got = scores(tmp_path / "m.fm", tmp_path / "d.ffm")
    assert np.abs(got - _libffm_score(W, rows, True)).max() < 1e-6
    model = load_model(tmp_path / "m.fm")
    assert model.spec.kind == "ffm" and not model.spec.use_bias and not model.spec.use_linear
    assert bool(model.state) == (layout != "text")


def test_model_conversion_errors(tmp_path):
    (tmp_path / "junk").write_bytes(b"\x00" * 40)
    res = fm("convert", tmp_path / "junk", "--from", "libffm-model", "-o", tmp_path / "m.fm")
    assert res.exit_code == 65 and "not a libffm model" in res.stderr
    res = fm("convert", os.path.join(SAMPLES, "valid.ffm"), "-o", tmp_path / "x.ffm", "--dtype", "float16")
    assert res.exit_code == 2


def test_raw_to_parquet_matches_libffm_and_option_checks(tmp_path):
    (tmp_path / "d.tsv").write_text(tsv(criteo_rows(120, 9)))
    ok(fm("convert", "-q", "criteo", tmp_path / "d.tsv", "-o", tmp_path / "a.ffm", "--min-count", "2",
          "--hash-space", "2000"))
    ok(fm("convert", "-q", "criteo", tmp_path / "d.tsv", "-o", tmp_path / "a.parquet", "--min-count", "2",
          "--hash-space", "2000"))
    ok(fm("convert", "-q", tmp_path / "a.parquet", "-o", tmp_path / "b.ffm"))
    assert (tmp_path / "a.ffm").read_bytes() == (tmp_path / "b.ffm").read_bytes()
    spec = tmp_path / "a.ffm.spec.json"
    res = fm("convert", "--spec", spec, "--min-count", "5", tmp_path / "d.tsv", "-o", tmp_path / "c.ffm")
    assert res.exit_code == 2 and "--min-count is set by the spec" in res.stderr
    res = fm("convert", "avazu", "--spec", spec, tmp_path / "d.tsv", "-o", tmp_path / "c.ffm")
    assert res.exit_code == 2
    res = fm("convert", "--split", "0.5", tmp_path / "a.ffm", "-o", tmp_path / "c.parquet")
    assert res.exit_code == 2 and "raw logs" in res.stderr
    batch, _ = read_text(tmp_path / "a.ffm")
    assert batch.n_rows == 120 and batch.max_field == 38 and (batch.values == 1).all()
    ok(fm("train", "-q", "-t", "1", "-o", tmp_path / "plain.fm", tmp_path / "a.ffm"))
    res = fm("predict", "--raw", tmp_path / "plain.fm", tmp_path / "d.tsv")
    assert res.exit_code == 78 and "preprocessing spec" in res.stderr
