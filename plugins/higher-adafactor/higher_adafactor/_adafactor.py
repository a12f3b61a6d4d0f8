"""Out-of-place Adafactor, with every option of the installed ``torch.optim.Adafactor``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from higher_core.functional import Scalar, add_scaled_exact, as_float64, is_zero, with_derivatives_of
from higher_core.optim import DifferentiableOptimizer, State


def _mean_square(grad: torch.Tensor, dim: int) -> torch.Tensor:
    """``torch.norm(grad, dim).square() / n`` (torch's numbers), differentiated as ``(grad * grad).mean(dim)``.

    The norm's higher derivatives are ``nan`` for an all-zero row; the mean of
    squares is smooth everywhere.
    """
    value = torch.norm(grad.detach(), dim=dim, keepdim=True).square().div(grad.size(dim))
    return with_derivatives_of(value, (grad * grad).mean(dim=dim, keepdim=True))



def _norm(x: torch.Tensor) -> torch.Tensor:
    """``x.norm(2)``, in float64: torch reads it with ``.item()`` and goes on in double precision."""
    return as_float64(x.norm(2))


def _rms(x: torch.Tensor) -> torch.Tensor:
    return _norm(x) / (x.numel() ** 0.5)


def _step_size(param: torch.Tensor, lr: Scalar, eps2: Scalar, step: float) -> Scalar:
    r""":math:`\alpha_t = \max(\epsilon_2, \mathrm{RMS}(\theta))\min(\gamma, 1/\sqrt t)`, in torch's dtypes.

    torch reads the RMS as a number (double precision), so with a float32 tensor
    ``lr`` the product is float32.
    """
    rho = min(lr, 1 / (step**0.5))
    scale = max(eps2, _rms(param))
    if isinstance(scale, torch.Tensor) and isinstance(rho, torch.Tensor):
        scale = scale.to(rho.dtype)
    return scale * rho


def _clipped_scale(alpha: Scalar, update: torch.Tensor, d: Scalar) -> Scalar:
    r""":math:`-\alpha / \max(1, \mathrm{RMS}(U)/d)`, with torch's numbers (it divides by a number)."""
    clip = max(1.0, _norm(update) / ((update.numel() ** 0.5) * d))
    if isinstance(clip, torch.Tensor):
        if isinstance(alpha, torch.Tensor):
            clip = clip.to(alpha.dtype)
        else:
            alpha = clip.new_tensor(alpha)  # a number over a tensor would multiply by a reciprocal
    return -alpha / clip


class DifferentiableAdafactor(DifferentiableOptimizer):
    r"""A differentiable version of ``torch.optim.Adafactor``, with the installed torch's numerics.

    .. math::
        G_t &= \pm\nabla_\theta f(\theta_{t-1}), \qquad
        \hat\beta_{2,t} = 1 - t^{\tau}, \qquad
        \rho_t = \min(\gamma, 1/\sqrt t), \qquad
        \alpha_t = \max(\epsilon_2, \mathrm{RMS}(\theta_{t-1}))\,\rho_t \\
        R_t &= \hat\beta_{2,t} R_{t-1} + (1-\hat\beta_{2,t})\,\mathrm{mean}_{\text{cols}}(G_t^2), \qquad
        C_t = \hat\beta_{2,t} C_{t-1} + (1-\hat\beta_{2,t})\,\mathrm{mean}_{\text{rows}}(G_t^2) \\
        \hat V_t &= \frac{R_t C_t}{\max(\mathrm{mean}(R_t), \epsilon_1)}
            \quad (\text{1-D: } \hat V_t = \hat\beta_{2,t}\hat V_{t-1} + (1-\hat\beta_{2,t}) G_t^2) \\
        U_t &= \frac{G_t}{\sqrt{\max(\hat V_t, \epsilon_1^2)}}, \qquad
        \theta_t = \theta_{t-1}(1 - \gamma\lambda)
            - \frac{\alpha_t}{\max(1, \mathrm{RMS}(U_t)/d)}\, U_t

    Parameters of two or more dimensions keep the factored state ``row_var`` and
    ``col_var`` (over the last two dimensions), others ``variance``; :math:`\epsilon_1`
    ``None`` means the parameter dtype's machine epsilon, as in torch. Unlike
    torch, which reads :math:`\mathrm{RMS}(\theta_{t-1})` and
    :math:`\mathrm{RMS}(U_t)` as plain numbers, the graph is kept through both,
    so meta-gradients see how the relative step size and the update clipping
    depend on the weights. The row and column means of :math:`G_t^2` have torch's
    forward values but are differentiated as plain means of squares, so
    meta-gradients stay finite for all-zero gradient rows. :math:`\epsilon_1`
    ``None`` is the machine epsilon of the first parameter stepped in the group,
    for every parameter of the group, as torch's for-loop reads it (its
    ``foreach`` path takes the first dtype of its own grouping instead, which can
    differ in a group of mixed dtypes; this follows the for-loop). ``foreach``
    changes no numbers here.

    Example:
        >>> import torch, higher_core
        >>> model = torch.nn.Linear(3, 2)
        >>> opt = torch.optim.Adafactor(model.parameters(), lr=1e-2, weight_decay=0.01)
        >>> with higher_core.innerloop_ctx(model, opt) as (fmodel, diffopt):
        ...     _ = diffopt.step(fmodel(torch.randn(4, 3)).pow(2).mean())
        >>> sorted(diffopt.param_state[0])
        ['col_var', 'row_var', 'step']
    """

    tensor_hyperparameters = ("lr", "beta2_decay", "eps", "d", "weight_decay")
    scope = "tensor"

    def check_param_groups(self, param_groups: Sequence[Mapping[str, Any]]) -> None:
        for group in param_groups:
            eps = group["eps"]
            if not (isinstance(eps, Sequence) and len(eps) == 2):
                raise ValueError(f"eps must be a pair (eps1, eps2) for Adafactor, got {eps!r}")

    def init_state(self, param: torch.Tensor, group: Mapping[str, Any]) -> State:
        state: State = {"step": 0.0}
        if param.dim() > 1:
            state["row_var"] = param.new_zeros((*param.shape[:-1], 1))
            state["col_var"] = param.new_zeros((*param.shape[:-2], 1, param.shape[-1]))
        else:
            state["variance"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        return state

    def update(
        self, group: Mapping[str, Any], params: list[torch.Tensor], grads: list[torch.Tensor], states: list[State]
    ) -> tuple[list[torch.Tensor], list[State]]:
        r"""Each parameter in turn; :math:`\epsilon_1` ``None`` is read once per group, as torch reads it.

        torch sets ``eps1`` to the machine epsilon of the *first* parameter's dtype
        stepped in the group and keeps it for the others, so in a group mixing
        float64, bfloat16 and float16 layers every parameter uses the first one's.
        """
        eps1, eps2 = group["eps"]
        if eps1 is None and params:
            group = {**group, "eps": (torch.finfo(params[0].dtype).eps, eps2)}
        return super().update(group, params, grads, states)

    def update_one(
        self, group: Mapping[str, Any], param: torch.Tensor, grad: torch.Tensor, state: State
    ) -> tuple[torch.Tensor, State]:
        lr, beta2_decay, d = group["lr"], group["beta2_decay"], group["d"]
        weight_decay = group["weight_decay"]
        eps1, eps2 = group["eps"]
        if group.get("maximize", False):
            grad = -grad
        if eps1 is None:
            eps1 = torch.finfo(param.dtype).eps
        step = state["step"] + 1
        one_minus_beta2: Scalar = step**beta2_decay
        alpha = _step_size(param, lr, eps2, step)
        if not is_zero(weight_decay):
            param = param * (1 - lr * weight_decay)
        new_state: State = {**state, "step": step}
        if grad.dim() > 1:
            row_var = torch.lerp(state["row_var"], _mean_square(grad, -1), one_minus_beta2)
            col_var = torch.lerp(state["col_var"], _mean_square(grad, -2), one_minus_beta2)
            estimate = (row_var @ col_var) / row_var.mean(dim=-2, keepdim=True).clamp(min=eps1)
            new_state.update(row_var=row_var, col_var=col_var)
        else:
            estimate = torch.lerp(state["variance"], grad * grad, one_minus_beta2)
            new_state["variance"] = estimate
        update = estimate.clamp(min=eps1 * eps1).rsqrt() * grad
        return add_scaled_exact(param, update, _clipped_scale(alpha, update, d)), new_state
