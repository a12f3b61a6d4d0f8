"""What outside plugin authors hit when they wrote plugins from the docs: the base class's contract.

Each reference here is a small third-party-style optimizer (not from ``torch.optim``) with one
habit: it counts its constructions, counts steps with a Python int, or keeps an option on the
instance instead of in its param groups.
"""

from __future__ import annotations

import math

import pytest
import torch

import higher_core
from higher_core.optim import DifferentiableOptimizer

DT = torch.float64


class Counted(torch.optim.Optimizer):
    """Plain SGD whose constructor counts its calls (as one that prints a banner would show them)."""

    constructed = 0

    def __init__(self, params, lr=0.1):
        type(self).constructed += 1
        if not lr >= 0:
            raise ValueError(f"Invalid learning rate: {lr}")
        super().__init__(params, {"lr": lr})


class PlainRule(DifferentiableOptimizer):
    scope = "element"

    def update_one(self, group, param, grad, state):
        return param - group["lr"] * grad, state


@pytest.fixture
def registered():
    made = []

    def register(reference, rule):
        higher_core.register_optim(reference, rule)
        made.append(reference)

    yield register
    for reference in made:
        higher_core.unregister_optim(reference)


def _weight() -> torch.Tensor:
    return torch.tensor([1.0, -2.0, 0.5], dtype=DT, requires_grad=True)


def test_a_step_override_is_validated_once_per_distinct_value(registered):
    registered(Counted, PlainRule)
    w = _weight()
    diffopt = higher_core.get_diff_optim(Counted([w], lr=0.1), [w])
    learned = torch.tensor(0.03, dtype=DT, requires_grad=True)
    fast = [w]
    overrides = [0.05, torch.tensor(0.05, dtype=DT), learned, 0.07]  # a new 0-d tensor each time: keyed on its value
    before = Counted.constructed
    for _ in range(5):
        for value in overrides:
            fast = diffopt.step((fast[0] ** 2).sum(), params=fast, override={"lr": [value]})
    # 0.05 (a number or a tensor), the learned value's group value (0.1: it is not probed itself), 0.07
    assert Counted.constructed - before <= 3
    with pytest.raises(ValueError, match="refuses these values: Invalid learning rate: -0.1"):
        diffopt.step((fast[0] ** 2).sum(), params=fast, override={"lr": [-0.1]})
    assert fast[0].grad_fn is not None  # the step kept its graph: nothing cached holds or cuts it
