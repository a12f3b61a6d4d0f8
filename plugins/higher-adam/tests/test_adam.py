"""higher-adam: the numbers the old library got wrong."""

from __future__ import annotations

import pytest
import torch

import higher_core
from higher_core.compat import accepts_option


def _ten_steps(**kwargs):
    w = torch.tensor([0.3, -0.7, 1.1], dtype=torch.float64)
    ref = w.clone().requires_grad_()
    opt = torch.optim.Adam([ref], **kwargs)
    diffopt = higher_core.get_diff_optim(opt, [ref])
    fast = [w.clone().requires_grad_()]
    for _ in range(10):
        fast = diffopt.step((fast[0].sin() * 3).sum(), params=fast)
        opt.zero_grad()
        (ref.sin() * 3).sum().backward()
        opt.step()
    return fast[0], ref


def test_maximize_and_decoupled_weight_decay_are_honoured():
    # the old higher ignored both options; each changes the trajectory here, and we follow torch
    base, _ = _ten_steps(lr=0.1, weight_decay=0.5)
    options = [{"maximize": True}]
    if accepts_option(torch.optim.Adam, "decoupled_weight_decay"):  # torch >= 2.7
        options.append({"decoupled_weight_decay": True})
    else:  # refused by the installed torch itself, so no differentiable Adam is ever asked for it
        with pytest.raises(TypeError, match="decoupled_weight_decay"):
            torch.optim.Adam([torch.zeros(1, requires_grad=True)], decoupled_weight_decay=True)
    for option in options:
        ours, torch_result = _ten_steps(lr=0.1, weight_decay=0.5, **option)
        torch.testing.assert_close(ours, torch_result, rtol=1e-12, atol=1e-14)
        assert not torch.allclose(ours, base)


def test_meta_gradient_is_finite_when_a_gradient_entry_is_zero():
    w = torch.tensor([0.0, 1.0], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([w.detach().requires_grad_()], lr=0.1)
    diffopt = higher_core.get_diff_optim(opt, opt.param_groups[0]["params"])
    fast = [w]
    for _ in range(3):
        fast = diffopt.step((fast[0][1:] ** 2).sum() + 0 * fast[0].sum(), params=fast)
    (g,) = torch.autograd.grad(fast[0].sum(), w)
    assert torch.isfinite(g).all()
    assert g[0] == 1.0  # an entry whose gradient is always zero never moves


def _trajectory(foreach, steps=4, override=None, **kwargs):
    from higher_core.testing import Problem

    problem = Problem(((3, 2), (2,), (4, 1, 2)))
    problem.data[1] = torch.zeros_like(problem.data[1])  # exact zeros in a gradient
    leaves = problem.leaves()
    opt = torch.optim.Adam(leaves, **kwargs)
    diffopt = higher_core.get_diff_optim(opt, leaves, override=override)
    diffopt.foreach = foreach
    fast = problem.leaves()
    start = list(fast)
    for _ in range(steps):
        fast = diffopt.step(problem.loss(fast), params=fast)
    meta = torch.autograd.grad(problem.loss(fast), start + list(override.get("lr", []) if override else []))
    return fast, diffopt.param_state, meta


def test_foreach_rule_gives_the_same_numbers_as_the_per_tensor_rule():
    lr = torch.tensor(0.02, dtype=torch.float64, requires_grad=True)
    cases = [
        {"lr": 0.05},
        {"lr": 0.05, "amsgrad": True, "weight_decay": 0.1, "maximize": True},
        {"lr": 0.05, "weight_decay": 0.1, "override": {"lr": [lr]}},
    ]
    if accepts_option(torch.optim.Adam, "decoupled_weight_decay"):  # torch >= 2.7
        cases.append({"lr": 0.05, "weight_decay": 0.1, "decoupled_weight_decay": True, "betas": (0.5, 0.7)})
    for kwargs in cases:
        fast_a, state_a, meta_a = _trajectory(True, **kwargs)
        fast_b, state_b, meta_b = _trajectory(False, **kwargs)
        for a, b in zip(fast_a, fast_b):
            assert torch.equal(a, b), kwargs
        for i in state_b:
            for key in state_b[i]:
                assert torch.equal(torch.as_tensor(state_a[i][key]), torch.as_tensor(state_b[i][key])), (kwargs, key)
        for a, b in zip(meta_a, meta_b):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
            assert torch.isfinite(a).all()
