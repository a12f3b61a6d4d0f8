"""The conformance table of ``higher-rmsprop``: option combinations and bad inputs."""

from __future__ import annotations

import torch

from higher_core.testing import ErrorOptimizerInput, OptimizerInfo, OptimizerInput, multi_element_lr_refusal
from higher_rmsprop._rmsprop import DifferentiableRMSprop

RMSPROP_INFO = OptimizerInfo(
    reference=torch.optim.RMSprop,
    differentiable=DifferentiableRMSprop,
    inputs=[
        OptimizerInput({"lr": 0.01}, "default"),
        OptimizerInput({"lr": 0.01, "alpha": 0.5}, "alpha"),
        OptimizerInput({"lr": 0.01, "eps": 1e-3}, "eps"),
        OptimizerInput({"lr": 0.01, "weight_decay": 0.2}, "weight_decay"),
        OptimizerInput({"lr": 0.01, "momentum": 0.9}, "momentum"),
        OptimizerInput({"lr": 0.01, "centered": True}, "centered"),
        OptimizerInput({"lr": 0.01, "maximize": True}, "maximize"),
        OptimizerInput(
            {"lr": 0.02, "alpha": 0.8, "eps": 1e-6, "weight_decay": 0.1, "momentum": 0.5,
             "centered": True, "maximize": True},
            "groups-differ",
            second_group={"lr": 0.005, "alpha": 0.95, "eps": 1e-4, "weight_decay": 0.0,
                          "momentum": 0.0, "centered": False},
        ),
        OptimizerInput({"lr": 0.01, "momentum": 0.9, "centered": True, "foreach": True}, "foreach"),
        OptimizerInput({"lr": 0.01, "momentum": 0.9, "centered": True, "differentiable": True},
                       "differentiable-flag"),
        OptimizerInput({"lr": torch.tensor(0.01), "momentum": 0.5}, "tensor-lr"),
    ],
    error_inputs=[
        ErrorOptimizerInput({"lr": -0.01}, ValueError, "Invalid learning rate", "negative lr", raised_by="reference"),
        ErrorOptimizerInput({"lr": torch.tensor([0.1, 0.2])}, *multi_element_lr_refusal(),
                            "lr tensor of two elements", raised_by="reference"),
        ErrorOptimizerInput({"lr": 0.01, "eps": -1e-8}, ValueError, "Invalid epsilon", "negative eps", raised_by="reference"),
        ErrorOptimizerInput({"lr": 0.01, "momentum": -0.5}, ValueError, "Invalid momentum",
                            "negative momentum", raised_by="reference"),
        ErrorOptimizerInput({"lr": 0.01, "weight_decay": -0.1}, ValueError, "Invalid weight_decay",
                            "negative weight_decay", raised_by="reference"),
        ErrorOptimizerInput({"lr": 0.01, "alpha": -0.1}, ValueError, "Invalid alpha", "negative alpha", raised_by="reference"),
    ],
)
