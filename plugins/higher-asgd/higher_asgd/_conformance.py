"""The conformance table of ``higher-asgd``: option combinations and bad inputs."""

from __future__ import annotations

import torch

from higher_core.testing import ErrorOptimizerInput, OptimizerInfo, OptimizerInput, multi_element_lr_refusal
from higher_asgd._asgd import DifferentiableASGD

ASGD_INFO = OptimizerInfo(
    reference=torch.optim.ASGD,
    differentiable=DifferentiableASGD,
    inputs=[
        OptimizerInput({"lr": 0.05}, "default"),
        OptimizerInput({"lr": 0.05, "lambd": 0.5}, "lambd"),
        OptimizerInput({"lr": 0.05, "lambd": 0.2, "alpha": 0.5}, "alpha"),
        # averaging starts within the 10 parity steps (mu < 1 from step 5 on)
        OptimizerInput({"lr": 0.05, "t0": 3.0}, "t0"),
        OptimizerInput({"lr": 0.05, "weight_decay": 0.2}, "weight_decay"),
        OptimizerInput({"lr": 0.05, "maximize": True}, "maximize"),
        OptimizerInput(
            {"lr": 0.05, "lambd": 0.3, "alpha": 0.6, "t0": 2.0, "weight_decay": 0.1, "maximize": True},
            "groups-differ",
            second_group={"lr": 0.02, "lambd": 0.05, "alpha": 0.9, "t0": 5.5, "weight_decay": 0.0},
        ),
        # torch's foreach path computes eta in float32 tensor arithmetic (its single-tensor path
        # in double, then rounds), so with lambd != 0 torch's two paths differ by ~1e-8; with
        # lambd=0, eta is lr on both (tests/test_asgd.py compares the paths with lambd != 0)
        OptimizerInput({"lr": 0.05, "lambd": 0.0, "t0": 2.0, "weight_decay": 0.1, "foreach": True}, "foreach"),
        OptimizerInput({"lr": 0.05, "lambd": 0.3, "t0": 2.0, "differentiable": True}, "differentiable-flag"),
        # torch keeps eta in float32: a float32 lr tensor rounds like a number does
        OptimizerInput({"lr": torch.tensor(0.05), "lambd": 0.3, "t0": 2.0}, "tensor-lr"),
    ],
    error_inputs=[
        ErrorOptimizerInput({"lr": -0.05}, ValueError, "Invalid learning rate", "negative lr", raised_by="reference"),
        ErrorOptimizerInput({"lr": torch.tensor([0.1, 0.2])}, *multi_element_lr_refusal(),
                            "lr tensor of two elements", raised_by="reference"),
        ErrorOptimizerInput({"lr": 0.05, "weight_decay": -0.1}, ValueError, "Invalid weight_decay",
                            "negative weight_decay", raised_by="reference"),
    ],
)
