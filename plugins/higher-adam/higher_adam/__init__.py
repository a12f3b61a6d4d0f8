"""higher-adam: a differentiable ``torch.optim.Adam`` for higher-core."""

from __future__ import annotations

import torch

from higher_adam._adam import DifferentiableAdam
from higher_core import hookimpl

__all__ = ["DifferentiableAdam", "higher_core_conformance", "higher_core_optimizers"]


@hookimpl
def higher_core_optimizers() -> dict[type, type]:
    """This plugin provides ``torch.optim.Adam``."""
    return {torch.optim.Adam: DifferentiableAdam}


@hookimpl
def higher_core_conformance() -> list[object]:
    """The conformance table of ``torch.optim.Adam`` (imported only when asked for)."""
    from higher_adam._conformance import ADAM_INFO

    return [ADAM_INFO]
