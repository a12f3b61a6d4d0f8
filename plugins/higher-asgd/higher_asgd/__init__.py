"""higher-asgd: a differentiable ``torch.optim.ASGD`` for higher-core."""

from __future__ import annotations

import torch

from higher_core import plugin_hooks
from higher_asgd._asgd import DifferentiableASGD

__all__ = ["DifferentiableASGD", "higher_core_conformance", "higher_core_optimizers"]

higher_core_optimizers, higher_core_conformance = plugin_hooks(
    {torch.optim.ASGD: DifferentiableASGD}, conformance="higher_asgd._conformance:ASGD_INFO"
)
