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
