"""Bias and variance of the meta-gradient estimators of higher-l2l against the exact meta-gradient.

The problem of plugins/higher-l2l/tests/test_es.py: a tiny coordinatewise LSTM
optimizer (2 layers x 4 units, 293 weights, float64) on a random 3-dimensional
quadratic, a horizon of 20 steps in 4 windows of 5, the meta-loss the sum of the
losses after every step. Against the exact meta-gradient (back-propagation
through all 20 steps) it compares truncated back-propagation (TBPTT, a
``truncate()`` every window), antithetic ES over the whole horizon, PES over
the windows and truncated ES, each estimator with ``--pairs`` antithetic pairs.

Columns: cosine similarity and relative error ``|g_hat - g| / |g|`` with the
exact gradient; the relative error its standard errors predict for an unbiased
estimate, ``sqrt(sum se_k^2) / |g|``; the mean squared z-score over the 293
weights (about 1 when unbiased); the error along the exact gradient's direction
in standard errors.

Run:  python benchmarks/l2l_estimators.py [--pairs 1000]
"""

from __future__ import annotations

import argparse
import time

import torch

import higher_core
from higher_l2l import CoordinateLSTM, ESEstimate, LSTMOptimizer, PersistentES, es_gradient, lstm_step

HORIZON, WINDOW, LR, SIGMA = 20, 5, 0.1, 1e-4


class Quadratic(torch.nn.Module):
    def __init__(self, n: int = 3, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = torch.randn(n, n, generator=g, dtype=torch.float64)
        self.y = torch.randn(n, generator=g, dtype=torch.float64)
        self.theta = torch.nn.Parameter(0.1 * torch.randn(n, generator=g, dtype=torch.float64))

    def loss(self, theta: torch.Tensor) -> torch.Tensor:
        return (self.W @ theta - self.y).pow(2).sum()

    def forward(self) -> torch.Tensor:
        return self.loss(self.theta)


def backprop(lstm: CoordinateLSTM, problem: Quadratic, window: int) -> torch.Tensor:
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
    return torch.cat([g.reshape(-1) for g in grads])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=1000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    lstm = CoordinateLSTM(hidden_size=4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    problem = Quadratic()
    names = [n for n, _ in lstm.named_parameters()]
    phi = [p.detach() for p in lstm.parameters()]
    theta0 = problem.theta.detach().clone()

    def initial():
        return theta0, lstm.initial_state(theta0)

    def window(steps):
        def run(weights, state):
            theta, lstm_state = state
            total = 0.0
            for _ in range(steps):
                grad = 2 * problem.W.T @ (problem.W @ theta - problem.y)
                theta, lstm_state = lstm_step(lstm, theta, grad, lstm_state, LR, dict(zip(names, weights)))
                total += float(problem.loss(theta))
            return total, (theta, lstm_state)
        return run

    exact = backprop(lstm, problem, HORIZON)
    rows = []
    start = time.perf_counter()
    tbptt = backprop(lstm, problem, WINDOW)
    rows.append(("TBPTT (windows of 5)", 1, None, tbptt, time.perf_counter() - start))

    def pes(persistent: bool) -> ESEstimate:
        estimator = PersistentES(phi, initial, window(WINDOW), SIGMA, args.pairs, torch.Generator().manual_seed(1),
                                 persistent=persistent)
        total = estimator.step()
        for _ in range(HORIZON // WINDOW - 1):
            total = total + estimator.step()
        return total

    for name, make in (
        ("antithetic ES (whole horizon)",
         lambda: es_gradient(lambda w: window(HORIZON)(w, initial())[0], phi, SIGMA, args.pairs,
                             torch.Generator().manual_seed(0))),
        ("PES (windows of 5)", lambda: pes(True)),
        ("truncated ES (windows of 5)", lambda: pes(False)),
    ):
        start = time.perf_counter()
        estimate = make()
        rows.append((name, args.pairs, estimate, estimate.flat, time.perf_counter() - start))

    u = exact / exact.norm()
    print(f"293 LSTM weights, horizon {HORIZON} in windows of {WINDOW}, sigma {SIGMA:g}, |g| = {exact.norm():.4g}")
    print("| estimator | pairs | cosine | relative error | expected if unbiased | mean z^2 | error along g (s.e.) "
          "| time (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, pairs, estimate, flat, seconds in rows:
        cosine = float(torch.nn.functional.cosine_similarity(flat, exact, dim=0))
        relative = float((flat - exact).norm() / exact.norm())
        if estimate is None:
            print(f"| {name} | exact | {cosine:.3f} | {relative:.3f} | 0 | - | - | {seconds:.2f} |")
            continue
        report = estimate.compare([exact])
        projected = estimate.samples @ u
        along = float((projected.mean() - exact @ u) / (projected.std() / pairs ** 0.5))
        print(f"| {name} | {pairs} | {cosine:.3f} | {relative:.3f} | {report['expected_relative_error']:.3f} "
              f"| {report['mean_z2']:.2f} | {along:+.1f} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
