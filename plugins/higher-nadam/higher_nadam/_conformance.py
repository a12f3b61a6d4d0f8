"""The conformance table of ``higher-nadam``: option combinations and bad inputs."""

from __future__ import annotations

import torch

from higher_core.testing import ErrorOptimizerInput, OptimizerInfo, OptimizerInput, common_error_inputs
from higher_nadam._nadam import DifferentiableNAdam

NADAM_INFO = OptimizerInfo(
    reference=torch.optim.NAdam,
    differentiable=DifferentiableNAdam,
    inputs=[
        OptimizerInput({"lr": 0.01}, "default"),
        OptimizerInput({"lr": 0.02, "betas": (0.8, 0.9), "eps": 1e-6}, "betas+eps"),
        OptimizerInput({"lr": 0.01, "momentum_decay": 0.5}, "momentum_decay"),
        OptimizerInput({"lr": 0.01, "momentum_decay": 0.0}, "no-momentum-decay"),
        OptimizerInput({"lr": 0.01, "weight_decay": 0.1}, "weight_decay"),
        OptimizerInput({"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True}, "decoupled"),
        OptimizerInput({"lr": 0.01, "maximize": True, "weight_decay": 0.05}, "maximize+weight_decay"),
        OptimizerInput({"lr": torch.tensor(0.01, dtype=torch.float64), "weight_decay": 0.1,
                        "decoupled_weight_decay": True}, "tensor-lr+decoupled"),
        OptimizerInput(
            {"lr": 0.01, "betas": (0.85, 0.95), "eps": 1e-7, "weight_decay": 0.05,
             "decoupled_weight_decay": True, "momentum_decay": 0.1},
            "groups-differ",
            second_group={"lr": 0.03, "betas": (0.5, 0.99), "eps": 1e-5, "weight_decay": 0.2,
                          "decoupled_weight_decay": False, "momentum_decay": 0.01},
        ),
        OptimizerInput({"lr": 0.01, "weight_decay": 0.1, "foreach": True}, "foreach"),
        OptimizerInput({"lr": 0.01, "weight_decay": 0.1, "differentiable": True}, "differentiable-flag"),
    ],
    error_inputs=[
        *common_error_inputs(),
        ErrorOptimizerInput(
            {"lr": 0.01, "momentum_decay": -0.1}, ValueError, "Invalid momentum_decay", "negative momentum_decay", raised_by="reference"
        ),
    ],
)
