"""The conformance table of ``higher-adagrad``: option combinations and bad inputs."""

from __future__ import annotations

import torch

from higher_core.testing import ErrorOptimizerInput, OptimizerInfo, OptimizerInput, multi_element_lr_refusal
from higher_adagrad._adagrad import DifferentiableAdagrad

ADAGRAD_INFO = OptimizerInfo(
    reference=torch.optim.Adagrad,
    differentiable=DifferentiableAdagrad,
    inputs=[
        OptimizerInput({"lr": 0.1}, "default"),
        OptimizerInput({"lr": 0.1, "lr_decay": 0.3}, "lr_decay"),
        OptimizerInput({"lr": 0.1, "weight_decay": 0.2}, "weight_decay"),
        OptimizerInput({"lr": 0.1, "initial_accumulator_value": 0.4}, "initial_accumulator_value"),
        OptimizerInput({"lr": 0.1, "eps": 1e-3}, "eps"),
        OptimizerInput({"lr": 0.1, "maximize": True}, "maximize"),
        OptimizerInput(
            {"lr": 0.1, "lr_decay": 0.2, "weight_decay": 0.1, "initial_accumulator_value": 0.3,
             "eps": 1e-4, "maximize": True},
            "groups-differ",
            # torch fills every accumulator from the constructor's initial_accumulator_value,
            # so the second group's own value must be ignored, as torch ignores it
            second_group={"lr": 0.05, "lr_decay": 0.5, "weight_decay": 0.0,
                          "initial_accumulator_value": 2.0, "eps": 1e-6},
        ),
        OptimizerInput({"lr": 0.1, "lr_decay": 0.1, "foreach": True}, "foreach"),
        OptimizerInput({"lr": 0.1, "lr_decay": 0.1, "fused": True}, "fused"),
        OptimizerInput({"lr": 0.1, "differentiable": True}, "differentiable-flag"),
        OptimizerInput({"lr": torch.tensor(0.1), "lr_decay": 0.1}, "tensor-lr"),
    ],
    error_inputs=[
        ErrorOptimizerInput({"lr": -0.1}, ValueError, "Invalid learning rate", "negative lr", raised_by="reference"),
        ErrorOptimizerInput({"lr": torch.tensor([0.1, 0.2])}, *multi_element_lr_refusal(),
                            "lr tensor of two elements", raised_by="reference"),
        ErrorOptimizerInput({"lr": 0.1, "lr_decay": -0.1}, ValueError, "Invalid lr_decay", "negative lr_decay", raised_by="reference"),
        ErrorOptimizerInput({"lr": 0.1, "weight_decay": -0.1}, ValueError, "Invalid weight_decay",
                            "negative weight_decay", raised_by="reference"),
        ErrorOptimizerInput({"lr": 0.1, "initial_accumulator_value": -0.1}, ValueError,
                            "Invalid initial_accumulator_value", "negative initial_accumulator_value", raised_by="reference"),
        ErrorOptimizerInput({"lr": 0.1, "eps": -1e-10}, ValueError, "Invalid epsilon", "negative eps", raised_by="reference"),
        ErrorOptimizerInput({"lr": 0.1, "fused": True, "foreach": True}, RuntimeError,
                            "`fused` and `foreach` cannot be `True` together", "fused+foreach", raised_by="reference"),
        ErrorOptimizerInput({"lr": 0.1, "fused": True, "differentiable": True}, RuntimeError,
                            "`fused` does not support `differentiable`", "fused+differentiable", raised_by="reference"),
    ],
)
