"""higher-radam: a differentiable ``torch.optim.RAdam`` for higher-core."""

from __future__ import annotations

import torch

from higher_core import hookimpl
from higher_radam._radam import DifferentiableRAdam

__all__ = ["DifferentiableRAdam", "higher_core_conformance", "higher_core_optimizers"]


@hookimpl
def higher_core_optimizers() -> dict[type, type]:
    """This plugin provides ``torch.optim.RAdam``."""
    return {torch.optim.RAdam: DifferentiableRAdam}


@hookimpl
def higher_core_conformance() -> list[object]:
    """The conformance table of ``torch.optim.RAdam`` (imported only when asked for)."""
    from higher_radam._conformance import RADAM_INFO

    return [RADAM_INFO]
