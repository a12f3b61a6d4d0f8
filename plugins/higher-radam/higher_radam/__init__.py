"""higher-radam: a differentiable ``torch.optim.RAdam`` for higher-core."""

from __future__ import annotations

import torch

from higher_core import plugin_hooks
from higher_radam._radam import DifferentiableRAdam

__all__ = ["DifferentiableRAdam", "higher_core_conformance", "higher_core_optimizers"]

higher_core_optimizers, higher_core_conformance = plugin_hooks(
    {torch.optim.RAdam: DifferentiableRAdam}, conformance="higher_radam._conformance:RADAM_INFO"
)
