"""Tests for fmcli.modelfile: the fm-model(5) container."""

from __future__ import annotations

import json
import os
import platform
import struct
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model_loading import load_every_way

from fmcli import modelfile
from fmcli.errors import InputNotFoundError, ModelFormatError
from fmcli.modelfile import (
    ALIGNMENT,
    FORMAT_MAJOR,
    FORMAT_MINOR,
    MAGIC,
    TRAILER_MAGIC,
    read_header,
    read_model_file,
    write_model_file,
)

HEADER = {
    "fmcli_version": "0.1.0",
    "model": {"kind": "ffm", "task": "binary", "k": 2, "n_features": 3, "n_fields": 2},
    "hyperparameters": {"eta": 0.1, "lambda": 2e-5, "tiny": 5e-324, "third": 1 / 3},
    "note": "héllo ✓",
}


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "bias": np.array([0.25], dtype=np.float32),
        "linear": rng.standard_normal(3).astype(np.float32),
        "factors": rng.standard_normal((3, 2, 2)).astype(np.float32),
        "counts": np.arange(5, dtype=np.int64),
    }


@pytest.fixture(scope="module")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The bytes of a small but complete model file."""
    path = tmp_path_factory.mktemp("small") / "small.fm"
    arrays = {"bias": np.array([1.5], np.float32), "linear": np.arange(3, dtype=np.float32)}
    write_model_file(path, {"model": {"kind": "fm", "k": 1}}, arrays)
    return path.read_bytes()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A reusable file path (module scoped so hypothesis can use it)."""
    return tmp_path_factory.mktemp("scratch") / "model.fm"


def _expect_format_error(path: Path, **kwargs: Any) -> ModelFormatError:
    with pytest.raises(ModelFormatError) as info:
        read_model_file(path, **kwargs)
    return info.value


def _build(
    header: Any = None,
    data: bytes = b"",
    *,
    raw_header: bytes | None = None,
    major: int = 1,
    minor: int = 0,
    flags: int = 0,
    header_len: int | None = None,
) -> bytes:
    """Craft a model file by hand, with a valid trailer and checksum.

    The header is padded with spaces to 200 bytes so the data starts at 256.
    """
    blob = raw_header if raw_header is not None else json.dumps(header).encode()
    blob = blob.ljust(200, b" ")
    hlen = len(blob) if header_len is None else header_len
    body = struct.pack("<8sHHIQ", MAGIC, major, minor, flags, hlen) + blob
    body += bytes(-len(body) % ALIGNMENT) + data
    return body + struct.pack("<8sQII", TRAILER_MAGIC, len(body), zlib.crc32(body), 0)


def _entry(name: str = "a", dtype: str = "float32", shape: Any = (4,), offset: int = 256,
           nbytes: int | None = None) -> dict[str, Any]:
    if nbytes is None:
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return {"name": name, "dtype": dtype, "shape": list(shape), "offset": offset, "nbytes": nbytes}


# --------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "m.fm"
    arrays = _arrays()
    write_model_file(path, HEADER, arrays)
    header, got = read_model_file(path)
    assert list(got) == list(arrays)
    for name, array in arrays.items():
        assert got[name].dtype == array.dtype
        assert got[name].shape == array.shape
        np.testing.assert_array_equal(got[name], array)
        assert got[name].flags.writeable and got[name].flags.c_contiguous
    assert header["format"] == "1.3"
    for key, value in HEADER.items():
        assert header[key] == value
    assert [a["name"] for a in header["arrays"]] == list(arrays)
    assert read_header(path) == header


@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "int64", "uint8"])
@pytest.mark.parametrize("shape", [(1,), (0,), (0, 5), (7,), (3, 4), (2, 3, 5), ()])
def test_round_trip_dtypes_and_shapes(tmp_path: Path, dtype: str, shape: tuple[int, ...]) -> None:
    path = tmp_path / "m.fm"
    array = (np.arange(int(np.prod(shape))) % 200).astype(dtype).reshape(shape)
    write_model_file(path, {}, {"x": array, "tail": np.array([1.0])})
    header, got = read_model_file(path)
    assert got["x"].dtype == np.dtype(dtype) and got["x"].shape == shape
    np.testing.assert_array_equal(got["x"], array)
    entry = header["arrays"][0]
    assert entry["dtype"] == dtype and entry["shape"] == list(shape)
    assert entry["nbytes"] == array.nbytes


def test_no_arrays(tmp_path: Path) -> None:
    path = tmp_path / "m.fm"
    write_model_file(path, {"a": 1}, {})
    header, arrays = read_model_file(path, mmap=True)
    assert arrays == {} and header["a"] == 1 and header["arrays"] == []


def test_big_endian_and_non_contiguous_inputs_are_normalised(tmp_path: Path) -> None:
    path = tmp_path / "m.fm"
    big = np.arange(12, dtype=">f8").reshape(3, 4)
    strided = np.arange(40, dtype=np.int32).reshape(4, 10)[:, ::3]
    fortran = np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3))
    write_model_file(path, {}, {"big": big, "strided": strided, "fortran": fortran})
    header, got = read_model_file(path)
    assert header["arrays"][0]["dtype"] == "float64"
    assert got["big"].dtype == np.dtype("<f8")
    np.testing.assert_array_equal(got["big"], big)
    np.testing.assert_array_equal(got["strided"], strided)
    np.testing.assert_array_equal(got["fortran"], fortran)


def test_large_array_is_written_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(modelfile, "_CHUNK", 1000)
    path = tmp_path / "m.fm"
    array = np.arange(3000, dtype=">i4").reshape(300, 10)
    write_model_file(path, {}, {"a": array})
    np.testing.assert_array_equal(read_model_file(path)[1]["a"], array)
    np.testing.assert_array_equal(read_model_file(path, mmap=True)[1]["a"], array)


def test_mmap_returns_equal_read_only_arrays(tmp_path: Path) -> None:
    path = tmp_path / "m.fm"
    arrays = _arrays()
    write_model_file(path, HEADER, arrays)
    header, got = read_model_file(path, mmap=True)
    assert header == read_header(path)
    for name, array in arrays.items():
        np.testing.assert_array_equal(got[name], array)
        assert not got[name].flags.writeable
        with pytest.raises(ValueError):
            got[name][...] = 0


def test_offsets_are_aligned_and_after_header(tmp_path: Path) -> None:
    path = tmp_path / "m.fm"
    write_model_file(path, HEADER, _arrays())
    data = path.read_bytes()
    assert data[:8] == MAGIC
    major, minor, flags, header_len = struct.unpack_from("<HHIQ", data, 8)
    assert (major, minor, flags) == (FORMAT_MAJOR, FORMAT_MINOR, 0)
    header_end = 24 + header_len
    entries = read_header(path)["arrays"]
    assert entries[0]["offset"] == -(-header_end // ALIGNMENT) * ALIGNMENT
    assert set(data[header_end:entries[0]["offset"]]) <= {0}
    for entry in entries:
        assert entry["offset"] % ALIGNMENT == 0
        assert entry["offset"] >= header_end
    magic, payload_end, crc, zero = struct.unpack_from("<8sQII", data, len(data) - 24)
    assert magic == TRAILER_MAGIC and payload_end == len(data) - 24 and zero == 0
    assert crc == zlib.crc32(data[:payload_end])


def test_header_is_compact_utf8_json_in_caller_order(tmp_path: Path) -> None:
    path = tmp_path / "m.fm"
    write_model_file(path, {"z": 1, "a": "é"}, {})
    data = path.read_bytes()
    (header_len,) = struct.unpack_from("<Q", data, 16)
    text = data[24 : 24 + header_len].decode("utf-8")
    assert text.startswith('{"format":"1.3","z":1,"a":"é","arrays":[]')


def test_numpy_scalars_in_header(tmp_path: Path) -> None:
    path = tmp_path / "m.fm"
    write_model_file(path, {"eta": np.float32(0.5), "n": np.int64(3)}, {})
    header = read_header(path)
    assert header["eta"] == 0.5 and header["n"] == 3


@pytest.mark.parametrize(
    "header",
    [{"x": float("nan")}, {"x": [float("inf")]}, {"arrays": []}, {"format": "2.0"}],
)
def test_writer_rejects_bad_headers(tmp_path: Path, header: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        write_model_file(tmp_path / "m.fm", header, {})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("dtype", ["uint16", "bool", "complex64", "object", "int16", "uint32"])
def test_writer_rejects_unsupported_dtypes(tmp_path: Path, dtype: str) -> None:
    with pytest.raises(ValueError, match="unsupported dtype"):
        write_model_file(tmp_path / "m.fm", {}, {"x": np.zeros(3, dtype=dtype)})
    assert list(tmp_path.iterdir()) == []


def test_failing_write_keeps_existing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "m.fm"
    write_model_file(path, HEADER, _arrays())
    before = path.read_bytes()

    def exploding(array: np.ndarray, dtype: np.dtype) -> Iterator[np.ndarray]:
        yield np.zeros(8, np.uint8)
        raise KeyboardInterrupt

    monkeypatch.setattr(modelfile, "_array_chunks", exploding)
    with pytest.raises(KeyboardInterrupt):
        write_model_file(path, {"other": True}, {"a": np.zeros(100, np.float32)})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.fm"]


# --------------------------------------------------------------------------
# Rejection of corrupt, foreign and hostile files
# --------------------------------------------------------------------------


def test_truncation_at_every_offset_is_rejected(small_model: bytes, scratch: Path) -> None:
    for size in range(len(small_model)):
        scratch.write_bytes(small_model[:size])
        with pytest.raises(ModelFormatError):
            read_model_file(scratch)
        with pytest.raises(ModelFormatError):
            read_header(scratch)


def test_every_single_bit_flip_is_detected(small_model: bytes, scratch: Path) -> None:
    scratch.write_bytes(small_model)
    fd = os.open(scratch, os.O_RDWR)
    try:
        for offset, byte in enumerate(small_model):
            for bit in range(8):
                os.pwrite(fd, bytes([byte ^ (1 << bit)]), offset)
                with pytest.raises(ModelFormatError):
                    read_model_file(scratch)
                # Without the checksum a flip may go unnoticed, but it must
                # never cause anything other than ModelFormatError.
                for reader in (read_header, lambda p: read_model_file(p, verify=False, mmap=True)):
                    try:
                        reader(scratch)
                    except ModelFormatError:
                        pass
            os.pwrite(fd, bytes([byte]), offset)
    finally:
        os.close(fd)
    read_model_file(scratch)  # restored intact


def test_checksum_mismatch_message(small_model: bytes, scratch: Path) -> None:
    corrupt = bytearray(small_model)
    corrupt[-25] ^= 0x01  # last payload byte (array data)
    scratch.write_bytes(bytes(corrupt))
    err = _expect_format_error(scratch)
    assert "checksum mismatch" in str(err) and "corrupt" in str(err)
    assert str(scratch) in str(err)
    _expect_format_error(scratch, mmap=True)
    read_model_file(scratch, verify=False)  # structure is still fine


def test_hostile_huge_shape_is_refused_cheaply(scratch: Path) -> None:
    scratch.write_bytes(_build({"arrays": [_entry(shape=(2**40, 4))]}, bytes(64)))
    err = _expect_format_error(scratch)
    assert "beyond the payload end" in str(err)
    with pytest.raises(ModelFormatError):
        read_header(scratch)


def test_header_len_2_pow_63_is_refused(scratch: Path) -> None:
    scratch.write_bytes(_build({"arrays": []}, header_len=2**63))
    assert "header length" in str(_expect_format_error(scratch))


@pytest.mark.parametrize("header_len", [0, 16 * 1024 * 1024 + 1, 10**6])
def test_header_len_out_of_bounds(scratch: Path, header_len: int) -> None:
    scratch.write_bytes(_build({"arrays": []}, header_len=header_len))
    assert "out of bounds" in str(_expect_format_error(scratch))


def test_newer_major_version_is_refused(scratch: Path) -> None:
    scratch.write_bytes(_build({"arrays": []}, major=3, minor=0))   # 2.x: models with feature_ids
    msg = str(_expect_format_error(scratch))
    assert "model format 3.0 is newer than this fmcli supports (<= 2.x); upgrade fmcli" in msg


def test_major_zero_is_refused(scratch: Path) -> None:
    scratch.write_bytes(_build({"arrays": []}, major=0, minor=9))
    assert "0.9 is not supported" in str(_expect_format_error(scratch))


def test_newer_minor_version_is_accepted(scratch: Path) -> None:
    entry = {**_entry(shape=(4,)), "future_key": {"x": 1}}
    data = np.arange(4, dtype="<f4").tobytes()
    scratch.write_bytes(_build({"arrays": [entry], "new_thing": [1, 2]}, data, minor=7, flags=0x10))
    header, arrays = read_model_file(scratch)
    assert header["new_thing"] == [1, 2]
    np.testing.assert_array_equal(arrays["a"], np.arange(4, dtype=np.float32))


def test_reserved_flags_in_1_0_are_refused(scratch: Path) -> None:
    scratch.write_bytes(_build({"arrays": []}, flags=1))
    assert "flags" in str(_expect_format_error(scratch))


def test_hand_built_file_is_readable(scratch: Path) -> None:
    data = np.arange(4, dtype="<f4").tobytes() + bytes(48) + np.arange(3, dtype="<i8").tobytes()
    header = {"arrays": [_entry(shape=(4,)), _entry("b", "int64", (3,), offset=256 + 64)]}
    scratch.write_bytes(_build(header, data))
    _, arrays = read_model_file(scratch, mmap=True)
    np.testing.assert_array_equal(arrays["b"], [0, 1, 2])


BAD_TABLES: list[tuple[str, Any, str]] = [
    ("not a list", {"arrays": {"a": 1}}, "not a list"),
    ("missing", {"model": {}}, "not a list"),
    ("entry not object", {"arrays": [3]}, "not an object"),
    ("no name", {"arrays": [{**_entry(), "name": ""}]}, "name"),
    ("duplicate name", {"arrays": [_entry(), _entry(offset=320)]}, "twice"),
    ("unknown dtype", {"arrays": [{**_entry(), "dtype": "bfloat16"}]}, "unknown dtype"),
    ("dtype not string", {"arrays": [{**_entry(), "dtype": 4}]}, "unknown dtype"),
    ("negative dim", {"arrays": [_entry(shape=(-1,), nbytes=0)]}, "negative or non-integer"),
    ("float dim", {"arrays": [{**_entry(), "shape": [4.0]}]}, "negative or non-integer"),
    ("bool dim", {"arrays": [{**_entry(), "shape": [True]}]}, "negative or non-integer"),
    ("shape not list", {"arrays": [{**_entry(), "shape": 4}]}, "shape"),
    ("too many dims", {"arrays": [_entry(shape=(1,) * 40)]}, "at most"),
    ("nbytes mismatch", {"arrays": [_entry(nbytes=15)]}, "does not match"),
    ("nbytes overflow", {"arrays": [_entry(shape=(2**62, 2**62), nbytes=2**64)]}, "does not match"),
    ("nbytes not int", {"arrays": [{**_entry(), "nbytes": "16"}]}, "nbytes"),
    ("offset not int", {"arrays": [{**_entry(), "offset": 256.0}]}, "offset"),
    ("negative offset", {"arrays": [_entry(offset=-64)]}, "offset"),
    ("unaligned", {"arrays": [_entry(offset=260)]}, "not a multiple of 64"),
    ("inside header", {"arrays": [_entry(offset=64)]}, "inside the header"),
    ("overlap", {"arrays": [_entry(shape=(32,)), _entry("b", offset=320)]}, "overlaps"),
    ("decreasing", {"arrays": [_entry(offset=320), _entry("b", offset=256)]}, "overlaps"),
    ("beyond end", {"arrays": [_entry(shape=(1000,))]}, "beyond the payload end"),
    ("beyond end offset", {"arrays": [_entry(offset=256 + 64 * 100)]}, "beyond the payload end"),
]


@pytest.mark.parametrize(("header", "match"), [(h, m) for _, h, m in BAD_TABLES],
                         ids=[i for i, _, _ in BAD_TABLES])
def test_bad_array_tables_are_refused(scratch: Path, header: Any, match: str) -> None:
    scratch.write_bytes(_build(header, bytes(192)))
    assert match in str(_expect_format_error(scratch))
    with pytest.raises(ModelFormatError, match=match):
        read_header(scratch)


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b'{"arrays": [], "arrays": []}', "duplicate key"),
        (b'{"arrays": [], "x": NaN}', "not valid"),
        (b'[{"arrays": []}]', "not a JSON object"),
        (b'"text"', "not a JSON object"),
        (b'{"arrays": [], "x": "\xff"}', "not valid UTF-8 JSON"),
        (b'{"arrays": [] ', "not valid"),
        (b"[" * 100_000, "not valid"),
    ],
    ids=["duplicate-key", "nan", "list", "string", "bad-utf8", "unterminated", "deep-nesting"],
)
def test_bad_header_json_is_refused(tmp_path: Path, raw: bytes, match: str) -> None:
    path = tmp_path / "m.fm"
    path.write_bytes(_build(raw_header=raw))
    assert match in str(_expect_format_error(path))


def test_bad_trailer_magic(small_model: bytes, scratch: Path) -> None:
    scratch.write_bytes(small_model[:-24] + b"XXXXXXXX" + small_model[-16:])
    assert "bad trailer magic" in str(_expect_format_error(scratch))


def test_trailing_garbage_is_refused(small_model: bytes, scratch: Path) -> None:
    scratch.write_bytes(small_model + bytes(64))
    _expect_format_error(scratch)


def test_payload_end_mismatch(small_model: bytes, scratch: Path) -> None:
    data = bytearray(small_model)
    struct.pack_into("<Q", data, len(data) - 16, len(data) - 88)
    scratch.write_bytes(bytes(data))
    assert "payload end" in str(_expect_format_error(scratch))


def test_reserved_trailer_field(small_model: bytes, scratch: Path) -> None:
    scratch.write_bytes(small_model[:-4] + b"\x01\x00\x00\x00")
    assert "reserved trailer" in str(_expect_format_error(scratch))


def test_empty_file(scratch: Path) -> None:
    scratch.write_bytes(b"")
    assert "empty" in str(_expect_format_error(scratch))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputNotFoundError, match="no such"):
        read_model_file(tmp_path / "nope.fm")
    with pytest.raises(InputNotFoundError):
        read_header(tmp_path / "nope.fm")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(InputNotFoundError, match="directory"):
        read_model_file(tmp_path)


def test_zip_file_renamed(tmp_path: Path) -> None:
    path = tmp_path / "model.fm"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("weights.npy", b"\x00" * 100)
    err = _expect_format_error(path)
    assert "not an fmcli model file (bad magic)" in str(err)


@pytest.mark.parametrize(
    "content",
    [
        b"solver_version 0\nn 10\nm 2\nk 4\nnormalization 1\nw0 0.1 0.2\n",  # libffm text model
        b"\x0a\x00\x00\x00\x02\x00\x00\x00\x04\x00\x00\x00\x01\x00\x00\x00" * 4,  # raw binary
        b"0.5\n0.25\n",
        b"\x89PNG\r\n\x1a\n" + bytes(64),
    ],
)
def test_foreign_files_have_bad_magic(scratch: Path, content: bytes) -> None:
    scratch.write_bytes(content)
    assert "not an fmcli model file (bad magic)" in str(_expect_format_error(scratch))


def test_text_mode_mangling_is_diagnosed(small_model: bytes, scratch: Path) -> None:
    scratch.write_bytes(small_model.replace(b"\r\n", b"\n"))
    assert "text-mode" in str(_expect_format_error(scratch))


def test_short_file_with_magic(scratch: Path) -> None:
    scratch.write_bytes(MAGIC + b"\x01\x00")
    assert "truncated" in str(_expect_format_error(scratch))


def _never_anything_but_format_error(path: Path, content: bytes) -> None:
    path.write_bytes(content)
    load_every_way(path)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.binary(max_size=512))
def test_random_bytes(scratch: Path, content: bytes) -> None:
    scratch.write_bytes(content)
    with pytest.raises(ModelFormatError):
        read_model_file(scratch)
    with pytest.raises(ModelFormatError):
        read_header(scratch)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    major=st.integers(0, 3),
    minor=st.integers(0, 3),
    header_len=st.one_of(st.integers(0, 600), st.integers(0, 2**64 - 1)),
    tail=st.binary(max_size=600),
)
def test_random_bytes_after_valid_magic(scratch: Path, major: int, minor: int, header_len: int,
                                        tail: bytes) -> None:
    content = struct.pack("<8sHHIQ", MAGIC, major, minor, 0, header_len) + tail
    _never_anything_but_format_error(scratch, content)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_splices_of_a_valid_file(small_model: bytes, scratch: Path, data: st.DataObject) -> None:
    start = data.draw(st.integers(0, len(small_model)))
    stop = data.draw(st.integers(start, len(small_model)))
    insert = data.draw(st.binary(max_size=64))
    content = small_model[:start] + insert + small_model[stop:]
    _never_anything_but_format_error(scratch, content)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    entries=st.lists(
        st.fixed_dictionaries(
            {
                "name": st.one_of(st.text(max_size=3), st.integers()),
                "dtype": st.sampled_from(["float32", "float64", "int32", "int64", "uint8", "f4", 1]),
                "shape": st.one_of(
                    st.lists(st.integers(-2, 2**40), max_size=3),
                    st.lists(st.integers(0, 8), max_size=2),
                    st.integers(),
                ),
                "offset": st.one_of(st.integers(-64, 1024), st.sampled_from([256, 320, 384])),
                "nbytes": st.integers(-1, 2**50),
            }
        ),
        max_size=3,
    )
)
def test_random_array_tables_with_valid_checksum(scratch: Path, entries: list[dict[str, Any]]) -> None:
    content = _build({"arrays": entries}, bytes(256))
    _never_anything_but_format_error(scratch, content)


def test_crc32_is_zlibs_for_every_length_offset_and_start():
    # model files carry zlib's CRC-32; fmcli computes it by carry-less
    # folding where the CPU can (crc32.h), else byte by byte: both must give
    # zlib's value for every length (the folds take 64 bytes, then 16, and
    # the rest goes byte by byte), alignment and running value
    from fmcli._core import _parse

    rng = np.random.default_rng(11)
    data = rng.integers(0, 256, (1 << 16) + 64, dtype=np.uint8).tobytes()
    lengths = list(range(0, 200)) + [255, 256, 257, 1023, 1024, 4096 + 15, 65536]
    for n in lengths:
        for offset in (0, 1, 7, 13):
            piece = data[offset : offset + n]
            for value in (0, 1, 0xFFFFFFFF, 0x2B5A1C3D):
                want = zlib.crc32(piece, value)
                assert _parse.crc32(piece, value) == want, (n, offset, value)
                assert _parse.crc32(piece, value, fold=False) == want, (n, offset, value)
    # a running value over pieces, as the model file's reader keeps it
    crc = 0
    for a, b in ((0, 5), (5, 100), (100, 4000), (4000, 65536)):
        crc = _parse.crc32(memoryview(data)[a:b], crc)
    assert crc == zlib.crc32(data[:65536])
    # on an x86-64 CPU with carry-less multiplies (CI's), the folding path is
    # the one compared above, not only the byte loop
    flags = ""
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    if platform.machine() in ("x86_64", "AMD64") and {"pclmulqdq", "sse4_1"} <= set(flags.split()):
        assert _parse.crc32_folds()
