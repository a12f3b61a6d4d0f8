"""The conformance table of ``higher-adadelta``: option combinations and bad inputs."""

from __future__ import annotations

import torch

from higher_core.testing import ErrorOptimizerInput, OptimizerInfo, OptimizerInput, multi_element_lr_refusal
from higher_adadelta._adadelta import DifferentiableAdadelta

# eps sits under a square root whose other term starts at 0 (sqrt(acc_delta + eps) with
# acc_delta = 0 at the first step), so the loss is as curved in eps as sqrt is at eps: the
# suite's gradcheck step (1e-6) is too coarse at torch's default eps=1e-6. Rows therefore use
# eps >= 1e-4; tests/test_adadelta.py runs the default eps through the other checks and a
# finer-step gradcheck w.r.t. eps.
EPS = 1e-4

ADADELTA_INFO = OptimizerInfo(
    reference=torch.optim.Adadelta,
    differentiable=DifferentiableAdadelta,
    inputs=[
        OptimizerInput({"lr": 1.0, "eps": EPS}, "lr"),
        OptimizerInput({"lr": 0.5, "rho": 0.5, "eps": EPS}, "rho"),
        OptimizerInput({"lr": 1.0, "eps": 1e-3}, "eps"),
        OptimizerInput({"lr": 1.0, "weight_decay": 0.2, "eps": EPS}, "weight_decay"),
        OptimizerInput({"lr": 1.0, "maximize": True, "eps": EPS}, "maximize"),
        OptimizerInput(
            {"lr": 0.8, "rho": 0.7, "eps": 1e-4, "weight_decay": 0.1, "maximize": True},
            "groups-differ",
            second_group={"lr": 2.0, "rho": 0.95, "eps": 1e-5, "weight_decay": 0.0},
        ),
        OptimizerInput({"lr": 1.0, "rho": 0.8, "eps": EPS, "foreach": True}, "foreach"),
        OptimizerInput({"lr": 1.0, "eps": EPS, "differentiable": True}, "differentiable-flag"),
        OptimizerInput({"lr": torch.tensor(0.7), "eps": EPS}, "tensor-lr"),
    ],
    error_inputs=[
        ErrorOptimizerInput({"lr": -1.0}, ValueError, "Invalid learning rate", "negative lr", raised_by="reference"),
        ErrorOptimizerInput({"lr": torch.tensor([0.1, 0.2])}, *multi_element_lr_refusal(),
                            "lr tensor of two elements", raised_by="reference"),
        ErrorOptimizerInput({"lr": 1.0, "rho": 1.5}, ValueError, "Invalid rho value", "rho>1", raised_by="reference"),
        ErrorOptimizerInput({"lr": 1.0, "rho": -0.1}, ValueError, "Invalid rho value", "rho<0", raised_by="reference"),
        ErrorOptimizerInput({"lr": 1.0, "eps": -1e-6}, ValueError, "Invalid epsilon", "negative eps", raised_by="reference"),
        ErrorOptimizerInput({"lr": 1.0, "weight_decay": -0.1}, ValueError, "Invalid weight_decay",
                            "negative weight_decay", raised_by="reference"),
    ],
)
