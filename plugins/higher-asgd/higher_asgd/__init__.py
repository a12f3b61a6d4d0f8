"""higher-asgd: a differentiable ``torch.optim.ASGD`` for higher-core."""

from __future__ import annotations

import torch

from higher_asgd._asgd import DifferentiableASGD
from higher_core import hookimpl

__all__ = ["DifferentiableASGD", "higher_core_conformance", "higher_core_optimizers"]


@hookimpl
def higher_core_optimizers() -> dict[type, type]:
    """This plugin provides ``torch.optim.ASGD``."""
    return {torch.optim.ASGD: DifferentiableASGD}


@hookimpl
def higher_core_conformance() -> list[object]:
    """The conformance table of ``torch.optim.ASGD`` (imported only when asked for)."""
    from higher_asgd._conformance import ASGD_INFO

    return [ASGD_INFO]
