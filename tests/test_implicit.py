"""Implicit meta-gradients (higher_core.implicit): closed forms, unrolled oracles, solver failures."""

from __future__ import annotations

import pytest
import torch
from torch.nn.functional import mse_loss

import higher_core as higher
from higher_core import implicit
from higher_core.implicit import CG, ImplicitSolveError, ImplicitSolveWarning, Neumann

D = torch.float64


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


# -- ridge regression: w*(lam, w0) = argmin 1/2 ||X w - y||^2 + lam/2 ||w - w0||^2 ------------------


@pytest.fixture
def ridge():
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(20, 4, generator=g, dtype=D), torch.randn(20, generator=g, dtype=D)
    Xv, yv = torch.randn(15, 4, generator=g, dtype=D), torch.randn(15, generator=g, dtype=D)
    lam = torch.tensor(0.7, dtype=D, requires_grad=True)
    w0 = torch.randn(4, generator=g, dtype=D, requires_grad=True)
    return X, y, Xv, yv, lam, w0


def ridge_solution(X, y, lam, w0):
    with torch.no_grad():
        A = X.T @ X + lam * torch.eye(X.shape[1], dtype=D)
        return torch.linalg.solve(A, X.T @ y + lam * w0)


def ridge_condition(X, y):
    return implicit.stationary(lambda w, m: 0.5 * ((X @ w[0] - y) ** 2).sum()
                               + 0.5 * m[0] * ((w[0] - m[1]) ** 2).sum())


def ridge_closed_form(X, y, Xv, yv, lam, w0):
    """dL/dlam = g^T A^{-1} (w0 - w*) and dL/dw0 = lam A^{-1} g, with A = X^T X + lam I, g = dL/dw*."""
    with torch.no_grad():
        A = X.T @ X + lam * torch.eye(X.shape[1], dtype=D)
        w = torch.linalg.solve(A, X.T @ y + lam * w0)
        g = Xv.T @ (Xv @ w - yv)
        A_inv_g = torch.linalg.solve(A, g)
        return A_inv_g @ (w0 - w), lam * A_inv_g


def ridge_meta_grad(ridge, solver, **kwargs):
    X, y, Xv, yv, lam, w0 = ridge
    w = ridge_solution(X, y, lam, w0).requires_grad_()
    outer = 0.5 * ((Xv @ w - yv) ** 2).sum()
    return implicit.meta_grad(outer, [w], ridge_condition(X, y), [lam, w0], solver=solver, **kwargs)


def neumann_for(X, lam, **kwargs):
    """A Neumann series with alpha = 1 / lambda_max(X^T X + lam I): it converges."""
    top = torch.linalg.eigvalsh(X.T @ X).max().item() + lam.item()
    return Neumann(alpha=1.0 / top, **kwargs)


def test_ridge_matches_closed_form_with_cg(ridge):
    (g_lam, g_w0), result = ridge_meta_grad(ridge, CG(tol=1e-12))
    want_lam, want_w0 = ridge_closed_form(*ridge)
    assert result.converged and result.residual <= 1e-12 and 1 <= result.iterations <= 10
    assert rel_err(g_lam, want_lam) < 1e-8
    assert rel_err(g_w0, want_w0) < 1e-8


def test_ridge_matches_closed_form_with_neumann(ridge):
    X, _, _, _, lam, _ = ridge
    (g_lam, g_w0), result = ridge_meta_grad(ridge, neumann_for(X, lam, tol=1e-12, max_iter=2000))
    want_lam, want_w0 = ridge_closed_form(*ridge)
    assert result.converged and result.residual <= 1e-12 and result.iterations > 10
    assert rel_err(g_lam, want_lam) < 1e-8
    assert rel_err(g_w0, want_w0) < 1e-8


class _ImplicitRidge(torch.autograd.Function):
    """lam, w0 -> the outer loss at the exact ridge solution; backward by the implicit meta-gradient."""

    @staticmethod
    def forward(ctx, lam, w0, X, y, Xv, yv):
        ctx.save_for_backward(lam, w0, X, y, Xv, yv)
        w = ridge_solution(X, y, lam, w0)
        return 0.5 * ((Xv @ w - yv) ** 2).sum()

    @staticmethod
    def backward(ctx, grad_out):
        lam, w0, X, y, Xv, yv = ctx.saved_tensors
        lam, w0 = lam.detach().requires_grad_(), w0.detach().requires_grad_()
        with torch.enable_grad():
            (g_lam, g_w0), _ = ridge_meta_grad((X, y, Xv, yv, lam, w0), CG(tol=1e-13))
        return grad_out * g_lam, grad_out * g_w0, None, None, None, None


def test_ridge_gradcheck(ridge):
    X, y, Xv, yv, lam, w0 = ridge
    assert torch.autograd.gradcheck(lambda a, b: _ImplicitRidge.apply(a, b, X, y, Xv, yv), (lam, w0))


def test_meta_backward_accumulates_like_backward(ridge):
    X, y, Xv, yv, lam, w0 = ridge
    unused = torch.zeros(3, dtype=D, requires_grad=True)
    w = ridge_solution(X, y, lam, w0).requires_grad_()
    outer = 0.5 * ((Xv @ w - yv) ** 2).sum()
    (g_lam, g_w0, g_unused), _ = implicit.meta_grad(outer, [w], ridge_condition(X, y), [lam, w0, unused],
                                                    solver=CG(tol=1e-12))
    assert torch.equal(g_unused, torch.zeros(3, dtype=D))
    for _ in range(2):
        w = ridge_solution(X, y, lam, w0).requires_grad_()
        outer = 0.5 * ((Xv @ w - yv) ** 2).sum()
        implicit.meta_backward(outer, [w], ridge_condition(X, y), [lam, w0, unused], solver=CG(tol=1e-12))
    assert torch.allclose(lam.grad, 2 * g_lam) and torch.allclose(w0.grad, 2 * g_w0)
    assert torch.equal(unused.grad, torch.zeros(3, dtype=D))


def test_direct_dependence_of_outer_loss_on_meta_is_added(ridge):
    X, y, Xv, yv, lam, w0 = ridge
    w = ridge_solution(X, y, lam, w0).requires_grad_()
    outer = 0.5 * ((Xv @ w - yv) ** 2).sum() + 3.0 * lam
    (g_lam, _), _ = implicit.meta_grad(outer, [w], ridge_condition(X, y), [lam, w0], solver=CG(tol=1e-12))
    assert rel_err(g_lam, ridge_closed_form(*ridge)[0] + 3.0) < 1e-8


# -- the solve does not converge: a warning or an error that names the solver, the residual and a fix --


@pytest.mark.parametrize("kind", ["cg", "neumann"])
def test_non_converging_solve_warns(ridge, kind):
    X, lam = ridge[0], ridge[4]
    if kind == "cg":
        solver, pattern = CG(tol=1e-12, max_iter=1), r"CG\(tol=1e-12, max_iter=1\) did not converge: relative residual"
    else:  # alpha = 3 / lambda_max: the series diverges
        solver, pattern = Neumann(alpha=3 * neumann_for(X, lam).alpha, max_iter=20), r"Neumann\(alpha=.*did not converge"
    with pytest.warns(ImplicitSolveWarning, match=pattern + r".*fix: raise max_iter") as record:
        _, result = ridge_meta_grad(ridge, solver)
    assert not result.converged and result.residual > 1e-12
    assert f"{result.residual:.2e}" in str(record[0].message)
    assert ("lower alpha" in str(record[0].message)) == (kind == "neumann")
    assert record[0].filename == __file__  # the warning points at the caller, not at higher_core


def test_non_converging_solve_raises(ridge):
    with pytest.raises(ImplicitSolveError, match=r"CG\(.*max_iter=2\) did not converge: relative residual .* fix:"):
        ridge_meta_grad(ridge, CG(tol=1e-12, max_iter=2), on_fail="raise")


def test_indefinite_system_stops_cg(ridge):
    X, y, Xv, yv, lam, w0 = ridge
    w = ridge_solution(X, y, lam, w0).requires_grad_()
    concave = implicit.stationary(lambda p, m: -0.5 * m[0] * (p[0] ** 2).sum())
    with pytest.warns(ImplicitSolveWarning, match="positive-definite"):
        _, result = implicit.meta_grad(0.5 * ((Xv @ w - yv) ** 2).sum(), [w], concave, [lam])
    assert not result.converged and result.iterations == 1


# -- bad input ----------------------------------------------------------------------------------------


def test_bad_input_is_named(ridge):
    X, y, Xv, yv, lam, w0 = ridge
    w = ridge_solution(X, y, lam, w0).requires_grad_()
    F = ridge_condition(X, y)
    outer = lambda: 0.5 * ((Xv @ w - yv) ** 2).sum()  # noqa: E731
    with pytest.raises(ValueError, match="on_fail must be 'warn' or 'raise'"):
        implicit.meta_grad(outer(), [w], F, [lam], on_fail="ignore")
    with pytest.raises(ValueError, match="outer_loss must be a scalar tensor with a graph"):
        implicit.meta_grad(outer().detach(), [w], F, [lam])
    with pytest.raises(ValueError, match="no tensor of solution requires grad"):
        implicit.meta_grad(outer(), [w.detach()], F, [lam])
    with pytest.raises(ValueError, match="every tensor of meta_params must require grad"):
        implicit.meta_grad(outer(), [w], F, [lam.detach()])
    with pytest.raises(ValueError, match="optimality_fn returned 2 tensor"):
        implicit.meta_grad(outer(), [w], lambda p, m: [p[0], p[0]], [lam])
    with pytest.raises(ValueError, match=r"optimality_fn's output 0 is \(3,\), expected a tensor of shape \(4,\)"):
        implicit.meta_grad(outer(), [w], lambda p, m: [p[0][:3]], [lam])
    with pytest.raises(ValueError, match="have no graph: build them with create_graph=True"):
        implicit.meta_grad(outer(), [w], lambda p, m: [p[0].detach()], [lam])
    with pytest.raises(ValueError, match="a meta-parameter is also part of the solution"):
        implicit.meta_grad(outer(), [w], F, [w])
    with pytest.raises(ValueError, match="CG: max_iter must be a positive int"):
        CG(max_iter=0)
    with pytest.raises(ValueError, match="Neumann: alpha must be positive"):
        Neumann(alpha=-1.0)


# -- iMAML with a small MLP: implicit (test mode) against a long, converged unroll ---------------------

LAM, LR, STEPS = 2.0, 0.05, 500


@pytest.fixture
def imaml():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).to(D)
    x = torch.linspace(-2, 2, 8, dtype=D).unsqueeze(1)
    xq = torch.linspace(-1.7, 1.9, 6, dtype=D).unsqueeze(1)
    return model, (x, torch.sin(x)), (xq, torch.sin(xq))


def inner_objective(fmodel, model, support):
    x, y = support

    def objective(w, w0):
        prox = sum(((a - b) ** 2).sum() for a, b in zip(w, w0))
        return mse_loss(fmodel(x, params=w), y) + 0.5 * LAM * prox

    return lambda: objective(fmodel.fast_params, list(model.parameters())), objective


def unrolled_meta_grad(model, support, query):
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    with higher.innerloop_ctx(model, opt, copy_initial_weights=False) as (fmodel, diffopt):
        step_loss, _ = inner_objective(fmodel, model, support)
        for _ in range(STEPS):
            diffopt.step(step_loss())
        return torch.autograd.grad(mse_loss(fmodel(query[0]), query[1]), list(model.parameters()))


def implicit_meta_grad(model, support, query, opt, steps=STEPS, **kwargs):
    with higher.innerloop_ctx(model, opt, copy_initial_weights=False, track_higher_grads=False) as (fmodel, diffopt):
        step_loss, objective = inner_objective(fmodel, model, support)
        for _ in range(steps):
            diffopt.step(step_loss())
        outer = mse_loss(fmodel(query[0]), query[1])
        return implicit.meta_grad(outer, fmodel.parameters(), implicit.stationary(objective),
                                  model.parameters(), **kwargs)


def test_imaml_matches_converged_unroll(imaml):
    model, support, query = imaml
    want = unrolled_meta_grad(model, support, query)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    for solver in (CG(tol=1e-12), Neumann(alpha=LR, tol=1e-12, max_iter=2000)):
        got, result = implicit_meta_grad(model, support, query, opt, solver=solver)
        assert result.converged
        for g, w in zip(got, want):
            assert rel_err(g, w) < 1e-5


def test_imaml_with_adam_in_test_mode(imaml):
    """A stateful optimizer finds the same solution, hence the same meta-gradient, as gradient descent."""
    model, support, query = imaml
    sgd, _ = implicit_meta_grad(model, support, query, torch.optim.SGD(model.parameters(), lr=LR),
                                solver=CG(tol=1e-12))
    adam, result = implicit_meta_grad(model, support, query, torch.optim.Adam(model.parameters(), lr=0.01),
                                      steps=STEPS, solver=CG(tol=1e-12))
    assert result.converged
    for a, s in zip(adam, sgd):
        assert rel_err(a, s) < 1e-6
