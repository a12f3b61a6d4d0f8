r"""The safe square root as one autograd op: :math:`\sqrt{\max(x, 0)}` with derivative 0 at 0.

The forward pass makes two passes over the input (a clamp at 0, then an
in-place square root) and saves only the output :math:`y`. The derivative is
:math:`\partial x = g / (2y)` where :math:`y > 0`, else :math:`0 \cdot g`:

- grad mode off (an ordinary ``backward()``): three passes, :math:`2y` with its
  zeros replaced by :math:`+\infty`, then :math:`g / (2y)` in place (:math:`\pm 0`
  where :math:`y = 0`);
- grad mode on (``create_graph=True``: meta-gradients, Hessian-vector
  products), and forward-mode AD: differentiable operations that stay finite at
  every order, :math:`(g\,m) / (2y + 2 - 2m)` with the constant mask
  :math:`m = \operatorname{sign} y`. Autograd sees the dependence on :math:`x`
  through the saved output, whose own backward is again this op's, so every
  derivative at :math:`x \le 0` is 0.

Both give the numbers of the former masked form :math:`\sqrt{x + s}\,m` (the
backward of ``torch.sqrt``, :math:`g / (2y)`), signs of zero included. A list
of tensors makes one autograd node; its backward with grad mode on uses
``torch._foreach_*`` kernels, which give the per-tensor numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

import torch

from higher_core.compat import dual_level_open, functorch_transforms_active

__all__ = ["foreach_safe_sqrt_op", "safe_sqrt_op"]

_INF = float("inf")
# torch.func transforms (vmap, grad, jvp) need an autograd.Function with setup_context, whose
# apply costs about 3x the Python overhead of the classic form: take it only under a transform
_transforms_active: Callable[[], bool] = functorch_transforms_active
_dual_level_open = dual_level_open


def _forward(x: torch.Tensor) -> torch.Tensor:
    kept = torch.clamp_min(x, 0.0)  # x < 0 -> 0; -0 and nan stay as they are
    return kept.sqrt_() if kept.is_floating_point() else kept.sqrt()


def _differentiable() -> bool:
    return torch.is_grad_enabled() or _dual_level_open()


def _backward(grad: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if _differentiable():
        mask = torch.sign(y).detach()
        return (grad * mask) / torch.add(2 - 2 * mask, y, alpha=2)  # 2y, or 2 where y == 0
    twice = y.mul(2)
    torch.threshold_(twice, 0.0, _INF)  # g / inf = +-0 where y == 0
    return torch.div(grad, twice, out=twice)


def _foreach_backward(grads: list[torch.Tensor], ys: list[torch.Tensor]) -> list[torch.Tensor]:
    if not _differentiable():
        return [_backward(g, y) for g, y in zip(grads, ys)]
    with torch.no_grad():
        masks = torch._foreach_sign(ys)
        offsets = torch._foreach_mul(masks, -2.0)
        torch._foreach_add_(offsets, 2.0)
    return torch._foreach_div(torch._foreach_mul(grads, masks), torch._foreach_add(offsets, ys, alpha=2.0))


class _SafeSqrt(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        y = _forward(x)
        ctx.save_for_backward(y)
        if _dual_level_open():
            ctx.save_for_forward(y)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return _backward(grad, *ctx.saved_tensors)

    @staticmethod
    def jvp(ctx: Any, tangent: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return _backward(tangent, *ctx.saved_tensors)


class _SafeSqrtUnderTransforms(torch.autograd.Function):
    """The same op in the form ``torch.func`` transforms accept."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return _forward(x)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)

    backward = _SafeSqrt.backward
    jvp = _SafeSqrt.jvp


class _ForeachSafeSqrt(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        ys = torch._foreach_clamp_min(xs, 0.0)
        torch._foreach_sqrt_(ys)
        ctx.save_for_backward(*ys)
        ctx.mark_non_differentiable(*(y for y, needed in zip(ys, ctx.needs_input_grad) if not needed))
        return tuple(ys)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        needed = [k for k, flag in enumerate(ctx.needs_input_grad) if flag]
        ys = ctx.saved_tensors
        out: list[torch.Tensor | None] = [None] * len(ys)
        for k, dx in zip(needed, _foreach_backward([grads[k] for k in needed], [ys[k] for k in needed])):
            out[k] = dx
        return tuple(out)


def safe_sqrt_op(x: torch.Tensor) -> torch.Tensor:
    """The op on one tensor (see the module docstring)."""
    if _transforms_active():
        return _SafeSqrtUnderTransforms.apply(x)
    if (x.requires_grad and torch.is_grad_enabled()) or _dual_level_open():
        return _SafeSqrt.apply(x)
    return _forward(x)


def foreach_safe_sqrt_op(xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The op on every tensor of a list, as one autograd node."""
    if _transforms_active() or _dual_level_open():
        return [safe_sqrt_op(x) for x in xs]
    if torch.is_grad_enabled() and any(x.requires_grad for x in xs):
        return list(_ForeachSafeSqrt.apply(*xs))
    return [_forward(x) for x in xs]
