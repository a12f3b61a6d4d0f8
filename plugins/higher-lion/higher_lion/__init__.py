"""higher-lion: a differentiable ``lion_pytorch.Lion`` for higher-core."""

from __future__ import annotations

import lion_pytorch

from higher_core import plugin_hooks
from higher_lion._lion import DifferentiableLion

__all__ = ["DifferentiableLion", "higher_core_conformance", "higher_core_optimizers"]

higher_core_optimizers, higher_core_conformance = plugin_hooks(
    {lion_pytorch.Lion: DifferentiableLion}, conformance="higher_lion._conformance:LION_INFO"
)
