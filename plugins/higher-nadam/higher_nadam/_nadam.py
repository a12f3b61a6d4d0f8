"""Out-of-place NAdam, with every option of the installed ``torch.optim.NAdam``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Union

import torch

from higher_core.functional import Scalar, addcdiv, addcmul, decayed, safe_sqrt, scalar_dtype
from higher_core.optim import DifferentiableOptimizer, State



def _value(x: Union[float, torch.Tensor]) -> Scalar:
    """A state scalar as torch reads it (``.item()``), unless it carries a graph."""
    if isinstance(x, torch.Tensor) and not x.requires_grad:
        return x.item()
    return x


class DifferentiableNAdam(DifferentiableOptimizer):
    r"""A differentiable version of ``torch.optim.NAdam``, with the installed torch's numerics.

    .. math::
        g_t &= \pm\nabla_\theta f(\theta_{t-1}) \;(+\, \lambda\theta_{t-1}) \\
        \mu_t &= \beta_1\bigl(1 - \tfrac12\, 0.96^{t\psi}\bigr), \qquad
        \Pi_t = \textstyle\prod_{i \le t} \mu_i \\
        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
        \theta_t &= \theta_{t-1} - \gamma\Bigl(\frac{1-\mu_t}{1-\Pi_t}\,g_t
            + \frac{\mu_{t+1}}{1-\Pi_t\mu_{t+1}}\,m_t\Bigr)
            \Big/ \Bigl(\sqrt{v_t/(1-\beta_2^t)} + \epsilon\Bigr)

    :math:`\psi` is ``momentum_decay``. With ``decoupled_weight_decay=True``
    (NAdamW) the decay multiplies the parameter by :math:`1-\gamma\lambda`
    instead of entering the gradient. ``mu_product`` is kept, like torch, as a
    0-d tensor of torch's scalar dtype (float32 unless the default dtype is
    float64), so its rounding matches and a torch state continues exactly; when
    ``betas`` or ``momentum_decay`` are tensors requiring grad it carries their
    graph (promoted to their dtype). The square root's derivative at exactly
    zero is taken as zero, so meta-gradients stay finite when gradient entries
    are exactly zero. Complex parameters are updated on their real view, as torch
    does. ``foreach``, ``capturable`` and ``differentiable`` change no numbers here.

    Example:
        >>> import torch, higher_core
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = torch.optim.NAdam(model.parameters(), lr=1e-2, momentum_decay=4e-3)
        >>> with higher_core.innerloop_ctx(model, opt) as (fmodel, diffopt):
        ...     _ = diffopt.step(fmodel(torch.randn(4, 3)).pow(2).mean())
    """

    complex_parameters = "real_view"
    scope = "element"

    tensor_hyperparameters = ("lr", "betas", "eps", "weight_decay", "momentum_decay")

    def init_state(self, param: torch.Tensor, group: Mapping[str, Any]) -> State:
        return {
            "step": 0.0,
            "mu_product": torch.tensor(1.0, dtype=scalar_dtype()),
            "exp_avg": torch.zeros_like(param, memory_format=torch.preserve_format),
            "exp_avg_sq": torch.zeros_like(param, memory_format=torch.preserve_format),
        }

    def update_one(
        self, group: Mapping[str, Any], param: torch.Tensor, grad: torch.Tensor, state: State
    ) -> tuple[torch.Tensor, State]:
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        momentum_decay = group["momentum_decay"]
        param, grad = decayed(group, param, grad)
        step = state["step"] + 1
        bias_correction2 = 1 - beta2**step
        mu = beta1 * (1.0 - 0.5 * (0.96 ** (step * momentum_decay)))
        mu_next = beta1 * (1.0 - 0.5 * (0.96 ** ((step + 1) * momentum_decay)))
        mu_product = state["mu_product"] * mu
        exp_avg = torch.lerp(state["exp_avg"], grad, 1 - beta1)
        exp_avg_sq = addcmul(state["exp_avg_sq"] * beta2, grad, grad, 1 - beta2)
        denom = safe_sqrt(exp_avg_sq / bias_correction2) + eps
        product = _value(mu_product)
        param = addcdiv(param, grad, denom, -lr * (1.0 - mu) / (1.0 - product))
        param = addcdiv(param, exp_avg, denom, (-lr * mu_next) / (1.0 - product * mu_next))
        return param, {
            **state,
            "step": step,
            "mu_product": mu_product,
            "exp_avg": exp_avg,
            "exp_avg_sq": exp_avg_sq,
        }
