"""The conformance table of ``higher-adafactor``: option combinations and bad inputs."""

from __future__ import annotations

import torch

from higher_core.testing import ErrorOptimizerInput, OptimizerInfo, OptimizerInput
from higher_adafactor._adafactor import DifferentiableAdafactor

ADAFACTOR_INFO = OptimizerInfo(
    reference=torch.optim.Adafactor,
    differentiable=DifferentiableAdafactor,
    inputs=[
        OptimizerInput({"lr": 0.01}, "default"),
        OptimizerInput({"lr": 0.6}, "relative-step"),
        OptimizerInput({"lr": torch.tensor(0.02, dtype=torch.float64), "weight_decay": 0.1}, "tensor-lr"),
        OptimizerInput({"lr": 0.02, "beta2_decay": -0.5}, "beta2_decay"),
        OptimizerInput({"lr": 0.02, "eps": (0.3, 1e-3)}, "eps1"),
        OptimizerInput({"lr": 0.02, "eps": (None, 2.0)}, "eps2-floor"),
        OptimizerInput({"lr": 0.02, "d": 1.1}, "d"),
        OptimizerInput({"lr": 0.02, "weight_decay": 0.5}, "weight_decay"),
        OptimizerInput({"lr": 0.02, "maximize": True}, "maximize"),
        OptimizerInput(
            {"lr": 0.05, "beta2_decay": -0.6, "eps": (1e-2, 0.5), "d": 1.2, "weight_decay": 0.1},
            "groups-differ",
            second_group={"lr": 0.4, "beta2_decay": -0.9, "eps": (None, 1e-3), "d": 1.0, "weight_decay": 0.0},
        ),
        OptimizerInput({"lr": 0.02, "weight_decay": 0.1, "foreach": True}, "foreach"),
    ],
    error_inputs=[
        ErrorOptimizerInput({"lr": -0.01}, ValueError, "Learning rate should be >= 0", "negative lr", raised_by="reference"),
        ErrorOptimizerInput({"beta2_decay": 0.5}, ValueError, "beta2_decay should be <= 0", "positive beta2_decay", raised_by="reference"),
        ErrorOptimizerInput({"eps": (-1.0, 1e-3)}, ValueError, "epsilon1 should be >= 0", "negative eps1", raised_by="reference"),
        ErrorOptimizerInput({"eps": (None, -1.0)}, ValueError, "epsilon2 should be >= 0", "negative eps2", raised_by="reference"),
        ErrorOptimizerInput({"d": 0.5}, ValueError, "Clipping threshold d should be >= 1", "d<1", raised_by="reference"),
        ErrorOptimizerInput({"weight_decay": -0.1}, ValueError, "weight_decay should be >= 0", "negative decay", raised_by="reference"),
        ErrorOptimizerInput({"eps": (None, 1e-3, 0.0)}, ValueError, "eps must be a pair", "eps of 3 entries", raised_by="differentiable"),
    ],
    # Two tensor hyperparameters are checked in tests/test_adafactor.py instead:
    # eps, whose default eps1 is None (the suite cannot make a tensor of it), and d,
    # whose default 1.0 is a kink: a vector's first update has RMS exactly 1, so the
    # clipping max(1, RMS/d) switches on at d = 1 and the derivative there is one-sided.
    hyperparameters=("lr", "beta2_decay", "weight_decay"),
    shapes=((3, 2), (2,), (2, 2, 3)),
    skips={"complex": "torch.optim.Adafactor refuses complex parameters (and so does DifferentiableAdafactor)"},
    # from step 4 on, 1/sqrt(t) <= 0.5 caps the relative step of the "relative-step" row
    gradcheck_warmup=3,
)
