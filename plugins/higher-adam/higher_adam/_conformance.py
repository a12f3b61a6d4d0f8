"""The conformance table of ``higher-adam``: option combinations and bad inputs."""

from __future__ import annotations

import torch

from higher_core.testing import ErrorOptimizerInput, OptimizerInfo, OptimizerInput, common_error_inputs
from higher_adam._adam import DifferentiableAdam
from higher_core.compat import accepts_option

DECOUPLED = accepts_option(torch.optim.Adam, "decoupled_weight_decay")

ADAM_INFO = OptimizerInfo(
    reference=torch.optim.Adam,
    differentiable=DifferentiableAdam,
    inputs=[
        OptimizerInput({"lr": 0.01}, "default"),
        OptimizerInput({"lr": 0.02, "betas": (0.8, 0.9), "eps": 1e-6}, "betas+eps"),
        OptimizerInput({"lr": 0.01, "amsgrad": True}, "amsgrad"),
        OptimizerInput({"lr": 0.01, "weight_decay": 0.1}, "weight_decay"),
        # torch >= 2.7; before, Adam refuses the option (the bad input below)
        *([OptimizerInput({"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True}, "decoupled")]
          if DECOUPLED else []),
        OptimizerInput({"lr": 0.01, "maximize": True, "amsgrad": True}, "maximize+amsgrad"),
        OptimizerInput(
            {"lr": 0.01, "weight_decay": 0.05, "amsgrad": True},
            "groups-differ",
            second_group={"lr": 0.03, "betas": (0.5, 0.99), "weight_decay": 0.0},
        ),
        OptimizerInput({"lr": 0.01, "foreach": True}, "foreach"),
        OptimizerInput({"lr": 0.01, "fused": True}, "fused"),
        OptimizerInput({"lr": 0.01, "differentiable": True}, "differentiable-flag"),
    ],
    error_inputs=[
        *common_error_inputs(),
        *([] if DECOUPLED else [ErrorOptimizerInput(
            {"lr": 0.01, "decoupled_weight_decay": True}, TypeError, "decoupled_weight_decay",
            "decoupled before torch 2.7", raised_by="reference")]),
    ],
)
