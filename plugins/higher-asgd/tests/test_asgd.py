"""ASGD-specific behaviour of higher-asgd (the shared suite covers the rest)."""

from __future__ import annotations

import pytest
import torch

import higher_core
from higher_core.testing import Problem

SHAPES = ((3, 2), (2,), (2, 2))


def _torch_run(problem, steps, **kwargs):
    params = problem.leaves()
    opt = torch.optim.ASGD(params, **kwargs)
    for _ in range(steps):
        opt.zero_grad()
        problem.loss(params).backward()
        opt.step()
    return params, opt


def _unroll(diffopt, problem, steps):
    fast = problem.leaves()
    for _ in range(steps):
        fast = diffopt.step(problem.loss(fast), params=fast)
    return fast


def test_average_matches_torch_once_averaging_started():
    problem = Problem(SHAPES)
    kwargs = {"lr": 0.05, "lambd": 0.3, "alpha": 0.6, "t0": 3.0, "weight_decay": 0.05}
    params, opt = _torch_run(problem, 0, **kwargs)
    diffopt = higher_core.get_diff_optim(opt, params)
    fast = _unroll(diffopt, problem, 10)
    params, opt = _torch_run(problem, 10, **kwargs)
    for i, (ours, p) in enumerate(zip(fast, params)):
        theirs = opt.state[p]
        assert theirs["mu"].item() == pytest.approx(1 / 7)  # mu = 1 / (10 - t0): averaging is on
        assert diffopt.param_state[i]["mu"] == theirs["mu"].item()
        assert not torch.allclose(theirs["ax"], p)  # averaging is on: ax is not a copy
        assert torch.equal(diffopt.param_state[i]["ax"], theirs["ax"])
        assert torch.equal(ours.detach(), p.detach())
        assert diffopt.param_state[i]["eta"] == theirs["eta"].item()
        assert diffopt.param_state[i]["step"] == theirs["step"].item() == 10


def test_eta_and_mu_are_imported_as_numbers():
    problem = Problem(SHAPES)
    params, opt = _torch_run(problem, 6, lr=0.05, lambd=0.3, t0=2.0)
    diffopt = higher_core.get_diff_optim(opt, params)
    for i, p in enumerate(params):
        for key in ("step", "eta", "mu"):
            assert isinstance(diffopt.param_state[i][key], float)
            assert diffopt.param_state[i][key] == opt.state[p][key].item()


def test_ours_follows_torchs_single_tensor_path():
    # torch's foreach path computes eta in float32 tensor arithmetic, its single-tensor path
    # in double rounded to float32: they differ slightly, and ours is the single-tensor one
    problem = Problem(SHAPES)
    kwargs = {"lr": 0.05, "lambd": 0.3, "t0": 2.0}
    single, _ = _torch_run(problem, 10, foreach=False, **kwargs)
    multi, _ = _torch_run(problem, 10, foreach=True, **kwargs)
    fresh, opt = _torch_run(problem, 0, foreach=True, **kwargs)
    fast = _unroll(higher_core.get_diff_optim(opt, fresh), problem, 10)
    for ours, s, m in zip(fast, single, multi):
        assert torch.equal(ours.detach(), s.detach())
        torch.testing.assert_close(ours.detach(), m.detach(), rtol=1e-6, atol=0)


def test_average_is_differentiable_in_t0():
    problem = Problem(SHAPES)
    params, opt = _torch_run(problem, 0, lr=0.05, t0=2.5)

    def average_after_six_steps(t0):
        diffopt = higher_core.get_diff_optim(opt, params, override={"t0": [t0]})
        _unroll(diffopt, problem, 6)
        return sum(diffopt.param_state[i]["ax"].sum() for i in range(len(params)))

    t0 = torch.tensor(2.5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(average_after_six_steps, (t0,))
    (gradient,) = torch.autograd.grad(average_after_six_steps(t0), t0)
    assert gradient != 0


def test_lr_hypergradient_flows_through_eta():
    problem = Problem(SHAPES)
    params, opt = _torch_run(problem, 0, lr=0.05, lambd=0.3)
    lr = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)
    diffopt = higher_core.get_diff_optim(opt, params, override={"lr": [lr]})
    fast = _unroll(diffopt, problem, 3)
    assert all(diffopt.param_state[i]["eta"].requires_grad for i in range(len(params)))
    (gradient,) = torch.autograd.grad(problem.loss(fast), lr)
    assert torch.isfinite(gradient) and gradient != 0
