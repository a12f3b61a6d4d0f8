"""higher-nadam: a differentiable ``torch.optim.NAdam`` for higher-core."""

from __future__ import annotations

import torch

from higher_core import plugin_hooks
from higher_nadam._nadam import DifferentiableNAdam

__all__ = ["DifferentiableNAdam", "higher_core_conformance", "higher_core_optimizers"]

higher_core_optimizers, higher_core_conformance = plugin_hooks(
    {torch.optim.NAdam: DifferentiableNAdam}, conformance="higher_nadam._conformance:NADAM_INFO"
)
