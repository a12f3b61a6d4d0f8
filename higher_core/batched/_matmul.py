r"""The batched forward of an MLP without ``vmap``: ``nn.Linear`` as batched matrix products.

``torch.func.vmap`` sets itself up at every call and batches ``F.linear`` as a
broadcast matrix product followed by an add; for a small MLP that costs several
times the maths (the demo's MLP, 10 tasks, one thread: a forward takes 1.1 ms
under ``vmap``, 0.15 ms here). A module tree made only of ``nn.Sequential``,
``nn.Linear`` and the activations of :data:`ELEMENTWISE` (exact types: a
subclass may change ``forward``), with no hook (on a module, or global) and no
buffer, runs here directly on the stacked tensors, with the ops ``vmap``'s rule
emits:

.. math::

    h_t \mapsto h_t W_t^\top + b_t \ \text{for every task } t:\quad
    \mathrm{bmm}(h, W^\top) + b[:, \mathrm{None}],\
    h: [T, M, \mathrm{in}],\ W: [T, \mathrm{out}, \mathrm{in}],\ b: [T, \mathrm{out}]

and each activation on the stacked tensor, whose task dimension is one more
batch dimension to an element-wise function. Anything else runs under ``vmap``
as before (:class:`~higher_core.batched.BatchedPatchedModule`). The activations
have no train/eval behaviour, so the plan does not depend on the mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import torch
from torch import nn

from higher_core.compat import GLOBAL_MODULE_HOOKS

__all__ = ["ELEMENTWISE", "Plan", "plan", "run"]

#: Activations applied element by element (no parameter, buffer or randomness): the stacked tensor
#: goes through them as it is.
ELEMENTWISE: frozenset[type[nn.Module]] = frozenset({
    nn.Identity, nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Softplus,
})

# One step of a plan: a Linear's (weight, bias) positions in the fast weights, or an activation.
Step = Union[tuple[int, Union[int, None]], nn.Module]


class Plan:
    """The steps of a planned forward, and the modules whose hooks must stay absent for it to hold."""

    __slots__ = ("modules", "steps")

    def __init__(self, steps: list[Step], modules: list[nn.Module]) -> None:
        self.steps = steps
        self.modules = modules


def _global_hooks_present() -> bool:
    """Whether a global module hook is registered (or this torch does not say: assume one is)."""
    return GLOBAL_MODULE_HOOKS is None or any(GLOBAL_MODULE_HOOKS)


def _hooked(module: nn.Module) -> bool:
    """Whether a forward or backward hook is registered on ``module`` (its call would run them)."""
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks)


def plan(module: nn.Module, positions: dict[int, int]) -> Plan | None:
    """The planned forward of ``module``, or ``None`` where it is not an MLP of the types above.

    Args:
        module: the module (tree) to run; its parameters must be the ones ``positions`` lists.
        positions: ``id(parameter)`` to its position in the fast weights.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(1, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
        >>> planned = plan(net, {id(p): i for i, p in enumerate(net.parameters())})
        >>> planned.steps[0], planned.steps[2]
        ((0, 1), (2, 3))
        >>> fast = [p.expand(3, *p.shape) for p in net.parameters()]   # 3 tasks
        >>> run(planned, fast, torch.randn(3, 10, 1)).shape
        torch.Size([3, 10, 1])
    """
    steps: list[Step] = []
    modules: list[nn.Module] = []

    def visit(sub: nn.Module | None) -> bool:
        if sub is None or _hooked(sub) or sub._buffers:
            return False
        modules.append(sub)
        kind = type(sub)
        if kind is nn.Sequential:
            return all(visit(child) for child in sub._modules.values())
        if sub._modules:
            return False
        if kind is nn.Linear:
            weight, bias = sub._parameters.get("weight"), sub._parameters.get("bias")
            if weight is None or id(weight) not in positions or (bias is not None and id(bias) not in positions):
                return False
            if "weight" in sub.__dict__ or "bias" in sub.__dict__:  # an attribute that forward would read instead
                return False
            steps.append((positions[id(weight)], None if bias is None else positions[id(bias)]))
            return True
        if kind in ELEMENTWISE and not sub._parameters:
            steps.append(sub)
            return True
        return False

    return Plan(steps, modules) if visit(module) else None


def run(planned: Plan, params: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor | None:
    """The planned forward on stacked fast weights ``params`` and input ``x`` (``[T, ..., in]``).

    Returns ``None`` where the plan does not hold now (a hook was added since, or
    ``x`` has no feature dimension): the caller then runs the module under ``vmap``.
    """
    if x.dim() < 2 or _global_hooks_present() or any(_hooked(m) for m in planned.modules):
        return None
    tasks = x.shape[0]
    h = x
    for step in planned.steps:
        if type(step) is tuple:
            weight, bias = params[step[0]], step[1]
            if h.dim() == 3:  # [T, M, in] already: no reshapes (each one more node in every backward)
                h = torch.bmm(h, weight.transpose(1, 2))
            else:
                middle = h.shape[1:-1]
                h = torch.bmm(h.reshape(tasks, -1, h.shape[-1]), weight.transpose(1, 2))
                h = h.reshape(tasks, *middle, h.shape[-1])
            if bias is not None:
                h = h + (params[bias].unsqueeze(1) if h.dim() == 3 else
                         params[bias].view(tasks, *[1] * (h.dim() - 2), -1))
        else:
            h = step.forward(h)  # the module's own forward; the hooks it skips are checked absent above
    return h
