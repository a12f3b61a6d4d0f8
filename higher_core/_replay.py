"""The state an inner loop carries from step to step, taken out and put back (checkpointed unrolls).

To recompute a stretch of inner steps during the backward, :mod:`higher_core.unrolling` must
put the inner loop back where the stretch began: everything ``step_fn`` reads and
``diffopt.step`` writes. That is

- the fast weights (``fmodel.fast_params``);
- each rule's per-parameter state (``param_state``) and per-group running state
  (``group_state``); a batched optimizer holds one rule per task for non-element-wise rules;
- the patched module's buffers (BatchNorm's running statistics), which its forward updates in
  place;
- the random number generators of the CPU and of the fast weights' CUDA devices (dropout).

:class:`LoopState` is the first two as a flat list of tensors (what a checkpoint keeps and what
autograd differentiates) plus the structure to rebuild them; :class:`Frame` is everything, kept
by reference, to put the user's objects back exactly as they were after a recomputation.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Frame", "LoopState", "RNGState", "buffers_of", "cuda_devices", "restored_afterwards", "rules_of",
           "set_buffers"]

_TENSOR = object()  # where a tensor sat in a stored structure (the structure keeps no tensor alive)


def rules_of(diffopt: Any) -> list[Any]:
    """The differentiable optimizers holding ``diffopt``'s state: itself, or a batched one's per-task rules."""
    return list(getattr(diffopt, "_rules", None) or [diffopt])


def _flatten(value: Any, path: tuple[Any, ...], out: list[tuple[tuple[Any, ...], Any]]) -> Any:
    """``value`` with every tensor replaced by a marker; the tensors appended to ``out`` with their paths."""
    if isinstance(value, dict):
        return {k: _flatten(v, (*path, k), out) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and type(value) in (list, tuple):
        return type(value)(_flatten(v, (*path, i), out) for i, v in enumerate(value))
    if isinstance(value, torch.Tensor):
        out.append((path, value))
        return _TENSOR
    return value


def _rebuild(template: Any, tensors: Iterator[torch.Tensor]) -> Any:
    if isinstance(template, dict):
        return {k: _rebuild(v, tensors) for k, v in template.items()}
    if isinstance(template, (list, tuple)) and type(template) in (list, tuple):
        return type(template)(_rebuild(v, tensors) for v in template)
    return next(tensors) if template is _TENSOR else template


def _settled(state: Any) -> dict[Any, Any]:
    settle = getattr(state, "settle", None)
    if settle is not None:  # a StateStore: build the state flat steps left laid out
        settle()
    return dict(dict.items(state))


@dataclass
class LoopState:
    """The fast weights and optimizer state of an inner loop: ``tensors`` and where each goes.

    ``paths`` names each tensor (``("fast", 3)``, ``("rules", 0, "param_state", 3, "exp_avg")``)
    so that two states can be compared and a tensor's counterpart found.
    """

    template: Any
    paths: list[tuple[Any, ...]]
    tensors: list[torch.Tensor]

    @classmethod
    def capture(cls, fmodel: Any, diffopt: Any) -> LoopState:
        """The state ``fmodel`` and ``diffopt`` hold now."""
        tree = {"fast": list(fmodel.fast_params),
                "rules": [{"param_state": _settled(rule.param_state),
                           "group_state": [dict(s) for s in rule.group_state]} for rule in rules_of(diffopt)]}
        found: list[tuple[tuple[Any, ...], Any]] = []
        template = _flatten(tree, (), found)
        return cls(template, [p for p, _ in found], [t for _, t in found])

    def load(self, fmodel: Any, diffopt: Any, tensors: list[torch.Tensor] | None = None) -> None:
        """Make ``fmodel`` and ``diffopt`` hold this state (with ``tensors`` in place of this state's)."""
        tree = _rebuild(self.template, iter(self.tensors if tensors is None else tensors))
        fmodel.update_params(tree["fast"])
        for rule, saved in zip(rules_of(diffopt), tree["rules"]):
            _put_state(rule, saved["param_state"], saved["group_state"])

    def same_layout(self, other: LoopState) -> bool:
        """Whether ``other`` has the same tensors in the same places (the same structure otherwise)."""
        return self.paths == other.paths and _same_constants(self.template, other.template)


def _same_constants(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except (RuntimeError, TypeError, ValueError):  # (a non-tensor leaf without a plain ==)
        return False


def _put_state(rule: Any, param_state: dict[Any, Any], group_state: list[dict[str, Any]]) -> None:
    store = rule.param_state
    pending = getattr(store, "pending", None)
    if pending is not None:
        pending.clear()  # the flat groups' next step lays the state out again from these
    dict.clear(store)
    dict.update(store, param_state)
    rule.group_state[:] = group_state


def buffers_of(fmodel: Any) -> list[torch.Tensor]:
    """The buffers ``fmodel``'s forward reads and updates (a batched module's per-task ones)."""
    task_buffers = fmodel.__dict__.get("_task_buffers")
    return list(task_buffers) if task_buffers is not None else list(fmodel.buffers())


@torch.no_grad()
def set_buffers(fmodel: Any, values: list[torch.Tensor]) -> None:
    """Give ``fmodel``'s buffers ``values`` (copied: the module goes on updating its own).

    Through ``.data``, as BatchNorm's own update of its running statistics does: the graph's
    nodes that saved a buffer must not see a new version (a training-mode BatchNorm's backward
    does not read the statistics; an evaluation-mode one does not change them).
    """
    if "_task_buffers" in fmodel.__dict__:
        fmodel.__dict__["_task_buffers"] = [v.clone() for v in values]
        return
    for buffer, value in zip(fmodel.buffers(), values):
        buffer.data.copy_(value)


class RNGState:
    """The CPU generator's state and that of each CUDA device in ``devices``."""

    def __init__(self, devices: list[torch.device]) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda = {d: torch.cuda.get_rng_state(d) for d in devices}

    def set(self) -> None:
        torch.set_rng_state(self.cpu)
        for device, state in self.cuda.items():
            torch.cuda.set_rng_state(state, device)


def cuda_devices(tensors: list[torch.Tensor]) -> list[torch.device]:
    return sorted({t.device for t in tensors if t.device.type == "cuda"}, key=str)


class Frame:
    """Everything of ``fmodel`` and ``diffopt`` a recomputation changes, kept to be put back as it was.

    The fast-weight history and the state are kept by reference (the tensors of the unrolled
    graph), the buffers by value, and the generators' states.
    """

    def __init__(self, fmodel: Any, diffopt: Any) -> None:
        d = fmodel.__dict__
        self.history = None if d["_fast_params"] is None else list(d["_fast_params"])
        self.initial = d.get("_initial")
        self.tracking = fmodel.track_higher_grads
        self.state = LoopState.capture(fmodel, diffopt)
        self.buffers = [b.clone() for b in buffers_of(fmodel)]
        self.rng = RNGState(cuda_devices(self.state.tensors))

    def restore(self, fmodel: Any, diffopt: Any) -> None:
        fmodel.track_higher_grads = self.tracking
        self.state.load(fmodel, diffopt)  # (installs the latest weights in the patched copy's slots)
        fmodel.__dict__["_fast_params"] = self.history
        if "_initial" in fmodel.__dict__:
            fmodel.__dict__["_initial"] = self.initial
        set_buffers(fmodel, self.buffers)
        self.rng.set()


@contextmanager
def restored_afterwards(fmodel: Any, diffopt: Any) -> Iterator[Frame]:
    """Run the body, then put ``fmodel`` and ``diffopt`` back as they were (even if it raised)."""
    frame = Frame(fmodel, diffopt)
    try:
        yield frame
    finally:
        frame.restore(fmodel, diffopt)
