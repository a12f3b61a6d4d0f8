"""Out-of-place SGD with momentum, dampening, Nesterov, weight decay and maximize."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from higher_core.functional import add_scaled, add_scaled_exact, is_zero
from higher_core.optim import DifferentiableOptimizer, State


class DifferentiableSGD(DifferentiableOptimizer):
    r"""A differentiable version of ``torch.optim.SGD``, with the installed torch's numerics.

    .. math::
        g_t &= \pm\nabla_\theta f(\theta_{t-1}) + \lambda \theta_{t-1} \\
        b_t &= \mu b_{t-1} + (1 - \tau) g_t \quad (b_1 = g_1) \\
        \theta_t &= \theta_{t-1} - \gamma\,(g_t + \mu b_t \text{ if Nesterov else } b_t)

    Every option of ``torch.optim.SGD`` is honoured (``momentum``,
    ``dampening``, ``nesterov``, ``weight_decay``, ``maximize``); ``foreach``,
    ``fused`` and ``differentiable`` choose an implementation in torch and change
    no numbers here. Unlike torch, the first momentum buffer keeps its graph
    (torch detaches it), so meta-gradients flow through it.

    Example:
        >>> import torch, higher_core
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
        >>> with higher_core.innerloop_ctx(model, opt) as (fmodel, diffopt):
        ...     _ = diffopt.step(fmodel(torch.randn(4, 3)).pow(2).mean())
    """

    tensor_hyperparameters = ("lr", "momentum", "dampening", "weight_decay")
    complex_parameters = "real_view"
    scope = "element"

    def update_one(
        self, group: Mapping[str, Any], param: torch.Tensor, grad: torch.Tensor, state: State
    ) -> tuple[torch.Tensor, State]:
        lr, momentum, dampening = group["lr"], group["momentum"], group["dampening"]
        weight_decay, nesterov = group["weight_decay"], group["nesterov"]
        if group.get("maximize", False):
            grad = -grad
        if not is_zero(weight_decay):
            grad = add_scaled(grad, param, weight_decay)
        if not is_zero(momentum):
            buf = state.get("momentum_buffer")
            buf = grad if buf is None else add_scaled(buf * momentum, grad, 1 - dampening)
            grad = add_scaled(grad, buf, momentum) if nesterov else buf
            state = {**state, "momentum_buffer": buf}
        if isinstance(lr, torch.Tensor) and lr.requires_grad:
            return torch.addcmul(param, grad, lr, value=-1), state  # torch's op for such an lr
        return add_scaled_exact(param, grad, -lr), state  # torch reads a tensor lr as a number
