"""higher-adamax: the infinity norm, zero gradients and complex parameters."""

from __future__ import annotations

import torch

import higher_core
from higher_core.testing import Problem


def _problem() -> Problem:
    return Problem(((3, 2), (2,), (2, 2)), seed=1)


def test_infinity_norm_matches_torch_and_holds_the_max() -> None:
    problem = _problem()
    params = problem.leaves()
    opt = torch.optim.Adamax(params, lr=0.05, betas=(0.9, 0.5), eps=1e-3)
    diffopt = higher_core.get_diff_optim(opt, params)
    fast = problem.leaves()
    previous = [torch.zeros_like(p) for p in fast]
    for _ in range(4):
        grads = torch.autograd.grad(problem.loss(fast), fast)
        fast = diffopt.step(problem.loss(fast), params=fast)
        for i, (g, u_prev) in enumerate(zip(grads, previous)):
            expected = torch.maximum(0.5 * u_prev, g.abs() + 1e-3)
            assert torch.equal(diffopt.param_state[i]["exp_inf"].detach(), expected)
            previous[i] = expected
        opt.zero_grad()
        problem.loss(params).backward()
        opt.step()
    for i, p in enumerate(params):
        assert torch.equal(diffopt.param_state[i]["exp_inf"].detach(), opt.state[p]["exp_inf"])
        torch.testing.assert_close(fast[i].detach(), p.detach(), rtol=1e-13, atol=1e-15)


def test_meta_gradients_finite_with_all_zero_gradients() -> None:
    # abs(0) and the max with eps: a parameter that never gets a gradient still has
    # a finite (zero) meta-gradient, also through the second derivative
    x = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    y = torch.ones(3, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adamax([x, y], lr=0.1)
    diffopt = higher_core.get_diff_optim(opt, [x, y])
    fast = [x, y]
    with torch.autograd.set_detect_anomaly(True):
        for _ in range(3):
            loss = (fast[1] ** 3).sum() + 0.0 * fast[0].sum()
            fast = diffopt.step(loss, params=fast)
        grads = torch.autograd.grad((fast[0] ** 2 + fast[1] ** 2).sum(), (x, y), create_graph=True)
        second = torch.autograd.grad(sum(g.sum() for g in grads), (x, y), allow_unused=True)
    for g in (*grads, *second):
        assert g is None or torch.isfinite(g).all()
