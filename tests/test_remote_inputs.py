"""Inputs named by URL, read through fsspec (fmcli.data.remote): the same
rows and models as the same files named by path, globs, compression,
Parquet, the cache's fingerprint, and one-line errors."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fmcli import Config
from fmcli.data.dataset import load_dataset
from fmcli.data.source import expand_inputs, reads_once
from fmcli.errors import EX_CONFIG, EX_NOINPUT, EX_UNAVAILABLE, ExtraMissingError, InputNotFoundError
from fmcli.train import train

from clirun import invoke, ok
from synthdata import write_synth

fsspec = pytest.importorskip("fsspec")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def memfs():
    """fsspec's in-memory file system, emptied afterwards."""
    fs = fsspec.filesystem("memory")
    yield fs
    for path in fs.find("/"):
        fs.rm(path)


def _put(fs, url: str, data: bytes) -> str:
    with fs.open(url, "wb") as f:
        f.write(data)
    return url


def _same_params(a, b) -> None:
    for k in a.params:
        assert np.asarray(a.params[k]).tobytes() == np.asarray(b.params[k]).tobytes(), k


def test_a_url_trains_the_model_its_path_trains(tmp_path, memfs):
    lines = write_synth(tmp_path, 3000, 4, 5)
    local = tmp_path / "tr.ffm"
    local.write_text("".join(lines))
    url = _put(memfs, "memory://bucket/tr.ffm", local.read_bytes())
    cfg = dict(model="ffm", epochs=2, seed=1, threads=1, cache=False)
    _same_params(train(Config(**cfg), str(local)), train(Config(**cfg), url))


def test_url_globs_compression_and_order(tmp_path, memfs):
    lines = write_synth(tmp_path, 3000, 4, 5)
    parts = [lines[:1000], lines[1000:2200], lines[2200:]]
    for i, part in enumerate(parts):
        data = "".join(part).encode()
        _put(memfs, f"memory://bucket/day/part-{i}.ffm" + (".gz" if i == 1 else ""),
             gzip.compress(data) if i == 1 else data)
    _put(memfs, "memory://bucket/day/README", b"not data")
    urls = expand_inputs(["memory://bucket/day/part-*"])
    # (named as the file system names them: memory:///bucket/..., s3://bucket/...)
    assert [u.rsplit("/", 1)[1] for u in urls] == ["part-0.ffm", "part-1.ffm.gz", "part-2.ffm"]
    assert all(u.startswith("memory://") and "/bucket/day/" in u for u in urls)
    assert not any(reads_once(u) for u in urls)
    ds = load_dataset(urls)
    whole = ds.in_memory()
    (tmp_path / "all.ffm").write_text("".join(lines))
    ref = load_dataset(str(tmp_path / "all.ffm")).in_memory()
    assert whole.labels.tobytes() == ref.labels.tobytes()
    assert whole.features.tobytes() == ref.features.tobytes()


def test_file_urls_and_their_glob(tmp_path):
    lines = write_synth(tmp_path, 1000, 4, 5)
    for i in range(2):
        (tmp_path / f"p{i}.ffm").write_text("".join(lines[i * 500 : (i + 1) * 500]))
    urls = expand_inputs([f"file://{tmp_path}/p*.ffm"])
    assert [u.rsplit("/", 1)[1] for u in urls] == ["p0.ffm", "p1.ffm"] and all(u.startswith("file://") for u in urls)
    assert load_dataset(urls).n_rows == 1000


def test_parquet_from_a_url(tmp_path, memfs):
    lines = write_synth(tmp_path, 800, 4, 5)
    (tmp_path / "d.ffm").write_text("".join(lines))
    ok(invoke("convert", tmp_path / "d.ffm", "-o", tmp_path / "d.parquet"))
    url = _put(memfs, "memory://bucket/d.parquet", (tmp_path / "d.parquet").read_bytes())
    got, ref = load_dataset(url).in_memory(), load_dataset(str(tmp_path / "d.parquet")).in_memory()
    assert got.n_rows == 800 and got.features.tobytes() == ref.features.tobytes()


def test_the_cache_knows_a_url_by_its_content(tmp_path, memfs):
    lines = write_synth(tmp_path, 1000, 4, 5)
    url = _put(memfs, "memory://bucket/tr.ffm", "".join(lines).encode())
    cache = str(tmp_path / "cache")
    first = load_dataset(url, cache_dir=cache)
    assert first.cached_from == "built"
    first.close()
    again = load_dataset(url, cache_dir=cache)
    assert again.cached_from == "hit" and again.n_rows == 1000
    again.close()
    _put(memfs, url, "".join(lines[:900]).encode())     # new content under the same URL
    changed = load_dataset(url, cache_dir=cache)
    assert changed.cached_from == "built" and changed.n_rows == 900
    changed.close()


def test_predict_reads_a_url(tmp_path, memfs):
    lines = write_synth(tmp_path, 1000, 4, 5)
    (tmp_path / "d.ffm").write_text("".join(lines))
    url = _put(memfs, "memory://bucket/d.ffm", (tmp_path / "d.ffm").read_bytes())
    ok(invoke("train", "--epochs", "1", "-s", "1", "--no-cache", "-q", "-o", tmp_path / "m.fm", url))
    ok(invoke("predict", "-q", tmp_path / "m.fm", url, "-o", tmp_path / "a.txt"))
    ok(invoke("predict", "-q", tmp_path / "m.fm", tmp_path / "d.ffm", "-o", tmp_path / "b.txt"))
    assert (tmp_path / "a.txt").read_bytes() == (tmp_path / "b.txt").read_bytes()


@pytest.mark.parametrize("spec, status, message", [
    ("memory://bucket/none.ffm", EX_NOINPUT, "memory://bucket/none.ffm: no such file"),
    ("memory://bucket/none-*.ffm", EX_NOINPUT, "memory://bucket/none-*.ffm: no file matches"),
    ("memory://bucket", EX_NOINPUT, "is a directory"),
    ("nosuchprotocol://x/y.ffm", EX_CONFIG, "nosuchprotocol://x/y.ffm: "),
])
def test_a_bad_url_is_one_line(tmp_path, memfs, spec, status, message):
    _put(memfs, "memory://bucket/a.ffm", b"1 0:1:1\n")
    r = invoke("train", "-q", "-o", tmp_path / "m.fm", spec)
    assert r.exit_code == status, (r.exit_code, r.stderr)
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "m.fm").exists()


def test_without_fsspec_a_url_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "fsspec", None)      # import fsspec -> ImportError
    with pytest.raises(ExtraMissingError, match=r"s3://b/x\.ffm: reading a URL needs fsspec"):
        expand_inputs(["s3://b/x.ffm"])


def test_a_protocol_without_its_package_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gcsfs", None)       # as if gcsfs were not installed
    r = invoke("train", "-q", "-o", tmp_path / "m.fm", "gs://bucket/x.ffm")
    assert r.exit_code == EX_UNAVAILABLE, (r.exit_code, r.stderr)
    assert r.stderr.startswith("fm: error: gs://bucket/x.ffm: ") and "gcsfs" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_any_failure_of_the_file_system_is_one_line(tmp_path, memfs, monkeypatch):
    def refused(self, path, *args, **kwargs):
        raise RuntimeError("connection refused\nsecond line")     # a protocol's own exception type

    _put(memfs, "memory://bucket/a.ffm", b"1 0:1:1\n")
    monkeypatch.setattr(type(memfs), "exists", refused)
    r = invoke("train", "-q", "-o", tmp_path / "m.fm", "memory://bucket/a.ffm")
    assert r.exit_code == EX_NOINPUT, (r.exit_code, r.stderr)
    assert r.stderr.strip() == "fm: error: memory://bucket/a.ffm: cannot read: connection refused"


def test_a_missing_url_is_input_not_found(memfs):
    with pytest.raises(InputNotFoundError):
        expand_inputs(["memory://nowhere/x.ffm"])


def test_paths_never_import_fsspec(tmp_path):
    path = tmp_path / "d.ffm"
    path.write_text("1 0:1:1 1:2:1\n0 0:3:1 1:4:1\n")
    code = ("import sys\n"
            "from fmcli.data.dataset import load_dataset\n"
            f"load_dataset({str(path)!r}).in_memory()\n"
            "assert 'fsspec' not in sys.modules, 'fsspec imported for a path'\n")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_an_output_url_is_refused_in_one_line(tmp_path):
    (tmp_path / "d.ffm").write_text("1 0:1:1 1:2:1\n0 0:3:1 1:4:1\n")
    r = invoke("train", "-q", "--no-cache", "-o", "s3://bucket/m.fm", tmp_path / "d.ffm", cwd=tmp_path)
    assert r.exit_code == 73, (r.exit_code, r.stderr)
    assert r.stderr.strip() == ("fm: error: cannot create output s3://bucket/m.fm: outputs are local files, "
                                "not URLs (only inputs are read through fsspec)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.ffm"]
