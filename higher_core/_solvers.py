"""Matrix-free linear solvers for implicit meta-gradients: conjugate gradient and a Neumann series.

A solver is called as ``solver(matvec, b)`` and solves ``A x = b`` for a flat vector ``x``,
given only the product ``matvec(v) = A v`` (a Hessian- or Jacobian-vector product); it
returns a :class:`SolveResult` saying whether it met its tolerance.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

__all__ = ["CG", "ImplicitSolveError", "ImplicitSolveWarning", "Neumann", "SolveResult"]

MatVec = Callable[[torch.Tensor], torch.Tensor]


class ImplicitSolveWarning(UserWarning):
    """The linear solve of an implicit meta-gradient did not converge: the gradient is approximate."""


class ImplicitSolveError(RuntimeError):
    """The linear solve of an implicit meta-gradient did not converge (``on_fail="raise"``)."""


@dataclasses.dataclass(frozen=True)
class SolveResult:
    """The outcome of a linear solve ``A x = b``.

    Attributes:
        x: the solution (a flat vector).
        residual: the relative residual ``||A x - b|| / ||b||`` (0 when ``b = 0``).
        iterations: the number of products with ``A`` taken.
        converged: whether ``residual <= tol``.
        solver: the solver, as its ``repr`` (its options included).
    """

    x: torch.Tensor
    residual: float
    iterations: int
    converged: bool
    solver: str


def _check_options(solver: object, tol: float, max_iter: int) -> None:
    name = type(solver).__name__
    if not tol > 0:
        raise ValueError(f"{name}: tol must be positive, got {tol!r}")
    if not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"{name}: max_iter must be a positive int (a number of Hessian-vector products), got {max_iter!r}")


@dataclasses.dataclass(frozen=True)
class CG:
    r"""Conjugate gradient for a symmetric positive-definite ``A`` (e.g. the Hessian of a strictly convex inner loss).

    Stops when the relative residual :math:`\|A x - b\| / \|b\|` (CG's recurrence for it)
    is at most ``tol``, or after ``max_iter`` products; a non-positive curvature
    :math:`p^\top A p \le 0` ends it unconverged.

    Args:
        tol: the relative residual to reach.
        max_iter: the most products with ``A``.

    Example:
        >>> import torch
        >>> A = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
        >>> result = CG(tol=1e-12)(lambda v: A @ v, torch.tensor([1.0, 2.0], dtype=torch.float64))
        >>> result.converged, result.iterations, torch.allclose(A @ result.x, torch.tensor([1.0, 2.0], dtype=torch.float64))
        (True, 2, True)
    """

    tol: float = 1e-6
    max_iter: int = 100
    hint = ("raise max_iter or loosen tol; CG needs a symmetric positive-definite dF/dw: solve the "
            "inner problem further or add a proximal term lambda/2 ||w - w0||^2, and use Neumann "
            "for a non-symmetric optimality condition")

    def __post_init__(self) -> None:
        _check_options(self, self.tol, self.max_iter)

    def __call__(self, matvec: MatVec, b: torch.Tensor) -> SolveResult:
        norm_b = b.norm()
        x = torch.zeros_like(b)
        if norm_b == 0:
            return SolveResult(x, 0.0, 0, True, repr(self))
        r = b.clone()
        p = r.clone()
        rs = r.dot(r)
        relative = 1.0
        for iteration in range(1, self.max_iter + 1):
            ap = matvec(p)
            curvature = p.dot(ap)
            if not curvature > 0:
                return SolveResult(x, relative, iteration, False, repr(self))
            step = rs / curvature
            x = x + step * p
            r = r - step * ap
            rs_next = r.dot(r)
            relative = (rs_next.sqrt() / norm_b).item()
            if relative <= self.tol:
                return SolveResult(x, relative, iteration, True, repr(self))
            p = r + (rs_next / rs) * p
            rs = rs_next
        return SolveResult(x, relative, self.max_iter, False, repr(self))


@dataclasses.dataclass(frozen=True)
class Neumann:
    r"""The Neumann series :math:`A^{-1} b = \alpha \sum_{k \ge 0} (I - \alpha A)^k b`.

    Converges when every eigenvalue of :math:`I - \alpha A` has modulus below 1 (for a
    symmetric positive-definite ``A``: :math:`0 < \alpha < 2 / \lambda_{\max}(A)`; the
    inner learning rate of gradient descent is a natural choice). After ``k`` terms the
    residual is exactly :math:`A x_k - b = -(I - \alpha A)^{k+1} b`, which costs nothing
    extra; the series stops when its norm relative to ``b`` is at most ``tol``.

    Args:
        alpha: the scaling of ``A``.
        tol: the relative residual to reach.
        max_iter: the most products with ``A``.

    Example:
        >>> import torch
        >>> A = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
        >>> result = Neumann(alpha=0.2, tol=1e-10, max_iter=500)(lambda v: A @ v, torch.ones(2, dtype=torch.float64))
        >>> result.converged, torch.allclose(A @ result.x, torch.ones(2, dtype=torch.float64))
        (True, True)
    """

    alpha: float
    tol: float = 1e-6
    max_iter: int = 100
    hint = ("raise max_iter, or lower alpha below 2 / (the largest eigenvalue of dF/dw) so that "
            "the series converges (the inner learning rate is a good start)")

    def __post_init__(self) -> None:
        if not self.alpha > 0:
            raise ValueError(f"Neumann: alpha must be positive, got {self.alpha!r}")
        _check_options(self, self.tol, self.max_iter)

    def __call__(self, matvec: MatVec, b: torch.Tensor) -> SolveResult:
        norm_b = b.norm()
        if norm_b == 0:
            return SolveResult(torch.zeros_like(b), 0.0, 0, True, repr(self))
        term = b  # (I - alpha A)^k b
        x = self.alpha * b
        for iteration in range(1, self.max_iter + 1):
            term = term - self.alpha * matvec(term)  # the residual b - A x
            relative = (term.norm() / norm_b).item()
            if relative <= self.tol or not relative < float("inf") or iteration == self.max_iter:
                break
            x = x + self.alpha * term
        return SolveResult(x, relative, iteration, relative <= self.tol, repr(self))
