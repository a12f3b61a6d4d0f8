"""Building blocks for out-of-place update rules.

Update rules mix Python numbers (the usual hyperparameters, used exactly as
``torch.optim`` uses them so that the numbers match) and tensors (overrides that
receive gradients). These helpers pick the matching operation for either.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Union

import torch

from higher_core._safe_sqrt import foreach_safe_sqrt_op, safe_sqrt_op

__all__ = [
    "Scalar",
    "add_scaled",
    "add_scaled_exact",
    "decayed",
    "regularized_gradient",
    "with_derivatives_of",
    "addcdiv",
    "addcmul",
    "as_float64",
    "foreach_div",
    "foreach_mul",
    "foreach_scalar",
    "foreach_safe_sqrt",
    "is_zero",
    "number",
    "safe_sqrt",
    "scalar_dtype",
]

#: a hyperparameter value, a Python number or a tensor that may require grad
Scalar = Union[float, torch.Tensor]


def is_zero(value: Scalar) -> bool:
    """``value == 0`` for a number; a tensor counts as non-zero (it may be learned)."""
    return not isinstance(value, torch.Tensor) and value == 0


def scalar_dtype() -> torch.dtype:
    """The dtype ``torch.optim`` gives its 0-d state scalars (``step``, NAdam's ``mu_product``).

    float64 under a float64 default dtype, float32 otherwise.

    Example:
        >>> scalar_dtype()
        torch.float32
    """
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def number(value: Any) -> Any:
    """The Python number a tensor holds (``.item()``, as ``torch.optim`` reads it); anything else as it is.

    For hyperparameters and statistics that need no gradient where torch reads
    them as numbers: a tensor is read detached, so no graph is kept.

    Example:
        >>> number(torch.tensor(0.5)), number(3)
        (0.5, 3)
    """
    return value.detach().item() if isinstance(value, torch.Tensor) else value


def as_float64(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float64 as ``.item()`` gives it to torch, still in the graph; unchanged on MPS (no float64).

    Example:
        >>> as_float64(torch.tensor(1.5)).dtype
        torch.float64
    """
    if x.dtype == torch.float64 or x.device.type == "mps":
        return x
    return x.to(torch.float64)


def add_scaled(x: torch.Tensor, y: torch.Tensor, alpha: Scalar) -> torch.Tensor:
    r""":math:`x + \alpha y`, with ``torch.add(..., alpha=)`` when :math:`\alpha` is a number."""
    if isinstance(alpha, torch.Tensor):
        return x + alpha * y
    return torch.add(x, y, alpha=alpha)


def add_scaled_exact(x: torch.Tensor, y: torch.Tensor, alpha: Scalar) -> torch.Tensor:
    r""":math:`x + \alpha y` with the numbers of ``torch.add(x, y, alpha=)`` also for a 0-d tensor :math:`\alpha`.

    ``torch.add`` takes ``alpha`` as a number (and may fuse the multiply-add);
    where ``torch.optim`` reads a tensor hyperparameter that way, this matches
    it bit for bit, and a tensor :math:`\alpha` that requires grad still receives
    its gradient through a term that is exactly zero in the forward pass. (It
    reads the tensor's value, a device synchronisation on CUDA.) A tensor
    :math:`\alpha` of several elements (per-task values ``[T, 1, ..., 1]`` of
    batched tasks) is broadcast: :math:`x + \alpha y`.
    """
    if not isinstance(alpha, torch.Tensor):
        return torch.add(x, y, alpha=alpha)
    if alpha.numel() != 1:  # batched tasks: one value per task
        return x + alpha * y
    out = torch.add(x, y, alpha=alpha.item())
    if alpha.requires_grad:
        out = out + (alpha - alpha.detach()) * y
    return out


def with_derivatives_of(value: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """``value`` in the forward pass, the derivatives (every order) of ``surrogate`` in the backward.

    For keeping ``torch.optim``'s forward numbers bit for bit where it computes
    something (``torch.norm``, a ``.item()``) whose derivatives are undefined or
    ``nan`` at zero: ``surrogate`` must be the same function written another,
    well-behaved way. The forward result is ``value + 0`` exactly.

    Example:
        >>> import torch
        >>> x = torch.zeros(3, requires_grad=True)
        >>> y = with_derivatives_of(x.norm(), (x * x).sum())
        >>> torch.autograd.grad(y, x)[0]
        tensor([0., 0., 0.])
    """
    return value.detach() + (surrogate - surrogate.detach())


def decayed(group: Mapping[str, Any], param: torch.Tensor,
            grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Parameter and gradient as most ``torch.optim`` rules start: ``maximize``, then weight decay.

    .. math::
        g \leftarrow \pm g; \quad
        \theta \leftarrow \theta (1 - \gamma\lambda) \text{ if decoupled, else }
        g \leftarrow g + \lambda\theta

    The decay is decoupled (AdamW's rule) when the group sets
    ``decoupled_weight_decay``.
    """
    if group.get("maximize", False):
        grad = -grad
    weight_decay = group.get("weight_decay", 0)
    if not is_zero(weight_decay):
        if group.get("decoupled_weight_decay", False):
            param = param * (1 - group["lr"] * weight_decay)
        else:
            grad = add_scaled(grad, param, weight_decay)
    return param, grad


def regularized_gradient(group: Mapping[str, Any], param: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    r"""The gradient as :func:`decayed` leaves it, for rules with L2 weight decay only.

    .. math:: g \leftarrow \pm g + \lambda\theta
    """
    return decayed(group, param, grad)[1]


def addcmul(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, value: Scalar) -> torch.Tensor:
    r""":math:`x + v\,y z`."""
    if isinstance(value, torch.Tensor):
        return x + value * (y * z)
    return torch.addcmul(x, y, z, value=value)


def addcdiv(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, value: Scalar) -> torch.Tensor:
    r""":math:`x + v\,y / z`."""
    if isinstance(value, torch.Tensor):
        return x + (value * y) / z  # the order of torch's addcdiv kernel
    return torch.addcdiv(x, y, z, value=value)


def safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    r""":math:`\sqrt{x}` whose derivative at :math:`x = 0` is 0 instead of :math:`\infty`.

    The forward values equal ``torch.sqrt`` exactly for :math:`x \ge 0` (and are 0
    for :math:`x < 0`). Where a gradient entry is exactly zero (a dead ReLU
    unit), ``torch.sqrt``'s backward gives :math:`\infty \cdot 0 = \mathrm{nan}`
    in the meta-gradient; here the derivative at :math:`x \le 0` is taken as 0
    (the subgradient of :math:`|g| = \sqrt{g^2}`), at every order of
    differentiation. It is one autograd op, as cheap as ``torch.sqrt`` plus a
    clamp: the backward is :math:`g / (2\sqrt{x})` where :math:`x > 0`, else 0,
    and with ``create_graph=True`` it is built from differentiable operations
    that stay finite at 0, so double backward and Hessian-vector products work.

    Example:
        >>> import torch
        >>> x = torch.tensor([0.0, 4.0], requires_grad=True)
        >>> torch.autograd.grad(safe_sqrt(x).sum(), x)[0]
        tensor([0.0000, 0.2500])
    """
    return safe_sqrt_op(x)


def foreach_safe_sqrt(xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    r""":func:`safe_sqrt` of every tensor of a list, as one autograd op.

    The same numbers as :func:`safe_sqrt` at every order of differentiation
    (negative entries included), computed with ``torch._foreach_*`` kernels
    where that is faster, and one autograd node for the whole list.

    Example:
        >>> import torch
        >>> xs = [torch.tensor([0.0, 4.0], requires_grad=True)]
        >>> torch.autograd.grad(foreach_safe_sqrt(xs)[0].sum(), xs)[0]
        tensor([0.0000, 0.2500])
    """
    return foreach_safe_sqrt_op(xs)


def foreach_scalar(value: Scalar, count: int) -> float | list[torch.Tensor]:
    """A scalar argument for a ``torch._foreach_*`` op over ``count`` tensors.

    A number is passed as it is; a tensor (a learned hyperparameter) as a list of
    ``count`` references to it, since ``_foreach_mul(tensors, tensor)`` cannot
    differentiate with respect to a 0-dim tensor argument.
    """
    return [value] * count if isinstance(value, torch.Tensor) else value


def _foreach_scalar_op(per_tensor: Callable[[torch.Tensor, Scalar], torch.Tensor],
                       multi_tensor: Callable[..., list[torch.Tensor]], xs: list[torch.Tensor],
                       scalars: Scalar | list[Scalar]) -> list[torch.Tensor]:
    if not isinstance(scalars, list):
        scalars = [scalars] * len(xs)
    if any(isinstance(s, torch.Tensor) for s in scalars):
        return [per_tensor(x, s) for x, s in zip(xs, scalars)]
    return multi_tensor(xs, scalars)


def foreach_mul(xs: list[torch.Tensor], scalars: Scalar | list[Scalar]) -> list[torch.Tensor]:
    """``xs[i] * scalars[i]`` (or ``* scalars`` for one scalar), by the fastest differentiable route.

    Numbers go to one ``torch._foreach_mul`` kernel; tensors (learned
    hyperparameters) to a per-tensor loop, which autograd handles faster than
    ``_foreach_mul`` with a list of 0-dim tensors.
    """
    return _foreach_scalar_op(operator.mul, torch._foreach_mul, xs, scalars)


def foreach_div(xs: list[torch.Tensor], scalars: Scalar | list[Scalar]) -> list[torch.Tensor]:
    """``xs[i] / scalars[i]``, like :func:`foreach_mul`."""
    return _foreach_scalar_op(operator.truediv, torch._foreach_div, xs, scalars)
