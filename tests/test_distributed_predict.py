"""fm predict --scheduler: each input file scored as one Dask task, the
outputs written in input order -- concatenated, byte for byte the output of
the single-process fm predict, or one file per input (--output-dir) -- and
the errors of the single-process command (a bad row, stdin, name clashes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from clirun import invoke, ok
from synthdata import write_synth

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def cluster():
    """A LocalCluster of 2 worker processes, 1 thread each (started once)."""
    c = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    client = distributed.Client(c, set_as_default=False)
    client.wait_for_workers(2, timeout=60)
    yield c.scheduler_address
    client.close()
    c.close()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A model trained on 3000 rows (m.fm) and three inputs of uneven sizes
    (a.ffm, b.ffm, c.ffm) in one directory."""
    d = tmp_path_factory.mktemp("scoring")
    lines = write_synth(d, 5000, 7, 4)
    (d / "train.ffm").write_text("".join(lines[:3000]))
    (d / "a.ffm").write_text("".join(lines[3000:3900]))
    (d / "b.ffm").write_text("".join(lines[3900:4000]))
    (d / "c.ffm").write_text("".join(lines[4000:]))
    ok(invoke("train", "-q", "--no-cache", "-t", "2", d / "train.ffm", "-o", d / "m.fm"))
    return d


INPUTS = ("a.ffm", "b.ffm", "c.ffm")


def _single(data: Path, *names: str) -> str:
    """The single-process fm predict's output over `names`."""
    return ok(invoke("predict", "-q", data / "m.fm", *(data / n for n in names))).stdout


def test_concatenated_output_is_the_single_process_output(cluster, data, tmp_path):
    expected = _single(data, *INPUTS)
    assert len(expected.splitlines()) == 2000
    r = ok(invoke("predict", "-q", "--scheduler", cluster, data / "m.fm", *(data / n for n in INPUTS)))
    assert r.stdout == expected
    # input order, not the order the tasks end in, and a glob as the shell would not expand it
    ok(invoke("predict", "-q", "--scheduler", cluster, data / "m.fm", data / "c.ffm", data / "[ab].ffm",
              "-o", tmp_path / "out.txt"))
    assert (tmp_path / "out.txt").read_text() == _single(data, "c.ffm", "a.ffm", "b.ffm")


def test_urls_are_scored_by_the_workers(cluster, data, tmp_path):
    """Each worker opens its file's URL itself (fsspec), a glob of URLs as well."""
    pytest.importorskip("fsspec")
    r = ok(invoke("predict", "-q", "--scheduler", cluster, data / "m.fm", f"file://{data}/c.ffm",
                  f"file://{data}/[ab].ffm"))
    assert r.stdout == _single(data, "c.ffm", "a.ffm", "b.ffm")
    out = tmp_path / "scores"
    ok(invoke("predict", "-q", "--scheduler", cluster, "--output-dir", out, data / "m.fm", f"file://{data}/a.ffm"))
    assert (out / "a.ffm.txt").read_text() == _single(data, "a.ffm")


def test_output_dir_writes_one_file_per_input(cluster, data, tmp_path):
    out = tmp_path / "scores"
    ok(invoke("predict", "-q", "--scheduler", cluster, "--output-dir", out, data / "m.fm",
              *(data / n for n in INPUTS)))
    assert sorted(p.name for p in out.iterdir()) == [f"{n}.txt" for n in INPUTS]
    for n in INPUTS:
        assert (out / f"{n}.txt").read_text() == _single(data, n), n


def test_output_dir_without_a_scheduler_scores_here(data, tmp_path):
    out = tmp_path / "scores"
    ok(invoke("predict", "-q", "--output-dir", out, data / "m.fm", data / "b.ffm", data / "a.ffm"))
    for n in ("a.ffm", "b.ffm"):
        assert (out / f"{n}.txt").read_text() == _single(data, n), n


def test_a_bad_file_fails_as_in_one_process(cluster, data, tmp_path):
    bad = tmp_path / "bad.ffm"
    lines = (data / "b.ffm").read_text().splitlines(keepends=True)
    bad.write_text("".join(lines[:40]) + "1 this is not libffm\n" + "".join(lines[40:]))
    args = (data / "m.fm", data / "a.ffm", bad, data / "c.ffm")
    single = invoke("predict", "-q", *args, "-o", tmp_path / "one.txt")
    assert single.exit_code not in (0, 1), single.stderr
    r = invoke("predict", "-q", "--scheduler", cluster, *args, "-o", tmp_path / "many.txt")
    assert r.exit_code == single.exit_code, (r.exit_code, r.stderr)
    assert r.stderr.strip().splitlines() == single.stderr.strip().splitlines()
    assert len(r.stderr.strip().splitlines()) == 1 and f"{bad}:41" in r.stderr, r.stderr
    # nothing written: the output is replaced only when every input was scored
    assert not (tmp_path / "many.txt").exists()


def test_stdin_and_name_clashes_are_refused(cluster, data, tmp_path):
    r = invoke("predict", "-q", "--scheduler", cluster, data / "m.fm", "-", input="0 0:1:1\n")
    assert r.exit_code != 0 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and "stdin" in r.stderr, r.stderr
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.ffm").write_text((data / "a.ffm").read_text())
    r = invoke("predict", "-q", "--scheduler", cluster, "--output-dir", tmp_path / "o", data / "m.fm",
               data / "a.ffm", tmp_path / "sub" / "a.ffm")
    assert r.exit_code == 2, (r.exit_code, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1 and "a.ffm.txt" in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()
    r = invoke("predict", "-q", "--output-dir", tmp_path / "o", "-o", tmp_path / "x", data / "m.fm",
               data / "a.ffm")
    assert r.exit_code == 2, (r.exit_code, r.stderr)


def test_local_cluster_through_the_option(data, tmp_path):
    ok(invoke("predict", "-q", "--scheduler", "local:2", data / "m.fm", *(data / n for n in INPUTS),
              "-o", tmp_path / "out.txt"))
    assert (tmp_path / "out.txt").read_text() == _single(data, *INPUTS)


def test_unreachable_scheduler_is_one_line(data):
    r = invoke("predict", "-q", "--scheduler", "tcp://127.0.0.1:9", "--scheduler-timeout", "2",
               data / "m.fm", data / "a.ffm")
    assert r.exit_code == 69, (r.exit_code, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1 and r.stdout == "", r.stderr


@pytest.mark.parametrize("given", [("--min-workers", "2"), ("--scheduler", "local:2", "--min-workers", "3")])
def test_min_workers_without_a_cluster_of_that_many_is_refused(data, tmp_path, given):
    r = invoke("predict", "-q", *given, data / "m.fm", data / "a.ffm", "-o", tmp_path / "p.txt")
    assert r.exit_code == 78, (r.exit_code, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1 and "--min-workers" in r.stderr, r.stderr
    assert not (tmp_path / "p.txt").exists()
