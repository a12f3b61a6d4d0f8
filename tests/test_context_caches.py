"""What a context keeps from one call to the next is never stale: the batched MLP plan, the module copy.

A batched module plans its forward once (an MLP runs as batched matrix products,
``higher_core/batched/_matmul.py``) and serves every call from that plan while it
holds; a hook registered later, on a module or globally, sends the call back to
``vmap``, and a module changed between contexts gets a new plan. The module copy
a context works on owns its containers (hooks, parameters, children).
"""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn
from torch.func import functional_call

import higher_core
from higher_core._module_copy import named_tensors, shallow_tree_copy

DT = torch.float64
T = 3


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1)).double()


def _per_task(model: nn.Module, fast: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    names = [name for name, _ in model.named_parameters()]
    return torch.stack([functional_call(model, dict(zip(names, [p[t] for p in fast])), (x[t],)) for t in range(T)])


class _Doubled(nn.Linear):
    """A Linear subclass with its own forward: the plan must not take it for a Linear."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(x)


@pytest.mark.parametrize("change", ["hook", "subclass", "dropout", "buffer", "new child"])
def test_a_module_changed_between_contexts_is_planned_again(change):
    """The plan is made per context from the module as it is then: after each change the forward
    follows the changed module (under vmap), with the per-task numbers."""
    model = _mlp()
    assert higher_core.monkeypatch(model, tasks=T)._plan is not None
    calls = []
    if change == "hook":
        model[1].register_forward_hook(lambda module, args, out: calls.append(out.shape))
    elif change == "subclass":
        doubled = _Doubled(4, 1).double()
        doubled.load_state_dict(model[2].state_dict())
        model[2] = doubled
    elif change == "dropout":
        model.append(nn.Dropout(0.0))
    elif change == "buffer":
        model.register_buffer("scale", torch.ones(1, dtype=DT))
    else:
        model[1].add_module("inner", nn.Identity())  # a ReLU with a child: no longer a plain activation
    fmodel = higher_core.monkeypatch(model, tasks=T)
    assert fmodel._plan is None
    x = torch.randn(T, 5, 2, dtype=DT)
    torch.testing.assert_close(fmodel(x), _per_task(model, fmodel.fast_params, x), rtol=1e-10, atol=1e-12)
    if change == "hook":
        assert calls == [torch.Size([5, 4])] * (1 + T)  # once under vmap (a task's shape), then per task above


def test_a_global_hook_registered_later_sends_the_call_to_vmap():
    """The plan holds only while no hook would run: a global forward hook registered after the context
    was made fires on the next call (under vmap, once per module), and the plan serves again once it is removed."""
    model = _mlp()
    fmodel = higher_core.monkeypatch(model, tasks=T)
    assert fmodel._plan is not None
    x = torch.randn(T, 5, 2, dtype=DT)
    planned = fmodel(x)
    seen = []
    handle = nn.modules.module.register_module_forward_hook(lambda module, args, out: seen.append(type(module)))
    try:
        hooked = fmodel(x)
    finally:
        handle.remove()
    assert seen == [nn.Linear, nn.ReLU, nn.Linear, nn.Sequential, higher_core.batched.BatchedPatchedModule]
    torch.testing.assert_close(hooked, planned, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(hooked, _per_task(model, fmodel.fast_params, x), rtol=1e-10, atol=1e-12)
    assert fmodel._plan is not None and fmodel.batching == "vmap"


def test_the_module_copy_owns_its_containers():
    """Hooks, parameters and children registered on the copy or on the original after copying stay
    where they were registered; a container of another type than dict/set/OrderedDict is copied too."""
    model = _mlp()
    model[0].__dict__["_forward_hooks"] = type("Hooks", (OrderedDict,), {})()
    copied = shallow_tree_copy(model)
    hooks = copied[0]._forward_hooks
    assert type(hooks).__name__ == "Hooks" and hooks is not model[0]._forward_hooks
    copied[0].register_forward_hook(lambda module, args, out: None)
    copied.register_parameter("extra", nn.Parameter(torch.zeros(1, dtype=DT)))
    copied.append(nn.Identity())
    model[2].register_forward_pre_hook(lambda module, args: None)
    assert not model[0]._forward_hooks and "extra" not in model._parameters and len(model) == 3
    assert not copied[2]._forward_pre_hooks and len(copied) == 4
    assert copied[0].weight is model[0].weight and copied[0].in_features == 2  # parameters and plain attributes shared


def test_named_tensors_is_named_parameters_and_named_buffers_in_one_walk():
    """Names and order as the two nn.Module methods give them: a shared submodule and a shared tensor listed
    once under their first name, None entries skipped, a tensor that is a parameter in one module and a
    buffer in another listed in both."""
    shared = nn.Linear(2, 2)
    tied = nn.Parameter(torch.zeros(2))
    model = nn.Sequential(shared, nn.BatchNorm1d(2), nn.Sequential(shared, nn.Linear(2, 3, bias=False)), shared)
    model.register_parameter("tied", tied)
    model[2][1].register_parameter("again", tied)
    model[1].register_buffer("absent", None)
    model[2].register_buffer("as_buffer", shared.weight)
    params, buffers = named_tensors(model)
    assert params == list(model.named_parameters()) and buffers == list(model.named_buffers())
    assert [n for n, _ in params] == ["tied", "0.weight", "0.bias", "1.weight", "1.bias", "2.1.weight"]
    assert "2.as_buffer" in [n for n, _ in buffers]


def test_named_tensors_asks_a_module_that_overrides_its_listing():
    """A module whose class overrides named_parameters (here: hiding a parameter) is listed through it, as
    before: the batched module and its optimizer see what the module's own listing shows."""

    class Hiding(nn.Sequential):
        def named_parameters(self, prefix="", recurse=True, remove_duplicate=True):
            for name, p in super().named_parameters(prefix, recurse, remove_duplicate):
                if name != "1.bias":
                    yield name, p

    model = Hiding(nn.Linear(2, 4), nn.Linear(4, 1)).double()
    params, buffers = named_tensors(model)
    assert [n for n, _ in params] == ["0.weight", "0.bias", "1.weight"] and buffers == []
    fmodel = higher_core.monkeypatch(model, tasks=T)
    assert [tuple(p.shape) for p in fmodel.fast_params] == [(T, 4, 2), (T, 4), (T, 1, 4)]
