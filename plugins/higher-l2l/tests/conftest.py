"""A small float64 problem for higher-l2l's tests: a tiny LSTM optimizer on a random quadratic."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from higher_l2l import CoordinateLSTM


class Quadratic(nn.Module):
    """f(theta) = ||W theta - y||^2 over ``n`` coordinates, theta a parameter."""

    def __init__(self, n: int = 3, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = torch.randn(n, n, generator=g, dtype=torch.float64)
        self.y = torch.randn(n, generator=g, dtype=torch.float64)
        self.theta = nn.Parameter(0.1 * torch.randn(n, generator=g, dtype=torch.float64))

    def loss(self, theta: torch.Tensor) -> torch.Tensor:
        return (self.W @ theta - self.y).pow(2).sum()

    def grad(self, theta: torch.Tensor) -> torch.Tensor:
        return 2 * self.W.T @ (self.W @ theta - self.y)

    def forward(self) -> torch.Tensor:
        return self.loss(self.theta)


@pytest.fixture
def tiny_lstm() -> CoordinateLSTM:
    return CoordinateLSTM(hidden_size=4, num_layers=2, generator=torch.Generator().manual_seed(0),
                          dtype=torch.float64)


@pytest.fixture
def quadratic() -> Quadratic:
    return Quadratic()
