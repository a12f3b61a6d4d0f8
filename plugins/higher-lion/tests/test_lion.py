"""higher-lion: the options the conformance kit (tests/test_conformance.py) cannot reach."""

from __future__ import annotations

import sys
import types

import lion_pytorch
import lion_pytorch.lion_pytorch as lion_module
import pytest
import torch

import higher_core
from higher_core.testing import Problem

SHAPES = ((3, 2), (2,), (2, 2))


def _torch_step(opt, ref, problem):
    opt.zero_grad()
    problem.loss(ref).backward()
    opt.step()


def test_use_triton_is_refused(monkeypatch):
    # lion_pytorch imports its Triton kernel at construction (and exits without triton):
    # a stand-in module lets the real constructor run here
    def triton_update_fn(p, grad, exp_avg, lr, wd, beta1, beta2):
        raise AssertionError("never called")

    monkeypatch.setitem(sys.modules, "lion_pytorch.triton",
                        types.SimpleNamespace(update_fn=triton_update_fn))
    p = torch.zeros(2, requires_grad=True)
    opt = lion_pytorch.Lion([p], use_triton=True)
    assert opt.update_fn is triton_update_fn
    with pytest.raises(ValueError, match="use_triton=True is not supported"):
        higher_core.get_diff_optim(opt, [p])
    assert lion_module.update_fn is not triton_update_fn


def test_decoupled_weight_decay_uses_the_constructor_lr():
    # lion_pytorch divides weight_decay by the lr given to the constructor, whatever a group's
    # lr becomes later (a scheduler); the differentiable copy does the same
    problem = Problem(SHAPES)
    ref = problem.leaves()
    opt = lion_pytorch.Lion(ref, lr=0.01, weight_decay=0.01, decoupled_weight_decay=True)
    _torch_step(opt, ref, problem)
    opt.param_groups[0]["lr"] = 0.05
    diffopt = higher_core.get_diff_optim(opt, ref)
    fast = [p.detach().clone().requires_grad_() for p in ref]
    for _ in range(5):
        fast = diffopt.step(problem.loss(fast), params=fast)
        _torch_step(opt, ref, problem)
    for ours, theirs in zip(fast, ref):
        assert torch.equal(ours.detach(), theirs.detach())


def test_meta_gradients_reach_lr_and_weight_decay_but_not_betas():
    problem = Problem(SHAPES)
    ref = problem.leaves()
    opt = lion_pytorch.Lion(ref, lr=0.01, weight_decay=0.1)
    override = higher_core.optim.get_trainable_opt_params(opt)
    assert sorted(override) == ["betas", "lr", "weight_decay"]
    diffopt = higher_core.get_diff_optim(opt, ref, override=override)
    fast = problem.leaves()
    for _ in range(3):
        fast = diffopt.step(problem.loss(fast), params=fast)
    (lr,), (wd,), ((b1, b2),) = override["lr"], override["weight_decay"], override["betas"]
    g_lr, g_wd, g_b1, g_b2 = torch.autograd.grad(problem.loss(fast), [lr, wd, b1, b2], allow_unused=True)
    assert g_lr != 0 and g_wd != 0
    assert g_b1 == 0 and (g_b2 is None or g_b2 == 0)  # the sign has derivative 0


def test_export_state_lets_lion_continue():
    problem = Problem(SHAPES)
    ref, twin = problem.leaves(), problem.leaves()
    opt = lion_pytorch.Lion(ref, lr=0.01, betas=(0.8, 0.95))
    twin_opt = lion_pytorch.Lion(twin, lr=0.01, betas=(0.8, 0.95))
    diffopt = higher_core.get_diff_optim(opt, ref)
    fast = [p.detach().clone().requires_grad_() for p in ref]
    for _ in range(4):
        fast = diffopt.step(problem.loss(fast), params=fast)
        _torch_step(twin_opt, twin, problem)
    with torch.no_grad():
        for p, f in zip(ref, fast):
            p.copy_(f)
    diffopt.export_state(opt)
    for _ in range(3):
        _torch_step(opt, ref, problem)
        _torch_step(twin_opt, twin, problem)
    for a, b in zip(ref, twin):
        assert torch.equal(a, b)
