"""Out-of-place Prodigy, with every option of the installed ``prodigyopt.Prodigy``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from higher_core.functional import add_scaled_exact, addcdiv, as_float64, is_zero, safe_sqrt
from higher_core.optim import DifferentiableOptimizer, State
from higher_prodigy._scalars import (
    Scalar,
    addcmul_exact,
    first_max,
    first_min,
    is_inf,
    sqrt,
    value,
)

__all__ = ["RUNNING_KEYS", "DifferentiableProdigy"]

#: what ``prodigyopt`` keeps in its param groups and rewrites at every step
RUNNING_KEYS = ("d", "d_max", "d_numerator", "d_denom", "d_hat", "k")


class DifferentiableProdigy(DifferentiableOptimizer):
    r"""A differentiable version of ``prodigyopt.Prodigy`` (Mishchenko & Defazio 2023), with its numerics.

    .. math::
        r_t &= \beta_3 r_{t-1} + \tfrac{d_{t-1}}{d_0}\,\eta_t\,\langle g_t, x_0 - x_{t-1}\rangle,
        \qquad s_t = \beta_3 s_{t-1} + \tfrac{d_{t-1}}{d_0}\,\eta_t\, g_t \\
        m_t &= \beta_1 m_{t-1} + d_{t-1}(1-\beta_1) g_t, \qquad
        v_t = \beta_2 v_{t-1} + d_{t-1}^2(1-\beta_2) g_t^2 \\
        \hat d_t &= c\, r_t / \lVert s_t\rVert_1, \qquad
        d_t = \min\big(\max(d_{t-1}, \hat d_t, \dots),\; \rho\, d_{t-1}\big) \\
        x_t &= x_{t-1} - \eta_t\, m_t / (\sqrt{v_t} + d_t\epsilon)

    with :math:`\eta_t = d_{t-1}\,\gamma` (times Adam's bias correction with
    ``use_bias_correction=True``), :math:`x_0` the starting weights, :math:`c`
    ``d_coef`` and :math:`\rho` ``growth_rate``; ``safeguard_warmup``, ``slice_p``,
    ``decouple``, a ``beta1`` of 0 and param groups with ``lr=0`` follow
    ``prodigyopt`` exactly (its ``step`` operation for operation).

    What differs from ``prodigyopt``: the step-size estimate :math:`d` and its
    running numerator and denominator stay in the graph (``prodigyopt`` takes
    them with ``.item()``), and so does :math:`x_0` (it detaches its copy), so
    meta-gradients see how the step size depends on the starting weights and
    on every hyperparameter. They are kept per optimizer in :attr:`group_state`
    (``prodigyopt`` keeps them in its param groups; :meth:`export_state` writes
    them back there) and may not be overridden. The square root at exactly zero
    has derivative zero. :math:`x_0` of an all-zero parameter is kept at full
    size (``prodigyopt`` stores a 0-d zero to save memory) so that its gradient
    reaches the starting weights. ``fsdp_in_use=True`` (sharded parameters,
    reduced across processes) and complex parameters (which ``prodigyopt``
    fails on) are refused.

    Example:
        >>> import torch, higher_core, prodigyopt
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = prodigyopt.Prodigy(model.parameters(), lr=1.0, d0=1e-3)
        >>> with higher_core.innerloop_ctx(model, opt) as (fmodel, diffopt):
        ...     for _ in range(3):
        ...         _ = diffopt.step(fmodel(torch.randn(4, 3)).pow(2).mean())
        >>> diffopt.group_state[0]["k"]
        3
    """

    tensor_hyperparameters = ("lr", "betas", "beta3", "eps", "weight_decay", "d_coef", "growth_rate")
    scope = "global"

    def __init__(self, other: torch.optim.Optimizer, reference_params: Iterable[torch.Tensor],
                 *args: Any, **kwargs: Any) -> None:
        reference = list(reference_params)
        if any(hasattr(p, "_fsdp_flattened") for p in reference):
            raise ValueError(_FSDP_REFUSAL)
        if any(p.is_complex() for p in reference):
            raise ValueError(_COMPLEX_REFUSAL)
        _refuse_running_overrides(kwargs.get("override", args[2] if len(args) > 2 else None))
        super().__init__(other, reference, *args, **kwargs)

    def import_group_state(self, group: dict[str, Any]) -> State:
        """prodigyopt's running ``d``, ``d_max``, ``d_numerator``, ``k`` (and ``d_denom``, ``d_hat``
        after a step), taken out of the param group; numbers, or 0-d tensors in the graph after a step."""
        return {key: group.pop(key) for key in RUNNING_KEYS if key in group}

    # -- options -------------------------------------------------------------------------
    def check_param_groups(self, param_groups: Sequence[Mapping[str, Any]]) -> None:
        lrs = [value(group["lr"]) for group in param_groups]
        for group in param_groups:
            if group.get("fsdp_in_use"):
                raise ValueError(_FSDP_REFUSAL)
            slice_p = group["slice_p"]
            if isinstance(slice_p, bool) or not isinstance(slice_p, int) or slice_p < 1:
                raise ValueError(
                    f"slice_p must be a positive integer, got {slice_p!r} (prodigyopt slices every "
                    "slice_p-th entry of each tensor and fails at its first step otherwise)"
                )
        if any(lr not in (max(lrs), 0.0) for lr in lrs):
            raise ValueError(
                f"lr: param groups have the learning rates {lrs}; prodigyopt.Prodigy supports different "
                "lr values in different param groups only for values of 0 (it raises at its first step)"
            )

    # -- state ---------------------------------------------------------------------------
    def init_state(self, param: torch.Tensor, group: Mapping[str, Any]) -> State:
        """The state before a parameter's first step; ``group['betas'][0]`` must be the first group's."""
        sliced = param.flatten()[:: group["slice_p"]]
        state: State = {"step": 0, "s": torch.zeros_like(sliced.detach()), "p0": sliced.clone()}
        if value(group["betas"][0]) > 0:
            state["exp_avg"] = torch.zeros_like(param.detach())
        state["exp_avg_sq"] = torch.zeros_like(param.detach())
        return state

    def export_param_state(self, state: Mapping[str, Any], param: torch.Tensor) -> dict[str, Any]:
        exported = super().export_param_state(state, param)
        exported["step"] = int(state["step"])  # prodigyopt counts with a Python int
        return exported

    # -- the step ------------------------------------------------------------------------
    def update_groups(self, groups: list[dict[str, Any]], params: list[torch.Tensor],
                      grads: list[torch.Tensor | None]) -> list[torch.Tensor]:
        """``prodigyopt.Prodigy.step``, out of place: statistics over every group, then the update.

        Prodigy's step size is global (one estimate :math:`d` from every param
        group), so one step updates all groups together.
        """
        if any(p.is_complex() for p in params):
            raise ValueError(_COMPLEX_REFUSAL)
        first, running = groups[0], self.group_state[0]
        beta1, beta2 = first["betas"]
        beta3 = first["beta3"] if first["beta3"] is not None else sqrt(beta2)
        k, d, d_max = running["k"], running["d"], running["d_max"]
        lr = groups[0]["lr"]
        for group in groups[1:]:
            lr = first_max(lr, group["lr"])
        bias_correction: Scalar = 1
        if first["use_bias_correction"]:
            bias_correction = ((1 - beta2 ** (k + 1)) ** 0.5) / (1 - beta1 ** (k + 1))
        dlr = d * lr * bias_correction
        decouple = first["decouple"]
        d_numerator = running["d_numerator"] * beta3
        delta_numerator: Scalar = 0.0
        d_denom: Scalar = 0.0

        # pass 1: initialise state, moving averages with the current d, the statistics of d
        active = [[i for i in group["params"] if grads[i] is not None] for group in groups]
        effective: dict[int, torch.Tensor] = {}
        states: dict[int, State] = {}
        for number, (group, indices) in enumerate(zip(groups, active)):
            if indices:
                self.check_devices(number, group, params, indices)
            decay, group_lr, d0 = group["weight_decay"], group["lr"], group["d0"]
            slice_p = group["slice_p"]
            for i in indices:
                p, grad = params[i], grads[i]
                assert grad is not None
                if not is_zero(decay) and not decouple:
                    grad = add_scaled_exact(grad, p, decay)
                effective[i] = grad
                state = dict(self.param_state[i]) if self.param_state.get(i) else self.init_state(
                    p, {"slice_p": slice_p, "betas": first["betas"]})
                if value(group_lr) > 0.0:
                    sliced_grad = grad.flatten()[::slice_p]
                    dot = torch.dot(sliced_grad, state["p0"] - p.flatten()[::slice_p])
                    delta_numerator = delta_numerator + (d / d0) * dlr * as_float64(dot)
                    if value(beta1) > 0:
                        state["exp_avg"] = add_scaled_exact(state["exp_avg"] * beta1, grad, d * (1 - beta1))
                    state["exp_avg_sq"] = addcmul_exact(state["exp_avg_sq"] * beta2, grad, grad, d * d * (1 - beta2))
                    alpha = (d / d0) * d if group["safeguard_warmup"] else (d / d0) * dlr
                    state["s"] = add_scaled_exact(state["s"] * beta3, sliced_grad, alpha)
                    d_denom = d_denom + as_float64(state["s"].abs().sum())
                states[i] = state

        new_params = list(params)
        self.param_state.update(states)
        if value(d_denom) == 0:  # no progress yet: prodigyopt returns before the update
            return new_params

        d_numerator = d_numerator + delta_numerator
        d_hat = first["d_coef"] * d_numerator / d_denom
        if value(d) == value(groups[-1]["d0"]):  # prodigyopt compares with the last group's d0
            d = first_max(d, d_hat)
        d_max = first_max(d_max, d_hat)
        growth_rate = first["growth_rate"]
        d = d_max if is_inf(growth_rate) and value(growth_rate) > 0 else first_min(d_max, d * growth_rate)

        # pass 2: the update with the new d, in every group
        for index, (group, indices) in enumerate(zip(groups, active)):
            self.group_state[index] = {
                "d": d, "d_max": d_max, "d_numerator": d_numerator, "d_denom": d_denom,
                "d_hat": d_hat, "k": self.group_state[index]["k"] + 1,
            }
            decay, eps = group["weight_decay"], group["eps"]
            for i in indices:
                p, state = params[i], states[i]
                state["step"] += 1
                denom = safe_sqrt(state["exp_avg_sq"]) + d * eps
                if not is_zero(decay) and decouple:
                    p = add_scaled_exact(p, p, -decay * dlr)
                if value(beta1) > 0:
                    p = addcdiv(p, state["exp_avg"], denom, -dlr)
                else:
                    p = addcdiv(p, effective[i], denom, -dlr * d)
                new_params[i] = p
        return new_params


_FSDP_REFUSAL = (
    "fsdp_in_use=True is not supported: prodigyopt then sums its statistics across processes "
    "with torch.distributed.all_reduce on CUDA, which cannot be unrolled differentiably here; "
    "use unsharded parameters and fsdp_in_use=False"
)
_COMPLEX_REFUSAL = (
    "complex parameters are not supported: prodigyopt.Prodigy's step-size estimate is real and "
    "it fails on complex parameters (TypeError comparing complex numbers)"
)


def _refuse_running_overrides(override: Mapping[str, Any] | None) -> None:
    running = sorted(set(override or ()) & set(RUNNING_KEYS))
    if running:
        raise ValueError(
            f"override {running}: these are Prodigy's running step-size statistics, updated at "
            "every step, not hyperparameters; set d0 (the initial estimate) on the optimizer instead"
        )
