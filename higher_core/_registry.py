"""Which differentiable optimizer stands for which optimizer type.

A user's :func:`register_optim` wins over any plugin; otherwise the installed
plugins (see :mod:`higher_core._plugins`) decide. A subclass of a supported
optimizer resolves to its nearest registered base class, with a
:class:`~higher_core.errors.SubclassResolutionWarning`.
"""

from __future__ import annotations

import threading
import warnings

import torch

from higher_core._optimizer import DifferentiableOptimizer
from higher_core._plugins import plugin_host
from higher_core.errors import (
    PluginConflictError,
    SubclassResolutionWarning,
    UnsupportedOptimizerError,
)

__all__ = ["register_optim", "resolve", "lookup", "pip_name_for", "missing_optimizer_message"]

_explicit: dict[type, type[DifferentiableOptimizer]] = {}
_lock = threading.Lock()

#: torch.optim types that no plugin can make differentiable, and why.
REFUSED: dict[str, str] = {
    "SparseAdam": (
        "it only accepts sparse gradients, and a sparse update has no differentiable "
        "out-of-place form here; use torch.optim.Adam with dense gradients (for example "
        "nn.Embedding(..., sparse=False)) and `pip install higher-adam`"
    ),
}


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
        ...     def update(self, group, params, grads, states):
        ...         return [p - group["lr"] * g for p, g in zip(params, grads)], states
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
    with _lock:
        _explicit[optim_type] = diff_optim_type


def unregister_optim(optim_type: type[torch.optim.Optimizer]) -> None:
    """Forget a :func:`register_optim` registration (plugins are untouched)."""
    with _lock:
        _explicit.pop(optim_type, None)


def _exact(optim_type: type) -> type[DifferentiableOptimizer] | None:
    if optim_type in _explicit:
        return _explicit[optim_type]
    providers = plugin_host().table().providers.get(optim_type)
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


def resolve(optim_type: type) -> type[DifferentiableOptimizer]:
    """The differentiable optimizer for ``optim_type``, or a clear error naming the fix."""
    found = lookup(optim_type)
    if found is None:
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


def qualified_name(t: type) -> str:
    """``torch.optim.Adam`` for torch's optimizers, ``module.Qualname`` otherwise."""
    module = t.__module__
    if module.startswith("torch.optim") and getattr(torch.optim, t.__name__, None) is t:
        module = "torch.optim"
    return f"{module}.{t.__qualname__}"


def pip_name_for(optim_type: type) -> str | None:
    """``higher-<name>`` for a ``torch.optim`` built-in, else ``None``."""
    if getattr(torch.optim, optim_type.__name__, None) is optim_type:
        return f"higher-{optim_type.__name__.lower()}"
    return None


def missing_optimizer_message(optim_type: type) -> str:
    """The refusal for an optimizer type no installed plugin supports."""
    name = qualified_name(optim_type)
    reason = REFUSED.get(optim_type.__name__)
    if reason is not None and getattr(torch.optim, optim_type.__name__, None) is optim_type:
        return f"{name} is not supported by higher-core: {reason}."
    pip_name = pip_name_for(optim_type)
    if pip_name is not None:
        message = (
            f"no differentiable optimizer is registered for {name}; "
            f"install it with `pip install {pip_name}`"
        )
    else:
        message = (
            f"no differentiable optimizer is registered for {name}; install a higher-core "
            "plugin that provides it, or register one with "
            f"higher_core.register_optim({optim_type.__name__}, <DifferentiableOptimizer subclass>)"
        )
    table = plugin_host().table()
    known = sorted({t.__name__ for t in table.providers} | {t.__name__ for t in _explicit})
    message += f". Registered now: {', '.join(known) if known else 'none'}"
    if table.failures:
        failed = "; ".join(f"{f.source} ({f.error})" for f in table.failures)
        message += f". Plugins that failed to load: {failed}"
    return message + "."
