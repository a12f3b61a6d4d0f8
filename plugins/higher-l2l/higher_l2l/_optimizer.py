r"""``LSTMOptimizer``: the learned rule as an ordinary ``torch.optim.Optimizer``."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable
from typing import Any

import torch

from higher_l2l._lstm import CoordinateLSTM, lstm_step

__all__ = ["LSTMOptimizer", "check_lr"]


def check_lr(lr: Any, where: str = "LSTMOptimizer") -> None:
    """Refuse an output scale that is not a non-negative number or a one-element tensor."""
    if isinstance(lr, torch.Tensor):
        if lr.numel() != 1:
            raise ValueError(f"{where}: Tensor lr must be 1-element (one output scale per param group), "
                             f"got shape {tuple(lr.shape)}")
        value = float(lr.detach().item())
    elif isinstance(lr, numbers.Real) and not isinstance(lr, bool):
        value = float(lr)
    else:
        raise TypeError(f"{where}: lr (the output scale) must be a number or a 1-element tensor, "
                        f"got {type(lr).__name__}")
    if not value >= 0.0:
        raise ValueError(f"Invalid learning rate: {value} ({where}'s lr scales the LSTM's output and must "
                         "be >= 0; the LSTM learns the sign of its updates)")


class LSTMOptimizer(torch.optim.Optimizer):
    r"""The coordinatewise LSTM optimizer of Andrychowicz et al. (2016), applied with ``.step()``.

    Each coordinate :math:`\theta^{(k)}` of every parameter moves by the output of
    a small LSTM (:class:`~higher_l2l.CoordinateLSTM`, shared by all coordinates)
    that reads the preprocessed gradient and keeps its own hidden and cell state:

    .. math::
        u_t, s_{t+1} = m_\phi\big(\mathrm{preprocess}_p(\nabla_t), s_t\big), \qquad
        \theta_{t+1} = \theta_t + \mathrm{lr}\, u_t

    The learned weights :math:`\phi` are ``lstm``'s parameters (meta-parameters:
    meta-train them through :class:`~higher_l2l.DifferentiableLSTMOptimizer`,
    which ``higher_core.innerloop_ctx`` picks for this class). Per parameter,
    ``self.state[p]`` holds ``hidden`` and ``cell``, each of shape
    ``(*p.shape, num_layers, hidden_size)``; ``state_dict()`` carries them, while
    the weights are ``lstm.state_dict()`` (save both). ``lstm`` is kept on the
    instance, not in the param groups, and is not copied.

    Args:
        params: the parameters (or param groups) to optimize.
        lstm: the learned weights.
        lr: the output scale (the paper: 0.1), a number >= 0 or a one-element
            tensor; a group may have its own.

    Raises:
        TypeError: ``lstm`` is not a :class:`~higher_l2l.CoordinateLSTM`.
        ValueError: a negative ``lr``, or at ``step()`` a complex or sparse gradient.

    Example:
        >>> import torch
        >>> from higher_l2l import CoordinateLSTM, LSTMOptimizer
        >>> model = torch.nn.Linear(3, 1)
        >>> lstm = CoordinateLSTM(generator=torch.Generator().manual_seed(0))
        >>> opt = LSTMOptimizer(model.parameters(), lstm, lr=0.1)
        >>> model(torch.randn(4, 3)).pow(2).mean().backward()
        >>> opt.step()
        >>> opt.state[model.weight]["hidden"].shape
        torch.Size([1, 3, 2, 20])
    """

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict[str, Any]], lstm: CoordinateLSTM,
                 lr: float | torch.Tensor = 0.1) -> None:
        if not isinstance(lstm, CoordinateLSTM):
            raise TypeError(
                f"LSTMOptimizer: lstm must be a higher_l2l.CoordinateLSTM (the learned weights), got "
                f"{type(lstm).__name__}; build one with CoordinateLSTM(hidden_size=20, num_layers=2) and pass "
                "it as LSTMOptimizer(params, lstm)"
            )
        check_lr(lr)
        super().__init__(params, {"lr": lr})
        #: the learned weights (meta-parameters), shared by every param group
        self.lstm = lstm

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if "lr" in param_group:
            check_lr(param_group["lr"])
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:  # type: ignore[override]
        """Apply the learned rule to every parameter with a gradient; returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise ValueError("LSTMOptimizer does not take sparse gradients; densify them (grad.to_dense())")
                if p.is_complex():
                    raise ValueError("LSTMOptimizer does not step complex parameters; optimize "
                                     "torch.view_as_real(p) (a real parameter) instead")
                state = self.state[p]
                if not state:
                    state.update(self.lstm.initial_state(p))
                new, new_state = lstm_step(self.lstm, p, p.grad, state, group["lr"])
                p.copy_(new)
                state.update(new_state)
        return loss
