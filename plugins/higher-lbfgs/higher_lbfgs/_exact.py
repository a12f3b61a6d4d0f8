"""``torch.add(x, y, alpha=)`` numbers for a tensor ``alpha`` that keeps its gradient."""

from __future__ import annotations

from typing import Union

import torch

__all__ = ["add_scaled"]

Scalar = Union[int, float, torch.Tensor]


def add_scaled(x: torch.Tensor, y: torch.Tensor, alpha: Scalar) -> torch.Tensor:
    r""":math:`x + \alpha y` with the numbers of ``torch.add(x, y, alpha=)`` also for a 0-d tensor :math:`\alpha`.

    ``torch.optim.LBFGS`` passes 0-d tensors (step lengths, two-loop
    coefficients) as ``alpha``, which torch reads as a number and may fuse into
    a multiply-add. Here the forward numbers are the same, and a tensor
    :math:`\alpha` that requires grad still receives its gradient (every order)
    through a term that is exactly zero in the forward pass.
    """
    if not isinstance(alpha, torch.Tensor):
        return torch.add(x, y, alpha=alpha)
    out = torch.add(x, y, alpha=alpha.item())
    if alpha.requires_grad:
        out = out + (alpha - alpha.detach()) * y
    return out
