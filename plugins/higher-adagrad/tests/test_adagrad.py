"""Adagrad-specific behaviour of higher-adagrad (the shared suite covers the rest)."""

from __future__ import annotations

import pytest
import torch

import higher_core
from higher_core.testing import Problem


def _problem_and_opt(**kwargs):
    problem = Problem(((3, 2), (2,)))
    params = problem.leaves()
    return problem, params, torch.optim.Adagrad(params, **kwargs)


def _torch_step(opt, params, problem):
    opt.zero_grad()
    problem.loss(params).backward()
    opt.step()


def test_constructor_state_is_recreated_identically():
    _, params, opt = _problem_and_opt(lr=0.1, initial_accumulator_value=0.7)
    assert all(len(opt.state[p]) == 2 for p in params)  # torch made state eagerly
    diffopt = higher_core.get_diff_optim(opt, params)
    assert diffopt.param_state == {}
    for i, p in enumerate(params):
        fresh = diffopt.init_state(p, diffopt.param_groups[0])
        assert fresh["step"] == opt.state[p]["step"].item() == 0
        assert torch.equal(fresh["sum"], opt.state[p]["sum"])


def test_modified_initial_state_is_imported():
    problem, params, opt = _problem_and_opt(lr=0.1, initial_accumulator_value=0.7)
    with torch.no_grad():
        opt.state[params[0]]["sum"].fill_(3.0)  # no longer the constructor's accumulator
    diffopt = higher_core.get_diff_optim(opt, params)
    assert set(diffopt.param_state) == {0}
    fast = [p.detach().clone().requires_grad_() for p in params]
    for _ in range(3):
        fast = diffopt.step(problem.loss(fast), params=fast)
        _torch_step(opt, params, problem)
    for ours, theirs in zip(fast, params):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=0)


def test_group_initial_accumulator_value_is_ignored_like_torch():
    problem = Problem(((3, 2), (2,)))
    params = problem.leaves()
    opt = torch.optim.Adagrad([{"params": [params[0]]},
                               {"params": [params[1]], "initial_accumulator_value": 5.0}],
                              lr=0.1, initial_accumulator_value=0.25)
    diffopt = higher_core.get_diff_optim(opt, params)
    fast = [p.detach().clone().requires_grad_() for p in params]
    fast = diffopt.step(problem.loss(fast), params=fast)
    _torch_step(opt, params, problem)
    for i, p in enumerate(params):
        assert torch.equal(diffopt.param_state[i]["sum"], opt.state[p]["sum"])
        torch.testing.assert_close(fast[i], p, rtol=1e-12, atol=0)


def test_create_diff_optim_builds_state_from_real_params():
    problem = Problem(((3, 2), (2,)))
    fast = problem.leaves()
    diffopt = higher_core.optim.create_diff_optim(
        torch.optim.Adagrad, {"lr": 0.1, "initial_accumulator_value": 0.5}, params=fast)
    fast = diffopt.step(problem.loss(fast), params=fast)
    assert all(torch.isfinite(p).all() and not p.is_meta for p in fast)
    assert not diffopt.param_state[0]["sum"].is_meta


def test_initial_accumulator_value_receives_hypergradient():
    problem, params, opt = _problem_and_opt(lr=0.1, initial_accumulator_value=0.5)
    value = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    diffopt = higher_core.get_diff_optim(opt, params, override={"initial_accumulator_value": [value]})
    fast = problem.leaves()
    for _ in range(2):
        fast = diffopt.step(problem.loss(fast), params=fast)
    (hypergradient,) = torch.autograd.grad(problem.loss(fast), value)
    assert torch.isfinite(hypergradient) and hypergradient != 0


def test_fused_is_refused_off_the_cpu_as_torch_refuses_it(monkeypatch):
    """torch's fused Adagrad runs on the CPU only (on CUDA its step raises); so does ours.
    Here the CPU is taken off the list of fused devices to stand in for CUDA;
    tests/test_cuda.py checks CUDA itself against torch's refusal."""
    from higher_adagrad import _adagrad

    param = torch.ones(3, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adagrad([param], lr=0.1, fused=True)
    monkeypatch.setattr(_adagrad, "_FUSED_DEVICES", ("mtia",))
    diffopt = higher_core.get_diff_optim(opt, [param])
    with pytest.raises(ValueError, match=r"fused=True\) supports parameters on mtia only.*drop fused=True"):
        diffopt.step((param * param).sum(), params=[param])
