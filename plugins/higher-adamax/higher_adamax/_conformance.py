"""The conformance table of ``higher-adamax``: option combinations and bad inputs."""

from __future__ import annotations

import torch

from higher_core.testing import ErrorOptimizerInput, OptimizerInfo, OptimizerInput, common_error_inputs
from higher_adamax._adamax import DifferentiableAdamax

ADAMAX_INFO = OptimizerInfo(
    reference=torch.optim.Adamax,
    differentiable=DifferentiableAdamax,
    inputs=[
        OptimizerInput({"lr": 0.01}, "default"),
        OptimizerInput({"lr": 0.02, "betas": (0.8, 0.9), "eps": 1e-6}, "betas+eps"),
        OptimizerInput({"lr": 0.01, "betas": (0.9, 0.3)}, "fast-decaying-inf-norm"),
        OptimizerInput({"lr": 0.01, "weight_decay": 0.1}, "weight_decay"),
        OptimizerInput({"lr": 0.01, "maximize": True, "weight_decay": 0.05}, "maximize+weight_decay"),
        OptimizerInput({"lr": torch.tensor(0.01, dtype=torch.float64)}, "tensor-lr"),
        OptimizerInput(
            {"lr": 0.01, "betas": (0.85, 0.95), "eps": 1e-7, "weight_decay": 0.05},
            "groups-differ",
            second_group={"lr": 0.03, "betas": (0.5, 0.99), "eps": 1e-5, "weight_decay": 0.0},
        ),
        OptimizerInput({"lr": 0.01, "weight_decay": 0.1, "foreach": True}, "foreach"),
        OptimizerInput({"lr": 0.01, "weight_decay": 0.1, "differentiable": True}, "differentiable-flag"),
    ],
    error_inputs=[
        *common_error_inputs(),
    ],
)
