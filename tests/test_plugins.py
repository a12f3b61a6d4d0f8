"""Plugin discovery: entry points through pluggy, isolation, conflicts, refusals."""

from __future__ import annotations

import textwrap
import warnings

import pluggy
import pytest
import torch

import higher_core
from higher_core import _plugins
from higher_core.errors import (
    MissingOptimizerPluginError,
    PluginConflictError,
    PluginLoadError,
    PluginLoadWarning,
    SubclassResolutionWarning,
    UnsupportedOptimizerError,
)


@pytest.fixture
def host(monkeypatch):
    """A fresh plugin host in place of the process-wide one (entry points re-read)."""
    for variable in (_plugins.ONLY_ENV, _plugins.DISABLE_ENV, _plugins.STRICT_ENV):
        monkeypatch.delenv(variable, raising=False)
    fresh = _plugins.PluginHost()
    monkeypatch.setattr(_plugins, "_HOST", fresh)
    return fresh


def uninstall(monkeypatch, *distributions):
    """Hide the entry points of ``distributions`` from the host, as if they were not installed."""
    real = _plugins.importlib_metadata.entry_points

    def entry_points(**kwargs):
        return [ep for ep in real(**kwargs) if ep.dist is None or ep.dist.metadata["Name"] not in distributions]

    monkeypatch.setattr(_plugins.importlib_metadata, "entry_points", entry_points)


class CustomOpt(torch.optim.SGD):
    """A third-party optimizer type for these tests."""


def _fake_distribution(root, dist, module, body, entry_name=None):
    """Write ``module.py`` and a ``dist.dist-info`` whose entry point names it, under ``root``."""
    (root / f"{module}.py").write_text(textwrap.dedent(body))
    info = root / f"{dist.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(
        f"[higher_core.plugins]\n{entry_name or module} = {module}\n"
    )


GOOD_PLUGIN = """
    import torch
    from higher_core import hookimpl
    from higher_core.optim import DifferentiableOptimizer
    import test_plugins_support as support

    class DifferentiableCustom(DifferentiableOptimizer):
        def update(self, group, params, grads, states):
            return [p - group["lr"] * g for p, g in zip(params, grads)], states

    @hookimpl
    def higher_core_optimizers():
        return {support.CustomOpt: DifferentiableCustom}
"""


@pytest.fixture
def support_module(monkeypatch):
    """Expose CustomOpt under an importable name for the fake plugins."""
    import sys
    import types

    module = types.ModuleType("test_plugins_support")
    module.CustomOpt = CustomOpt
    monkeypatch.setitem(sys.modules, "test_plugins_support", module)
    return module


def test_installed_plugins_are_found_through_entry_points(host):
    sources = {r.distribution for r in host.records()}
    assert {"higher-sgd", "higher-adam"} <= sources
    assert higher_core.optim.DifferentiableAdam.__module__.startswith("higher_adam")
    assert higher_core.optim.DifferentiableSGD.__module__.startswith("higher_sgd")


def test_fake_installed_distribution_is_discovered(host, tmp_path, monkeypatch, support_module):
    _fake_distribution(tmp_path, "higher-custom", "higher_custom_fake", GOOD_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    opt = CustomOpt([torch.zeros(2, requires_grad=True)], lr=0.5)
    diffopt = higher_core.get_diff_optim(opt, opt.param_groups[0]["params"])
    assert type(diffopt).__name__ == "DifferentiableCustom"
    record = next(r for r in host.records() if r.distribution == "higher-custom")
    assert record.version == "1.2.3" and record.entry_point == "higher_custom_fake = higher_custom_fake"


def test_broken_plugin_is_isolated(host, tmp_path, monkeypatch, support_module):
    _fake_distribution(tmp_path, "higher-broken", "higher_broken_fake", "raise ImportError('no lion here')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.warns(PluginLoadWarning, match=r"higher-broken 1\.2\.3.*ImportError: no lion here"):
        table = host.table()
    assert torch.optim.Adam in table.providers and torch.optim.SGD in table.providers
    assert [f.source for f in table.failures] == ["higher-broken 1.2.3"]
    model = torch.nn.Linear(2, 1)
    with higher_core.innerloop_ctx(model, torch.optim.Adam(model.parameters())) as (fmodel, diffopt):
        diffopt.step(fmodel(torch.ones(1, 2)).sum())


def test_broken_plugin_is_an_error_in_strict_mode(host, tmp_path, monkeypatch):
    _fake_distribution(tmp_path, "higher-broken", "higher_broken_fake2", "raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("HIGHER_CORE_STRICT_PLUGINS", "1")
    with pytest.raises(PluginLoadError, match="higher-broken.*RuntimeError: boom"):
        host.table()


def test_plugin_whose_hook_raises_is_refused_at_registration(host):
    class Raising:
        @higher_core.hookimpl
        def higher_core_optimizers(self):
            raise KeyError("bad table")

    with pytest.raises(pluggy.PluginValidationError, match="runtime plugin 'raising'.*KeyError"):
        host.register(Raising(), name="raising")
    assert host.manager.get_plugin("raising") is None
    assert torch.optim.SGD in host.table().providers


def test_two_plugins_claiming_one_type_conflict(host, tmp_path, monkeypatch, support_module):
    _fake_distribution(tmp_path, "higher-custom-a", "higher_custom_a", GOOD_PLUGIN)
    _fake_distribution(tmp_path, "higher-custom-b", "higher_custom_b", GOOD_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    opt = CustomOpt([torch.zeros(2, requires_grad=True)], lr=0.5)
    with pytest.raises(PluginConflictError, match=r"higher-custom-a 1\.2\.3 and higher-custom-b 1\.2\.3"):
        higher_core.get_diff_optim(opt, opt.param_groups[0]["params"])


def test_explicit_register_optim_wins_over_plugins(host, tmp_path, monkeypatch, support_module):
    _fake_distribution(tmp_path, "higher-custom-a", "higher_custom_c", GOOD_PLUGIN)
    _fake_distribution(tmp_path, "higher-custom-b", "higher_custom_d", GOOD_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))

    class Mine(higher_core.optim.DifferentiableOptimizer):
        def update(self, group, params, grads, states):
            return params, states

    higher_core.register_optim(CustomOpt, Mine)
    try:
        opt = CustomOpt([torch.zeros(2, requires_grad=True)], lr=0.5)
        assert type(higher_core.get_diff_optim(opt, opt.param_groups[0]["params"])) is Mine
        higher_core.register_optim(torch.optim.Adam, Mine)
        model = torch.nn.Linear(2, 1)
        with higher_core.innerloop_ctx(model, torch.optim.Adam(model.parameters())) as (_, diffopt):
            assert type(diffopt) is Mine
    finally:
        higher_core.unregister_optim(CustomOpt)
        higher_core.unregister_optim(torch.optim.Adam)


def test_runtime_plugin_is_seen_by_the_next_lookup(host):
    class Plain(higher_core.optim.DifferentiableOptimizer):
        def update(self, group, params, grads, states):
            return params, states

    class Runtime:
        @higher_core.hookimpl
        def higher_core_optimizers(self):
            return [(CustomOpt, Plain)]

    opt = CustomOpt([torch.zeros(2, requires_grad=True)], lr=0.5)
    with pytest.warns(SubclassResolutionWarning):  # resolves to the SGD plugin before
        assert type(higher_core.get_diff_optim(opt, opt.param_groups[0]["params"])).__name__ == "DifferentiableSGD"
    name = higher_core.register_plugin(Runtime(), name="runtime")
    assert type(higher_core.get_diff_optim(opt, opt.param_groups[0]["params"])) is Plain
    higher_core.unregister_plugin(name)
    with pytest.warns(SubclassResolutionWarning):
        higher_core.get_diff_optim(opt, opt.param_groups[0]["params"])


def test_misspelled_hook_is_refused_at_registration(host):
    class Typo:
        @higher_core.hookimpl
        def higher_core_optimisers(self):
            return {}

    with pytest.raises(pluggy.PluginValidationError, match=r"unknown hook\(s\) 'higher_core_optimisers'"):
        higher_core.register_plugin(Typo(), name="typo")
    assert host.manager.get_plugin("typo") is None


def test_subclass_resolves_to_nearest_base_with_a_warning(host):
    class MyAdam(torch.optim.Adam):
        pass

    model = torch.nn.Linear(2, 1)
    with pytest.warns(SubclassResolutionWarning, match="MyAdam.*DifferentiableAdam.*torch.optim.Adam"):
        diffopt = higher_core.get_diff_optim(MyAdam(model.parameters()), model.parameters())
    assert type(diffopt).__name__ == "DifferentiableAdam"


def test_missing_builtin_names_the_pip_install(host, monkeypatch):
    uninstall(monkeypatch, "higher-sgd")
    model = torch.nn.Linear(2, 1)
    with pytest.raises(UnsupportedOptimizerError, match=r"torch\.optim\.SGD.*`pip install higher-sgd`"):
        higher_core.get_diff_optim(torch.optim.SGD(model.parameters(), lr=0.1), model.parameters())
    with pytest.raises(ValueError, match="pip install higher-sgd"):  # the old library raised ValueError
        with higher_core.innerloop_ctx(model, torch.optim.SGD(model.parameters(), lr=0.1)):
            pass


def test_documented_class_names_resolve_or_refuse(host, monkeypatch):
    uninstall(monkeypatch, "higher-adam")
    assert higher_core.optim.DifferentiableSGD.__name__ == "DifferentiableSGD"
    with pytest.raises(MissingOptimizerPluginError, match="`pip install higher-adam`"):
        higher_core.optim.DifferentiableAdam  # noqa: B018
    assert not hasattr(higher_core.optim, "DifferentiableAdam")
    with pytest.raises(AttributeError, match="DifferentiableNothing"):
        higher_core.optim.DifferentiableNothing  # noqa: B018


def test_disable_all_plugins(host, monkeypatch):
    monkeypatch.setenv("HIGHER_CORE_DISABLE_PLUGINS", "*")
    assert host.table().providers == {}


def test_third_party_type_refusal_suggests_register_optim(host):
    class Unknown(torch.optim.Optimizer):
        def __init__(self, params):
            super().__init__(params, {"lr": 0.1})

    p = torch.zeros(1, requires_grad=True)
    with pytest.raises(UnsupportedOptimizerError, match=r"Unknown.*higher_core\.register_optim\(Unknown"):
        higher_core.get_diff_optim(Unknown([p]), [p])


def test_sparse_adam_is_refused_with_the_reason(host):
    p = torch.zeros(3, requires_grad=True)
    with pytest.raises(UnsupportedOptimizerError, match="SparseAdam is not supported.*sparse gradients"):
        higher_core.get_diff_optim(torch.optim.SparseAdam([p]), [p])


def test_register_optim_validates_its_arguments():
    with pytest.raises(TypeError, match="subclass of torch.optim.Optimizer"):
        higher_core.register_optim(int, higher_core.optim.DifferentiableOptimizer)
    with pytest.raises(TypeError, match="DifferentiableOptimizer"):
        higher_core.register_optim(torch.optim.SGD, int)


def test_discovery_is_lazy_and_cached(host):
    assert not host._discovered
    first = host.table()
    assert host.table() is first
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert higher_core.optim.DifferentiableSGD is higher_core.optim.DifferentiableSGD
