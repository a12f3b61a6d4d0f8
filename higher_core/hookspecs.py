"""Hook specifications of the ``higher_core`` plugin project (pluggy).

A plugin is any module or object with functions marked by
:data:`higher_core.hookimpl`. Installed plugins are found through the entry
point group ``higher_core.plugins``; plugins made at run time are added with
:func:`higher_core.register_plugin`. Hooks are called with keyword arguments
only.

Example:
    A plugin module ``higher_lion/__init__.py``::

        import lion_pytorch
        from higher_core import hookimpl

        @hookimpl
        def higher_core_optimizers():
            return {lion_pytorch.Lion: DifferentiableLion}

    and its ``pyproject.toml``::

        [project.entry-points."higher_core.plugins"]
        lion = "higher_lion"
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Union

import pluggy

if TYPE_CHECKING:
    import torch

    from higher_core._optimizer import DifferentiableOptimizer

PROJECT_NAME = "higher_core"
ENTRY_POINT_GROUP = "higher_core.plugins"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)

#: marks a plugin's implementation of a hook of this module (exported as ``higher_core.hookimpl``)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

#: every hook a plugin may implement; any other name marked with ``hookimpl`` is refused
HOOK_NAMES = ("higher_core_optimizers", "higher_core_conformance")

#: what ``higher_core_optimizers`` returns: optimizer type -> differentiable class, as a mapping or pairs
OptimizerTable = Union[
    "Mapping[type[torch.optim.Optimizer], type[DifferentiableOptimizer]]",
    "Iterable[tuple[type[torch.optim.Optimizer], type[DifferentiableOptimizer]]]",
]


@hookspec
def higher_core_optimizers() -> OptimizerTable:  # type: ignore[empty-body]
    """Return the differentiable optimizers this plugin provides.

    :return: a mapping (or an iterable of pairs) from an optimizer type, such
        as ``torch.optim.Adam``, to the :class:`~higher_core.optim.DifferentiableOptimizer`
        subclass that reproduces its update rule out of place.
    """


@hookspec
def higher_core_conformance() -> Iterable[object]:  # type: ignore[empty-body]
    """Return the conformance tables of the optimizers this plugin provides.

    :return: :class:`higher_core.testing.OptimizerInfo` objects, one per
        optimizer: its option combinations and its bad inputs. The shared suite
        (``higher_core.testing``) checks every row against the reference class.
        Import ``higher_core.testing`` inside the hook, so that plugins stay
        light to import.
    """
