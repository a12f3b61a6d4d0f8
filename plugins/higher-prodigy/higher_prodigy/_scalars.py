"""Prodigy's global scalars (d, its numerator and denominator) kept as numbers or 0-d tensors.

``prodigyopt`` keeps them as Python floats (``.item()``); here they stay in the
graph, so meta-gradients see how the step size depends on the trajectory.
Comparisons follow Python's ``max``/``min`` exactly (ties keep the first
argument), so forward numbers and branches match ``prodigyopt``.
"""

from __future__ import annotations

import math
from typing import Union

import torch

from higher_core.functional import number, safe_sqrt

__all__ = ["Scalar", "addcmul_exact", "first_max", "first_min", "is_inf", "sqrt", "value"]

Scalar = Union[float, torch.Tensor]


def value(x: Scalar) -> float:
    """The number a scalar holds (what ``prodigyopt`` compares)."""
    return float(number(x))


def first_max(a: Scalar, b: Scalar) -> Scalar:
    """``max(a, b)`` as Python computes it: ``b`` only if strictly greater."""
    return b if value(b) > value(a) else a


def first_min(a: Scalar, b: Scalar) -> Scalar:
    """``min(a, b)`` as Python computes it: ``b`` only if strictly smaller."""
    return b if value(b) < value(a) else a


def sqrt(x: Scalar) -> Scalar:
    """``math.sqrt`` for a number; a square root with a finite derivative at 0 for a tensor."""
    return safe_sqrt(x) if isinstance(x, torch.Tensor) else math.sqrt(x)



def addcmul_exact(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, v: Scalar) -> torch.Tensor:
    r""":math:`x + v\,y z` with the numbers of ``torch.addcmul(x, y, z, value=v)`` also for a 0-d tensor :math:`v`.

    ``prodigyopt`` passes its number :math:`d` as ``value``; ``x + v * (y * z)``
    rounds differently. As :func:`higher_core.functional.add_scaled_exact` does for
    ``alpha``, this reads the tensor's value and gives it its derivatives through a
    term that is exactly zero in the forward pass.
    """
    if not isinstance(v, torch.Tensor):
        return torch.addcmul(x, y, z, value=v)
    out = torch.addcmul(x, y, z, value=v.item())
    if v.requires_grad:
        out = out + (v - v.detach()) * (y * z)
    return out


def is_inf(x: Scalar) -> bool:
    return math.isinf(value(x))
