"""What the Dask tests share: a local cluster of 2 worker processes (1
thread each), a way to lend it to runs, and byte-for-byte comparison of
two models' arrays.  Import it after pytest.importorskip("distributed")."""

from __future__ import annotations

from pathlib import Path

import distributed
import numpy as np
import pytest

from fmcli import distributed as dist

from synthdata import write_synth


def start_cluster(**kwargs):
    """A LocalCluster of 2 worker processes of 1 thread each (each under a
    nanny, which restarts it when it dies) and a client of it."""
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=":0", **kwargs)
    client = distributed.Client(cluster, set_as_default=False)
    client.wait_for_workers(2, timeout=60)
    return cluster, client


def stop_cluster(cluster, client) -> None:
    client.close()
    cluster.close()


class Kept(dist.DaskRunner):
    """A test module's cluster, lent to one run: closing the run keeps it."""

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def cluster():
    """The module's cluster's client (started once per module)."""
    c, client = start_cluster()
    yield client
    stop_cluster(c, client)


@pytest.fixture
def on_cluster(cluster, monkeypatch):
    """use(n): runs with a scheduler train on n workers of the module's cluster."""
    def use(n: int):
        monkeypatch.setattr(dist, "connect", lambda config, say: Kept(cluster, use=n))
    return use


def arrays(model) -> dict[str, np.ndarray]:
    """A model's parameter and optimizer-state arrays by name."""
    out = {f"param:{k}": np.asarray(v) for k, v in model.params.items()}
    out.update({f"state:{k}": np.asarray(v) for k, v in model.state.items()})
    return out


def same_bytes(a, b) -> None:
    """Assert that two models hold the same arrays, bit for bit."""
    x, y = arrays(a), arrays(b)
    assert sorted(x) == sorted(y)
    for name in x:
        assert x[name].tobytes() == y[name].tobytes(), name


def synth_split(tmp_path_factory, name: str, seed: int) -> Path:
    """A directory with 12000 training rows of 6 fields (tr.ffm) and 3000
    others to validate on (va.ffm), from write_synth(seed)."""
    d = tmp_path_factory.mktemp(name)
    lines = write_synth(d, 15000, seed, 6)
    (d / "va.ffm").write_text("".join(lines[:3000]))
    (d / "tr.ffm").write_text("".join(lines[3000:]))
    return d


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    return synth_split(tmp_path_factory, "synth", 5)
