"""MAML through innerloop_ctx equals a hand-written torch.func.functional_call unroll."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

import higher_core

DT = torch.float64
STEPS = 3


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1)).double()


def _task(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(10, 2, generator=g, dtype=DT)
    return x, x.sin().sum(1, keepdim=True)


def _sgd_rule(params, grads, state, lr=0.1, momentum=0.9):
    bufs = [g if b is None else momentum * b + g for b, g in zip(state, grads)]
    return [p - lr * b for p, b in zip(params, bufs)], bufs


def _adam_rule(params, grads, state, lr=0.01, b1=0.9, b2=0.999, eps=1e-8):
    t, ms, vs = state if state else (0, [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params])
    t += 1
    ms = [b1 * m + (1 - b1) * g for m, g in zip(ms, grads)]
    vs = [b2 * v + (1 - b2) * g * g for v, g in zip(vs, grads)]
    new = [
        p - lr / (1 - b1**t) * m / (torch.sqrt(v) / (1 - b2**t) ** 0.5 + eps)
        for p, m, v in zip(params, ms, vs)
    ]
    return new, (t, ms, vs)


CASES = {
    "sgd-momentum": (lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9), _sgd_rule, lambda n: [None] * n),
    "adam": (lambda ps: torch.optim.Adam(ps, lr=0.01), _adam_rule, lambda n: None),
}


def _hand_written(model, rule, state, tasks):
    names = [n for n, _ in model.named_parameters()]
    meta_loss = 0
    for x, y in tasks:
        params = list(model.parameters())
        st = state(len(params))
        for _ in range(STEPS):
            loss = nn.functional.mse_loss(functional_call(model, dict(zip(names, params)), (x,)), y)
            grads = torch.autograd.grad(loss, params, create_graph=True)
            params, st = rule(params, grads, st)
        meta_loss = meta_loss + nn.functional.mse_loss(functional_call(model, dict(zip(names, params)), (x,)), y)
    return torch.autograd.grad(meta_loss, list(model.parameters()))


def _with_higher(model, make_opt, tasks):
    opt = make_opt(model.parameters())
    meta_loss = 0
    for x, y in tasks:
        with higher_core.innerloop_ctx(model, opt, copy_initial_weights=False) as (fmodel, diffopt):
            for _ in range(STEPS):
                diffopt.step(nn.functional.mse_loss(fmodel(x), y))
            meta_loss = meta_loss + nn.functional.mse_loss(fmodel(x), y)
    return torch.autograd.grad(meta_loss, list(model.parameters()))


@pytest.mark.parametrize("case", sorted(CASES))
def test_maml_meta_gradients_equal_a_functional_call_unroll(case):
    make_opt, rule, state = CASES[case]
    model = _mlp()
    tasks = [_task(s) for s in range(3)]
    expected = _hand_written(model, rule, state, tasks)
    got = _with_higher(model, make_opt, tasks)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)
        assert g.abs().sum() > 0
