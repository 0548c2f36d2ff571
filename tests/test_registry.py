"""The one table of model kinds and optimizers agrees with every part that reads codes from it."""

import numpy as np
import pytest

from fmcli import registry
from fmcli._core import _kernels
from fmcli.config import MODELS, OPTIMIZERS, Config
from fmcli.errors import ConfigError
from fmcli.gpu import layout
from fmcli.model import ModelSpec
from fmcli.params import HostParams


def test_kinds_and_optimizers_have_the_compiled_cores_codes():
    assert {n: k.code for n, k in registry.KINDS.items()} == _kernels.KIND_CODES
    assert {n: o.code for n, o in registry.OPTIMIZER_TABLE.items()} == _kernels.OPT_CODES
    for name, opt in registry.OPTIMIZER_TABLE.items():
        assert opt.n_state == _kernels.n_state(name)


def test_the_gpu_lists_kinds_and_optimizers_by_code():
    assert list(layout.KINDS) == sorted(registry.KINDS, key=lambda n: registry.KINDS[n].code)
    assert list(layout.OPTIMIZERS) == list(registry.GPU_OPTIMIZERS)
    assert all(registry.optimizer(o).gpu for o in layout.OPTIMIZERS)


def test_the_configuration_offers_what_the_registry_holds():
    assert MODELS == tuple(registry.KINDS) and OPTIMIZERS == tuple(registry.OPTIMIZER_TABLE)
    assert OPTIMIZERS[0] == Config().optimizer      # the default first


@pytest.mark.parametrize("name", list(registry.KINDS))
def test_shapes_blocks_and_fields_come_from_one_entry(name):
    kind = registry.kind(name)
    n, m, k = 7, 3, 5
    spec = ModelSpec(kind=name, task="binary", k=k, n_features=n, n_fields=m, use_bias=True,
                     use_linear=True, normalize=True)
    shapes = spec.shapes()
    assert shapes.get("factors") == kind.factor_shape(n, m, k)
    assert (kind.pair_param in shapes) == bool(kind.pairs)
    if kind.pairs:
        assert shapes[kind.pair_param] == kind.pair_shape(m, k)
    assert kind.needs_fields == (name in ("ffm", "fwfm", "fmfm"))
    # the training layout: one factor block per k-vector, as many as the registry says
    cfg = Config(model=name, k=k)
    host = HostParams(cfg, n, m, np.random.default_rng(0))
    assert host.F.shape[0] == kind.blocks(n, m)
    assert sum(a.nbytes for a in host.arrays()) == HostParams.bytes_needed(cfg, n, m)
    model = host.to_model({})
    assert {name: a.shape for name, a in model.params.items()} == shapes


@pytest.mark.parametrize("change,rule,reason", [
    (dict(storage="float16", model="fm"), registry.half_storage_missing, "--model ffm"),
    (dict(hot_features=8, model="lr", threads=2), registry.hot_features_missing, "--model fm, ffm, fwfm or fmfm"),
])
def test_one_predicate_per_eligibility_rule(change, rule, reason):
    """The configuration refuses with the predicate's reasons; the core decides with it."""
    import re
    from dataclasses import asdict
    from types import SimpleNamespace

    missing = rule(SimpleNamespace(**{**asdict(Config()), **change}))
    assert missing == [reason]
    with pytest.raises(ConfigError, match=f"it needs {re.escape(reason)}$"):
        Config(**change)
    ok = Config(model="ffm", threads=2)
    assert registry.hot_features_apply(ok, 1) and not registry.hot_features_apply(ok, 3)
    assert not registry.hot_features_apply(ok.replace(optimizer="adam"), 1)
    assert registry.half_storage_missing(Config(storage="float16")) == []
