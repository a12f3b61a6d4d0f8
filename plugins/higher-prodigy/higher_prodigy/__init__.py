"""higher-prodigy: a differentiable ``prodigyopt.Prodigy`` for higher-core."""

from __future__ import annotations

import prodigyopt

from higher_core import hookimpl
from higher_prodigy._prodigy import DifferentiableProdigy

__all__ = ["DifferentiableProdigy", "higher_core_conformance", "higher_core_optimizers"]


@hookimpl
def higher_core_optimizers() -> dict[type, type]:
    """This plugin provides ``prodigyopt.Prodigy``."""
    return {prodigyopt.Prodigy: DifferentiableProdigy}


@hookimpl
def higher_core_conformance() -> list[object]:
    """The conformance tables of ``prodigyopt.Prodigy`` (imported only when asked for).

    Two tables: ``beta1=0`` rows have no hypergradient in ``betas[0]`` (the update jumps there).
    """
    from higher_prodigy._conformance import PRODIGY_INFO

    return [PRODIGY_INFO]
