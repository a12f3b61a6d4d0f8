"""Out-of-place AdamW: higher-adam's update rule with decoupled weight decay."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from higher_adam import DifferentiableAdam
from higher_core.optim import State


def _decoupled(group: Mapping[str, Any]) -> Mapping[str, Any]:
    """``group`` with AdamW's decoupled decay: a key of torch >= 2.7's groups, implied before it."""
    return group if group.get("decoupled_weight_decay") else {**group, "decoupled_weight_decay": True}


class DifferentiableAdamW(DifferentiableAdam):
    r"""A differentiable version of ``torch.optim.AdamW``, with the installed torch's numerics.

    .. math::
        g_t &= \pm\nabla_\theta f(\theta_{t-1}), \qquad
        \theta'_{t-1} = \theta_{t-1}(1 - \gamma\lambda) \\
        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
        \hat v_t &= \max(\hat v_{t-1}, v_t) \text{ if amsgrad else } v_t \\
        \theta_t &= \theta'_{t-1} - \frac{\gamma}{1-\beta_1^t}\,
            \frac{m_t}{\sqrt{\hat v_t}/\sqrt{1-\beta_2^t} + \epsilon}

    From torch 2.7 ``AdamW`` is ``Adam`` with ``decoupled_weight_decay=True``
    (and ``weight_decay=1e-2`` by default) and every param group carries that
    flag; before 2.7 ``AdamW`` was a class of its own with the same operations
    and no such key. Either way the update rule is
    :class:`higher_adam.DifferentiableAdam`'s with the decay decoupled, which
    this class always applies; it is registered for ``AdamW`` itself so that it
    resolves without a subclass warning. As in
    higher-adam, the square root's derivative at exactly zero is taken as zero,
    so meta-gradients stay finite when gradient entries are exactly zero;
    ``foreach``, ``fused``, ``capturable`` and ``differentiable`` change no
    numbers.

    Example:
        >>> import torch, higher_core
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
        >>> with higher_core.innerloop_ctx(model, opt) as (fmodel, diffopt):
        ...     _ = diffopt.step(fmodel(torch.randn(4, 3)).pow(2).mean())
    """

    def update(
        self,
        group: Mapping[str, Any],
        params: list[torch.Tensor],
        grads: list[torch.Tensor],
        states: list[State],
    ) -> tuple[list[torch.Tensor], list[State]]:
        return super().update(_decoupled(group), params, grads, states)

    def update_one(
        self, group: Mapping[str, Any], param: torch.Tensor, grad: torch.Tensor, state: State
    ) -> tuple[torch.Tensor, State]:
        return super().update_one(_decoupled(group), param, grad, state)

    def update_vjp(self, group: Mapping[str, Any], *args: Any) -> Any:
        """:meth:`higher_adam.DifferentiableAdam.update_vjp` with the decay decoupled."""
        return super().update_vjp(_decoupled(group), *args)
