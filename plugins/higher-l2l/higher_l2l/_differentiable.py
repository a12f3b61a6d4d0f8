r"""``DifferentiableLSTMOptimizer``: the learned rule inside an unrolled, differentiable inner loop."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from higher_core.optim import DifferentiableOptimizer, State
from higher_l2l._lstm import CoordinateLSTM, lstm_step
from higher_l2l._optimizer import check_lr

__all__ = ["DifferentiableLSTMOptimizer"]


class DifferentiableLSTMOptimizer(DifferentiableOptimizer):
    r"""The differentiable :class:`~higher_l2l.LSTMOptimizer`: meta-gradients reach the LSTM's weights.

    .. math::
        u_t, s_{t+1} = m_\phi\big(\mathrm{preprocess}_p(\nabla_t), s_t\big), \qquad
        \theta_{t+1} = \theta_t + \mathrm{lr}\, u_t

    The same rule as ``LSTMOptimizer.step`` (one function, ``lstm_step``), out of
    place. The LSTM module is read from the reference optimizer
    (``self.options["lstm"]``) and its parameters are used as they are, not
    copied or detached: a loss after an unrolled inner loop has gradients with
    respect to :math:`\phi` (``lstm.parameters()``), through every step,
    including the dependence of later gradients :math:`\nabla_t` on :math:`\phi`
    (second order, as ``create_graph=True`` gives; the paper drops it). ``lr``
    (the output scale) is a tensor hyperparameter. ``truncate()`` cuts the
    unroll, hidden and cell states included, for truncated meta-training.

    Scope: the rule is coordinatewise, but its state (``hidden``, ``cell``) has a
    trailing ``(num_layers, hidden_size)`` beyond the parameter's shape, which the
    ``"element"`` machinery (flat buffers, stacked tasks) does not lay out; it
    declares ``"tensor"``: tensors are stepped one by one, and ``tasks=`` steps
    each task with its own copy of the rule (same weights). Complex parameters
    are refused.

    Example:
        >>> import torch, higher_core
        >>> from higher_l2l import CoordinateLSTM, LSTMOptimizer
        >>> lstm = CoordinateLSTM(hidden_size=4, generator=torch.Generator().manual_seed(0))
        >>> model = torch.nn.Linear(3, 1)
        >>> with higher_core.innerloop_ctx(model, LSTMOptimizer(model.parameters(), lstm)) as (fmodel, diffopt):
        ...     for _ in range(3):
        ...         _ = diffopt.step(fmodel(torch.ones(2, 3)).pow(2).mean())
        ...     fmodel(torch.ones(2, 3)).pow(2).mean().backward()
        >>> lstm.head.weight.grad is not None
        True
    """

    tensor_hyperparameters = ("lr",)
    scope = "tensor"
    complex_parameters = "refuse"

    def import_options(self, other: torch.optim.Optimizer) -> Mapping[str, Any]:
        lstm = getattr(other, "lstm", None)
        if not isinstance(lstm, CoordinateLSTM):
            raise TypeError(
                f"DifferentiableLSTMOptimizer: the reference {type(other).__name__} has no CoordinateLSTM in "
                f".lstm (got {type(lstm).__name__}); build it as LSTMOptimizer(params, lstm)"
            )
        return {"lstm": lstm}

    def check_param_groups(self, param_groups: Sequence[Mapping[str, Any]]) -> None:
        for group in param_groups:
            lr = group["lr"]
            if not isinstance(lr, torch.Tensor):
                check_lr(lr, type(self).__name__)
            elif not lr.requires_grad and bool((lr.detach() < 0).any()):  # a learned lr may go anywhere
                raise ValueError(f"Invalid learning rate: {type(self).__name__}'s lr (the output scale) must be "
                                 f">= 0, got a tensor with minimum {lr.detach().min().item()}")

    def init_state(self, param: torch.Tensor, group: Mapping[str, Any]) -> State:
        return self.options["lstm"].initial_state(param)

    def update_one(self, group: Mapping[str, Any], param: torch.Tensor, grad: torch.Tensor,
                   state: State) -> tuple[torch.Tensor, State]:
        return lstm_step(self.options["lstm"], param, grad, state, group["lr"])
