"""The conformance table of ``higher-rprop``: option combinations and bad inputs."""

from __future__ import annotations

import torch

from higher_core.testing import ErrorOptimizerInput, OptimizerInfo, OptimizerInput, multi_element_lr_refusal
from higher_rprop._rprop import DifferentiableRprop

RPROP_INFO = OptimizerInfo(
    reference=torch.optim.Rprop,
    differentiable=DifferentiableRprop,
    inputs=[
        OptimizerInput({"lr": 0.01}, "default"),
        OptimizerInput({"lr": 0.05, "etas": (0.3, 1.5)}, "etas"),
        # the clamp is active from the second step on: 0.01 * 1.2 > 0.011, 0.01 * 0.5 < 0.006
        OptimizerInput({"lr": 0.01, "step_sizes": (0.006, 0.011)}, "step_sizes"),
        OptimizerInput({"lr": 0.01, "maximize": True}, "maximize"),
        OptimizerInput(
            {"lr": 0.02, "etas": (0.4, 1.3), "step_sizes": (1e-3, 0.03), "maximize": True},
            "groups-differ",
            second_group={"lr": 0.005, "etas": (0.6, 1.1), "step_sizes": (0.004, 0.006)},
        ),
        OptimizerInput({"lr": 0.01, "etas": (0.4, 1.3), "foreach": True}, "foreach"),
        OptimizerInput({"lr": 0.01, "differentiable": True}, "differentiable-flag"),
        OptimizerInput({"lr": torch.tensor(0.01)}, "tensor-lr"),
    ],
    error_inputs=[
        ErrorOptimizerInput({"lr": -0.01}, ValueError, "Invalid learning rate", "negative lr", raised_by="reference"),
        ErrorOptimizerInput({"lr": torch.tensor([0.1, 0.2])}, *multi_element_lr_refusal(),
                            "lr tensor of two elements", raised_by="reference"),
        ErrorOptimizerInput({"lr": 0.01, "etas": (0.0, 1.2)}, ValueError, "Invalid eta values", "etaminus=0", raised_by="reference"),
        ErrorOptimizerInput({"lr": 0.01, "etas": (1.0, 1.2)}, ValueError, "Invalid eta values", "etaminus=1", raised_by="reference"),
        ErrorOptimizerInput({"lr": 0.01, "etas": (0.5, 1.0)}, ValueError, "Invalid eta values", "etaplus=1", raised_by="reference"),
    ],
)
