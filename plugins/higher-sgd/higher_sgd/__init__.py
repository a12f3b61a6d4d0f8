"""higher-sgd: a differentiable ``torch.optim.SGD`` for higher-core."""

from __future__ import annotations

import torch

from higher_core import hookimpl
from higher_sgd._sgd import DifferentiableSGD

__all__ = ["DifferentiableSGD", "higher_core_conformance", "higher_core_optimizers"]


@hookimpl
def higher_core_optimizers() -> dict[type, type]:
    """This plugin provides ``torch.optim.SGD``."""
    return {torch.optim.SGD: DifferentiableSGD}


@hookimpl
def higher_core_conformance() -> list[object]:
    """The conformance table of ``torch.optim.SGD`` (imported only when asked for)."""
    from higher_sgd._conformance import SGD_INFO

    return [SGD_INFO]
