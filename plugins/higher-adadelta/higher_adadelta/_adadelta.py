"""Out-of-place Adadelta, with every option of the installed ``torch.optim.Adadelta``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from higher_core.functional import add_scaled_exact, addcmul, regularized_gradient, safe_sqrt
from higher_core.optim import DifferentiableOptimizer, State


class DifferentiableAdadelta(DifferentiableOptimizer):
    r"""A differentiable version of ``torch.optim.Adadelta``, with the installed torch's numerics.

    .. math::
        g_t &= \pm\nabla_\theta f(\theta_{t-1}) \;(+\, \lambda\theta_{t-1}) \\
        v_t &= \rho v_{t-1} + (1-\rho) g_t^2 \\
        \Delta_t &= \frac{\sqrt{u_{t-1} + \epsilon}}{\sqrt{v_t + \epsilon}}\, g_t, \qquad
        u_t = \rho u_{t-1} + (1-\rho) \Delta_t^2 \\
        \theta_t &= \theta_{t-1} - \gamma \Delta_t

    :math:`v` is the state ``square_avg``, :math:`u` is ``acc_delta``. Both square
    roots use :func:`higher_core.functional.safe_sqrt`, whose derivative at zero is
    zero, so meta-gradients stay finite where an argument is exactly zero (with
    ``eps=0``, :math:`u_0 = 0`); forward numbers are torch's. Complex parameters are
    stepped on their real view, as in torch. ``foreach``, ``capturable`` and
    ``differentiable`` change no numbers here.

    Example:
        >>> import torch, higher_core
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = torch.optim.Adadelta(model.parameters(), lr=1.0, rho=0.9)
        >>> with higher_core.innerloop_ctx(model, opt) as (fmodel, diffopt):
        ...     _ = diffopt.step(fmodel(torch.randn(4, 3)).pow(2).mean())
    """

    complex_parameters = "real_view"
    scope = "element"

    tensor_hyperparameters = ("lr", "rho", "eps", "weight_decay")

    def init_state(self, param: torch.Tensor, group: Mapping[str, Any]) -> State:
        return {
            "step": 0.0,
            "square_avg": torch.zeros_like(param, memory_format=torch.preserve_format),
            "acc_delta": torch.zeros_like(param, memory_format=torch.preserve_format),
        }

    def update_one(
        self, group: Mapping[str, Any], param: torch.Tensor, grad: torch.Tensor, state: State
    ) -> tuple[torch.Tensor, State]:
        grad = regularized_gradient(group, param, grad)
        lr, rho, eps = group["lr"], group["rho"], group["eps"]
        square_avg = addcmul(state["square_avg"] * rho, grad, grad, 1 - rho)
        std = safe_sqrt(square_avg + eps)
        delta = safe_sqrt(state["acc_delta"] + eps) / std * grad
        acc_delta = addcmul(state["acc_delta"] * rho, delta, delta, 1 - rho)
        new_state = {**state, "step": state["step"] + 1, "square_avg": square_avg, "acc_delta": acc_delta}
        return add_scaled_exact(param, delta, -lr), new_state  # torch reads a tensor lr as a number
