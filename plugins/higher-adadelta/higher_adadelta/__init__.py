"""higher-adadelta: a differentiable ``torch.optim.Adadelta`` for higher-core."""

from __future__ import annotations

import torch

from higher_adadelta._adadelta import DifferentiableAdadelta
from higher_core import hookimpl

__all__ = ["DifferentiableAdadelta", "higher_core_conformance", "higher_core_optimizers"]


@hookimpl
def higher_core_optimizers() -> dict[type, type]:
    """This plugin provides ``torch.optim.Adadelta``."""
    return {torch.optim.Adadelta: DifferentiableAdadelta}


@hookimpl
def higher_core_conformance() -> list[object]:
    """The conformance table of ``torch.optim.Adadelta`` (imported only when asked for)."""
    from higher_adadelta._conformance import ADADELTA_INFO

    return [ADADELTA_INFO]
