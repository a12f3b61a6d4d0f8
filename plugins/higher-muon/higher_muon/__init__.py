"""higher-muon: a differentiable ``torch.optim.Muon`` for higher-core."""

from __future__ import annotations

import torch

from higher_core import hookimpl
from higher_muon._muon import DifferentiableMuon

__all__ = ["DifferentiableMuon", "higher_core_conformance", "higher_core_optimizers"]


@hookimpl
def higher_core_optimizers() -> dict[type, type]:
    """This plugin provides ``torch.optim.Muon``."""
    return {torch.optim.Muon: DifferentiableMuon}


@hookimpl
def higher_core_conformance() -> list[object]:
    """The conformance table of ``torch.optim.Muon`` (imported only when asked for)."""
    from higher_muon._conformance import MUON_INFO

    return [MUON_INFO]
