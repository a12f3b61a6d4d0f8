"""higher-rmsprop: a differentiable ``torch.optim.RMSprop`` for higher-core."""

from __future__ import annotations

import torch

from higher_core import hookimpl
from higher_rmsprop._rmsprop import DifferentiableRMSprop

__all__ = ["DifferentiableRMSprop", "higher_core_conformance", "higher_core_optimizers"]


@hookimpl
def higher_core_optimizers() -> dict[type, type]:
    """This plugin provides ``torch.optim.RMSprop``."""
    return {torch.optim.RMSprop: DifferentiableRMSprop}


@hookimpl
def higher_core_conformance() -> list[object]:
    """The conformance table of ``torch.optim.RMSprop`` (imported only when asked for)."""
    from higher_rmsprop._conformance import RMSPROP_INFO

    return [RMSPROP_INFO]
