"""higher_core.compat: every version-dependent or private torch use, checked against the installed torch.

Each private name has a test that fails when a torch release renames or changes it
(the fallback would then be taken silently, slower), and each fallback is checked
to give the same numbers. The optimizer table is checked both ways on every
version: an optimizer is available exactly from the release the table names.
"""

from __future__ import annotations

import textwrap

import pytest
import torch
from torch import nn

import higher_core
from higher_core import _plugins, compat
from higher_core._cli import plugin_report
from higher_core.errors import OptimizerUnavailableError


def test_version_parsing():
    assert compat._parse("2.6.0+cu124") == (2, 6, 0)
    assert compat._parse("2.15.0a0+git1234") == (2, 15, 0)
    assert compat._parse("2.10") == (2, 10, 0)
    assert compat.TORCH_VERSION == compat._parse(torch.__version__)
    assert compat.TORCH_VERSION[:2] >= compat.MIN_TORCH


@pytest.mark.parametrize("name", sorted(compat.OPTIMIZER_SINCE))
def test_newer_optimizers_exist_exactly_from_the_release_named(name):
    since = compat.OPTIMIZER_SINCE[name]
    assert compat.optimizer_available(name) == compat.torch_at_least(*since)
    if compat.torch_at_least(*since):
        assert compat.torch_optimizer(name) is getattr(torch.optim, name)
    else:
        with pytest.raises(OptimizerUnavailableError,
                           match=rf"torch\.optim\.{name} needs torch >= {since[0]}\.{since[1]}; you have"):
            compat.torch_optimizer(name)


def test_unknown_optimizer_is_named():
    with pytest.raises(OptimizerUnavailableError, match=r"torch\.optim\.NoSuchOpt is not in this torch"):
        compat.torch_optimizer("NoSuchOpt")


def test_adam_takes_decoupled_weight_decay_from_2_7():
    assert compat.accepts_option(torch.optim.Adam, "decoupled_weight_decay") == compat.torch_at_least(2, 7)
    assert compat.accepts_option(torch.optim.SGD, "momentum")


def test_flatten_dense_tensors_is_torchs_and_matches_the_fallback():
    from torch._utils import _flatten_dense_tensors  # fails here first if torch moves it

    assert compat.flatten_dense_tensors is _flatten_dense_tensors
    tensors = [torch.randn(2, 3, dtype=torch.float64), torch.randn(4, dtype=torch.float64), torch.randn(())]
    tensors[2] = tensors[2].double()
    assert torch.equal(compat.flatten_dense_tensors(tensors), compat._flatten_fallback(tensors))


def test_functorch_transforms_active_is_torchs():
    assert hasattr(torch._C, "_are_functorch_transforms_active")
    assert compat.functorch_transforms_active() is False
    seen = []

    def probe(x):
        seen.append(compat.functorch_transforms_active())
        return x

    torch.func.vmap(probe)(torch.zeros(2, 1))
    assert seen == [True]


def test_dual_level_open_reads_forward_ad():
    import torch.autograd.forward_ad as forward_ad

    assert hasattr(forward_ad, "_current_level")
    assert compat.dual_level_open() is False
    with forward_ad.dual_level():
        assert compat.dual_level_open() is True


def test_global_module_hooks_are_the_live_registries():
    assert compat.GLOBAL_MODULE_HOOKS is not None
    assert not any(compat.GLOBAL_MODULE_HOOKS)
    handle = nn.modules.module.register_module_forward_hook(lambda *args: None)
    try:
        assert any(compat.GLOBAL_MODULE_HOOKS)
    finally:
        handle.remove()


def test_rnn_flat_weight_names():
    lstm = nn.LSTM(2, 3, num_layers=2)
    assert compat.rnn_flat_weight_names(lstm) == lstm._flat_weights_names
    assert set(compat.rnn_flat_weight_names(lstm)) == {n for n, _ in lstm.named_parameters()}


def test_ddp_forward_halves_exist():
    from torch.nn.parallel import DistributedDataParallel

    assert callable(DistributedDataParallel._pre_forward) and callable(DistributedDataParallel._post_forward)


# -- a plugin whose optimizer this torch lacks ------------------------------------------------------

def _future_plugin(root):
    """A distribution for an optimizer no torch has, written as higher-muon is."""
    (root / "higher_future_fake.py").write_text(textwrap.dedent("""
        from higher_core.compat import torch_optimizer
        FutureOpt = torch_optimizer("FutureOpt")
        raise AssertionError("not reached")
    """))
    info = root / "higher_future-1.0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: higher-future\nVersion: 1.0.0\n")
    (info / "entry_points.txt").write_text("[higher_core.plugins]\nfuture = higher_future_fake\n")


def test_unavailable_optimizer_is_listed_not_failed_even_in_strict_mode(host, tmp_path, monkeypatch):
    _future_plugin(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(_plugins.STRICT_ENV, "1")
    table = host.table()  # strict: would raise PluginLoadError for a broken plugin
    assert table.failures == []
    assert [(u.plugin.source, u.reason) for u in table.unavailable if "future" in u.plugin.source] == [
        ("higher-future 1.0.0", f"torch.optim.FutureOpt is not in this torch; you have {torch.__version__}. "
                                "Upgrade torch to use it (the other optimizers keep working).")]
    assert torch.optim.Adam in table.providers
    report = plugin_report()
    assert report["unavailable"][0]["source"] == "higher-future 1.0.0"
    assert report["failed"] == []


@pytest.mark.parametrize("name", sorted(compat.OPTIMIZER_SINCE))
def test_installed_plugins_for_newer_optimizers_follow_the_torch(name, host):
    """higher-adafactor and higher-muon: registered where torch has the optimizer, unavailable where not."""
    table = host.table()
    distribution = f"higher-{name.lower()}"
    unavailable = [u for u in table.unavailable if u.plugin.distribution == distribution]
    if compat.optimizer_available(name):
        assert getattr(torch.optim, name) in table.providers and not unavailable
        assert getattr(higher_core.optim, f"Differentiable{name}").__name__ == f"Differentiable{name}"
    else:
        since = ".".join(map(str, compat.OPTIMIZER_SINCE[name]))
        assert [u.reason.split(";")[0] for u in unavailable] == [f"torch.optim.{name} needs torch >= {since}"]
        with pytest.raises(OptimizerUnavailableError, match=rf"needs torch >= {since}; you have"):
            getattr(higher_core.optim, f"Differentiable{name}")
        assert not hasattr(higher_core.optim, f"Differentiable{name}")


def _sdp_state() -> dict[str, bool]:
    return {name: getattr(torch._C, f"_get_{name}_sdp_enabled")() for name in compat.sdp_backend_names()}


def test_sdp_backend_names_are_torchs_attention_flags():
    names = compat.sdp_backend_names()
    assert {"flash", "math", "mem_efficient"} <= set(names)  # the private flags the fast path sets
    assert compat._SDP_FLAGS is not None  # (else the 4x slower sdpa_kernel fallback runs)
    import torch.nn.attention as attention

    if hasattr(attention, "_backend_names"):  # newer torch lists them itself
        assert sorted(attention._backend_names) == names
    else:  # before torch lists them (2.4, 2.5): the four sdpa_kernel sets
        assert names == ["cudnn", "flash", "math", "mem_efficient"]


@pytest.mark.parametrize("fast", [True, False], ids=["flags", "sdpa_kernel-fallback"])
def test_math_attention_is_sdpa_kernel_math(fast, monkeypatch):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if not fast:
        monkeypatch.setattr(compat, "_SDP_FLAGS", None)
    before = _sdp_state()
    with sdpa_kernel(SDPBackend.MATH):
        expected = _sdp_state()
    torch.backends.cuda.enable_math_sdp(False)  # a user's choice is overridden inside and restored after
    try:
        with compat.math_attention():
            assert _sdp_state() == expected
            q = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
            out = nn.functional.scaled_dot_product_attention(q, q, q)
            g, = torch.autograd.grad(out.sum(), q, create_graph=True)
            g.sum().backward()  # the math kernel has a double backward
        assert _sdp_state() == {**before, "math": False}
    finally:
        torch.backends.cuda.enable_math_sdp(True)
    assert _sdp_state() == before


def test_pytree_is_torchs_and_round_trips():
    from torch.utils import _pytree  # fails here first if torch moves it

    assert compat.pytree is _pytree
    tree = ({"a": torch.zeros(1), "b": [torch.ones(2), 3]}, (torch.ones(()),))
    leaves, spec = compat.pytree.tree_flatten(tree)
    assert len(leaves) == 4 and len(compat.pytree.tree_leaves(tree)) == 4
    rebuilt = compat.pytree.tree_unflatten(leaves, spec)
    assert rebuilt[0]["b"][1] == 3 and torch.equal(rebuilt[1][0], torch.ones(()))


def test_conv_types_cover_every_convolution():
    assert compat.CONV_TYPES == (nn.modules.conv._ConvNd,)
    for conv in (nn.Conv1d(1, 1, 1), nn.Conv2d(1, 1, 1), nn.Conv3d(1, 1, 1), nn.ConvTranspose2d(1, 1, 1)):
        assert isinstance(conv, compat.CONV_TYPES)
    assert not isinstance(nn.Linear(1, 1), compat.CONV_TYPES)


def test_backward_keeps_graph_says_what_the_running_backward_does():
    seen = []

    class Probe(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return 2 * x

        @staticmethod
        def backward(ctx, grad):
            seen.append(compat.backward_keeps_graph())
            return 2 * grad

    x = torch.ones(2, requires_grad=True)
    y = Probe.apply(x).sum()
    torch.autograd.grad(y, [x], retain_graph=True)
    torch.autograd.grad(y, [x])
    assert seen == ([True, False] if compat.torch_at_least(2, 5) else [None, None])


def test_node_sequence_number_orders_nodes_by_creation():
    a = torch.ones(2, requires_grad=True)
    first, second = a * 2, a.exp()
    assert compat.node_sequence_number(first.grad_fn) < compat.node_sequence_number(second.grad_fn)
    assert compat.node_sequence_number(object()) is None  # a torch without it: the caller assumes the worst
