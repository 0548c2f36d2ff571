"""Backward compatibility of model format 1.0.

The files in tests/fixtures/ were written once by tests/fixtures/make_fixtures.py
and are frozen: every later fmcli must load them and predict the probabilities
recorded next to them.  Never regenerate them to make this test pass.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from fmcli.model import load_model
from fmcli.modelfile import MAGIC, read_header, read_model_file
from fmcli.predict import predict

FIXTURES = Path(__file__).parent / "fixtures"
ROWS = 40
N_FEATURES = 6256

# name: (valid40 file, kind, k, n_fields, use_bias, use_linear, arrays in the file)
# (libsvm input has one field, 0.)
CASES = {
    "ffm": ("valid40.ffm", "ffm", 2, 8, True, True, ["bias", "linear", "factors"]),
    "ffm-libffm": ("valid40.ffm", "ffm", 3, 8, False, False, ["factors"]),
    "fm": ("valid40.svm", "fm", 4, 1, True, True,
           ["bias", "linear", "factors", "bias_state", "linear_state", "factors_state"]),
    "lr": ("valid40.svm", "lr", 4, 1, True, True, ["bias", "linear", "bias_state", "linear_state"]),
}


def _expected(name: str) -> np.ndarray:
    lines = (FIXTURES / f"v1-{name}.expected.txt").read_text().splitlines()
    assert len(lines) == ROWS
    return np.array([float(x) for x in lines])


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("mmap", [True, False])
def test_frozen_model_predicts_recorded_probabilities(name: str, mmap: bool) -> None:
    valid, *_ = CASES[name]
    model = load_model(FIXTURES / f"v1-{name}.fm", mmap=mmap)
    probs = predict(model, FIXTURES / valid)
    assert probs.shape == (ROWS,)
    np.testing.assert_allclose(probs, _expected(name), rtol=1e-6, atol=0)


@pytest.mark.parametrize("name", sorted(CASES))
def test_frozen_model_header(name: str) -> None:
    _, kind, k, n_fields, use_bias, use_linear, arrays = CASES[name]
    path = FIXTURES / f"v1-{name}.fm"
    raw = path.read_bytes()
    assert raw[:8] == MAGIC
    assert struct.unpack_from("<HHI", raw, 8) == (1, 0, 0)  # major, minor, flags

    header = read_header(path)
    assert header["format"] == "1.0"
    assert header["model"] == {
        "kind": kind,
        "task": "binary",
        "k": k,
        "n_features": N_FEATURES,
        "n_fields": n_fields,
        "use_bias": use_bias,
        "use_linear": use_linear,
        "normalize": True,
    }
    assert [a["name"] for a in header["arrays"]] == arrays
    assert header["created_at"] == "1970-01-01T00:00:00+00:00"  # SOURCE_DATE_EPOCH=0

    model = load_model(path)
    assert model.spec.kind == kind and model.spec.k == k
    assert set(model.params) == {a for a in arrays if not a.endswith("_state")}
    assert set(model.state) == {a[: -len("_state")] for a in arrays if a.endswith("_state")}
    if "factors" in model.params:
        shape = (N_FEATURES, n_fields, k) if kind == "ffm" else (N_FEATURES, k)
        assert model.params["factors"].shape == shape


@pytest.mark.parametrize("name", sorted(CASES))
def test_frozen_model_checksum_and_arrays(name: str) -> None:
    path = FIXTURES / f"v1-{name}.fm"
    assert path.stat().st_size < 600 * 1024
    _, arrays = read_model_file(path)  # verifies the CRC-32
    _, mapped = read_model_file(path, mmap=True)
    assert list(arrays) == list(mapped)
    for key, array in arrays.items():
        assert array.dtype == np.float32
        assert np.isfinite(array).all()
        np.testing.assert_array_equal(array, mapped[key])


def test_valid40_files_hold_the_same_rows() -> None:
    ffm = (FIXTURES / "valid40.ffm").read_text().splitlines()
    svm = (FIXTURES / "valid40.svm").read_text().splitlines()
    assert len(ffm) == len(svm) == ROWS
    for a, b in zip(ffm, svm):
        label, *tokens = a.split()
        assert b.split() == [label] + [t.split(":", 1)[1] for t in tokens]


# Later formats (make_fixtures.py v1.4): name -> (format, kind, pair array and its shape)
LATER = {
    "v1.3-fwfm": ("1.3", "fwfm", "field_weights", (8, 8)),
    "v1.4-fmfm": ("1.4", "fmfm", "field_matrices", (8, 8, 2, 2)),
}


@pytest.mark.parametrize("name", sorted(LATER))
def test_frozen_later_formats_load_and_predict(name: str) -> None:
    version, kind, pair_array, shape = LATER[name]
    path = FIXTURES / f"{name}.fm"
    major, minor = (int(x) for x in version.split("."))
    assert struct.unpack_from("<HHI", path.read_bytes(), 8) == (major, minor, 0)
    assert read_header(path)["format"] == version
    model = load_model(path)
    assert model.spec.kind == kind and model.params[pair_array].shape == shape
    assert set(model.state) == set(model.params)       # written with the optimizer state
    expected = np.array([float(x) for x in (FIXTURES / f"{name}.expected.txt").read_text().split()])
    np.testing.assert_allclose(predict(model, FIXTURES / "valid40.ffm"), expected, rtol=1e-6, atol=0)
    if kind == "fmfm":
        m = model.params[pair_array]
        np.testing.assert_array_equal(m, np.swapaxes(m, 0, 1).swapaxes(2, 3))   # M[b, a] = M[a, b]^T
