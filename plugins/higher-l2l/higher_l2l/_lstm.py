r"""The learned update rule: a coordinatewise LSTM (Andrychowicz et al. 2016) and its one step.

Every coordinate of every parameter is one sequence of the same small LSTM
(weights shared across coordinates, a hidden and a cell state per coordinate),
so the rule applies to parameters of any shape and size. This module holds the
rule once, out of place; :class:`~higher_l2l.LSTMOptimizer` applies it in place
under ``torch.no_grad()`` and :class:`~higher_l2l.DifferentiableLSTMOptimizer`
inside an unrolled, differentiable inner loop: the same numbers by construction.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["CoordinateLSTM", "lstm_step", "preprocess_gradient"]


def preprocess_gradient(grad: torch.Tensor, p: float = 10.0) -> torch.Tensor:
    r"""The paper's gradient preprocessing: each coordinate to two inputs of similar scale.

    .. math::
        g \mapsto \begin{cases}
            \left(\frac{\log |g|}{p},\ \operatorname{sign}(g)\right) & |g| \ge e^{-p} \\
            \left(-1,\ e^{p} g\right) & \text{otherwise}
        \end{cases}

    (Andrychowicz et al. 2016, appendix A). The logarithm is taken of
    :math:`\max(|g|, e^{-p})`, so an exact zero gradient has finite derivatives
    (``e^p`` through the second input, 0 through the first).

    Args:
        grad: a gradient of any shape.
        p: the preprocessing constant (the paper's :math:`p = 10`), positive.

    Returns:
        A tensor of shape ``(*grad.shape, 2)``.

    Example:
        >>> preprocess_gradient(torch.tensor([1.0, -1e-6, 0.0]), p=10.0)
        tensor([[ 0.0000,  1.0000],
                [-1.0000, -0.0220],
                [-1.0000,  0.0000]])
    """
    threshold = math.exp(-p)
    magnitude = grad.abs()
    large = magnitude >= threshold
    log_part = torch.log(magnitude.clamp_min(threshold)) / p
    first = torch.where(large, log_part, torch.full_like(log_part, -1.0))
    second = torch.where(large, torch.sign(grad), grad * math.exp(p))
    return torch.stack([first, second], dim=-1)


class CoordinateLSTM(nn.Module):
    r"""The learned weights of the coordinatewise LSTM optimizer: a stacked LSTM and a linear head.

    For one coordinate with gradient :math:`g_t`, input
    :math:`x_t = \mathrm{preprocess}_p(g_t)` (:func:`preprocess_gradient`), and
    per layer :math:`l` the standard LSTM cell (``nn.LSTM``'s gates and weight
    names, ``weight_ih_l{l}``, ``weight_hh_l{l}``, ``bias_ih_l{l}``,
    ``bias_hh_l{l}``):

    .. math::
        (i, f, \tilde c, o) &= W_{ih} x + b_{ih} + W_{hh} h_{t-1} + b_{hh} \\
        c_t &= \sigma(f) \odot c_{t-1} + \sigma(i) \odot \tanh(\tilde c), \qquad
        h_t = \sigma(o) \odot \tanh(c_t)

    the last layer's :math:`h_t` feeding the next step's input of the layer above,
    and the output :math:`u_t = w^\top h_t + b` (``head.weight``, ``head.bias``).
    The optimizer moves the coordinate by ``lr`` times :math:`u_t`. The module is
    stateless: the hidden and cell states live in the optimizer's state, one
    pair per coordinate. It computes in the dtype of the gradient it is given
    (its weights are cast, differentiably, when they differ).

    Args:
        hidden_size: hidden units per layer (the paper: 20).
        num_layers: stacked LSTM layers (the paper: 2).
        preprocessing: the constant :math:`p` of :func:`preprocess_gradient`
            (the paper: 10).
        generator: draws the initial weights (``U(-1/\sqrt{H}, 1/\sqrt{H})``, as
            ``nn.LSTM``), for a seeded module without touching the global seed.
        dtype: the weights' dtype (default: torch's default dtype).

    Example:
        >>> lstm = CoordinateLSTM(hidden_size=4, generator=torch.Generator().manual_seed(0))
        >>> hidden, cell = lstm.initial_state(torch.zeros(3, 2)).values()
        >>> update, hidden, cell = lstm(torch.randn(3, 2), hidden, cell)
        >>> update.shape, hidden.shape
        (torch.Size([3, 2]), torch.Size([3, 2, 2, 4]))
    """

    def __init__(self, hidden_size: int = 20, num_layers: int = 2, preprocessing: float = 10.0, *,
                 generator: torch.Generator | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        for name, value in (("hidden_size", hidden_size), ("num_layers", num_layers)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"CoordinateLSTM: {name} must be a positive int, got {value!r}")
        if isinstance(preprocessing, bool) or not isinstance(preprocessing, (int, float)) \
                or not math.isfinite(preprocessing) or preprocessing <= 0:
            raise ValueError(f"CoordinateLSTM: preprocessing must be a positive number (the paper's p = 10), "
                             f"got {preprocessing!r}")
        self.hidden_size, self.num_layers, self.preprocessing = hidden_size, num_layers, float(preprocessing)
        bound = 1.0 / math.sqrt(hidden_size)

        def draw(*shape: int) -> nn.Parameter:
            u = torch.rand(shape, generator=generator, dtype=dtype or torch.get_default_dtype())
            return nn.Parameter((2 * u - 1) * bound)

        for layer in range(num_layers):
            inputs = 2 if layer == 0 else hidden_size
            self.register_parameter(f"weight_ih_l{layer}", draw(4 * hidden_size, inputs))
            self.register_parameter(f"weight_hh_l{layer}", draw(4 * hidden_size, hidden_size))
            self.register_parameter(f"bias_ih_l{layer}", draw(4 * hidden_size))
            self.register_parameter(f"bias_hh_l{layer}", draw(4 * hidden_size))
        self.head = nn.Linear(hidden_size, 1, dtype=dtype)
        with torch.no_grad():
            self.head.weight.copy_(draw(1, hidden_size))
            self.head.bias.copy_(draw(1))

    def extra_repr(self) -> str:
        return f"hidden_size={self.hidden_size}, num_layers={self.num_layers}, preprocessing={self.preprocessing:g}"

    def initial_state(self, param: torch.Tensor) -> dict[str, torch.Tensor]:
        """The state of a parameter before its first step: zero ``hidden`` and ``cell``,
        each of shape ``(*param.shape, num_layers, hidden_size)``, in the parameter's dtype and device."""
        shape = (*param.shape, self.num_layers, self.hidden_size)
        return {"hidden": param.new_zeros(shape), "cell": param.new_zeros(shape)}

    def forward(self, grad: torch.Tensor, hidden: torch.Tensor,
                cell: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One step of every coordinate: ``(update, hidden, cell)``, the update shaped like ``grad``."""
        dtype = grad.dtype

        def weight(name: str) -> torch.Tensor:
            return getattr(self, name).to(dtype)

        x = preprocess_gradient(grad, self.preprocessing)
        hiddens, cells = [], []
        for layer in range(self.num_layers):
            gates = (nn.functional.linear(x, weight(f"weight_ih_l{layer}"), weight(f"bias_ih_l{layer}"))
                     + nn.functional.linear(hidden[..., layer, :], weight(f"weight_hh_l{layer}"),
                                            weight(f"bias_hh_l{layer}")))
            i, f, g, o = gates.chunk(4, dim=-1)
            c = torch.sigmoid(f) * cell[..., layer, :] + torch.sigmoid(i) * torch.tanh(g)
            x = torch.sigmoid(o) * torch.tanh(c)
            hiddens.append(x)
            cells.append(c)
        update = nn.functional.linear(x, self.head.weight.to(dtype), self.head.bias.to(dtype)).squeeze(-1)
        return update, torch.stack(hiddens, dim=-2), torch.stack(cells, dim=-2)


def lstm_step(lstm: CoordinateLSTM, param: torch.Tensor, grad: torch.Tensor, state: Mapping[str, Any],
              lr: float | torch.Tensor,
              weights: Mapping[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    r"""The rule for one tensor, out of place: :math:`\theta_{t+1} = \theta_t + \mathrm{lr}\, u_t`.

    Args:
        lstm: the learned weights.
        param, grad: the parameter and its gradient.
        state: its ``hidden`` and ``cell`` (:meth:`CoordinateLSTM.initial_state` before the first step).
        lr: the output scale (the paper scales the LSTM's output by 0.1).
        weights: other values for ``lstm``'s parameters, by name (``dict(lstm.named_parameters())``'s
            keys), used instead of its own through ``torch.func.functional_call``: the rule at
            perturbed weights, for evolution strategies.

    Returns:
        The new parameter and the new state (``hidden``, ``cell``).

    Example:
        >>> lstm = CoordinateLSTM(hidden_size=4, generator=torch.Generator().manual_seed(0))
        >>> w = torch.ones(3)
        >>> new, state = lstm_step(lstm, w, torch.tensor([1.0, 0.0, -1.0]), lstm.initial_state(w), 0.1)
        >>> sorted(state), new.shape
        (['cell', 'hidden'], torch.Size([3]))
    """
    args = (grad, state["hidden"], state["cell"])
    update, hidden, cell = lstm(*args) if weights is None else torch.func.functional_call(lstm, dict(weights), args)
    return param + lr * update, {**state, "hidden": hidden, "cell": cell}
