"""A strong-Wolfe line search whose result stays differentiable.

The control flow (which bracket end moves, when to stop) is decided on the
values, exactly as ``torch.optim.LBFGS``'s ``strong_wolfe`` decides it. The
numbers that flow into the chosen step length (losses, directional
derivatives, cubic-interpolation minimisers, bracket safeguards) are tensors
that keep their graph, so the step length, and the loss and gradient returned
with it, are differentiable functions of the point the search starts from.

torch holds the losses as Python numbers (``float(loss)``). Here a loss is a
float64 tensor standing for that number (:func:`as_number`): between losses the
arithmetic is in double precision, as Python's, and where a loss meets a tensor
it is first cast to the tensor's dtype (:func:`meets`), as torch casts a Python
number. So the numbers and branches are torch's with float32 parameters too,
whether the loss is float32 or float64.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Union

import torch

from higher_core.functional import as_float64, safe_sqrt

__all__ = ["Trial", "as_number", "cubic_minimizer", "meets", "strong_wolfe"]

Number = Union[int, float, torch.Tensor]


def as_number(loss: torch.Tensor) -> torch.Tensor:
    """A loss as torch's LBFGS holds it, ``float(loss)``: its value in float64, still in the graph.

    (MPS has no float64: there the loss keeps its dtype.)
    """
    return as_float64(loss)


def meets(number: Number, tensor: Number) -> Number:
    """``number`` (a Python number, or a loss from :func:`as_number`) as torch combines it with ``tensor``.

    A Python number meeting a tensor is cast to the tensor's dtype first, so a
    float64 loss meeting a float32 tensor is cast to float32.
    """
    if isinstance(number, torch.Tensor) and isinstance(tensor, torch.Tensor) and number.dtype != tensor.dtype:
        return number.to(tensor.dtype)
    return number


class Trial(NamedTuple):
    """One evaluated step length: the loss, the flat gradient and the slope along the direction."""

    t: Number
    f: torch.Tensor
    g: torch.Tensor
    gtd: torch.Tensor


def cubic_minimizer(
    x1: Number, f1: Number, g1: Number, x2: Number, f2: Number, g2: Number,
    bounds: tuple[Number, Number] | None = None,
) -> Number:
    """The minimiser of the cubic with values ``f`` and slopes ``g`` at ``x1`` and ``x2``, clipped to ``bounds``.

    Without a real minimiser, the middle of the bounds. ``bounds`` defaults to
    the interval between the two points.
    """
    if bounds is None:
        bounds = (x1, x2) if x1 <= x2 else (x2, x1)
    low, high = bounds
    # torch holds the losses as Python numbers: a number over a tensor is the tensor's reciprocal
    # times the number (Tensor.__rtruediv__), a tensor; a number over a number is a number
    span = x1 - x2
    rise = 3 * (f1 - f2)
    slopes = g1 + g2
    if isinstance(span, torch.Tensor):
        d1 = slopes - span.reciprocal() * meets(rise, span)
    else:
        d1 = slopes - meets(rise / span, slopes)
    discriminant = d1**2 - g1 * g2
    if not discriminant >= 0:
        return (low + high) / 2.0
    d2 = safe_sqrt(torch.as_tensor(discriminant))
    if x1 <= x2:
        candidate = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
    else:
        candidate = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
    return min(max(candidate, low), high)


def _low_high(bracket: list[Trial]) -> tuple[int, int]:
    return (0, 1) if bracket[0].f <= bracket[-1].f else (1, 0)


def strong_wolfe(
    evaluate: Callable[[Number], tuple[torch.Tensor, torch.Tensor]],
    t: Number,
    d: torch.Tensor,
    f: torch.Tensor,
    g: torch.Tensor,
    gtd: torch.Tensor,
    c1: float = 1e-4,
    c2: float = 0.9,
    tolerance_change: float = 1e-9,
    max_ls: int = 25,
) -> tuple[torch.Tensor, torch.Tensor, Number, int]:
    """Search along ``d`` for a step length satisfying the strong Wolfe conditions.

    Args:
        evaluate: step length -> (loss, flat gradient) at ``x + t d``.
        t: the first step length to try.
        d: the search direction.
        f, g, gtd: the loss, flat gradient and slope ``g . d`` at ``t = 0``.
            Losses, ``f`` and those ``evaluate`` returns, are taken as Python
            numbers (:func:`as_number`).
        c1, c2: the sufficient-decrease and curvature constants.
        tolerance_change: stop when the bracket is this small (times ``max |d|``).
        max_ls: the most evaluations after the first one.

    Returns:
        The loss (as :func:`as_number` gives it), the flat gradient and the step
        length chosen, and the number of evaluations.
    """
    d_norm = d.abs().max()
    f = as_number(f)
    start = Trial(0, f, g, gtd)

    def trial(step: Number) -> Trial:
        loss, grad = evaluate(step)
        return Trial(step, as_number(loss), grad, grad.dot(d))

    def armijo_fails(point: Trial) -> bool:
        decrease = c1 * point.t * gtd  # a tensor: the losses meet it in its dtype
        return bool(meets(point.f, decrease) > (meets(f, decrease) + decrease))

    def curvature(point: Trial) -> bool:
        return bool(abs(point.gtd) <= -c2 * gtd)

    # bracketing: grow the step until an interval holds an acceptable point
    previous, current = start, trial(t)
    evaluations, iterations = 1, 0
    done = False
    bracket: list[Trial] = []
    while iterations < max_ls:
        if armijo_fails(current) or (iterations > 1 and current.f >= previous.f):
            bracket = [previous, current]
            break
        if curvature(current):
            bracket, done = [current], True
            break
        if current.gtd >= 0:
            bracket = [previous, current]
            break
        bounds = (current.t + 0.01 * (current.t - previous.t), current.t * 10)
        step = cubic_minimizer(previous.t, previous.f, previous.gtd, current.t, current.f, current.gtd, bounds)
        previous, current = current, trial(step)
        evaluations += 1
        iterations += 1
    if iterations == max_ls:
        bracket = [start, current]

    # zoom: shrink the bracket until its low end satisfies the conditions
    insufficient_progress = False
    low, high = _low_high(bracket)
    while not done and iterations < max_ls:
        ends = [bracket[0].t, bracket[1].t]
        if abs(ends[1] - ends[0]) * d_norm < tolerance_change:
            break
        step = cubic_minimizer(bracket[0].t, bracket[0].f, bracket[0].gtd,
                               bracket[1].t, bracket[1].f, bracket[1].gtd)
        top, bottom = max(ends), min(ends)
        margin = 0.1 * (top - bottom)
        if min(top - step, step - bottom) < margin:
            if insufficient_progress or step >= top or step <= bottom:
                step = top - margin if abs(step - top) < abs(step - bottom) else bottom + margin
                insufficient_progress = False
            else:
                insufficient_progress = True
        else:
            insufficient_progress = False
        current = trial(step)
        evaluations += 1
        iterations += 1
        if armijo_fails(current) or current.f >= bracket[low].f:
            bracket[high] = current
            low, high = _low_high(bracket)
        else:
            if curvature(current):
                done = True
            elif current.gtd * (bracket[high].t - bracket[low].t) >= 0:
                bracket[high] = bracket[low]
            bracket[low] = current

    best = bracket[low]
    return best.f, best.g, best.t, evaluations
