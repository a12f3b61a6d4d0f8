"""The conformance table of ``higher-prodigy``: option combinations and bad inputs."""

from __future__ import annotations

import prodigyopt

from higher_core.testing import ErrorOptimizerInput, OptimizerInfo, OptimizerInput
from higher_prodigy._prodigy import DifferentiableProdigy

# prodigyopt accepts different lr values across param groups only for lr=0, so every row
# names its second group (the kit's default halves lr there). The second group's betas,
# beta3, d_coef, growth_rate, decouple and use_bias_correction are ignored by prodigyopt
# (it reads them from the first group); eps, weight_decay, d0, safeguard_warmup, slice_p
# and lr=0 are its per-group options.
_D0 = 0.05  # large enough that d grows and the parameters move within 10 steps
_SKIPS = {"complex": "prodigyopt.Prodigy fails on complex parameters (TypeError comparing complex "
                     "step sizes); DifferentiableProdigy refuses them"}

PRODIGY_INFO = OptimizerInfo(
    reference=prodigyopt.Prodigy,
    differentiable=DifferentiableProdigy,
    inputs=[
        # d0's default (1e-6) moves the weights by ~1e-6 per step: finite differences with
        # gradcheck's eps=1e-6 cannot resolve second derivatives then (tests/test_prodigy.py
        # checks the full default configuration's parity and gradients from scratch)
        OptimizerInput({"d0": 1e-3}, "d0=1e-3", second_group={}),
        OptimizerInput({"lr": 0.5, "d0": _D0, "betas": (0.8, 0.95), "beta3": 0.9, "eps": 1e-6},
                       "betas+beta3+eps", second_group={}),
        OptimizerInput({"d0": _D0, "weight_decay": 0.1, "decouple": False}, "coupled_decay", second_group={}),
        OptimizerInput({"d0": _D0, "weight_decay": 0.1, "use_bias_correction": True},
                       "decoupled_decay+bias_correction", second_group={}),
        OptimizerInput({"d0": _D0, "growth_rate": 1.05, "d_coef": 2.0, "safeguard_warmup": True},
                       "growth_rate+d_coef+safeguard_warmup", second_group={}),
        OptimizerInput({"d0": _D0, "slice_p": 2, "fsdp_in_use": False}, "slice_p", second_group={}),
        OptimizerInput({"d0": _D0, "weight_decay": 0.05},
                       "groups-differ",
                       second_group={"weight_decay": 0.0, "eps": 1e-4, "d0": 0.02,
                                     "safeguard_warmup": True, "slice_p": 3}),
        OptimizerInput({"d0": _D0, "weight_decay": 0.05}, "second-group-lr=0", second_group={"lr": 0.0}),
        # beta1=0 switches prodigyopt to another update (no exp_avg; the gradient scaled by the
        # new d), so the update jumps at beta1=0: no hypergradient in beta1 in these rows
        OptimizerInput({"d0": _D0, "betas": (0.0, 0.99)}, "beta1=0", second_group={},
                       hyperparameters=("lr", "eps", "weight_decay", "d_coef")),
        OptimizerInput({"d0": _D0, "betas": (0.0, 0.9), "weight_decay": 0.1, "decouple": False, "slice_p": 2},
                       "beta1=0+coupled_decay+slice_p", second_group={"eps": 1e-5},
                       hyperparameters=("lr", "eps", "weight_decay", "d_coef")),
    ],
    error_inputs=[
        ErrorOptimizerInput({"d0": 0.0}, ValueError, "Invalid d0 value", "d0=0", raised_by="reference"),
        ErrorOptimizerInput({"lr": -1.0}, ValueError, "Invalid learning rate", "negative lr", raised_by="reference"),
        ErrorOptimizerInput({"eps": 0.0}, ValueError, "Invalid epsilon value", "eps=0", raised_by="reference"),
        ErrorOptimizerInput({"betas": (1.0, 0.999)}, ValueError, "Invalid beta parameter at index 0", "beta1=1", raised_by="reference"),
        ErrorOptimizerInput({"betas": (0.9, 1.0)}, ValueError, "Invalid beta parameter at index 1", "beta2=1", raised_by="reference"),
        ErrorOptimizerInput({"fsdp_in_use": True}, ValueError, "fsdp_in_use=True is not supported", "fsdp_in_use", raised_by="differentiable"),
        ErrorOptimizerInput({"slice_p": 0}, ValueError, "slice_p must be a positive integer", "slice_p=0", raised_by="differentiable"),
    ],
    # beta3 (None by default) and growth_rate (inf by default) are checked in tests/test_prodigy.py
    hyperparameters=("lr", "betas", "eps", "weight_decay", "d_coef"),
    gradcheck_warmup=3,  # from the 2nd step on, d moves: the unrolled steps differentiate through it
    skips=_SKIPS,
)
