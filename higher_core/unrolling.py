"""Long inner loops at a fraction of the memory: checkpointed unrolls, and offloading the graph to the CPU.

An unrolled meta-gradient keeps every inner step's graph: memory grows like the number of steps
``K``. :func:`unroll` keeps only the inner loop's state (fast weights and optimizer state) every
``S`` steps and recomputes each stretch of ``S`` steps during the backward, so memory grows like
``K / S + S`` (``S = sqrt(K)`` by default: like ``sqrt(K)``) for one more forward's worth of time;
the meta-gradients are those of the plain unroll. :func:`offload` keeps a plain unroll's graph
but moves what it saves to CPU memory.

Example:
    >>> import torch, higher_core
    >>> model = torch.nn.Linear(3, 1)
    >>> opt = torch.optim.Adam(model.parameters(), lr=0.01)
    >>> x, y = torch.randn(20, 8, 3), torch.randn(20, 8, 1)
    >>> def inner_step(fmodel, diffopt, k):
    ...     diffopt.step(torch.nn.functional.mse_loss(fmodel(x[k]), y[k]))
    >>> with higher_core.innerloop_ctx(model, opt, copy_initial_weights=False) as (fmodel, diffopt):
    ...     higher_core.unroll(inner_step, fmodel, diffopt, steps=20, checkpoint=5)
    ...     fmodel(x[0]).pow(2).mean().backward()
    >>> model.weight.grad.shape
    torch.Size([1, 3])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from higher_core._replay import LoopState
from higher_core._segment import Segment, SegmentFunction
from higher_core._unroll_inputs import checked_inputs, refuse_undeclared, segment_inputs

__all__ = ["offload", "segment_length", "unroll"]

StepFn = Callable[[Any, Any, int], Any]


def segment_length(steps: int, checkpoint: int | str) -> int:
    """The steps per checkpointed segment: ``checkpoint`` itself, or ``round(sqrt(steps))`` for ``"sqrt"``.

    Example:
        >>> segment_length(1000, "sqrt"), segment_length(1000, 50)
        (32, 50)
    """
    if checkpoint == "sqrt":
        return max(1, round(math.sqrt(steps)))
    if isinstance(checkpoint, bool) or not isinstance(checkpoint, int) or checkpoint < 1:
        raise ValueError(f"unroll(checkpoint=...): give the steps per segment (an int >= 1), \"sqrt\" or None, "
                         f"got {checkpoint!r}")
    return checkpoint


def unroll(step_fn: StepFn, fmodel: Any, diffopt: Any, steps: int, *, checkpoint: int | str | None = None,
           inputs: Iterable[torch.Tensor] = ()) -> None:
    """Run ``step_fn(fmodel, diffopt, k)`` for ``k = 0 .. steps-1``, keeping the graph, or checkpointing it.

    ``step_fn`` takes one inner step (it computes a loss with ``fmodel`` and calls
    ``diffopt.step``); its return value is ignored. Afterwards ``fmodel`` and ``diffopt`` hold the
    weights and state after the last step, and meta-gradients flow through them as after a plain
    loop.

    With ``checkpoint=S`` (an int, or ``"sqrt"`` for ``S = sqrt(steps)``), the first step is taken
    as usual and then the steps run in segments of ``S`` without a graph; each segment keeps only
    the state it starts from, and is recomputed with a graph during the backward. Peak memory is
    about ``steps / S`` copies of the weights and optimizer state plus one segment's graph, instead
    of ``steps`` steps' graphs; the time about one more forward. The meta-gradients equal the
    plain unroll's (to rounding), with every optimizer plugin, learned hyperparameters
    (``override=``), BatchNorm buffers and ``tasks=``. ``fmodel``'s history (``parameters(time=)``)
    gains one entry per segment instead of one per step.

    The recomputation replays exactly what it can put back: the fast weights, the optimizer state,
    the patched module's buffers and torch's CPU and CUDA generators (dropout). ``step_fn`` must
    otherwise be a function of its step index: it must not draw from Python's or numpy's
    generators or change anything outside ``fmodel`` and ``diffopt``. A recomputation that does not
    reproduce the forward raises an error that names the difference, instead of giving a wrong
    gradient.

    Args:
        step_fn: ``step_fn(fmodel, diffopt, k)``, one inner step.
        fmodel: the patched module ``diffopt`` steps (``innerloop_ctx`` gives both).
        diffopt: its differentiable optimizer (built with ``fmodel``).
        steps: the number of inner steps.
        checkpoint: ``None`` (a plain unroll), the steps per segment, or ``"sqrt"``.
        inputs: tensors ``step_fn`` reads that need gradients and that are not the fast weights or
            ``diffopt``'s hyperparameters or the original module's parameters (which are found on their
            own): for example the synthetic
            data of dataset distillation, or per-step learning rates passed as ``override=``.
            Checkpointing needs them named; a forgotten one is an error, not a lost gradient.

    Raises:
        TypeError, ValueError: bad arguments; ``diffopt`` does not step ``fmodel``.
        RuntimeError: ``step_fn`` reads a tensor that requires grad and is not in ``inputs``; a
            recomputation did not replay the forward.
    """
    if not callable(step_fn):
        raise TypeError(f"unroll(step_fn, ...): step_fn must be callable as step_fn(fmodel, diffopt, k), "
                        f"got {type(step_fn).__name__}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"unroll(steps=...): give the number of inner steps (an int >= 0), got {steps!r}")
    if getattr(diffopt, "_fmodel", None) is not fmodel:
        raise ValueError("unroll(): diffopt must step fmodel; build it with fmodel= (innerloop_ctx gives the pair)")
    named = checked_inputs(inputs)
    segment = None if checkpoint is None else segment_length(max(steps - 1, 1), checkpoint)  # (checked even if unused)
    if segment is None or steps < 2 or not fmodel.track_higher_grads or not torch.is_grad_enabled():
        for k in range(steps):
            step_fn(fmodel, diffopt, k)
        return
    extras = segment_inputs(named, fmodel, diffopt, LoopState.capture(fmodel, diffopt))
    step_fn(fmodel, diffopt, 0)  # the first step as usual: the state's keys exist and say what is differentiable
    shares_a_graph = refuse_undeclared(step_fn, fmodel, diffopt, 1, extras)
    for start in range(1, steps, segment):
        state = LoopState.capture(fmodel, diffopt)
        run = Segment(step_fn, fmodel, diffopt, start, min(start + segment, steps), state, shares_a_graph)
        outputs = SegmentFunction.apply(run, *state.tensors, *extras)
        assert run.state_out is not None
        run.state_out.load(fmodel, diffopt, list(outputs))
        run.release()


def offload(pin_memory: bool | None = None) -> Any:
    """A context in which the tensors autograd saves for the backward wait in CPU memory.

    For inner loops on a GPU that are not written as a step function: the unrolled graph is
    kept, but its saved tensors (most of its memory) are copied to CPU memory (pinned, so the
    copies back during the backward are asynchronous) and GPU memory holds little more than the
    weights. The meta-gradients are unchanged; the cost is the copies' time. On the CPU it only
    costs time. (``torch.autograd.graph.save_on_cpu``, which also covers the graphs of the inner
    gradients, since they are built inside the context.)

    Args:
        pin_memory: pin the CPU copies; by default when CUDA is available.

    Example:
        >>> import torch, higher_core
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> with higher_core.innerloop_ctx(model, opt, copy_initial_weights=False) as (fmodel, diffopt):
        ...     with higher_core.offload():
        ...         for _ in range(3):
        ...             _ = diffopt.step(fmodel(torch.ones(4, 3)).pow(2).mean())
        ...         meta = fmodel(torch.ones(4, 3)).sum()
        ...     meta.backward()
    """
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    return torch.autograd.graph.save_on_cpu(pin_memory=pin_memory)
