r"""Implicit meta-gradients: differentiate the solution of an inner problem, not its unroll.

When the inner loop has (nearly) solved its problem, its solution :math:`w^*` satisfies an
optimality condition :math:`F(w^*, \theta) = 0` stated by the user (for iMAML, the gradient
of :math:`\mathcal{L}_{task}(w) + \frac{\lambda}{2}\|w - \theta\|^2` with respect to
:math:`w`). The implicit function theorem then gives the meta-gradient of an outer loss
:math:`L(w^*, \theta)` from the solution alone,

.. math::

    \frac{dL}{d\theta} = \frac{\partial L}{\partial \theta}
        - \Big(\frac{\partial F}{\partial \theta}\Big)^{\!\top} v, \qquad
    \Big(\frac{\partial F}{\partial w}\Big)^{\!\top} v = \frac{\partial L}{\partial w},

where the linear system is solved matrix-free (:class:`CG` by default, or :class:`Neumann`)
with vector-Jacobian products of :math:`F` (Hessian-vector products when :math:`F` is a
gradient). Memory does not grow with the number of inner steps: run the inner loop with
``innerloop_ctx(..., track_higher_grads=False)``, with any optimizer.

Example (iMAML; ``meta_backward`` takes the place of ``outer_loss.backward()``):
    >>> import torch, higher_core
    >>> from higher_core import implicit
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Linear(3, 1)
    >>> x, y, xq, yq = torch.randn(8, 3), torch.randn(8, 1), torch.randn(8, 3), torch.randn(8, 1)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> with higher_core.innerloop_ctx(model, opt, copy_initial_weights=False,
    ...                                track_higher_grads=False) as (fmodel, diffopt):
    ...     def inner(w, w0):  # task loss + proximal term
    ...         prox = sum(((a - b) ** 2).sum() for a, b in zip(w, w0))
    ...         return torch.nn.functional.mse_loss(fmodel(x, params=w), y) + 0.5 * prox
    ...     for _ in range(200):
    ...         _ = diffopt.step(inner(fmodel.fast_params, list(model.parameters())))
    ...     outer = torch.nn.functional.mse_loss(fmodel(xq), yq)
    ...     result = implicit.meta_backward(outer, fmodel.parameters(), implicit.stationary(inner),
    ...                                     model.parameters(), solver=implicit.CG(tol=1e-8))
    >>> result.converged, model.weight.grad.shape
    (True, torch.Size([1, 3]))
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Literal

import torch

from higher_core._solvers import CG, ImplicitSolveError, ImplicitSolveWarning, Neumann, SolveResult

__all__ = [
    "CG",
    "ImplicitSolveError",
    "ImplicitSolveWarning",
    "Neumann",
    "SolveResult",
    "meta_backward",
    "meta_grad",
    "stationary",
]

Params = Sequence[torch.Tensor]
OptimalityFn = Callable[[list[torch.Tensor], list[torch.Tensor]], Sequence[torch.Tensor]]
Solver = Callable[[Callable[[torch.Tensor], torch.Tensor], torch.Tensor], SolveResult]


def stationary(objective: Callable[[list[torch.Tensor], list[torch.Tensor]], torch.Tensor]) -> OptimalityFn:
    r"""The optimality condition of a minimisation: :math:`F(w, \theta) = \nabla_w\, objective(w, \theta)`.

    Its Jacobian :math:`\partial F / \partial w` is the Hessian of ``objective``: symmetric,
    so :class:`CG` applies where the objective is strictly convex near the solution.

    Args:
        objective: ``objective(params, meta_params) -> scalar``, the inner loss whose
            minimiser the inner loop finds.

    Returns:
        ``F(params, meta_params)``: the gradient of ``objective`` w.r.t. each of ``params``
        (zeros for those that do not require grad), with a graph for second derivatives.

    Example:
        >>> import torch
        >>> F = stationary(lambda w, m: ((w[0] - m[0]) ** 2).sum())
        >>> F([torch.tensor([3.0], requires_grad=True)], [torch.tensor([1.0])])[0].tolist()
        [4.0]
    """

    def condition(params: list[torch.Tensor], meta_params: list[torch.Tensor]) -> list[torch.Tensor]:
        with torch.enable_grad():
            value = objective(params, meta_params)
            unknowns = [p for p in params if p.requires_grad]
            grads = iter(torch.autograd.grad(value, unknowns, create_graph=True, allow_unused=True))
        return [_or_zeros(next(grads), p) if p.requires_grad else torch.zeros_like(p) for p in params]

    return condition


def meta_grad(outer_loss: torch.Tensor, solution: Iterable[torch.Tensor], optimality_fn: OptimalityFn,
              meta_params: Iterable[torch.Tensor], *, solver: Solver | None = None,
              on_fail: Literal["warn", "raise"] = "warn") -> tuple[tuple[torch.Tensor, ...], SolveResult]:
    r"""The implicit meta-gradient :math:`dL/d\theta` of ``outer_loss`` at a solution of ``F(w, θ) = 0``.

    Args:
        outer_loss: a scalar computed from ``solution`` (and possibly directly from
            ``meta_params``), e.g. ``loss(fmodel(x_query), y_query)`` after the inner loop.
        solution: the inner loop's solution :math:`w^*`: ``fmodel.parameters()`` (or
            ``fmodel.fast_params``) after ``innerloop_ctx(..., track_higher_grads=False)``.
            The tensors that require grad are the unknowns; the others are constants.
        optimality_fn: ``F(params, meta_params) -> [tensor per param]``, zero at the
            solution, built with a graph (:func:`stationary` makes one from an inner loss).
        meta_params: the tensors to differentiate w.r.t. (e.g. ``model.parameters()`` with
            ``copy_initial_weights=False``, a regulariser strength). One on which neither
            ``F`` nor ``outer_loss`` depends gets a zero gradient.
        solver: the linear solver (default ``CG()``); ``Neumann(alpha)`` for a
            non-symmetric ``F``.
        on_fail: ``"warn"`` (an :class:`ImplicitSolveWarning`) or ``"raise"`` (an
            :class:`ImplicitSolveError`) when the solve misses its tolerance.

    Returns:
        ``(grads, result)``: one gradient per meta-parameter (zeros where it has none),
        and the solve's :class:`SolveResult` (residual, iterations, convergence).

    Example:
        >>> import torch
        >>> lam = torch.tensor(2.0, requires_grad=True)
        >>> w = torch.tensor(1.0 / 3.0, requires_grad=True)  # argmin (w - 1)^2 + lam w^2
        >>> F = stationary(lambda p, m: (p[0] - 1) ** 2 + m[0] * p[0] ** 2)
        >>> (g,), result = meta_grad(w, [w], F, [lam])  # dw*/dlam = -1 / (1 + lam)^2
        >>> round(g.item(), 6), result.iterations
        (-0.111111, 1)
    """
    if on_fail not in ("warn", "raise"):
        raise ValueError(f"on_fail must be 'warn' or 'raise', got {on_fail!r}")
    solver = CG() if solver is None else solver
    solution, meta = list(solution), list(meta_params)
    unknowns = _check_inputs(outer_loss, solution, meta)
    direct = _grads(outer_loss, unknowns + meta, None, retain_graph=False)
    conditions = _conditions(optimality_fn, solution, meta)

    def transposed_jacobian_product(v: torch.Tensor) -> torch.Tensor:
        return _flat(_grads(conditions, unknowns, _unflat(v, unknowns), retain_graph=True))

    result = solver(transposed_jacobian_product, _flat(direct[: len(unknowns)]).detach())
    if not result.converged:
        _report(result, solver, on_fail)
    through_solution = _grads(conditions, meta, _unflat(result.x, unknowns), retain_graph=False)
    return tuple(d - t for d, t in zip(direct[len(unknowns):], through_solution)), result


def meta_backward(outer_loss: torch.Tensor, solution: Iterable[torch.Tensor], optimality_fn: OptimalityFn,
                  meta_params: Iterable[torch.Tensor], *, solver: Solver | None = None,
                  on_fail: Literal["warn", "raise"] = "warn") -> SolveResult:
    """Accumulate the implicit meta-gradient into each meta-parameter's ``.grad``, as ``outer_loss.backward()`` would.

    The arguments are :func:`meta_grad`'s; a meta-parameter without a gradient gets zeros.

    Returns:
        the solve's :class:`SolveResult`.

    Example:
        >>> import torch
        >>> lam = torch.tensor(2.0, requires_grad=True)
        >>> w = torch.tensor(1.0 / 3.0, requires_grad=True)
        >>> F = stationary(lambda p, m: (p[0] - 1) ** 2 + m[0] * p[0] ** 2)
        >>> _ = meta_backward(w, [w], F, [lam]); _ = meta_backward(w, [w], F, [lam])
        >>> round(lam.grad.item(), 6)
        -0.222222
    """
    meta = list(meta_params)
    grads, result = meta_grad(outer_loss, solution, optimality_fn, meta, solver=solver, on_fail=on_fail)
    for p, g in zip(meta, grads):
        p.grad = g.detach().clone() if p.grad is None else p.grad + g.detach()
    return result


# -- helpers ----------------------------------------------------------------------------------


def _check_inputs(outer_loss: torch.Tensor, solution: list[torch.Tensor], meta: list[torch.Tensor]) -> list[torch.Tensor]:
    """Validate the arguments of :func:`meta_grad`; return the unknowns (solution tensors that require grad)."""
    if not isinstance(outer_loss, torch.Tensor) or outer_loss.numel() != 1 or not outer_loss.requires_grad:
        raise ValueError("outer_loss must be a scalar tensor with a graph to the solution: compute it from "
                         "the fast weights after the inner loop (e.g. loss(fmodel(x_query), y_query))")
    if not all(isinstance(p, torch.Tensor) for p in solution + meta):
        raise TypeError("solution and meta_params must be iterables of tensors")
    unknowns = [w for w in solution if w.requires_grad]
    if not unknowns:
        raise ValueError("no tensor of solution requires grad: pass the fast weights after the inner loop "
                         "(fmodel.parameters() with track_higher_grads=False keeps requires_grad)")
    if not meta:
        raise ValueError("meta_params is empty: pass the tensors to differentiate with respect to")
    if not all(p.requires_grad for p in meta):
        raise ValueError("every tensor of meta_params must require grad (call .requires_grad_() on it)")
    ids = {id(w) for w in unknowns}
    if any(id(p) in ids for p in meta):
        raise ValueError("a meta-parameter is also part of the solution (the inner loop took no step with "
                         "copy_initial_weights=False?): the solution must be the fast weights after the inner loop")
    return unknowns


def _conditions(optimality_fn: OptimalityFn, solution: list[torch.Tensor], meta: list[torch.Tensor]) -> list[torch.Tensor]:
    """The entries of ``F(solution, meta)`` for the unknowns, checked for shape and graph."""
    with torch.enable_grad():
        values = list(optimality_fn(solution, meta))
    if len(values) != len(solution):
        raise ValueError(f"optimality_fn returned {len(values)} tensor(s) for {len(solution)} solution tensor(s): "
                         "return one per solution tensor, shaped like it")
    conditions = []
    for i, (w, f) in enumerate(zip(solution, values)):
        if not w.requires_grad:
            continue
        if not isinstance(f, torch.Tensor) or f.shape != w.shape:
            shape = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
            raise ValueError(f"optimality_fn's output {i} is {shape}, expected a tensor of shape {tuple(w.shape)}")
        conditions.append(f)
    if not any(f.requires_grad for f in conditions):
        raise ValueError("optimality_fn's outputs have no graph: build them with create_graph=True "
                         "(higher_core.implicit.stationary(inner_loss) does this for a gradient)")
    return conditions


def _report(result: SolveResult, solver: Solver, on_fail: str) -> None:
    tol = getattr(solver, "tol", None)
    message = (f"implicit meta-gradient: {result.solver} did not converge: relative residual "
               f"{result.residual:.2e}{'' if tol is None else f' > tol={tol:g}'} after {result.iterations} "
               f"Hessian-vector products, so the meta-gradient is inexact; fix: "
               f"{getattr(solver, 'hint', 'raise its iteration limit or loosen its tolerance')}")
    if on_fail == "raise":
        raise ImplicitSolveError(message)
    frame, level = sys._getframe(1), 2  # point the warning at the caller of this module's API
    while frame is not None and frame.f_globals.get("__name__") == __name__:
        frame, level = frame.f_back, level + 1
    warnings.warn(message, ImplicitSolveWarning, stacklevel=level)


def _or_zeros(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if grad is None else grad


def _grads(outputs: torch.Tensor | list[torch.Tensor], inputs: list[torch.Tensor],
           grad_outputs: list[torch.Tensor] | None, retain_graph: bool) -> list[torch.Tensor]:
    """Vector-Jacobian products, zeros for inputs the outputs do not depend on."""
    if isinstance(outputs, list):
        live = [i for i, f in enumerate(outputs) if f.requires_grad]
        outputs = [outputs[i] for i in live]
        grad_outputs = None if grad_outputs is None else [grad_outputs[i] for i in live]
    grads = torch.autograd.grad(outputs, inputs, grad_outputs, retain_graph=retain_graph, allow_unused=True)
    return [_or_zeros(g, p) for g, p in zip(grads, inputs)]


def _flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _unflat(vector: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    return [chunk.view_as(p) for chunk, p in zip(vector.split([p.numel() for p in like]), like)]
