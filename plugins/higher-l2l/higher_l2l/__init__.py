"""higher-l2l: a learned optimizer for higher-core.

The coordinatewise LSTM optimizer of Andrychowicz et al. (2016), "Learning to
learn by gradient descent by gradient descent": :class:`CoordinateLSTM` (the
learned weights), :class:`LSTMOptimizer` (a ``torch.optim.Optimizer`` applying
them), :class:`DifferentiableLSTMOptimizer` (its differentiable counterpart,
which ``higher_core.innerloop_ctx`` uses for an ``LSTMOptimizer``, so that
meta-gradients reach the LSTM's weights), and evolution-strategies estimates of
the same meta-gradient (:func:`es_gradient`, :class:`PersistentES`).
"""

from __future__ import annotations

from higher_core import plugin_hooks
from higher_l2l._differentiable import DifferentiableLSTMOptimizer
from higher_l2l._es import ESEstimate, PersistentES, es_gradient
from higher_l2l._lstm import CoordinateLSTM, lstm_step, preprocess_gradient
from higher_l2l._optimizer import LSTMOptimizer

__all__ = [
    "CoordinateLSTM",
    "DifferentiableLSTMOptimizer",
    "ESEstimate",
    "LSTMOptimizer",
    "PersistentES",
    "es_gradient",
    "higher_core_conformance",
    "higher_core_optimizers",
    "lstm_step",
    "preprocess_gradient",
]

higher_core_optimizers, higher_core_conformance = plugin_hooks(
    {LSTMOptimizer: DifferentiableLSTMOptimizer}, conformance="higher_l2l._conformance:LSTM_INFO"
)
