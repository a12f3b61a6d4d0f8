"""higher-adamw: a differentiable ``torch.optim.AdamW`` for higher-core."""

from __future__ import annotations

import torch

from higher_adamw._adamw import DifferentiableAdamW
from higher_core import hookimpl

__all__ = ["DifferentiableAdamW", "higher_core_conformance", "higher_core_optimizers"]


@hookimpl
def higher_core_optimizers() -> dict[type, type]:
    """This plugin provides ``torch.optim.AdamW``."""
    return {torch.optim.AdamW: DifferentiableAdamW}


@hookimpl
def higher_core_conformance() -> list[object]:
    """The conformance table of ``torch.optim.AdamW`` (imported only when asked for)."""
    from higher_adamw._conformance import ADAMW_INFO

    return [ADAMW_INFO]
