"""Which ``scaled_dot_product_attention`` kernel a patched forward runs.

torch's fused attention kernels (flash and memory-efficient attention, on the
CPU and on CUDA) have no double backward: a meta-gradient through an inner step
of a transformer fails with "derivative for
aten::_scaled_dot_product_flash_attention_for_cpu_backward is not implemented".
So while higher-order gradients are tracked (``track_higher_grads`` and grad
mode on), a patched module runs its forward with torch's math kernel, which is
made of differentiable operations (:func:`higher_core.compat.math_attention`),
and keeps the fused kernels where only first-order gradients are taken (test
mode, first-order MAML, evaluation under ``torch.no_grad()``). Set
``fmodel.math_attention = False`` (or ``innerloop_ctx(..., math_attention=False)``)
to keep the kernel torch picks; README "Transformers" has the measured cost.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from higher_core.compat import math_attention

__all__ = ["attention_kernel", "select_in_forward"]

_FUSED = contextlib.nullcontext()  # (reusable: entering it does nothing)


def attention_kernel(tracking: bool, enabled: bool) -> Any:
    """The context a patched forward runs in: the math kernel while second-order gradients are tracked.

    Example:
        >>> import torch
        >>> with attention_kernel(tracking=True, enabled=True):
        ...     torch.backends.cuda.flash_sdp_enabled()
        False
    """
    return math_attention() if enabled and tracking and torch.is_grad_enabled() else _FUSED


def _enter(module: nn.Module, args: tuple[Any, ...]) -> None:
    context = attention_kernel(module.track_higher_grads, module.__dict__.get("math_attention", True))
    if context is not _FUSED:
        context.__enter__()
        module.__dict__["_higher_core_attention"] = context


def _exit(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
    context = module.__dict__.pop("_higher_core_attention", None)
    if context is not None:
        context.__exit__(None, None, None)


def select_in_forward(fmodule: nn.Module, enabled: bool) -> None:
    """Run ``fmodule``'s forward in :func:`attention_kernel` through a pair of its own hooks.

    For a patched module whose forward does not choose the kernel itself (the
    batched one); ``fmodule.math_attention`` is the switch, read at each call.
    """
    fmodule.__dict__["math_attention"] = enabled
    fmodule.register_forward_pre_hook(_enter)
    fmodule.register_forward_hook(_exit, always_call=True)
