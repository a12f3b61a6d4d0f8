"""How each param group steps: tensor by tensor, or laid out flat (one buffer a group).

The optimizer base (:mod:`higher_core._optimizer`) holds the plugin contract; a
:class:`GroupStepper` decides, group by group and step by step, how the rule
runs, and keeps what that needs between steps:

- **per tensor**: the rule's :meth:`~higher_core.optim.DifferentiableOptimizer.update`
  on the group's tensors as they are (complex ones as the rule's
  ``complex_parameters`` declares);
- **flat**: an element-wise rule (``scope = "element"``) with at least
  :data:`MIN_TENSORS` tensors of one dtype and device runs once on the group
  laid end to end (:mod:`higher_core._flat`, imported the first time a group
  qualifies). Same numbers, one kernel per operation instead of one per tensor;
  for a rule that sets ``fused``, the step is one autograd node
  (:mod:`higher_core._fused`).

Per-parameter state lives in the optimizer's ``param_state``, a
:class:`~higher_core._state_store.StateStore` where a flat group's state stays
laid out until somebody reads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from higher_core import _complex, _devices
from higher_core._state_store import StateStore

if TYPE_CHECKING:
    from higher_core._flat import FlatGroup
    from higher_core._optimizer import DifferentiableOptimizer, State

__all__ = ["MIN_TENSORS", "GroupStepper"]

#: The fewest tensors a group lays out flat. Laying out costs about two view-like operations per
#: tensor (its piece of the copy of the gradients, its view of the new weights) and a fixed part;
#: per tensor, the flat path saves every operation of the rule. Measured (one thread, the
#: many-tensors workload with 300 numbers per tensor, one inner step): Adam breaks even at 4
#: tensors and is 1.13x faster at 16; plain SGD (one operation per tensor) breaks even near 16.
MIN_TENSORS = 8


class GroupStepper:
    """Steps every param group of one differentiable optimizer (``rule``), choosing per group how.

    It keeps the flat layouts between steps; the optimizer it serves is passed to
    each call (and never stored: the optimizer holds the stepper, and a cycle
    would keep an unrolled graph alive until the garbage collector runs).
    """

    def __init__(self) -> None:
        #: by group number: the layout of the group's last flat step
        self.flat_groups: dict[int, FlatGroup] = {}

    def step_groups(self, rule: DifferentiableOptimizer, groups: list[dict[str, Any]], params: list[torch.Tensor],
                    grads: list[torch.Tensor | None]) -> list[torch.Tensor]:
        """One step of every group's parameters that have a gradient; see ``update_groups``."""
        new_params = list(params)
        for number, group in enumerate(groups):
            indices = [i for i in group["params"] if grads[i] is not None]
            if indices:
                group_params = [new_params[i] for i in indices]  # in an earlier group too: its new value
                group_grads: list[torch.Tensor] = [grads[i] for i in indices]  # type: ignore[misc]
                stepped = self._step_group(rule, number, group, indices, group_params, group_grads)
                for i, p in zip(indices, stepped):
                    new_params[i] = p
        return new_params

    def _step_group(self, rule: DifferentiableOptimizer, number: int, group: dict[str, Any], indices: list[int],
                    params: list[torch.Tensor], grads: list[torch.Tensor]) -> list[torch.Tensor]:
        store = rule.param_state
        lazy = isinstance(store, StateStore)
        layout = self._flat_layout(rule, number, group, indices, params, grads)
        pending = lazy and layout is not None and store.pending.get(number) is layout
        if lazy and not pending:
            store.settle(number)
        stored = store.raw_get if lazy else store.get  # reads that leave flat groups' state laid out
        existing = [] if pending else [stored(i) for i in indices]
        _devices.check_group(rule.optimizer_name, number, group, params, indices, existing,
                             layout.flat_state() if layout is not None and pending else None)
        if rule.group_state[number]:
            rule.group_state[number] = rule.update_group_state(group, rule.group_state[number], params, grads)
            group = {**group, **rule.group_state[number]}
        if layout is not None:
            updated = self._step_flat(rule, number, layout, pending, group, params, grads, existing)
            if updated is not None:
                return updated
        return self._step_per_tensor(rule, group, indices, params, grads, existing)

    def _step_flat(self, rule: DifferentiableOptimizer, number: int, layout: FlatGroup, pending: bool,
                   group: Mapping[str, Any], params: list[torch.Tensor], grads: list[torch.Tensor],
                   existing: list[State | None]) -> list[torch.Tensor] | None:
        """The group laid flat; ``None`` when its state cannot be laid out (it then steps per tensor)."""
        store = rule.param_state

        def init(flat: torch.Tensor) -> State:
            return rule.init_state(flat, group)

        update = rule.update
        if rule.fused:  # one autograd node per step; the module is loaded the first time a fused rule steps
            from higher_core import _fused

            update = _fused.fused_rule(rule)
        if pending:
            updated = layout.step_from_own_state(update, group, params, grads)
        else:
            states = None if all(not s for s in existing) else [
                s or rule.init_state(p, group) for p, s in zip(params, existing)]
            updated = layout.step(update, group, params, grads, states, init)
        if updated is not None and isinstance(store, StateStore):
            store.defer(number, layout)
        elif updated is not None:  # a plain dict assigned to param_state: fill it now
            store.update(zip(layout.indices, layout.per_tensor_states()))
        return updated

    @staticmethod
    def _step_per_tensor(rule: DifferentiableOptimizer, group: Mapping[str, Any], indices: list[int],
                         params: list[torch.Tensor], grads: list[torch.Tensor],
                         existing: list[State | None]) -> list[torch.Tensor]:
        states = [s or rule.init_state(p, group) for p, s in zip(params, existing)]
        if any(p.is_complex() for p in params):  # as declared: never an overridable method
            updated, new_states = _complex.step_complex(rule.complex_parameters, rule.update, group, params, grads,
                                                        states, type(rule).__name__, rule.optimizer_name)
        else:
            updated, new_states = rule.update(group, params, grads, states)
        for i, state in zip(indices, new_states):
            dict.__setitem__(rule.param_state, i, state)
        return updated

    def _flat_layout(self, rule: DifferentiableOptimizer, number: int, group: Mapping[str, Any], indices: list[int],
                     params: list[torch.Tensor], grads: list[torch.Tensor]) -> FlatGroup | None:
        """Group ``number``'s flat layout if this step can lay it out, else ``None`` (it steps per tensor).

        A group with a hyperparameter of one value per element (a tensor with
        dimensions, shaped for each parameter, not for the flat buffer), or one
        holding a parameter that another group also holds, steps per tensor.
        """
        if not rule.flat_weights or rule.scope != "element" or len(indices) < MIN_TENSORS:
            return None
        from higher_core import _flat  # the flat path, loaded the first time a group qualifies

        if (_flat.shaped_hyperparameters(group, rule.param_groups[number])
                or (rule._shared and not rule._shared.isdisjoint(indices))):  # its state is another group's too
            return None
        layout = self.flat_groups.get(number)
        if layout is not None and layout.holds(indices, params, grads):
            return layout
        lead = _flat.flat_layout(params, [rule._shapes[i] for i in indices], grads)
        if lead is None:
            return None
        if layout is None or not layout.fits(indices, params):
            layout = self.flat_groups[number] = _flat.FlatGroup(indices, params, lead)
        return layout

    def detached_leaves(self, params: list[torch.Tensor], new_params: list[torch.Tensor]) -> dict[int, torch.Tensor]:
        """Test mode: the flat groups' new weights as leaves, still views into one (detached) buffer each."""
        leaves: dict[int, torch.Tensor] = {}
        for layout in self.flat_groups.values():
            if layout.param_views and all(new_params[i] is v for i, v in zip(layout.indices, layout.param_views)):
                leaves.update(zip(layout.indices, layout.detached_params([params[i].requires_grad
                                                                          for i in layout.indices])))
        return leaves
