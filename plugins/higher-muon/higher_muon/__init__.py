"""higher-muon: a differentiable ``torch.optim.Muon`` for higher-core."""

from __future__ import annotations

import torch

from higher_core import plugin_hooks
from higher_muon._muon import DifferentiableMuon

__all__ = ["DifferentiableMuon", "higher_core_conformance", "higher_core_optimizers"]

higher_core_optimizers, higher_core_conformance = plugin_hooks(
    {torch.optim.Muon: DifferentiableMuon}, conformance="higher_muon._conformance:MUON_INFO"
)
