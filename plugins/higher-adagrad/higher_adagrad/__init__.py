"""higher-adagrad: a differentiable ``torch.optim.Adagrad`` for higher-core."""

from __future__ import annotations

import torch

from higher_adagrad._adagrad import DifferentiableAdagrad
from higher_core import hookimpl

__all__ = ["DifferentiableAdagrad", "higher_core_conformance", "higher_core_optimizers"]


@hookimpl
def higher_core_optimizers() -> dict[type, type]:
    """This plugin provides ``torch.optim.Adagrad``."""
    return {torch.optim.Adagrad: DifferentiableAdagrad}


@hookimpl
def higher_core_conformance() -> list[object]:
    """The conformance table of ``torch.optim.Adagrad`` (imported only when asked for)."""
    from higher_adagrad._conformance import ADAGRAD_INFO

    return [ADAGRAD_INFO]
