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
    complex_as_real = True

    def update(
        self,
        group: Mapping[str, Any],
        params: list[torch.Tensor],
        grads: list[torch.Tensor],
        states: list[State],
    ) -> tuple[list[torch.Tensor], list[State]]:
        lr, momentum, dampening = group["lr"], group["momentum"], group["dampening"]
        weight_decay, nesterov = group["weight_decay"], group["nesterov"]
        use_momentum = not is_zero(momentum)
        new_params, new_states = [], []
        for param, grad, state in zip(params, grads, states):
            if group.get("maximize", False):
                grad = -grad
            if not is_zero(weight_decay):
                grad = add_scaled(grad, param, weight_decay)
            if use_momentum:
                buf = state.get("momentum_buffer")
                buf = grad if buf is None else add_scaled(buf * momentum, grad, 1 - dampening)
                grad = add_scaled(grad, buf, momentum) if nesterov else buf
                state = {**state, "momentum_buffer": buf}
            if isinstance(lr, torch.Tensor) and lr.requires_grad:
                new_params.append(torch.addcmul(param, grad, lr, value=-1))  # torch's op for such an lr
            else:
                new_params.append(add_scaled_exact(param, grad, -lr))  # torch reads a tensor lr as a number
            new_states.append(state)
        return new_params, new_states
