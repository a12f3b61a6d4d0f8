"""The conformance table of ``higher-lbfgs``: option combinations and bad inputs."""

from __future__ import annotations

import torch

from higher_core.compat import torch_at_least

from higher_core.testing import ErrorOptimizerInput, OptimizerInfo, OptimizerInput
from higher_lbfgs._lbfgs import DifferentiableLBFGS

LBFGS_INFO = OptimizerInfo(
    reference=torch.optim.LBFGS,
    differentiable=DifferentiableLBFGS,
    inputs=[
        OptimizerInput({}, "default"),
        OptimizerInput({"lr": 0.5, "max_iter": 4}, "lr+max_iter"),
        OptimizerInput({"lr": torch.tensor(0.5), "max_iter": 4}, "tensor-lr"),
        OptimizerInput({"lr": 0.8, "max_iter": 6, "max_eval": 4}, "max_eval"),
        OptimizerInput({"lr": 0.8, "max_iter": 4, "history_size": 2}, "history_size"),
        OptimizerInput({"lr": 0.8, "max_iter": 5, "tolerance_grad": 0.5}, "tolerance_grad"),
        OptimizerInput({"lr": 0.8, "max_iter": 5, "tolerance_change": 0.05}, "tolerance_change"),
        OptimizerInput({"max_iter": 5, "line_search_fn": "strong_wolfe"}, "strong_wolfe"),
        OptimizerInput({"lr": 0.05, "max_iter": 4, "line_search_fn": "strong_wolfe"}, "strong_wolfe-extrapolate"),
        OptimizerInput({"lr": 4.0, "max_iter": 4, "line_search_fn": "strong_wolfe"}, "strong_wolfe-bracket"),
        OptimizerInput({"lr": 100.0, "max_iter": 4, "line_search_fn": "strong_wolfe"}, "strong_wolfe-zoom"),
        OptimizerInput(
            {"lr": 3.0, "max_iter": 6, "max_eval": 7, "history_size": 3, "tolerance_grad": 1e-3,
             "tolerance_change": 1e-4, "line_search_fn": "strong_wolfe"},
            "strong_wolfe+all",
        ),
    ],
    error_inputs=[
        # torch >= 2.5 checks lr in LBFGS's constructor; 2.4 takes any lr (and so do we there)
        *([ErrorOptimizerInput({"lr": -1.0}, ValueError, "Invalid learning rate", "negative lr", raised_by="reference"),
           ErrorOptimizerInput({"lr": torch.tensor([1.0, 2.0])}, ValueError, "Tensor lr must be 1-element",
                               "tensor lr of 2 elements", raised_by="reference")] if torch_at_least(2, 5) else []),
        ErrorOptimizerInput({"line_search_fn": "armijo"}, ValueError, "line_search_fn must be None or 'strong_wolfe'",
                            "unknown line_search_fn", raised_by="differentiable"),
        ErrorOptimizerInput({"line_search_fn": "strong_wolfe", "max_eval": 0}, ValueError,
                            "max_eval must be at least 1", "strong_wolfe with max_eval=0", raised_by="differentiable"),
        ErrorOptimizerInput({"history_size": 0}, ValueError, "history_size must be at least 1", "history_size=0", raised_by="differentiable"),
    ],
    closure=True,
    single_group=True,
)
