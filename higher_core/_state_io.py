"""Copying optimizer state between ``torch.optim`` and a differentiable optimizer.

State values are tensors, numbers, or lists and tuples of tensors. Imported
state is detached and cloned (the differentiable optimizer must not write into
the live optimizer's tensors); exported state is detached and put on each
parameter's device, ``step`` in the type the reference keeps it (:func:`held_step`):
the 0-d tensor of ``torch.optim``'s own optimizers, the Python int of a reference
that counts with one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from higher_core.functional import scalar_dtype

__all__ = ["TORCH_STEP", "copy_param_groups", "detached", "export_param_state", "held_step", "import_param_state",
           "to_device"]

#: what :func:`held_step` returns for a reference that steps with ``torch.optim``'s own code
#: and holds no state yet: ``step`` is a 0-d tensor of :func:`~higher_core.functional.scalar_dtype`
TORCH_STEP = "torch.optim's 0-d tensor"


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


def held_step(opt: torch.optim.Optimizer) -> Any:
    """A ``step`` the optimizer holds, whose type is the one to export ``step`` in.

    The first ``step`` in ``opt.state``; else :data:`TORCH_STEP` when ``opt``
    steps with a ``torch.optim`` class's own ``step`` (which keeps a tensor);
    else ``None``: nothing tells, and a number is exported as a Python int (the
    count research code keeps; a reference that holds a tensor but steps with
    its own code and has no state yet needs ``export_param_state`` overridden).
    """
    for state in opt.state.values():
        if isinstance(state, Mapping) and "step" in state:
            return state["step"]
    owner = next((k for k in type(opt).__mro__ if "step" in vars(k)), None)
    return TORCH_STEP if owner is not None and owner.__module__.startswith("torch.optim") else None


def _step_as(value: Any, held: Any, param: torch.Tensor) -> Any:
    """``step`` in the type of ``held`` (see :func:`held_step`)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().item()
    if held is TORCH_STEP:
        return torch.tensor(float(value), dtype=scalar_dtype())
    if isinstance(held, torch.Tensor):  # on the parameter's device where torch keeps it there (capturable, fused)
        return torch.tensor(float(value), dtype=held.dtype, device=held.device if held.device.type == "cpu"
                            else param.device)
    if isinstance(held, int) and not isinstance(held, bool):
        return int(value)
    if isinstance(held, float):
        return float(value)
    if held is None and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def export_param_state(state: Mapping[str, Any], param: torch.Tensor, held: Any = TORCH_STEP) -> dict[str, Any]:
    """One parameter's state as the reference keeps it (the inverse of :func:`import_param_state`).

    A number ``step`` takes the type of ``held`` (:func:`held_step`; a tensor by
    default), and a tensor one too where ``held`` is a number or tensor; with
    ``held=None`` a whole number is exported as an int, a tensor as it is.
    """
    exported: dict[str, Any] = {}
    for key, value in state.items():
        rule_kept = isinstance(value, torch.Tensor) and (held is TORCH_STEP or held is None)
        if key == "step" and not rule_kept:
            exported[key] = _step_as(value, held, param)
        else:
            exported[key] = to_device(value, param.device)
    return exported


def export_group_value(value: Any) -> Any:
    """A per-group running statistic as a ``torch.optim`` param group keeps it: a number."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.detach().item()
    return detached(value)


def copy_param_groups(other: torch.optim.Optimizer, reference: list[torch.Tensor]) -> list[dict[str, Any]]:
    """``other``'s param groups, hyperparameters copied and ``params`` as positions into ``reference``.

    Raises:
        ValueError: ``other`` tracks a parameter that is not in ``reference``.
    """
    position = {id(p): i for i, p in enumerate(reference)}
    groups = []
    for group in other.param_groups:
        indices = []
        for p in group["params"]:
            if id(p) not in position:
                raise ValueError(
                    f"{type(other).__name__} tracks a parameter of shape {tuple(p.shape)} that is "
                    "not in reference_params; pass the parameters of the module the optimizer "
                    "was built for (model.parameters())"
                )
            indices.append(position[id(p)])
        copied = {k: v for k, v in group.items() if k != "params"}
        copied["params"] = indices
        groups.append(copied)
    return groups
