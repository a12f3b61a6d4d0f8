"""Copying adapted weights back, truncated back-propagation, exporting optimizer state."""

from __future__ import annotations

import torch
from torch import nn

import higher_core

DT = torch.float64
X = torch.randn(8, 3, dtype=DT, generator=torch.Generator().manual_seed(0))


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 1)).double()


def _loss(m):
    return m(X).pow(2).mean()


def test_copy_to_writes_weights_and_optionally_buffers():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with higher_core.innerloop_ctx(model, opt) as (fmodel, diffopt):
        for _ in range(3):
            diffopt.step(_loss(fmodel))
        fmodel.copy_to(model)
        for p, f in zip(model.parameters(), fmodel.fast_params):
            assert torch.equal(p, f) and p.is_leaf
        assert not torch.equal(model[1].running_mean, fmodel[1].running_mean)
        fmodel.copy_to(model, buffers=True)
        assert torch.equal(model[1].running_mean, fmodel[1].running_mean)
        assert model[1].num_batches_tracked.item() == 3


def test_export_state_lets_torch_continue_the_trajectory():
    model, reference = _model(), _model()
    opt = torch.optim.Adam(model.parameters(), lr=0.05, amsgrad=True)
    ref_opt = torch.optim.Adam(reference.parameters(), lr=0.05, amsgrad=True)
    model.eval(), reference.eval()
    with higher_core.innerloop_ctx(model, opt) as (fmodel, diffopt):
        for _ in range(4):
            diffopt.step(_loss(fmodel))
        fmodel.copy_to(model)
        diffopt.export_state(opt)
    for _ in range(4):
        ref_opt.zero_grad(), _loss(reference).backward(), ref_opt.step()
    for _ in range(3):  # ordinary training continues identically
        for o, m in ((opt, model), (ref_opt, reference)):
            o.zero_grad()
            _loss(m).backward()
            o.step()
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert opt.state[model[0].weight]["step"].item() == 7


def test_truncate_cuts_the_graph_but_not_the_trajectory():
    model = _model().eval()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with higher_core.innerloop_ctx(model, opt, copy_initial_weights=False) as (fmodel, diffopt):
        for _ in range(2):
            diffopt.step(_loss(fmodel))
        diffopt.truncate()
        cut = fmodel.fast_params
        assert all(p.is_leaf for p in cut)
        assert all(s["momentum_buffer"].grad_fn is None for s in diffopt.param_state.values())
        for _ in range(2):
            diffopt.step(_loss(fmodel))
        truncated = fmodel.fast_params
        loss = _loss(fmodel)
        grads = torch.autograd.grad(loss, cut)  # reaches the cut point...
        assert all(g.abs().sum() > 0 for g in grads)
        assert all(p.grad is None for p in model.parameters())  # ...and nothing before it
    with higher_core.innerloop_ctx(model, opt, copy_initial_weights=False) as (fmodel, diffopt):
        for _ in range(4):
            diffopt.step(_loss(fmodel))
        for a, b in zip(truncated, fmodel.fast_params):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
