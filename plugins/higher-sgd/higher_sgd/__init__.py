"""higher-sgd: a differentiable ``torch.optim.SGD`` for higher-core."""

from __future__ import annotations

import torch

from higher_core import plugin_hooks
from higher_sgd._sgd import DifferentiableSGD

__all__ = ["DifferentiableSGD", "higher_core_conformance", "higher_core_optimizers"]

higher_core_optimizers, higher_core_conformance = plugin_hooks(
    {torch.optim.SGD: DifferentiableSGD}, conformance="higher_sgd._conformance:SGD_INFO"
)
