"""Bad inputs at the optimizer's boundary: a clear error naming the argument, never a silent result (issue 12).

One table, one row per bad call: ``pytest.param(call, error, regex, id=...)`` (the patched
module's rows are in ``tests/test_bad_inputs.py``); ``regex``
must match the message and names the argument or option. Below the table, the
cases that are not errors: behaviour pinned against torch or the documentation.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import higher_core as higher
from higher_core.compat import optimizer_available


X = torch.ones(3, 2)


def _net() -> nn.Linear:
    return nn.Linear(2, 1)


def _loss(fnet: Any) -> torch.Tensor:
    return fnet(X).pow(2).sum()


def _step(loss_of: Callable[[Any, nn.Module], Any], opt_type: type = torch.optim.SGD, copy: bool = True,
          track: bool = True, **kwargs: Any) -> None:
    """One step of ``innerloop_ctx`` with ``loss_of(fnet, net)`` as the loss."""
    net = _net()
    opt = opt_type(net.parameters(), lr=0.1)
    with higher.innerloop_ctx(net, opt, copy_initial_weights=copy, track_higher_grads=track) as (fnet, diffopt):
        diffopt.step(loss_of(fnet, net), **kwargs)


def _from_another_context(fnet: Any, net: nn.Module) -> torch.Tensor:
    with higher.innerloop_ctx(net, torch.optim.SGD(net.parameters(), lr=0.1)) as (other, _):
        return _loss(other)


def _stale_twice(copy: bool = True, track: bool = True) -> None:
    net = _net()
    with higher.innerloop_ctx(net, torch.optim.SGD(net.parameters(), lr=0.1), copy_initial_weights=copy,
                              track_higher_grads=track) as (fnet, diffopt):
        loss = _loss(fnet)
        diffopt.step(loss)
        diffopt.step(loss)


def _without_fmodel(loss_of: Callable[[list[torch.Tensor]], Any],
                    params: Callable[[list[torch.Tensor]], Any] = lambda fast: fast, **kwargs: Any) -> None:
    net = _net()
    diffopt = higher.get_diff_optim(torch.optim.SGD(net.parameters(), lr=0.1), net.parameters(), **kwargs)
    tasks = kwargs.get("tasks")
    fast = [(p if tasks is None else p.expand(tasks, *p.shape)).detach().clone().requires_grad_()
            for p in net.parameters()]
    diffopt.step(loss_of(fast), params=params(fast))


def _loss_of_weight(fast: list[torch.Tensor]) -> torch.Tensor:
    return fast[0].pow(2).sum()


def _callback(returns: Callable[[list[Any]], Any], at_step: bool = False) -> None:
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    if at_step:
        with higher.innerloop_ctx(net, opt) as (fnet, diffopt):
            diffopt.step(_loss(fnet), grad_callback=returns)
        return
    fnet = higher.patch.monkeypatch(net)
    diffopt = higher.get_diff_optim(opt, net.parameters(), fmodel=fnet, grad_callback=returns)
    diffopt.step(_loss(fnet))


def _duplicate(opt_type: type, **kwargs: Any) -> None:
    net = _net()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns that this will become an error
        opt = opt_type([net.weight, net.bias, net.weight], lr=0.1, **kwargs)
    higher.get_diff_optim(opt, net.parameters())


def _sparse(opt_type: type, **kwargs: Any) -> None:
    emb = nn.Embedding(5, 2, sparse=True)
    with higher.innerloop_ctx(emb, opt_type(emb.parameters(), lr=0.1, **kwargs)) as (fnet, diffopt):
        diffopt.step(fnet(torch.tensor([0, 3])).pow(2).sum())


def _export_into(make_target: Callable[[], torch.optim.Optimizer]) -> None:
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    with higher.innerloop_ctx(net, opt) as (fnet, diffopt):
        diffopt.step(_loss(fnet))
        diffopt.export_state(make_target())


def _lbfgs_export_into(target: torch.optim.Optimizer) -> None:
    net = _net()
    with higher.innerloop_ctx(net, torch.optim.LBFGS(net.parameters(), lr=0.1)) as (fnet, diffopt):
        diffopt.step(lambda params: _loss(lambda x: fnet(x, params=params)))
        diffopt.export_state(target)


def _lbfgs(closure: Any) -> None:
    net = _net()
    with higher.innerloop_ctx(net, torch.optim.LBFGS(net.parameters(), lr=0.1)) as (fnet, diffopt):
        diffopt.step(closure(fnet) if closure is _LOSS_ITSELF else closure)


def _LOSS_ITSELF(fnet: Any) -> torch.Tensor:  # noqa: N802 - a marker, read as a constant
    return _loss(fnet)


def _lbfgs_torch_closure() -> None:
    net = _net()
    with higher.innerloop_ctx(net, torch.optim.LBFGS(net.parameters(), lr=0.1)) as (fnet, diffopt):
        diffopt.step(lambda: _loss(fnet))


def _override(opt_type: type, override: dict[str, Any], at_step: bool = True, **kwargs: Any) -> None:
    net = _net()
    opt = opt_type(net.parameters(), lr=0.1, **kwargs)
    if not at_step:
        higher.get_diff_optim(opt, net.parameters(), override=override)
        return
    with higher.innerloop_ctx(net, opt) as (fnet, diffopt):
        diffopt.step(_loss(fnet))
        diffopt.step(_loss(fnet), override=override)


def _muon_ns_coefficients() -> None:
    net = nn.Linear(3, 2, bias=False)
    opt = torch.optim.Muon(net.parameters(), lr=0.1)
    higher.get_diff_optim(opt, net.parameters(), override={"ns_coefficients": [torch.tensor([1.0, 2.0, 3.0])]})


class _Scaled(nn.Module):
    """A 0-d learned scale after a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 1)
        self.scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * self.scale


def _per_element_lr(lrs: list[torch.Tensor], at_step: bool = False) -> None:
    """Meta-SGD: one param group per parameter of ``_Scaled`` (scale, fc.weight, fc.bias), ``lrs`` one per group."""
    net = _Scaled()
    opt = _SGD([{"params": [p]} for p in net.parameters()], lr=0.1)
    if not at_step:
        higher.get_diff_optim(opt, net.parameters(), override={"lr": lrs})
        return
    with higher.innerloop_ctx(net, opt) as (fnet, diffopt):
        diffopt.step(_loss(fnet), override={"lr": lrs})


def _in_two_groups(opt_type: type, second_lr: float = 0.05, **kwargs: Any) -> tuple[nn.Module, Any]:
    """A model whose first layer's weight is appended to the second param group after the optimizer was built."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    first, *rest = list(net.parameters())
    opt = opt_type([{"params": [first]}, {"params": rest, "lr": second_lr}], lr=0.1, **kwargs)
    opt.param_groups[1]["params"].append(first)
    return net, opt


def _two_groups_prodigy() -> None:
    import prodigyopt

    net, opt = _in_two_groups(prodigyopt.Prodigy, second_lr=0.1)
    higher.get_diff_optim(opt, net.parameters())


def _all_frozen(track: bool = True, tasks: int | None = None, opt_type: type = torch.optim.SGD) -> None:
    """Every parameter frozen, then a step (the loss itself needs no grad then)."""
    net = _net()
    net.requires_grad_(False)
    opt = opt_type(net.parameters(), lr=0.1)
    with higher.innerloop_ctx(net, opt, track_higher_grads=track, tasks=tasks) as (fnet, diffopt):
        if opt_type is torch.optim.LBFGS:
            diffopt.step(lambda params: _loss(lambda x: fnet(x, params=params)))
        else:
            diffopt.step(_loss(fnet) if tasks is None else fnet(X.expand(tasks, 3, 2)).pow(2).sum((1, 2)))


_SGD = torch.optim.SGD

ROWS = [
    # step(loss): the loss must be a scalar tensor that reaches the current fast weights
    pytest.param(lambda: _step(lambda f, n: _loss(n)), ValueError, r"step\(loss\).*does not reach any fast weight", id="loss of the original model"),
    pytest.param(lambda: _step(lambda f, n: _loss(n), copy=False), ValueError, r"step\(loss\).*does not reach any fast weight", id="original model, copy_initial_weights=False"),
    pytest.param(lambda: _step(_from_another_context), ValueError, r"step\(loss\).*does not reach any fast weight", id="loss of another context"),
    pytest.param(lambda: _stale_twice(), ValueError, r"step\(loss\).*does not reach any fast weight", id="the same loss twice"),
    pytest.param(lambda: _stale_twice(copy=False), ValueError, r"step\(loss\).*does not reach any fast weight", id="the same loss twice, aliases"),
    pytest.param(lambda: _stale_twice(track=False), ValueError, r"step\(loss\).*does not reach any fast weight", id="the same loss twice, test mode"),
    pytest.param(lambda: _without_fmodel(lambda fast: fast[0].sum().detach().requires_grad_()), ValueError, r"step\(loss\).*does not reach any fast weight", id="params=, unrelated loss"),
    pytest.param(lambda: _step(lambda f, n: f(X).pow(2)), ValueError, r"step\(loss\): loss must be a scalar.*shape \(3, 1\).*\.sum\(\)", id="non-scalar loss"),
    pytest.param(lambda: _step(lambda f, n: f(X).pow(2).sum(1)), ValueError, r"step\(loss\): loss must be a scalar.*shape \(3,\)", id="1-D loss"),
    pytest.param(lambda: _step(lambda f, n: 1.5), TypeError, r"step\(loss\): loss must be a tensor.*float", id="a float loss"),
    pytest.param(lambda: _step(lambda f, n: None), TypeError, r"step\(loss\): loss must be a tensor.*NoneType", id="None loss"),
    pytest.param(lambda: _all_frozen(), ValueError, r"step\(loss\): no fast weight requires grad \(every parameter is frozen.*unfreeze", id="every parameter frozen"),
    pytest.param(lambda: _all_frozen(track=False), ValueError, r"step\(loss\): no fast weight requires grad", id="every parameter frozen, test mode"),
    pytest.param(lambda: _all_frozen(tasks=2), ValueError, r"step\(loss\): no fast weight requires grad", id="every parameter frozen, tasks"),
    pytest.param(lambda: _all_frozen(opt_type=torch.optim.LBFGS), ValueError, r"no fast weight requires grad", id="every parameter frozen, LBFGS"),
    # step(params=...): one tensor per fast weight
    pytest.param(lambda: _without_fmodel(_loss_of_weight, params=lambda fast: [fast[0], 1.0]), TypeError, r"step\(params=\.\.\.\): params\[1\] is a float, not a tensor; pass one tensor per fast weight", id="a float in params"),
    pytest.param(lambda: _without_fmodel(_loss_of_weight, params=lambda fast: [None, fast[1]]), TypeError, r"step\(params=\.\.\.\): params\[0\] is a NoneType, not a tensor", id="None in params"),
    pytest.param(lambda: _without_fmodel(_loss_of_weight, params=lambda fast: fast[0]), TypeError, r"step\(params=\.\.\.\): params must be a sequence of tensors.*got Tensor", id="one tensor as params"),
    pytest.param(lambda: _without_fmodel(_loss_of_weight, params=lambda fast: [fast[0], 1.0], tasks=2), TypeError, r"step\(params=\.\.\.\): params\[1\] is a float", id="a float in params, tasks"),
    # grad_callback: one gradient per parameter, None or of the parameter's shape
    pytest.param(lambda: _callback(lambda gs: None), TypeError, r"grad_callback returned None.*return", id="forgot return"),
    pytest.param(lambda: _callback(lambda gs: None, at_step=True), TypeError, r"grad_callback returned None.*return", id="forgot return, step"),
    pytest.param(lambda: _callback(lambda gs: [g.t() for g in gs]), ValueError, r"grad_callback returned a gradient of shape \(2, 1\) for parameter 0 of shape \(1, 2\)", id="transposed"),
    pytest.param(lambda: _callback(lambda gs: [g.sum() for g in gs]), ValueError, r"grad_callback returned a gradient of shape \(\) for parameter 0", id="0-d"),
    pytest.param(lambda: _callback(lambda gs: gs[:1]), ValueError, r"grad_callback returned 1 gradients for 2 parameters", id="too few"),
    pytest.param(lambda: _callback(lambda gs: [0.0, 0.0]), TypeError, r"grad_callback returned a float for parameter 0", id="numbers"),
    pytest.param(lambda: _callback(lambda gs: [g.t() for g in gs], at_step=True), ValueError, r"grad_callback returned a gradient of shape", id="transposed, step"),
    # a parameter listed twice in one group
    pytest.param(lambda: _duplicate(_SGD), ValueError, r"param group 0 lists parameter 0 \(shape \(1, 2\)\) twice", id="duplicate, SGD"),
    pytest.param(lambda: _duplicate(torch.optim.Adam), ValueError, r"param group 0 lists parameter 0 .*twice", id="duplicate, Adam"),
    pytest.param(_two_groups_prodigy, ValueError,
                 r"parameter 0 \(shape \(4, 3\)\) is in param groups 0, 1 of the prodigyopt\.(prodigy\.)?Prodigy.*once per group.*"
                 r"put each parameter in one param group", id="a parameter in two groups, Prodigy"),
    # sparse gradients
    pytest.param(lambda: _sparse(torch.optim.Adam), ValueError, r"torch\.optim\.Adam.*sparse gradient.*sparse=False", id="sparse, Adam"),
    pytest.param(lambda: _sparse(torch.optim.Adagrad), ValueError, r"torch\.optim\.Adagrad.*sparse gradient", id="sparse, Adagrad"),
    pytest.param(lambda: _sparse(_SGD), ValueError, r"torch\.optim\.SGD.*sparse gradient", id="sparse, SGD"),
    # export_state: checked whole before anything is written
    pytest.param(lambda: _export_into(lambda: torch.optim.Adam(_net().parameters())), TypeError, r"export_state\(opt\).*Adam.*torch\.optim\.SGD", id="another type"),
    pytest.param(lambda: _export_into(lambda: _SGD(nn.Linear(3, 1).parameters(), lr=0.1)), ValueError, r"export_state\(opt\).*parameter 0.*shape \(1, 3\).*\(1, 2\)", id="other shapes"),
    pytest.param(lambda: _export_into(lambda: _SGD([nn.Linear(2, 1).weight], lr=0.1)), ValueError, r"export_state\(opt\).*param groups", id="group lengths"),
    pytest.param(lambda: _export_into(lambda: None), TypeError, r"export_state\(opt\).*NoneType", id="None"),
    # LBFGS takes closure(params) -> loss; its export_state is checked as the others'
    pytest.param(lambda: _lbfgs_export_into(_SGD(_net().parameters(), lr=0.1)), TypeError, r"export_state\(opt\).*SGD.*torch\.optim\.LBFGS", id="LBFGS export into SGD"),
    pytest.param(lambda: _lbfgs_export_into(torch.optim.LBFGS(nn.Linear(3, 1).parameters())), ValueError, r"export_state\(opt\).*shape \(1, 3\)", id="LBFGS export, other shapes"),
    pytest.param(_lbfgs_torch_closure, TypeError, r"step\(closure\): the closure takes no argument.*closure\(params\)", id="torch-style closure"),
    pytest.param(lambda: _lbfgs(_LOSS_ITSELF), TypeError, r"step\(closure\).*got a Tensor.*closure\(params\)", id="a loss for LBFGS"),
    # overrides (issue 12's optimizer-side examples)
    pytest.param(lambda: _override(_SGD, {"lr": [-0.1]}), ValueError, r"(?i)lr", id="negative lr"),
    pytest.param(lambda: _override(torch.optim.Adam, {"betas": [(1.5, 0.99)]}), ValueError, r"(?i)beta", id="beta out of range"),
    pytest.param(lambda: _override(_SGD, {"lr": [torch.full((4,), 0.1)]}), ValueError, r"lr", id="lr of shape (4,)"),
    pytest.param(lambda: _override(_SGD, {"lr": ["0.1"]}), (TypeError, ValueError), r"lr", id="string lr"),
    pytest.param(lambda: _per_element_lr([torch.full((1,), 0.1), torch.full((1, 2), 0.1), torch.full((1,), 0.1)]), ValueError,
                 r"override\['lr'\] for param group 0 is a tensor of shape \(1,\), but its parameter 0 has shape \(\): "
                 r"the value would make its fast weight \(1,\)", id="per-element lr (1,) for a 0-d parameter"),
    pytest.param(lambda: _per_element_lr([0.1, torch.full((2, 1), 0.1), 0.1], at_step=True), ValueError,
                 r"override\['lr'\] for param group 1 is a tensor of shape \(2, 1\), but its parameter 1 has shape "
                 r"\(1, 2\): the value would make its fast weight \(2, 2\)", id="per-element lr (2, 1) for a (1, 2) weight, step"),
    pytest.param(lambda: _per_element_lr([0.1, torch.full((3,), 0.1), 0.1]), ValueError,
                 r"override\['lr'\] .* shape \(3,\), but its parameter 1 has shape \(1, 2\): the value does not "
                 r"broadcast against it", id="per-element lr (3,) for a (1, 2) weight"),
    pytest.param(lambda: _per_element_lr([0.1, torch.tensor([[0.1, -0.1]]), 0.1]), ValueError,
                 r"override of lr for param group 1: torch\.optim\.SGD refuses these values: Invalid learning rate",
                 id="per-element lr with negative entries"),
    pytest.param(lambda: _override(torch.optim.Adam, {"amsgrad": [True]}), ValueError, r"amsgrad", id="flag after the first step"),
    pytest.param(lambda: _override(torch.optim.RMSprop, {"centered": [True]}, at_step=False), ValueError, r"centered", id="RMSprop flag"),
    pytest.param(_muon_ns_coefficients, ValueError, r"ns_coefficients", id="Muon ns_coefficients",
                 marks=pytest.mark.skipif(not optimizer_available("Muon"), reason="torch.optim.Muon needs torch >= 2.9")),
    # get_diff_optim: an optimizer instance
    pytest.param(lambda: higher.get_diff_optim(_SGD, _net().parameters()), TypeError, r"(?i)opt.*class.*instance|instance", id="a class"),
    pytest.param(lambda: higher.get_diff_optim(None, _net().parameters()), TypeError, r"NoneType|None", id="None"),
    pytest.param(lambda: _without_fmodel(_loss, track_higher_grads="no"), TypeError, r"track_higher_grads", id="string flag"),
]


@pytest.mark.parametrize(("call", "error", "regex"), ROWS)
def test_refused_with_a_message_naming_the_argument(call: Callable[[], Any], error: Any, regex: str) -> None:
    """Each row: the bad call, the exception type, a regex naming the argument or option (25 rows at least)."""
    assert len(ROWS) >= 25
    with pytest.raises(error, match=regex):
        call()


# -- not errors: behaviour pinned --------------------------------------------------------------------
def test_a_refused_step_appends_no_history():
    net = _net()
    with higher.innerloop_ctx(net, torch.optim.SGD(net.parameters(), lr=0.1)) as (fnet, diffopt):
        with pytest.raises(ValueError, match="does not reach"):
            diffopt.step(_loss(net))
        assert len(fnet._fast_params) == 1


def test_export_state_writes_nothing_when_a_shape_differs():
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    with higher.innerloop_ctx(net, opt) as (fnet, diffopt):
        diffopt.step(_loss(fnet))
    target_net = nn.Linear(2, 1)
    target = torch.optim.SGD([target_net.weight, nn.Parameter(torch.zeros(2))], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="parameter 1"):
        diffopt.export_state(target)
    assert len(target.state) == 0  # not even the first parameter's state


@pytest.mark.parametrize("with_fmodel", [True, False])
def test_test_mode_returns_only_detached_fast_weights(with_fmodel: bool):
    """``track_higher_grads=False``: every returned weight is detached, the unreached one included."""
    net = nn.Sequential(nn.Linear(2, 1), nn.Linear(2, 1))  # the loss uses the first layer only
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    params = list(net.parameters())
    if with_fmodel:
        fnet = higher.patch.monkeypatch(net, copy_initial_weights=False, track_higher_grads=False)
        diffopt = higher.get_diff_optim(opt, params, fmodel=fnet)
        new = diffopt.step(fnet[0](X).pow(2).sum())
    else:
        diffopt = higher.get_diff_optim(opt, params, track_higher_grads=False)
        new = diffopt.step(net[0](X).pow(2).sum(), params=params)
    assert all(p.grad_fn is None and p.is_leaf for p in new)
    assert not any(p is q for p, q in zip(new, params))
    sum(p.sum() for p in new).backward()
    assert all(p.grad is None for p in params)  # nothing reaches the model


def test_a_nan_loss_steps_as_torch_does():
    """NaN/inf losses are stepped silently, as ``torch.optim`` steps them (documented)."""
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with higher.innerloop_ctx(net, opt) as (fnet, diffopt):
        new = diffopt.step(_loss(fnet) * math.nan)
    reference = _net()
    reference.load_state_dict(net.state_dict())
    ropt = torch.optim.SGD(reference.parameters(), lr=0.1)
    (_loss(reference) * math.nan).backward()
    ropt.step()
    for ours, theirs in zip(new, reference.parameters()):
        assert torch.equal(ours.isnan(), theirs.isnan())


@pytest.mark.filterwarnings("ignore:Sparse invariant checks are implicitly disabled:UserWarning")  # torch's sparse Adagrad
def test_a_sparse_gradient_made_dense_in_the_callback_is_stepped_as_torch_steps_the_sparse_one():
    """The fix the sparse error names: densify in ``grad_callback``; Adagrad then equals torch's sparse Adagrad."""
    torch.manual_seed(0)
    emb = nn.Embedding(5, 2, sparse=True).double()
    idx = torch.tensor([0, 3, 3])
    reference = nn.Embedding(5, 2, sparse=True).double()
    reference.load_state_dict(emb.state_dict())
    ropt = torch.optim.Adagrad(reference.parameters(), lr=0.1)
    with higher.innerloop_ctx(emb, torch.optim.Adagrad(emb.parameters(), lr=0.1)) as (fnet, diffopt):
        for _ in range(3):
            diffopt.step(fnet(idx).pow(2).sum(), grad_callback=lambda gs: [g.to_dense() for g in gs])
            ropt.zero_grad()
            reference(idx).pow(2).sum().backward()
            ropt.step()
        torch.testing.assert_close(fnet.fast_params[0], reference.weight, rtol=1e-10, atol=0)


@pytest.mark.parametrize(("opt_type", "kwargs"), [
    (torch.optim.SGD, {"momentum": 0.9}), (torch.optim.Adam, {"amsgrad": True}), (torch.optim.Adagrad, {}),
    (torch.optim.RMSprop, {"momentum": 0.5, "centered": True}),
], ids=["SGD", "Adam", "Adagrad", "RMSprop"])
@pytest.mark.parametrize("flat", [True, False], ids=["flat", "per-tensor"])
def test_a_parameter_in_two_param_groups_is_stepped_once_per_group_as_torch_does(opt_type, kwargs, flat, monkeypatch):
    """Appended to a second group after the optimizer was built: torch steps it once per group, each
    step from the previous one's weight and state; so do we (float64, rtol 1e-10), flat groups included."""
    from higher_core import _stepping

    monkeypatch.setattr(_stepping, "MIN_TENSORS", 2)  # the second group (three tensors) would be laid out flat
    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    net, opt = _in_two_groups(opt_type, **kwargs)
    reference, ropt = _in_two_groups(opt_type, **kwargs)
    with higher.innerloop_ctx(net, opt) as (fnet, diffopt):
        diffopt.flat_weights = flat
        for _ in range(3):
            diffopt.step(fnet(x).pow(2).sum())
            ropt.zero_grad()
            reference(x).pow(2).sum().backward()
            ropt.step()
        for ours, theirs in zip(fnet.fast_params, reference.parameters()):
            torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=0)
        for i, p in enumerate(reference.parameters()):
            for key, value in ropt.state[p].items():
                torch.testing.assert_close(torch.as_tensor(diffopt.param_state[i][key], dtype=value.dtype), value,
                                           rtol=1e-10, atol=0)
        diffopt.export_state(opt)
    for p, q in zip(net.parameters(), reference.parameters()):
        assert sorted(opt.state[p]) == sorted(ropt.state[q])
        for key, value in ropt.state[q].items():
            torch.testing.assert_close(opt.state[p][key], value, rtol=1e-10, atol=0)


def test_a_parameter_in_two_param_groups_with_tasks_steps_each_task_as_torch_does():
    x = torch.randn(3, 5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    net, opt = _in_two_groups(torch.optim.Adam)
    with higher.innerloop_ctx(net, opt, tasks=3, override={"lr": [torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64), 0.05]}) as (fnet, diffopt):
        for _ in range(2):
            diffopt.step(fnet(x).pow(2).sum((1, 2)))
        batched = [p.detach() for p in fnet.fast_params]
    for t, lr in enumerate((0.1, 0.2, 0.3)):
        reference, ropt = _in_two_groups(torch.optim.Adam)
        ropt.param_groups[0]["lr"] = lr
        for _ in range(2):
            ropt.zero_grad()
            reference(x[t]).pow(2).sum().backward()
            ropt.step()
        for ours, theirs in zip(batched, reference.parameters()):
            torch.testing.assert_close(ours[t], theirs, rtol=1e-10, atol=0)


@pytest.mark.skipif(not optimizer_available("Adafactor"), reason="torch.optim.Adafactor needs torch >= 2.5")
@pytest.mark.parametrize("dtypes", [(torch.bfloat16, torch.float64, torch.float16),
                                    (torch.float16, torch.bfloat16, torch.float64)], ids=["bf16-f64-f16", "f16-bf16-f64"])
def test_adafactor_on_layers_of_three_dtypes_equals_torch(dtypes):
    """torch.optim.Adafactor with eps1=None takes the machine epsilon of the first parameter's dtype for the
    whole group; small gradients make the clamps bite, where a per-parameter epsilon differed by 2e-2."""
    def model() -> nn.Module:
        torch.manual_seed(0)
        return nn.ModuleList([nn.Linear(3, 3).to(dtypes[0]), nn.Linear(3, 3).to(dtypes[1]), nn.Linear(3, 2).to(dtypes[2])])

    def loss(layers: Any, x: torch.Tensor) -> torch.Tensor:
        for k, layer in enumerate(layers):
            x = layer(x.to(layer.weight.dtype)).double()
            x = x.tanh() if k < 2 else x
        return 1e-3 * x.pow(2).sum()

    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    net, reference = model(), model()
    ropt = torch.optim.Adafactor(reference.parameters(), lr=0.01)
    with higher.innerloop_ctx(net, torch.optim.Adafactor(net.parameters(), lr=0.01)) as (fnet, diffopt):
        for _ in range(5):
            diffopt.step(loss(fnet, x))
            ropt.zero_grad()
            loss(reference, x).backward()
            ropt.step()
        for ours, theirs in zip(fnet.fast_params, reference.parameters()):
            assert ours.dtype == theirs.dtype and torch.equal(ours, theirs)
