"""ES and PES estimates of the meta-gradient w.r.t. the LSTM's weights, against the exact one.

A tiny LSTM (2 layers x 4 units: 293 weights) on a 3-dimensional quadratic, a
horizon of 20 steps in 4 windows of 5; the meta-loss is the sum of the losses
after every step. The exact meta-gradient comes from back-propagation through
the whole unroll (``DifferentiableLSTMOptimizer``), the truncated one from
``truncate()`` after every window. Each estimate must agree with its target
within its own standard error: along the exact gradient's direction and two
random directions (within 4 standard errors), and over all 293 coordinates (the
mean squared z-score near 1).
"""

from __future__ import annotations

import pytest
import torch

import higher_core
from higher_l2l import ESEstimate, LSTMOptimizer, PersistentES, es_gradient, lstm_step

HORIZON, WINDOW, LR, SIGMA, PAIRS = 20, 5, 0.1, 1e-4, 150


def _meta_gradient(lstm, problem, window: int) -> list[torch.Tensor]:
    """Back-propagation through the unroll, truncated every ``window`` steps (``HORIZON``: exact)."""
    grads = [torch.zeros_like(p) for p in lstm.parameters()]
    with higher_core.innerloop_ctx(problem, LSTMOptimizer(problem.parameters(), lstm, lr=LR)) as (fmodel, diffopt):
        for _ in range(HORIZON // window):
            total = torch.zeros((), dtype=torch.float64)
            for _ in range(window):
                diffopt.step(fmodel())
                total = total + fmodel()
            for g, d in zip(grads, torch.autograd.grad(total, list(lstm.parameters()))):
                g += d
            diffopt.truncate()
    return grads


def _window(lstm, problem, steps: int):
    names = [name for name, _ in lstm.named_parameters()]

    def run(weights, state):
        theta, lstm_state = state
        total = 0.0
        for _ in range(steps):
            theta, lstm_state = lstm_step(lstm, theta, problem.grad(theta), lstm_state, LR, dict(zip(names, weights)))
            total += float(problem.loss(theta))
        return total, (theta, lstm_state)

    return run


def _initial(lstm, problem):
    theta = problem.theta.detach().clone()
    return lambda: (theta, lstm.initial_state(theta))


def _assert_within_error(estimate: ESEstimate, target: list[torch.Tensor], what: str) -> dict[str, float]:
    g = torch.cat([t.reshape(-1) for t in target])
    directions = [g / g.norm()] + list(torch.nn.functional.normalize(
        torch.randn(2, g.numel(), generator=torch.Generator().manual_seed(7), dtype=g.dtype), dim=1))
    for k, u in enumerate(directions):
        projected = estimate.samples @ u
        error = projected.mean() - g @ u
        stderr = projected.std() / projected.numel() ** 0.5
        assert error.abs() <= 4 * stderr, f"{what}, direction {k}: off by {error:.3g}, standard error {stderr:.3g}"
    report = estimate.compare(target)
    assert 0.6 < report["mean_z2"] < 1.5, f"{what}: {report}"
    return report


@pytest.fixture
def exact(tiny_lstm, quadratic):
    return _meta_gradient(tiny_lstm, quadratic, HORIZON)


def test_the_window_function_is_the_differentiable_unroll(tiny_lstm, quadratic):
    opt = LSTMOptimizer(quadratic.parameters(), tiny_lstm, lr=LR)
    with higher_core.innerloop_ctx(quadratic, opt) as (fmodel, diffopt):
        total = 0.0
        for _ in range(HORIZON):
            diffopt.step(fmodel())
            total += float(fmodel().detach())
    loss, _ = _window(tiny_lstm, quadratic, HORIZON)([p.detach() for p in tiny_lstm.parameters()],
                                                     _initial(tiny_lstm, quadratic)())
    assert abs(loss - total) <= 1e-12 * abs(total)


def test_antithetic_es_is_within_its_error_of_the_exact_meta_gradient(tiny_lstm, quadratic, exact):
    estimate = es_gradient(lambda w: _window(tiny_lstm, quadratic, HORIZON)(w, _initial(tiny_lstm, quadratic)())[0],
                           list(tiny_lstm.parameters()), SIGMA, PAIRS, torch.Generator().manual_seed(0))
    assert estimate.samples.shape == (PAIRS, 293)
    _assert_within_error(estimate, exact, "antithetic ES")


def test_pes_is_unbiased_and_truncated_es_estimates_the_truncated_gradient(tiny_lstm, quadratic, exact):
    truncated = _meta_gradient(tiny_lstm, quadratic, WINDOW)
    flat = [torch.cat([g.reshape(-1) for g in gs]) for gs in (exact, truncated)]
    assert torch.nn.functional.cosine_similarity(*flat, dim=0) < 0.5  # truncation bias: a different direction
    for persistent, target, what in ((True, exact, "PES vs exact"), (False, truncated, "truncated ES vs TBPTT")):
        pes = PersistentES(list(tiny_lstm.parameters()), _initial(tiny_lstm, quadratic),
                           _window(tiny_lstm, quadratic, WINDOW), SIGMA, PAIRS, torch.Generator().manual_seed(1),
                           persistent=persistent)
        total = pes.step()
        for _ in range(HORIZON // WINDOW - 1):
            total = total + pes.step()
        _assert_within_error(total, target, what)
        if not persistent:  # and its bias is plain against the exact gradient (measured: 17 standard errors)
            g = torch.cat([t.reshape(-1) for t in exact])
            projected = total.samples @ (g / g.norm())
            assert (projected.mean() - g.norm()).abs() > 6 * projected.std() / projected.numel() ** 0.5


def test_es_of_a_non_differentiable_loss():
    phi = [torch.tensor([0.3, -0.2], dtype=torch.float64)]
    # the smoothed step function E[1{x + sigma e > 0}] has gradient N(x / sigma) / sigma: finite everywhere
    estimate = es_gradient(lambda p: float((p[0] > 0).sum()), phi, 0.5, 2000, torch.Generator().manual_seed(0))
    normal = torch.distributions.Normal(0.0, 1.0)
    expected = normal.log_prob(phi[0] / 0.5).exp() / 0.5
    assert ((estimate.flat - expected).abs() <= 4 * estimate.stderr).all()


@pytest.mark.parametrize("kwargs, error, message", [
    ({"sigma": 0.0}, ValueError, "sigma .* must be a positive number, got 0.0"),
    ({"pairs": 1}, ValueError, r"pairs must be an int >= 2 \(the standard error needs two\), got 1"),
    ({"params": []}, ValueError, r"no parameters to perturb: pass the meta-parameters \(list\(lstm.parameters\(\)\)\)"),
    ({"loss": lambda p: p[0]}, ValueError, r"loss must return a scalar loss, got a tensor of shape \(2,\)"),
])
def test_bad_es_inputs(kwargs, error, message):
    arguments = {"loss": lambda p: p[0].sum(), "params": [torch.zeros(2)], "sigma": 0.1, "pairs": 4, **kwargs}
    with pytest.raises(error, match=message):
        es_gradient(**arguments)


def test_estimates_of_different_sizes_do_not_add():
    a = ESEstimate(torch.zeros(3, 2), (torch.Size([2]),))
    with pytest.raises(ValueError, match="cannot add estimates of shapes"):
        a + ESEstimate(torch.zeros(4, 2), (torch.Size([2]),))
