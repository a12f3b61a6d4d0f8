"""higher-lbfgs: a differentiable ``torch.optim.LBFGS`` for higher-core."""

from __future__ import annotations

import torch

from higher_core import plugin_hooks
from higher_lbfgs._lbfgs import DifferentiableLBFGS

__all__ = ["DifferentiableLBFGS", "higher_core_conformance", "higher_core_optimizers"]

higher_core_optimizers, higher_core_conformance = plugin_hooks(
    {torch.optim.LBFGS: DifferentiableLBFGS}, conformance="higher_lbfgs._conformance:LBFGS_INFO"
)
