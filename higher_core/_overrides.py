"""Override dictionaries: hyperparameters given per inner loop, possibly as tensors.

The format is the old ``higher``'s: ``{name: [value]}`` applies one value to every
param group, ``{name: [v0, v1, ...]}`` one value per group. A bare number or
tensor is accepted as one value for all groups. Values may be tensors that
require grad; the update rules use them as they are, so they receive gradients.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = ["Override", "merged_groups", "normalize_override"]

Override = Mapping[str, Any]


def _is_sequence(value: Any) -> bool:
    """A list, tuple, ``nn.ParameterList`` or any other sequence of values (not a string or tensor)."""
    if isinstance(value, (str, bytes, torch.Tensor)):
        return False
    return isinstance(value, (Sequence, torch.nn.ParameterList))


def _per_group(key: str, value: Any, num_groups: int) -> list[Any]:
    if _is_sequence(value):
        values = list(value)
    elif isinstance(value, torch.Tensor) or (
        isinstance(value, numbers.Number) and not isinstance(value, bool)
    ):
        values = [value]
    else:
        raise ValueError(
            f"override[{key!r}] must be a list with one value for all param groups or one "
            f"value per group, got {type(value).__name__}"
        )
    if len(values) == 1:
        return values * num_groups
    if len(values) != num_groups:
        raise ValueError(
            f"override[{key!r}] has {len(values)} values but the optimizer has {num_groups} "
            f"param group(s); give a list of one value (used for every group) or of "
            f"{num_groups} values (one per group)"
        )
    return values


def _one_value(key: str, value: Any, group_index: int, shapes: Sequence[tuple[int, ...]] | None = None,
               positions: Sequence[int] = ()) -> Any:
    """One hyperparameter value: a real number or a real tensor (kept as given).

    With ``shapes`` (the shapes of the group's parameters, at ``positions`` in the fast weights), a
    tensor may hold one value per element (Meta-SGD's learned lrs): it is legal
    when broadcasting it against each of them leaves that parameter's shape
    unchanged (0-d, the parameter's own shape, or any shape that broadcasts to
    it). Without ``shapes`` it must hold one value.
    """
    if isinstance(value, torch.Tensor):
        if value.is_complex() or value.dtype == torch.bool:
            raise ValueError(f"override[{key!r}] for param group {group_index} must be a real tensor, got {value.dtype}")
        if shapes is None:
            if value.numel() != 1:
                raise ValueError(
                    f"override[{key!r}] for param group {group_index} is a tensor of shape "
                    f"{tuple(value.shape)}; here a hyperparameter must be a number or a 0-d tensor "
                    "(torch.tensor(0.1))"
                )
            return value
        for position, shape in zip(positions, shapes):
            _check_broadcast(key, value, group_index, position, shape)
        return value
    if value is None or (isinstance(value, numbers.Real) and not isinstance(value, bool)):
        return value
    raise ValueError(
        f"override[{key!r}] for param group {group_index} must be a number or a 0-d tensor, "
        f"got {type(value).__name__}" + ("" if shapes is None else
                                         "; a tensor may also hold one value per element of its parameters")
    )


def _check_broadcast(key: str, value: torch.Tensor, group_index: int, position: int,
                     shape: tuple[int, ...]) -> None:
    """Refuse a tensor hyperparameter that would change the shape of parameter ``position`` (of ``shape``).

    ``position`` is the parameter's position in the fast weights (``reference_params``).
    """
    try:
        result = tuple(torch.broadcast_shapes(value.shape, shape))
    except RuntimeError:
        result = None
    if result == tuple(shape):
        return
    change = "does not broadcast against it" if result is None else f"would make its fast weight {result}"
    raise ValueError(
        f"override[{key!r}] for param group {group_index} is a tensor of shape {tuple(value.shape)}, but "
        f"its parameter {position} has shape {tuple(shape)}: the value {change}. A tensor "
        f"hyperparameter must broadcast to each parameter of its group without changing its shape: "
        f"a 0-d tensor (torch.tensor(0.1)), one value per element (shape {tuple(shape)}), or a shape "
        "that broadcasts to it; give a param group of its own to a parameter of another shape"
    )


def _check_value(key: str, value: Any, current: Any, group_index: int,
                 shapes: Sequence[tuple[int, ...]] | None = None, positions: Sequence[int] = ()) -> Any:
    """``value`` in the structure of ``current`` (a tuple like ``betas``, or one scalar)."""
    if not isinstance(current, tuple):
        return _one_value(key, value, group_index, shapes, positions)
    if isinstance(value, torch.Tensor) and value.dim() == 1 and value.numel() == len(current):
        return value  # a learned pair, unpacked by the update rule
    if not _is_sequence(value) or len(value) != len(current):
        raise ValueError(
            f"override[{key!r}] for param group {group_index} must have {len(current)} "
            f"entries like {current!r}, got {value!r}; wrap a tuple in a list: "
            f"{{{key!r}: [{current!r}]}}"
        )
    return tuple(_one_value(key, v, group_index, shapes, positions) for v in value)


def normalize_override(
    override: Override | None,
    param_groups: Sequence[Mapping[str, Any]],
    optimizer_name: str,
    declared: Sequence[str] | None = None,
    shapes: Sequence[tuple[int, ...]] | None = None,
) -> dict[str, list[Any]]:
    """Validate an override dict and expand it to one value per param group.

    Args:
        override: ``{name: [value]}`` or ``{name: [v0, v1, ...]}``; any sequence
            (a list, a tuple, an ``nn.ParameterList``) is accepted as the list.
        param_groups: the groups the values apply to.
        optimizer_name: for messages.
        declared: the hyperparameters that may be overridden (a differentiable
            optimizer's ``tensor_hyperparameters``); ``None`` allows every group key
            but ``params`` (for writing values back into a ``torch.optim`` optimizer).
        shapes: the shapes of the parameters, by position (``group["params"]`` holds
            positions): a tensor value may then hold one value per element, if it
            broadcasts to each parameter of its group unchanged. Without it a
            tensor value must hold one value.

    Raises:
        ValueError: for a key that may not be overridden (the message lists the
            valid ones), a list of the wrong length, or a value of the wrong shape.
    """
    if override is None:
        return {}
    if not isinstance(override, Mapping):
        raise TypeError(
            f"override must be a dict mapping hyperparameter names to lists, got {type(override).__name__}"
        )
    keys = {k for g in param_groups for k in g} - {"params", "param_names"}
    valid = sorted(keys if declared is None else keys & set(declared))
    result: dict[str, list[Any]] = {}
    for key, value in override.items():
        if key not in valid:
            raise ValueError(
                f"override key {key!r} is not a hyperparameter of {optimizer_name}; "
                f"valid keys: {', '.join(valid)}"
            )
        values = _per_group(key, value, len(param_groups))
        result[key] = [
            _check_value(key, v, group[key], index,
                         None if shapes is None else [shapes[i] for i in group["params"]],
                         group["params"])
            for index, (group, v) in enumerate(zip(param_groups, values))]
    return result


def merged_groups(param_groups: Sequence[Mapping[str, Any]],
                  *overrides: Mapping[str, list[Any]]) -> list[dict[str, Any]]:
    """Copies of ``param_groups`` with normalised overrides applied, later ones winning."""
    groups = [dict(group) for group in param_groups]
    for override in overrides:
        for key, values in override.items():
            for group, v in zip(groups, values):
                group[key] = v
    return groups
