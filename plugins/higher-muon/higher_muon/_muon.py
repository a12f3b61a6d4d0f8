"""Out-of-place Muon: momentum, Newton–Schulz orthogonalisation, shape-adjusted learning rate."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from higher_core.functional import add_scaled_exact, safe_sqrt, with_derivatives_of
from higher_core.optim import DifferentiableOptimizer, State

#: torch.optim.Muon refuses this many Newton–Schulz steps (at its first step)
_MAX_NS_STEPS = 100


def _frobenius_norm(x: torch.Tensor) -> torch.Tensor:
    """``x.norm()`` (torch's numbers) with derivative 0 instead of ``nan`` at ``x = 0``."""
    if not x.requires_grad:
        return x.norm()
    return with_derivatives_of(x.norm(), safe_sqrt((x * x).sum()))


def newton_schulz(
    x: torch.Tensor, coefficients: Sequence[float], steps: int, eps: float
) -> torch.Tensor:
    r"""``steps`` quintic Newton–Schulz iterations towards the orthogonal factor of the 2-D ``x``.

    With :math:`X_0 = X / \max(\|X\|_F, \epsilon)` (:math:`X` transposed when it has
    more rows than columns) and :math:`A_k = X_k X_k^\top`:
    :math:`X_{k+1} = a X_k + (b A_k + c A_k^2) X_k`. Computed in ``x``'s dtype.
    """
    a, b, c = coefficients
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T
    x = x / _frobenius_norm(x).clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        polynomial = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.addmm(x, polynomial, x, beta=a)
    return x.T if tall else x


def _lr_ratio(adjust_lr_fn: str | None, shape: torch.Size) -> float:
    rows, cols = shape[0], shape[1]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return math.sqrt(max(1, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    return 1.0


class DifferentiableMuon(DifferentiableOptimizer):
    r"""A differentiable version of ``torch.optim.Muon``, with the installed torch's numerics.

    .. math::
        B_t &= \mu B_{t-1} + (1-\mu) g_t \;(\text{as } \operatorname{lerp}), \qquad
        \tilde B_t = \begin{cases} g_t + \mu (B_t - g_t) & \text{nesterov} \\ B_t \end{cases} \\
        O_t &= \mathrm{NS}^{(a,b,c)}_k(\tilde B_t; \epsilon), \qquad
        \theta_t = \theta_{t-1}(1 - \gamma\lambda) - \gamma\,r(A, B)\, O_t

    where :math:`r(A, B)` is ``adjust_lr_fn``'s ratio for an :math:`A \times B`
    parameter (:math:`\sqrt{\max(1, A/B)}` for ``"original"``/``None``,
    :math:`0.2\sqrt{\max(A, B)}` for ``"match_rms_adamw"``). Every option of
    ``torch.optim.Muon`` is honoured; only 2-D parameters are accepted, as in torch.

    torch runs the Newton–Schulz iteration in ``bfloat16``, so its update is
    piecewise constant in the gradient at float64 resolution. Here the forward
    numbers are torch's, bit for bit, while the backward pass differentiates
    the same iteration run in the parameter's dtype (a straight-through
    estimate): meta-gradients are smooth and finite but are not the derivative
    of the bfloat16 rounding. Pass ``ns_dtype=None`` to run the iteration in the
    parameter's dtype in the forward pass too (exact derivatives, numbers that
    differ from torch's by the bfloat16 rounding), or set the ``ns_dtype``
    attribute of an existing instance. The Frobenius norm's
    derivative at zero is taken as zero, so a zero gradient gives finite
    meta-gradients.

    Args:
        ns_dtype: the dtype of the forward Newton–Schulz iteration
            (``torch.bfloat16``, torch's, by default); ``None`` for the parameter's.
        other, reference_params, ...: as for
            :class:`~higher_core.optim.DifferentiableOptimizer`.

    Example:
        >>> import torch, higher_core
        >>> model = torch.nn.Linear(3, 2, bias=False)
        >>> opt = torch.optim.Muon(model.parameters(), lr=0.02, momentum=0.9)
        >>> with higher_core.innerloop_ctx(model, opt) as (fmodel, diffopt):
        ...     _ = diffopt.step(fmodel(torch.randn(4, 3)).pow(2).mean())
        >>> sorted(diffopt.param_state[0])
        ['momentum_buffer']
    """

    tensor_hyperparameters = ("lr", "weight_decay", "momentum")
    scope = "tensor"

    def __init__(
        self,
        other: torch.optim.Optimizer,
        reference_params: Iterable[torch.Tensor],
        *args: Any,
        ns_dtype: torch.dtype | None = torch.bfloat16,
        **kwargs: Any,
    ) -> None:
        if ns_dtype is not None and not (isinstance(ns_dtype, torch.dtype) and ns_dtype.is_floating_point):
            raise ValueError(f"ns_dtype must be a floating point torch.dtype or None, got {ns_dtype!r}")
        self.ns_dtype = ns_dtype
        super().__init__(other, reference_params, *args, **kwargs)

    def check_param_groups(self, param_groups: Sequence[Mapping[str, Any]]) -> None:
        for group in param_groups:
            if group["ns_steps"] >= _MAX_NS_STEPS:
                raise ValueError(
                    f"ns_steps must be less than {_MAX_NS_STEPS} (torch.optim.Muon refuses "
                    f"{group['ns_steps']} at its first step)"
                )
            if len(group["ns_coefficients"]) != 3:
                raise ValueError(
                    f"ns_coefficients must be exactly 3 values (a, b, c), got {group['ns_coefficients']!r}"
                )

    def init_state(self, param: torch.Tensor, group: Mapping[str, Any]) -> State:
        return {"momentum_buffer": torch.zeros_like(param, memory_format=torch.preserve_format)}

    def _orthogonalize(self, update: torch.Tensor, group: Mapping[str, Any]) -> torch.Tensor:
        options = (group["ns_coefficients"], group["ns_steps"], group["eps"])
        if self.ns_dtype is None or self.ns_dtype == update.dtype:
            return newton_schulz(update, *options)
        with torch.no_grad():
            forward = newton_schulz(update.detach().to(self.ns_dtype), *options).to(update.dtype)
        if not update.requires_grad:
            return forward
        return with_derivatives_of(forward, newton_schulz(update, *options))

    def update_one(
        self, group: Mapping[str, Any], param: torch.Tensor, grad: torch.Tensor, state: State
    ) -> tuple[torch.Tensor, State]:
        lr, weight_decay, momentum = group["lr"], group["weight_decay"], group["momentum"]
        if grad.dim() != 2:
            raise ValueError(f"Muon only supports 2-D parameters, got shape {tuple(grad.shape)}")
        buf = torch.lerp(state["momentum_buffer"], grad, 1 - momentum)
        update = torch.lerp(grad, buf, momentum) if group["nesterov"] else buf
        ortho = self._orthogonalize(update, group)
        adjusted_lr = lr * _lr_ratio(group["adjust_lr_fn"], param.shape)
        param = param * (1 - lr * weight_decay)
        return add_scaled_exact(param, ortho, -adjusted_lr), {**state, "momentum_buffer": buf}
