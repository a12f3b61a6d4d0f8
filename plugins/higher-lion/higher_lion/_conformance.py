"""The conformance table of ``higher-lion``: option combinations and bad inputs."""

from __future__ import annotations

import lion_pytorch

from higher_core.testing import ErrorOptimizerInput, OptimizerInfo, OptimizerInput
from higher_lion._lion import DifferentiableLion

# lion_pytorch validates with bare ``assert`` statements: an AssertionError with no message.
# use_triton=True cannot be a row here: without triton installed lion_pytorch calls exit()
# while constructing; tests/test_lion.py checks its refusal with a stand-in kernel module.
LION_INFO = OptimizerInfo(
    reference=lion_pytorch.Lion,
    differentiable=DifferentiableLion,
    inputs=[
        OptimizerInput({"lr": 0.01}, "default"),
        OptimizerInput({"lr": 0.02, "betas": (0.8, 0.95)}, "betas"),
        OptimizerInput({"lr": 0.01, "weight_decay": 0.5}, "weight_decay"),
        OptimizerInput({"lr": 0.01, "weight_decay": 0.005, "decoupled_weight_decay": True}, "decoupled"),
        OptimizerInput(
            {"lr": 0.01, "weight_decay": 0.002, "decoupled_weight_decay": True, "use_triton": False},
            "groups-differ",
            second_group={"lr": 0.03, "betas": (0.5, 0.9), "weight_decay": 0.0},
        ),
    ],
    error_inputs=[
        ErrorOptimizerInput({"lr": 0.0}, AssertionError, "^$", "lr=0", raised_by="reference"),
        ErrorOptimizerInput({"lr": 0.01, "betas": (1.5, 0.99)}, AssertionError, "^$", "beta1>1", raised_by="reference"),
        ErrorOptimizerInput({"lr": 0.01, "betas": (0.9, -0.1)}, AssertionError, "^$", "beta2<0", raised_by="reference"),
    ],
)
