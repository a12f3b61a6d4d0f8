"""RMSprop-specific behaviour of higher-rmsprop (the shared suite covers the rest)."""

from __future__ import annotations

import torch

import higher_core
from higher_core.testing import Problem


def _unroll(diffopt, problem, steps):
    initial = problem.leaves()
    fast = list(initial)
    for _ in range(steps):
        fast = diffopt.step(problem.loss(fast), params=fast)
    return initial, fast


def test_centered_variance_exactly_zero_keeps_meta_gradient_finite():
    # a loss linear in the weights has a constant gradient: after one step the centered
    # variance v - g_avg**2 is exactly 0 in every entry where alpha makes it so (alpha=0)
    slope = torch.tensor([0.5, -2.0, 0.0], dtype=torch.float64)
    weights = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.RMSprop([weights], lr=0.1, alpha=0.0, centered=True, momentum=0.3)
    diffopt = higher_core.get_diff_optim(opt, [weights])
    initial = weights.detach().clone().requires_grad_()
    fast = [initial]
    with torch.autograd.set_detect_anomaly(True):
        for _ in range(3):
            # the 0 * w**2 term adds nothing but makes the gradient depend on the weights, so
            # the meta-gradient runs through the square root at 0 (torch.sqrt there: nan)
            fast = diffopt.step((fast[0] * slope).sum() + 0.0 * fast[0].pow(2).sum(), params=fast)
        variance = diffopt.param_state[0]["square_avg"] - diffopt.param_state[0]["grad_avg"] ** 2
        assert torch.equal(variance, torch.zeros(3, dtype=torch.float64))
        (meta,) = torch.autograd.grad((fast[0] ** 2).sum(), initial)
    assert torch.isfinite(meta).all()
    for _ in range(3):  # torch's numbers
        opt.zero_grad()
        ((weights * slope).sum()).backward()
        opt.step()
    assert torch.equal(fast[0].detach(), weights.detach())


def test_tensor_momentum_override_from_zero_momentum():
    problem = Problem(((3, 2), (2,)))
    params = problem.leaves()
    opt = torch.optim.RMSprop(params, lr=0.01)  # no momentum: torch keeps no buffer
    momentum = torch.tensor(0.0, dtype=torch.float64, requires_grad=True)
    diffopt = higher_core.get_diff_optim(opt, params, override={"momentum": [momentum]})
    _, fast = _unroll(diffopt, problem, 3)
    (hypergradient,) = torch.autograd.grad(problem.loss(fast), momentum)
    assert torch.isfinite(hypergradient) and hypergradient != 0
    # at momentum 0 the momentum path gives plain RMSprop's numbers
    _, plain = _unroll(higher_core.get_diff_optim(opt, params), problem, 3)
    for a, b in zip(fast, plain):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
