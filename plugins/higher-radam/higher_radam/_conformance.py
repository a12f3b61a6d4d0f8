r"""The conformance table of ``higher-radam``: option combinations and bad inputs.

With ``beta2 >= 0.8`` the 10 parity steps take both branches of the
rectification (:math:`\rho_t > 5` from step 6 or 7 on); ``beta2 = 0.6`` has
:math:`\rho_\infty = 4` and is never rectified.
"""

from __future__ import annotations

import torch

from higher_core.testing import ErrorOptimizerInput, OptimizerInfo, OptimizerInput, common_error_inputs
from higher_radam._radam import DifferentiableRAdam

RADAM_INFO = OptimizerInfo(
    reference=torch.optim.RAdam,
    differentiable=DifferentiableRAdam,
    gradcheck_warmup=5,  # the gradient checks then unroll steps 6-7, which are rectified
    inputs=[
        OptimizerInput({"lr": 0.01}, "default"),
        OptimizerInput({"lr": 0.02, "betas": (0.8, 0.9), "eps": 1e-6}, "betas+eps"),
        OptimizerInput({"lr": 0.01, "betas": (0.9, 0.6)}, "never-rectified"),
        OptimizerInput({"lr": 0.01, "weight_decay": 0.1}, "weight_decay"),
        OptimizerInput({"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True}, "decoupled"),
        OptimizerInput({"lr": 0.01, "maximize": True, "weight_decay": 0.05}, "maximize+weight_decay"),
        OptimizerInput({"lr": torch.tensor(0.01, dtype=torch.float64), "weight_decay": 0.1,
                        "decoupled_weight_decay": True}, "tensor-lr+decoupled"),
        OptimizerInput(
            {"lr": 0.01, "betas": (0.85, 0.99), "eps": 1e-7, "weight_decay": 0.05,
             "decoupled_weight_decay": True},
            "groups-differ",
            second_group={"lr": 0.03, "betas": (0.5, 0.6), "eps": 1e-5, "weight_decay": 0.2,
                          "decoupled_weight_decay": False},
        ),
        OptimizerInput({"lr": 0.01, "weight_decay": 0.1, "foreach": True}, "foreach"),
        OptimizerInput({"lr": 0.01, "weight_decay": 0.1, "differentiable": True}, "differentiable-flag"),
    ],
    error_inputs=[
        *common_error_inputs(),
    ],
)
