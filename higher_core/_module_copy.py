"""Copies of a module tree for patching: shallow (per-context state only) and deep.

:func:`shallow_tree_copy` is what :class:`higher_core.patch.PatchedModule` works on.
Every submodule becomes a new object of the same class whose ``__dict__`` shares
the original's plain attributes (a lock, a file, a summary writer, a learned
tensor used in ``forward``), as ``higher`` shared them; only what a context must
own is new: the containers of parameters, buffers, children and hooks, buffer
values (cloned, as ``higher``'s ``buffer_sync`` cloned them) and the lists that
cache a module's own parameters (an RNN's ``_flat_weights``). The original is
never modified.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

__all__ = ["deep_tree_copy", "named_tensors", "shallow_tree_copy"]

# nn.Module's own containers (parameters, buffers, children, hooks): private to each copy.
_MODULE_CONTAINERS = tuple(
    name for name, value in nn.Module().__dict__.items() if isinstance(value, (dict, set))
)
# Exact types whose ``.copy()`` is ``copy.copy`` (without its generic __reduce_ex__ round trip).
_PLAIN_CONTAINERS = (dict, set, OrderedDict)


def _copy_buffer(buf: torch.Tensor, device: torch.device | str | None) -> torch.Tensor:
    return buf.detach().to(device=device, copy=True).requires_grad_(buf.requires_grad)


def shallow_tree_copy(module: nn.Module, device: torch.device | str | None = None,
                      memo: dict[int, Any] | None = None) -> nn.Module:
    """A copy of ``module``'s tree that shares every plain attribute with the original.

    Parameters are shared (the caller replaces them by fast weights), buffers are
    cloned (moved to ``device`` if given), a submodule or buffer reached twice is
    copied once. Lists and tuples holding the module's own parameters are copied,
    so that writing a fast weight into the copy's cache leaves the original alone.
    """
    memo = {} if memo is None else memo
    if id(module) in memo:
        return memo[id(module)]
    clone = type(module).__new__(type(module))
    memo[id(module)] = clone
    state = module.__dict__.copy()
    for name in _MODULE_CONTAINERS:
        if name in state:
            value = state[name]
            state[name] = value.copy() if type(value) in _PLAIN_CONTAINERS else copy.copy(value)
    own = {id(p) for p in module._parameters.values() if p is not None}
    if own:
        for name, value in state.items():
            if isinstance(value, (list, tuple)) and any(id(v) in own for v in value):
                state[name] = type(value)(value) if isinstance(value, list) else tuple(value)
    object.__setattr__(clone, "__dict__", state)
    for name, buf in module._buffers.items():
        if buf is not None:
            if id(buf) not in memo:
                memo[id(buf)] = _copy_buffer(buf, device)
            state["_buffers"][name] = memo[id(buf)]
    for name, child in module._modules.items():
        if child is not None:
            state["_modules"][name] = shallow_tree_copy(child, device, memo)
    return clone


# What named_parameters() and named_buffers() call on the root module: overriding one changes the listing.
_LISTING_METHODS = ("named_parameters", "named_buffers", "named_modules", "_named_members", "parameters")


def named_tensors(module: nn.Module) -> tuple[list[tuple[str, torch.Tensor]], list[tuple[str, torch.Tensor]]]:
    """``(list(module.named_parameters()), list(module.named_buffers()))`` in one walk of the tree.

    The same names and order: submodules in pre-order, a submodule or tensor
    reached twice listed once, under its first name. A module whose class
    overrides one of the listing methods is asked through them.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
        >>> params, buffers = named_tensors(net)
        >>> [n for n, _ in params], [n for n, _ in buffers]
        (['0.weight', '0.bias', '1.weight', '1.bias'], ['1.running_mean', '1.running_var', '1.num_batches_tracked'])
    """
    if any(getattr(type(module), name) is not getattr(nn.Module, name) for name in _LISTING_METHODS):
        return list(module.named_parameters()), list(module.named_buffers())  # the module's own listing
    params: list[tuple[str, torch.Tensor]] = []
    buffers: list[tuple[str, torch.Tensor]] = []
    seen_modules: set[int] = set()
    seen_params: set[int] = set()
    seen_buffers: set[int] = set()  # a memo each, as the two methods keep

    def visit(sub: nn.Module, prefix: str) -> None:
        seen_modules.add(id(sub))
        for members, out, seen in ((sub._parameters, params, seen_params), (sub._buffers, buffers, seen_buffers)):
            for name, tensor in members.items():
                if tensor is not None and id(tensor) not in seen:
                    seen.add(id(tensor))
                    out.append((prefix + name, tensor))
        for name, child in sub._modules.items():
            if child is not None and id(child) not in seen_modules:
                visit(child, f"{prefix}{name}.")

    visit(module, "")
    return params, buffers


def deep_tree_copy(module: nn.Module, memo: dict[int, Any]) -> nn.Module:
    """``copy.deepcopy(module, memo)``, with non-leaf tensors held as attributes copied detached.

    Autograd cannot deep-copy a tensor that has a ``grad_fn`` (e.g. the ``weight``
    the legacy ``weight_norm`` recomputes every forward, or a fast weight cached
    in an RNN's ``_flat_weights``); those are copied as detached clones. Tensors
    already in ``memo`` are kept.
    """
    for sub in module.modules():
        for value in sub.__dict__.values():
            for tensor in value if isinstance(value, (list, tuple)) else (value,):
                if isinstance(tensor, torch.Tensor) and not tensor.is_leaf and id(tensor) not in memo:
                    memo[id(tensor)] = tensor.detach().clone()
    return copy.deepcopy(module, memo)
