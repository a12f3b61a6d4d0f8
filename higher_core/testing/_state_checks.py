"""Checks of what a differentiable optimizer does with its state.

``update`` leaves its inputs alone (out of place, as autograd needs),
``export_state`` lets the reference continue identically, ``truncate`` cuts
the graph without changing a number, and running statistics kept per param
group match the reference's.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch

from higher_core.optim import get_diff_optim
from higher_core.testing._problem import (
    NotApplicable,
    Problem,
    _compare,
    _construct,
    _diff_step,
    _reference,
    _reference_step,
)
from higher_core.testing._table import OptimizerInfo, OptimizerInput

__all__ = ["check_no_mutation", "check_export_state", "check_truncate", "check_group_statistics"]


def _group_state(diffopt: Any) -> list[Mapping[str, Any]] | None:
    """The running state a differentiable optimizer keeps per param group, if any."""
    running = getattr(diffopt, "group_state", None)
    return running if running and any(running) else None


def _tensors(where: str, value: Any) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(value, torch.Tensor):
        yield where, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _tensors(f"{where}[{key!r}]", item)
    elif isinstance(value, (list, tuple)):
        for k, item in enumerate(value):
            yield from _tensors(f"{where}[{k}]", item)


class _Snapshot:
    """Version counters and values of tensors, to find the ones changed in place."""

    def __init__(self, named: Iterator[tuple[str, torch.Tensor]]) -> None:
        self.entries = [(name, t, t._version, t.detach().clone()) for name, t in named]

    def assert_unchanged(self, during: str) -> None:
        for name, tensor, version, value in self.entries:
            assert tensor._version == version and torch.equal(
                torch.nan_to_num(tensor.detach()), torch.nan_to_num(value)
            ), (
                f"{during} modified {name} in place; the rule must be out of place: return new "
                "tensors (x = x * beta + g) instead of writing into its inputs (x.mul_(beta), x.copy_(g))"
            )


def check_no_mutation(info: OptimizerInfo, row: OptimizerInput, steps: int = 3,
                      device: torch.device | str | None = None) -> None:
    """A step modifies none of its inputs in place: fast weights, gradients, state tensors.

    Before each of ``steps`` steps (from a reference that stepped once, so
    that imported and fresh state are both seen), records the version counter
    and value of every input tensor; after it, each must be unchanged. The
    gradients are checked where the optimizer calls ``update``.
    """
    problem = Problem(info.shapes, device=device)
    opt, ref_params = _reference(info, row, problem, warmup=1)
    diffopt = get_diff_optim(opt, ref_params)
    update = diffopt.update

    def watched_update(group: Mapping[str, Any], params: list[torch.Tensor], grads: list[torch.Tensor],
                       states: list[Any]) -> Any:
        snapshot = _Snapshot(_tensors("a gradient", grads))
        result = update(group, params, grads, states)
        snapshot.assert_unchanged("update()")
        return result

    diffopt.update = watched_update  # type: ignore[method-assign]
    fast = [p.detach().clone().requires_grad_() for p in ref_params]
    for step in range(1, steps + 1):
        snapshot = _Snapshot(_tensors("a fast weight", fast))
        snapshot.entries += _Snapshot(_tensors("state", diffopt.param_state)).entries
        snapshot.entries += _Snapshot(_tensors("group state", _group_state(diffopt) or [])).entries
        fast = _diff_step(info, diffopt, problem, fast)
        snapshot.assert_unchanged(f"step {step}")


def check_export_state(info: OptimizerInfo, row: OptimizerInput, steps: int = 3,
                       device: torch.device | str | None = None) -> None:
    """After ``export_state``, the reference continues exactly as one that took every step itself.

    The differentiable optimizer takes ``steps`` steps while a twin reference
    takes the same ones; the fast weights are copied into the reference, its
    state is exported into it, and both references take ``steps`` more steps.
    """
    problem = Problem(info.shapes, device=device)
    opt, ref_params = _reference(info, row, problem)
    twin_params = problem.leaves()
    twin = _construct(info, twin_params, row)
    diffopt = get_diff_optim(opt, ref_params)
    fast = [p.detach().clone().requires_grad_() for p in ref_params]
    for _ in range(steps):
        fast = _diff_step(info, diffopt, problem, fast)
        _reference_step(twin, twin_params, problem)
    with torch.no_grad():
        for p, f in zip(ref_params, fast):
            p.copy_(f)
    diffopt.export_state(opt)
    for step in range(1, steps + 1):
        _reference_step(opt, ref_params, problem)
        _reference_step(twin, twin_params, problem)
        for i, (ours, theirs) in enumerate(zip(ref_params, twin_params)):
            _compare(f"{step} step(s) after export_state, param {i}", ours, theirs, info.rtol, info.atol)


def check_truncate(info: OptimizerInfo, row: OptimizerInput, steps: int = 2,
                   device: torch.device | str | None = None) -> None:
    """``truncate`` changes no number, and gradients of later losses stop at it.

    Two runs take ``2 * steps`` steps from the same weights; one truncates
    after ``steps`` (its fast weights restarted as new leaves, as ``fmodel``'s
    are). Both end at the same weights; the truncated run's final loss has no
    gradient w.r.t. the starting weights, and a full one w.r.t. the restart.
    """
    problem = Problem(info.shapes, device=device)
    opt, ref_params = _reference(info, row, problem)
    full, cut = get_diff_optim(opt, ref_params), get_diff_optim(opt, ref_params)
    start = problem.leaves()
    fast_full, fast_cut = list(start), list(start)
    for _ in range(steps):
        fast_full = _diff_step(info, full, problem, fast_full)
        fast_cut = _diff_step(info, cut, problem, fast_cut)
    carried = [t for _, t in _tensors("state", [cut.param_state, _group_state(cut) or []]) if t.requires_grad]
    if not carried:
        raise NotApplicable("the optimizer carries no differentiable state here; truncate has nothing to cut")
    cut.truncate()
    restart = [p.detach().requires_grad_() for p in fast_cut]
    fast_cut = list(restart)
    for _ in range(steps):
        fast_full = _diff_step(info, full, problem, fast_full)
        fast_cut = _diff_step(info, cut, problem, fast_cut)
    for i, (a, b) in enumerate(zip(fast_cut, fast_full)):
        _compare(f"param {i} after truncate", a, b, 0.0, 0.0)
    loss = problem.loss(fast_cut)
    through = torch.autograd.grad(loss, start, retain_graph=True, allow_unused=True)
    for i, g in enumerate(through):
        assert g is None or not g.any(), (
            f"the gradient w.r.t. starting weight {i} passes truncate(); detach the state in "
            "detach_state() (every tensor the rule carries, per param and per group)"
        )
    restarted = torch.autograd.grad(loss, restart, allow_unused=True)
    assert any(g is not None for g in restarted), "no gradient reaches the weights after truncate()"


def check_group_statistics(info: OptimizerInfo, row: OptimizerInput,
                           device: torch.device | str | None = None) -> None:
    """Running statistics kept per param group (Prodigy's ``d``) equal the reference's after each step.

    Every key of the differentiable optimizer's group state that the
    reference keeps in its param group is compared, over ``info.steps`` steps.
    """
    problem = Problem(info.shapes, device=device)
    opt, ref_params = _reference(info, row, problem)
    diffopt = get_diff_optim(opt, ref_params)
    if _group_state(diffopt) is None:
        raise NotApplicable("the optimizer keeps no running statistics per param group")
    fast = [p.detach().clone().requires_grad_() for p in ref_params]
    for step in range(1, info.steps + 1):
        fast = _diff_step(info, diffopt, problem, fast)
        _reference_step(opt, ref_params, problem)
        compared = 0
        for g, (ours, theirs) in enumerate(zip(_group_state(diffopt) or [], opt.param_groups)):
            for key in ours:
                if key in theirs:
                    _compare(f"step {step}, group {g}, {key!r}", ours[key], theirs[key], info.rtol, info.atol)
                    compared += 1
        assert compared, "no key of the group state is in the reference's param groups"
