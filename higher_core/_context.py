"""``innerloop_ctx``: a patched module and a differentiable optimizer, together."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from higher_core._attention import select_in_forward
from higher_core._boundary import check_bool, check_device, check_module
from higher_core._optimizer import DifferentiableOptimizer
from higher_core._overrides import Override
from higher_core._registry import resolve_for
from higher_core.patch import PatchedModule, monkeypatch

if TYPE_CHECKING:  # the batched layer imports the core, never the other way
    from higher_core.batched import BatchedDifferentiableOptimizer, BatchedPatchedModule

__all__ = ["innerloop_ctx"]


@contextlib.contextmanager
def innerloop_ctx(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    device: torch.device | str | None = None,
    copy_initial_weights: bool = True,
    override: Override | None = None,
    track_higher_grads: bool = True,
    tasks: int | None = None,
    math_attention: bool = True,
    **kwargs: Any,
) -> Iterator[
    tuple[PatchedModule, DifferentiableOptimizer] | tuple[BatchedPatchedModule, BatchedDifferentiableOptimizer]
]:
    """A context manager for writing differentiable inner loops.

    Every argument is checked here, before anything is copied. A
    ``torch.compile``'d model is unwrapped (its ``_orig_mod`` runs uncompiled:
    a compiled graph cannot take fast weights), with a warning. Inside the block,
    torch's "derivative for aten::<op> is not implemented" (a meta-gradient through
    an operation with no double backward) is raised as
    :class:`~higher_core.errors.MissingDoubleBackwardError`, naming the op and the fix.

    Args:
        model: the module to adapt.
        opt: an optimizer over (a subset of) ``model``'s parameters, of a type some
            installed plugin (or :func:`higher_core.register_optim`) supports.
        device: a device to cast the fast weights and state to (default: the model's).
        copy_initial_weights: if True, the initial fast weights are copies, off the
            gradient tape; set False for MAML, so meta-gradients reach ``model``.
        override: hyperparameters as ``{name: [value]}`` or one value per group;
            tensors receive gradients.
        track_higher_grads: if False, unroll without a graph ("test mode").
        tasks: run a meta-batch of ``tasks`` independent inner loops at once: fast
            weights ``[T, *shape]``, per-task losses ``[T]`` (see :mod:`higher_core.batched`).
        math_attention: while higher-order gradients are tracked, the patched forward runs
            ``scaled_dot_product_attention`` with torch's math kernel (the fused ones have no
            double backward); False keeps the kernel torch picks. See README "Transformers".
        **kwargs: passed on to the differentiable optimizer (``grad_callback``, or a
            plugin's own options).

    Yields:
        ``(fmodel, diffopt)``: the patched module and the differentiable optimizer.

    Example:
        >>> import torch, higher_core
        >>> model = torch.nn.Linear(4, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> x, y = torch.randn(8, 4), torch.randn(8, 1)
        >>> with higher_core.innerloop_ctx(model, opt, copy_initial_weights=False) as (fmodel, diffopt):
        ...     for _ in range(3):
        ...         _ = diffopt.step(torch.nn.functional.mse_loss(fmodel(x), y))
        ...     torch.nn.functional.mse_loss(fmodel(x), y).backward()
        >>> model.weight.grad.shape
        torch.Size([1, 4])
    """
    model = check_module(model, "innerloop_ctx")
    device = check_device(device, "innerloop_ctx")
    copy_initial_weights = check_bool(copy_initial_weights, "innerloop_ctx(copy_initial_weights=...)")
    track_higher_grads = check_bool(track_higher_grads, "innerloop_ctx(track_higher_grads=...)")
    math_attention = check_bool(math_attention, "innerloop_ctx(math_attention=...)")
    diff_type = resolve_for(opt)  # fail before copying the model
    if tasks is not None:  # batched tasks: the higher_core.batched layer, imported on first use
        from higher_core import batched

        pair = batched.innerloop(model, opt, tasks, device=device, copy_initial_weights=copy_initial_weights,
                                 override=override, track_higher_grads=track_higher_grads, **kwargs)
        select_in_forward(pair[0], math_attention)
    else:
        fmodel = monkeypatch(model, device=device, copy_initial_weights=copy_initial_weights,
                             track_higher_grads=track_higher_grads, math_attention=math_attention)
        pair = fmodel, diff_type(opt, fmodel._reference_params, fmodel=fmodel, device=device, override=override,
                                 track_higher_grads=track_higher_grads, **kwargs)
    try:
        yield pair
    except RuntimeError as error:  # torch's "derivative for ... is not implemented": name the op and the fix
        from higher_core._double_backward import translate

        translated = translate(error)
        if translated is None:
            raise
        raise translated from error
