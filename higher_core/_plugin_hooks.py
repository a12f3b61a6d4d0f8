"""Building a plugin's hook implementations from one mapping."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

from higher_core.hookspecs import hookimpl

__all__ = ["plugin_hooks"]


def plugin_hooks(
    optimizers: Mapping[type, type], conformance: str | None = None
) -> tuple[Callable[[], dict[type, type]], Callable[[], list[Any]]]:
    """A plugin's ``higher_core_optimizers`` and ``higher_core_conformance`` hooks, from one mapping.

    Assign the pair to those two names at the top level of the plugin's
    package (the entry point of group ``higher_core.plugins`` names it): they
    are ordinary functions marked with :data:`higher_core.hookimpl`, so the host
    finds them as if written out.

    Args:
        optimizers: reference optimizer type -> differentiable optimizer type.
        conformance: ``"package.module:NAME"`` (or ``"package.module:A,B"``) naming
            the plugin's :class:`higher_core.testing.OptimizerInfo` table(s); the
            module is imported only when the conformance hook is called, so
            importing the plugin never imports the testing kit. ``None``: no table.

    Returns:
        ``(higher_core_optimizers, higher_core_conformance)``.

    Example:
        >>> import torch, higher_core
        >>> class MySGD(higher_core.optim.DifferentiableOptimizer):
        ...     scope = "element"
        ...     def update_one(self, group, param, grad, state):
        ...         return param - group["lr"] * grad, state
        >>> higher_core_optimizers, higher_core_conformance = higher_core.plugin_hooks(
        ...     {torch.optim.SGD: MySGD}, conformance="my_plugin._conformance:SGD_INFO")
        >>> higher_core_optimizers()
        {<class 'torch.optim.sgd.SGD'>: <class '...MySGD'>}
    """
    table = dict(optimizers)
    if conformance is not None:
        module_name, colon, names = conformance.partition(":")
        if not colon or not module_name or not names:
            raise ValueError(
                f"conformance={conformance!r}: give 'package.module:NAME' (the module holding the "
                "OptimizerInfo table and the table's name)"
            )
    caller = sys._getframe(1).f_globals.get("__name__", __name__)

    @hookimpl
    def higher_core_optimizers() -> dict[type, type]:
        """The optimizer types this plugin provides."""
        return dict(table)

    @hookimpl
    def higher_core_conformance() -> list[Any]:
        """This plugin's conformance tables (imported only when asked for)."""
        if conformance is None:
            return []
        module = importlib.import_module(module_name)
        return [getattr(module, name.strip()) for name in names.split(",")]

    for hook in (higher_core_optimizers, higher_core_conformance):
        hook.__module__ = caller
        hook.__qualname__ = hook.__name__
    return higher_core_optimizers, higher_core_conformance
