"""The conformance table of ``higher-muon``: option combinations and bad inputs."""

from __future__ import annotations

import torch

from higher_core.testing import ErrorOptimizerInput, OptimizerInfo, OptimizerInput
from higher_muon._muon import DifferentiableMuon

_BFLOAT16 = (
    "torch.optim.Muon orthogonalises in bfloat16, so the update is piecewise constant at "
    "finite-difference scale; tests/test_muon.py checks the derivatives with ns_dtype=None"
)

MUON_INFO = OptimizerInfo(
    reference=torch.optim.Muon,
    differentiable=DifferentiableMuon,
    inputs=[
        OptimizerInput({"lr": 0.02}, "default"),
        OptimizerInput({"lr": 0.02, "nesterov": False}, "no-nesterov"),
        OptimizerInput({"lr": torch.tensor(0.02)}, "tensor-lr"),
        OptimizerInput({"lr": 0.02, "momentum": 0.5}, "momentum"),
        OptimizerInput({"lr": 0.02, "momentum": 0.0}, "no-momentum"),
        OptimizerInput({"lr": 0.02, "weight_decay": 0.0}, "no-weight_decay"),
        OptimizerInput({"lr": 0.02, "weight_decay": 0.5}, "weight_decay"),
        OptimizerInput({"lr": 0.02, "ns_coefficients": (3.0, -3.2, 1.2)}, "ns_coefficients"),
        OptimizerInput({"lr": 0.02, "ns_steps": 2}, "ns_steps"),
        OptimizerInput({"lr": 0.02, "ns_steps": 0}, "no-ns_steps"),
        OptimizerInput({"lr": 0.02, "eps": 10.0}, "eps-clamps"),
        OptimizerInput({"lr": 0.02, "adjust_lr_fn": "original"}, "adjust-original"),
        OptimizerInput({"lr": 0.02, "adjust_lr_fn": "match_rms_adamw"}, "adjust-match_rms_adamw"),
        OptimizerInput(
            {"lr": 0.03, "weight_decay": 0.2, "momentum": 0.9, "nesterov": True, "adjust_lr_fn": "match_rms_adamw"},
            "groups-differ",
            second_group={
                "lr": 0.01, "weight_decay": 0.0, "momentum": 0.6, "nesterov": False,
                "ns_coefficients": (2.0, -1.5, 0.5), "eps": 1e-3, "ns_steps": 3, "adjust_lr_fn": "original",
            },
        ),
    ],
    error_inputs=[
        ErrorOptimizerInput({"lr": -0.01}, ValueError, "Learning rate should be >= 0", "negative lr", raised_by="reference"),
        ErrorOptimizerInput({"momentum": -0.1}, ValueError, "momentum should be >= 0", "negative momentum", raised_by="reference"),
        ErrorOptimizerInput({"weight_decay": -0.1}, ValueError, "weight decay should be >= 0", "negative decay", raised_by="reference"),
        ErrorOptimizerInput({"adjust_lr_fn": "sqrt"}, ValueError, "Adjust learning rate function sqrt", "bad adjust_lr_fn", raised_by="reference"),
        ErrorOptimizerInput({"ns_steps": 100}, ValueError, "ns_steps must be less than 100", "ns_steps=100", raised_by="differentiable"),
        ErrorOptimizerInput({"ns_coefficients": (3.0, -3.0)}, ValueError, "ns_coefficients must be exactly 3",
                            "2 ns_coefficients", raised_by="differentiable"),
    ],
    shapes=((3, 2), (2, 3), (2, 2)),
    skips={
        "gradcheck": _BFLOAT16,
        "hypergradients": _BFLOAT16,
        "complex": "torch.optim.Muon refuses complex parameters (and so does DifferentiableMuon)",
    },
)
