"""What a checkpointed segment differentiates besides the state it starts from: found, then checked.

A segment's backward hands gradients to its inputs only. Besides the state (fast weights and
optimizer state), the steps read tensors from elsewhere: ``diffopt``'s learned hyperparameters,
the original module's parameters (iMAML's proximal term), the tensors a caller names in
``unroll(inputs=...)``. One that requires grad and is in none of these would silently get no
gradient, and one named together with a tensor computed from it would get its gradient twice:
both are refused here, before the unroll runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from higher_core._replay import LoopState, _flatten, restored_afterwards
from higher_core.compat import node_sequence_number

__all__ = ["checked_inputs", "refuse_undeclared", "segment_inputs"]


def checked_inputs(inputs: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """``unroll(inputs=...)`` as a list of tensors (those that require grad)."""
    if isinstance(inputs, torch.Tensor):
        inputs = [inputs]
    inputs = list(inputs)
    for i, t in enumerate(inputs):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"unroll(inputs=...): give tensors, got {type(t).__name__} at position {i}")
    return [t for t in inputs if t.requires_grad]


def segment_inputs(named: list[torch.Tensor], fmodel: Any, diffopt: Any, state: LoopState) -> list[torch.Tensor]:
    """``named``, ``diffopt``'s hyperparameter tensors, and the leaves among the original module's
    parameters and ``state`` (the weights the unroll starts from), that require grad, once each."""
    found: list[tuple[tuple[Any, ...], Any]] = []
    _flatten([getattr(diffopt, "_override", {}), diffopt.param_groups], (), found)
    leaves = [t for t in [*fmodel.__dict__.get("_reference_params", ()), *state.tensors] if t.grad_fn is None]
    seen: set[int] = set()
    extras = []
    for t in [*named, *(t for _, t in found), *leaves]:
        if isinstance(t, torch.Tensor) and t.requires_grad and id(t) not in seen:
            seen.add(id(t))
            extras.append(t)
    _refuse_counted_twice(extras)
    return extras


def _walk(roots: list[Any], stops: dict[int, Any]) -> Iterable[Any]:
    """Walk the graph back from the nodes ``roots``, yielding each node once; do not go past the nodes in
    ``stops`` (by ``id``: the dict keeps the nodes alive, so their Python objects and ids stay the same)
    or past a leaf (an AccumulateGrad, which has a ``variable``)."""
    seen: dict[int, Any] = {}
    stack = list(roots)
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen[id(node)] = node  # (kept alive: an id stays unique while its node lives)
        yield node
        if id(node) not in stops and not isinstance(getattr(node, "variable", None), torch.Tensor):
            stack.extend(n for n, _ in node.next_functions)


def _refuse_counted_twice(extras: list[torch.Tensor]) -> None:
    leaves = {id(t): t for t in extras if t.grad_fn is None}
    for t in extras:
        if t.grad_fn is None:
            continue
        pairs = [(o.grad_fn, o) for o in extras if o.grad_fn is not None and o is not t]
        stops = {id(node): node for node, _ in pairs}
        by_node = {id(node): o for node, o in pairs}
        for node in _walk([t.grad_fn], stops):
            variable = getattr(node, "variable", None)
            ancestor = by_node.get(id(node)) if id(node) in stops else leaves.get(id(variable))
            if ancestor is not None:
                raise ValueError(
                    f"unroll(inputs=...): a tensor of shape {tuple(t.shape)} is computed from another tensor the "
                    f"unroll differentiates (shape {tuple(ancestor.shape)}, {ancestor.dtype}; the original module's "
                    "parameters, the starting weights and diffopt's hyperparameters are included on their own), "
                    "so its gradient would be counted twice: name only one of them"
                )


def refuse_undeclared(step_fn: Callable[[Any, Any, int], Any], fmodel: Any, diffopt: Any, k: int,
                      extras: list[torch.Tensor]) -> bool:
    """Take step ``k`` once as a segment's backward will (from detached copies of the state, with a
    graph), then put everything back; raise if its graph reaches a tensor that requires grad and is
    neither the state nor one of ``extras``.

    Returns:
        Whether the step's graph runs into one made before it (a tensor ``step_fn`` reads that was
        computed from one of ``extras``): every segment's backward then goes through that graph,
        which must be kept (``retain_graph``).
    """
    with torch.enable_grad(), restored_afterwards(fmodel, diffopt):
        state = LoopState.capture(fmodel, diffopt)
        leaves = [t.detach().requires_grad_(t.requires_grad) for t in state.tensors]
        state.load(fmodel, diffopt, leaves)
        boundary = node_sequence_number(torch.ones((), requires_grad=True).mul(1).grad_fn)  # made before the step
        step_fn(fmodel, diffopt, k)
        reached = [t.grad_fn for t in LoopState.capture(fmodel, diffopt).tensors]
        declared = {id(t) for t in [*leaves, *extras] if t.grad_fn is None}
        stops = {id(node): node for node in [t.grad_fn for t in extras if t.grad_fn is not None]}
        older = False
        for node in _walk(reached, stops):
            variable = getattr(node, "variable", None)
            if isinstance(variable, torch.Tensor):
                if id(variable) not in declared:
                    raise RuntimeError(
                        f"unroll(checkpoint=...): step_fn reads a tensor that requires grad (shape "
                        f"{tuple(variable.shape)}, {variable.dtype}) and is neither a fast weight, a hyperparameter "
                        "of diffopt nor a parameter of the original module: a checkpointed segment would give it "
                        "no gradient. Pass it (or the tensor step_fn computes from it) as unroll(..., inputs=[...])"
                    )
            elif id(node) not in stops:
                number = node_sequence_number(node)
                older = older or boundary is None or number is None or number < boundary
        return older
