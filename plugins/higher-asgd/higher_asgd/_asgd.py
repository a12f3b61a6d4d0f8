"""Out-of-place ASGD (averaged SGD), with every option of the installed ``torch.optim.ASGD``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from higher_core.functional import add_scaled, is_zero, scalar_dtype
from higher_core.optim import DifferentiableOptimizer, State

_SCALARS = ("eta", "mu")


def _stored(value: Any) -> Any:
    """``value`` as torch stores it: a 0-d tensor of torch's scalar dtype (float32 unless the
    default dtype is float64), read back as a Python number. A tensor that requires grad (an
    override being learned) is kept as it is, in full precision."""
    if isinstance(value, torch.Tensor):
        if value.requires_grad:
            return value
        value = value.item()
    return torch.tensor(value, dtype=scalar_dtype()).item()


def _next_eta(lr: Any, lambd: Any, alpha: Any, step: float) -> Any:
    r""":math:`\eta_t = \gamma / (1 + \lambda\gamma t)^{\alpha}`, as torch's single-tensor code rounds it.

    When one of ``lr``, ``lambd``, ``alpha`` is learned (a tensor that requires grad),
    all three become tensors on its device and dtype: a CPU number or 0-d tensor mixed
    into a CUDA power makes its backward fail with a device mismatch.
    """
    learned = next((v for v in (lr, lambd, alpha) if isinstance(v, torch.Tensor) and v.requires_grad), None)
    if learned is not None:
        lr, lambd, alpha = (torch.as_tensor(v, dtype=learned.dtype, device=learned.device)
                            for v in (lr, lambd, alpha))
    return _stored(lr / (1 + lambd * lr * step) ** alpha)


class DifferentiableASGD(DifferentiableOptimizer):
    r"""A differentiable version of ``torch.optim.ASGD``, with the installed torch's numerics.

    .. math::
        g_t &= \pm\nabla_\theta f(\theta_{t-1}) \;(+\, \lambda_{wd}\theta_{t-1}) \\
        \theta_t &= (1 - \lambda\eta_{t-1})\,\theta_{t-1} - \eta_{t-1} g_t \\
        \bar\theta_t &= \theta_t \text{ if } \mu_{t-1} = 1 \text{ else }
            \bar\theta_{t-1} + \mu_{t-1}(\theta_t - \bar\theta_{t-1}) \\
        \eta_t &= \frac{\gamma}{(1 + \lambda\gamma t)^{\alpha}}, \qquad
        \mu_t = \frac{1}{\max(1,\, t - t_0)} \qquad (\eta_0 = \gamma,\ \mu_0 = 1)

    The states are torch's: ``step``, ``eta``, ``mu`` and ``ax`` (the average
    :math:`\bar\theta`, which the parameters do not depend on). torch keeps ``eta``
    and ``mu`` as 0-d tensors of its scalar dtype (float32 unless the default dtype
    is float64) and updates them after the parameter update; here they are Python
    numbers rounded the same way, so the numbers match torch's. When ``lr``,
    ``lambd`` or ``alpha`` (for ``eta``) or ``t0`` (for ``mu``) is a tensor that
    requires grad (an override), the new value is a tensor in full precision
    instead, so that it receives gradients (torch's ``eta`` and ``mu`` carry no
    graph). Complex parameters are stepped on their real view, as in torch.
    ``foreach``, ``capturable`` and ``differentiable`` change no numbers here.

    Example:
        >>> import torch, higher_core
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = torch.optim.ASGD(model.parameters(), lr=1e-2, t0=2.0)
        >>> with higher_core.innerloop_ctx(model, opt) as (fmodel, diffopt):
        ...     _ = diffopt.step(fmodel(torch.randn(4, 3)).pow(2).mean())
    """

    complex_parameters = "real_view"
    scope = "element"

    tensor_hyperparameters = ("lr", "lambd", "alpha", "t0", "weight_decay")

    def import_state(self, state: Mapping[str, Any], device: torch.device | str | None) -> State:
        imported = super().import_state(state, device)
        for key in _SCALARS:  # torch's 0-d tensors, read as numbers
            value = imported.get(key)
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                imported[key] = value.item()
        return imported

    def export_param_state(self, state: Mapping[str, Any], param: torch.Tensor) -> dict[str, Any]:
        """torch's state: ``eta`` and ``mu`` back as 0-d tensors of torch's scalar dtype."""
        exported = super().export_param_state(state, param)
        for key in _SCALARS:
            if key in exported:
                value = exported[key]
                number = value.detach().item() if isinstance(value, torch.Tensor) else value
                exported[key] = torch.tensor(number, dtype=scalar_dtype(), device=param.device)
        return exported

    def init_state(self, param: torch.Tensor, group: Mapping[str, Any]) -> State:
        return {
            "step": 0.0,
            "eta": _stored(group["lr"]),
            "mu": 1.0,
            "ax": torch.zeros_like(param, memory_format=torch.preserve_format),
        }

    def update_one(
        self, group: Mapping[str, Any], param: torch.Tensor, grad: torch.Tensor, state: State
    ) -> tuple[torch.Tensor, State]:
        lr, lambd, alpha, t0 = group["lr"], group["lambd"], group["alpha"], group["t0"]
        weight_decay = group["weight_decay"]
        if group.get("maximize", False):
            grad = -grad
        step = state["step"] + 1
        eta, mu = state["eta"], state["mu"]
        if not is_zero(weight_decay):
            grad = add_scaled(grad, param, weight_decay)
        param = add_scaled(param * (1 - lambd * eta), grad, -eta)
        if (mu.detach().item() if isinstance(mu, torch.Tensor) else mu) != 1:
            ax = state["ax"] + (param - state["ax"]) * mu
        else:
            ax = param.clone()
        # torch updates eta and mu after the parameter, for the next step
        eta = _next_eta(lr, lambd, alpha, step)
        if isinstance(t0, torch.Tensor):
            mu = _stored(1 / torch.clamp(step - t0, min=1))
        else:
            mu = _stored(1 / max(1, step - t0))
        return param, {**state, "step": step, "ax": ax, "eta": eta, "mu": mu}
