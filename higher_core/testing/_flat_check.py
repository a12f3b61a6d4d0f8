"""The flat-weights check: an element-wise rule stepped on flat buffers equals it stepped tensor by tensor.

An element-wise rule (``scope = "element"``) steps each param group as one flat
buffer (:attr:`~higher_core.optim.DifferentiableOptimizer.flat_weights`). The
per-tensor path, the rule's own ``update`` on each group's list, is the
reference. Over a few steps with a learned ``lr``, on tensors of sizes that
cross vector widths, the fast weights and the state must be equal bit for bit,
and the meta-gradients (with respect to the initial weights and the ``lr``)
to ``rtol=1e-12``: autograd adds the contributions to a tensor's gradient in
the order its graph delivers them, which the flat layout changes, and the
``lr``'s gradient sums over every element, in one sum over the flat buffer
instead of one per tensor (measured: about one unit in the last place).
"""

from __future__ import annotations

from typing import Any

import torch

from higher_core.optim import get_diff_optim
from higher_core.testing._problem import (NotApplicable, Problem, _compare, _diff_step, _reference,
                                          _with_learned_lr)
from higher_core.testing._table import OptimizerInfo, OptimizerInput

__all__ = ["FLAT_SHAPES", "check_flat_weights"]

#: parameter shapes of the check: group 0 lays out the first nine (at least ``MIN_TENSORS``), the last is group 1
FLAT_SHAPES: tuple[tuple[int, ...], ...] = ((5, 7), (13,), (2, 3, 3), (4,), (3, 1), (1,), (2, 2), (17,), (3, 5), (4,))
META_GRADIENT_RTOL = 1e-12


def _one_buffer(tensors: list[torch.Tensor]) -> bool:
    return len({t.untyped_storage().data_ptr() for t in tensors}) == 1


def _run(info: OptimizerInfo, row: OptimizerInput, problem: Problem, flat: bool,
         steps: int) -> tuple[list[torch.Tensor], dict[int, dict[str, Any]], tuple[torch.Tensor | None, ...]]:
    diffopt, params, lr = _with_learned_lr(info, row, problem)
    diffopt.flat_weights = flat
    fast = list(params)
    group0 = diffopt.param_groups[0]["params"]
    for _ in range(steps):
        fast = _diff_step(info, diffopt, problem, fast)
        laid_out = _one_buffer([fast[i] for i in group0])
        assert laid_out == flat, (
            f"{info.name}[{row.desc}]: flat_weights={flat} but group 0's new weights are "
            f"{'one buffer' if laid_out else 'separate tensors'}"
        )
    wrt = [*params, *([lr] if lr is not None else [])]
    meta = torch.autograd.grad(problem.loss(fast), wrt, allow_unused=True)
    return fast, diffopt.param_state, meta


def check_flat_weights(info: OptimizerInfo, row: OptimizerInput, steps: int = 3,
                       device: torch.device | str | None = None) -> None:
    """Flat buffers and tensor-by-tensor steps give the same weights and state, and meta-gradients to 1e-12.

    Raises:
        NotApplicable: the rule is not element-wise (its scope), opts out
            (``flat_weights = False``) or steps with a closure.
    """
    diffopt = get_diff_optim(*_reference(info, row, Problem(info.shapes, device=device)))
    if diffopt.scope != "element":
        raise NotApplicable(f"{info.name} declares scope = {diffopt.scope!r}: each tensor is stepped by itself")
    if not diffopt.flat_weights:
        raise NotApplicable(f"{type(diffopt).__name__} sets flat_weights = False")
    if info.closure:
        raise NotApplicable(f"{info.name} steps with a closure")
    problem = Problem(FLAT_SHAPES, device=device)
    flat_fast, flat_state, flat_meta = _run(info, row, problem, True, steps)
    fast, state, meta = _run(info, row, problem, False, steps)
    where = f"{info.name}[{row.desc}] flat_weights"
    for i, (ours, theirs) in enumerate(zip(flat_fast, fast)):
        assert torch.equal(ours, theirs), f"{where}: fast weight {i} differs from the per-tensor step"
    assert sorted(flat_state) == sorted(state), f"{where}: state for {sorted(flat_state)}, not {sorted(state)}"
    for i, expected in state.items():
        assert sorted(flat_state[i]) == sorted(expected), f"{where}: param {i}: state keys differ"
        for key, value in expected.items():
            _compare(f"{where}: param {i}, state {key!r}", flat_state[i][key], value, 0.0, 0.0)
    for k, (ours, theirs) in enumerate(zip(flat_meta, meta)):
        assert (ours is None) == (theirs is None), f"{where}: meta-gradient {k} is None on one side only"
        if theirs is not None:
            what = f"initial weight {k}" if k < len(FLAT_SHAPES) else "the learned lr"
            _compare(f"{where}: meta-gradient of {what}", ours, theirs, META_GRADIENT_RTOL, 0.0)
