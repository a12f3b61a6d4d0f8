"""The batched differentiable optimizer: one step for ``T`` independent inner loops.

It drives the installed plugin's rule, unchanged, on fast weights with a leading
task dimension. How depends on the rule's declared ``scope`` (the contract's
``ClassVar``; a rule that declares none counts as ``"global"``):

- ``"element"``: the rule is element-wise, so it runs once on the stacked
  tensors (``[T, *shape]``); its state is stacked too (Adam's moments
  ``[T, *shape]``), step counts stay shared numbers.
- ``"tensor"`` / ``"global"`` (Adafactor's factored moments, Muon's
  orthogonalisation, Prodigy's global estimate): statistics span a tensor or
  every parameter, so each task is stepped by its own copy of the rule, which
  gives each task exactly the numbers it would get alone.
- A rule with its own ``step`` (LBFGS, which re-evaluates a closure) is refused.

Gradients of all tasks come from one ``autograd.grad`` of the summed per-task
losses (tasks share nothing, so task ``t``'s slice is its own gradient).
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping, Sequence
from typing import Any

import torch

from higher_core import _higher_compat, _step_checks
from higher_core._optimizer import DifferentiableOptimizer, GradCallback, State
from higher_core._overrides import Override
from higher_core.batched import _overrides as per_task
from higher_core.batched._errors import BatchingError
from higher_core.batched._module import BatchedPatchedModule, _check_tasks

__all__ = ["BatchedDifferentiableOptimizer", "scope_of"]


def scope_of(diff_type: type[DifferentiableOptimizer]) -> str:
    """The rule's declared scope: ``"element"``, ``"tensor"`` or ``"global"`` (the default)."""
    return getattr(diff_type, "scope", "global")


class BatchedDifferentiableOptimizer:
    """A differentiable optimizer stepping ``T`` tasks' fast weights (each ``[T, *shape]``) at once.

    Built like a :class:`~higher_core.optim.DifferentiableOptimizer` (usually through
    ``innerloop_ctx(..., tasks=T)`` or ``get_diff_optim(..., tasks=T)``); every
    task starts from the reference optimizer's state.

    Args:
        diff_type: the plugin's differentiable optimizer class for ``type(other)``.
        other, reference_params, device, grad_callback, track_higher_grads, ``**kwargs``:
            as for :class:`~higher_core.optim.DifferentiableOptimizer`.
        tasks: the number of tasks ``T``.
        fmodel: a :class:`BatchedPatchedModule` with the same ``tasks``.
        override: as usual; a tensor value of shape ``[T]`` gives task ``t`` entry ``t``.

    Raises:
        BatchingError: the rule cannot be batched (it has its own ``step``).

    Example:
        >>> import torch, higher_core
        >>> model = torch.nn.Linear(2, 1)
        >>> opt = torch.optim.Adam(model.parameters(), lr=0.1)
        >>> diffopt = higher_core.optim.get_diff_optim(opt, model.parameters(), tasks=3)
        >>> fast = [p.expand(3, *p.shape) for p in model.parameters()]
        >>> x = torch.randn(3, 4, 2)
        >>> losses = (x @ fast[0].transpose(1, 2) + fast[1].unsqueeze(1)).pow(2).mean((1, 2))
        >>> fast = diffopt.step(losses, params=fast)
        >>> diffopt.param_state[0]["exp_avg"].shape
        torch.Size([3, 1, 2])
    """

    def __init__(self, diff_type: type[DifferentiableOptimizer], other: torch.optim.Optimizer,
                 reference_params: Iterable[torch.Tensor], tasks: int,
                 fmodel: BatchedPatchedModule | None = None, device: torch.device | str | None = None,
                 override: Override | None = None, grad_callback: GradCallback | None = None,
                 track_higher_grads: bool | None = None, **kwargs: Any) -> None:
        self.tasks = _check_tasks(tasks)
        name = diff_type.__name__
        if diff_type.step is not DifferentiableOptimizer.step:
            raise BatchingError(
                f"{name} has its own step (it re-evaluates a closure, as LBFGS's line search does), which "
                f"cannot be batched over tasks: run one inner loop per task (no tasks=)"
            )
        if fmodel is not None and not (isinstance(fmodel, BatchedPatchedModule) and fmodel.tasks == tasks):
            raise ValueError(
                f"with tasks={tasks}, fmodel must be a batched module with the same tasks "
                f"(higher_core.monkeypatch(model, tasks={tasks})), got {type(fmodel).__name__}"
                + (f" with tasks={fmodel.tasks}" if isinstance(fmodel, BatchedPatchedModule) else "")
            )
        reference = list(reference_params)
        # the first rule holds the fmodel for its track_higher_grads flag only: the steps are taken here
        rule = diff_type(other, reference, fmodel=fmodel, device=device, grad_callback=grad_callback,  # type: ignore[arg-type]
                         track_higher_grads=track_higher_grads, **kwargs)
        # element-wise rules step the stacked tensors; a running statistic per param group would mix the tasks
        self.scope = scope_of(diff_type) if not any(rule.group_state) else "global"
        self._rules = [rule] + [diff_type(other, reference, device=device, **kwargs)
                                for _ in range(self.tasks - 1 if self.scope != "element" else 0)]
        self._shapes = [tuple(p.shape) for p in reference]
        self._fmodel = fmodel
        self._override: Override = dict(override) if override else {}
        self._base_groups = self._groups_for_step(None, validate=True)
        if self.scope == "element":  # imported state: one copy per task of what is shaped like the parameter
            for i, state in rule.param_state.items():
                for key, value in state.items():
                    if isinstance(value, torch.Tensor) and tuple(value.shape) == self._shapes[i]:
                        state[key] = value.unsqueeze(0).repeat(self.tasks, *[1] * value.dim())

    @property
    def track_higher_grads(self) -> bool:
        """Whether steps build a graph; the fmodel's flag when there is one (kept by the first rule)."""
        return self._rules[0].track_higher_grads

    @track_higher_grads.setter
    def track_higher_grads(self, value: bool) -> None:
        self._rules[0].track_higher_grads = value

    # -- what the usual optimizer exposes ------------------------------------------------------
    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The param groups (hyperparameters and parameter indices), shared by every task."""
        return self._rules[0].param_groups

    @property
    def defaults(self) -> dict[str, Any]:
        return self._rules[0].defaults

    @property
    def state(self) -> Sequence[MutableMapping[int, State]]:
        """The old ``higher`` layout of :attr:`param_state`: ``state[group][position in group]``."""
        return _higher_compat.GroupedState(self.param_state, [list(g["params"]) for g in self.param_groups])

    @property
    def param_state(self) -> dict[int, State]:
        """Per-parameter state; per-task tensors are stacked (``[T, ...]``), shared numbers stay numbers."""
        if self.scope == "element":
            return self._rules[0].param_state
        stacked: dict[int, State] = {}
        for i in self._rules[0].param_state:
            states = [rule.param_state[i] for rule in self._rules]
            stacked[i] = {key: self._stack([s[key] for s in states]) for key in states[0]}
        return stacked

    @staticmethod
    def _stack(values: list[Any]) -> Any:
        if isinstance(values[0], torch.Tensor):
            return torch.stack(values)
        if all(v == values[0] for v in values):
            return values[0]
        return torch.tensor(values)

    def state_of_task(self, task: int) -> dict[int, State]:
        """Task ``task``'s state, shaped as a single inner loop's (what it would hold alone)."""
        if self.scope != "element":
            return self._rules[task].param_state
        out: dict[int, State] = {}
        for i, state in self._rules[0].param_state.items():
            shape = self._shapes[i]
            out[i] = {}
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.dim() == len(shape) + 1 and value.shape[0] == self.tasks:
                    value = value[task]
                    if tuple(value.shape) != shape and value.numel() == 1:
                        value = value.reshape(())  # a per-task scalar, held as [T, 1, ..., 1]
                out[i][key] = value
        return out

    # -- the step ------------------------------------------------------------------------------
    def _groups_for_step(self, override: Override | None, validate: bool = False) -> list[dict[str, Any]]:
        """The param groups for one step, per-task values as ``[T]`` tensors; each task's view of the
        overrides is validated by the rule (at construction, and at a step given an override; the
        constructor's groups are kept for the steps given none)."""
        if not override and not validate:
            return self._base_groups
        merged = {**self._override, **(override or {})}
        rule = self._rules[0]
        if not merged:
            return rule.param_groups
        view, found = per_task.per_task_views(merged, rule.param_groups, self.tasks, 0)
        for t in range(1, self.tasks if found else 1):
            rule.groups_for_step(per_task.per_task_views(merged, rule.param_groups, self.tasks, t)[0])
        return per_task.substitute(rule.groups_for_step(view), found)

    def step(self, loss: torch.Tensor, params: Iterable[torch.Tensor] | None = None,
             override: Override | None = None, grad_callback: GradCallback | None = None,
             **kwargs: Any) -> list[torch.Tensor]:
        """One differentiable step of every task; returns the new fast weights (each ``[T, *shape]``).

        Args:
            loss: the per-task losses, shape ``[T]`` (a scalar is taken as their sum).
            params: the stacked fast weights; defaults to ``fmodel``'s latest.
            override: hyperparameters for this step (a ``[T]`` tensor: one value per task).
            grad_callback: replaces the constructor's; it receives the stacked gradients.
        """
        if kwargs:
            raise TypeError(f"step() got unexpected keyword argument(s): {', '.join(sorted(kwargs))}")
        if callable(loss) and not isinstance(loss, torch.Tensor):
            raise BatchingError("step(): a closure cannot be batched over tasks; pass the per-task losses, shape "
                                f"[{self.tasks}]")
        params = self._fast_weights(params)
        if isinstance(loss, torch.Tensor) and loss.dim() != 0 and tuple(loss.shape) != (self.tasks,):
            raise ValueError(f"step(loss): give the per-task losses, shape [{self.tasks}] (or their sum, a "
                             f"scalar), got shape {tuple(loss.shape)}")
        groups = self._groups_for_step(override)
        total = loss.sum() if isinstance(loss, torch.Tensor) and loss.dim() else loss
        grads = self._rules[0].gradients(total, params, grad_callback)  # checks the loss as an unbatched step
        if self.scope == "element":
            new_params = self._element_step(groups, params, grads)
        else:
            new_params = self._per_task_step(groups, params, grads)
        # the unbatched end of a step (test mode detaches every weight, stepped or not; the fmodel is updated)
        new_params = self._rules[0].finish_step(params, new_params)
        if not self.track_higher_grads:
            for rule in self._rules[1:]:
                rule.detach_state()
        return new_params

    def _element_step(self, groups: list[dict[str, Any]], params: list[torch.Tensor],
                      grads: list[torch.Tensor | None]) -> list[torch.Tensor]:
        """The rule once on the stacked tensors. A group with per-task values is stepped one parameter
        at a time, each value shaped to broadcast against that parameter."""
        rule = self._rules[0]
        if not any(per_task.has_per_task(g, self.tasks) for g in groups):
            return rule.update_groups(groups, params, grads)
        real_view = rule.complex_parameters == "real_view"
        new_params = list(params)
        for number, group in enumerate(groups):
            pieces = [group] if not per_task.has_per_task(group, self.tasks) else [
                {**per_task.for_parameter(group, self.tasks, params[i], real_view), "params": [i]}
                for i in group["params"]]
            for piece in pieces:
                call = [{**g, "params": []} for g in groups]
                call[number] = piece  # the group's own position: its running state, its device checks
                stepped = rule.update_groups(call, new_params, grads)  # a parameter in two groups: in order
                for i in piece["params"]:
                    new_params[i] = stepped[i]
        return new_params

    def _per_task_step(self, groups: list[dict[str, Any]], params: list[torch.Tensor],
                       grads: list[torch.Tensor | None]) -> list[torch.Tensor]:
        """Each task stepped by its own copy of the rule, then stacked."""
        columns = []
        for t, rule in enumerate(self._rules):
            task_groups = [per_task.for_task(g, self.tasks, t) for g in groups]
            columns.append(rule.update_groups(task_groups, [p[t] for p in params],
                                              [None if g is None else g[t] for g in grads]))
        return [p if g is None else torch.stack([c[i] for c in columns])
                for i, (p, g) in enumerate(zip(params, grads))]

    def _fast_weights(self, params: Iterable[torch.Tensor] | None) -> list[torch.Tensor]:
        if params is None:
            if self._fmodel is None:
                raise ValueError("step() needs params= (the stacked fast weights) because this optimizer was "
                                 "created without fmodel")
            return list(self._fmodel.fast_params)
        params = _step_checks.check_params(params)
        if len(params) != len(self._shapes):
            raise ValueError(f"step() got {len(params)} parameters but the optimizer was built for "
                             f"{len(self._shapes)}; pass every fast weight, in the order of reference_params")
        for i, (p, shape) in enumerate(zip(params, self._shapes)):
            if tuple(p.shape) != (self.tasks, *shape):
                raise ValueError(f"step(): fast weight {i} must have shape {(self.tasks, *shape)} (tasks first), "
                                 f"got {tuple(p.shape)}")
        return params

    # -- cutting the graph, handing state back ----------------------------------------------------
    def detach_state(self) -> None:
        """Detach every state tensor from the graph."""
        for rule in self._rules:
            rule.detach_state()

    def truncate(self) -> None:
        """Cut the unrolled graph here: the state and (with an ``fmodel``) the fast weights are detached."""
        self.detach_state()
        if self._fmodel is not None:
            self._fmodel.detach_()

    def export_state(self, opt: torch.optim.Optimizer, task: int | None = None) -> None:
        """Write task ``task``'s state into ``opt`` (the optimizer this was built from).

        There are ``T`` states, so the task must be named.
        """
        if task is None or isinstance(task, bool) or not isinstance(task, int) or not -self.tasks <= task < self.tasks:
            raise ValueError(f"export_state: a batched optimizer holds {self.tasks} states; pass task= (an int in "
                             f"[0, {self.tasks})) to say which one to export, got {task!r}")
        rule = self._rules[0] if self.scope == "element" else self._rules[task]
        kept = rule.param_state
        rule.param_state = self.state_of_task(task)
        try:
            rule.export_state(opt)
        finally:
            rule.param_state = kept

    def __repr__(self) -> str:
        return (f"Batched({type(self._rules[0]).__name__}, tasks={self.tasks}, scope={self.scope!r}, "
                f"{len(self.param_groups)} param group(s), {len(self._shapes)} parameters)")
