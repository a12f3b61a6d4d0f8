"""Why no differentiable optimizer can be had for a type: the messages of the registry's error path.

Imported when a lookup fails, not with the core: each message names the problem
and the fix (the ``pip install`` that provides a ``torch.optim`` built-in, a
plugin excluded by an environment variable, plugins that failed to load).
"""

from __future__ import annotations

import types
from typing import Any

import torch

from higher_core._boundary import qualified_name
from higher_core._plugin_env import normalize
from higher_core._plugins import plugin_host

__all__ = ["REFUSED", "describe", "missing_optimizer_message", "pip_name_for"]

#: torch.optim types that no plugin can make differentiable, and why.
REFUSED: dict[str, str] = {
    "SparseAdam": (
        "it only accepts sparse gradients, and a sparse update has no differentiable "
        "out-of-place form here; use torch.optim.Adam with dense gradients (for example "
        "nn.Embedding(..., sparse=False)) and `pip install higher-adam`"
    ),
}


_EXAMPLE = "torch.optim.SGD(model.parameters(), lr=0.1)"


def describe(value: Any) -> str:
    """What a value that should have been an optimizer instance is, and the fix."""
    if value is None:
        return f"None; pass an optimizer instance, e.g. {_EXAMPLE}"
    if isinstance(value, type):
        name = qualified_name(value)
        if issubclass(value, torch.optim.Optimizer):
            return f"the class {name}; pass an instance: {name}(model.parameters(), ...)"
        return f"the class {name}; pass an optimizer instance, e.g. {_EXAMPLE}"
    if isinstance(value, types.ModuleType):
        return f"the module {value.__name__}; pass an optimizer instance, e.g. {_EXAMPLE}"
    if isinstance(value, torch.nn.Module):
        return (f"the torch.nn.Module {qualified_name(type(value))}: are the model and the "
                "optimizer swapped? The model comes first, as in innerloop_ctx(model, opt)")
    return f"{qualified_name(type(value))}; pass an optimizer instance, e.g. {_EXAMPLE}"


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
    if pip_name is not None:
        for exclusion in table.excluded:
            if normalize(pip_name) in exclusion.names:
                return (f"no differentiable optimizer is registered for {name}: {exclusion.plugin.source} "
                        f"is installed but excluded by {exclusion.variable}; remove it from "
                        f"{exclusion.variable} (or unset the variable) to use it.")
    known = sorted({t.__name__ for t in table.providers})
    message += f". Registered now: {', '.join(known) if known else 'none'}"
    if table.excluded:
        excluded = "; ".join(f"{e.plugin.source} (by {e.variable})" for e in table.excluded)
        message += f". Installed but excluded: {excluded}"
    if table.failures:
        failed = "; ".join(f"{f.source} ({f.error})" for f in table.failures)
        message += f". Plugins that failed to load: {failed}"
    return message + "."
