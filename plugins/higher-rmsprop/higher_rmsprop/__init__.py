"""higher-rmsprop: a differentiable ``torch.optim.RMSprop`` for higher-core."""

from __future__ import annotations

import torch

from higher_core import plugin_hooks
from higher_rmsprop._rmsprop import DifferentiableRMSprop

__all__ = ["DifferentiableRMSprop", "higher_core_conformance", "higher_core_optimizers"]

higher_core_optimizers, higher_core_conformance = plugin_hooks(
    {torch.optim.RMSprop: DifferentiableRMSprop}, conformance="higher_rmsprop._conformance:RMSPROP_INFO"
)
