"""Out-of-place Adagrad, with every option of the installed ``torch.optim.Adagrad``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from higher_core.functional import addcdiv, addcmul, regularized_gradient, safe_sqrt
from higher_core.optim import DifferentiableOptimizer, State


class DifferentiableAdagrad(DifferentiableOptimizer):
    r"""A differentiable version of ``torch.optim.Adagrad``, with the installed torch's numerics.

    .. math::
        g_t &= \pm\nabla_\theta f(\theta_{t-1}) \;(+\, \lambda\theta_{t-1}), \qquad
        \tilde\gamma_t = \frac{\gamma}{1 + (t-1)\eta} \\
        s_t &= s_{t-1} + g_t^2 \quad (s_0 = \tau) \\
        \theta_t &= \theta_{t-1} - \tilde\gamma_t \frac{g_t}{\sqrt{s_t} + \epsilon}

    ``torch.optim.Adagrad`` creates its state (``step`` and the accumulator ``sum``,
    filled with the constructor's ``initial_accumulator_value`` :math:`\tau`) when
    it is constructed, not at the first step. A state that is still in that initial
    form (``step`` 0) is not copied: it is recreated, with the same values, at the
    parameter's first step (:meth:`init_state`), so parameters that never receive a
    gradient keep no state, optimizers built by
    :func:`~higher_core.optim.create_diff_optim` work, and
    ``initial_accumulator_value`` can be given as a tensor override (it then
    receives gradients). Any other state continues exactly. The square root's
    derivative at zero is taken as zero (:func:`higher_core.functional.safe_sqrt`),
    so meta-gradients stay finite when gradient entries are exactly zero; forward
    numbers are torch's. Complex parameters are stepped on their real view, as in
    torch. ``foreach``, ``fused`` and ``differentiable`` change no numbers here.

    Example:
        >>> import torch, higher_core
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = torch.optim.Adagrad(model.parameters(), lr=0.1, lr_decay=0.01)
        >>> with higher_core.innerloop_ctx(model, opt) as (fmodel, diffopt):
        ...     _ = diffopt.step(fmodel(torch.randn(4, 3)).pow(2).mean())
    """

    complex_parameters = "real_view"
    scope = "element"

    tensor_hyperparameters = ("lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps")

    def import_state(self, state: Mapping[str, Any], device: torch.device | str | None) -> State | None:
        """Torch's constructor fills every accumulator; that untouched state is remade by ``init_state``."""
        if set(state) == {"step", "sum"} and float(state["step"]) == 0:
            accumulator = state["sum"]
            if accumulator.is_meta or torch.equal(accumulator, self.init_state(accumulator, {})["sum"]):
                return None
        return super().import_state(state, device)

    def init_state(self, param: torch.Tensor, group: Mapping[str, Any]) -> State:
        initial = group.get("initial_accumulator_value")
        if not isinstance(initial, torch.Tensor):  # torch uses the constructor's value
            initial = self.defaults.get("initial_accumulator_value", 0.0)
        if param.is_complex():  # torch fills real and imaginary parts
            initial = initial * (1 + 1j)
        if isinstance(initial, torch.Tensor):  # a differentiable override
            accumulator = torch.zeros_like(param, memory_format=torch.preserve_format) + initial
        else:
            accumulator = torch.full_like(param, initial, memory_format=torch.preserve_format)
        return {"step": 0.0, "sum": accumulator}

    def update_one(
        self, group: Mapping[str, Any], param: torch.Tensor, grad: torch.Tensor, state: State
    ) -> tuple[torch.Tensor, State]:
        grad = regularized_gradient(group, param, grad)
        lr, lr_decay, eps = group["lr"], group["lr_decay"], group["eps"]
        step = state["step"] + 1
        clr = lr / (1 + (step - 1) * lr_decay)
        accumulator = addcmul(state["sum"], grad, grad, 1)
        std = safe_sqrt(accumulator) + eps
        return addcdiv(param, grad, std, -clr), {**state, "step": step, "sum": accumulator}
