"""higher-adamw: a differentiable ``torch.optim.AdamW`` for higher-core."""

from __future__ import annotations

import torch

from higher_core import plugin_hooks
from higher_adamw._adamw import DifferentiableAdamW

__all__ = ["DifferentiableAdamW", "higher_core_conformance", "higher_core_optimizers"]

higher_core_optimizers, higher_core_conformance = plugin_hooks(
    {torch.optim.AdamW: DifferentiableAdamW}, conformance="higher_adamw._conformance:ADAMW_INFO"
)
