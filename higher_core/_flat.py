"""Flat fast weights: an element-wise rule stepped once over a param group laid end to end.

An element-wise rule (``scope = "element"``) gives each element a new value
that depends only on the same element of the parameter, its gradient and its
state, and on the hyperparameters. Laying a group's tensors end to end in one
buffer therefore changes no number, and turns one kernel (and one autograd
node) per tensor and operation into one per operation: the rule's own
:meth:`~higher_core.optim.DifferentiableOptimizer.update` runs on a one-tensor
list. The new fast weights and the new state tensors are handed out as views
into the new buffers, so everything outside (the patched module,
``param_state``, ``export_state``) sees the usual per-parameter tensors. At the
next step, when the group still holds exactly the views it was handed, the
buffers are used as they are; otherwise (a weight assigned by hand, a state
tensor replaced, truncation) they are laid out again with one ``torch.cat``.
The per-tensor state views are made only when somebody reads the state
(:mod:`higher_core._state_store`).

With batched tasks every tensor carries a leading task dimension ``[T, ...]``
and the buffer is ``[T, N]``.

A group is stepped per tensor instead (by the same rule, with the same numbers)
when laying it out does not pay or could change a number: fewer than
:data:`higher_core._stepping.MIN_TENSORS` tensors (the stepper checks that), mixed dtypes or devices, complex or empty tensors,
state that is not, key by key, either shaped like every parameter or one
value shared by all, or a hyperparameter tensor with dimensions (one value per
element, Meta-SGD's learned lrs: shaped for each parameter, not for the buffer).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from higher_core.compat import flatten_dense_tensors

__all__ = ["FlatGroup", "flat_layout", "shaped_hyperparameters"]

State = dict[str, Any]
Update = Callable[[Mapping[str, Any], list[torch.Tensor], list[torch.Tensor], list[State]],
                  "tuple[list[torch.Tensor], list[State]]"]
_SHARED_TYPES = (int, float, bool, str, type(None))


def shaped_hyperparameters(group: Mapping[str, Any], base: Mapping[str, Any]) -> bool:
    """Whether ``group`` holds a hyperparameter tensor with dimensions (per element), which a flat buffer cannot take.

    ``base`` is the group before overrides: where it holds a tuple (``betas``), a
    1-D tensor is the learned tuple itself, not a per-element value.
    """
    for key, value in group.items():
        if isinstance(value, tuple):
            if any(isinstance(v, torch.Tensor) and v.dim() > 0 for v in value):
                return True
        elif isinstance(value, torch.Tensor) and value.dim() > 0 and not (
                isinstance(base.get(key), tuple) and value.dim() == 1):
            return True
    return False


def flat_layout(params: Sequence[torch.Tensor], shapes: Sequence[tuple[int, ...]],
                grads: Sequence[torch.Tensor]) -> int | None:
    """The number of leading (task) dimensions if ``params`` can be laid end to end, else ``None``.

    Args:
        params: the group's fast weights that step now.
        shapes: their parameters' own shapes (without a task dimension).
        grads: their gradients.
    """
    first = params[0]
    lead = first.dim() - len(shapes[0])
    if lead not in (0, 1) or first.is_complex() or first.layout != torch.strided:
        return None
    lead_shape = first.shape[:lead]
    dtype, device = first.dtype, first.device
    for p, shape, g in zip(params, shapes, grads):
        if (p.dtype != dtype or p.device != device or p.dim() - len(shape) != lead or p.shape[:lead] != lead_shape
                or g.dtype != dtype or g.layout != torch.strided or p.numel() == 0):
            return None
    return lead


class FlatGroup:
    """One param group's stepping tensors laid end to end, and the buffers of its last flat step.

    Args:
        indices: the positions (into the fast weights) of the tensors laid out.
        params: those fast weights.
        lead: leading (task) dimensions shared by every tensor (0 or 1).
    """

    def __init__(self, indices: Sequence[int], params: Sequence[torch.Tensor], lead: int) -> None:
        self.indices = tuple(indices)
        self.lead = lead
        self.dtype = params[0].dtype
        self.shapes = [tuple(p.shape) for p in params]
        self.flat_shape = (*params[0].shape[:lead], -1)
        self.sizes = [math.prod(s[lead:]) for s in self.shapes]
        self.reshape = [len(s) != lead + 1 for s in self.shapes]  # a split piece of a vector has its shape
        self.one_call = lead == 0  # torch's flatten in one call: no task dimension only
        self.param_views: list[torch.Tensor] = []
        self.param_flat: torch.Tensor | None = None
        #: the last step's state: per-element tensors laid out, values shared by every tensor, in key order
        self.state_flat: dict[str, torch.Tensor] = {}
        self.shared: dict[str, Any] = {}
        self.keys: list[str] = []
        self.state_views: dict[str, list[torch.Tensor]] = {}  # what per_tensor_states handed out

    def fits(self, indices: Sequence[int], params: Sequence[torch.Tensor]) -> bool:
        """Whether this layout is the one of ``params`` at ``indices`` (positions and shapes)."""
        return self.indices == tuple(indices) and all(tuple(p.shape) == s for p, s in zip(params, self.shapes))

    def holds(self, indices: Sequence[int], params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor]) -> bool:
        """Whether ``params`` at ``indices`` are exactly the views of the last step, with gradients of their dtype.

        Cheaper than :func:`flat_layout` (no shape or device is read): what the
        last step laid out, it can lay out again.
        """
        views = self.param_views
        return (self.indices == tuple(indices) and len(views) == len(params)
                and all(p is v for p, v in zip(params, views)) and all(g.dtype is self.dtype for g in grads))

    def gather(self, tensors: Sequence[torch.Tensor], views: Sequence[torch.Tensor] = (),
               flat: torch.Tensor | None = None) -> torch.Tensor:
        """``tensors`` laid end to end: ``flat`` itself when they are exactly its ``views``, else a copy."""
        if flat is not None and len(views) == len(tensors) and all(a is b for a, b in zip(tensors, views)):
            return flat
        if self.one_call:  # one C++ call: contiguous views concatenated (differentiable, backward a split)
            return flatten_dense_tensors(tensors)
        return torch.cat([t.reshape(self.flat_shape) for t in tensors], dim=self.lead)

    def scatter(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Per-tensor views into ``flat``, shaped as the tensors laid out.

        One ``split`` (its backward is one ``cat``; a ``narrow`` per tensor would
        backward into a zero-filled copy of the whole buffer per tensor).
        """
        pieces = torch.split(flat, self.sizes, dim=self.lead)
        return [piece.view(shape) if reshape else piece for piece, shape, reshape in zip(pieces, self.shapes, self.reshape)]

    def per_tensor_states(self) -> list[State]:
        """The last step's state as one dict per tensor (views into the flat buffers)."""
        self.state_views = {key: self.scatter(value) for key, value in self.state_flat.items()}
        states: list[State] = [{} for _ in self.indices]
        for key in self.keys:
            for k, state in enumerate(states):
                state[key] = self.state_views[key][k] if key in self.state_views else self.shared[key]
        return states

    def flat_state(self) -> State:
        """The last step's state, per-element values as the flat buffers."""
        return {key: self.state_flat[key] if key in self.state_flat else self.shared[key] for key in self.keys}

    def detach_state(self) -> None:
        """Cut the flat state from the graph (test mode, truncation)."""
        self.state_flat = {key: value.detach() for key, value in self.state_flat.items()}
        self.shared = {key: value.detach() if isinstance(value, torch.Tensor) else value
                       for key, value in self.shared.items()}
        self.state_views = {}

    def detached_params(self, requires_grad: Sequence[bool]) -> list[torch.Tensor]:
        """The last step's weights as leaves: views into the detached buffer, ``requires_grad`` as given."""
        assert self.param_flat is not None
        self.param_flat = self.param_flat.detach()
        self.param_views = self.scatter(self.param_flat)
        for view, flag in zip(self.param_views, requires_grad):
            view.requires_grad_(flag)
        return self.param_views

    def _gather_states(self, states: Sequence[State], params: Sequence[torch.Tensor]) -> State | None:
        """One state for the flat buffer: per-element tensors laid end to end, shared values once."""
        keys = states[0].keys()
        if any(s.keys() != keys for s in states):
            return None
        flat: State = {}
        for key in keys:
            values = [s[key] for s in states]
            first = values[0]
            if all(isinstance(v, torch.Tensor) and v.shape == p.shape and v.dtype == p.dtype
                   and v.device == p.device for v, p in zip(values, params)):
                flat[key] = self.gather(values, self.state_views.get(key, ()), self.state_flat.get(key))
            elif isinstance(first, torch.Tensor):
                if not all(v is first for v in values):  # distinct tensors: their values may differ
                    return None
                flat[key] = first
            elif isinstance(first, _SHARED_TYPES) and all(type(v) is type(first) and v == first for v in values):
                flat[key] = first
            else:
                return None
        return flat

    def step(self, update: Update, group: Mapping[str, Any], params: Sequence[torch.Tensor],
             grads: Sequence[torch.Tensor], states: Sequence[State] | None,
             init_state: Callable[[torch.Tensor], State]) -> list[torch.Tensor] | None:
        """One step of ``update`` on the flat buffers; ``None`` (nothing done) if the state cannot be laid flat.

        Args:
            update: the rule's ``update(group, params, grads, states)``.
            group: the group's hyperparameters.
            params, grads: the tensors laid out and their gradients.
            states: their states; ``None`` when none has any yet (``init_state``
                then makes the flat state).
            init_state: the rule's ``init_state`` for a parameter (called on the flat buffer).

        Returns:
            The new fast weights (views into the new buffer). The new state stays
            flat until :meth:`per_tensor_states`.
        """
        if states is None:
            return self._step(update, group, params, grads, None, init_state)
        gathered = self._gather_states(states, params)
        return None if gathered is None else self._step(update, group, params, grads, gathered, init_state)

    def step_from_own_state(self, update: Update, group: Mapping[str, Any], params: Sequence[torch.Tensor],
                            grads: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """:meth:`step`, continuing from this layout's own flat state (nobody has read it since its step)."""
        return self._step(update, group, params, grads, self.flat_state(), None)

    def _step(self, update: Update, group: Mapping[str, Any], params: Sequence[torch.Tensor],
              grads: Sequence[torch.Tensor], flat_state: State | None,
              init_state: Callable[[torch.Tensor], State] | None) -> list[torch.Tensor]:
        flat_param = self.gather(params, self.param_views, self.param_flat)
        if flat_state is None:
            assert init_state is not None
            flat_state = init_state(flat_param)
        flat_grad = self.gather(grads)
        new_params, new_states = update(group, [flat_param], [flat_grad], [flat_state])
        if len(new_params) != 1 or len(new_states) != 1 or new_params[0].shape != flat_param.shape:
            raise TypeError(
                "an element-wise rule (scope = 'element') must return one new parameter of the shape of each "
                f"parameter it is given; update() returned {len(new_params)} for one. Declare scope = 'tensor' "
                "if the rule needs each tensor's own shape"
            )
        self.param_flat = new_params[0]
        self.param_views = self.scatter(self.param_flat)
        self.keys = list(new_states[0])
        self.state_flat = {key: value for key, value in new_states[0].items()
                           if isinstance(value, torch.Tensor) and value.shape == flat_param.shape}
        self.shared = {key: value for key, value in new_states[0].items() if key not in self.state_flat}
        self.state_views = {}
        return self.param_views
