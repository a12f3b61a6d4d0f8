"""higher-adafactor: a differentiable ``torch.optim.Adafactor`` for higher-core.

On a torch without ``torch.optim.Adafactor`` (before 2.5) importing this package raises
:class:`higher_core.errors.OptimizerUnavailableError` naming the torch it needs; the
plugin host then lists it as unavailable and registers nothing, without failing.
"""

from __future__ import annotations

from higher_core import plugin_hooks
from higher_core.compat import torch_optimizer

Adafactor = torch_optimizer("Adafactor")  # first: on an older torch, stop here with the reason

from higher_adafactor._adafactor import DifferentiableAdafactor  # noqa: E402

__all__ = ["DifferentiableAdafactor", "higher_core_conformance", "higher_core_optimizers"]

higher_core_optimizers, higher_core_conformance = plugin_hooks(
    {Adafactor: DifferentiableAdafactor}, conformance="higher_adafactor._conformance:ADAFACTOR_INFO"
)
