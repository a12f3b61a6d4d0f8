"""Rprop-specific behaviour of higher-rprop (the shared suite covers the rest).

Rprop steps by the *sign* of the gradient, so the update has zero derivative with
respect to the gradient: meta-gradients reach the initial weights only through the
identity path, and hypergradients only through the step sizes.
"""

from __future__ import annotations

import torch

import higher_core
from higher_core.testing import Problem

SHAPES = ((3, 2), (2,), (2, 2))


def _unroll(diffopt, problem, initial, steps):
    fast = list(initial)
    for _ in range(steps):
        fast = diffopt.step(problem.loss(fast), params=fast)
    return fast


def test_meta_gradient_is_the_final_gradient():
    # d theta_k / d theta_0 = I, so dL(theta_k)/d theta_0 = grad L(theta_k), exactly
    problem = Problem(SHAPES)
    params = problem.leaves()
    opt = torch.optim.Rprop(params, lr=0.05, etas=(0.4, 1.3))
    initial = problem.leaves()
    fast = _unroll(higher_core.get_diff_optim(opt, params), problem, initial, 6)
    meta = torch.autograd.grad(problem.loss(fast), initial, create_graph=True)
    final = torch.autograd.grad(problem.loss(fast), fast, create_graph=True)
    for m, f in zip(meta, final):
        assert torch.equal(m, f)
    # second order too: the Hessian w.r.t. theta_0 is the Hessian at theta_k
    direction = [torch.ones_like(p) for p in initial]
    hvp_initial = torch.autograd.grad(meta, initial, direction)
    hvp_final = torch.autograd.grad(final, fast, direction)
    for a, b in zip(hvp_initial, hvp_final):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=0)


def _sign_pattern(problem, lr, etas, steps):
    """torch.optim.Rprop's run: per step, how often each eta was applied and the step taken."""
    params = problem.leaves()
    opt = torch.optim.Rprop(params, lr=lr, etas=etas)
    plus = [torch.zeros_like(p) for p in params]
    minus = [torch.zeros_like(p) for p in params]
    record = []
    for _ in range(steps):
        opt.zero_grad()
        problem.loss(params).backward()
        agreement = [p.grad * opt.state[p]["prev"] if opt.state[p] else torch.zeros_like(p) for p in params]
        opt.step()
        plus = [n + (a > 0) for n, a in zip(plus, agreement)]
        minus = [n + (a < 0) for n, a in zip(minus, agreement)]
        record.append([(n_plus.clone(), n_minus.clone(), opt.state[p]["step_size"].clone(),
                        opt.state[p]["prev"].sign()) for p, n_plus, n_minus in zip(params, plus, minus)])
    return params, record


def test_hypergradients_flow_only_through_the_step_size_product():
    # without clamping s_t = lr * etaplus**n_plus * etaminus**n_minus and
    # theta_k = theta_0 - sum_t sign(g'_t) s_t, with the sign pattern fixed
    problem = Problem(SHAPES)
    lr, etas, steps = 0.05, (0.4, 1.3), 6
    params = problem.leaves()
    opt = torch.optim.Rprop(params, lr=lr, etas=etas)
    hyper = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (lr, *etas)]
    diffopt = higher_core.get_diff_optim(opt, params, override={"lr": [hyper[0]], "etas": [tuple(hyper[1:])]})
    fast = _unroll(diffopt, problem, problem.leaves(), steps)
    final_grad = torch.autograd.grad(problem.loss(fast), fast, retain_graph=True)
    d_lr, d_minus, d_plus = torch.autograd.grad(problem.loss(fast), hyper)

    reference, record = _sign_pattern(problem, lr, etas, steps)
    for ours, theirs in zip(fast, reference):
        assert torch.equal(ours.detach(), theirs.detach())
    assert any((n_minus > 0).any() for n_plus, n_minus, _, _ in record[-1]), "no sign flip: weak test"
    expected = [0.0, 0.0, 0.0]
    for per_param in record:
        for g, (n_plus, n_minus, size, direction) in zip(final_grad, per_param):
            taken = -(g * direction * size)  # dL/d s_t times s_t
            expected[0] += (taken / lr).sum()
            expected[1] += (taken * n_minus / etas[0]).sum()
            expected[2] += (taken * n_plus / etas[1]).sum()
    for ours, theirs in zip((d_lr, d_minus, d_plus), expected):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-14)
        assert ours != 0


def test_lr_only_sets_the_first_step_size():
    # continuing from torch's state, lr is no longer read (as in torch)
    problem = Problem(SHAPES)
    params = problem.leaves()
    opt = torch.optim.Rprop(params, lr=0.05)
    opt.zero_grad()
    problem.loss(params).backward()
    opt.step()
    lr = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)
    diffopt = higher_core.get_diff_optim(opt, params, override={"lr": [lr]})
    fast = _unroll(diffopt, problem, [p.detach().clone().requires_grad_() for p in params], 3)
    (hypergradient,) = torch.autograd.grad(problem.loss(fast), lr, allow_unused=True)
    assert hypergradient is None
