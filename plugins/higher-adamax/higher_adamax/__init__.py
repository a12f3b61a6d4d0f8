"""higher-adamax: a differentiable ``torch.optim.Adamax`` for higher-core."""

from __future__ import annotations

import torch

from higher_adamax._adamax import DifferentiableAdamax
from higher_core import hookimpl

__all__ = ["DifferentiableAdamax", "higher_core_conformance", "higher_core_optimizers"]


@hookimpl
def higher_core_optimizers() -> dict[type, type]:
    """This plugin provides ``torch.optim.Adamax``."""
    return {torch.optim.Adamax: DifferentiableAdamax}


@hookimpl
def higher_core_conformance() -> list[object]:
    """The conformance table of ``torch.optim.Adamax`` (imported only when asked for)."""
    from higher_adamax._conformance import ADAMAX_INFO

    return [ADAMAX_INFO]
