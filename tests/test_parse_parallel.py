"""Text parsed in parallel threads (TextReader.workers > 1) gives what one
thread gives: the same batches, bad rows, line numbers, errors and format,
on clean and hostile inputs, with blocks small enough that every case falls
across many of them."""

from __future__ import annotations

import numpy as np
import pytest

from fmcli.data import dataset as D
from fmcli.data.text import ReadLimits, TextReader
from fmcli.errors import DataError

BOM = b"\xef\xbb\xbf"


def _rows(rng, n, fmt="libffm", labels=("0", "1"), weight=False):
    out = []
    for _ in range(n):
        lab = labels[int(rng.integers(len(labels)))]
        if weight and rng.random() < 0.3:
            lab += f":{rng.integers(1, 5)}.5"
        k = int(rng.integers(0, 6))
        if fmt == "libffm":
            toks = [f"{f}:{rng.integers(0, 300)}:{rng.choice(['1', '0.5', '2e-1'])}" for f in range(k)]
        else:
            toks = [f"{rng.integers(0, 300)}:{rng.choice(['1', '0.5'])}" for _ in range(k)]
        out.append(" ".join([lab] + toks))
    return out


def _case(name: str, rng) -> tuple[bytes, dict]:
    """(file bytes, reader options) of one hostile input."""
    rows = _rows(rng, 400)
    if name == "clean":
        return ("\n".join(rows) + "\n").encode(), {}
    if name == "no_final_newline_bom":
        return BOM + "\n".join(rows).encode(), {}
    if name == "bad_tokens_skipped":
        for i in (3, 97, 98, 250, 399):
            rows[i] = rows[i] + " 1:x:1"
        return ("\n".join(rows) + "\n").encode(), {"max_bad_rows": 5}
    if name == "bad_tokens_too_many":
        for i in (40, 170, 171, 300):
            rows[i] = "1 0:-3:1"
        return ("\n".join(rows) + "\n").encode(), {"max_bad_rows": 2}
    if name == "first_bad_row_fails":
        rows[211] = "1 0:5"          # libffm wants field:feature:value
        return ("\n".join(rows) + "\n").encode(), {}
    if name == "mixed_negatives_across_blocks":
        rows = _rows(rng, 200, labels=("0", "1")) + _rows(rng, 200, labels=("-1", "1"))
        return ("\n".join(rows) + "\n").encode(), {"max_bad_rows": 1000}
    if name == "mixed_negatives_fail":
        rows = _rows(rng, 200, labels=("-1", "+1")) + _rows(rng, 200, labels=("0", "1"))
        return ("\n".join(rows) + "\n").encode(), {}
    if name == "long_lines":
        long = "1 " + " ".join(f"0:{i}:1" for i in range(200))
        for i in (5, 6, 180, 399):
            rows[i] = long
        return ("\n".join(rows) + "\n").encode(), {"max_bad_rows": 10, "max_line_bytes": 300}
    if name == "long_line_fails":
        rows[150] = "1 " + " ".join(f"0:{i}:1" for i in range(300))
        return ("\n".join(rows) + "\n").encode(), {"max_line_bytes": 400}
    if name == "weights_cr_blank":
        rows = _rows(rng, 400, weight=True)
        rows[20] = ""
        rows[60] = "1 0:1:1\r0:2:1"
        return ("\n".join(rows) + "\n").encode(), {"max_bad_rows": 3}
    if name == "feature_limit":
        rows[333] = "1 0:999999:1"
        return ("\n".join(rows) + "\n").encode(), {"max_bad_rows": 1, "max_feature_id": 1000}
    if name == "sniffed_libsvm_after_label_only_rows":
        rows = ["1"] * 150 + ["0 x"] + _rows(rng, 300, fmt="libsvm")
        return ("\n".join(rows) + "\n").encode(), {"max_bad_rows": 2}
    if name == "regression_labels":
        rows = _rows(rng, 400, labels=("0.25", "-3", "1e2", "7"))
        return ("\n".join(rows) + "\n").encode(), {"label_mode": "real"}
    raise AssertionError(name)


CASES = ["clean", "no_final_newline_bom", "bad_tokens_skipped", "bad_tokens_too_many", "first_bad_row_fails",
         "mixed_negatives_across_blocks", "mixed_negatives_fail", "long_lines", "long_line_fails",
         "weights_cr_blank", "feature_limit", "sniffed_libsvm_after_label_only_rows", "regression_labels"]


def _read(path, workers: int, block_bytes: int, opts: dict):
    opts = dict(opts)
    label_mode = opts.pop("label_mode", "binary")
    limits = ReadLimits(**{k: opts[k] for k in ("max_bad_rows", "max_line_bytes", "max_feature_id") if k in opts})
    reader = TextReader(path, label_mode=label_mode, block_bytes=block_bytes, limits=limits, track_lines=True)
    reader.workers = workers
    batches, error = [], None
    try:
        for b in reader:
            batches.append(b)
    except DataError as exc:
        error = (str(exc), exc.line)
    return reader, batches, error


def _same(a, b):
    (ra, ba, ea), (rb, bb, eb) = a, b
    assert ea == eb
    assert [(str(x), x.line) for x in ra.bad_rows] == [(str(x), x.line) for x in rb.bad_rows]
    assert (ra.fmt, ra._negative) == (rb.fmt, rb._negative)
    if ea is None:
        assert ra.lines == rb.lines and ra.bytes_read == rb.bytes_read
    assert len(ba) == len(bb)
    for x, y in zip(ba, bb):
        for name in ("labels", "indptr", "fields", "features", "values", "lines"):
            np.testing.assert_array_equal(getattr(x, name), getattr(y, name), err_msg=name)
        assert (x.weights is None) == (y.weights is None)
        if x.weights is not None:
            np.testing.assert_array_equal(x.weights, y.weights)


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("block_bytes", [96, 1000])
def test_parallel_parsing_reads_what_one_thread_reads(tmp_path, name, block_bytes):
    rng = np.random.default_rng(CASES.index(name))
    text, opts = _case(name, rng)
    path = tmp_path / "in.ffm"
    path.write_bytes(text)
    one = _read(path, 1, block_bytes, opts)
    assert len(one[1]) > 1 or one[2] is not None      # many blocks (or an early error)
    for workers in (2, 3):
        _same(one, _read(path, workers, block_bytes, opts))


def test_blocks_denser_than_the_ones_before_grow_their_columns_alike(tmp_path):
    # sparse-token rows first, so that a later dense block outgrows the
    # room its estimate gives it and its columns grow while it is parsed
    rng = np.random.default_rng(7)
    sparse = [f"1 0:{rng.integers(10**8, 10**9)}:0.123456789" for _ in range(20000)]
    dense = [" ".join(["0"] + [f"{f % 10}:{f % 7}:1" for f in range(40)]) for _ in range(20000)]
    path = tmp_path / "in.ffm"
    path.write_text("\n".join(sparse + dense) + "\n")
    one = _read(path, 1, 1 << 19, {})
    assert one[2] is None and len(one[1]) > 4
    _same(one, _read(path, 2, 1 << 19, {}))


def test_a_consumer_that_stops_early_stops_the_parallel_reader(tmp_path):
    path = tmp_path / "in.ffm"
    path.write_text("\n".join(_rows(np.random.default_rng(1), 3000)) + "\n")
    reader = TextReader(path, block_bytes=512)
    reader.workers = 3
    it = iter(reader)
    first = next(it)
    it.close()
    assert first.n_rows > 0


def test_data_sets_are_parsed_by_every_cpu_alike(tmp_path, monkeypatch):
    """load_dataset reads text with PARSE_WORKERS threads: the data set, its
    chunks and its digest are those of one thread."""
    rng = np.random.default_rng(3)
    path = tmp_path / "tr.ffm"
    path.write_text("\n".join(_rows(rng, 5000)) + "\n")
    monkeypatch.setattr(D, "TEXT_BLOCK_BYTES", 4096)
    got = {}
    for workers in (1, 3):
        monkeypatch.setattr(D, "PARSE_WORKERS", workers)
        ds = D.load_dataset(str(path), cache_dir=None)
        got[workers] = (ds.digest, ds.chunk_rows, ds.in_memory())
    assert got[1][0] == got[3][0] and got[1][1] == got[3][1]
    for name in ("labels", "indptr", "fields", "features", "values"):
        np.testing.assert_array_equal(getattr(got[1][2], name), getattr(got[3][2], name))
