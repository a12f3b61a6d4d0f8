"""The conformance table of ``higher-sgd``: option combinations and bad inputs."""

from __future__ import annotations

import torch

from higher_core.testing import ErrorOptimizerInput, OptimizerInfo, OptimizerInput
from higher_sgd._sgd import DifferentiableSGD

SGD_INFO = OptimizerInfo(
    reference=torch.optim.SGD,
    differentiable=DifferentiableSGD,
    inputs=[
        OptimizerInput({"lr": 0.1}, "plain"),
        OptimizerInput({"lr": 0.1, "momentum": 0.9}, "momentum"),
        OptimizerInput({"lr": 0.1, "momentum": 0.9, "dampening": 0.3}, "momentum+dampening"),
        OptimizerInput({"lr": 0.1, "momentum": 0.9, "nesterov": True}, "nesterov"),
        OptimizerInput({"lr": 0.1, "weight_decay": 0.05}, "weight_decay"),
        OptimizerInput({"lr": 0.1, "momentum": 0.5, "maximize": True}, "maximize"),
        OptimizerInput(
            {"lr": 0.05, "momentum": 0.8, "nesterov": True, "weight_decay": 0.1},
            "nesterov+weight_decay",
            second_group={"lr": 0.02, "momentum": 0.5},
        ),
        OptimizerInput({"lr": 0.1, "momentum": 0.9, "foreach": True}, "foreach"),
        OptimizerInput({"lr": 0.1, "momentum": 0.9, "differentiable": True}, "differentiable-flag"),
        OptimizerInput({"lr": torch.tensor(0.1), "momentum": 0.9}, "tensor-lr"),
    ],
    error_inputs=[
        ErrorOptimizerInput({"lr": -0.1}, ValueError, "Invalid learning rate", "negative lr", raised_by="reference"),
        ErrorOptimizerInput({"lr": 0.1, "momentum": -0.5}, ValueError, "Invalid momentum", "negative momentum", raised_by="reference"),
        ErrorOptimizerInput({"lr": 0.1, "weight_decay": -1.0}, ValueError, "Invalid weight_decay", "negative decay", raised_by="reference"),
        ErrorOptimizerInput(
            {"lr": 0.1, "nesterov": True}, ValueError, "Nesterov momentum requires", "nesterov without momentum", raised_by="reference"
        ),
    ],
)
