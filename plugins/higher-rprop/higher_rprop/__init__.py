"""higher-rprop: a differentiable ``torch.optim.Rprop`` for higher-core."""

from __future__ import annotations

import torch

from higher_core import plugin_hooks
from higher_rprop._rprop import DifferentiableRprop

__all__ = ["DifferentiableRprop", "higher_core_conformance", "higher_core_optimizers"]

higher_core_optimizers, higher_core_conformance = plugin_hooks(
    {torch.optim.Rprop: DifferentiableRprop}, conformance="higher_rprop._conformance:RPROP_INFO"
)
