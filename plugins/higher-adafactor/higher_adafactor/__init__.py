"""higher-adafactor: a differentiable ``torch.optim.Adafactor`` for higher-core."""

from __future__ import annotations

import torch

from higher_core import plugin_hooks
from higher_adafactor._adafactor import DifferentiableAdafactor

__all__ = ["DifferentiableAdafactor", "higher_core_conformance", "higher_core_optimizers"]

higher_core_optimizers, higher_core_conformance = plugin_hooks(
    {torch.optim.Adafactor: DifferentiableAdafactor}, conformance="higher_adafactor._conformance:ADAFACTOR_INFO"
)
