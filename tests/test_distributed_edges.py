"""The edges of data-parallel training on Dask, tested from outside
(fmcli.train.train with a scheduler, and the command line) on clusters the
tests start themselves: a worker lost during or between rounds, tls://
clusters and addresses that cannot work, uneven inputs, the rounds in the
progress line and the run log, and the estimators' cluster parameters."""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from fmcli import Config
from fmcli.errors import EX_UNAVAILABLE
from fmcli.metrics import evaluate
from fmcli.predict import Scorer
from fmcli.train import train

from clirun import invoke, ok
from synthdata import write_synth

distributed = pytest.importorskip("distributed")

from daskrun import arrays as _arrays, same_bytes as _same_bytes, start_cluster as _start_cluster  # noqa: E402
from daskrun import stop_cluster as _stop_cluster, synth  # noqa: E402,F401


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster():
    """A cluster shared by the tests that do not harm it; runs reach it by
    its tcp:// address, as a user's would."""
    c, client = _start_cluster()
    yield c
    _stop_cluster(c, client)


@pytest.fixture
def fragile_cluster():
    """A cluster of its own for a test that kills its workers."""
    c, client = _start_cluster()
    yield c, client
    _stop_cluster(c, client)


@pytest.fixture(scope="module")
def wide(tmp_path_factory) -> Path:
    """20000 rows of 39 fields (tr.ffm): a round's tasks take long enough
    to lose a worker in the middle of one."""
    d = tmp_path_factory.mktemp("wide")
    write_synth(d, 20000, 11, 39)
    return d


def _logloss(model, path: Path) -> float:
    """The model's validation logloss, scored here (fmcli.predict) on `path`."""
    from fmcli.data.text import read_text

    batch, _ = read_text(path)
    scores = Scorer(model, 1).scores(batch)
    return evaluate("binary", batch.labels, scores, None)["logloss"]


def _base(**over) -> dict:
    return {"model": "ffm", "epochs": 2, "seed": 3, "threads": 1, "cache": False, "shuffle": False, **over}


# ---------------------------------------------------------------------------
# a worker lost during or between rounds
# ---------------------------------------------------------------------------

class _KillDuringRound(threading.Thread):
    """Watches the scheduler and, once the run is in its `nth` busy spell
    (a round: tasks being processed), kills the process of one worker that
    is processing a task (SIGKILL: no goodbye to the scheduler; its nanny
    starts a new one)."""

    def __init__(self, client, pids: dict[str, int], nth: int = 2):
        super().__init__(daemon=True)
        self.client, self.pids, self.nth = client, pids, nth
        self.stop = threading.Event()
        self.killed: list[str] = []

    def run(self) -> None:
        spells, busy_before = 0, False
        while not self.stop.is_set():
            try:
                busy = sorted(a for a, keys in self.client.processing().items() if keys)
            except Exception:     # the client is closing with the test
                return
            if busy and not busy_before:
                spells += 1
            busy_before = bool(busy)
            victims = [a for a in busy if a in self.pids]
            if spells >= self.nth and victims:
                os.kill(self.pids[victims[-1]], signal.SIGKILL)
                self.killed.append(victims[-1])
                return
            time.sleep(0.002)


def _pids(client) -> dict[str, int]:
    return client.run(os.getpid)


# A worker killed during a round: its tasks run again on the other worker
# (they are pure), from the second copy that every model block has.


@pytest.mark.slow
def test_a_worker_killed_during_a_round_changes_nothing(fragile_cluster, wide):
    cluster, client = fragile_cluster
    cfg = Config(scheduler=cluster.scheduler_address, rows_per_round=10000, **_base(k=4))
    calm = train(cfg, str(wide / "tr.ffm"))
    killer = _KillDuringRound(client, _pids(client), nth=2)
    killer.start()
    try:
        lost = train(cfg, str(wide / "tr.ffm"))
    finally:
        killer.stop.set()
        killer.join()
    assert killer.killed, "no round was seen in progress: the worker was not killed"
    _same_bytes(calm, lost)


# Why a worker lost between rounds changes the result: each round cuts its
# rows into as many pieces as the scheduler lists workers at that moment,
# so the rounds after a loss are cut into fewer pieces (and merged
# differently) than the same rounds of a run without it.
def _lose_a_worker_between_rounds(synth, tmp_path, wait: float, cache: bool = False) -> None:
    """A run on 2 workers without a nanny (a lost one stays lost, as a
    machine that fails) that loses one between two rounds, `wait` seconds
    into the pause, against the same run without the loss: the same bits.
    The lost worker's shard of the rows is sent again (or, with `cache`,
    read from the cache) for the worker that takes its tasks."""
    with HandCluster(tmp_path, nanny=False) as hand:
        cfg = Config(scheduler=hand.address, eval_every=2000, rows_per_round=1000,
                     **_base(cache=cache, cache_dir=str(tmp_path / "cache")))
        calm = train(cfg, str(synth / "tr.ffm"), str(synth / "va.ffm"))
        lost_ones = []

        def lose_one(stats) -> None:
            # called by the run loop between two rounds: the next one starts without the worker
            if not lost_ones:
                time.sleep(wait)
                lost_ones.append(hand.lose_worker(-1))

        lost = train(cfg, str(synth / "tr.ffm"), str(synth / "va.ffm"), on_eval=lose_one)
        assert lost_ones
    _same_bytes(calm, lost)


@pytest.mark.slow
@pytest.mark.parametrize("cache", [False, True], ids=["shipped", "cache"])
def test_a_worker_lost_between_rounds_changes_nothing(synth, tmp_path, cache):
    _lose_a_worker_between_rounds(synth, tmp_path, wait=0, cache=cache)


@pytest.mark.slow
def test_a_worker_lost_after_dask_dropped_its_extra_replicas(synth, tmp_path):
    """Dask's active memory manager (on by default, every 2 s) drops the
    replicas a key has beyond what waiting tasks need, so between two rounds
    each block soon lives on one worker only.  Losing that worker must not
    lose the block: every worker keeps a copy of every block under a key of
    its own, which the manager leaves alone."""
    _lose_a_worker_between_rounds(synth, tmp_path, wait=5)     # two passes of the memory manager


# ---------------------------------------------------------------------------
# clusters started by hand (dask scheduler, dask worker), tcp:// or tls://
# ---------------------------------------------------------------------------

def make_certificates(directory: Path) -> dict[str, str]:
    """A certificate authority and one certificate (for 127.0.0.1 and
    localhost) that it signed, with its key, as PEM files in `directory`:
    {"ca": ..., "cert": ..., "key": ...}.  The scheduler, the workers and
    the clients all present that certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    now = datetime.datetime.now(datetime.timezone.utc)
    valid = {"not_valid_before": now - datetime.timedelta(days=1), "not_valid_after": now + datetime.timedelta(days=2)}

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("fmcli test CA")).issuer_name(name("fmcli test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(valid["not_valid_before"]).not_valid_after(valid["not_valid_after"])
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(name("localhost")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(valid["not_valid_before"]).not_valid_after(valid["not_valid_after"])
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = {"ca": directory / "ca.pem", "cert": directory / "cert.pem", "key": directory / "key.pem"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return {k: str(v) for k, v in paths.items()}


def tls_environment(certs: dict[str, str]) -> dict[str, str]:
    """Dask's settings (as environment variables) for a client of a tls:// cluster."""
    return {"DASK_DISTRIBUTED__COMM__TLS__CA_FILE": certs["ca"],
            "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT": certs["cert"],
            "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY": certs["key"],
            "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True"}


class HandCluster:
    """A cluster started as the README says: ``dask scheduler
    --scheduler-file F`` and `n` ``dask worker --scheduler-file F
    --nthreads 1`` processes (tls:// with `certs`)."""

    def __init__(self, directory: Path, n: int = 2, certs: dict[str, str] | None = None, nanny: bool = True):
        self.file = directory / "scheduler.json"
        self.certs = certs
        self.env = {**os.environ, **(tls_environment(certs) if certs else {})}
        tls = ["--tls-ca-file", certs["ca"], "--tls-cert", certs["cert"], "--tls-key", certs["key"]] if certs else []
        dask = [sys.executable, "-m", "dask"]
        self.logs = open(directory / "dask.log", "w")
        self.scheduler = subprocess.Popen(
            dask + ["scheduler", "--scheduler-file", str(self.file), "--host", "127.0.0.1", "--port", "0",
                    "--no-dashboard"] + (["--protocol", "tls"] + tls if certs else []),
            stdout=self.logs, stderr=subprocess.STDOUT, env=self.env)
        self.workers = []
        self._worker = dask + ["worker", "--scheduler-file", str(self.file), "--nthreads", "1", "--host",
                               "127.0.0.1", "--no-dashboard", "--nanny" if nanny else "--no-nanny"] + tls
        try:
            self._wait_for(lambda: self.file.exists() and self.file.stat().st_size > 0, "the scheduler file")
            for _ in range(n):
                self.add_worker()
            self.address = json.loads(self.file.read_text())["address"]
            with self.client() as client:
                client.wait_for_workers(n, timeout=60)
        except BaseException:
            self.close()
            raise

    def add_worker(self) -> None:
        """Start one more worker process (not waiting for it to join)."""
        self.workers.append(subprocess.Popen(self._worker, stdout=self.logs, stderr=subprocess.STDOUT,
                                             env=self.env))

    def _wait_for(self, condition, what: str, seconds: float = 60.0) -> None:
        t0 = time.monotonic()
        while not condition():
            if time.monotonic() - t0 > seconds or self.scheduler.poll() is not None:
                raise RuntimeError(f"{what} did not appear; see {self.logs.name}")
            time.sleep(0.05)

    def client(self):
        """A client of the cluster (with the certificates of a tls:// one)."""
        security = None
        if self.certs:
            security = distributed.Security(tls_ca_file=self.certs["ca"], tls_client_cert=self.certs["cert"],
                                            tls_client_key=self.certs["key"], require_encryption=True)
        return distributed.Client(self.address, security=security, set_as_default=False, timeout=30)

    def lose_worker(self, which: int) -> str:
        """Kill the `which`-th worker process (SIGKILL) and wait until the
        scheduler, and every client after its next refresh of the
        scheduler's information (every 2 s), knows it is gone."""
        proc = self.workers[which]
        with self.client() as client:
            before = set(client.scheduler_info()["workers"])
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            t0 = time.monotonic()
            while set(client.scheduler_info()["workers"]) == before and time.monotonic() - t0 < 30:
                time.sleep(0.05)
            gone = sorted(before - set(client.scheduler_info()["workers"]))
        time.sleep(2.5)   # distributed.client.scheduler-info-interval
        return gone[0] if gone else "?"

    def close(self) -> None:
        for proc in self.workers + [self.scheduler]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.workers + [self.scheduler]:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.logs.close()

    def __enter__(self) -> "HandCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@pytest.mark.slow
def test_the_readme_recipe_by_hand_trains_and_predicts(synth, tmp_path):
    """dask scheduler / dask worker started by hand, then fm train and fm
    predict --scheduler tcp://...: the model of the local:2 run, and
    predict's output byte for byte fm predict's on one process."""
    with HandCluster(tmp_path) as hand:
        assert hand.address.startswith("tcp://")
        out = tmp_path / "m.fm"
        same = ("--model", "ffm", "--seed", "3", "-s", "1", "--no-shuffle", "-t", "2", "--no-cache")
        r = ok(invoke("train", "--scheduler", hand.address, *same, synth / "tr.ffm", "-p", synth / "va.ffm",
                      "-o", out))
        assert "2 workers" in r.stderr
        by_file = ok(invoke("train", "--scheduler-file", hand.file, *same, synth / "tr.ffm", "-p", synth / "va.ffm",
                            "-o", tmp_path / "f.fm"))
        assert "2 workers" in by_file.stderr
        ok(invoke("predict", "--scheduler", hand.address, out, synth / "va.ffm", "-o", tmp_path / "p.txt"))
    from fmcli import load_model

    local = train(Config(scheduler="local:2", **_base()), str(synth / "tr.ffm"), str(synth / "va.ffm"))
    _same_bytes(load_model(str(out)), local)
    _same_bytes(load_model(str(tmp_path / "f.fm")), local)
    one = ok(invoke("predict", out, synth / "va.ffm"))
    assert (tmp_path / "p.txt").read_text() == one.stdout


def test_min_workers_waits_for_them_or_says_how_many_joined(synth, tmp_path):
    """--min-workers N against a cluster of fewer: one line naming how
    many joined, exit status 69, no model; with a worker added while the
    run waits, it trains on both."""
    common = ("-q", "--model", "ffm", "-s", "1", "-t", "1", "--no-cache", synth / "tr.ffm")
    with HandCluster(tmp_path, n=1) as hand:
        t0 = time.perf_counter()
        r = invoke("train", "--scheduler", hand.address, "--min-workers", "2", "--scheduler-timeout", "2", *common,
                   "-o", tmp_path / "m.fm")
        assert time.perf_counter() - t0 < 30
        assert r.exit_code == EX_UNAVAILABLE, (r.exit_code, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert lines == [f"fm: error: 1 of the 2 workers asked for (--min-workers) joined {hand.address} "
                         "within 2 s"], r.stderr
        assert not (tmp_path / "m.fm").exists()
        waiting = subprocess.Popen([sys.executable, "-m", "fmcli", "train", "--scheduler-file", str(hand.file),
                                    "--min-workers", "2", "--scheduler-timeout", "60",
                                    *map(str, common), "-o", str(tmp_path / "m.fm")],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)
        hand.add_worker()
        out, err = waiting.communicate(timeout=120)
        assert waiting.returncode == 0, err
        r = invoke("predict", "-q", "--scheduler-file", hand.file, "--min-workers", "3", "--scheduler-timeout", "1",
                   tmp_path / "m.fm", synth / "va.ffm", "-o", tmp_path / "p.txt")
        assert r.exit_code == EX_UNAVAILABLE, (r.exit_code, r.stderr)
        assert r.stderr.strip().splitlines() == [
            f"fm: error: 2 of the 3 workers asked for (--min-workers) joined the scheduler in {hand.file} "
            "within 1 s"], r.stderr
        assert not (tmp_path / "p.txt").exists()
        ok(invoke("predict", "-q", "--scheduler", hand.address, "--min-workers", "2", tmp_path / "m.fm",
                  synth / "va.ffm", "-o", tmp_path / "p.txt"))
    from fmcli import load_model

    assert load_model(str(tmp_path / "m.fm")).meta["training"]["device"] == "dask (2 workers)"


@pytest.mark.slow
def test_tls_cluster_trains_as_tcp(synth, tmp_path):
    """A tls:// cluster (certificates made here) reached through Dask's
    settings: the Python API and fm train give the model of a tcp:// run."""
    import dask

    certs = make_certificates(tmp_path)
    cfg = _base()
    for name in ("tcp", "tls"):
        (tmp_path / name).mkdir()
    with HandCluster(tmp_path / "tcp") as plain:
        over_tcp = train(Config(scheduler=plain.address, **cfg), str(synth / "tr.ffm"))
    with HandCluster(tmp_path / "tls", certs=certs) as hand:
        assert hand.address.startswith("tls://")
        # the Python API: the certificates in Dask's configuration
        with dask.config.set({"distributed.comm.tls.ca-file": certs["ca"],
                              "distributed.comm.tls.client.cert": certs["cert"],
                              "distributed.comm.tls.client.key": certs["key"],
                              "distributed.comm.require-encryption": True}):
            over_tls = train(Config(scheduler=hand.address, **cfg), str(synth / "tr.ffm"))
        _same_bytes(over_tcp, over_tls)
        # the command line, its certificates in DASK_DISTRIBUTED__COMM__TLS__* variables
        out = tmp_path / "m.fm"
        r = subprocess.run([sys.executable, "-m", "fmcli", "train", "--scheduler", hand.address, "-s", "1",
                            "--no-shuffle", "-t", "2", "--seed", "3", "--model", "ffm", "--no-cache",
                            str(synth / "tr.ffm"), "-o", str(out)],
                           capture_output=True, text=True, timeout=300, env=hand.env)
        assert r.returncode == 0, r.stderr
        assert "2 workers" in r.stderr
    from fmcli import load_model

    _same_bytes(load_model(str(out)), over_tcp)


def _fm(*args, env=None, timeout=120) -> subprocess.CompletedProcess:
    """fm in a process of its own (what it prints at exit included)."""
    return subprocess.run([sys.executable, "-m", "fmcli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


def _one_line_69(r: subprocess.CompletedProcess, *words: str) -> None:
    assert r.returncode == EX_UNAVAILABLE, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for word in words:
        assert word in lines[0], r.stderr


def test_unreachable_tls_scheduler_is_one_line_within_the_timeout(synth, tmp_path):
    certs = make_certificates(tmp_path)
    t0 = time.monotonic()
    r = _fm("train", "-q", "--scheduler", "tls://127.0.0.1:9", "--scheduler-timeout", "2", "--no-cache",
            synth / "tr.ffm", "-o", tmp_path / "m.fm", env={**os.environ, **tls_environment(certs)})
    assert time.monotonic() - t0 < 30
    _one_line_69(r, "tls://127.0.0.1:9")
    assert not (tmp_path / "m.fm").exists()


def test_tls_without_certificates_is_one_line(synth, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    t0 = time.monotonic()
    r = _fm("train", "-q", "--scheduler", "tls://127.0.0.1:9", "--scheduler-timeout", "2", "--no-cache",
            synth / "tr.ffm", "-o", tmp_path / "m.fm", env=env)
    assert time.monotonic() - t0 < 30
    _one_line_69(r, "tls://127.0.0.1:9")


def test_unknown_scheme_is_one_line(synth, tmp_path):
    t0 = time.monotonic()
    r = _fm("train", "-q", "--scheduler", "foo://127.0.0.1:9", "--scheduler-timeout", "2", "--no-cache",
            synth / "tr.ffm", "-o", tmp_path / "m.fm")
    assert time.monotonic() - t0 < 30
    _one_line_69(r, "foo://127.0.0.1:9")


# ---------------------------------------------------------------------------
# uneven inputs
# ---------------------------------------------------------------------------

def _train_within(seconds: float, *args, **kwargs):
    """fmcli.train.train(*args, **kwargs) in a thread: its model, or a
    failure if it has not returned within `seconds` (a hang)."""
    out: dict = {}

    def run() -> None:
        try:
            out["model"] = train(*args, **kwargs)
        except BaseException as exc:    # handed to the test's thread
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"training did not finish within {seconds} s"
    if "error" in out:
        raise out["error"]
    return out["model"]


def _every_worker_busy(rounds: list[dict], workers: int = 2) -> None:
    """Every round gave each of the `workers` workers rows to train."""
    assert rounds, "no round was reported (on_round)"
    for r in rounds:
        assert len(r["workers"]) == workers, r
        assert all(w["rows"] > 0 for w in r["workers"]), r
        assert sum(w["rows"] for w in r["workers"]) == r["rows"], r


@pytest.fixture(scope="module")
def uneven(tmp_path_factory) -> Path:
    """40000 training rows of 8 fields (tr.ffm) and 3000 others (va.ffm),
    enough rows for two workers to train within 0.5% of one process; the
    training rows also as tiny.ffm (5 rows) and big.ffm (the other 39995),
    and as one.parquet: a Parquet file of one row group."""
    from fmcli.data.parquet import write_parquet
    from fmcli.data.text import read_text

    d = tmp_path_factory.mktemp("uneven")
    lines = write_synth(d, 43000, 7, 8)
    (d / "va.ffm").write_text("".join(lines[:3000]))
    lines = lines[3000:]
    (d / "tr.ffm").write_text("".join(lines))
    (d / "tiny.ffm").write_text("".join(lines[:5]))
    (d / "big.ffm").write_text("".join(lines[5:]))
    batch, _ = read_text(d / "tr.ffm")
    write_parquet(batch, d / "one.parquet", row_group_rows=len(lines) + 1)
    import pyarrow.parquet as pq

    assert pq.ParquetFile(d / "one.parquet").num_row_groups == 1
    return d


@pytest.mark.parametrize("inputs, cache", [(("tiny.ffm", "big.ffm"), True), (("tiny.ffm", "big.ffm"), False),
                                           (("one.parquet",), True)], ids=["tiny-and-big", "no-cache", "parquet"])
def test_uneven_inputs_keep_every_worker_busy_and_train_as_one_process(cluster, uneven, inputs, cache, tmp_path):
    files = [str(uneven / name) for name in inputs]
    cfg = _base(epochs=4, cache=cache, cache_dir=str(tmp_path / "cache"))
    single = train(Config(**cfg), files)
    rounds: list[dict] = []
    two = _train_within(240, Config(scheduler=cluster.scheduler_address, rows_per_round=8000, **cfg), files,
                        on_round=rounds.append)
    _every_worker_busy(rounds)
    assert len(rounds) == 4 * 5                  # 40000 rows in rounds of 8000, four epochs
    assert [r["epoch"] for r in rounds] == [e for e in (1, 2, 3, 4) for _ in range(5)]
    assert sum(r["rows"] for r in rounds) == 4 * 40000
    ll_single, ll_two = _logloss(single, uneven / "va.ffm"), _logloss(two, uneven / "va.ffm")
    assert ll_two <= ll_single * 1.005, (ll_single, ll_two)


# ---------------------------------------------------------------------------
# rounds in the run log and the progress line
# ---------------------------------------------------------------------------

def test_run_log_has_a_record_per_round(synth, tmp_path):
    log = tmp_path / "run.jsonl"
    ok(invoke("train", "-q", "--scheduler", "local:2", "-t", "2", "--rows-per-round", "4000", "--no-cache",
              synth / "tr.ffm", "-p", synth / "va.ffm", "-o", tmp_path / "m.fm", "--log-json", log))
    records = [json.loads(line) for line in log.read_text().splitlines()]
    events = [r["event"] for r in records]
    rounds = [r for r in records if r["event"] == "round"]
    assert len(rounds) == 2 * 3                  # 12000 rows in rounds of 4000, two epochs
    # each epoch's rounds come before its "epoch" record
    assert events.index("epoch") > events.index("round")
    assert [r["epoch"] for r in rounds] == [1, 1, 1, 2, 2, 2]
    assert [r["round"] for r in rounds] == sorted(r["round"] for r in rounds)
    assert len({r["run"] for r in records}) == 1
    for r in rounds:
        assert r["rows"] == 4000
        assert r["seconds"] > 0 and r["merge_seconds"] >= 0 and r["bytes_moved"] > 0
        assert len(r["workers"]) == 2 and sum(w["rows"] for w in r["workers"]) == 4000
        for w in r["workers"]:
            assert w["worker"].startswith("tcp://") and w["rows_per_s"] > 0 and w["seconds"] > 0
            assert w["rows_per_s"] == pytest.approx(w["rows"] / w["seconds"], rel=1e-6)


def test_progress_line_shows_the_last_round():
    """The progress display (on a terminal) carries the last round's
    figures on the bar's line: rounds done, each worker's rows/s, the bytes
    moved and the merge time."""
    import io

    from rich.console import Console

    from fmcli.cli import _render

    record = {"epoch": 1, "round": 7, "rows": 4000, "seconds": 0.05, "merge_seconds": 0.0123,
              "bytes_moved": 3 * 2**20 + 2**19,
              "workers": [{"worker": "tcp://a:1", "rows": 2000, "seconds": 0.02, "rows_per_s": 100000.0},
                          {"worker": "tcp://b:1", "rows": 2000, "seconds": 0.025, "rows_per_s": 80000.0}]}
    line = _render.round_line(record)
    assert line == "round 7: 2 workers 100,000 80,000 rows/s, 3.5 MiB moved, merge 0.012 s"
    many = {**record, "workers": [{"worker": str(i), "rows": 1, "seconds": 1.0, "rows_per_s": 1000.0 * (i + 1)}
                                  for i in range(8)]}
    assert _render.round_line(many) == "round 7: 8 workers 1,000-8,000 rows/s, 3.5 MiB moved, merge 0.012 s"
    out = io.StringIO()
    bar = _render.EpochProgress(console=Console(file=out, force_terminal=True, width=200))
    bar.round(record)
    bar(1, 4000, 12000)
    bar._progress.refresh()
    bar.close()
    assert line in out.getvalue()
    quiet = _render.EpochProgress(quiet=True)
    quiet.round(record)                      # nothing shown, nothing raised
    assert quiet._progress is None


# ---------------------------------------------------------------------------
# the estimators
# ---------------------------------------------------------------------------

def test_estimator_fits_on_a_cluster_as_in_one_process(uneven):
    pytest.importorskip("sklearn")
    from sklearn.base import clone

    from fmcli.data.text import read_text
    from fmcli.estimators import FFMClassifier

    batch, _ = read_text(uneven / "tr.ffm")
    va, _ = read_text(uneven / "va.ffm")

    def csr(b):
        import scipy.sparse as sp

        n = int(max(batch.features.max(), va.features.max())) + 1
        return sp.csr_matrix((b.values if b.values.shape[0] else np.ones(len(b.features), np.float32),
                              b.features, b.indptr), shape=(b.n_rows, n))

    fields = np.zeros(int(max(batch.features.max(), va.features.max())) + 1, np.int64)
    for b in (batch, va):
        fields[b.features] = b.fields
    X, y = csr(batch), (batch.labels > 0).astype(int)
    params = dict(k=4, epochs=4, random_state=3, shuffle=False, fields=fields)
    single = FFMClassifier(**params).fit(X, y)
    est = FFMClassifier(scheduler="local:2", rows_per_round=8000, scheduler_timeout=60.0, **params)
    assert est.get_params()["scheduler"] == "local:2" and est.get_params()["rows_per_round"] == 8000
    twin = clone(est)
    mine, its = est.get_params(), twin.get_params()
    np.testing.assert_array_equal(mine.pop("fields"), its.pop("fields"))
    assert mine == its
    twin.set_params(scheduler=None, rows_per_round=0)
    assert twin.scheduler is None and est.scheduler == "local:2"
    est.fit(X, y)
    assert est.model_.meta["training"]["device"] == "dask (2 workers)"
    Xv, yv = csr(va), (va.labels > 0).astype(int)
    from sklearn.metrics import log_loss

    ll_single = log_loss(yv, single.predict_proba(Xv)[:, 1])
    ll_two = log_loss(yv, est.predict_proba(Xv)[:, 1])
    assert ll_two <= ll_single * 1.005, (ll_single, ll_two)
    # set_params back to one process: the single-process fit, bit for bit
    np.testing.assert_array_equal(twin.fit(X, y).predict_proba(Xv), single.predict_proba(Xv))


def test_model_of_a_cluster_run_loads_as_an_estimator_that_fits_here(synth, tmp_path):
    pytest.importorskip("sklearn")
    from fmcli.estimators import load

    out = tmp_path / "m.fm"
    ok(invoke("train", "-q", "--scheduler", "local:2", "--rows-per-round", "4000", "-t", "1", "--no-cache",
              synth / "tr.ffm", "-o", out))
    est = load(out)
    params = est.get_params()
    assert params["scheduler"] is None and params["rows_per_round"] == 0 and params["scheduler_file"] is None
