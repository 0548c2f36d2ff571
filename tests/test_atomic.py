"""Tests for fmcli.atomic: atomic replacement of output files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from fmcli.atomic import _current_umask, atomic_output, check_writable
from fmcli.errors import OutputError


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_creates_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with atomic_output(target) as f:
        f.write(b"\x00\x01payload")
    assert target.read_bytes() == b"\x00\x01payload"
    assert _leftovers(tmp_path) == []


def test_temp_file_lives_next_to_target_until_commit(tmp_path: Path) -> None:
    target = tmp_path / "model.fm"
    target.write_bytes(b"old")
    with atomic_output(target) as f:
        f.write(b"new")
        temps = _leftovers(tmp_path)
        assert len(temps) == 1 and temps[0].startswith(".model.fm.")
        assert target.read_bytes() == b"old"
    assert target.read_bytes() == b"new"
    assert _leftovers(tmp_path) == []


def test_accepts_relative_path_in_current_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with atomic_output("plain.txt", "w") as f:
        f.write("x\n")
    assert (tmp_path / "plain.txt").read_text() == "x\n"


@pytest.mark.parametrize("exc_type", [RuntimeError, KeyboardInterrupt])
def test_exception_keeps_old_file_and_removes_temp(tmp_path: Path, exc_type: type[BaseException]) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"precious")
    with pytest.raises(exc_type):
        with atomic_output(target) as f:
            f.write(b"half written")
            raise exc_type("boom")
    assert target.read_bytes() == b"precious"
    assert _leftovers(tmp_path) == []


def test_exception_without_existing_target_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        with atomic_output(tmp_path / "new.bin") as f:
            f.write(b"x")
            raise ValueError("nope")
    assert list(tmp_path.iterdir()) == []


def test_replacing_preserves_permissions(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    os.chmod(target, 0o640)
    with atomic_output(target) as f:
        f.write(b"new")
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o640
    assert target.read_bytes() == b"new"


def test_new_file_gets_umask_permissions(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        assert _current_umask() == 0o027
        with atomic_output(tmp_path / "new.bin") as f:
            f.write(b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "new.bin").st_mode) == 0o640
    assert _current_umask() == old


def test_missing_directory_raises_output_error(tmp_path: Path) -> None:
    target = tmp_path / "no" / "such" / "dir" / "out.bin"
    with pytest.raises(OutputError, match=r"cannot create output .*out\.bin"):
        with atomic_output(target) as f:
            f.write(b"x")
    assert not (tmp_path / "no").exists()


def test_target_is_directory_raises_output_error_and_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "sub"
    target.mkdir()
    (target / "keep").write_text("k")
    with pytest.raises(OutputError):
        with atomic_output(target) as f:
            f.write(b"x")
    assert (target / "keep").read_text() == "k"
    assert _leftovers(tmp_path) == []


def test_text_mode_writes_utf8_with_unix_newlines(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    with atomic_output(target, "w") as f:
        f.write("héllo\nwörld\n")
    assert target.read_bytes() == "héllo\nwörld\n".encode("utf-8")


def test_caller_closing_file_is_tolerated(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with atomic_output(target) as f:
        f.write(b"abc")
        f.close()
    assert target.read_bytes() == b"abc"


def test_unsupported_mode_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        with atomic_output(tmp_path / "x", "a"):
            pass
    assert list(tmp_path.iterdir()) == []


def test_check_writable_accepts_writable_directory(tmp_path: Path) -> None:
    check_writable(tmp_path / "model.fm")


def test_check_writable_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="does not exist"):
        check_writable(tmp_path / "missing" / "model.fm")


def test_check_writable_parent_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="not a directory"):
        check_writable(tmp_path / "file" / "model.fm")


def test_check_writable_target_is_directory(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="is a directory"):
        check_writable(tmp_path)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can write anywhere")
def test_check_writable_read_only_directory(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o555)
    try:
        with pytest.raises(OutputError, match="not writable"):
            check_writable(ro / "model.fm")
        with pytest.raises(OutputError, match="cannot create output"):
            with atomic_output(ro / "model.fm") as f:
                f.write(b"x")
    finally:
        os.chmod(ro, 0o755)


def test_devices_are_written_in_place_not_replaced(tmp_path):
    """-o /dev/null must not rename a temporary file onto the device."""
    import stat as _stat

    from fmcli.atomic import atomic_output, output_lock

    before = os.stat("/dev/null")
    with output_lock("/dev/null"):
        with atomic_output("/dev/null", "w") as f:
            f.write("scores\n")
    after = os.stat("/dev/null")
    assert _stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    import threading

    got = []
    reader = threading.Thread(target=lambda: got.append(open(fifo, "rb").read()))
    reader.start()
    with atomic_output(fifo) as f:
        f.write(b"abc")
    reader.join(5)
    assert got == [b"abc"] and _stat.S_ISFIFO(os.stat(fifo).st_mode)
