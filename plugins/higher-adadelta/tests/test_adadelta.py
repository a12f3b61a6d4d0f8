"""Adadelta-specific behaviour of higher-adadelta (the shared suite covers the rest)."""

from __future__ import annotations

import torch

import higher_core
from higher_core.testing import Problem


def _run(problem, opt, params, steps):
    diffopt = higher_core.get_diff_optim(opt, params)
    initial = problem.leaves()
    fast = list(initial)
    for _ in range(steps):
        fast = diffopt.step(problem.loss(fast), params=fast)
    return initial, fast, diffopt


def test_eps_zero_meta_gradient_is_finite():
    # with eps=0 the accumulated update starts at exactly 0: sqrt(0) is taken every step
    problem = Problem(((3, 2), (2,)))
    params = problem.leaves()
    opt = torch.optim.Adadelta(params, eps=0.0)
    initial, fast, diffopt = _run(problem, opt, params, 3)
    assert all(torch.equal(diffopt.param_state[i]["acc_delta"], torch.zeros_like(p)) for i, p in enumerate(params))
    meta = torch.autograd.grad(problem.loss(fast), initial)
    assert all(torch.isfinite(g).all() for g in meta)
    # torch does not move the parameters either (0 / sqrt(v) * g = 0)
    for _ in range(3):
        opt.zero_grad()
        problem.loss(params).backward()
        opt.step()
    for ours, theirs in zip(fast, params):
        assert torch.equal(ours.detach(), theirs.detach())


def test_default_eps_rows():
    # the table's rows use eps >= 1e-4 (see _conformance.py); torch's default eps here
    from dataclasses import replace

    from higher_adadelta._conformance import ADADELTA_INFO

    from higher_core.testing import CHECKS, OptimizerInput, run_conformance

    rows = [OptimizerInput({}, "all defaults"), OptimizerInput({"rho": 0.5, "weight_decay": 0.1}, "rho+decay")]
    info = replace(ADADELTA_INFO, inputs=rows, error_inputs=())
    run_conformance(info, checks=[c for c in CHECKS if c != "hypergradients"])


def test_hypergradient_at_default_eps_with_a_finer_step():
    problem = Problem(((3, 2), (2,), (2, 2)))
    params = problem.leaves()
    opt = torch.optim.Adadelta([{"params": params[:-1]}, {"params": params[-1:], "lr": 0.5}])

    def unrolled(eps):
        diffopt = higher_core.get_diff_optim(opt, params, override={"eps": [eps]})
        fast = problem.leaves()
        for _ in range(2):
            fast = diffopt.step(problem.loss(fast), params=fast)
        return problem.loss(fast)

    eps = torch.tensor(1e-6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(unrolled, (eps,), eps=1e-10, atol=1e-6, rtol=1e-4)
