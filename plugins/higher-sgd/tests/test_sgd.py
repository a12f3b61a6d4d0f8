"""higher-sgd: the behaviours that differ from a plain port of torch's code."""

from __future__ import annotations

import torch

import higher_core


def test_first_momentum_buffer_keeps_its_graph():
    # torch detaches the first buffer; here d(buffer)/d(weights) flows from step 1 on.
    w0 = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([w0.detach().requires_grad_()], lr=0.1, momentum=0.9)
    diffopt = higher_core.get_diff_optim(opt, opt.param_groups[0]["params"])
    (w1,) = diffopt.step((w0**3).sum(), params=[w0])
    (w2,) = diffopt.step((w1**3).sum(), params=[w1])
    # w1 = w0 - 0.1*3w0^2 ; b1 = 3w0^2 ; b2 = 0.9*b1 + 3w1^2 ; w2 = w1 - 0.1*b2
    dw1 = 1 - 0.6 * w0.detach()
    expected = dw1 - 0.1 * (0.9 * 6 * w0.detach() + 6 * (w0 - 0.3 * w0**2).detach() * dw1)
    (got,) = torch.autograd.grad(w2.sum(), w0)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)


def test_tensor_lr_and_momentum_match_float_ones():
    w = torch.tensor([0.5, -1.5, 2.0], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([w.detach().requires_grad_()], lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)
    plain = higher_core.get_diff_optim(opt, opt.param_groups[0]["params"])
    tensors = higher_core.get_diff_optim(
        opt, opt.param_groups[0]["params"],
        override={"lr": [torch.tensor(0.1, dtype=torch.float64)], "momentum": [torch.tensor(0.9, dtype=torch.float64)]},
    )
    a = b = [w]
    for _ in range(4):
        a = plain.step((a[0] ** 4).sum(), params=a)
        b = tensors.step((b[0] ** 4).sum(), params=b)
    torch.testing.assert_close(a[0], b[0], rtol=1e-14, atol=0)
