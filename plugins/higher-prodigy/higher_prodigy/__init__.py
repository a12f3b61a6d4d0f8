"""higher-prodigy: a differentiable ``prodigyopt.Prodigy`` for higher-core."""

from __future__ import annotations

import prodigyopt

from higher_core import plugin_hooks
from higher_prodigy._prodigy import DifferentiableProdigy

__all__ = ["DifferentiableProdigy", "higher_core_conformance", "higher_core_optimizers"]

higher_core_optimizers, higher_core_conformance = plugin_hooks(
    {prodigyopt.Prodigy: DifferentiableProdigy}, conformance="higher_prodigy._conformance:PRODIGY_INFO"
)
