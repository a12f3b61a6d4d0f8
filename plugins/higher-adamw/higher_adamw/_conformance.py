"""The conformance table of ``higher-adamw``: option combinations and bad inputs."""

from __future__ import annotations

import torch

from higher_core.compat import torch_at_least

from higher_core.testing import ErrorOptimizerInput, OptimizerInfo, OptimizerInput, common_error_inputs
from higher_adamw._adamw import DifferentiableAdamW

ADAMW_INFO = OptimizerInfo(
    reference=torch.optim.AdamW,
    differentiable=DifferentiableAdamW,
    inputs=[
        OptimizerInput({"lr": 0.01}, "default"),
        OptimizerInput({"lr": 0.02, "betas": (0.8, 0.9), "eps": 1e-6}, "betas+eps"),
        OptimizerInput({"lr": 0.01, "weight_decay": 0.5}, "weight_decay"),
        OptimizerInput({"lr": 0.01, "weight_decay": 0.0}, "no-decay"),
        OptimizerInput({"lr": 0.01, "amsgrad": True}, "amsgrad"),
        OptimizerInput({"lr": 0.01, "maximize": True, "amsgrad": True}, "maximize+amsgrad"),
        OptimizerInput({"lr": torch.tensor(0.01, dtype=torch.float64)}, "tensor-lr"),
        OptimizerInput(
            # foreach=False: torch refuses tensor betas in its multi-tensor code, the default on CUDA
            {"lr": 0.01, "betas": (torch.tensor(0.8, dtype=torch.float64), torch.tensor(0.99, dtype=torch.float64)),
             "foreach": False},
            "tensor-betas",
            # before 2.6 torch's own AdamW hands a float64 beta1 to lerp with float32 moments, and fails
            skips={} if torch_at_least(2, 6) else {"float32": "torch < 2.6 needs tensor betas in the parameters' dtype"},
        ),
        OptimizerInput(
            {"lr": 0.01, "weight_decay": 0.2, "amsgrad": True, "betas": (0.85, 0.95), "eps": 1e-7},
            "groups-differ",
            second_group={"lr": 0.03, "betas": (0.5, 0.99), "weight_decay": 0.0, "eps": 1e-5},
        ),
        OptimizerInput({"lr": 0.01, "weight_decay": 0.1, "foreach": True}, "foreach"),
        OptimizerInput({"lr": 0.01, "weight_decay": 0.1, "fused": True}, "fused"),
        OptimizerInput({"lr": 0.01, "weight_decay": 0.1, "differentiable": True}, "differentiable-flag"),
    ],
    error_inputs=[
        *common_error_inputs(),
        # torch >= 2.6 refuses a float and a tensor beta together; 2.4-2.5 take them (and so do we there)
        *([ErrorOptimizerInput(
            {"lr": 0.01, "betas": (0.9, torch.tensor(0.999))}, ValueError, "betas must be either both floats",
            "mixed betas", raised_by="reference"
        )] if torch_at_least(2, 6) else []),
        ErrorOptimizerInput(
            {"lr": 0.01, "fused": True, "foreach": True}, RuntimeError, "cannot be `True` together", "fused+foreach", raised_by="reference"
        ),
        ErrorOptimizerInput(
            {"lr": 0.01, "fused": True, "differentiable": True}, RuntimeError, "does not support `differentiable`",
            "fused+differentiable", raised_by="reference"
        ),
    ],
)
