"""higher-rprop: a differentiable ``torch.optim.Rprop`` for higher-core."""

from __future__ import annotations

import torch

from higher_core import hookimpl
from higher_rprop._rprop import DifferentiableRprop

__all__ = ["DifferentiableRprop", "higher_core_conformance", "higher_core_optimizers"]


@hookimpl
def higher_core_optimizers() -> dict[type, type]:
    """This plugin provides ``torch.optim.Rprop``."""
    return {torch.optim.Rprop: DifferentiableRprop}


@hookimpl
def higher_core_conformance() -> list[object]:
    """The conformance table of ``torch.optim.Rprop`` (imported only when asked for)."""
    from higher_rprop._conformance import RPROP_INFO

    return [RPROP_INFO]
