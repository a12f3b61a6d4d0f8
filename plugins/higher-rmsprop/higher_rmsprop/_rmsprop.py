"""Out-of-place RMSprop, with every option of the installed ``torch.optim.RMSprop``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from higher_core.functional import add_scaled_exact, addcdiv, addcmul, regularized_gradient, safe_sqrt
from higher_core.optim import DifferentiableOptimizer, State


def _uses_momentum(momentum: Any) -> bool:
    """torch's ``momentum > 0``; a tensor momentum (an override) always takes the momentum path."""
    return isinstance(momentum, torch.Tensor) or momentum > 0


class DifferentiableRMSprop(DifferentiableOptimizer):
    r"""A differentiable version of ``torch.optim.RMSprop``, with the installed torch's numerics.

    .. math::
        g_t &= \pm\nabla_\theta f(\theta_{t-1}) \;(+\, \lambda\theta_{t-1}), \qquad
        v_t = \alpha v_{t-1} + (1-\alpha) g_t^2 \\
        \bar g_t &= \alpha \bar g_{t-1} + (1-\alpha) g_t, \qquad
        \tilde v_t = v_t - \bar g_t^2 \text{ if centered else } v_t \\
        b_t &= \mu b_{t-1} + \frac{g_t}{\sqrt{\tilde v_t} + \epsilon}, \qquad
        \theta_t = \theta_{t-1} - \gamma b_t
        \quad\Bigl(\theta_t = \theta_{t-1} - \gamma \frac{g_t}{\sqrt{\tilde v_t} + \epsilon}
        \text{ if } \mu = 0\Bigr)

    The states are torch's ``square_avg`` (:math:`v`), ``grad_avg`` (:math:`\bar g`,
    centered only) and ``momentum_buffer`` (:math:`b`, momentum only). The square
    root uses :func:`higher_core.functional.safe_sqrt`, whose derivative at zero is
    zero: :math:`\tilde v` is exactly zero wherever the gradient has always been
    zero, and, centered, it can reach zero for a constant gradient, so
    meta-gradients stay finite where ``torch.sqrt``'s would be nan. Forward numbers
    are torch's, except that a centered :math:`\tilde v` rounded below zero gives 0
    here where torch gives nan. A ``momentum`` given as a tensor override always
    takes the momentum path (a missing buffer counts as zeros), so its hypergradient
    is defined at 0. Complex parameters are stepped on their real view, as in torch.
    ``foreach``, ``capturable`` and ``differentiable`` change no numbers here.

    Example:
        >>> import torch, higher_core
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = torch.optim.RMSprop(model.parameters(), lr=1e-2, momentum=0.9, centered=True)
        >>> with higher_core.innerloop_ctx(model, opt) as (fmodel, diffopt):
        ...     _ = diffopt.step(fmodel(torch.randn(4, 3)).pow(2).mean())
    """

    complex_parameters = "real_view"
    scope = "element"

    tensor_hyperparameters = ("lr", "alpha", "eps", "weight_decay", "momentum")

    def init_state(self, param: torch.Tensor, group: Mapping[str, Any]) -> State:
        state: State = {
            "step": 0.0,
            "square_avg": torch.zeros_like(param, memory_format=torch.preserve_format),
        }
        if _uses_momentum(group["momentum"]):
            state["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        if group["centered"]:
            state["grad_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        return state

    def update_one(
        self, group: Mapping[str, Any], param: torch.Tensor, grad: torch.Tensor, state: State
    ) -> tuple[torch.Tensor, State]:
        grad = regularized_gradient(group, param, grad)
        lr, alpha, eps, momentum = group["lr"], group["alpha"], group["eps"], group["momentum"]
        square_avg = addcmul(state["square_avg"] * alpha, grad, grad, 1 - alpha)
        new_state = {**state, "step": state["step"] + 1, "square_avg": square_avg}
        if group["centered"]:
            grad_avg = torch.lerp(state["grad_avg"], grad, 1 - alpha)
            new_state["grad_avg"] = grad_avg
            avg = safe_sqrt(torch.addcmul(square_avg, grad_avg, grad_avg, value=-1))
        else:
            avg = safe_sqrt(square_avg)
        avg = avg + eps
        if not _uses_momentum(momentum):
            return addcdiv(param, grad, avg, -lr), new_state
        buf = state.get("momentum_buffer")
        buf = torch.zeros_like(param) if buf is None else buf
        buf = torch.addcdiv(buf * momentum, grad, avg)
        new_state["momentum_buffer"] = buf
        return add_scaled_exact(param, buf, -lr), new_state  # torch reads a tensor lr as a number
