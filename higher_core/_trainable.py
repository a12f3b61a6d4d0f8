"""higher's helpers for building and learning optimizers: ``create_diff_optim``, ``get/apply_trainable_opt_params``.

Public as :mod:`higher_core.optim`'s names (loaded on first use, not with the core).
"""

from __future__ import annotations

import numbers
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from higher_core._optimizer import DifferentiableOptimizer
from higher_core._overrides import Override, normalize_override
from higher_core._registry import resolve
from higher_core.optim import get_diff_optim
from higher_core.patch import PatchedModule

__all__ = ["apply_trainable_opt_params", "create_diff_optim", "get_trainable_opt_params"]


def _placeholder(t: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(t, device="meta").requires_grad_(t.requires_grad)


def create_diff_optim(
    opt_type: type[torch.optim.Optimizer],
    opt_kwargs: Mapping[str, Any] | None = None,
    params: Iterable[torch.Tensor] | Iterable[Mapping[str, Any]] | None = None,
    fmodel: PatchedModule | None = None,
    device: torch.device | str | None = None,
    override: Override | None = None,
    track_higher_grads: bool | None = None,
    **kwargs: Any,
) -> DifferentiableOptimizer:
    """A differentiable version of a new optimizer of type ``opt_type``.

    Args:
        opt_type: the optimizer class, e.g. ``torch.optim.Adam``.
        opt_kwargs: keyword arguments for its constructor.
        params: the fast weights to update, or param groups in ``torch.optim``'s
            form (``[{"params": [...], "lr": 0.1}, ...]``). Used for shapes only.
            Required without ``fmodel``; with both, ``params`` wins.
        fmodel: a patched module; its fast weights are used when ``params`` is not given.
        device, override, track_higher_grads: as for :func:`get_diff_optim`.

    Example:
        >>> import torch, higher_core
        >>> fnet = higher_core.patch.monkeypatch(torch.nn.Linear(2, 1))
        >>> diffopt = higher_core.optim.create_diff_optim(
        ...     torch.optim.SGD, {"lr": 0.1}, fmodel=fnet)
        >>> _ = diffopt.step(fnet(torch.ones(1, 2)).sum())
    """
    if params is None:
        if fmodel is None:
            raise ValueError("create_diff_optim needs params= or fmodel= to know the fast weights")
        params = fmodel.fast_params
        if params is None:
            raise ValueError("fmodel has no fast weights yet; pass params=")
    params = list(params)
    resolve(opt_type)  # refuse before constructing anything
    reference: list[torch.Tensor] = []
    if params and all(isinstance(g, Mapping) for g in params):
        groups = []
        for group in params:
            if "params" not in group:
                raise ValueError("each param group dict needs a 'params' entry")
            group_params = group["params"]
            group_params = [group_params] if isinstance(group_params, torch.Tensor) else list(group_params)
            placeholders = [_placeholder(p) for p in group_params]
            reference.extend(placeholders)
            groups.append({**group, "params": placeholders})
        template: Any = groups
    elif all(isinstance(p, torch.Tensor) for p in params):
        reference = [_placeholder(p) for p in params]
        template = reference
    else:
        raise TypeError("params must be a list of tensors or a list of param group dicts")
    opt = opt_type(template, **dict(opt_kwargs or {}))
    return get_diff_optim(opt, reference, fmodel=fmodel, device=device, override=override,
                          track_higher_grads=track_higher_grads, **kwargs)


def _learnable(value: Any) -> bool:
    """A real number, a floating tensor, or a tuple of those (never a flag, ``None`` or a string)."""
    if isinstance(value, torch.Tensor):
        return value.is_floating_point()
    if isinstance(value, tuple):
        return len(value) > 0 and all(_learnable(v) for v in value)
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def get_trainable_opt_params(
    opt: torch.optim.Optimizer, device: torch.device | str | None = None
) -> dict[str, list[Any]]:
    """An override dict holding ``opt``'s numeric hyperparameters as leaf tensors that require grad.

    The differentiable optimizer's ``tensor_hyperparameters`` decide which
    (``lr``, ``betas``, ``eps``, ...; never flags such as ``amsgrad``), less
    those a group sets to ``None``. Tensors take the dtype and device of the group's first parameter
    (or ``device``).

    Example:
        >>> import torch, higher_core
        >>> opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1, momentum=0.9)
        >>> sorted(higher_core.optim.get_trainable_opt_params(opt))
        ['dampening', 'lr', 'momentum', 'weight_decay']
    """
    names = set(resolve(type(opt)).tensor_hyperparameters)
    override: dict[str, list[Any]] = defaultdict(list)
    for group in opt.param_groups:
        first = next((p for p in group["params"] if p.is_floating_point()), None)
        dtype = first.dtype if first is not None and first.device.type != "meta" else None
        where = device if device is not None else (first.device if first is not None and first.device.type != "meta" else None)
        for key, value in group.items():
            if key not in names or not _learnable(value):
                continue
            override[key].append(trainable_value(value, where, dtype))
    return dict(override)


def apply_trainable_opt_params(opt: torch.optim.Optimizer, override: Mapping[str, Any]) -> None:
    """Write learned hyperparameters back into ``opt``'s param groups, in place.

    Numbers stay numbers (tensors are read with ``.item()``); tuple
    hyperparameters stay tuples; tensor hyperparameters are copied, detached.

    Example:
        >>> import torch, higher_core
        >>> opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
        >>> higher_core.optim.apply_trainable_opt_params(opt, {"lr": [torch.tensor(0.05, dtype=torch.float64)]})
        >>> opt.param_groups[0]["lr"]
        0.05
    """
    values = normalize_override(override, opt.param_groups, type(opt).__name__)
    for key, per_group in values.items():
        for group, learned in zip(opt.param_groups, per_group):
            group[key] = plain_value(learned, group[key])


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
    return float(value) if isinstance(current, numbers.Real) and not isinstance(current, bool) else value
