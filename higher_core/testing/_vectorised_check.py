"""The vectorised check: a rule's ``update`` (its multi-tensor form) equals its ``update_one`` tensor by tensor.

A rule is written once, for one tensor, as ``update_one``; a plugin may add ``update``, the same
rule with one ``torch._foreach_*`` kernel per operation for a whole group. ``update_one`` is the
reference (as torch's single-tensor path is for its foreach path): over a few steps with a
learned ``lr``, stepped tensor by tensor (``flat_weights = False``), the fast weights and the
state must be equal and the meta-gradients equal to ``rtol=1e-12``.
"""

from __future__ import annotations

import types
from typing import Any

import torch

from higher_core.optim import DifferentiableOptimizer, get_diff_optim
from higher_core.testing._problem import (NotApplicable, Problem, _compare, _diff_step, _reference,
                                          _with_learned_lr)
from higher_core.testing._table import OptimizerInfo, OptimizerInput

__all__ = ["check_vectorised"]

RTOL = 1e-12


def _run(info: OptimizerInfo, row: OptimizerInput, problem: Problem, vectorised: bool,
         steps: int) -> tuple[list[torch.Tensor], dict[int, dict[str, Any]], tuple[torch.Tensor | None, ...]]:
    diffopt, params, lr = _with_learned_lr(info, row, problem)
    diffopt.flat_weights = False
    if not vectorised:  # the base class's update: update_one on each tensor
        diffopt.update = types.MethodType(DifferentiableOptimizer.update, diffopt)  # type: ignore[method-assign]
    fast = list(params)
    for _ in range(steps):
        fast = _diff_step(info, diffopt, problem, fast)
    wrt = [*params, *([lr] if lr is not None else [])]
    meta = torch.autograd.grad(problem.loss(fast), wrt, allow_unused=True)
    return fast, dict(diffopt.param_state), meta


def check_vectorised(info: OptimizerInfo, row: OptimizerInput, steps: int = 3,
                     device: torch.device | str | None = None) -> None:
    """``update`` and ``update_one`` tensor by tensor give the same weights, state and meta-gradients.

    Raises:
        NotApplicable: the rule has no ``update`` of its own, or no ``update_one`` to compare it
            with, or steps its groups itself (``update_groups``, ``step``).
    """
    problem = Problem(info.shapes, device=device)
    rule = type(get_diff_optim(*_reference(info, row, problem)))
    if rule.update is DifferentiableOptimizer.update:
        raise NotApplicable(f"{rule.__name__} is written as update_one alone")
    if rule.update_one is DifferentiableOptimizer.update_one:
        raise NotApplicable(f"{rule.__name__} has update() without update_one() (deprecated): nothing to compare")
    if info.closure or rule.update_groups is not DifferentiableOptimizer.update_groups:
        raise NotApplicable(f"{rule.__name__} steps its groups itself")
    ours_fast, ours_state, ours_meta = _run(info, row, problem, True, steps)
    fast, state, meta = _run(info, row, problem, False, steps)
    where = f"{info.name}[{row.desc}] vectorised"
    for i, (ours, theirs) in enumerate(zip(ours_fast, fast)):
        _compare(f"{where}: fast weight {i} (update against update_one)", ours, theirs, RTOL, 0.0)
    assert sorted(ours_state) == sorted(state), f"{where}: state for {sorted(ours_state)}, not {sorted(state)}"
    for i, expected in state.items():
        assert sorted(ours_state[i]) == sorted(expected), f"{where}: param {i}: state keys differ"
        for key, value in expected.items():
            _compare(f"{where}: param {i}, state {key!r}", ours_state[i][key], value, RTOL, 0.0)
    for k, (ours, theirs) in enumerate(zip(ours_meta, meta)):
        assert (ours is None) == (theirs is None), f"{where}: meta-gradient {k} is None on one side only"
        if theirs is not None:
            _compare(f"{where}: meta-gradient {k}", ours, theirs, RTOL, 0.0)
