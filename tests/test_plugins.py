"""Plugin discovery: entry points through pluggy, isolation, conflicts, refusals.

The second half is table-driven: every bad plugin or setting, with the exception or warning
type and a regex the message must match (the distribution, variable or argument it names).
Plugins are fake distributions written to a temporary directory (``*.dist-info`` with an
``entry_points.txt``).
"""

from __future__ import annotations

import sys
import textwrap
import warnings
from dataclasses import dataclass, field

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
from higher_core.testing import installed_conformance


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
        def update_one(self, group, param, grad, state):
            return param - group["lr"] * grad, state

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
        def update_one(self, group, param, grad, state):
            return param, state

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
        def update_one(self, group, param, grad, state):
            return param, state

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


# -- bad plugins and settings, table-driven ---------------------------------------------

HEADER = """
    import torch
    from higher_core import hookimpl
    from higher_core.optim import DifferentiableOptimizer
    import test_plugins_support as support

    class DifferentiableCustom(DifferentiableOptimizer):
        def update_one(self, group, param, grad, state):
            return param - group["lr"] * grad, state
"""


def _plugin(hook: str) -> str:
    return HEADER + hook


@dataclass(frozen=True)
class Case:
    """One bad plugin (or setting) and what the host must say about it."""

    desc: str
    body: str
    expect: type[Warning] | type[BaseException]
    match: str
    env: dict[str, str] = field(default_factory=dict)


BAD_PLUGINS = [
    Case("SystemExit at import", "raise SystemExit(3)\n", PluginLoadWarning,
         r"higher-bad 1\.2\.3 failed while loading entry point .*SystemExit: 3"),
    Case("SystemExit at import, strict", "raise SystemExit(3)\n", PluginLoadError,
         r"HIGHER_CORE_STRICT_PLUGINS is set.*higher-bad 1\.2\.3.*SystemExit: 3",
         {"HIGHER_CORE_STRICT_PLUGINS": "1"}),
    Case("ImportError at import", "raise ImportError('no dependency')\n", PluginLoadWarning,
         r"higher-bad 1\.2\.3.*ImportError: no dependency"),
    Case("hook named optimizers", _plugin("""
    @hookimpl
    def optimizers():
        return {}
    """), PluginLoadWarning,
         r"higher-bad 1\.2\.3 implements unknown hook\(s\) 'optimizers'; "
         r"known hooks: higher_core_optimizers, higher_core_conformance"),
    Case("hook named higher_core_optimisers", _plugin("""
    @hookimpl
    def higher_core_optimisers():
        return {}
    """), PluginLoadWarning, r"higher-bad 1\.2\.3 implements unknown hook\(s\) 'higher_core_optimisers'"),
    Case("misspelled hook, strict", _plugin("""
    @hookimpl
    def higher_core_optimiser():
        return {}
    """), PluginLoadError, r"higher-bad 1\.2\.3 implements unknown hook\(s\) 'higher_core_optimiser'",
         {"HIGHER_CORE_STRICT_PLUGINS": "yes"}),
    Case("one entry not a DifferentiableOptimizer", _plugin("""
    @hookimpl
    def higher_core_optimizers():
        return {support.CustomOpt: DifferentiableCustom, torch.optim.Adagrad: int}
    """), PluginLoadWarning,
         r"higher-bad 1\.2\.3: higher_core_optimizers\(\) failed: TypeError: its optimizer table is "
         r"invalid, so none of it was registered: <class 'int'> .* is not a subclass"),
    Case("a key that is not a type", _plugin("""
    @hookimpl
    def higher_core_optimizers():
        return {support.CustomOpt: DifferentiableCustom, "Adam": DifferentiableCustom}
    """), PluginLoadWarning, r"higher-bad 1\.2\.3.*none of it was registered: 'Adam' is not a type"),
    Case("a pair of three", _plugin("""
    @hookimpl
    def higher_core_optimizers():
        return [(support.CustomOpt, DifferentiableCustom, 1)]
    """), PluginLoadWarning, r"higher-bad 1\.2\.3.*is not an \(optimizer type, differentiable type\) pair"),
    Case("hook returns None", _plugin("""
    @hookimpl
    def higher_core_optimizers():
        return None
    """), PluginLoadWarning, r"higher-bad 1\.2\.3.*returned None; it must return a mapping"),
    Case("hook raises", _plugin("""
    @hookimpl
    def higher_core_optimizers():
        raise KeyError("oops")
    """), PluginLoadWarning, r"higher-bad 1\.2\.3: higher_core_optimizers\(\) failed: KeyError: 'oops'"),
    Case("hook raises SystemExit", _plugin("""
    @hookimpl
    def higher_core_optimizers():
        raise SystemExit("bye")
    """), PluginLoadWarning, r"higher-bad 1\.2\.3.*SystemExit: bye"),
    Case("hook with an argument the spec lacks", _plugin("""
    @hookimpl
    def higher_core_optimizers(device):
        return {}
    """), PluginLoadWarning, r"(?s)higher-bad 1\.2\.3 failed.*PluginValidationError.*'device'"),
    Case("tryfirst, reserved for register_optim", _plugin("""
    @hookimpl(tryfirst=True)
    def higher_core_optimizers():
        return {support.CustomOpt: DifferentiableCustom}
    """), PluginLoadWarning, r"higher-bad 1\.2\.3 marks higher_core_optimizers tryfirst, which is reserved "
                             r"for higher_core.register_optim"),
    Case("strict off spelled 'off'", "raise ImportError('x')\n", PluginLoadWarning,
         r"higher-bad 1\.2\.3.*set HIGHER_CORE_STRICT_PLUGINS=1 to make this an error",
         {"HIGHER_CORE_STRICT_PLUGINS": "off"}),
]


@pytest.mark.parametrize("case", BAD_PLUGINS, ids=lambda c: c.desc)
def test_bad_plugin_is_reported_by_name_and_registers_nothing(case, host, tmp_path, monkeypatch, support_module):
    _fake_distribution(tmp_path, "higher-bad", f"higher_bad_{BAD_PLUGINS.index(case)}", case.body)
    monkeypatch.syspath_prepend(str(tmp_path))
    for variable, value in case.env.items():
        monkeypatch.setenv(variable, value)
    checker = pytest.warns if issubclass(case.expect, Warning) else pytest.raises
    with checker(case.expect, match=case.match):
        host.table()
    table = host.table(raise_failures=False)
    assert CustomOpt not in table.providers and torch.optim.Adagrad in table.providers  # whole or nothing
    assert [f.source for f in table.failures] == ["higher-bad 1.2.3"]
    assert not any(r.distribution == "higher-bad" for r in host.records())


ON = ["1", "true", "TRUE", "Yes", "on", "ON", " On "]
OFF = ["0", "false", "False", "no", "NO", "off", "Off", ""]


@pytest.mark.parametrize("value", ON + OFF)
def test_strict_variable_accepts_the_usual_spellings(value, host, tmp_path, monkeypatch):
    _fake_distribution(tmp_path, "higher-bad", "higher_bad_strict", "raise ImportError('x')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("HIGHER_CORE_STRICT_PLUGINS", value)
    if value in ON:
        with pytest.raises(PluginLoadError, match="higher-bad 1.2.3") as raised:
            host.table()
        assert "to make this an error" not in str(raised.value)
    else:
        with pytest.warns(PluginLoadWarning, match="higher-bad 1.2.3.*HIGHER_CORE_STRICT_PLUGINS=1 to make"):
            host.table()


@pytest.mark.parametrize("value", ["enabled", "2", "y", "n"])
@pytest.mark.parametrize("broken", [True, False], ids=["a plugin fails", "every plugin loads"])
def test_unknown_strict_value_is_refused_listing_the_accepted_spellings(value, broken, host, tmp_path, monkeypatch):
    """Neither on nor off can be guessed (``n`` silently meant strict before): refused when the plugins load,
    whether or not one fails; with the value fixed, the same host loads them."""
    if broken:
        _fake_distribution(tmp_path, "higher-bad", "higher_bad_unknown", "raise ImportError('x')\n")
        monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("HIGHER_CORE_STRICT_PLUGINS", value)
    with pytest.raises(ValueError, match=rf"HIGHER_CORE_STRICT_PLUGINS='{value}' is not a recognised value; "
                                         r"accepted \(any case\): 1/true/yes/on to turn it on, 0/false/no/off "
                                         r"\(or empty\) to turn it off"):
        host.table()
    monkeypatch.setenv("HIGHER_CORE_STRICT_PLUGINS", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginLoadWarning)  # the broken plugin's warning
        assert host.table().providers


EXCLUDED = [  # (variable, value, the torch.optim type that is then missing)
    ("HIGHER_CORE_DISABLE_PLUGINS", "higher_sgd", torch.optim.SGD),
    ("HIGHER_CORE_DISABLE_PLUGINS", "Higher-SGD", torch.optim.SGD),
    ("HIGHER_CORE_DISABLE_PLUGINS", "higher.sgd", torch.optim.SGD),
    ("HIGHER_CORE_DISABLE_PLUGINS", "SGD", torch.optim.SGD),  # the entry point name
    ("HIGHER_CORE_DISABLE_PLUGINS", " higher-adam , higher-lion", torch.optim.Adam),
    ("HIGHER_CORE_DISABLE_PLUGINS", "*", torch.optim.Adam),
    ("HIGHER_CORE_PLUGINS", "higher_adam", torch.optim.SGD),
    ("HIGHER_CORE_PLUGINS", "Higher.Adam", torch.optim.SGD),
    ("HIGHER_CORE_PLUGINS", "adam", torch.optim.RMSprop),
]


@pytest.mark.parametrize("variable, value, missing", EXCLUDED, ids=lambda v: str(v))
def test_excluded_plugin_is_named_with_its_variable(variable, value, missing, host, monkeypatch):
    monkeypatch.setenv(variable, value)
    p = torch.zeros(2, requires_grad=True)
    pip_name = f"higher-{missing.__name__.lower()}"
    with pytest.raises(UnsupportedOptimizerError,
                       match=rf"torch\.optim\.{missing.__name__}: {pip_name} 0\.1\.0 is installed but "
                             rf"excluded by {variable}; remove it from {variable}") as raised:
        higher_core.get_diff_optim(missing([p], lr=0.1), [p])
    assert "pip install" not in str(raised.value)


UNMATCHED = [
    ("HIGHER_CORE_DISABLE_PLUGINS", "higher-nope", "higher-nope"),
    ("HIGHER_CORE_DISABLE_PLUGINS", "higher-sgd,Higher_Nope", "higher-nope"),
    ("HIGHER_CORE_PLUGINS", "higher-adam,hihger-sgd", "hihger-sgd"),
]


@pytest.mark.parametrize("variable, value, name", UNMATCHED)
def test_name_that_matches_nothing_warns_listing_what_is_installed(variable, value, name, host, monkeypatch):
    monkeypatch.setenv(variable, value)
    with pytest.warns(PluginLoadWarning, match=rf"{variable} names '{name}', which matches no installed "
                                              r"higher-core plugin.*Installed: .*higher-adam \(entry point adam\)"):
        host.table()


NOT_AN_OPTIMIZER = [  # (value, what the message must say)
    (torch.optim.SGD, r"got the class torch\.optim\.SGD; pass an instance: "
                      r"torch\.optim\.SGD\(model\.parameters\(\), \.\.\.\)"),
    (torch.optim.Adam, r"got the class torch\.optim\.Adam; pass an instance"),
    (torch.optim, r"got the module torch\.optim; pass an optimizer instance, e\.g\. torch\.optim\.SGD"),
    (None, r"got None; pass an optimizer instance"),
    (torch.nn.Linear(2, 1), r"got the torch\.nn\.Module torch\.nn\.modules\.linear\.Linear: are the model "
                            r"and the optimizer swapped\?"),
    ("adam", r"got builtins\.str; pass an optimizer instance"),
    (0.1, r"got builtins\.float; pass an optimizer instance"),
    (int, r"got the class builtins\.int; pass an optimizer instance"),
]


@pytest.mark.parametrize("value, says", NOT_AN_OPTIMIZER, ids=lambda v: repr(v)[:30])
@pytest.mark.parametrize("entry", ["innerloop_ctx", "get_diff_optim"])
def test_not_an_optimizer_instance_is_named(entry, value, says, host):
    model = torch.nn.Linear(2, 1)
    with pytest.raises(TypeError, match=r"opt: expected a torch\.optim\.Optimizer instance, " + says):
        if entry == "innerloop_ctx":
            with higher_core.innerloop_ctx(model, value):
                pass
        else:
            higher_core.get_diff_optim(value, model.parameters())


def test_keyboard_interrupt_leaves_discovery_unfinished_and_the_next_lookup_retries(
        host, tmp_path, monkeypatch, support_module):
    _fake_distribution(tmp_path, "higher-custom", "higher_custom_interrupted",
                       "raise KeyboardInterrupt\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        host.table()
    assert not host._discovered
    (tmp_path / "higher_custom_interrupted.py").write_text(textwrap.dedent(GOOD_PLUGIN))
    sys.modules.pop("higher_custom_interrupted", None)
    table = host.table()  # retried: every plugin, the interrupted one too
    assert {CustomOpt, torch.optim.SGD, torch.optim.Adam} <= set(table.providers)
    assert table.failures == []


def test_strict_mode_loads_every_other_plugin_then_raises_once_listing_all(
        host, tmp_path, monkeypatch, support_module):
    _fake_distribution(tmp_path, "higher-bad-a", "higher_bad_a", "raise ImportError('a')\n")
    _fake_distribution(tmp_path, "higher-bad-b", "higher_bad_b", "raise SystemExit('b')\n")
    _fake_distribution(tmp_path, "higher-custom", "higher_custom_ok", GOOD_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("HIGHER_CORE_STRICT_PLUGINS", "true")
    expected = r"2 higher-core plugin\(s\) failed \(HIGHER_CORE_STRICT_PLUGINS is set"
    with pytest.raises(PluginLoadError, match=expected) as raised:
        host.table()
    message = str(raised.value)
    assert "higher-bad-a 1.2.3 failed while loading entry point higher_bad_a = higher_bad_a: ImportError: a" in message
    assert "higher-bad-b 1.2.3 failed while loading entry point higher_bad_b = higher_bad_b: SystemExit: b" in message
    assert "to make this an error" not in message
    with pytest.raises(PluginLoadError, match=expected):  # every later lookup says the same
        host.table()
    table = host.table(raise_failures=False)
    assert {CustomOpt, torch.optim.SGD, torch.optim.Adam} <= set(table.providers)


def test_runtime_plugin_with_a_bad_table_is_refused_whole(host):
    class HalfGood:
        @higher_core.hookimpl
        def higher_core_optimizers(self):
            return {CustomOpt: higher_core.optim.DifferentiableOptimizer, torch.optim.Adagrad: object}

    with pytest.raises(pluggy.PluginValidationError, match=r"runtime plugin 'half'.*none of it was registered"):
        higher_core.register_plugin(HalfGood(), name="half")
    assert host.manager.get_plugin("half") is None
    assert CustomOpt not in host.table().providers


def test_register_optim_is_a_tryfirst_plugin_in_the_same_table(host):
    class Mine(higher_core.optim.DifferentiableOptimizer):
        def update_one(self, group, param, grad, state):
            return param, state

    higher_core.register_optim(torch.optim.SGD, Mine)
    try:
        providers = host.table().providers[torch.optim.SGD]
        assert {p.diff_type.__name__ for p in providers} == {"Mine", "DifferentiableSGD"}
        [best] = host.table().best(torch.optim.SGD)
        assert best.diff_type is Mine and best.plugin.name == _plugins.EXPLICIT
        [impl] = [i for i in host.manager.hook.higher_core_optimizers.get_hookimpls()
                  if i.plugin_name == _plugins.EXPLICIT]
        assert impl.tryfirst
    finally:
        higher_core.unregister_optim(torch.optim.SGD)
    assert [p.diff_type.__name__ for p in host.table().best(torch.optim.SGD)] == ["DifferentiableSGD"]


class RaisingConformance:
    @higher_core.hookimpl
    def higher_core_conformance(self):
        raise RuntimeError("kit tables broken")


def test_conformance_hook_is_isolated_per_plugin(host):
    host.register(RaisingConformance(), name="raising-kit")
    with pytest.warns(PluginLoadWarning, match=r"runtime plugin 'raising-kit' failed while calling "
                                              r"higher_core_conformance\(\): RuntimeError: kit tables broken"):
        infos = installed_conformance()
    assert {"SGD", "Adam"} <= {info.name for info in infos}


def test_conformance_hook_failure_is_an_error_in_strict_mode(host, monkeypatch):
    host.register(RaisingConformance(), name="raising-kit")
    monkeypatch.setenv("HIGHER_CORE_STRICT_PLUGINS", "on")
    with pytest.raises(PluginLoadError, match=r"runtime plugin 'raising-kit'.*RuntimeError: kit tables broken"):
        installed_conformance()
