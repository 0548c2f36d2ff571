"""Inputs: globs, stdin, and compressed files (gzip, bz2, zstd, lz4 frames)."""

from __future__ import annotations

import bz2
import gzip
import io
import os
import shutil
import subprocess
import sys
import types
import zlib

import numpy as np
import pytest
from click.testing import CliRunner

from fmcli.cli import cli
from fmcli.data import source
from fmcli.data.source import (
    compression_from_name,
    expand_inputs,
    open_input,
    sniff_compression,
    strip_compression_suffix,
)
from fmcli.data.text import TextReader, format_from_name
from fmcli.errors import ConfigError, DataError, InputNotFoundError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ROWS = b"".join(
    f"{i % 2} 0:{i % 7}:1 1:{(i * 13) % 101}:0.5 2:{i % 3}:{i % 5 + 1}\n".encode() for i in range(3000)
) + b"# a comment\n\n1 3:4:0.25\n"

CODECS = {"gz": "gzip", "bz2": "bz2", "zst": "zstd", "lz4": "lz4"}


def compress(data: bytes, codec: str) -> bytes:
    if codec == "gzip":
        return gzip.compress(data)
    if codec == "bz2":
        return bz2.compress(data)
    pa = pytest.importorskip("pyarrow")
    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, codec) as out:
        out.write(data)
    return sink.getvalue().to_pybytes()


def write(tmp_path, name, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def read_all(path, **kw):
    return TextReader(path, track_lines=True, **kw).read_all()


def assert_same(a, b):
    for name in ("labels", "indptr", "fields", "features", "values", "lines"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


@pytest.fixture
def fake_stdin(monkeypatch):
    def use(data: bytes):
        monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(buffer=io.BytesIO(data)))

    return use


# --------------------------------------------------------------------------
# same rows, however they are stored
# --------------------------------------------------------------------------

@pytest.mark.parametrize("ext", list(CODECS))
@pytest.mark.parametrize("block_bytes", [7, 4096, 8 << 20])
def test_compressed_files_give_the_same_batches(tmp_path, ext, block_bytes):
    plain = read_all(write(tmp_path, "d.ffm", ROWS), block_bytes=block_bytes)
    packed = write(tmp_path, f"d.ffm.{ext}", compress(ROWS, CODECS[ext]))
    reader = TextReader(packed, track_lines=True, block_bytes=block_bytes)
    batch = reader.read_all()
    assert_same(batch, plain)
    assert reader.fmt == "libffm" and reader.bytes_read == len(ROWS)
    assert plain.labels.shape[0] == 3001


@pytest.mark.parametrize("ext", list(CODECS))
def test_streaming_batches_of_compressed_files(tmp_path, ext):
    packed = write(tmp_path, f"d.{ext.upper()}", compress(ROWS, CODECS[ext]))  # suffix in any case
    plain = read_all(write(tmp_path, "d.ffm", ROWS))
    batches = list(TextReader(packed, track_lines=True, block_bytes=5000))
    assert len(batches) > 1
    np.testing.assert_array_equal(np.concatenate([b.lines for b in batches]), plain.lines)
    np.testing.assert_array_equal(np.concatenate([b.features for b in batches]), plain.features)


@pytest.mark.parametrize("codec", [None, "gzip", "bz2", "zstd", "lz4"])
def test_stdin_plain_or_compressed(tmp_path, fake_stdin, codec):
    plain = read_all(write(tmp_path, "d.ffm", ROWS))
    fake_stdin(ROWS if codec is None else compress(ROWS, codec))
    reader = TextReader("-", track_lines=True, block_bytes=1000)
    assert_same(reader.read_all(), plain)
    assert reader.name == "<stdin>"


def test_stdin_shorter_than_the_magic(fake_stdin):
    fake_stdin(b"1\n")
    batch = TextReader("-").read_all()
    assert batch.labels.tolist() == [1.0]
    fake_stdin(b"")
    assert TextReader("-").read_all().labels.shape[0] == 0


def test_stdin_is_never_closed(fake_stdin):
    fake_stdin(gzip.compress(b"1 0:1:1\n"))
    stdin = sys.stdin.buffer
    f = open_input("-")
    assert f.read() == b"1 0:1:1\n"
    f.close()
    assert not stdin.closed
    fake_stdin(b"1 0:1:1\n")
    stdin = sys.stdin.buffer
    f = open_input("-")
    assert f.read(3) == b"1 0" and f.read() == b":1:1\n"
    f.close()
    assert not stdin.closed


def test_a_compressed_file_with_a_plain_name_is_decompressed(tmp_path):
    plain = read_all(write(tmp_path, "d.ffm", ROWS))
    assert_same(read_all(write(tmp_path, "packed.ffm", gzip.compress(ROWS))), plain)
    assert_same(read_all(write(tmp_path, "packed.txt", compress(ROWS, "zstd"))), plain)


def test_plain_file_is_returned_as_is(tmp_path):
    path = write(tmp_path, "d.ffm", ROWS)
    with open_input(path) as f:
        assert isinstance(f, io.BufferedReader)
        assert f.read() == ROWS


def test_text_starting_like_bz2_is_text(tmp_path):
    # "BZh" alone is text: a class label, say
    path = write(tmp_path, "d.ffm", b"BZh9 0:1:1\nother 0:2:1\n")
    reader = TextReader(path, label_mode="class")
    reader.read_all()
    assert reader.classes == ["BZh9", "other"]


def test_concatenated_gzip_members(tmp_path):
    half = len(ROWS) // 2
    cut = ROWS.index(b"\n", half) + 1
    path = write(tmp_path, "d.ffm.gz", gzip.compress(ROWS[:cut]) + gzip.compress(ROWS[cut:]))
    assert_same(read_all(path), read_all(write(tmp_path, "d.ffm", ROWS)))


@pytest.mark.parametrize("tool, ext", [("gzip", "gz"), ("bzip2", "bz2"), ("zstd", "zst"), ("lz4", "lz4")])
def test_files_from_the_usual_command_line_tools(tmp_path, tool, ext):
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} not installed")
    plain = write(tmp_path, "d.ffm", ROWS)
    packed = tmp_path / f"d.ffm.{ext}"
    with open(plain, "rb") as src, open(packed, "wb") as dst:
        subprocess.run([tool, "-c"], stdin=src, stdout=dst, check=True)
    assert_same(read_all(packed), read_all(plain))


def test_weights_file_may_be_compressed(tmp_path):
    from fmcli.data.weights import read_weights

    path = write(tmp_path, "w.txt.gz", gzip.compress(b"1\n0.5\n2\n"))
    assert read_weights(path, 3, "d.ffm").tolist() == [1.0, 0.5, 2.0]


# --------------------------------------------------------------------------
# names
# --------------------------------------------------------------------------

def test_format_from_name_sees_through_compression():
    assert format_from_name("day_0.ffm.gz") == "libffm"
    assert format_from_name("x.svm.zst") == "libsvm"
    assert format_from_name("x.libsvm.BZ2") == "libsvm"
    assert format_from_name("x.ffm.zstd") == "libffm"
    assert format_from_name("x.ffm.lz4") == "libffm"
    assert format_from_name("x.gz") is None
    assert format_from_name("x.txt.gz") is None
    assert format_from_name("x.ffm") == "libffm"


def test_compression_names():
    assert compression_from_name("a.ffm.GZ") == "gzip"
    assert compression_from_name("a.zstd") == "zstd"
    assert compression_from_name("a.ffm") is None
    assert strip_compression_suffix("dir/day_0.ffm.gz") == "dir/day_0.ffm"
    assert strip_compression_suffix("a.ffm") == "a.ffm"
    assert sniff_compression(gzip.compress(b"x")) == "gzip"
    assert sniff_compression(bz2.compress(b"x")) == "bz2"
    assert sniff_compression(bz2.compress(b"")) == "bz2"
    assert sniff_compression(b"BZh9 0:1:1\n") is None
    assert sniff_compression(b"1 0:1:1\n") is None


def test_suffix_decides_the_libffm_format_of_compressed_files(tmp_path):
    # a label-only first block cannot be sniffed; the name says libsvm
    data = b"1\n" * 10 + b"1 3:1\n"
    path = write(tmp_path, "d.svm.gz", gzip.compress(data))
    reader = TextReader(path, block_bytes=8)
    reader.read_all()
    assert reader.fmt == "libsvm"


# --------------------------------------------------------------------------
# expanding input specs
# --------------------------------------------------------------------------

def test_globs_expand_sorted_and_duplicates_stay(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("b.ffm", "a.ffm", "c.ffm.gz", "a.svm", "d10.ffm", "d2.ffm"):
        write(tmp_path, name, b"1 0:1:1\n")
    assert expand_inputs("*.ffm") == ["a.ffm", "b.ffm", "d10.ffm", "d2.ffm"]
    assert expand_inputs(["b.ffm", "?.ffm*", "b.ffm"]) == ["b.ffm", "a.ffm", "b.ffm", "c.ffm.gz", "b.ffm"]
    assert expand_inputs(["[ab].*"]) == ["a.ffm", "a.svm", "b.ffm"]
    assert expand_inputs(tmp_path / "a.ffm") == [str(tmp_path / "a.ffm")]
    assert expand_inputs(str(tmp_path / "d*.ffm")) == [str(tmp_path / n) for n in ("d10.ffm", "d2.ffm")]


def test_a_path_with_glob_characters_that_exists_is_taken_literally(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "a[1].ffm", b"1 0:1:1\n")
    write(tmp_path, "a1.ffm", b"1 0:1:1\n")
    assert expand_inputs("a[1].ffm") == ["a[1].ffm"]
    assert expand_inputs("a[12].ffm") == ["a1.ffm"]


def test_missing_inputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "a.ffm", b"1 0:1:1\n")
    os.mkdir(tmp_path / "sub")
    with pytest.raises(InputNotFoundError, match=r"^nope\.ffm: no such file$"):
        expand_inputs(["a.ffm", "nope.ffm"])
    with pytest.raises(InputNotFoundError, match=r"^\*\.svm: no file matches$"):
        expand_inputs(["*.svm"])
    with pytest.raises(InputNotFoundError, match=r"^sub: is a directory"):
        expand_inputs(["sub"])
    with pytest.raises(InputNotFoundError, match=r"^sub: is a directory"):
        expand_inputs(["s*"])
    assert InputNotFoundError.exit_code == 66


def test_stdin_only_alone():
    assert expand_inputs("-") == ["-"]
    assert expand_inputs(["-"]) == ["-"]
    with pytest.raises(ConfigError, match="only input"):
        expand_inputs(["-", "-"])
    with pytest.raises(ConfigError, match="only input"):
        expand_inputs(["-", "a.ffm"])
    with pytest.raises(ConfigError):
        expand_inputs([])


# --------------------------------------------------------------------------
# damaged compressed data
# --------------------------------------------------------------------------

@pytest.mark.parametrize("ext", list(CODECS))
def test_bad_row_inside_a_compressed_file_names_its_line(tmp_path, ext):
    data = ROWS + b"1 0:1:1\n1 0:1:oops\n"
    path = write(tmp_path, f"d.ffm.{ext}", compress(data, CODECS[ext]))
    with pytest.raises(DataError) as info:
        TextReader(path, block_bytes=4096).read_all()
    assert str(info.value) == f"{path}:3005: expected a number as the value, found '0:1:oops'"


@pytest.mark.parametrize("ext", list(CODECS))
@pytest.mark.parametrize("keep", [0.5, 0.9, 10])
def test_truncated_compressed_file_is_a_data_error(tmp_path, ext, keep):
    packed = compress(ROWS, CODECS[ext])
    n = keep if isinstance(keep, int) else int(len(packed) * keep)
    path = write(tmp_path, f"d.ffm.{ext}", packed[:n])
    with pytest.raises(DataError) as info:
        TextReader(path).read_all()
    err = info.value
    assert err.message == f"truncated or corrupt {CODECS[ext]} data"
    assert err.path == str(path)
    assert 1 <= err.line <= ROWS.count(b"\n")
    assert "\n" not in str(err)


def test_truncation_names_the_line_reached(tmp_path):
    rows = ROWS * 200   # about 5 MB, read in several pieces and blocks
    packed = gzip.compress(rows)
    path = write(tmp_path, "d.ffm.gz", packed[: len(packed) // 2])
    reader = TextReader(path, block_bytes=1 << 20)
    with pytest.raises(DataError) as info:
        reader.read_all()
    line = info.value.line
    assert str(info.value) == f"{path}:{line}: truncated or corrupt gzip data"
    # well past the start, and no further than the data that is there
    good = zlib.decompressobj(31).decompress(packed[: len(packed) // 2])
    assert 1 < line <= good.count(b"\n") + 1
    assert reader.lines == line - 1


@pytest.mark.parametrize("ext", list(CODECS))
def test_corrupt_compressed_file_is_a_data_error(tmp_path, ext):
    packed = bytearray(compress(ROWS, CODECS[ext]))
    for i in range(len(packed) // 2, len(packed) // 2 + 8):
        packed[i] ^= 0x5A
    path = write(tmp_path, f"d.ffm.{ext}", bytes(packed))
    with pytest.raises(DataError, match=rf"^{path}:\d+: truncated or corrupt {CODECS[ext]} data$"):
        TextReader(path).read_all()


def test_truncated_stdin_is_a_data_error(fake_stdin):
    packed = compress(ROWS, "zstd")
    fake_stdin(packed[: len(packed) // 2])
    with pytest.raises(DataError, match=r"^<stdin>:\d+: truncated or corrupt zstd data$"):
        TextReader("-").read_all()


@pytest.mark.parametrize("ext, codec", [("gz", "gzip"), ("bz2", "bz2"), ("zst", "zstd"), ("lz4", "lz4")])
def test_data_that_is_not_what_the_name_says(tmp_path, ext, codec):
    path = write(tmp_path, f"d.ffm.{ext}", ROWS)
    with pytest.raises(DataError, match=rf"^{path}: not {codec} data, though the name ends in \.{ext}$"):
        TextReader(path).read_all()


def test_empty_compressed_file_is_empty(tmp_path):
    assert TextReader(write(tmp_path, "e.ffm.gz", b"")).read_all().labels.shape[0] == 0
    assert TextReader(write(tmp_path, "f.ffm.gz", gzip.compress(b""))).read_all().labels.shape[0] == 0


def test_read_error_of_compressed_bytes_is_not_called_corruption(tmp_path, monkeypatch):
    class Failing(io.BytesIO):
        def read(self, size=-1):
            if self.tell() > 100:
                raise OSError(5, "Input/output error")
            return super().read(size)

    monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(buffer=Failing(compress(ROWS * 20, "gzip"))))
    with pytest.raises(DataError, match=r"^<stdin>: read error: Input/output error$"):
        TextReader("-").read_all()


def test_missing_file_through_the_reader(tmp_path):
    with pytest.raises(InputNotFoundError, match=r"no such file$"):
        TextReader(tmp_path / "nope.ffm.gz").read_all()


# --------------------------------------------------------------------------
# pyarrow only when needed
# --------------------------------------------------------------------------

def test_plain_input_does_not_import_pyarrow(tmp_path):
    path = write(tmp_path, "d.ffm", ROWS)
    packed = write(tmp_path, "d.ffm.gz", gzip.compress(ROWS))
    code = (
        "import sys\n"
        "from fmcli.data.text import TextReader\n"
        "from fmcli.data.source import expand_inputs\n"
        f"expand_inputs([{str(path)!r}])\n"
        f"TextReader({str(path)!r}).read_all()\n"
        "assert 'pyarrow' not in sys.modules, 'pyarrow imported for plain text'\n"
        f"TextReader({str(packed)!r}).read_all()\n"
        "assert 'pyarrow' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_missing_pyarrow_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow -> ImportError
    path = write(tmp_path, "d.ffm.gz", gzip.compress(ROWS))
    with pytest.raises(ConfigError, match=r"d\.ffm\.gz: reading gzip data needs pyarrow"):
        TextReader(path).read_all()
    assert read_all(write(tmp_path, "d.ffm", ROWS)).labels.shape[0] == 3001


# --------------------------------------------------------------------------
# through the command line
# --------------------------------------------------------------------------

def run(args, cwd, input=None):
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(cli, args, input=input, catch_exceptions=False)
    finally:
        os.chdir(old)


@pytest.fixture
def trained(tmp_path):
    write(tmp_path, "tr.ffm.gz", gzip.compress(ROWS))
    result = run(["train", "-q", "-t", "2", "-o", "m.fm", "tr.ffm.gz"], tmp_path)
    assert result.exit_code == 0, result.stderr
    return tmp_path


def test_train_and_predict_on_compressed_files(trained):
    write(trained, "tr.ffm", ROWS)
    plain = run(["train", "-q", "-t", "2", "-o", "p.fm", "tr.ffm"], trained)
    assert plain.exit_code == 0, plain.stderr
    packed = run(["predict", "m.fm", "tr.ffm.gz", "-o", "a.txt"], trained)
    assert packed.exit_code == 0, packed.stderr
    again = run(["predict", "p.fm", "tr.ffm", "-o", "b.txt"], trained)
    assert again.exit_code == 0, again.stderr
    a = (trained / "a.txt").read_text().split()
    assert len(a) == 3001
    assert a == (trained / "b.txt").read_text().split()


def test_predict_reads_gzip_from_stdin(trained):
    write(trained, "tr.ffm", ROWS)
    plain = run(["predict", "m.fm", "tr.ffm"], trained)
    assert plain.exit_code == 0, plain.stderr
    piped = run(["predict", "m.fm", "-"], trained, input=gzip.compress(ROWS))
    assert piped.exit_code == 0, piped.stderr
    assert piped.stdout == plain.stdout


@pytest.mark.parametrize("ext", ["gz", "zst"])
def test_predict_on_truncated_file_exits_65(trained, ext):
    packed = compress(ROWS, CODECS[ext])
    write(trained, f"t.ffm.{ext}", packed[: len(packed) // 2])
    result = run(["predict", "m.fm", f"t.ffm.{ext}", "-o", "p.txt"], trained)
    assert result.exit_code == 65, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"fm: error: t.ffm.{ext}:")
    assert last.endswith(f": truncated or corrupt {CODECS[ext]} data")
    assert not (trained / "p.txt").exists()


def test_cli_subprocess_reads_gzip_on_stdin(trained):
    rows = b"".join(ROWS.splitlines(keepends=True)[:50])
    proc = subprocess.run(
        [sys.executable, "-m", "fmcli", "predict", "-q", "m.fm", "-"],
        cwd=trained, input=gzip.compress(rows), capture_output=True,
        env={**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")},
    )
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.split()) == 50


def test_module_exports():
    assert source.STDIN == "-"
    assert set(source.COMPRESSION_SUFFIXES.values()) == {"gzip", "bz2", "zstd", "lz4"}


# ---------------------------------------------------------------------------
# line_blocks reading into one reused buffer
# ---------------------------------------------------------------------------

def _blocks_of(f, block_bytes, reuse, max_line=0):
    """What line_blocks gives, as ([(line number, line)], the long lines it
    reported): each line numbered from its block's count of the lines
    before it.  (Blocks are copied as they come: a reused buffer is
    overwritten by the next; where the blocks end may differ.)"""
    long_lines, numbered = [], []
    for buf, cut, lines in source.line_blocks(f, "x", block_bytes, max_line,
                                              lambda line, head: long_lines.append((line, head)),
                                              reuse=reuse):
        assert isinstance(cut, int) and 0 < cut <= len(buf)
        numbered += [(lines + i + 1, line) for i, line in enumerate(bytes(buf[:cut]).split(b"\n"))
                     if i < bytes(buf[:cut]).count(b"\n") or not bytes(buf[:cut]).endswith(b"\n")]
    return numbered, long_lines


class _NoReadinto:
    """A stream that has read() only (a reader that cannot fill a buffer)."""

    def __init__(self, data: bytes):
        self._f = io.BytesIO(data)

    def read(self, size=-1):
        return self._f.read(size)


@pytest.mark.parametrize("data", [
    b"1 0:1:1\n0 1:2:1\n" * 50,
    b"\xef\xbb\xbf1 0:1:1\r\n0 1:2:1\r\n" * 30 + b"1 2:3:1",          # BOM, CRLF, no final newline
    b"1 " + b"0:1:1 " * 300 + b"\n" + b"0 1:1:1\n" * 40,             # a line longer than small blocks
    b"", b"\n", b"1",
])
@pytest.mark.parametrize("block_bytes", [1, 2, 5, 64, 1000, 1 << 20])
def test_reused_buffer_gives_the_same_blocks(data, block_bytes):
    fresh = _blocks_of(io.BytesIO(data), block_bytes, reuse=False)
    reused = _blocks_of(io.BytesIO(data), block_bytes, reuse=True)
    assert reused == fresh
    assert b"\n".join(line for _, line in reused[0]) == data.removeprefix(b"\xef\xbb\xbf").removesuffix(b"\n")
    # a stream without readinto reads as without reuse
    assert _blocks_of(_NoReadinto(data), block_bytes, reuse=True) == fresh


def test_reused_buffer_skips_long_lines_and_reads_compressed_input(tmp_path):
    data = b"1 0:1:1\n" * 30 + b"0 " + b"9" * 500 + b"\n" + b"1 0:2:1\n" * 30
    fresh = _blocks_of(io.BytesIO(data), 64, reuse=False, max_line=100)
    reused = _blocks_of(io.BytesIO(data), 64, reuse=True, max_line=100)
    assert reused == fresh and reused[1] == [(31, b"0 99999999999999999999999999999999999999")]
    path = tmp_path / "d.ffm.gz"
    path.write_bytes(gzip.compress(data * 20))
    with source.open_input(str(path)) as f:
        got, _ = _blocks_of(f, 4096, reuse=True)
    assert got == _blocks_of(io.BytesIO(data * 20), 4096, reuse=False)[0]


def test_text_reader_reads_its_blocks_into_one_buffer(tmp_path, monkeypatch):
    # TextReader reuses the buffer (each block is parsed before the next is
    # read), and its batches are its own arrays, not views of the buffer
    seen = []
    real = source.line_blocks

    def spy(*args, **kwargs):
        seen.append(kwargs.get("reuse"))
        return real(*args, **kwargs)

    monkeypatch.setattr("fmcli.data.text.line_blocks", spy)
    path = tmp_path / "d.ffm"
    path.write_bytes(b"".join(b"%d 0:%d:1 1:%d:0.5\n" % (i % 2, i, i + 1) for i in range(2000)))
    batches = list(TextReader(path, block_bytes=4096))
    assert seen == [True] and len(batches) > 5
    features = np.concatenate([b.features for b in batches])
    np.testing.assert_array_equal(features[0::2], np.arange(2000))
    np.testing.assert_array_equal(features[1::2], np.arange(1, 2001))
