"""Per-task hyperparameters: an override of shape ``[T]`` gives task ``t`` its own value.

A hyperparameter value in a batched inner loop is either *shared* (a number, or a
0-d tensor: every task uses it) or *per task* (a tensor of shape ``[T]``; for a
tuple hyperparameter such as ``betas``, any entry may be one). Element-wise rules
receive a per-task value reshaped to ``[T, 1, ..., 1]`` against each stacked
parameter; rules stepped task by task receive entry ``t``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["check_value", "has_per_task", "for_parameter", "for_task"]


def _per_task(value: Any, tasks: int) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() == 1 and value.shape[0] == tasks


def check_value(key: str, value: Any, current: Any, tasks: int) -> None:
    """Refuse a tensor that is neither 0-d nor ``[T]`` (for a tuple hyperparameter: per entry)."""
    entries = value if isinstance(current, tuple) and isinstance(value, tuple) else (value,)
    for entry in entries:
        if isinstance(current, tuple) and isinstance(value, torch.Tensor):
            continue  # a tuple given as one tensor of its entries: shared
        if isinstance(entry, torch.Tensor) and entry.dim() != 0 and not _per_task(entry, tasks):
            raise ValueError(
                f"override[{key!r}] is a tensor of shape {tuple(entry.shape)}; with tasks={tasks} give a "
                f"number or a 0-d tensor (one value for every task) or a tensor of shape [{tasks}] "
                "(task t uses entry t)"
            )


def has_per_task(group: Mapping[str, Any], tasks: int) -> bool:
    """Whether any hyperparameter of ``group`` has a per-task value."""
    return any(_per_task(e, tasks) for v in group.values() for e in (v if isinstance(v, tuple) else (v,)))


def _map(group: Mapping[str, Any], tasks: int, fn: Any) -> dict[str, Any]:
    out = {}
    for key, value in group.items():
        if isinstance(value, tuple):
            out[key] = tuple(fn(e) if _per_task(e, tasks) else e for e in value)
        else:
            out[key] = fn(value) if _per_task(value, tasks) else value
    return out


def for_parameter(group: Mapping[str, Any], tasks: int, param: torch.Tensor) -> dict[str, Any]:
    """``group`` with per-task values shaped ``[T, 1, ..., 1]`` to broadcast against the stacked ``param``.

    A per-task value is given to the rule as a tensor that requires grad, so that the
    rule takes the path it takes for a learned override (rules read a tensor that
    needs no gradient with ``.item()``, which a ``[T]`` tensor cannot give).
    """
    shape = (tasks,) + (1,) * (param.dim() - 1)

    def shaped(v: torch.Tensor) -> torch.Tensor:
        v = v if v.requires_grad else v.detach().requires_grad_()
        return v.reshape(shape)

    return _map(group, tasks, shaped)


def for_task(group: Mapping[str, Any], tasks: int, task: int) -> dict[str, Any]:
    """``group`` with every per-task value replaced by task ``task``'s entry."""
    return _map(group, tasks, lambda v: v[task])
