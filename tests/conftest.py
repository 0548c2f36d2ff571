import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import pytest


@pytest.fixture(scope="session", autouse=True)
def _private_cache_dir(tmp_path_factory):
    """Training writes its binary cache under a temporary directory, not ~/.cache."""
    saved = os.environ.get("FMCLI_CACHE_DIR")
    os.environ["FMCLI_CACHE_DIR"] = str(tmp_path_factory.mktemp("fmcache"))
    yield
    if saved is None:
        os.environ.pop("FMCLI_CACHE_DIR", None)
    else:
        os.environ["FMCLI_CACHE_DIR"] = saved


@pytest.fixture(scope="session")
def cuda():
    """The CuPy backend of a CUDA device (fmcli.gpu.device); the test is
    skipped where CuPy or a device is missing (tests marked gpu run on the
    device machine through make gpu-check)."""
    cupy = pytest.importorskip("cupy")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no driver
        pytest.skip(f"no CUDA device ({exc})")
    if count < 1:
        pytest.skip("no CUDA device")
    from fmcli.gpu.device import CupyBackend

    return CupyBackend()
