"""Out-of-place RAdam, with every option of the installed ``torch.optim.RAdam``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from higher_core.functional import addcmul, decayed, safe_sqrt
from higher_core.optim import DifferentiableOptimizer, State


class DifferentiableRAdam(DifferentiableOptimizer):
    r"""A differentiable version of ``torch.optim.RAdam``, with the installed torch's numerics.

    .. math::
        g_t &= \pm\nabla_\theta f(\theta_{t-1}) \;(+\, \lambda\theta_{t-1}) \\
        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
        \rho_\infty &= \frac{2}{1-\beta_2} - 1, \qquad
        \rho_t = \rho_\infty - \frac{2t\beta_2^t}{1-\beta_2^t} \\
        \theta_t &= \theta_{t-1} - \gamma\,\frac{m_t}{1-\beta_1^t} \cdot
        \begin{cases}
            r_t\,\dfrac{\sqrt{1-\beta_2^t}}{\sqrt{v_t} + \epsilon}, &
            r_t = \sqrt{\dfrac{(\rho_t-4)(\rho_t-2)\rho_\infty}{(\rho_\infty-4)(\rho_\infty-2)\rho_t}}
            \quad\text{if } \rho_t > 5 \\
            1 & \text{otherwise}
        \end{cases}

    The first steps are never rectified (:math:`\rho_1 = 1`, :math:`\rho_2 < 2`);
    the branch is chosen by value, also when ``betas`` are tensors, and
    gradients flow through the branch taken. With
    ``decoupled_weight_decay=True`` the decay multiplies the parameter by
    :math:`1-\gamma\lambda` instead of entering the gradient. The square root's
    derivative at exactly zero is taken as zero, so meta-gradients stay finite
    when gradient entries are exactly zero. Complex parameters are updated on
    their real view, as torch does. ``foreach``, ``capturable`` and
    ``differentiable`` change no numbers here.

    Example:
        >>> import torch, higher_core
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = torch.optim.RAdam(model.parameters(), lr=1e-2, decoupled_weight_decay=True)
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
            "exp_avg_sq": torch.zeros_like(param, memory_format=torch.preserve_format),
        }

    def update_one(
        self, group: Mapping[str, Any], param: torch.Tensor, grad: torch.Tensor, state: State
    ) -> tuple[torch.Tensor, State]:
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        param, grad = decayed(group, param, grad)
        step = state["step"] + 1
        exp_avg = torch.lerp(state["exp_avg"], grad, 1 - beta1)
        exp_avg_sq = addcmul(state["exp_avg_sq"] * beta2, grad, grad, 1 - beta2)
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        corrected = exp_avg / bias_correction1
        rho_inf = 2 / (1 - beta2) - 1
        rho_t = rho_inf - 2 * step * (beta2**step) / bias_correction2
        if rho_t > 5.0:
            rect = (
                (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)
            ) ** 0.5
            adaptive = (bias_correction2**0.5) / (safe_sqrt(exp_avg_sq) + eps)
            param = torch.add(param, corrected * lr * adaptive * rect, alpha=-1.0)
        else:
            param = torch.add(param, corrected * lr, alpha=-1.0)
        return param, {**state, "step": step, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
