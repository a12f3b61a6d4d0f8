"""higher-adam: discovery, and the numbers the old library got wrong."""

from __future__ import annotations

import torch

import higher_core
from higher_adam import DifferentiableAdam


def test_entry_point_is_discovered():
    assert higher_core.optim.DifferentiableAdam is DifferentiableAdam
    p = torch.zeros(2, requires_grad=True)
    assert type(higher_core.get_diff_optim(torch.optim.Adam([p]), [p])) is DifferentiableAdam


def _ten_steps(**kwargs):
    w = torch.tensor([0.3, -0.7, 1.1], dtype=torch.float64)
    ref = w.clone().requires_grad_()
    opt = torch.optim.Adam([ref], **kwargs)
    diffopt = higher_core.get_diff_optim(opt, [ref])
    fast = [w.clone().requires_grad_()]
    for _ in range(10):
        fast = diffopt.step((fast[0].sin() * 3).sum(), params=fast)
        opt.zero_grad()
        (ref.sin() * 3).sum().backward()
        opt.step()
    return fast[0], ref


def test_maximize_and_decoupled_weight_decay_are_honoured():
    # the old higher ignored both options; each changes the trajectory here, and we follow torch
    base, _ = _ten_steps(lr=0.1, weight_decay=0.5)
    for option in ({"maximize": True}, {"decoupled_weight_decay": True}):
        ours, torch_result = _ten_steps(lr=0.1, weight_decay=0.5, **option)
        torch.testing.assert_close(ours, torch_result, rtol=1e-12, atol=1e-14)
        assert not torch.allclose(ours, base)


def test_meta_gradient_is_finite_when_a_gradient_entry_is_zero():
    w = torch.tensor([0.0, 1.0], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([w.detach().requires_grad_()], lr=0.1)
    diffopt = higher_core.get_diff_optim(opt, opt.param_groups[0]["params"])
    fast = [w]
    for _ in range(3):
        fast = diffopt.step((fast[0][1:] ** 2).sum() + 0 * fast[0].sum(), params=fast)
    (g,) = torch.autograd.grad(fast[0].sum(), w)
    assert torch.isfinite(g).all()
    assert g[0] == 1.0  # an entry whose gradient is always zero never moves
