"""Adafactor-specific behaviour of higher-adafactor (the shared suite covers the rest)."""

from __future__ import annotations

import pytest
import torch

from higher_core.compat import optimizer_available

if not optimizer_available("Adafactor"):  # the plugin registers nothing there (tests/test_compat.py)
    pytest.skip("torch.optim.Adafactor needs torch >= 2.5", allow_module_level=True)

import higher_core  # noqa: E402
from higher_core.testing import Problem  # noqa: E402

SHAPES = ((3, 2), (2,), (2, 2, 3))


def _unrolled(problem, opt, params, steps, override=None):
    def run(*initial):
        diffopt = higher_core.get_diff_optim(opt, params, override=override)
        fast = list(initial)
        for _ in range(steps):
            fast = diffopt.step(problem.loss(fast), params=fast)
        return problem.loss(fast)

    return run


def _torch_steps(problem, opt, params, steps):
    for _ in range(steps):
        opt.zero_grad()
        problem.loss(params).backward()
        opt.step()


def test_factored_state_shapes_match_torch():
    problem = Problem(SHAPES)
    params = problem.leaves()
    opt = torch.optim.Adafactor(params, lr=0.05)
    diffopt = higher_core.get_diff_optim(opt, params)
    fast = problem.leaves()
    for _ in range(4):
        fast = diffopt.step(problem.loss(fast), params=fast)
    _torch_steps(problem, opt, params, 4)
    assert diffopt.param_state[0]["row_var"].shape == (3, 1) and diffopt.param_state[0]["col_var"].shape == (1, 2)
    assert diffopt.param_state[2]["row_var"].shape == (2, 2, 1) and diffopt.param_state[2]["col_var"].shape == (2, 1, 3)
    assert set(diffopt.param_state[1]) == {"step", "variance"}
    for i, (ours, theirs) in enumerate(zip(fast, params)):
        assert torch.equal(ours.detach(), theirs.detach())
        for key, value in opt.state[theirs].items():
            expected = value.item() if key == "step" else value
            assert torch.equal(torch.as_tensor(diffopt.param_state[i][key]).detach(), torch.as_tensor(expected))


def test_scalar_parameter_keeps_a_variance():
    param = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adafactor([param], lr=0.05)
    diffopt = higher_core.get_diff_optim(opt, [param])
    fast = [param.detach().clone().requires_grad_()]

    def loss(p):
        return (1.3 * p).sin() + p * p

    for _ in range(3):
        fast = diffopt.step(loss(fast[0]), params=fast)
        opt.zero_grad()
        loss(param).backward()
        opt.step()
    assert diffopt.param_state[0]["variance"].dim() == 0
    assert torch.equal(diffopt.param_state[0]["variance"], opt.state[param]["variance"])
    assert torch.equal(fast[0].detach(), param.detach())


def test_eps_hypergradients():
    # eps1 large enough to clamp small variance estimates, eps2 above RMS(theta): both matter
    problem = Problem(SHAPES)
    params = problem.leaves()
    opt = torch.optim.Adafactor([{"params": params[:2]}, {"params": params[2:]}], lr=0.05, eps=(0.3, 2.0))

    def of_eps1(h):
        return _unrolled(problem, opt, params, 2, override={"eps": [(h, 2.0)]})(*problem.leaves())

    def of_eps2(h):
        return _unrolled(problem, opt, params, 2, override={"eps": [(0.3, h)]})(*problem.leaves())

    for fn, value in ((of_eps1, 0.3), (of_eps2, 2.0)):
        h = torch.tensor(value, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.grad(fn(h), h)[0] != 0
        assert torch.autograd.gradcheck(fn, (h,))


def test_d_hypergradient_away_from_the_kink():
    # d = 1 (the default) is a kink: a vector's first update has RMS exactly 1
    problem = Problem(SHAPES)
    params = problem.leaves()
    opt = torch.optim.Adafactor(params, lr=0.05, d=1.05)

    def of_d(h):
        return _unrolled(problem, opt, params, 3, override={"d": [h]})(*problem.leaves())

    h = torch.tensor(1.05, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.grad(of_d(h), h)[0] != 0  # clipping is active for some update
    assert torch.autograd.gradcheck(of_d, (h,))


def test_lr_only_caps_the_relative_step():
    # rho_t = min(lr, 1/sqrt(t)): at t = 4, 1/sqrt(t) = 0.5 < lr, so lr (no weight decay) has no effect
    problem = Problem(SHAPES)
    params = problem.leaves()
    opt = torch.optim.Adafactor(params, lr=0.9)
    _torch_steps(problem, opt, params, 3)
    lr = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)
    diffopt = higher_core.get_diff_optim(opt, params, override={"lr": [lr]})
    fast = [p.detach().clone().requires_grad_() for p in params]
    fast = diffopt.step(problem.loss(fast), params=fast)
    assert torch.autograd.grad(problem.loss(fast), lr, allow_unused=True)[0] is None
    _torch_steps(problem, opt, params, 1)
    assert all(torch.equal(a.detach(), b.detach()) for a, b in zip(fast, params))


def test_float32_tensor_lr_matches_torch():
    # torch keeps a float32 tensor lr as a tensor: the step size alpha_t is then rounded to float32
    problem = Problem(SHAPES)
    params = problem.leaves()
    opt = torch.optim.Adafactor(params, lr=torch.tensor(0.03), weight_decay=0.2)
    diffopt = higher_core.get_diff_optim(opt, params)
    fast = problem.leaves()
    for _ in range(4):
        fast = diffopt.step(problem.loss(fast), params=fast)
    _torch_steps(problem, opt, params, 4)
    assert all(torch.equal(a.detach(), b.detach()) for a, b in zip(fast, params))


def test_zero_gradient_row_second_order_meta_gradient_is_finite():
    # a whole row of the gradient is exactly zero: torch.norm's second derivative is nan there
    problem = Problem(SHAPES)
    problem.data[0][1] = 0.0
    params = problem.leaves()
    opt = torch.optim.Adafactor(params, lr=0.05)
    initial = problem.leaves()
    with torch.autograd.set_detect_anomaly(True):
        loss = _unrolled(problem, opt, params, 2)(*initial)
        meta = torch.autograd.grad(loss, initial, create_graph=True)
        second = torch.autograd.grad(sum(g.sum() for g in meta), initial, allow_unused=True)
    assert all(g is None or torch.isfinite(g).all() for g in (*meta, *second))


def test_relative_step_and_clipping_gradgradcheck():
    problem = Problem(((3, 2), (2,)))
    params = problem.leaves()
    opt = torch.optim.Adafactor(params, lr=0.7, d=1.05, weight_decay=0.1, eps=(1e-3, 1e-3))
    fn = _unrolled(problem, opt, params, 3)
    inputs = tuple(problem.leaves())
    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)
