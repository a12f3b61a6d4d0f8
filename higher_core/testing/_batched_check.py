"""The batched check: ``T`` tasks stepped at once equal ``T`` separate inner loops.

Every task starts from the same weights (the meta-parameters, as in MAML, where
the batched fast weights are the parameters expanded over the tasks) and has its
own data (the check's :class:`~higher_core.testing.Problem` with seed ``t``).
After ``steps`` steps, each task's fast weights and optimizer state, and the
meta-gradients of the summed final losses with respect to the initial weights
and a learned ``lr``, must equal those of one inner loop per task, at the
table's tolerances. A second pass gives every task its own learned ``lr`` (an
override of shape ``[T]``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from higher_core.batched import BatchingError
from higher_core.optim import get_diff_optim
from higher_core.testing._checks import NotApplicable, Problem, _compare, _reference
from higher_core.testing._table import OptimizerInfo, OptimizerInput

__all__ = ["check_batched"]


def _loop(info: OptimizerInfo, row: OptimizerInput, problems: Sequence[Problem], initial: list[torch.Tensor],
          lrs: Sequence[torch.Tensor | None], steps: int) -> tuple[list[list[torch.Tensor]], list[dict], torch.Tensor]:
    """One inner loop per task: each task's fast weights and state, and the summed final loss."""
    fasts, states, total = [], [], torch.zeros((), dtype=torch.float64, device=problems[0].device)
    for problem, lr in zip(problems, lrs):
        opt, ref = _reference(info, row, problems[0])
        diffopt = get_diff_optim(opt, ref, override=None if lr is None else {"lr": [lr]})
        fast = list(initial)
        for _ in range(steps):
            fast = diffopt.step(problem.loss(fast), params=fast)
        fasts.append(fast)
        states.append(diffopt.param_state)
        total = total + problem.loss(fast)
    return fasts, states, total


def _batched(info: OptimizerInfo, row: OptimizerInput, problems: Sequence[Problem], initial: list[torch.Tensor],
             lr: torch.Tensor | None, steps: int) -> tuple[list[torch.Tensor], Any, torch.Tensor]:
    tasks = len(problems)

    def losses(fast: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([problem.loss([p[t] for p in fast]) for t, problem in enumerate(problems)])

    opt, ref = _reference(info, row, problems[0])
    diffopt = get_diff_optim(opt, ref, tasks=tasks, override=None if lr is None else {"lr": [lr]})
    fast = [p.expand(tasks, *p.shape) for p in initial]
    for _ in range(steps):
        fast = diffopt.step(losses(fast), params=fast)
    return fast, diffopt, losses(fast).sum()


def check_batched(info: OptimizerInfo, row: OptimizerInput, tasks: int = 4, steps: int = 3,
                  per_task_lr: bool = True, device: torch.device | str | None = None) -> None:
    """``tasks`` tasks at once equal ``tasks`` separate inner loops (fast weights, state, meta-gradients).

    With ``per_task_lr`` (and a row whose ``lr`` is a number), a second pass learns
    one ``lr`` per task (an override of shape ``[tasks]``).

    Raises:
        NotApplicable: the rule refuses batching (the reason is its refusal), or
            closes over the loss (LBFGS).
    """
    problems = [Problem(info.shapes, seed=t, device=device) for t in range(tasks)]
    learn_lr = isinstance(row.kwargs.get("lr"), float)
    try:
        get_diff_optim(*_reference(info, row, problems[0]), tasks=tasks)
    except BatchingError as exc:
        raise NotApplicable(f"{info.name} refuses tasks=: {exc}") from None
    passes: list[Any] = [None]
    if learn_lr:
        shared = torch.tensor(row.kwargs["lr"], dtype=torch.float64, device=problems[0].device)
        passes = [shared] + [shared * torch.linspace(0.5, 1.5, tasks, dtype=torch.float64, device=shared.device)] * per_task_lr
    for lr in passes:
        initial = problems[0].leaves()
        leaf = None if lr is None else lr.detach().clone().requires_grad_()
        per_task_lr = leaf is not None and leaf.dim() == 1
        lrs = [leaf[t] if per_task_lr else leaf for t in range(tasks)]
        loop_fast, loop_states, loop_total = _loop(info, row, problems, initial, lrs, steps)
        wrt = [*initial, *([leaf] if leaf is not None else [])]
        loop_meta = torch.autograd.grad(loop_total, wrt, allow_unused=True)
        fast, diffopt, total = _batched(info, row, problems, initial, leaf, steps)
        meta = torch.autograd.grad(total, wrt, allow_unused=True)
        where = f"{info.name}[{row.desc}] tasks={tasks}" + (", per-task lr" if per_task_lr else "")
        for t in range(tasks):
            for i, p in enumerate(fast):
                _compare(f"{where}: task {t}, param {i}", p[t], loop_fast[t][i], info.rtol, info.atol)
            state = diffopt.state_of_task(t)
            assert sorted(state) == sorted(loop_states[t]), f"{where}: task {t} has state for {sorted(state)}"
            for i, expected in loop_states[t].items():
                assert sorted(state[i]) == sorted(expected), f"{where}: task {t}, param {i}: state keys differ"
                for key, value in expected.items():
                    _compare(f"{where}: task {t}, param {i}, state {key!r}", state[i][key], value,
                             info.rtol, info.atol)
        for k, (ours, theirs) in enumerate(zip(meta, loop_meta)):
            assert (ours is None) == (theirs is None), f"{where}: meta-gradient {k} is None on one side only"
            if theirs is not None:
                _compare(f"{where}: meta-gradient {k}", ours, theirs, info.rtol, info.atol)
