"""higher-muon: a differentiable ``torch.optim.Muon`` for higher-core.

On a torch without ``torch.optim.Muon`` (before 2.9) importing this package raises
:class:`higher_core.errors.OptimizerUnavailableError` naming the torch it needs; the
plugin host then lists it as unavailable and registers nothing, without failing.
"""

from __future__ import annotations

from higher_core import plugin_hooks
from higher_core.compat import torch_optimizer

Muon = torch_optimizer("Muon")  # first: on an older torch, stop here with the reason

from higher_muon._muon import DifferentiableMuon  # noqa: E402

__all__ = ["DifferentiableMuon", "higher_core_conformance", "higher_core_optimizers"]

higher_core_optimizers, higher_core_conformance = plugin_hooks(
    {Muon: DifferentiableMuon}, conformance="higher_muon._conformance:MUON_INFO"
)
