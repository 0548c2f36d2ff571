"""Inputs named by URL (``s3://bucket/day_*.gz``, ``gs://...``,
``https://...``, ``file:///data/x.ffm``), read through fsspec.

A spec is a URL when it starts with a scheme and ``://``.  Everything
else in fmcli treats it as it treats a path: globs are expanded by the
file system's own glob (sorted), the reader opens it as a seekable binary
file (compressed data is recognised the same way), Parquet is read from
it, and the cache fingerprints it by what the file system says of it (its
size, and its modification time, ETag or checksum where the protocol gives
one) and the hash of its first and last bytes, as for a local file.

fsspec is imported only when an input is a URL: it comes with the
``[dask]`` extra (Dask reads through it too), and each protocol needs its
own package besides (s3fs for s3://, gcsfs for gs://, ...).  A URL that
cannot be read is one line: a missing package is an ExtraMissingError
(exit 69), a protocol fsspec does not know a ConfigError (exit 78), and a
missing file, or any other failure of the file system (unreachable,
refused), an InputNotFoundError (exit 66).
"""

from __future__ import annotations

import hashlib
import re

from ..errors import ConfigError, ExtraMissingError, FMError, InputNotFoundError

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_GLOB_CHARS = set("*?[")
# what a file system's info() may say that changes when the content does
_VERSION_KEYS = ("mtime", "LastModified", "last_modified", "updated", "ETag", "etag", "md5Hash",
                 "crc32c", "generation", "version_id", "VersionId", "created")


def is_url(spec) -> bool:
    """Whether an input spec is a URL (scheme://...)."""
    return isinstance(spec, str) and bool(_URL.match(spec))


def _fs(url: str):
    """(file system, path in it) of a URL; a missing package is one line."""
    try:
        import fsspec
    except ImportError:
        raise ExtraMissingError(f"{url}: reading a URL needs fsspec (pip install 'fm-ctr[dask]', "
                                "or pip install fsspec)") from None
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as exc:      # the protocol's package (s3fs, gcsfs, ...)
        raise ExtraMissingError(f"{url}: {_first_line(exc)}") from None
    except ValueError as exc:       # a protocol fsspec does not know
        raise ConfigError(f"{url}: {_first_line(exc)}") from None
    except Exception as exc:        # the protocol's own failure (a library it loads, a connection)
        raise InputNotFoundError(f"{url}: cannot read: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def _failed(url: str, exc: Exception) -> FMError:
    """The one-line error of a file system call on `url` that raised `exc`
    (each protocol raises its own exception types)."""
    if isinstance(exc, FMError):
        return exc
    if isinstance(exc, FileNotFoundError):
        return InputNotFoundError(f"{url}: no such file")
    if isinstance(exc, IsADirectoryError):
        return InputNotFoundError(f"{url}: is a directory, expected a data file")
    return InputNotFoundError(f"{url}: cannot read: {_first_line(exc)}")


def _named(fs, path: str) -> str:
    return fs.unstrip_protocol(path)


def expand(spec: str) -> list[str]:
    """The URLs a spec names: itself, or its glob's matches in sorted
    order (named as the file system names them).  A missing file, a glob
    that matches nothing and a directory raise InputNotFoundError."""
    fs, path = _fs(spec)
    try:
        globbed = bool(_GLOB_CHARS.intersection(path)) and not fs.exists(path)
        matches = sorted(fs.glob(path)) if globbed else [path]
        if not matches:
            raise InputNotFoundError(f"{spec}: no file matches")
        out = []
        for p in matches:
            if fs.isdir(p):
                raise InputNotFoundError(f"{_named(fs, p) if globbed else spec}: is a directory, "
                                         "expected a data file")
            if not fs.exists(p):
                raise InputNotFoundError(f"{spec}: no such file")
            out.append(_named(fs, p) if globbed else spec)
        return out
    except Exception as exc:
        raise _failed(spec, exc) from None


def open_url(url: str):
    """A seekable binary file of a URL's bytes (as stored: the caller
    recognises compression)."""
    fs, path = _fs(url)
    try:
        return fs.open(path, "rb")
    except Exception as exc:
        raise _failed(url, exc) from None


def fingerprint(url: str, sample: int, check: str) -> dict:
    """What identifies a URL's content (fmcli.data.cache.fingerprint): its
    size and whatever version fields the file system reports, and a hash of
    its first and last `sample` bytes ("content": of every byte too)."""
    fs, path = _fs(url)
    h = hashlib.sha256()
    whole = hashlib.sha256() if check == "content" else None
    try:
        info = fs.info(path)
        n = int(info.get("size") or 0)
        with fs.open(path, "rb") as f:
            if whole is not None:
                for block in iter(lambda: f.read(1 << 20), b""):
                    whole.update(block)
                f.seek(0)
            h.update(f.read(sample))
            if n > sample:
                f.seek(max(sample, n - sample))
                h.update(f.read(sample))
    except Exception as exc:
        raise _failed(url, exc) from None
    out = {"path": url, "size": n, "sha256_head_tail": h.hexdigest(),
           "version": {k: str(info[k]) for k in _VERSION_KEYS if k in info}}
    if whole is not None:
        out["sha256"] = whole.hexdigest()
    return out
