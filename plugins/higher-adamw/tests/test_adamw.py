"""higher-adamw: decoupled weight decay, and no subclass warning."""

from __future__ import annotations

import warnings

import torch

import higher_core
from higher_adam import DifferentiableAdam
from higher_adamw import DifferentiableAdamW
from higher_core.compat import torch_at_least
from higher_core.errors import SubclassResolutionWarning
from higher_core.testing import Problem


def _problem() -> Problem:
    return Problem(((3, 2), (2,), (2, 2)), seed=1)


def test_adamw_is_adam_with_a_flag_from_torch_2_7_and_its_own_class_before() -> None:
    # the plugin reuses higher-adam's rule with the decay always decoupled: from torch 2.7 AdamW is
    # Adam with decoupled_weight_decay=True in every group; before, a class of its own without the key
    assert issubclass(DifferentiableAdamW, DifferentiableAdam)
    opt = torch.optim.AdamW(_problem().leaves())
    assert opt.param_groups[0]["weight_decay"] == 1e-2
    if torch_at_least(2, 7):
        assert issubclass(torch.optim.AdamW, torch.optim.Adam)
        assert opt.param_groups[0]["decoupled_weight_decay"] is True
    else:
        assert not issubclass(torch.optim.AdamW, torch.optim.Adam)
        assert "decoupled_weight_decay" not in opt.param_groups[0]


def test_no_subclass_resolution_warning() -> None:
    params = _problem().leaves()
    opt = torch.optim.AdamW(params, lr=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SubclassResolutionWarning)
        diffopt = higher_core.get_diff_optim(opt, params)
    assert type(diffopt) is DifferentiableAdamW


def _run_diff(opt: torch.optim.Optimizer, params: list[torch.Tensor], problem: Problem,
              steps: int) -> list[torch.Tensor]:
    diffopt = higher_core.get_diff_optim(opt, params)
    fast = [p.detach().clone().requires_grad_() for p in params]
    for _ in range(steps):
        fast = diffopt.step(problem.loss(fast), params=fast)
    return fast


def _run_torch(opt: torch.optim.Optimizer, params: list[torch.Tensor], problem: Problem, steps: int) -> None:
    for _ in range(steps):
        opt.zero_grad()
        problem.loss(params).backward()
        opt.step()


def test_weight_decay_is_decoupled() -> None:
    problem = _problem()
    params = problem.leaves()
    opt = torch.optim.AdamW(params, lr=0.05, weight_decay=0.5)
    fast = _run_diff(opt, params, problem, steps=5)
    _run_torch(opt, params, problem, steps=5)
    for ours, theirs in zip(fast, params):
        torch.testing.assert_close(ours.detach(), theirs.detach(), rtol=1e-12, atol=1e-14)

    # the decay is not folded into the gradient: coupled (L2) Adam lands elsewhere
    coupled_params = problem.leaves()
    coupled = torch.optim.Adam(coupled_params, lr=0.05, weight_decay=0.5)
    _run_torch(coupled, coupled_params, problem, steps=5)
    assert max((a.detach() - b.detach()).abs().max().item() for a, b in zip(fast, coupled_params)) > 1e-3


def test_decay_does_not_enter_the_moments() -> None:
    # with decoupled decay the moments depend on the gradients only
    problem = _problem()
    params = problem.leaves()
    opt = torch.optim.AdamW(params, lr=0.05, weight_decay=0.9)
    diffopt = higher_core.get_diff_optim(opt, params)
    fast = problem.leaves()
    grads = torch.autograd.grad(problem.loss(fast), fast)
    diffopt.step(problem.loss(fast), params=fast)
    for i, g in enumerate(grads):
        torch.testing.assert_close(diffopt.param_state[i]["exp_avg"], 0.1 * g, rtol=1e-14, atol=0)
