"""fm serve: scores equal fm predict's, hot reload without a failed or mixed
answer, hostile requests, limits, metrics and draining on SIGTERM."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from clirun import invoke, ok
from fmcli.model import load_model
from fmcli.predict import predict as library_predict
from fmcli.serve import ServeOptions, Service, parse_model_args

KINDS = ("lr", "fm", "ffm", "fwfm", "fmfm")
TASKS = ("binary", "regression", "multiclass")
N_FIELDS, PER_FIELD = 4, 10
CLASSES = ("cat", "dog", "eel")


def _rows(n, seed, task):
    """libffm rows: one feature per field (field f holds ids f*10 .. f*10+9),
    labels for `task`, values mostly 1."""
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(n):
        ids = [f * PER_FIELD + int(rng.integers(PER_FIELD)) for f in range(N_FIELDS)]
        vals = [1.0 if rng.random() < 0.7 else round(float(rng.uniform(0.2, 2.0)), 3) for _ in ids]
        score = sum(ids) % 7 - 3
        if task == "binary":
            label = str(int(score + rng.normal() > 0))
        elif task == "regression":
            label = f"{score + rng.normal(0, 0.3):.3f}"
        else:
            label = CLASSES[(sum(ids) + int(rng.integers(2))) % 3]
        lines.append(label + " " + " ".join(f"{f}:{j}:{v:g}" for f, (j, v) in enumerate(zip(ids, vals))))
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A model of every kind and task, the rows they score, and a server of them all."""
    d = tmp_path_factory.mktemp("serve")
    models = {}
    for task in TASKS:
        (d / f"train-{task}.ffm").write_text(_rows(300, 1, task))
        (d / f"test-{task}.ffm").write_text(_rows(40, 2, task))
        for kind in KINDS:
            path = d / f"{kind}-{task}.fm"
            ok(invoke("train", "-q", "--model", kind, "--task", task, "-k", "3", "-t", "2", "-s", "1",
                      "-o", path, d / f"train-{task}.ffm"))
            models[kind, task] = path
    service = Service([(f"{k}-{t}", str(p)) for (k, t), p in models.items()],
                      ServeOptions(port=0, threads=4, timeout=10, reload_interval=0))
    service.start()
    yield {"dir": d, "models": models, "service": service}
    service.stop(5)


def request(service_or_port, method, path, body=None, headers=None, timeout=30):
    """(status, headers, parsed JSON or text) of one request on a new connection."""
    port = service_or_port if isinstance(service_or_port, int) else service_or_port.address[1]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        ctype = resp.getheader("Content-Type", "")
        payload = json.loads(data) if ctype.startswith("application/json") else data.decode()
        return resp.status, dict(resp.getheaders()), payload
    finally:
        conn.close()


def post(service, name, body, ctype="text/plain", query=""):
    if isinstance(body, str):
        body = body.encode()
    return request(service, "POST", f"/v1/models/{name}/predict{query}", body, {"Content-Type": ctype})


def fm_predict(model, data, *extra):
    """`fm predict`'s numbers: (n,) or (n, C)."""
    res = ok(invoke("predict", "-q", *extra, model, data))
    return np.array([[float(x) for x in line.split()] for line in res.stdout.splitlines()])


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def as_json_features(text, with_fields=True):
    """libffm rows as JSON lines of features, fields and values."""
    out = []
    for line in text.splitlines():
        entries = [e.split(":") for e in line.split()[1:]]
        obj = {"features": [int(j) for _, j, _ in entries], "values": [float(v) for _, _, v in entries]}
        if with_fields:
            obj["fields"] = [int(f) for f, _, _ in entries]
        out.append(json.dumps(obj))
    return "\n".join(out) + "\n"


# -- scores -------------------------------------------------------------------------------


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("kind", KINDS)
def test_scores_equal_fm_predict(work, kind, task):
    model = work["models"][kind, task]
    data = work["dir"] / f"test-{task}.ffm"
    text = data.read_text()
    expected_cli = fm_predict(model, data)
    exact = library_predict(load_model(model), str(data))
    status, _, text_answer = post(work["service"], f"{kind}-{task}", text)
    assert status == 200, text_answer
    status, _, json_answer = post(work["service"], f"{kind}-{task}", as_json_features(text), "application/json")
    assert status == 200, json_answer
    for answer in (text_answer, json_answer):
        assert answer["model"] == f"{kind}-{task}" and answer["checksum"] == sha256(model)
        assert answer["rows"] == 40
        got = np.array(answer["predictions"])
        # the same numbers as the library (bit for bit) and as fm predict prints them
        assert np.array_equal(got, exact)
        assert got.shape == (40, 3) if task == "multiclass" else got.shape == (40,)
        assert np.allclose(got.reshape(expected_cli.shape), expected_cli, rtol=1e-5, atol=1e-6)
        if task == "multiclass":
            assert answer["classes"] == list(load_model(model).spec.classes)
            assert np.allclose(got.sum(axis=1), 1)
        elif task == "binary":
            assert ((got > 0) & (got < 1)).all()
    assert len(set(np.round(np.asarray(text_answer["predictions"]).reshape(-1), 6))) > 3   # not a constant


def test_body_variants_score_the_same(work):
    """A libffm row without its label, {"row": ...}, a JSON array, fields
    left out of an FM model's rows: the same numbers."""
    svc, task = work["service"], "binary"
    text = (work["dir"] / f"test-{task}.ffm").read_text()
    base = post(svc, "fm-binary", text)[2]["predictions"]
    unlabelled = "\n".join(line.split(" ", 1)[1] for line in text.splitlines())
    assert post(svc, "fm-binary", unlabelled)[2]["predictions"] == base
    one = text.splitlines()[0].split(" ", 1)[1]      # one row, no label, no final newline
    assert post(svc, "fm-binary", one)[2]["predictions"] == base[:1]
    # CRLF line ends and a byte-order mark, as a file saved on Windows may have
    assert post(svc, "fm-binary", "\ufeff" + text.replace("\n", "\r\n"))[2]["predictions"] == base
    rows = "\n".join(json.dumps({"row": line.split(" ", 1)[1]}) for line in text.splitlines())
    assert post(svc, "fm-binary", rows, "application/json")[2]["predictions"] == base
    array = "[" + ",".join(as_json_features(text).splitlines()) + "]"
    assert post(svc, "fm-binary", array, "application/json")[2]["predictions"] == base
    # FM ignores fields: leaving them out changes nothing
    no_fields = as_json_features(text, with_fields=False)
    assert post(svc, "fm-binary", no_fields, "application/json")[2]["predictions"] == base
    # the format by query overrides the Content-Type
    assert post(svc, "fm-binary", text, "application/octet-stream", "?format=libffm")[2]["predictions"] == base
    # an FFM model needs the fields
    status, _, answer = post(svc, "ffm-binary", no_fields, "application/json")
    assert status == 400 and answer["error"] == 'line 1: a ffm model needs "fields"' and answer["line"] == 1
    # no rows: no predictions
    status, _, answer = post(svc, "fm-binary", "", "application/json")
    assert status == 200 and answer["predictions"] == [] and answer["rows"] == 0


def test_unseen_ids_are_ignored_as_fm_predict_does(work, tmp_path):
    svc = work["service"]
    model = work["models"]["ffm", "binary"]
    rows = "0 0:3:1 1:15:1 2:999:1\n0 0:3:1 1:15:1 7:2:1\n0 0:3:1 1:15:1\n"
    (tmp_path / "u.ffm").write_text(rows)
    expected = fm_predict(model, tmp_path / "u.ffm").reshape(-1)
    got = np.array(post(svc, "ffm-binary", rows)[2]["predictions"])
    # the unseen entry adds nothing but still counts in the row's norm, as in fm predict
    assert np.allclose(got, expected, atol=1e-6) and got[0] == got[1] != got[2]


def test_a_model_with_an_id_map(tmp_path, monkeypatch):
    """Sparse ids far apart: the model keeps compact slots and the ids they
    stand for; a request's ids are looked up as fm predict looks them up."""
    monkeypatch.setenv("FMCLI_CACHE_DIR", str(tmp_path / "cache"))
    rng = np.random.default_rng(5)

    def rows(n, vocab):
        out = []
        for _ in range(n):
            ids = [(f * 7919 + int(rng.integers(vocab)) * 104729) * 2654435761 % (1 << 30) for f in range(4)]
            out.append(f"{int(rng.random() < 0.3)} " + " ".join(f"{f}:{i}:1" for f, i in enumerate(ids)))
        return "\n".join(out) + "\n"

    (tmp_path / "tr.ffm").write_text(rows(300, 20))
    (tmp_path / "te.ffm").write_text(rows(30, 25))     # some ids unseen in training
    ok(invoke("train", "-q", "--model", "ffm", "-k", "3", "-t", "2", "-s", "1", "-o", tmp_path / "m.fm",
              tmp_path / "tr.ffm"))
    assert load_model(tmp_path / "m.fm").feature_ids is not None
    expected = fm_predict(tmp_path / "m.fm", tmp_path / "te.ffm").reshape(-1)
    svc = Service([("m", str(tmp_path / "m.fm"))], ServeOptions(port=0, reload_interval=0))
    svc.start()
    try:
        text = (tmp_path / "te.ffm").read_text()
        for body, ctype in ((text, "text/plain"), (as_json_features(text), "application/json")):
            status, _, answer = post(svc, "m", body, ctype)
            assert status == 200, answer
            assert np.allclose(answer["predictions"], expected, atol=1e-6)
    finally:
        svc.stop(5)


# -- raw rows through a preprocessing spec -------------------------------------------------


def _criteo(n, seed):
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        ints = ["" if rng.random() < 0.2 else str(int(rng.geometric(0.05))) for _ in range(13)]
        cats = ["" if rng.random() < 0.1 else "%08x" % (min(int(rng.zipf(1.5)), 30) * 2654435761 % 2**32)
                for _ in range(26)]
        rows.append([str(int(rng.random() < 0.3))] + ints + cats)
    return rows


def test_raw_rows_through_the_spec(tmp_path):
    train = _criteo(400, 3)
    test = _criteo(30, 4)
    (tmp_path / "train.tsv").write_text("\n".join("\t".join(r) for r in train) + "\n")
    (tmp_path / "test.tsv").write_text("\n".join("\t".join(r[1:]) for r in test) + "\n")
    ok(invoke("convert", "-q", "criteo", tmp_path / "train.tsv", "-o", tmp_path / "tr.ffm", "--min-count", "3",
              "--hash-space", "5000"))
    ok(invoke("train", "-q", "--spec", tmp_path / "tr.ffm.spec.json", "-t", "2", "-o", tmp_path / "raw.fm",
              tmp_path / "tr.ffm"))
    expected = fm_predict(tmp_path / "raw.fm", tmp_path / "test.tsv", "--no-label").reshape(-1)
    svc = Service([("ctr", str(tmp_path / "raw.fm"))], ServeOptions(port=0, reload_interval=0))
    svc.start()
    try:
        body = (tmp_path / "test.tsv").read_text()
        status, _, answer = post(svc, "ctr", body, "text/tab-separated-values")
        assert status == 200, answer
        got = np.array(answer["predictions"])
        assert got.shape == (30,) and np.allclose(got, expected, atol=1e-6)
        # with the label column
        labelled = "\n".join("\t".join(r) for r in test) + "\n"
        assert np.array_equal(post(svc, "ctr", labelled, "text/tab-separated-values", "?label=1")[2]["predictions"],
                              got)
        # JSON: columns by name (an integer as a number, missing ones left out) or in order
        names = [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
        objects = []
        for r in test:
            obj = {n: (int(v) if n.startswith("I") else v) for n, v in zip(names, r[1:]) if v != ""}
            objects.append(json.dumps({"raw": obj}))
        status, _, answer = post(svc, "ctr", "\n".join(objects), "application/json")
        assert status == 200, answer
        assert np.array_equal(answer["predictions"], got)
        lists = "\n".join(json.dumps({"raw": r[1:]}) for r in test)
        assert np.array_equal(post(svc, "ctr", lists, "application/json")[2]["predictions"], got)
        # a bad raw value names its line
        bad = "\n".join(objects[:2] + [json.dumps({"raw": {"I1": "x1"}})])
        status, _, answer = post(svc, "ctr", bad, "application/json")
        assert status == 400 and answer["line"] == 3 and "I1" in answer["error"]
        status, _, answer = post(svc, "ctr", json.dumps({"raw": {"nope": 1}}), "application/json")
        assert status == 400 and "no column 'nope'" in answer["error"]
    finally:
        svc.stop(5)


def test_raw_rows_need_a_spec(work):
    status, _, answer = post(work["service"], "fm-binary", "1\t2\t3\n", "text/csv")
    assert status == 400 and "no preprocessing spec" in answer["error"]


# -- hot reload -----------------------------------------------------------------------------


def _replace(src: Path, dst: Path) -> None:
    """What fm train -o does: write beside, then rename over."""
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def test_hot_reload_under_concurrent_requests(work, tmp_path):
    d = work["dir"]
    a, b = work["models"]["ffm", "binary"], tmp_path / "b.fm"
    ok(invoke("train", "-q", "--model", "ffm", "-k", "3", "-t", "3", "-s", "2", "-o", b, d / "train-binary.ffm"))
    data = d / "test-binary.ffm"
    body = data.read_bytes()
    expected = {sha256(p): library_predict(load_model(p), str(data)).tolist() for p in (a, b)}
    assert len(expected) == 2 and expected[sha256(a)] != expected[sha256(b)]
    served = tmp_path / "ctr.fm"
    shutil.copyfile(a, served)
    logs = []
    svc = Service([("ctr", str(served))], ServeOptions(port=0, threads=4, reload_interval=0.02), log=logs.append)
    svc.start()
    stop = threading.Event()
    failures, answers = [], []

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", svc.address[1], timeout=30)
        while not stop.is_set():
            try:
                conn.request("POST", "/v1/models/ctr/predict", body, {"Content-Type": "text/plain"})
                resp = conn.getresponse()
                payload = json.loads(resp.read())
                if resp.status != 200:
                    failures.append((resp.status, payload))
                else:
                    answers.append(payload)
            except Exception as exc:     # a failed request
                failures.append(repr(exc))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", svc.address[1], timeout=30)
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        seen = []
        for i in range(10):
            src = b if i % 2 == 0 else a
            _replace(src, served)
            deadline = time.time() + 10
            while svc.slots["ctr"].current.checksum != sha256(src) and time.time() < deadline:
                time.sleep(0.01)
            assert svc.slots["ctr"].current.checksum == sha256(src)
            seen.append(len(answers))
            time.sleep(0.05)
        # a corrupt file keeps the previous model serving, and says so
        good = sha256(a)
        corrupt = bytearray(Path(a).read_bytes())
        corrupt[len(corrupt) // 2] ^= 0xFF
        (tmp_path / "bad").write_bytes(bytes(corrupt))
        os.replace(tmp_path / "bad", served)
        deadline = time.time() + 10
        while svc.slots["ctr"].error is None and time.time() < deadline:
            time.sleep(0.01)
        status, _, health = request(svc, "GET", "/healthz")
        assert status == 200 and health["status"] == "degraded"
        assert "checksum mismatch" in health["models"]["ctr"]["reload_error"]
        assert svc.slots["ctr"].current.checksum == good
        time.sleep(0.1)
        _replace(b, served)
        deadline = time.time() + 10
        while svc.slots["ctr"].current.checksum != sha256(b) and time.time() < deadline:
            time.sleep(0.01)
        assert request(svc, "GET", "/healthz")[2]["status"] == "ok"
        time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join()
        svc.stop(5)
    assert failures == []
    assert len(answers) > 20 and all(n2 > n1 for n1, n2 in zip(seen, seen[1:]))   # requests all along
    by_checksum = {}
    for answer in answers:
        # every answer is wholly the model its checksum names
        assert answer["predictions"] == expected[answer["checksum"]]
        by_checksum[answer["checksum"]] = by_checksum.get(answer["checksum"], 0) + 1
    assert set(by_checksum) == set(expected)
    assert svc.slots["ctr"].reloads == 11 and svc.slots["ctr"].reload_errors == 1
    assert any("reloading failed" in line and "checksum mismatch" in line for line in logs)
    # the server is stopped: the metrics are read directly
    rendered = svc.metrics.render(svc.slots, 0)
    assert 'fm_serve_reloads_total{model="ctr",result="ok"} 11' in rendered
    assert 'fm_serve_reloads_total{model="ctr",result="error"} 1' in rendered


def test_a_replaced_file_that_is_missing_keeps_the_model(work, tmp_path):
    served = tmp_path / "m.fm"
    shutil.copyfile(work["models"]["lr", "binary"], served)
    svc = Service([("m", str(served))], ServeOptions(port=0, reload_interval=0))
    svc.start()
    try:
        served.unlink()
        svc.poll()
        assert svc.slots["m"].error is not None and "no such model file" in svc.slots["m"].error
        status, _, answer = post(svc, "m", "0 0:1:1\n")
        assert status == 200 and answer["checksum"] == sha256(work["models"]["lr", "binary"])
        shutil.copyfile(work["models"]["lr", "binary"], served)
        svc.poll()
        assert svc.slots["m"].error is None and svc.slots["m"].reloads == 0   # the same bytes again
        # the file serving moved away and back: the error clears without a reload
        os.rename(served, tmp_path / "aside.fm")
        svc.poll()
        assert svc.slots["m"].error is not None
        os.rename(tmp_path / "aside.fm", served)
        svc.poll()
        assert svc.slots["m"].error is None and request(svc, "GET", "/healthz")[2]["status"] == "ok"
    finally:
        svc.stop(5)


# -- hostile and bad requests ---------------------------------------------------------------


@pytest.mark.parametrize("body, ctype, status, message", [
    ("{not json", "application/json", 400, "line 1: malformed JSON"),
    ('{"features": [1], "values": [NaN]}', "application/json", 400, "NaN is not a number JSON allows"),
    ('{"features": [1], "values": [1e39]}', "application/json", 400, "finite number within float32 range"),
    ('{"features": [-1]}', "application/json", 400, "expected an integer id in 0..2^31-1"),
    ('{"features": [2147483648]}', "application/json", 400, "expected an integer id"),
    ('{"features": [true]}', "application/json", 400, "expected an integer id"),
    ('{"features": [1.5]}', "application/json", 400, "expected an integer id"),
    ('{"features": [1, 2], "values": [1]}', "application/json", 400, '"values" has 1 entries'),
    ('{"features": [1], "bogus": 1}', "application/json", 400, "unknown key 'bogus'"),
    ('[1, 2]', "application/json", 400, "item 1: expected a JSON object"),
    ('{"row": "0:1:1"}\n{"features": [1]}', "application/json", 400, "one kind"),
    ("0 0:1:1\n0 0:1:nan\n", "text/plain", 400, "line 2: expected a number as the value"),
    ("0 0:1:1e39\n", "text/plain", 400, "line 1: expected a finite number"),
    ("0 0:1:1\n0 0:-1:1\n", "text/plain", 400, "line 2: expected a non-negative id"),
    (b"\xff\xfe", "application/json", 400, "not UTF-8"),
    ("[" * 100_000, "application/json", 400, "malformed JSON: nested too deeply"),
    ('{"features": ' + "[" * 100_000, "application/json", 400, "line 1: malformed JSON (nested too deeply)"),
    ("0 0:1:1\n", "image/png", 415, "Content-Type 'image/png'"),
])
def test_bad_requests_get_a_4xx_with_one_line(work, body, ctype, status, message):
    got, _, answer = post(work["service"], "fm-binary", body, ctype)
    assert got == status and message in answer["error"], answer
    assert "\n" not in answer["error"]
    # and the server goes on
    assert request(work["service"], "GET", "/healthz")[0] == 200


def test_a_row_that_scores_infinity_is_400(work, tmp_path):
    """Finite weights can overflow on a row's large values: fm predict
    refuses such a row (exit status 65), fm serve answers 400 naming it."""
    ok(invoke("train", "-q", "--model", "fm", "--no-norm", "-k", "3", "-t", "2", "-o", tmp_path / "m.fm",
              work["dir"] / "train-binary.ffm"))
    rows = "0 0:1:1\n0 0:1:3e38 1:12:3e38 2:25:3e38\n"
    (tmp_path / "big.ffm").write_text(rows)
    assert invoke("predict", tmp_path / "m.fm", tmp_path / "big.ffm").exit_code == 65
    svc = Service([("m", str(tmp_path / "m.fm"))], ServeOptions(port=0, reload_interval=0))
    svc.start()
    try:
        for body, ctype in ((rows, "text/plain"), (as_json_features(rows), "application/json")):
            status, _, answer = post(svc, "m", body, ctype)
            assert status == 400 and answer["line"] == 2, answer
            assert answer["error"] == ("line 2: the model's score of this row is not a finite number (its "
                                       "weights overflow on the row's values)")
        assert post(svc, "m", rows.splitlines()[0])[0] == 200
    finally:
        svc.stop(5)


def test_routes_methods_and_sizes(work):
    svc = work["service"]
    status, _, answer = post(svc, "nope", "0 0:1:1\n")
    assert status == 404 and "no model named 'nope'" in answer["error"]
    assert request(svc, "GET", "/v2/whatever")[0] == 404
    assert request(svc, "GET", "/v1/models/fm-binary/predict")[0] == 405
    assert request(svc, "PUT", "/v1/models/fm-binary/predict", b"x")[0] == 501
    status, _, info = request(svc, "GET", "/v1/models/ffm-multiclass")
    assert status == 200 and info["kind"] == "ffm" and info["task"] == "multiclass"
    assert info["classes"] == sorted(CLASSES) and info["checksum"] == sha256(work["models"]["ffm", "multiclass"])
    status, _, listing = request(svc, "GET", "/v1/models")
    assert [m["name"] for m in listing["models"]] == [f"{k}-{t}" for t in TASKS for k in KINDS]
    assert all(m["checksum"] == sha256(m["path"]) for m in listing["models"])


def test_request_too_large_is_413(work):
    svc = Service([("m", str(work["models"]["lr", "binary"]))],
                  ServeOptions(port=0, max_request_bytes=100, reload_interval=0))
    svc.start()
    try:
        status, headers, answer = post(svc, "m", "0 0:1:1\n" * 20)
        assert status == 413 and "more than the limit of 100" in answer["error"]
        assert headers.get("Connection") == "close"
        # a huge Content-Length is refused before any body is read
        with socket.create_connection(svc.address, timeout=10) as s:
            s.sendall(b"POST /v1/models/m/predict HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
                      b"Content-Length: 100000000000\r\n\r\n")
            head = s.recv(4096)
        assert head.startswith(b"HTTP/1.1 413 ")
        with socket.create_connection(svc.address, timeout=10) as s:
            s.sendall(b"POST /v1/models/m/predict HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n\r\n")
            assert s.recv(4096).startswith(b"HTTP/1.1 411 ")
        assert post(svc, "m", "0 0:1:1\n")[0] == 200
    finally:
        svc.stop(5)


def test_a_slow_client_times_out_with_408(work):
    svc = Service([("m", str(work["models"]["lr", "binary"]))], ServeOptions(port=0, timeout=0.3, reload_interval=0))
    svc.start()
    try:
        with socket.create_connection(svc.address, timeout=10) as s:
            s.sendall(b"POST /v1/models/m/predict HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
                      b"Content-Length: 100\r\n\r\n0 0:1:1\n")
            head = s.recv(4096)
        assert head.startswith(b"HTTP/1.1 408 ")
        assert post(svc, "m", "0 0:1:1\n")[0] == 200
    finally:
        svc.stop(5)


def test_healthz_and_metrics_count(work, tmp_path):
    svc = Service([("a", str(work["models"]["fm", "binary"])), ("b", str(work["models"]["fm", "regression"]))],
                  ServeOptions(port=0, reload_interval=0))
    svc.start()
    try:
        status, _, health = request(svc, "GET", "/healthz")
        assert status == 200 and health["status"] == "ok" and set(health["models"]) == {"a", "b"}
        for n in (1, 2, 3):
            assert post(svc, "a", "0 0:1:1\n" * n)[0] == 200
        assert post(svc, "a", "0 0:1:x\n")[0] == 400
        assert post(svc, "b", "0 0:1:1\n" * 5)[0] == 200
        assert post(svc, "zzz", "0 0:1:1\n")[0] == 404
        status, headers, text = request(svc, "GET", "/metrics")
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, value = line.rsplit(" ", 1)
                values[key] = float(value)
        assert values['fm_serve_requests_total{model="a",code="200"}'] == 3
        assert values['fm_serve_requests_total{model="a",code="400"}'] == 1
        assert values['fm_serve_rows_total{model="a"}'] == 6
        assert values['fm_serve_rows_total{model="b"}'] == 5
        assert values['fm_serve_errors_total{model="a"}'] == 1
        assert values['fm_serve_errors_total{model="b"}'] == 0
        assert values['fm_serve_request_seconds_count{model="a"}'] == 4
        assert values['fm_serve_request_seconds_bucket{model="a",le="+Inf"}'] == 4
        assert values['fm_serve_request_latency_seconds_count{model="b"}'] == 1
        assert 0 < values['fm_serve_request_latency_seconds{model="a",quantile="0.5"}'] < 10
        assert values['fm_serve_other_responses_total{code="404"}'] == 1
        checksum = sha256(work["models"]["fm", "binary"])
        assert values[f'fm_serve_model_info{{model="a",checksum="{checksum}",kind="fm",task="binary"}}'] == 1
    finally:
        svc.stop(5)


# -- the command ------------------------------------------------------------------------------


def test_model_arguments():
    assert parse_model_args(["models/ctr.fm", "x=a/b.fm", "c.d.fm"]) == [("ctr", "models/ctr.fm"),
                                                                       ("x", "a/b.fm"), ("c.d", "c.d.fm")]
    with pytest.raises(Exception, match="two models are named 'ctr'"):
        parse_model_args(["a/ctr.fm", "b/ctr.fm"])


def test_command_errors(work, tmp_path):
    model = work["models"]["lr", "binary"]
    res = invoke("serve", "--port", "0", f"m={model}", f"m={model}")
    assert res.exit_code == 2 and res.stderr.count("\n") == 1 and "two models are named 'm'" in res.stderr
    res = invoke("serve", "--port", "0", tmp_path / "missing.fm")
    assert res.exit_code == 66 and res.stderr == f"fm: error: {tmp_path / 'missing.fm'}: no such model file\n"
    (tmp_path / "bad.fm").write_bytes(Path(model).read_bytes()[:-100])
    res = invoke("serve", "--port", "0", tmp_path / "bad.fm")
    predicted = invoke("predict", tmp_path / "bad.fm", work["dir"] / "test-binary.ffm")
    assert res.exit_code == predicted.exit_code == 65 and res.stderr.count("\n") == 1
    assert res.stderr.startswith(f"fm: error: {tmp_path / 'bad.fm'}: ")
    # a port in use: one line, exit status 71
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        res = invoke("serve", "--port", port, model)
        assert res.exit_code == 71
        assert res.stderr == (f"fm: error: cannot listen on 127.0.0.1:{port}: the address is "
                                               "already in use (another server has the port; give --port)\n")
        # the port from a --config file's [serve] table, and from FM_SERVE_PORT
        (tmp_path / "fm.toml").write_text(f"[serve]\nport = {port}\nthreads = 2\n")
        res = invoke("serve", "--config", tmp_path / "fm.toml", model)
        assert res.exit_code == 71 and f"cannot listen on 127.0.0.1:{port}:" in res.stderr
        res = invoke("serve", model, env={"FM_SERVE_PORT": str(port)})
        assert res.exit_code == 71 and f"cannot listen on 127.0.0.1:{port}:" in res.stderr
    assert invoke("serve", "--threads", "0", model).exit_code == 2
    res = invoke("serve", model, env={"FM_SERVE_THREADS": "0"})
    assert res.exit_code == 78 and "FM_SERVE_THREADS" in res.stderr


def _start(args, env=None):
    """`fm serve ARGS` as a process; (process, port) once it listens."""
    proc = subprocess.Popen([sys.executable, "-m", "fmcli", "serve", "--port", "0", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    lines = []
    deadline = time.time() + 60
    while time.time() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
        if m:
            return proc, int(m.group(1))
    proc.kill()
    raise AssertionError("fm serve did not start: " + "".join(lines) + proc.stderr.read())


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_drains_requests_in_flight(work, signum):
    model = work["models"]["ffm", "binary"]
    proc, port = _start(["--timeout", "20", f"ffm={model}"])
    try:
        body = (work["dir"] / "test-binary.ffm").read_bytes()
        with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
            # a request in flight: its headers and half of its body sent
            s.sendall(b"POST /v1/models/ffm/predict HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
                      + f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:100])
            time.sleep(0.5)
            proc.send_signal(signum)
            time.sleep(0.5)
            # no new connection is accepted now
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
            assert proc.poll() is None       # still waiting for the request in flight
            s.sendall(body[100:])
            reply = b""
            while b"\r\n\r\n" not in reply or len(reply.split(b"\r\n\r\n", 1)[1]) < 10:
                chunk = s.recv(65536)
                if not chunk:
                    break
                reply += chunk
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                reply += chunk
        head, payload = reply.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200 ") and b"Connection: close" in head
        answer = json.loads(payload)
        assert answer["rows"] == 40 and answer["checksum"] == sha256(model)
        assert proc.wait(timeout=30) == 0
        err = proc.stderr.read()
        assert "answering the 1 request(s) in flight" in err and err.endswith("stopped\n")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_load_benchmark_runs(work, tmp_path):
    """benchmarks/serve_load.py end to end, tiny: its checks pass and its
    JSON holds every figure (no timing is asserted)."""
    bench = Path(__file__).resolve().parent.parent / "benchmarks" / "serve_load.py"
    out = tmp_path / "serve.json"
    res = subprocess.run([sys.executable, str(bench), "--work-dir", tmp_path / "w", "--train",
                          work["dir"] / "train-binary.ffm", "--rows-file", work["dir"] / "test-binary.ffm",
                          "--batches", "1,20", "--seconds", "2", "--replacements", "3", "--clients", "2",
                          "--threads", "2", "--json", out], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    doc = json.loads(out.read_text())
    assert [r["batch_rows"] for r in doc["results"]] == [1, 20]
    for r in doc["results"]:
        assert r["failures"] == r["mixed"] == 0 and r["requests"] > 0 and r["replacements"] == 3
        assert r["reloads"] == 3 and r["checksums_seen"] >= 1
        assert r["p50_ms"] > 0 and r["server_p99_ms"] > 0
    assert doc["server_exit_status"] == 0 and "| 20 |" in res.stdout
