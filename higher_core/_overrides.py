"""Override dictionaries: hyperparameters given per inner loop, possibly as tensors.

The format is the old ``higher``'s: ``{name: [value]}`` applies one value to every
param group, ``{name: [v0, v1, ...]}`` one value per group. A bare number or
tensor is accepted as one value for all groups. Values may be tensors that
require grad; the update rules use them as they are, so they receive gradients.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

__all__ = ["Override", "normalize_override", "trainable_value", "plain_value"]

Override = Mapping[str, Any]

#: group keys that are not hyperparameters at all
NOT_HYPERPARAMETERS = frozenset({"params", "param_names"})


def _per_group(key: str, value: Any, num_groups: int) -> list[Any]:
    if isinstance(value, (list, tuple)):
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


def _check_structure(key: str, value: Any, current: Any, group_index: int) -> None:
    if isinstance(current, tuple):
        length = value.numel() if isinstance(value, torch.Tensor) else (
            len(value) if isinstance(value, (list, tuple)) else None
        )
        if length != len(current):
            raise ValueError(
                f"override[{key!r}] for param group {group_index} must have {len(current)} "
                f"entries like {current!r}, got {value!r}; wrap a tuple in a list: "
                f"{{{key!r}: [{current!r}]}}"
            )


def normalize_override(
    override: Override | None,
    param_groups: Sequence[Mapping[str, Any]],
    optimizer_name: str,
) -> dict[str, list[Any]]:
    """Validate an override dict and expand it to one value per param group.

    Raises:
        ValueError: for a key that is not a hyperparameter of the optimizer (the
            message lists the valid ones) or a list of the wrong length.
    """
    if override is None:
        return {}
    if not isinstance(override, Mapping):
        raise TypeError(
            f"override must be a dict mapping hyperparameter names to lists, got {type(override).__name__}"
        )
    valid = sorted({k for g in param_groups for k in g} - NOT_HYPERPARAMETERS)
    result: dict[str, list[Any]] = {}
    for key, value in override.items():
        if key not in valid:
            raise ValueError(
                f"override key {key!r} is not a hyperparameter of {optimizer_name}; "
                f"valid keys: {', '.join(valid)}"
            )
        values = _per_group(key, value, len(param_groups))
        for index, (group, v) in enumerate(zip(param_groups, values)):
            _check_structure(key, v, group[key], index)
        result[key] = [tuple(v) if isinstance(v, list) else v for v in values]
    return result


def is_real_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_numeric_hyperparameter(value: Any) -> bool:
    """True for real numbers, floating tensors, and tuples of those; never for flags."""
    if isinstance(value, torch.Tensor):
        return value.is_floating_point()
    if isinstance(value, tuple):
        return len(value) > 0 and all(is_numeric_hyperparameter(v) for v in value)
    return is_real_number(value)


def trainable_value(value: Any, device: torch.device | str | None, dtype: torch.dtype | None) -> Any:
    """A hyperparameter as a leaf tensor (or tuple of them) that requires grad."""
    if isinstance(value, tuple):
        return tuple(trainable_value(v, device, dtype) for v in value)
    if isinstance(value, torch.Tensor):
        return value.detach().to(device=device, dtype=dtype, copy=True).requires_grad_()
    return torch.tensor(float(value), device=device, dtype=dtype, requires_grad=True)


def plain_value(learned: Any, current: Any) -> Any:
    """A learned override value converted back to the kind of value ``current`` is."""
    if isinstance(current, tuple):
        items: Iterable[Any] = learned.unbind() if isinstance(learned, torch.Tensor) else learned
        return tuple(plain_value(v, c) for v, c in zip(items, current))
    if isinstance(current, torch.Tensor):
        return torch.as_tensor(learned).detach().to(device=current.device, dtype=current.dtype).clone()
    value = learned.item() if isinstance(learned, torch.Tensor) else learned
    return float(value) if is_real_number(current) else value
