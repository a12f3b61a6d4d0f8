"""higher-adafactor: a differentiable ``torch.optim.Adafactor`` for higher-core."""

from __future__ import annotations

import torch

from higher_adafactor._adafactor import DifferentiableAdafactor
from higher_core import hookimpl

__all__ = ["DifferentiableAdafactor", "higher_core_conformance", "higher_core_optimizers"]


@hookimpl
def higher_core_optimizers() -> dict[type, type]:
    """This plugin provides ``torch.optim.Adafactor``."""
    return {torch.optim.Adafactor: DifferentiableAdafactor}


@hookimpl
def higher_core_conformance() -> list[object]:
    """The conformance table of ``torch.optim.Adafactor`` (imported only when asked for)."""
    from higher_adafactor._conformance import ADAFACTOR_INFO

    return [ADAFACTOR_INFO]
