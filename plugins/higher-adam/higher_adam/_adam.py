"""Out-of-place Adam, with every option of the installed ``torch.optim.Adam``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from higher_core.functional import (
    addcdiv,
    addcmul,
    decayed,
    foreach_div,
    foreach_mul,
    foreach_safe_sqrt,
    foreach_scalar,
    is_zero,
    number,
    safe_sqrt,
)
from higher_core.compat import torch_at_least
from higher_core.optim import DifferentiableOptimizer, State

#: torch >= 2.6 casts a tensor ``beta1`` to the parameter's dtype before ``lerp`` (earlier: as given)
BETA1_IN_PARAM_DTYPE = torch_at_least(2, 6)


def _beta1_like(beta1: Any, param: torch.Tensor) -> Any:
    """``beta1`` as the installed torch hands it to ``lerp``: a tensor in ``param``'s dtype from torch 2.6."""
    if BETA1_IN_PARAM_DTYPE and isinstance(beta1, torch.Tensor) and beta1.dtype != param.dtype:
        return beta1.to(param.dtype)
    return beta1



class DifferentiableAdam(DifferentiableOptimizer):
    r"""A differentiable version of ``torch.optim.Adam``, with the installed torch's numerics.

    .. math::
        g_t &= \pm\nabla_\theta f(\theta_{t-1}) \;(+\, \lambda\theta_{t-1}) \\
        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
        \hat v_t &= \max(\hat v_{t-1}, v_t) \text{ if amsgrad else } v_t \\
        \theta_t &= \theta_{t-1} - \frac{\gamma}{1-\beta_1^t}\,
            \frac{m_t}{\sqrt{\hat v_t}/\sqrt{1-\beta_2^t} + \epsilon}

    With ``decoupled_weight_decay=True`` (AdamW's rule) the decay is applied to
    the parameter, :math:`\theta \leftarrow \theta(1-\gamma\lambda)`, instead of
    to the gradient. The old ``higher`` used a different arrangement of the bias
    corrections and drifted from torch; this follows the installed torch's
    single-tensor code path operation for operation. The square root's
    derivative at exactly zero is taken as zero
    (:func:`higher_core.functional.safe_sqrt`), so meta-gradients stay finite
    when gradient entries are exactly zero. ``foreach``, ``fused``,
    ``capturable`` and ``differentiable`` change no numbers here.

    Example:
        >>> import torch, higher_core
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = torch.optim.Adam(model.parameters(), lr=1e-2, amsgrad=True)
        >>> with higher_core.innerloop_ctx(model, opt) as (fmodel, diffopt):
        ...     _ = diffopt.step(fmodel(torch.randn(4, 3)).pow(2).mean())
    """

    tensor_hyperparameters = ("lr", "betas", "eps", "weight_decay")
    complex_parameters = "real_view"
    scope = "element"
    #: a flat group's step is one autograd node (``higher_core._fused``) whose first-order backward is
    #: :meth:`update_vjp`: it saves the step's inputs only (many-tensors-mixed: 105 instead of 139 MiB)
    fused = True
    #: update a group with ``torch._foreach_*`` kernels (same numbers as the
    #: per-tensor rule, which stays the reference; set False to use it)
    foreach = True

    def init_state(self, param: torch.Tensor, group: Mapping[str, Any]) -> State:
        state: State = {
            "step": 0.0,
            "exp_avg": torch.zeros_like(param, memory_format=torch.preserve_format),
            "exp_avg_sq": torch.zeros_like(param, memory_format=torch.preserve_format),
        }
        if group["amsgrad"]:
            state["max_exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        return state

    def update(
        self,
        group: Mapping[str, Any],
        params: list[torch.Tensor],
        grads: list[torch.Tensor],
        states: list[State],
    ) -> tuple[list[torch.Tensor], list[State]]:
        if self.foreach and len({(p.device, p.dtype) for p in params}) == 1:
            return self._update_foreach(group, params, grads, states)
        return super().update(group, params, grads, states)  # update_one on each tensor

    def update_one(
        self, group: Mapping[str, Any], param: torch.Tensor, grad: torch.Tensor, state: State
    ) -> tuple[torch.Tensor, State]:
        """The reference rule, one tensor at a time, as torch's single-tensor Adam."""
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        amsgrad = group["amsgrad"]
        param, grad = decayed(group, param, grad)
        step = state["step"] + 1
        exp_avg = torch.lerp(state["exp_avg"], grad, 1 - _beta1_like(beta1, param))
        if isinstance(beta2, torch.Tensor) and beta2.requires_grad:  # torch's differentiable form
            exp_avg_sq = torch.lerp(state["exp_avg_sq"], grad.square(), 1 - beta2)
        else:  # torch reads a tensor beta2 that needs no grad as a number here
            exp_avg_sq = addcmul(state["exp_avg_sq"] * beta2, grad, grad, number(1 - beta2))
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        step_size = lr / bias_correction1
        bias_correction2_sqrt = bias_correction2**0.5
        new_state = {**state, "step": step, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
        if amsgrad:
            second_moment = torch.maximum(state["max_exp_avg_sq"], exp_avg_sq)
            new_state["max_exp_avg_sq"] = second_moment
        else:
            second_moment = exp_avg_sq
        denom = safe_sqrt(second_moment) / bias_correction2_sqrt + eps
        return addcdiv(param, exp_avg, denom, -step_size), new_state

    def update_vjp(
        self,
        group: Mapping[str, Any],
        params: list[torch.Tensor],
        grads: list[torch.Tensor],
        states: list[State],
        grad_params: list[torch.Tensor | None],
        grad_states: list[State],
    ) -> tuple[State, list[Any], list[Any], list[State]] | None:
        r"""The vector-Jacobian product of :meth:`update_one`, written out (the fused step's first-order backward).

        With :math:`d = \sqrt{\hat v}/c_2 + \epsilon`, :math:`s = \gamma / c_1` and
        the gradients :math:`\bar\theta', \bar m, \bar v` of the new weight and state:

        .. math::
            q = \bar\theta' / d, \quad
            \bar m_t = \bar m - s q, \quad
            \bar{\hat v} = \frac{s\, m_t q}{2 c_2 d \sqrt{\hat v}}, \quad
            \bar g = (1-\beta_1) \bar m_t + 2 (1-\beta_2) g \bar v_t, \quad
            \bar\gamma = -\textstyle\sum q\, m_t / c_1

        (and :math:`\bar m_{t-1} = \beta_1 \bar m_t`, :math:`\bar v_{t-1} = \beta_2
        \bar v_t`, the decay's and ``amsgrad``'s maximum's terms as torch takes
        them). Declines (returns ``None``: the rule is recomputed instead) for a
        hyperparameter other than ``lr`` given as a tensor and for an ``lr`` per task.
        """
        lr, (beta1, beta2), eps, weight_decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        decoupled = group.get("decoupled_weight_decay", False)
        if (any(isinstance(v, torch.Tensor) for v in (beta1, beta2, eps, weight_decay))
                or (isinstance(lr, torch.Tensor) and lr.numel() != 1)  # one lr per task
                or any(isinstance(s["step"], torch.Tensor) for s in states)):
            return None
        maximize, amsgrad = group.get("maximize", False), group["amsgrad"]
        grad_lr: Any = None
        grad_ps, grad_gs, grad_ss = [], [], []
        for param, grad, state, grad_p, grad_s in zip(params, grads, states, grad_params, grad_states):
            step = state["step"] + 1
            c1, c2 = 1 - beta1**step, (1 - beta2**step) ** 0.5
            g = -grad if maximize else grad
            if weight_decay != 0 and not decoupled:
                g = torch.add(g, param, alpha=weight_decay)
            m = torch.lerp(state["exp_avg"], g, 1 - beta1)
            v = torch.addcmul(state["exp_avg_sq"] * beta2, g, g, value=1 - beta2)
            v_hat = torch.maximum(state["max_exp_avg_sq"], v) if amsgrad else v
            grad_m, grad_v, grad_v_hat = (grad_s.get(k) for k in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"))
            if grad_p is not None:  # the temporaries below are this function's own: updated in place
                root = v_hat.sqrt()
                denom = torch.div(root, c2).add_(eps)
                q = torch.div(grad_p, denom)
                if isinstance(lr, torch.Tensor):
                    part = torch.dot(q.reshape(-1), m.reshape(-1)).neg_() / c1
                    grad_lr = part if grad_lr is None else grad_lr + part
                q.mul_(lr / c1)  # s q
                grad_m = q.neg() if grad_m is None else grad_m - q
                # d(-s m / d)/d(v_hat) = s m / d^2 * 1 / (2 c2 root), 0 where root == 0 (safe_sqrt)
                twice = root.mul_(2 * c2)
                twice.masked_fill_(twice == 0, torch.inf)
                extra = q.mul_(m).div_(denom).div_(twice)
                grad_v_hat = extra if grad_v_hat is None else extra.add_(grad_v_hat)
            grad_max = None
            if amsgrad and grad_v_hat is not None:  # torch.maximum's backward: halves at ties
                old = state["max_exp_avg_sq"]
                share = torch.where(v > old, 1.0, torch.where(v == old, 0.5, 0.0)).to(v.dtype)
                to_v = grad_v_hat * share
                grad_max = grad_v_hat - to_v
                grad_v = to_v if grad_v is None else to_v.add_(grad_v)
            elif grad_v_hat is not None:
                grad_v = grad_v_hat if grad_v is None else grad_v + grad_v_hat
            grad_g = None if grad_m is None else grad_m * (1 - beta1)
            if grad_v is not None:
                grad_g = (torch.mul(g, grad_v).mul_(2 * (1 - beta2)) if grad_g is None
                          else grad_g.addcmul_(g, grad_v, value=2 * (1 - beta2)))
            grad_param = grad_p
            if decoupled and weight_decay != 0 and grad_p is not None:  # theta (1 - lr wd)
                if isinstance(lr, torch.Tensor):
                    grad_lr = grad_lr - weight_decay * torch.dot(grad_p.reshape(-1), param.reshape(-1))
                grad_param = grad_p * (1 - lr * weight_decay)
            elif grad_g is not None and weight_decay != 0:
                grad_param = weight_decay * grad_g if grad_param is None else torch.add(grad_p, grad_g,
                                                                                        alpha=weight_decay)
            grad_ps.append(grad_param)
            grad_gs.append(grad_g.neg_() if grad_g is not None and maximize else grad_g)
            grad_ss.append({"exp_avg": None if grad_m is None else grad_m * beta1,
                            "exp_avg_sq": None if grad_v is None else grad_v * beta2,
                            "max_exp_avg_sq": grad_max})
        return {"lr": grad_lr}, grad_ps, grad_gs, grad_ss

    def _update_foreach(
        self,
        group: Mapping[str, Any],
        params: list[torch.Tensor],
        grads: list[torch.Tensor],
        states: list[State],
    ) -> tuple[list[torch.Tensor], list[State]]:
        """The same rule with one ``torch._foreach_*`` kernel per operation for the whole group."""
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        weight_decay, amsgrad = group["weight_decay"], group["amsgrad"]
        n = len(params)
        if group.get("maximize", False):
            grads = torch._foreach_neg(grads)
        if not is_zero(weight_decay):
            if group.get("decoupled_weight_decay", False):
                params = foreach_mul(params, 1 - lr * weight_decay)
            elif isinstance(weight_decay, torch.Tensor):
                grads = torch._foreach_add(grads, foreach_mul(params, weight_decay))
            else:
                grads = torch._foreach_add(grads, params, alpha=weight_decay)
        steps = [state["step"] + 1 for state in states]
        exp_avg = torch._foreach_lerp([s["exp_avg"] for s in states], grads,
                                      foreach_scalar(1 - _beta1_like(beta1, params[0]), n))
        if isinstance(beta2, torch.Tensor) and beta2.requires_grad:
            exp_avg_sq = torch._foreach_lerp([s["exp_avg_sq"] for s in states], torch._foreach_mul(grads, grads),
                                             [1 - beta2] * n)
        else:
            exp_avg_sq = torch._foreach_addcmul(foreach_mul([s["exp_avg_sq"] for s in states], beta2),
                                                grads, grads, value=number(1 - beta2))
        if amsgrad:
            second_moment = torch._foreach_maximum([s["max_exp_avg_sq"] for s in states], exp_avg_sq)
        else:
            second_moment = exp_avg_sq
        # one bias correction per distinct step count (usually one), shared by its tensors
        correction2 = {step: (1 - beta2**step) ** 0.5 for step in set(steps)}
        neg_step_size = {step: -(lr / (1 - beta1**step)) for step in set(steps)}
        root = foreach_div(foreach_safe_sqrt(second_moment), [correction2[step] for step in steps])
        denom = torch._foreach_add(root, foreach_scalar(eps, n))
        # params + (-step_size * exp_avg) / denom: the order of torch's addcdiv kernel
        scaled = foreach_mul(exp_avg, [neg_step_size[step] for step in steps])
        new_params = torch._foreach_add(params, torch._foreach_div(scaled, denom))
        new_states = []
        for k, state in enumerate(states):
            new_state = {**state, "step": steps[k], "exp_avg": exp_avg[k], "exp_avg_sq": exp_avg_sq[k]}
            if amsgrad:
                new_state["max_exp_avg_sq"] = second_moment[k]
            new_states.append(new_state)
        return new_params, new_states
