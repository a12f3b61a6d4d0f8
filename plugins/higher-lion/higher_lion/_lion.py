"""Out-of-place Lion, with every option of the installed ``lion_pytorch.Lion``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import lion_pytorch.lion_pytorch as lion_module
import torch

from higher_core.functional import add_scaled, is_zero
from higher_core.optim import DifferentiableOptimizer, State


class DifferentiableLion(DifferentiableOptimizer):
    r"""A differentiable version of ``lion_pytorch.Lion`` (Chen et al. 2023), with its numerics.

    .. math::
        \theta_t &= \theta_{t-1}\,(1 - \gamma\lambda')
            - \gamma\,\operatorname{sign}\big(\beta_1 m_{t-1} + (1-\beta_1) g_t\big) \\
        m_t &= \beta_2 m_{t-1} + (1-\beta_2) g_t

    where :math:`\lambda' = \lambda` or, with ``decoupled_weight_decay=True``,
    :math:`\lambda' = \lambda / \gamma_0` with :math:`\gamma_0` the learning rate
    given to the constructor (as ``lion_pytorch`` does, whatever a group's
    ``lr`` is now). The update follows ``lion_pytorch``'s reference
    ``update_fn`` operation for operation. The sign has derivative zero, so
    meta-gradients reach the initial weights only through the decay factor and
    the identity path of :math:`\theta`, and the ``betas`` receive zero
    gradients; ``lr`` and ``weight_decay`` receive real ones. Complex parameters
    are stepped as they are, with the complex sign :math:`z/|z|` (``torch.sgn``),
    as ``lion_pytorch`` does. ``use_triton=True`` (a fused in-place CUDA kernel)
    is refused.

    Example:
        >>> import torch, higher_core, lion_pytorch
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = lion_pytorch.Lion(model.parameters(), lr=1e-3, weight_decay=0.1)
        >>> with higher_core.innerloop_ctx(model, opt) as (fmodel, diffopt):
        ...     _ = diffopt.step(fmodel(torch.randn(4, 3)).pow(2).mean())
    """

    tensor_hyperparameters = ("lr", "betas", "weight_decay")
    complex_parameters = "native"  # lion_pytorch steps complex tensors with the complex sign
    scope = "element"

    def __init__(self, other: torch.optim.Optimizer, reference_params: Iterable[torch.Tensor],
                 *args: Any, **kwargs: Any) -> None:
        update_fn = getattr(other, "update_fn", lion_module.update_fn)
        if update_fn is not lion_module.update_fn:
            raise ValueError(
                "use_triton=True is not supported: lion_pytorch's Triton kernel updates the "
                "parameters in place on the GPU and cannot be differentiated; build the Lion "
                "optimizer with use_triton=False (the same update rule)"
            )
        # lion_pytorch keeps these on the optimizer, not in its param groups
        self._init_lr: float = float(getattr(other, "_init_lr", other.defaults["lr"]))
        self._decoupled_wd: bool = bool(getattr(other, "decoupled_wd", False))
        super().__init__(other, reference_params, *args, **kwargs)

    def init_state(self, param: torch.Tensor, group: Mapping[str, Any]) -> State:
        return {"exp_avg": torch.zeros_like(param)}

    def update_one(
        self, group: Mapping[str, Any], param: torch.Tensor, grad: torch.Tensor, state: State
    ) -> tuple[torch.Tensor, State]:
        lr, (beta1, beta2), weight_decay = group["lr"], group["betas"], group["weight_decay"]
        if self._decoupled_wd:
            weight_decay = weight_decay / self._init_lr
        exp_avg = state["exp_avg"]
        if not is_zero(weight_decay):  # lion_pytorch multiplies by 1 - lr * 0 = 1 otherwise
            param = param * (1.0 - lr * weight_decay)
        direction = torch.sgn(add_scaled(exp_avg * beta1, grad, 1.0 - beta1))
        return add_scaled(param, direction, -lr), {**state, "exp_avg": add_scaled(exp_avg * beta2, grad, 1.0 - beta2)}
