"""higher-adamax: a differentiable ``torch.optim.Adamax`` for higher-core."""

from __future__ import annotations

import torch

from higher_core import plugin_hooks
from higher_adamax._adamax import DifferentiableAdamax

__all__ = ["DifferentiableAdamax", "higher_core_conformance", "higher_core_optimizers"]

higher_core_optimizers, higher_core_conformance = plugin_hooks(
    {torch.optim.Adamax: DifferentiableAdamax}, conformance="higher_adamax._conformance:ADAMAX_INFO"
)
