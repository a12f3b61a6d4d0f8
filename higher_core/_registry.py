"""Which differentiable optimizer stands for which optimizer type.

There is one table, the plugin host's (see :mod:`higher_core._plugins`): a
user's :func:`register_optim` is an entry of a plugin that runs first, so it
wins over any installed plugin. A subclass of a supported
optimizer resolves to its nearest registered base class, with a
:class:`~higher_core.errors.SubclassResolutionWarning`.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from higher_core._boundary import qualified_name
from higher_core._optimizer import DifferentiableOptimizer
from higher_core.errors import (
    PluginConflictError,
    SubclassResolutionWarning,
    UnsupportedOptimizerError,
)

__all__ = [
    "register_optim",
    "unregister_optim",
    "resolve",
    "resolve_for",
    "lookup",
]


def _host() -> Any:
    """The process-wide plugin host; its module is imported at the first lookup, not with the core."""
    from higher_core._plugins import plugin_host

    return plugin_host()

def register_optim(
    optim_type: type[torch.optim.Optimizer], diff_optim_type: type[DifferentiableOptimizer]
) -> None:
    """Register a differentiable optimizer for an optimizer type, ahead of any plugin.

    Args:
        optim_type: an optimizer class, a subclass of :class:`torch.optim.Optimizer`.
        diff_optim_type: a subclass of :class:`~higher_core.optim.DifferentiableOptimizer`
            with functionally the same update rule.

    Example:
        >>> import torch, higher_core
        >>> class MySGD(torch.optim.SGD): ...
        >>> class DifferentiableMySGD(higher_core.optim.DifferentiableOptimizer):
        ...     def update_one(self, group, param, grad, state):
        ...         return param - group["lr"] * grad, state
        >>> higher_core.register_optim(MySGD, DifferentiableMySGD)
    """
    if not (isinstance(optim_type, type) and issubclass(optim_type, torch.optim.Optimizer)):
        raise TypeError(
            f"register_optim: optim_type must be a subclass of torch.optim.Optimizer, got {optim_type!r}"
        )
    if not (isinstance(diff_optim_type, type) and issubclass(diff_optim_type, DifferentiableOptimizer)):
        raise TypeError(
            "register_optim: diff_optim_type must be a subclass of "
            f"higher_core.optim.DifferentiableOptimizer, got {diff_optim_type!r}"
        )
    _host().set_explicit(optim_type, diff_optim_type)


def unregister_optim(optim_type: type[torch.optim.Optimizer]) -> None:
    """Forget a :func:`register_optim` registration (plugins are untouched)."""
    _host().set_explicit(optim_type, None)


def _exact(optim_type: type) -> type[DifferentiableOptimizer] | None:
    providers = _host().table().best(optim_type)
    if not providers:
        return None
    if len(providers) > 1:
        sources = " and ".join(sorted(p.plugin.source for p in providers))
        raise PluginConflictError(
            f"{qualified_name(optim_type)} is claimed by more than one plugin: {sources}. "
            "Uninstall one of them, disable one with HIGHER_CORE_DISABLE_PLUGINS, or choose "
            f"explicitly with higher_core.register_optim({optim_type.__name__}, ...)."
        )
    return providers[0].diff_type


def lookup(optim_type: type) -> tuple[type[DifferentiableOptimizer], type] | None:
    """The differentiable optimizer for ``optim_type`` and the type it was registered for.

    Walks the MRO so that a subclass finds its nearest registered base; returns
    ``None`` when nothing is registered. Never warns.
    """
    for candidate in optim_type.__mro__:
        if candidate is torch.optim.Optimizer or candidate is object:
            break
        found = _exact(candidate)
        if found is not None:
            return found, candidate
    return None


def resolve_for(opt: Any, argument: str = "opt") -> type[DifferentiableOptimizer]:
    """The differentiable optimizer for the optimizer instance ``opt``.

    Raises:
        TypeError: ``opt`` is not a :class:`torch.optim.Optimizer` instance (a class, a
            module, ``None``...); the message names ``argument``, what it got and the fix.
        UnsupportedOptimizerError: nothing is registered for ``type(opt)``.

    Example:
        >>> import torch, higher_core
        >>> from higher_core._registry import resolve_for
        >>> resolve_for(torch.optim.SGD)
        Traceback (most recent call last):
        ...
        TypeError: opt: expected a torch.optim.Optimizer instance, got the class torch.optim.SGD; pass an instance: torch.optim.SGD(model.parameters(), ...)
    """
    if not isinstance(opt, torch.optim.Optimizer):
        from higher_core._refusals import describe  # the error path, loaded when taken

        raise TypeError(f"{argument}: expected a torch.optim.Optimizer instance, got {describe(opt)}")
    return resolve(type(opt))


def resolve(optim_type: type) -> type[DifferentiableOptimizer]:
    """The differentiable optimizer for ``optim_type``, or a clear error naming the fix."""
    if not (isinstance(optim_type, type) and issubclass(optim_type, torch.optim.Optimizer)):
        from higher_core._refusals import describe  # the error path, loaded when taken

        got = (f"an instance of {qualified_name(type(optim_type))}; pass its class"
               if isinstance(optim_type, torch.optim.Optimizer) else describe(optim_type))
        raise TypeError(f"expected a torch.optim.Optimizer subclass, got {got}")
    found = lookup(optim_type)
    if found is None:
        from higher_core._refusals import missing_optimizer_message  # the error path, loaded when taken

        raise UnsupportedOptimizerError(missing_optimizer_message(optim_type))
    diff_type, registered_for = found
    if registered_for is not optim_type:
        warnings.warn(
            f"{qualified_name(optim_type)} has no differentiable optimizer of its own; using "
            f"{diff_type.__name__}, registered for its base class {qualified_name(registered_for)}. "
            "If the subclass changes the update rule, register its own with "
            "higher_core.register_optim.",
            SubclassResolutionWarning,
            stacklevel=3,
        )
    return diff_type
