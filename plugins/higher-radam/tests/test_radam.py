"""higher-radam: both branches of the rectification, and gradients through each."""

from __future__ import annotations

import torch

import higher_core
from higher_core.testing import Problem

LR, BETAS, EPS = 0.02, (0.9, 0.999), 1e-8


def _problem() -> Problem:
    return Problem(((3, 2), (2,), (2, 2)), seed=1)


def _torch_steps(opt: torch.optim.Optimizer, params: list[torch.Tensor], problem: Problem, steps: int) -> None:
    for _ in range(steps):
        opt.zero_grad()
        problem.loss(params).backward()
        opt.step()


def _rho(step: int, beta2: float) -> float:
    rho_inf = 2 / (1 - beta2) - 1
    return rho_inf - 2 * step * beta2**step / (1 - beta2**step)


def test_both_rectification_branches_in_ten_steps() -> None:
    problem = _problem()
    params = problem.leaves()
    opt = torch.optim.RAdam(params, lr=LR, betas=BETAS, eps=EPS)
    diffopt = higher_core.get_diff_optim(opt, params)
    fast = problem.leaves()
    beta1, beta2 = BETAS
    rho_inf = 2 / (1 - beta2) - 1
    taken = []
    for t in range(1, 11):
        before = [p.detach() for p in fast]
        fast = diffopt.step(problem.loss(fast), params=fast)
        _torch_steps(opt, params, problem, steps=1)
        m, v = diffopt.param_state[0]["exp_avg"].detach(), diffopt.param_state[0]["exp_avg_sq"].detach()
        corrected = m / (1 - beta1**t)
        unrectified = before[0] - LR * corrected
        rho = _rho(t, beta2)
        rect = ((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho)) ** 0.5 if rho > 4 else 0.0
        rectified = before[0] - LR * corrected * rect * (1 - beta2**t) ** 0.5 / (v.sqrt() + EPS)
        ours = fast[0].detach()
        if torch.allclose(ours, unrectified, rtol=1e-12, atol=0):
            taken.append("unrectified")
        elif torch.allclose(ours, rectified, rtol=1e-12, atol=0):
            taken.append("rectified")
        else:
            raise AssertionError(f"step {t}: the update matches neither branch")
        for i, p in enumerate(params):
            torch.testing.assert_close(fast[i].detach(), p.detach(), rtol=1e-13, atol=1e-15)
    assert taken == ["unrectified"] * 5 + ["rectified"] * 5, taken


def _unrolled_after_warmup(warmup: int, steps: int, problem: Problem, **kwargs: object):
    params = problem.leaves()
    opt = torch.optim.RAdam(params, **kwargs)
    _torch_steps(opt, params, problem, steps=warmup)

    def unrolled(*initial: torch.Tensor, override: dict | None = None) -> torch.Tensor:
        diffopt = higher_core.get_diff_optim(opt, params, override=override)
        fast = list(initial)
        for _ in range(steps):
            fast = diffopt.step(problem.loss(fast), params=fast)
        return problem.loss(fast)

    return opt, unrolled


def test_gradcheck_through_rectified_steps() -> None:
    # the shared suite unrolls only steps 1-2, which are never rectified; here the
    # torch optimizer has taken 6 steps, so the unrolled steps 7-8 are rectified
    problem = Problem(((2, 2), (2,)), seed=2)
    assert _rho(7, 0.99) > 5
    _, unrolled = _unrolled_after_warmup(6, 2, problem, lr=0.05, betas=(0.9, 0.99), weight_decay=0.1)
    inputs = tuple(problem.leaves())
    assert torch.autograd.gradcheck(unrolled, inputs)
    assert torch.autograd.gradgradcheck(unrolled, inputs)


def test_hypergradients_through_rectified_steps() -> None:
    problem = Problem(((2, 2), (2,)), seed=2)
    _, unrolled = _unrolled_after_warmup(6, 2, problem, lr=0.05, betas=(0.9, 0.99), eps=1e-3)

    def as_tensor(value: float) -> torch.Tensor:
        return torch.tensor(value, dtype=torch.float64, requires_grad=True)

    checks = {
        "lr": lambda h: unrolled(*problem.leaves(), override={"lr": [h]}),
        "beta1": lambda h: unrolled(*problem.leaves(), override={"betas": [(h, 0.99)]}),
        "beta2": lambda h: unrolled(*problem.leaves(), override={"betas": [(0.9, h)]}),
        "eps": lambda h: unrolled(*problem.leaves(), override={"eps": [h]}),
    }
    start = {"lr": 0.05, "beta1": 0.9, "beta2": 0.99, "eps": 1e-3}
    for name, fn in checks.items():
        h = as_tensor(start[name])
        assert torch.autograd.gradcheck(fn, (h,)), name
        # in the rectified regime beta2 and eps really act on the update
        (grad,) = torch.autograd.grad(fn(h), h)
        assert grad.abs() > 0, name


def test_meta_gradients_finite_with_zero_gradients_in_rectified_steps() -> None:
    problem = _problem()
    problem.data[1] = torch.zeros_like(problem.data[1])
    problem.data[0].view(-1)[0] = 0.0
    params = problem.leaves()
    opt = torch.optim.RAdam(params, lr=LR)
    diffopt = higher_core.get_diff_optim(opt, params)
    initial = problem.leaves()
    fast = list(initial)
    with torch.autograd.set_detect_anomaly(True):
        for _ in range(8):
            fast = diffopt.step(problem.loss(fast), params=fast)
        meta = torch.autograd.grad(problem.loss(fast), initial, create_graph=True)
        second = torch.autograd.grad(sum(g.sum() for g in meta), initial, allow_unused=True)
    _torch_steps(opt, params, problem, steps=8)
    for i, p in enumerate(params):
        torch.testing.assert_close(fast[i].detach(), p.detach(), rtol=1e-13, atol=1e-15)
    for g in (*meta, *second):
        assert g is None or torch.isfinite(g).all()
