"""Checks of what a differentiable optimizer is given: its param groups, a step's loss and gradients, an export target.

Each check is cheap (shapes and types, no tensor data is read) and raises an
error that names the argument and the fix, before anything is computed or written.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

__all__ = [
    "check_tracking",
    "check_callback_grads",
    "check_loss",
    "check_no_duplicates",
    "check_params",
    "check_reached",
    "check_strided",
    "refuse_shared",
    "shared_positions",
]


def check_no_duplicates(groups: Sequence[Sequence[int]], shapes: Sequence[tuple[int, ...]]) -> None:
    """Refuse a parameter listed twice in one param group (``groups``: positions per group).

    ``torch.optim`` steps such a parameter twice and warns that this will become
    an error; a differentiable step would have to choose which of two new
    values is the fast weight, so it is refused here.
    """
    for number, positions in enumerate(groups):
        if len(set(positions)) == len(positions):
            continue
        seen: set[int] = set()
        for i in positions:
            if i in seen:
                raise ValueError(
                    f"param group {number} lists parameter {i} (shape {shapes[i]}) twice; torch.optim "
                    "would step it twice (and warns that this will become an error): pass each "
                    "parameter once"
                )
            seen.add(i)


def check_params(params: Any) -> list[torch.Tensor]:
    """``step(params=...)`` as a list, refused unless a sequence of tensors, naming the first bad entry."""
    if isinstance(params, torch.Tensor) or not isinstance(params, Iterable):
        raise TypeError(
            f"step(params=...): params must be a sequence of tensors (the fast weights, in the order of "
            f"reference_params), got {type(params).__name__}"
        )
    params = list(params)
    for i, p in enumerate(params):
        if not isinstance(p, torch.Tensor):
            raise TypeError(
                f"step(params=...): params[{i}] is a {type(p).__name__}, not a tensor; pass one tensor per "
                "fast weight, in the order of reference_params (e.g. fmodel.fast_params)"
            )
    return params


def shared_positions(groups: Sequence[Sequence[int]]) -> frozenset[int]:
    """The positions listed in more than one param group (a parameter appended to a second group)."""
    seen: set[int] = set()
    shared: set[int] = set()
    for positions in groups:
        shared.update(seen.intersection(positions))
        seen.update(positions)
    return frozenset(shared)


def refuse_shared(shared: Iterable[int], groups: Sequence[Sequence[int]], shapes: Sequence[tuple[int, ...]],
                  name: str, rule: str) -> None:
    """Refuse a parameter in several param groups for a rule that steps every group at once."""
    i = min(shared)
    numbers = [n for n, positions in enumerate(groups) if i in positions]
    raise ValueError(
        f"parameter {i} (shape {shapes[i]}) is in param groups {', '.join(map(str, numbers))} of the "
        f"{name}; torch.optim steps such a parameter once per group, which {rule} cannot follow (it steps "
        "every group at once, or with its own step): put each parameter in one param group"
    )


def check_loss(loss: Any, trainable: bool = True) -> None:
    """Refuse a loss that is not a scalar tensor requiring grad, naming ``loss`` and the fix.

    ``trainable``: whether any fast weight requires grad; if none does (every
    parameter frozen), that is what the message says, whatever the loss.
    """
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"step(loss): loss must be a tensor computed from the fast weights, got {type(loss).__name__}")
    if loss.numel() != 1:
        raise ValueError(
            f"step(loss): loss must be a scalar, got a tensor of shape {tuple(loss.shape)}; "
            "reduce it first (loss.sum() or loss.mean())"
        )
    if not trainable:
        raise ValueError(
            "step(loss): no fast weight requires grad (every parameter is frozen, requires_grad=False), "
            "so there is nothing to step; unfreeze the parameters to train (p.requires_grad_()) before "
            "building the inner loop, or do not call step"
        )
    if not loss.requires_grad:
        raise ValueError(
            "step(loss): the loss does not require grad, so it was not computed from the fast "
            "weights (was it computed under torch.no_grad(), or from the original module?)"
        )


def check_reached(targets: Sequence[int], grads: Sequence[torch.Tensor | None]) -> None:
    """Refuse a loss whose graph reaches none of the fast weights ``targets`` (every gradient ``None``)."""
    if targets and all(grads[i] is None for i in targets):
        raise ValueError(
            "step(loss): the loss does not reach any fast weight, so the step would do nothing. "
            "Compute it from the current fast weights (fmodel(x) after the previous step), not "
            "from the original module, another context, or a loss already stepped on"
        )


def check_callback_grads(returned: Any, params: Sequence[torch.Tensor]) -> list[torch.Tensor | None]:
    """The gradients a ``grad_callback`` returned, checked: one per parameter, ``None`` or of its shape."""
    if returned is None:
        raise TypeError(
            "grad_callback returned None; it must return the list of gradients, one per parameter "
            "(None where there is none). Did it forget `return`?"
        )
    grads = list(returned)
    if len(grads) != len(params):
        raise ValueError(f"grad_callback returned {len(grads)} gradients for {len(params)} parameters")
    for i, (grad, param) in enumerate(zip(grads, params)):
        if grad is None:
            continue
        if not isinstance(grad, torch.Tensor):
            raise TypeError(
                f"grad_callback returned a {type(grad).__name__} for parameter {i}; return a tensor "
                "of the parameter's shape, or None"
            )
        if grad.shape != param.shape:
            raise ValueError(
                f"grad_callback returned a gradient of shape {tuple(grad.shape)} for parameter {i} "
                f"of shape {tuple(param.shape)}; return each gradient with its parameter's shape"
            )
    return grads


def check_strided(name: str, grads: Iterable[torch.Tensor | None]) -> None:
    """Refuse sparse gradients (``nn.Embedding(sparse=True)``), naming the optimizer and the fixes."""
    for i, grad in enumerate(grads):
        if grad is not None and grad.layout != torch.strided:
            raise ValueError(
                f"{name}: parameter {i} has a sparse gradient ({grad.layout}), which differentiable "
                "optimizers do not step; build the module with sparse=False, or densify in "
                "grad_callback=lambda grads: [None if g is None else g.to_dense() for g in grads]"
            )


def check_tracking(track_higher_grads: Any, fmodel: Any) -> None:
    """Refuse a ``track_higher_grads`` that is not a bool, or that contradicts the fmodel's flag."""
    if track_higher_grads is not None and not isinstance(track_higher_grads, bool):
        raise TypeError(f"track_higher_grads must be a bool, got {type(track_higher_grads).__name__}")
    if fmodel is not None and track_higher_grads is not None and track_higher_grads != fmodel.track_higher_grads:
        raise ValueError(
            f"track_higher_grads={track_higher_grads} but the fmodel has track_higher_grads="
            f"{fmodel.track_higher_grads}; the optimizer follows its fmodel: set "
            "fmodel.track_higher_grads (or leave track_higher_grads unset)"
        )
