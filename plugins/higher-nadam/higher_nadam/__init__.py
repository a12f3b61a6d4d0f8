"""higher-nadam: a differentiable ``torch.optim.NAdam`` for higher-core."""

from __future__ import annotations

import torch

from higher_core import hookimpl
from higher_nadam._nadam import DifferentiableNAdam

__all__ = ["DifferentiableNAdam", "higher_core_conformance", "higher_core_optimizers"]


@hookimpl
def higher_core_optimizers() -> dict[type, type]:
    """This plugin provides ``torch.optim.NAdam``."""
    return {torch.optim.NAdam: DifferentiableNAdam}


@hookimpl
def higher_core_conformance() -> list[object]:
    """The conformance table of ``torch.optim.NAdam`` (imported only when asked for)."""
    from higher_nadam._conformance import NADAM_INFO

    return [NADAM_INFO]
