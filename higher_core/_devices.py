"""Refusing hyperparameters and state on another device than the fast weights they update."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = ["check_devices", "check_group"]


def _elsewhere(value: Any, device: torch.device) -> bool:
    """A tensor on another device than ``device`` (a CPU scalar mixes with any device, as in torch)."""
    return (isinstance(value, torch.Tensor) and value.device != device
            and not (value.dim() == 0 and value.device.type == "cpu"))


def check_devices(name: str, number: int, group: Mapping[str, Any], params: list[torch.Tensor],
                  indices: list[int], states: Mapping[int, Mapping[str, Any]]) -> None:
    """Refuse a hyperparameter (override) or state tensor on another device than its fast weights.

    Args:
        name: the optimizer's name, for messages.
        number: the param group's position.
        group: its hyperparameters.
        params: every fast weight; ``indices`` are the group's that step now.
        indices: positions into ``params``.
        states: the stored state per position.
    """
    check_group(name, number, group, [params[i] for i in indices], indices, [states.get(i) for i in indices])


def check_group(name: str, number: int, group: Mapping[str, Any], params: Sequence[torch.Tensor],
                indices: Sequence[int], states: Sequence[Mapping[str, Any] | None],
                flat_state: Mapping[str, Any] | None = None) -> None:
    """:func:`check_devices` for one group's stepping ``params`` (at ``indices``) and their ``states``.

    With ``flat_state`` (the state of a flat step, laid out on the parameters'
    one device) the per-parameter ``states`` are not read: the check costs the
    same for 10 tensors as for 1000.
    """
    devices = {params[0].device} if flat_state is not None else {p.device for p in params}
    for device in devices:
        for key, value in group.items():
            for tensor in value if isinstance(value, tuple) else (value,):
                if _elsewhere(tensor, device):
                    raise ValueError(
                        f"{name}: hyperparameter {key!r} of param group {number} is a "
                        f"tensor on {tensor.device} but the fast weights are on {device}; move it there "
                        f"(.to({str(device)!r}), or get_trainable_opt_params(opt, device={str(device)!r}))"
                    )
    checked = [(f"parameter {i}", state, p.device) for i, state, p in zip(indices, states, params)] \
        if flat_state is None else [(f"parameters {list(indices)}", flat_state, params[0].device)]
    for which, state, device in checked:
        for key, value in (state or {}).items():
            if _elsewhere(value, device):
                raise ValueError(
                    f"{name}: optimizer state {key!r} of {which} is on {value.device} "
                    f"but its fast weight is on {device}; pass device={str(device)!r} to "
                    "innerloop_ctx or get_diff_optim (it moves the optimizer state), or keep the model and the "
                    "optimizer on one device"
                )
