"""higher-nadam: mu_product continuing from torch, zero gradients, complex parameters."""

from __future__ import annotations

import torch

import higher_core
from higher_core.testing import Problem


def _problem() -> Problem:
    return Problem(((3, 2), (2,), (2, 2)), seed=1)


def _torch_steps(opt: torch.optim.Optimizer, params: list[torch.Tensor], problem: Problem, steps: int) -> None:
    for _ in range(steps):
        opt.zero_grad()
        problem.loss(params).backward()
        opt.step()


def test_mu_product_continues_from_imported_torch_state() -> None:
    problem = _problem()
    params = problem.leaves()
    opt = torch.optim.NAdam(params, lr=0.02, momentum_decay=0.3)
    _torch_steps(opt, params, problem, steps=4)
    imported = opt.state[params[0]]["mu_product"].clone()
    assert imported.item() != 1.0

    diffopt = higher_core.get_diff_optim(opt, params)
    # imported as torch keeps it: a 0-d tensor of torch's scalar dtype, not reset
    state = diffopt.param_state[0]
    assert isinstance(state["mu_product"], torch.Tensor) and state["mu_product"].dtype == imported.dtype
    assert torch.equal(state["mu_product"], imported) and state["step"] == 4.0

    fast = [p.detach().clone().requires_grad_() for p in params]
    for step in range(5, 9):
        fast = diffopt.step(problem.loss(fast), params=fast)
        _torch_steps(opt, params, problem, steps=1)
        for i, p in enumerate(params):
            theirs = opt.state[p]["mu_product"]
            assert torch.equal(diffopt.param_state[i]["mu_product"], theirs), f"mu_product at step {step}"
            torch.testing.assert_close(fast[i].detach(), p.detach(), rtol=1e-13, atol=1e-15)
    # the product really continued: 8 factors, not 4
    mu = [0.9 * (1.0 - 0.5 * 0.96 ** (t * 0.3)) for t in range(1, 9)]
    expected = torch.tensor(1.0, dtype=imported.dtype)
    for m in mu:
        expected = expected * m
    assert torch.equal(diffopt.param_state[0]["mu_product"], expected)


def test_mu_product_carries_the_graph_of_a_learned_beta1() -> None:
    problem = _problem()
    params = problem.leaves()
    opt = torch.optim.NAdam(params, lr=0.02)
    _torch_steps(opt, params, problem, steps=2)
    beta1 = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)
    diffopt = higher_core.get_diff_optim(opt, params, override={"betas": [(beta1, 0.999)]})
    fast = [p.detach().clone().requires_grad_() for p in params]
    fast = diffopt.step(problem.loss(fast), params=fast)
    product = diffopt.param_state[0]["mu_product"]
    assert product.requires_grad and product.dtype == torch.float64
    (grad,) = torch.autograd.grad(problem.loss(fast), beta1)
    assert torch.isfinite(grad)


def test_meta_gradients_finite_with_all_zero_gradients() -> None:
    x = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    y = torch.ones(3, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.NAdam([x, y], lr=0.1, weight_decay=0.0)
    diffopt = higher_core.get_diff_optim(opt, [x, y])
    fast = [x, y]
    with torch.autograd.set_detect_anomaly(True):
        for _ in range(3):
            fast = diffopt.step((fast[1] ** 3).sum() + 0.0 * fast[0].sum(), params=fast)
        grads = torch.autograd.grad((fast[0] ** 2 + fast[1] ** 2).sum(), (x, y), create_graph=True)
        second = torch.autograd.grad(sum(g.sum() for g in grads), (x, y), allow_unused=True)
    for g in (*grads, *second):
        assert g is None or torch.isfinite(g).all()
