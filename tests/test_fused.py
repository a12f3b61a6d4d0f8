"""The fused step (higher_core._fused): one autograd node per flat group and step, the per-tensor numbers.

The per-tensor rule (``flat_weights = False``, ``fused = False``) is the
reference: the fused step must give the same weights and state, and the same
meta-gradients to 1e-10 in float64, first order (Adam's written-out
``update_vjp``, or the recomputation) and second order (always the
recomputation). Second-order meta-gradients are compared with the reference,
not only gradgradchecked: a backward that counted a term twice would still be
consistent with its own finite differences.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import higher_core
from higher_core import _fused, _stepping
from higher_core.testing import _checks, _flat_check, installed_conformance

RTOL = 1e-10


@pytest.fixture(autouse=True)
def _small_groups_lay_out(monkeypatch):
    """The tests' models are small: lay out groups of two tensors or more."""
    monkeypatch.setattr(_stepping, "MIN_TENSORS", 2)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2)).double()


def _loss(fmodel: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return fmodel(x).pow(2).mean() + fmodel(x).sin().sum()


OPTIMIZERS: dict[str, Callable[[nn.Module], torch.optim.Optimizer]] = {
    "sgd-momentum": lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9),
    "sgd-nesterov-decay": lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.8, nesterov=True,
                                                    weight_decay=0.1),
    "sgd-dampening-maximize": lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.5, dampening=0.3,
                                                        weight_decay=0.05, maximize=True),
    "adam": lambda m: torch.optim.Adam(m.parameters(), lr=0.05),
    "adam-amsgrad-decay": lambda m: torch.optim.Adam(m.parameters(), lr=0.05, amsgrad=True, weight_decay=0.1),
    "adam-maximize-amsgrad": lambda m: torch.optim.Adam(m.parameters(), lr=0.05, maximize=True, amsgrad=True),
    "adamw": lambda m: torch.optim.AdamW(m.parameters(), lr=0.05, weight_decay=0.1),
}


def _unroll(make_opt: Callable[[nn.Module], torch.optim.Optimizer], fused: bool, vjp: bool = True,
            order: int = 1, dead_inputs: bool = False, steps: int = 3,
            extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Unroll ``steps`` steps with a learned lr; the weights, the state and meta-gradients of ``order``."""
    model = _model()
    x = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    if dead_inputs:  # exactly zero gradient entries: the safe square root's derivative at 0
        x[:, 0] = 0
    opt = make_opt(model)
    lr = torch.tensor(opt.param_groups[0]["lr"], dtype=torch.float64, requires_grad=True)
    override = {"lr": [lr], **(extra or {})}
    with higher_core.innerloop_ctx(model, opt, copy_initial_weights=False, override=override) as (fmodel, diffopt):
        diffopt.flat_weights = fused
        diffopt.fused = fused
        if not vjp:
            diffopt.update_vjp = None  # the recomputation, also for a first-order backward
        for _ in range(steps):
            diffopt.step(_loss(fmodel, x))
        wrt = [*model.parameters(), lr, *[v[0] for v in (extra or {}).values()]]
        meta = torch.autograd.grad(_loss(fmodel, x), wrt, create_graph=order == 2)
        if order == 2:
            direction = torch.Generator().manual_seed(2)
            dot = sum((m * torch.randn(m.shape, dtype=m.dtype, generator=direction)).sum() for m in meta)
            meta = torch.autograd.grad(dot, wrt)
        return {"weights": [list(fmodel.parameters(time=t)) for t in range(steps + 1)], "meta": meta,
                "state": diffopt.param_state, "fmodel": fmodel}


def _assert_same(fused: dict[str, Any], reference: dict[str, Any]) -> None:
    for ours, theirs in zip(fused["weights"], reference["weights"]):
        for a, b in zip(ours, theirs):
            assert torch.equal(a, b)
    for i, state in reference["state"].items():
        for key, value in state.items():
            ours = fused["state"][i][key]
            assert torch.equal(ours, value) if isinstance(value, torch.Tensor) else ours == value, (i, key)
    for a, b in zip(fused["meta"], reference["meta"]):
        torch.testing.assert_close(a, b, rtol=RTOL, atol=0)


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_fused_equals_per_tensor(name, order):
    make_opt = OPTIMIZERS[name]
    fused = _unroll(make_opt, True, order=order)
    _assert_same(fused, _unroll(make_opt, False, order=order))
    fast = fused["weights"][-1]
    assert len({w.untyped_storage().data_ptr() for w in fast}) == 1  # laid out flat
    assert _node_below(fast[0].grad_fn) == "_FusedStepBackward"


def _node_below(node: Any) -> str:
    """The first node under a weight's views and split (the step that made the flat buffer)."""
    while node.name() in ("ViewBackward0", "SplitWithSizesBackward0"):
        node = node.next_functions[0][0]
    return node.name()


@pytest.mark.parametrize("name", ["adam-amsgrad-decay", "adam-maximize-amsgrad", "adamw"])
def test_adam_vjp_and_the_recomputation_agree_with_per_tensor(name):
    make_opt = OPTIMIZERS[name]
    reference = _unroll(make_opt, False, dead_inputs=True)
    _assert_same(_unroll(make_opt, True, vjp=False, dead_inputs=True), reference)
    _assert_same(_unroll(make_opt, True, vjp=True, dead_inputs=True), reference)


def test_adam_vjp_declines_a_learned_eps_and_the_recomputation_takes_it():
    make_opt = OPTIMIZERS["adam-amsgrad-decay"]
    eps = torch.tensor(1e-3, dtype=torch.float64, requires_grad=True)
    fused = _unroll(make_opt, True, extra={"eps": [eps]})
    _assert_same(fused, _unroll(make_opt, False, extra={"eps": [eps]}))
    assert fused["meta"][-1].abs() > 0  # eps's own meta-gradient


def _saved_bytes(fused: bool) -> int:
    """The bytes autograd saves (distinct storages) over three Adam steps with a learned lr."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _unroll(OPTIMIZERS["adam"], fused)
    return sum(storages.values())


def test_fused_adam_saves_less_than_the_per_operation_graph():
    assert _saved_bytes(True) < 0.9 * _saved_bytes(False)


def test_test_mode_runs_the_rule_as_it_is():
    model = _model()
    opt = OPTIMIZERS["adam"](model)
    with higher_core.innerloop_ctx(model, opt, track_higher_grads=False) as (fmodel, diffopt):
        diffopt.step(_loss(fmodel, torch.ones(2, 3, dtype=torch.float64)))
        assert all(w.grad_fn is None for w in fmodel.parameters())
    with higher_core.innerloop_ctx(model, opt) as (fmodel, diffopt):  # and with a graph, the fused node
        diffopt.step(_loss(fmodel, torch.ones(2, 3, dtype=torch.float64)))
        assert _node_below(next(fmodel.parameters()).grad_fn) == "_FusedStepBackward"


def _adam_step(amsgrad: bool) -> tuple[Callable[..., tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...]]:
    """One fused Adam step on a small tensor as a function of lr, weight, gradient and state."""
    weight = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    reference = torch.optim.Adam([weight], lr=0.1, amsgrad=amsgrad, weight_decay=0.1)
    diffopt = higher_core.get_diff_optim(reference, [weight])
    group = diffopt.param_groups[0]
    step = _fused.fused(diffopt.update, diffopt.update_vjp)

    def adam(lr: torch.Tensor, param: torch.Tensor, grad: torch.Tensor, *moments: torch.Tensor
             ) -> tuple[torch.Tensor, ...]:
        state = {"step": 2.0, "exp_avg": moments[0], "exp_avg_sq": moments[1]}
        if amsgrad:
            state["max_exp_avg_sq"] = moments[2]
        (new,), (new_state,) = step({**group, "lr": lr}, [param], [grad], [state])
        return new, *(new_state[k] for k in state if k != "step")

    g = torch.Generator().manual_seed(3)
    inputs = (torch.tensor(0.1, dtype=torch.float64), *(torch.randn(4, dtype=torch.float64, generator=g)
                                                        for _ in range(2)),
              torch.randn(4, dtype=torch.float64, generator=g), torch.rand(4, dtype=torch.float64, generator=g) + 0.1,
              *([torch.rand(4, dtype=torch.float64, generator=g) + 0.1] if amsgrad else []))
    return adam, tuple(t.requires_grad_() for t in inputs)


@pytest.mark.parametrize("amsgrad", [False, True])
def test_gradcheck_and_gradgradcheck_of_a_fused_adam_step(amsgrad):
    adam, inputs = _adam_step(amsgrad)
    assert torch.autograd.gradcheck(adam, inputs)  # the written-out vjp
    assert torch.autograd.gradgradcheck(adam, inputs)  # the recomputation, differentiated again


def test_gradcheck_and_gradgradcheck_of_a_fused_sgd_step_whose_buffer_is_its_gradient():
    weight = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    diffopt = higher_core.get_diff_optim(torch.optim.SGD([weight], lr=0.1, momentum=0.9, nesterov=True), [weight])
    step = _fused.fused(diffopt.update)
    group = diffopt.param_groups[0]

    def sgd(lr: torch.Tensor, param: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, ...]:
        (new,), (state,) = step({**group, "lr": lr}, [param], [grad], [{}])
        assert state["momentum_buffer"] is grad  # the first buffer is the gradient itself, outside the node
        return new, state["momentum_buffer"]

    g = torch.Generator().manual_seed(4)
    inputs = (torch.tensor(0.1, dtype=torch.float64, requires_grad=True),
              *(torch.randn(3, dtype=torch.float64, generator=g).requires_grad_() for _ in range(2)))
    assert torch.autograd.gradcheck(sgd, inputs)
    assert torch.autograd.gradgradcheck(sgd, inputs)


SGD_INFO = next(info for info in installed_conformance() if info.reference is torch.optim.SGD)


@pytest.mark.parametrize("row", SGD_INFO.inputs, ids=lambda row: row.desc)
def test_the_kit_passes_sgd_fused(row, monkeypatch):
    """The conformance checks that step flat groups (every group, here) hold with SGD fused."""
    monkeypatch.setattr(SGD_INFO.differentiable, "fused", True)
    _checks.check_parity(SGD_INFO, row)
    _checks.check_gradcheck(SGD_INFO, row)
    _flat_check.check_flat_weights(SGD_INFO, row)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")  # torch's forward-AD setup
def test_forward_mode_ad_steps_unfused_with_the_same_tangents():
    from torch.autograd import forward_ad

    model = _model()
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    tangents = []
    for fused in (True, False):
        opt = OPTIMIZERS["adam-amsgrad-decay"](model)
        with higher_core.innerloop_ctx(model, opt) as (fmodel, diffopt), forward_ad.dual_level():
            diffopt.fused = diffopt.flat_weights = fused
            lr = forward_ad.make_dual(torch.tensor(0.05, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
            diffopt.step(_loss(fmodel, x), override={"lr": [lr]})
            tangents.append([forward_ad.unpack_dual(w).tangent for w in fmodel.parameters()])
    for a, b in zip(*tangents):
        torch.testing.assert_close(a, b, rtol=RTOL, atol=0)
