"""higher-adagrad: a differentiable ``torch.optim.Adagrad`` for higher-core."""

from __future__ import annotations

import torch

from higher_core import plugin_hooks
from higher_adagrad._adagrad import DifferentiableAdagrad

__all__ = ["DifferentiableAdagrad", "higher_core_conformance", "higher_core_optimizers"]

higher_core_optimizers, higher_core_conformance = plugin_hooks(
    {torch.optim.Adagrad: DifferentiableAdagrad}, conformance="higher_adagrad._conformance:ADAGRAD_INFO"
)
