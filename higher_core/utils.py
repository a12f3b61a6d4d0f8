"""Utility functions of the old ``higher`` API."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from higher_core._boundary import check_module

__all__ = ["flatten", "get_func_params"]


def flatten(x: Any) -> list[Any]:
    """A flat list of the leaves of a nested structure of dicts, lists, tuples and sets.

    Example:
        >>> from higher_core.utils import flatten
        >>> flatten({"a": [1, (2, 3)], "b": 4})
        [1, 2, 3, 4]
    """
    if isinstance(x, dict):
        return [leaf for value in x.values() for leaf in flatten(value)]
    if isinstance(x, (list, tuple, set)):
        return [leaf for value in x for leaf in flatten(value)]
    return [x]


def get_func_params(module: nn.Module, device: torch.device | str | None = None,
                    safe_copy: bool = True) -> list[torch.Tensor]:
    """Detached copies of ``module``'s parameters that require grad.

    Args:
        module: the module whose parameters to copy.
        device: the device to put the copies on (default: where each parameter is).
        safe_copy: if True, the copies never share memory with the parameters; if
            False, a copy is only made where ``device`` differs (otherwise the
            result is a detached view of the same memory).

    Example:
        >>> import torch
        >>> from higher_core.utils import get_func_params
        >>> ws = get_func_params(torch.nn.Linear(2, 1))
        >>> [w.requires_grad and w.is_leaf for w in ws]
        [True, True]
    """
    module = check_module(module, "get_func_params", "module")
    return [
        p.detach().to(device=device, copy=safe_copy).requires_grad_()
        for p in module.parameters()
    ]
