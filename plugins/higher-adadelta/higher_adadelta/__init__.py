"""higher-adadelta: a differentiable ``torch.optim.Adadelta`` for higher-core."""

from __future__ import annotations

import torch

from higher_core import plugin_hooks
from higher_adadelta._adadelta import DifferentiableAdadelta

__all__ = ["DifferentiableAdadelta", "higher_core_conformance", "higher_core_optimizers"]

higher_core_optimizers, higher_core_conformance = plugin_hooks(
    {torch.optim.Adadelta: DifferentiableAdadelta}, conformance="higher_adadelta._conformance:ADADELTA_INFO"
)
