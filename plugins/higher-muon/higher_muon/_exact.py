"""Forward numbers exactly as ``torch.optim`` computes them, derivatives that stay finite.

``torch.optim`` reads some tensors as Python numbers (``alpha=`` arguments)
and uses ``torch.norm``, whose higher derivatives are ``nan`` at zero.
These helpers keep torch's forward values bit for bit while the backward pass
follows a mathematically equal, well-behaved expression.
"""

from __future__ import annotations

from typing import Union

import torch

__all__ = ["add_scaled", "with_derivatives_of"]

Scalar = Union[float, torch.Tensor]


def with_derivatives_of(value: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """``value`` in the forward pass, the derivatives (every order) of ``surrogate`` in the backward.

    ``surrogate`` must be the same function as ``value`` written another way; the
    forward result is ``value + 0`` exactly.
    """
    return value.detach() + (surrogate - surrogate.detach())


def add_scaled(x: torch.Tensor, y: torch.Tensor, alpha: Scalar) -> torch.Tensor:
    r""":math:`x + \alpha y` with the numbers of ``torch.add(x, y, alpha=)`` also for a 0-d tensor :math:`\alpha`.

    ``torch.add`` takes ``alpha`` as a number (and may fuse the multiply-add);
    a tensor :math:`\alpha` that requires grad still receives its gradient
    through a term that is exactly zero in the forward pass.
    """
    if not isinstance(alpha, torch.Tensor):
        return torch.add(x, y, alpha=alpha)
    out = torch.add(x, y, alpha=alpha.item())
    if alpha.requires_grad:
        out = out + (alpha - alpha.detach()) * y
    return out
