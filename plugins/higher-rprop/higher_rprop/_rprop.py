"""Out-of-place Rprop, with every option of the installed ``torch.optim.Rprop``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from higher_core.functional import Scalar, addcmul
from higher_core.optim import DifferentiableOptimizer, State


def _clamp(x: torch.Tensor, low: Scalar, high: Scalar) -> torch.Tensor:
    """``torch.clamp`` with number bounds, or tensor bounds when either is a tensor (an override)."""
    if isinstance(low, torch.Tensor) or isinstance(high, torch.Tensor):
        low, high = (torch.as_tensor(b, dtype=x.dtype, device=x.device) for b in (low, high))
    return torch.clamp(x, low, high)


class DifferentiableRprop(DifferentiableOptimizer):
    r"""A differentiable version of ``torch.optim.Rprop``, with the installed torch's numerics.

    .. math::
        g_t &= \pm\nabla_\theta f(\theta_{t-1}), \qquad
        \eta_t = \begin{cases} \eta_+ & g_t g_{t-1}' > 0 \\ \eta_- & g_t g_{t-1}' < 0 \\
            1 & \text{otherwise} \end{cases} \\
        s_t &= \mathrm{clamp}(\eta_t s_{t-1}, \Gamma_{\min}, \Gamma_{\max}) \quad (s_0 = \gamma),
        \qquad g_t' = 0 \text{ where } \eta_t = \eta_- \text{ else } g_t \\
        \theta_t &= \theta_{t-1} - \mathrm{sign}(g_t')\, s_t

    :math:`g'` is the state ``prev`` and :math:`s` the state ``step_size``; torch
    zeroes :math:`g'` in place, here it is a new tensor. The step uses only the
    *sign* of the gradient and compares signs to choose :math:`\eta_t`: both are
    piecewise constant, so the update's derivative with respect to the gradient is
    zero. Meta-gradients with respect to the initial weights therefore flow only
    through the identity path :math:`\partial\theta_t/\partial\theta_{t-1} = I`:
    after :math:`k` steps, :math:`\partial L(\theta_k)/\partial\theta_0 = \nabla
    L(\theta_k)`, and likewise for second derivatives. Hypergradients are not zero:
    :math:`s_t` is :math:`\gamma` times a product of :math:`\eta_\pm`, clamped, so
    ``lr`` (which only sets :math:`s_0` when a parameter's state is created),
    ``etas`` and ``step_sizes`` (where the clamp is active) receive gradients, with
    the sign pattern held fixed. Complex parameters are stepped on their real view,
    as in torch. ``foreach``, ``capturable`` and ``differentiable`` change no
    numbers here.

    Example:
        >>> import torch, higher_core
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = torch.optim.Rprop(model.parameters(), lr=1e-2, etas=(0.4, 1.3))
        >>> with higher_core.innerloop_ctx(model, opt) as (fmodel, diffopt):
        ...     _ = diffopt.step(fmodel(torch.randn(4, 3)).pow(2).mean())
    """

    complex_parameters = "real_view"
    scope = "element"

    tensor_hyperparameters = ("lr", "etas", "step_sizes")

    def init_state(self, param: torch.Tensor, group: Mapping[str, Any]) -> State:
        lr = group["lr"]
        if param.is_complex():  # torch fills real and imaginary parts
            lr = lr * (1 + 1j)
        if isinstance(lr, torch.Tensor):
            step_size = torch.zeros_like(param, memory_format=torch.preserve_format) + lr
        else:
            step_size = torch.full_like(param, lr, memory_format=torch.preserve_format)
        return {
            "step": 0.0,
            "prev": torch.zeros_like(param, memory_format=torch.preserve_format),
            "step_size": step_size,
        }

    def update_one(
        self, group: Mapping[str, Any], param: torch.Tensor, grad: torch.Tensor, state: State
    ) -> tuple[torch.Tensor, State]:
        etaminus, etaplus = group["etas"]
        step_size_min, step_size_max = group["step_sizes"]
        if group.get("maximize", False):
            grad = -grad
        # torch's three masked writes, in its order (so any group values map as in torch)
        factor = grad.mul(state["prev"]).sign()
        factor = torch.where(factor.gt(0), etaplus, factor)
        factor = torch.where(factor.lt(0), etaminus, factor)
        factor = torch.where(factor.eq(0), 1.0, factor)
        step_size = _clamp(state["step_size"] * factor, step_size_min, step_size_max)
        # torch zeroes the gradient, in place, where the factor it wrote equals etaminus
        prev = torch.where(factor.eq(etaminus), torch.zeros_like(grad), grad)
        new_state = {**state, "step": state["step"] + 1, "prev": prev, "step_size": step_size}
        return addcmul(param, prev.sign(), step_size, -1), new_state
