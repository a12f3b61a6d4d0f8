"""Per-task hyperparameters: an override tensor of shape ``[T]`` gives task ``t`` entry ``t``.

A hyperparameter value in a batched inner loop is either *shared* (a number or a
0-d tensor: every task uses it) or *per task* (a tensor of shape ``[T]``). For a
tuple hyperparameter such as ``betas``, a 1-D tensor is the tuple itself (as
without tasks), so per-task values go in its entries:
``{"betas": [(b1_per_task, 0.999)]}``.

Overrides are validated task by task with the rule's own checks
(:meth:`~higher_core.optim.DifferentiableOptimizer.groups_for_step`), on the
override each task sees. Element-wise rules then receive a per-task value
reshaped to ``[T, 1, ..., 1]`` against each stacked parameter; rules stepped
task by task receive entry ``t``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from higher_core._overrides import Override

__all__ = ["for_parameter", "for_task", "has_per_task", "per_task_views", "substitute"]


def _is_per_task(value: Any, tasks: int) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() == 1 and value.shape[0] == tasks


def _walk(value: Any, depths: frozenset[int], depth: int, fn: Any) -> Any:
    """``value`` with ``fn`` applied to each tensor found at one of ``depths`` of list nesting."""
    if isinstance(value, torch.Tensor):
        return fn(value) if depth in depths else value
    if isinstance(value, (list, tuple, torch.nn.ParameterList)):
        items = [_walk(v, depths, depth + 1, fn) for v in value]
        return tuple(items) if isinstance(value, tuple) else items
    return value


def _depths(key: str, param_groups: Sequence[Mapping[str, Any]]) -> frozenset[int]:
    """Where per-task tensors may sit in ``override[key]``: the value or its per-group entries;
    for a tuple hyperparameter, the entries of each group's tuple."""
    is_tuple = any(isinstance(g.get(key), tuple) for g in param_groups)
    return frozenset({2}) if is_tuple else frozenset({0, 1})


def per_task_views(override: Override, param_groups: Sequence[Mapping[str, Any]], tasks: int,
                   task: int) -> tuple[dict[str, Any], dict[int, torch.Tensor]]:
    """The override task ``task`` sees (every per-task tensor replaced by its entry), and a map from
    the id of each replacement to the ``[T]`` tensor it came from."""
    found: dict[int, torch.Tensor] = {}

    def pick(value: torch.Tensor) -> torch.Tensor:
        if not _is_per_task(value, tasks):
            return value
        entry = value[task]
        found[id(entry)] = value
        return entry

    view = {key: _walk(value, _depths(key, param_groups), 0, pick) for key, value in override.items()}
    return view, found


def substitute(groups: list[dict[str, Any]], found: Mapping[int, torch.Tensor]) -> list[dict[str, Any]]:
    """``groups`` with each entry listed in ``found`` (by id) replaced by its ``[T]`` tensor."""
    if not found:
        return groups

    def back(value: Any) -> Any:
        if isinstance(value, tuple):
            return tuple(back(v) for v in value)
        return found.get(id(value), value)

    return [{key: back(value) for key, value in group.items()} for group in groups]


def has_per_task(group: Mapping[str, Any], tasks: int) -> bool:
    """Whether any hyperparameter of ``group`` has a per-task value."""
    return any(_is_per_task(e, tasks) for v in group.values() for e in (v if isinstance(v, tuple) else (v,)))


def _map(group: Mapping[str, Any], tasks: int, fn: Any) -> dict[str, Any]:
    out = {}
    for key, value in group.items():
        if isinstance(value, tuple):
            out[key] = tuple(fn(e) if _is_per_task(e, tasks) else e for e in value)
        else:
            out[key] = fn(value) if _is_per_task(value, tasks) else value
    return out


def for_parameter(group: Mapping[str, Any], tasks: int, param: torch.Tensor, real_view: bool = False) -> dict[str, Any]:
    """``group`` with per-task values shaped ``[T, 1, ..., 1]`` to broadcast against the stacked ``param``
    (against its real view, one dimension more, with ``real_view`` and a complex ``param``).

    A per-task value reaches the rule as a tensor that requires grad, so that the
    rule takes the path it takes for a learned override (rules read a tensor that
    needs no gradient with ``.item()``, which a ``[T]`` tensor cannot give).
    """
    shape = (tasks,) + (1,) * (param.dim() - 1 + int(real_view and param.is_complex()))

    def shaped(v: torch.Tensor) -> torch.Tensor:
        return (v if v.requires_grad else v.detach().requires_grad_()).reshape(shape)

    return _map(group, tasks, shaped)


def for_task(group: Mapping[str, Any], tasks: int, task: int) -> dict[str, Any]:
    """``group`` with every per-task value replaced by task ``task``'s entry."""
    return _map(group, tasks, lambda v: v[task])
