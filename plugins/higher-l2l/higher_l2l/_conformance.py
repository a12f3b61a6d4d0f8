"""The conformance table of ``higher-l2l``: option combinations and bad inputs.

The reference is the plugin's own ``LSTMOptimizer``; every row passes the
learned weights (a seeded ``CoordinateLSTM`` in float64: the float32 check
casts them to the parameters' dtype, as the rule does).
"""

from __future__ import annotations

import torch

from higher_core.testing import ErrorOptimizerInput, OptimizerInfo, OptimizerInput
from higher_l2l._differentiable import DifferentiableLSTMOptimizer
from higher_l2l._lstm import CoordinateLSTM
from higher_l2l._optimizer import LSTMOptimizer


def _lstm(seed: int, **kwargs: object) -> CoordinateLSTM:
    return CoordinateLSTM(generator=torch.Generator().manual_seed(seed), dtype=torch.float64, **kwargs)  # type: ignore[arg-type]


LSTM_INFO = OptimizerInfo(
    reference=LSTMOptimizer,
    differentiable=DifferentiableLSTMOptimizer,
    inputs=[
        OptimizerInput({"lstm": _lstm(0), "lr": 0.1}, "paper (2 layers x 20, p=10)"),
        OptimizerInput({"lstm": _lstm(1, hidden_size=4, num_layers=1, preprocessing=5.0), "lr": 0.05},
                       "one layer, p=5", second_group={"lr": 0.2}),
        OptimizerInput({"lstm": _lstm(2, hidden_size=3, num_layers=3), "lr": torch.tensor(0.1)}, "tensor-lr"),
    ],
    error_inputs=[
        ErrorOptimizerInput({"lstm": _lstm(0), "lr": -0.1}, ValueError, "Invalid learning rate", "negative lr"),
        ErrorOptimizerInput({"lstm": _lstm(0), "lr": torch.tensor([0.1, 0.2])}, ValueError,
                            "Tensor lr must be 1-element", "tensor lr of 2 elements"),
        ErrorOptimizerInput({"lstm": torch.nn.LSTM(2, 20), "lr": 0.1}, TypeError,
                            "lstm must be a higher_l2l.CoordinateLSTM", "an nn.LSTM for lstm"),
        ErrorOptimizerInput({"lr": 0.1}, TypeError, "missing 1 required positional argument: 'lstm'",
                            "no lstm"),
    ],
)
