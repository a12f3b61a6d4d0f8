"""Out-of-place Adamax, with every option of the installed ``torch.optim.Adamax``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from higher_core.functional import addcdiv, decayed
from higher_core.optim import DifferentiableOptimizer, State


class DifferentiableAdamax(DifferentiableOptimizer):
    r"""A differentiable version of ``torch.optim.Adamax``, with the installed torch's numerics.

    .. math::
        g_t &= \pm\nabla_\theta f(\theta_{t-1}) \;(+\, \lambda\theta_{t-1}) \\
        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t \\
        u_t &= \max(\beta_2 u_{t-1},\, |g_t| + \epsilon) \\
        \theta_t &= \theta_{t-1} - \frac{\gamma}{1-\beta_1^t}\,\frac{m_t}{u_t}

    The infinity norm is the elementwise ``torch.maximum`` of torch's default
    path; its ``differentiable=True`` path takes ``amax`` over the two stacked
    candidates, which gives the same numbers and the same (tie-splitting)
    gradient. ``abs`` has derivative 0 at 0 and :math:`u_t \ge \epsilon`, so
    meta-gradients stay finite when gradient entries are exactly zero (as long
    as ``eps > 0``; with ``eps=0`` torch itself divides 0 by 0). Complex
    parameters are updated on their real view, as torch does. ``foreach``,
    ``capturable`` and ``differentiable`` change no numbers here.

    Example:
        >>> import torch, higher_core
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = torch.optim.Adamax(model.parameters(), lr=1e-2, weight_decay=1e-3)
        >>> with higher_core.innerloop_ctx(model, opt) as (fmodel, diffopt):
        ...     _ = diffopt.step(fmodel(torch.randn(4, 3)).pow(2).mean())
    """

    complex_parameters = "real_view"
    scope = "element"

    tensor_hyperparameters = ("lr", "betas", "eps", "weight_decay")

    def init_state(self, param: torch.Tensor, group: Mapping[str, Any]) -> State:
        return {
            "step": 0.0,
            "exp_avg": torch.zeros_like(param, memory_format=torch.preserve_format),
            "exp_inf": torch.zeros_like(param, memory_format=torch.preserve_format),
        }

    def update_one(
        self, group: Mapping[str, Any], param: torch.Tensor, grad: torch.Tensor, state: State
    ) -> tuple[torch.Tensor, State]:
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        param, grad = decayed(group, param, grad)
        step = state["step"] + 1
        exp_avg = torch.lerp(state["exp_avg"], grad, 1 - beta1)
        exp_inf = torch.maximum(state["exp_inf"] * beta2, grad.abs() + eps)
        step_size = lr / (1 - beta1**step)
        new_param = addcdiv(param, exp_avg, exp_inf, -step_size)
        new_state = {**state, "step": step, "exp_avg": exp_avg, "exp_inf": exp_inf}
        return new_param, new_state
