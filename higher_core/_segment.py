"""One checkpointed segment of an unroll: an autograd node that recomputes its inner steps in the backward.

Forward: from the state ``s_a`` (fast weights and optimizer state) at the segment's start, run
``step_fn`` for steps ``a .. b-1`` without building a graph (test mode) and return ``s_b``.
Backward: put the inner loop back at ``s_a`` (the saved inputs, with their graph; the buffers and
generators as they were at ``a``), run the same steps again *with* a graph and give the
vector-Jacobian product

.. math::
    \\bar s_a = \\Big(\\frac{\\partial s_b}{\\partial s_a}\\Big)^\\top \\bar s_b, \\qquad
    \\bar\\phi = \\Big(\\frac{\\partial s_b}{\\partial \\phi}\\Big)^\\top \\bar s_b

for the state and for the tensors ``phi`` the steps read besides it (learned hyperparameters,
``inputs=``). The recomputation must replay the forward: its result is compared with the
forward's, and a difference is an error that names what could not be replayed. The backward gives
first-order meta-gradients (no ``create_graph`` through it).
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable
from typing import Any

import torch

from higher_core.compat import backward_keeps_graph
from higher_core._replay import LoopState, RNGState, buffers_of, cuda_devices, restored_afterwards, set_buffers

__all__ = ["Segment", "SegmentFunction"]

StepFn = Callable[[Any, Any, int], Any]


class Segment:
    """Steps ``start .. stop-1`` of an unroll: what its forward and backward share."""

    def __init__(self, step_fn: StepFn, fmodel: Any, diffopt: Any, start: int, stop: int,
                 state: LoopState, keep_graph: bool = False) -> None:
        self._held: tuple[StepFn, Any, Any] | None = (step_fn, fmodel, diffopt)
        self._weak = [_weak(step_fn), _weak(fmodel), _weak(diffopt)]
        self.start, self.stop = start, stop
        self.state_in = state
        self.num_state = len(state.tensors)
        self.keep_graph = keep_graph  # the steps read a graph made before them: each backward goes through it
        self.buffers_in = [b.clone() for b in buffers_of(fmodel)]
        self.rng_in = RNGState(cuda_devices(state.tensors))
        self.state_out: LoopState | None = None
        self.buffers_out: list[torch.Tensor] = []
        self.differentiable: list[bool] = []

    def release(self) -> None:
        """Drop the references to the state's tensors (autograd keeps what the backward needs)."""
        self.state_in.tensors = []
        if self.state_out is not None:
            self.state_out.tensors = []

    def let_go(self) -> None:
        """After the last backward through this node: hold ``step_fn``, ``fmodel`` and ``diffopt`` weakly.

        The fast weights ``fmodel`` holds are this node's outputs: a strong reference back is a
        cycle through autograd's graph, which Python's garbage collector cannot see, so it is
        broken here, by the backward that frees the graph (not one with ``retain_graph=True``).
        A graph dropped without any backward stays in that cycle: evaluate under
        ``torch.no_grad()`` (the plain loop runs) or unroll without ``checkpoint=``.
        """
        self._held = None

    def _objects(self) -> tuple[StepFn, Any, Any]:
        if self._held is not None:
            return self._held
        objects = tuple(ref() for ref in self._weak)
        if any(o is None for o in objects):
            raise RuntimeError(
                "unroll(checkpoint=...): a second backward through a checkpointed segment needs step_fn, fmodel "
                "and diffopt, which are gone; keep references to them until the last backward"
            )
        return objects  # type: ignore[return-value]

    @property
    def step_fn(self) -> StepFn:
        return self._objects()[0]

    @property
    def fmodel(self) -> Any:
        return self._objects()[1]

    @property
    def diffopt(self) -> Any:
        return self._objects()[2]

    def _steps(self) -> None:
        for k in range(self.start, self.stop):
            self.step_fn(self.fmodel, self.diffopt, k)

    def run_forward(self, tensors: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        """The segment in test mode from ``tensors`` (the state at ``start``); the state at ``stop``."""
        leaves = [t.detach().requires_grad_(t.requires_grad) for t in tensors]
        with torch.enable_grad(), restored_afterwards(self.fmodel, self.diffopt) as frame:
            self.fmodel.track_higher_grads = False
            self.state_in.load(self.fmodel, self.diffopt, leaves)
            self._steps()
            out = LoopState.capture(self.fmodel, self.diffopt)
            self.buffers_out = [b.clone() for b in buffers_of(self.fmodel)]
            frame.buffers = self.buffers_out  # the buffers and generators go on from the segment's end
            frame.rng = RNGState(list(frame.rng.cuda))
        self.state_out = out
        was = {p: t.requires_grad for p, t in zip(self.state_in.paths, tensors)}
        self.differentiable = [was.get(p, t.is_floating_point() or t.is_complex())
                               for p, t in zip(out.paths, out.tensors)]
        return [t.detach() for t in out.tensors]

    def run_backward(self, inputs: tuple[torch.Tensor, ...], outputs: tuple[torch.Tensor, ...],
                     grads: tuple[torch.Tensor | None, ...]) -> list[torch.Tensor | None]:
        """Recompute the segment from ``inputs`` (state, then extras) and return their gradients.

        The state is recomputed from detached copies: the gradients of the extras must not
        also flow through the state's own history (autograd follows that one from this node).
        """
        if torch.is_grad_enabled():
            raise RuntimeError(
                "unroll(checkpoint=...): a checkpointed unroll gives meta-gradients, not gradients of "
                "meta-gradients (create_graph=True in the outer backward); unroll without checkpoint= for those"
            )
        n = self.num_state
        leaves = [t.detach().requires_grad_(t.requires_grad) for t in inputs[:n]]
        with torch.enable_grad(), restored_afterwards(self.fmodel, self.diffopt):
            set_buffers(self.fmodel, self.buffers_in)
            self.rng_in.set()
            self.state_in.load(self.fmodel, self.diffopt, leaves)
            self._steps()
            again = LoopState.capture(self.fmodel, self.diffopt)
            self._check_replayed(again, outputs)
            pairs = []
            for path, new, grad, differentiable in zip(again.paths, again.tensors, grads, self.differentiable):
                if new.requires_grad and not differentiable:
                    raise RuntimeError(
                        f"unroll(checkpoint=...): the inner-loop state {_name(path)} did not depend on anything "
                        f"differentiable at step {self.start} but does by step {self.stop}; a checkpoint cannot "
                        "follow that change. Take a few plain steps before unroll() (diffopt.step), or unroll "
                        "without checkpoint="
                    )
                if grad is not None and new.requires_grad:
                    pairs.append((new, grad))
            differentiated = [*leaves, *inputs[n:]]
            wrt = [i for i, t in enumerate(differentiated) if t.requires_grad]
            result: list[torch.Tensor | None] = [None] * len(inputs)
            if pairs and wrt:
                got = torch.autograd.grad([p for p, _ in pairs], [differentiated[i] for i in wrt],
                                          [g for _, g in pairs], allow_unused=True,
                                          retain_graph=self.keep_graph)
                for i, g in zip(wrt, got):
                    result[i] = g
        return result

    def _check_replayed(self, again: LoopState, outputs: tuple[torch.Tensor, ...]) -> None:
        """Refuse a recomputation that did not reproduce the forward (and say what may be the cause)."""
        assert self.state_out is not None
        where = f"steps {self.start}..{self.stop - 1}"
        if not again.same_layout(self.state_out):
            raise RuntimeError(
                f"unroll(checkpoint=...): recomputing {where} gave an optimizer state of another structure than "
                "the forward did; step_fn must do the same thing each time it is called with the same step index"
            )
        for i, (b, expected) in enumerate(zip(buffers_of(self.fmodel), self.buffers_out)):
            if not torch.equal(b, expected):
                raise RuntimeError(
                    f"unroll(checkpoint=...): recomputing {where} did not replay buffer {i} of the patched module "
                    "(running statistics): step_fn must update the buffers the same way each time it is called"
                )
        for path, new, old in zip(again.paths, again.tensors, outputs):
            if not torch.allclose(new.detach(), old, rtol=1e-5, atol=1e-7, equal_nan=True):
                difference = (new.detach() - old).abs().max().item()
                raise RuntimeError(
                    f"unroll(checkpoint=...): recomputing {where} did not replay the forward: {_name(path)} differs "
                    f"by up to {difference:.3g}. The recomputation restores the module's buffers and torch's CPU "
                    "and CUDA generators; randomness from elsewhere (Python's random, numpy, a torch.Generator "
                    "of your own) or data that changes between calls cannot be replayed: make step_fn "
                    "a function of its step index"
                )


def _name(path: tuple[Any, ...]) -> str:
    if path[0] == "fast":
        return f"fast weight {path[1]}"
    rule, kind, *rest = path[1:]
    return f"{kind}[{']['.join(map(repr, rest))}]" + (f" (task rule {rule})" if rule else "")


def _weak(obj: Any) -> Callable[[], Any]:
    """A weak reference to ``obj`` (a bound method's too), or a strong one where none can be made."""
    try:
        return weakref.WeakMethod(obj) if inspect.ismethod(obj) else weakref.ref(obj)
    except TypeError:
        return lambda: obj


class SegmentFunction(torch.autograd.Function):
    """The autograd node of one :class:`Segment`: inputs are the state then the extras, outputs the new state."""

    @staticmethod
    def forward(ctx: Any, segment: Segment, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        outputs = segment.run_forward(inputs[:segment.num_state])
        ctx.segment = segment
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(*inputs, *outputs)
        ctx.mark_non_differentiable(*[t for t, d in zip(outputs, segment.differentiable) if not d])
        return tuple(outputs)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        saved = ctx.saved_tensors
        n = len(saved) - len(grads)
        try:
            return (None, *ctx.segment.run_backward(saved[:n], saved[n:], grads))
        finally:
            if backward_keeps_graph() is not True:  # (unknown, torch 2.4: let go; a second backward then
                ctx.segment.let_go()                 # needs the caller to hold step_fn, fmodel and diffopt)
