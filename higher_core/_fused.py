r"""A rule's step as one autograd node: the update run without a graph, its backward by recomputation.

Autograd records an update rule operation by operation: Adam's step is about
ten nodes, each saving what its own derivative needs (the gradient, the square
root, the denominator, the quotient, ...). :func:`fused` wraps a rule's
``update(group, params, grads, states)`` in one ``torch.autograd.Function``
instead. Its inputs are every tensor the step reads (parameters, gradients,
state, tensor hyperparameters such as a learned ``lr``); its forward runs the
rule with no graph, so nothing but those inputs is saved; its backward is the
vector-Jacobian product of the rule,

.. math::
    \bar x = \Big(\frac{\partial\, U(x)}{\partial x}\Big)^{\!\top} \bar y,

computed by running the same rule again on the saved inputs with grad mode on
and calling ``torch.autograd.grad`` on it. The numbers are the rule's own, in
the forward pass and at every order of differentiation: under
``create_graph=True`` the recomputation is taken from aliases of the saved
inputs (views, not detached copies), so the backward is differentiable again
(double backward, Hessian-vector products).

What it saves per step is the step's inputs: the old weights (which the patched
module's history keeps anyway), the gradients and the old state; the
intermediate values of the rule are recomputed in the backward, one step at a
time. The stepper uses it for a rule that sets
:attr:`~higher_core.optim.DifferentiableOptimizer.fused`, on top of the flat
layout when a group is laid flat (one node per group and step), and only while
a graph is built (in test mode the rule runs as it is).

Example:
    >>> import torch
    >>> def update(group, params, grads, states):
    ...     return [p - group["lr"] * g for p, g in zip(params, grads)], states
    >>> lr = torch.tensor(0.1, requires_grad=True)
    >>> p, g = torch.ones(2, requires_grad=True), torch.full((2,), 3.0)
    >>> (new,), _ = fused(update)({"lr": lr}, [p], [g], [{}])
    >>> new.grad_fn.name()
    '_FusedStepBackward'
    >>> torch.autograd.grad(new.sum(), lr)
    (tensor(-6.),)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from higher_core.compat import dual_level_open, functorch_transforms_active

__all__ = ["fused", "fused_rule"]

State = dict[str, Any]
Update = Callable[[Mapping[str, Any], list[torch.Tensor], list[torch.Tensor], list[State]],
                  "tuple[list[torch.Tensor], list[State]]"]
Vjp = Callable[..., Any]
#: what an optimizer holds of the unrolled graph (its state, the patched module, the user's callback)
_GRAPH_ATTRIBUTES = frozenset({"param_state", "group_state", "_stepper", "_fmodel", "_grad_callback"})


class _Slot:
    """Where the ``index``-th input tensor goes in a template."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index


def _take(value: Any, tensors: list[torch.Tensor], seen: dict[int, int]) -> Any:
    """``value`` with every tensor replaced by a :class:`_Slot` (one slot per distinct tensor)."""
    if isinstance(value, torch.Tensor):
        if id(value) not in seen:
            seen[id(value)] = len(tensors)
            tensors.append(value)
        return _Slot(seen[id(value)])
    if isinstance(value, dict):
        return {k: _take(v, tensors, seen) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_take(v, tensors, seen) for v in value)
    return value


def _fill(template: Any, tensors: tuple[torch.Tensor, ...] | list[torch.Tensor]) -> Any:
    """The inverse of :func:`_take`: ``template`` with its slots replaced by ``tensors``."""
    if isinstance(template, _Slot):
        return tensors[template.index]
    if isinstance(template, dict):
        return {k: _fill(v, tensors) for k, v in template.items()}
    if isinstance(template, (list, tuple)):
        return type(template)(_fill(v, tensors) for v in template)
    return template


class _Call:
    """One fused step: the rule, the template of its arguments, and what its forward returned."""

    def __init__(self, update: Update, vjp: Vjp | None, template: Any, requires_grad: list[bool]) -> None:
        self.update = update
        self.vjp = vjp
        self.template = template
        self.requires_grad = requires_grad  # each input's flag, which a rule may branch on
        self.result: Any = None  # the template of the result: new tensors as slots into the outputs
        self.through: dict[int, int] = {}  # output slot -> input index, for inputs returned as they are

    def run(self, tensors: tuple[torch.Tensor, ...] | list[torch.Tensor]) -> list[torch.Tensor]:
        """The rule on ``tensors``; the tensors of its result that are not inputs, in a fixed order."""
        out = self.update(*_fill(self.template, tensors))
        produced: list[torch.Tensor] = []
        if self.result is None:  # the first run (the forward) fixes the layout of the result
            inputs = {id(t): i for i, t in enumerate(tensors)}
            self.result = _take(out, produced, {})
            self.through = {k: inputs[id(t)] for k, t in enumerate(produced) if id(t) in inputs}
            return [t for k, t in enumerate(produced) if k not in self.through]
        _take(out, produced, {})
        return [t for k, t in enumerate(produced) if k not in self.through]

    def analytic(self, tensors: tuple[torch.Tensor, ...], grad_outputs: tuple[torch.Tensor | None, ...]
                 ) -> list[torch.Tensor | None] | None:
        """The rule's own ``update_vjp`` on the saved inputs, as one gradient per input; ``None`` if it declines."""
        assert self.vjp is not None
        given = iter(grad_outputs)  # an input returned as it is takes its gradient outside this node
        outputs = [None if k in self.through else next(given) for k in range(len(self.through) + len(grad_outputs))]
        grad_params, grad_states = _fill(self.result, outputs)
        found = self.vjp(*_fill(self.template, tensors), list(grad_params), list(grad_states))
        if found is None:
            return None
        grads: list[torch.Tensor | None] = [None] * len(tensors)
        _match(self.template, found, grads)
        return grads


def _match(template: Any, value: Any, grads: list[torch.Tensor | None]) -> None:
    """Add each tensor of ``value`` (shaped like ``template``; ``None`` or missing for none) to its slot's gradient."""
    if value is None:
        return
    if isinstance(template, _Slot):
        i = template.index
        grads[i] = value if grads[i] is None else grads[i] + value
    elif isinstance(template, dict):
        for key, part in template.items():
            _match(part, value.get(key), grads)
    elif isinstance(template, (list, tuple)):
        for part, entry in zip(template, value):
            _match(part, entry, grads)


class _FusedStep(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, call: _Call, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        outputs = call.run(tensors)
        ctx.call = call
        ctx.save_for_backward(*tensors)
        ctx.set_materialize_grads(False)
        frozen = [t for t in outputs if not (t.is_floating_point() or t.is_complex())]
        if frozen:
            ctx.mark_non_differentiable(*frozen)
        return tuple(outputs)

    @staticmethod
    def backward(ctx: Any, *grad_outputs: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        call: _Call = ctx.call
        saved = ctx.saved_tensors
        create_graph = torch.is_grad_enabled()  # on under create_graph=True: keep the backward differentiable
        wanted = [i for i, need in enumerate(ctx.needs_input_grad[1:]) if need]
        if call.vjp is not None and not create_graph:
            found = call.analytic(saved, grad_outputs)
            if found is not None:
                return (None, *(g if need else None for g, need in zip(found, ctx.needs_input_grad[1:])))
        with torch.enable_grad():  # under create_graph, an alias of each input: a gradient w.r.t. the
            # input itself would also collect what reaches it through another input (a gradient is a
            # function of its weight), which the outer backward adds again
            inputs = [t.view_as(t) if create_graph and t.requires_grad else t.detach().requires_grad_(flag)
                      for t, flag in zip(saved, call.requires_grad)]
            outputs = call.run(inputs)
        pairs = [(o, g) for o, g in zip(outputs, grad_outputs) if g is not None and o.requires_grad]
        grads: list[torch.Tensor | None] = [None] * len(saved)
        if pairs and wanted:
            found = torch.autograd.grad([o for o, _ in pairs], [inputs[i] for i in wanted], [g for _, g in pairs],
                                        allow_unused=True, create_graph=create_graph)
            for i, g in zip(wanted, found):
                grads[i] = g
        return (None, *grads)


def fused(update: Update, vjp: Vjp | None = None) -> Update:
    """``update`` as one autograd node per call, with the same numbers (see the module docstring).

    Args:
        update: a rule's ``update(group, params, grads, states)``, a function of
            its arguments only (it runs again in the backward).
        vjp: the rule's ``update_vjp``, if it has one: its vector-Jacobian product
            written out, used for a first-order backward (``create_graph=False``)
            instead of the recomputation. Called as ``vjp(group, params, grads,
            states, grad_params, grad_states)`` (the gradients of the new
            parameters and of the new states, ``None`` for none), it returns the
            gradients of ``(group, params, grads, states)`` in the same layout
            (``None`` or a missing key for none), or ``None`` to decline (the
            recomputation then runs).

    Returns:
        A function with the same signature and results. Where no input requires
        grad, grad mode is off, or forward-mode AD or a ``torch.func`` transform
        may be at work (the node has no forward derivative), it calls ``update``
        as it is.
    """

    def step(group: Mapping[str, Any], params: list[torch.Tensor], grads: list[torch.Tensor],
             states: list[State]) -> tuple[list[torch.Tensor], list[State]]:
        tensors: list[torch.Tensor] = []
        template = _take((group, params, grads, states), tensors, {})
        flags = [t.requires_grad for t in tensors]
        if not (torch.is_grad_enabled() and any(flags)) or functorch_transforms_active() or dual_level_open():
            return update(group, params, grads, states)  # no graph, or forward-mode AD / torch.func at work
        call = _Call(update, vjp, template, flags)
        outputs = _FusedStep.apply(call, *tensors)
        everything: list[torch.Tensor] = []
        new = iter(outputs)
        for k in range(len(call.through) + len(outputs)):
            everything.append(tensors[call.through[k]] if k in call.through else next(new))
        new_params, new_states = _fill(call.result, everything)
        return list(new_params), list(new_states)

    return step


def fused_rule(rule: Any) -> Update:
    """:func:`fused` of ``rule.update`` (and ``rule.update_vjp``), bound to a copy of ``rule`` without its graph.

    A step's node lives as long as the graph does, and the optimizer holds the
    graph (its state tensors are the node's outputs): a node that held the
    optimizer would make a reference cycle that only the garbage collector
    frees. The copy holds the optimizer's configuration (options, flags,
    hyperparameters) and none of :data:`_GRAPH_ATTRIBUTES`.
    """
    shadow = object.__new__(type(rule))
    shadow.__dict__.update({k: v for k, v in vars(rule).items() if k not in _GRAPH_ATTRIBUTES})
    return fused(shadow.update, getattr(shadow, "update_vjp", None))
