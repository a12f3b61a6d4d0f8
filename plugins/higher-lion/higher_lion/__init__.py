"""higher-lion: a differentiable ``lion_pytorch.Lion`` for higher-core."""

from __future__ import annotations

import lion_pytorch

from higher_core import hookimpl
from higher_lion._lion import DifferentiableLion

__all__ = ["DifferentiableLion", "higher_core_conformance", "higher_core_optimizers"]


@hookimpl
def higher_core_optimizers() -> dict[type, type]:
    """This plugin provides ``lion_pytorch.Lion``."""
    return {lion_pytorch.Lion: DifferentiableLion}


@hookimpl
def higher_core_conformance() -> list[object]:
    """The conformance table of ``lion_pytorch.Lion`` (imported only when asked for)."""
    from higher_lion._conformance import LION_INFO

    return [LION_INFO]
