"""higher-lbfgs: a differentiable ``torch.optim.LBFGS`` for higher-core."""

from __future__ import annotations

import torch

from higher_core import hookimpl
from higher_lbfgs._lbfgs import DifferentiableLBFGS

__all__ = ["DifferentiableLBFGS", "higher_core_conformance", "higher_core_optimizers"]


@hookimpl
def higher_core_optimizers() -> dict[type, type]:
    """This plugin provides ``torch.optim.LBFGS``."""
    return {torch.optim.LBFGS: DifferentiableLBFGS}


@hookimpl
def higher_core_conformance() -> list[object]:
    """The conformance table of ``torch.optim.LBFGS`` (imported only when asked for)."""
    from higher_lbfgs._conformance import LBFGS_INFO

    return [LBFGS_INFO]
