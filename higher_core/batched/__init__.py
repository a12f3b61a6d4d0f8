"""A meta-batch of ``T`` independent inner loops in one pass: ``innerloop_ctx(model, opt, tasks=T)``.

Fast weights carry a leading task dimension (``[T, *param.shape]``), the patched
module maps over it (:class:`BatchedPatchedModule`), and the differentiable
optimizer steps every task at once with the installed plugin's rule, unchanged
(:class:`BatchedDifferentiableOptimizer`). Task ``t`` gets the numbers it would
get in an inner loop of its own.

Example:
    >>> import torch, higher_core
    >>> net = torch.nn.Sequential(torch.nn.Linear(1, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    >>> opt = torch.optim.SGD(net.parameters(), lr=0.01)
    >>> xs, ys = torch.randn(4, 10, 1), torch.randn(4, 10, 1)   # 4 tasks, 10 points each
    >>> with higher_core.innerloop_ctx(net, opt, tasks=4, copy_initial_weights=False) as (fnet, diffopt):
    ...     for _ in range(3):
    ...         _ = diffopt.step((fnet(xs) - ys).pow(2).mean((1, 2)))   # per-task losses, shape [4]
    ...     (fnet(xs) - ys).pow(2).mean((1, 2)).sum().backward()
    >>> net[0].weight.grad.shape
    torch.Size([16, 1])
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from higher_core._overrides import Override
from higher_core._registry import resolve
from higher_core.batched._errors import BatchingError
from higher_core.batched._module import BatchedPatchedModule
from higher_core.batched._optimizer import BatchedDifferentiableOptimizer, scope_of

__all__ = ["BatchedDifferentiableOptimizer", "BatchedPatchedModule", "BatchingError", "innerloop", "scope_of"]


def innerloop(model: nn.Module, opt: torch.optim.Optimizer, tasks: int, device: torch.device | str | None = None,
              copy_initial_weights: bool = True, override: Override | None = None,
              track_higher_grads: bool = True,
              **kwargs: Any) -> tuple[BatchedPatchedModule, BatchedDifferentiableOptimizer]:
    """The pair ``innerloop_ctx(..., tasks=T)`` yields: a batched module and a batched optimizer."""
    diff_type = resolve(type(opt))  # fail before copying the model
    fmodel = BatchedPatchedModule(model, tasks, device=device, copy_initial_weights=copy_initial_weights,
                                  track_higher_grads=track_higher_grads)
    diffopt = BatchedDifferentiableOptimizer(diff_type, opt, fmodel._reference_params, tasks, fmodel=fmodel,
                                             device=device, override=override,
                                             track_higher_grads=track_higher_grads, **kwargs)
    return fmodel, diffopt
