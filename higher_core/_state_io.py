"""Copying optimizer state between ``torch.optim`` and a differentiable optimizer.

State values are tensors, numbers, or lists and tuples of tensors. Imported
state is detached and cloned (the differentiable optimizer must not write into
the live optimizer's tensors); exported state is detached and put on each
parameter's device, ``step`` as the 0-d tensor ``torch.optim`` keeps.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from higher_core.functional import scalar_dtype

__all__ = ["detached", "export_param_state", "import_param_state", "to_device"]


def to_device(value: Any, device: torch.device | str | None) -> Any:
    """A detached copy of a state value on ``device``; lists and tuples of tensors too."""
    if isinstance(value, torch.Tensor):
        return value.detach().to(device=device, copy=True)
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device) for v in value)
    return value


def detached(value: Any) -> Any:
    """A state value cut from the graph; lists and tuples of tensors too."""
    if isinstance(value, torch.Tensor):
        return value.detach() if value.requires_grad else value
    if isinstance(value, (list, tuple)):
        return type(value)(detached(v) for v in value)
    return value


def import_param_state(state: Mapping[str, Any], device: torch.device | str | None) -> dict[str, Any]:
    """One parameter's ``torch.optim`` state: tensors detached and cloned, ``step`` as a number."""
    imported: dict[str, Any] = {}
    for key, value in state.items():
        if key == "step" and isinstance(value, torch.Tensor) and value.numel() == 1:
            imported[key] = value.item()
        else:
            imported[key] = to_device(value, device)
    return imported


def export_param_state(state: Mapping[str, Any], param: torch.Tensor) -> dict[str, Any]:
    """One parameter's state as ``torch.optim`` keeps it (the inverse of :func:`import_param_state`)."""
    exported: dict[str, Any] = {}
    for key, value in state.items():
        if key == "step" and not isinstance(value, torch.Tensor):
            exported[key] = torch.tensor(float(value), dtype=scalar_dtype())
        else:
            exported[key] = to_device(value, param.device)
    return exported


def export_group_value(value: Any) -> Any:
    """A per-group running statistic as a ``torch.optim`` param group keeps it: a number."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.detach().item()
    return detached(value)
