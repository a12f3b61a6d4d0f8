"""Argument checks at the public boundary of the patched module and ``innerloop_ctx``.

Each check runs once per call, costs a few ``isinstance`` tests, and raises an
error that names the function, the argument and the fix.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["check_bool", "check_device", "check_fast_weights", "check_module", "device_of", "qualified_name", "unwrap_ddp"]


def _described(value: Any) -> str:
    if isinstance(value, type):
        return f"the class {value.__module__}.{value.__qualname__}"
    name = getattr(value, "__qualname__", None)
    kind = type(value).__name__
    return f"{kind} {name}" if isinstance(name, str) else f"{kind} {value!r:.60}"


def check_module(value: Any, where: str, argument: str = "model") -> nn.Module:
    """``value`` if it is an ``nn.Module``; a ``torch.compile``'d module is unwrapped with a warning.

    A compiled module (``OptimizedModule``) cannot run on fast weights: its graph
    was traced with the module's own parameters. Its ``_orig_mod`` holds the same
    parameters (so an optimizer built on the compiled module still matches), and
    the inner loop runs that, uncompiled.
    """
    if isinstance(value, nn.Module):
        original = getattr(value, "_orig_mod", None)
        if type(value).__name__ == "OptimizedModule" and isinstance(original, nn.Module):
            warnings.warn(
                f"{where}({argument}=...) got a torch.compile'd module; the inner loop runs its "
                f"original module uncompiled (a compiled graph cannot take fast weights). Pass "
                f"{argument}._orig_mod to silence this warning.",
                UserWarning, stacklevel=3,
            )
            return original
        return value
    hint = " (instantiate it)" if isinstance(value, type) and issubclass(value, nn.Module) else ""
    raise TypeError(f"{where}({argument}=...) expects a torch.nn.Module, got {_described(value)}{hint}")


def check_bool(value: Any, label: str) -> bool:
    """``value`` if it is a ``bool`` (or a NumPy bool); anything else is refused, naming ``label``."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return bool(value)
    raise TypeError(f"{label} must be True or False, got {_described(value)}")


def check_device(value: Any, where: str) -> torch.device | None:
    """``None``, or ``value`` as a ``torch.device`` (a device, a string such as ``'cuda:0'``, an index)."""
    if value is None:
        return None
    if not isinstance(value, (torch.device, str, int)) or isinstance(value, bool):
        raise TypeError(f"{where}(device=...) must be None, a torch.device, a string or an index, "
                        f"got {_described(value)}")
    try:
        return torch.device(value)
    except (RuntimeError, ValueError) as error:
        raise ValueError(f"{where}(device={value!r}) is not a device ({error}); "
                         "use e.g. 'cpu', 'cuda' or 'cuda:0'") from None


def device_of(tensor_device: torch.device, device: torch.device | None) -> torch.device:
    """Where a fast weight lives: ``device`` (with the current index for a bare ``'cuda'``) or its own."""
    if device is None:
        return tensor_device
    if device.index is None and device.type == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return device


Meta = tuple[torch.Size, torch.dtype, torch.device]


def check_fast_weights(params: Iterable[Any], meta: Sequence[Meta], names: Sequence[str],
                       where: str) -> list[torch.Tensor]:
    """``params`` as a list, refused unless one tensor per parameter with its recorded shape, dtype, device."""
    if isinstance(params, torch.Tensor) or not isinstance(params, Iterable):
        raise TypeError(f"{where}: params must be a sequence of tensors (one per parameter, in the order of "
                        f"module.parameters()), got {_described(params)}")
    params = list(params)
    if len(params) != len(meta):
        raise ValueError(f"{where}: params has {len(params)} tensors; expected {len(meta)} fast weights (one per "
                         "parameter of the original module, in the order of module.parameters())")
    for i, (tensor, (shape, dtype, device)) in enumerate(zip(params, meta)):
        if (not isinstance(tensor, torch.Tensor) or tensor.shape != shape or tensor.dtype != dtype
                or tensor.device != device):
            _refuse(where, i, names[i], tensor, shape, dtype, device)
    return params


def _refuse(where: str, i: int, name: str, tensor: Any, shape: torch.Size, dtype: torch.dtype,
            device: torch.device) -> None:
    expected = f"shape {tuple(shape)}, {dtype}, on {device}"
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{where}: params[{i}] ({name!r}) must be a tensor of {expected}, "
                        f"got {_described(tensor)}")
    raise ValueError(f"{where}: params[{i}] ({name!r}) must have {expected}, got shape "
                     f"{tuple(tensor.shape)}, {tensor.dtype}, on {tensor.device}")


def unwrap_ddp(module: nn.Module) -> nn.Module:
    """The module a ``DistributedDataParallel`` wraps (``module`` itself for any other module).

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(2, 1)
        >>> unwrap_ddp(net) is net
        True
    """
    return module.module if isinstance(module, DistributedDataParallel) else module


@functools.lru_cache(maxsize=256)
def qualified_name(t: type) -> str:
    """``torch.optim.Adam`` for torch's optimizers, ``module.Qualname`` otherwise, for messages.

    Example:
        >>> qualified_name(torch.optim.Adam)
        'torch.optim.Adam'
    """
    module = t.__module__
    if module.startswith("torch.optim") and getattr(torch.optim, t.__name__, None) is t:
        module = "torch.optim"
    return f"{module}.{t.__qualname__}"
