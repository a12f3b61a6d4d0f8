"""Differentiable optimizers: the public API of the old ``higher.optim``.

The update rules themselves live in plugins (``pip install higher-adam``, ...).
The documented class names, ``DifferentiableAdam`` and the rest, resolve through
the registry: available when the plugin providing them is installed, and a
:class:`~higher_core.errors.MissingOptimizerPluginError` naming the
``pip install`` otherwise.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch

from higher_core import _overrides
from higher_core._optimizer import ComplexParameters, DifferentiableOptimizer, GradCallback, Scope, State
from higher_core.compat import optimizer_available, torch_optimizer
from higher_core._registry import lookup, register_optim, resolve, resolve_for
from higher_core.errors import MissingOptimizerPluginError
from higher_core.patch import PatchedModule

if TYPE_CHECKING:  # the batched layer imports this module, never the other way
    from higher_core.batched import BatchedDifferentiableOptimizer

__all__ = [
    "ComplexParameters",
    "DifferentiableOptimizer",
    "GradCallback",
    "Scope",
    "State",
    "apply_trainable_opt_params",
    "create_diff_optim",
    "get_diff_optim",
    "get_trainable_opt_params",
    "register_optim",
]

#: documented class names, resolved lazily through the plugins
_DOCUMENTED = (
    "ASGD", "Adadelta", "Adafactor", "Adagrad", "Adam", "AdamW", "Adamax", "LBFGS", "Muon",
    "NAdam", "RAdam", "RMSprop", "Rprop", "SGD",
)


def __getattr__(name: str) -> Any:
    if name.startswith("__"):  # the import system's probes (``__path__``): never a helper or an optimizer
        raise AttributeError(f"module 'higher_core.optim' has no attribute {name!r}")
    from higher_core._higher_compat import DEPRECATED_HELPERS, NEW_HOOKS  # the old-higher adapter, on demand

    if name in DEPRECATED_HELPERS:  # higher.optim's private helpers, for old ``_update`` subclasses
        warnings.warn(
            f"higher_core.optim.{name} is deprecated (a helper of higher's _update(grouped_grads) "
            f"subclasses); implement {NEW_HOOKS} with higher_core.functional (add_scaled, addcdiv, safe_sqrt)",
            DeprecationWarning, stacklevel=2,
        )
        return DEPRECATED_HELPERS[name]
    base = name[len("Differentiable"):] if name.startswith("Differentiable") else None
    if base in _DOCUMENTED and not optimizer_available(base):
        torch_optimizer(base)  # raises: "torch.optim.Muon needs torch >= 2.9; you have 2.6.0"
    torch_type = getattr(torch.optim, base, None) if base else None
    if not (isinstance(torch_type, type) and issubclass(torch_type, torch.optim.Optimizer)):
        raise AttributeError(f"module 'higher_core.optim' has no attribute {name!r}")
    found = lookup(torch_type)
    if found is None or found[1] is not torch_type:
        from higher_core._refusals import missing_optimizer_message  # the error path, loaded when taken

        raise MissingOptimizerPluginError(missing_optimizer_message(torch_type))
    return found[0]


def __dir__() -> list[str]:
    return sorted(set(__all__) | {f"Differentiable{n}" for n in _DOCUMENTED if hasattr(torch.optim, n)})


def get_diff_optim(
    opt: torch.optim.Optimizer,
    reference_params: Iterable[torch.Tensor],
    fmodel: PatchedModule | None = None,
    device: torch.device | str | None = None,
    override: _overrides.Override | None = None,
    track_higher_grads: bool | None = None,
    tasks: int | None = None,
    **kwargs: Any,
) -> DifferentiableOptimizer | BatchedDifferentiableOptimizer:
    """A differentiable version of an existing optimizer, continuing from its state.

    Args:
        opt: an optimizer of a type some installed plugin supports.
        reference_params: the parameters of the module ``opt`` tracks
            (``module.parameters()``), in the order the fast weights follow.
        fmodel: a patched version of that module; then ``step`` needs no ``params``.
        device: the device to cast the optimizer state to.
        override: hyperparameters as ``{name: [value]}`` (all groups) or one value per
            group; tensors receive gradients.
        track_higher_grads: if False, steps are taken without a graph (test mode);
            by default the fmodel's flag, or True without an fmodel.
        tasks: if given, a :class:`higher_core.batched.BatchedDifferentiableOptimizer`
            stepping ``tasks`` tasks' stacked fast weights (``[T, *shape]``) at once.
        **kwargs: passed on to the differentiable optimizer (e.g. ``grad_callback``).

    Raises:
        UnsupportedOptimizerError: no installed plugin supports ``type(opt)``; the
            message names the ``pip install`` that provides it.

    Example:
        >>> import torch, higher_core
        >>> model = torch.nn.Linear(2, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> diffopt = higher_core.optim.get_diff_optim(opt, model.parameters())
        >>> fast = [p.detach().clone().requires_grad_() for p in model.parameters()]
        >>> loss = (torch.ones(1, 2) @ fast[0].t() + fast[1]).pow(2).sum()
        >>> fast = diffopt.step(loss, params=fast)
    """
    diff_type = resolve_for(opt)
    if tasks is not None:  # batched tasks: higher_core/batched
        from higher_core.batched import BatchedDifferentiableOptimizer
        return BatchedDifferentiableOptimizer(
            diff_type, opt, reference_params, tasks, fmodel=fmodel, device=device, override=override,
            track_higher_grads=track_higher_grads, **kwargs)
    return diff_type(opt, reference_params, fmodel=fmodel, device=device, override=override,
                     track_higher_grads=track_higher_grads, **kwargs)


def _placeholder(t: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(t, device="meta").requires_grad_(t.requires_grad)


def create_diff_optim(
    opt_type: type[torch.optim.Optimizer],
    opt_kwargs: Mapping[str, Any] | None = None,
    params: Iterable[torch.Tensor] | Iterable[Mapping[str, Any]] | None = None,
    fmodel: PatchedModule | None = None,
    device: torch.device | str | None = None,
    override: _overrides.Override | None = None,
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
            override[key].append(_overrides.trainable_value(value, where, dtype))
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
    values = _overrides.normalize_override(override, opt.param_groups, type(opt).__name__)
    for key, per_group in values.items():
        for group, learned in zip(opt.param_groups, per_group):
            group[key] = _overrides.plain_value(learned, group[key])
