"""higher-adam: a differentiable ``torch.optim.Adam`` for higher-core."""

from __future__ import annotations

import torch

from higher_core import plugin_hooks
from higher_adam._adam import DifferentiableAdam

__all__ = ["DifferentiableAdam", "higher_core_conformance", "higher_core_optimizers"]

higher_core_optimizers, higher_core_conformance = plugin_hooks(
    {torch.optim.Adam: DifferentiableAdam}, conformance="higher_adam._conformance:ADAM_INFO"
)
