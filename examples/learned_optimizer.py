"""Learning to learn by gradient descent by gradient descent (Andrychowicz et al. 2016), section 3.1.

A coordinatewise LSTM optimizer (2 layers x 20 units, shared by every
coordinate, the paper's gradient preprocessing, output scale 0.1) is
meta-trained on random 10-dimensional quadratics f(theta) = ||W theta - y||^2
(W, y standard normal, theta_0 ~ N(0, 0.01^2), as the paper's code): each
meta-iteration draws a batch of functions, unrolls the learned optimizer for
100 steps and takes a meta-step on the LSTM's weights with Adam every 20 steps
(truncated back-propagation: ``diffopt.truncate()``), the meta-loss being the
mean of f over the window's steps. Then, on held-out quadratics, it is compared
over the same 100 steps with Adam, RMSprop and SGD, each with the learning rate
that did best on training functions (a grid search).

The functions of a batch are one (B, 10) parameter: every optimizer here is
coordinatewise, so each function is optimized on its own, in one pass.

Run:  python examples/learned_optimizer.py            (about 2.5 minutes on one CPU core)
      python examples/learned_optimizer.py --plot learned_optimizer.png   (loss curves; needs matplotlib)
      python examples/learned_optimizer.py --quick       (a few seconds: the tests' smoke run)
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import higher_core as higher
from higher_l2l import CoordinateLSTM, LSTMOptimizer

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the examples' helpers, however this is loaded
from _progress import Progress  # noqa: E402

DIM = 10
LR_GRID = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)


class Quadratics(nn.Module):
    """``B`` random quadratics f_b(theta_b) = ||W_b theta_b - y_b||^2; ``forward`` returns the B losses."""

    def __init__(self, functions: int, generator: torch.Generator) -> None:
        super().__init__()
        self.W = torch.randn(functions, DIM, DIM, generator=generator)
        self.y = torch.randn(functions, DIM, generator=generator)
        self.theta = nn.Parameter(0.01 * torch.randn(functions, DIM, generator=generator))

    def forward(self) -> torch.Tensor:
        return (torch.einsum("bij,bj->bi", self.W, self.theta) - self.y).pow(2).sum(-1)


def meta_train(lstm: CoordinateLSTM, iterations: int, functions: int, horizon: int, unroll: int,
               meta_lr: float, generator: torch.Generator) -> list[float]:
    """Truncated meta-training of ``lstm``; returns the meta-loss of each meta-iteration."""
    meta_opt = torch.optim.Adam(lstm.parameters(), lr=meta_lr)
    history = []
    bar = Progress(iterations, "meta-training")
    for iteration in range(iterations):
        problem = Quadratics(functions, generator)
        inner_opt = LSTMOptimizer(problem.parameters(), lstm, lr=0.1)
        total = 0.0
        with higher.innerloop_ctx(problem, inner_opt) as (fmodel, diffopt):
            for _ in range(horizon // unroll):
                meta_loss = torch.zeros(())
                for _ in range(unroll):
                    diffopt.step(fmodel().sum())  # one loss per function: their sum steps each on its own
                    meta_loss = meta_loss + fmodel().mean() / unroll
                meta_opt.zero_grad()
                meta_loss.backward()
                nn.utils.clip_grad_norm_(lstm.parameters(), 1.0)
                meta_opt.step()
                diffopt.truncate()  # the next window starts from here, without a graph to the past
                total += meta_loss.item() * unroll / horizon
        history.append(total)
        bar.update(iteration + 1, **{"meta-loss": f"{total:.3g}"})
    bar.close()
    return history


def loss_curve(make_opt: Callable[[list[nn.Parameter]], torch.optim.Optimizer], problem: Quadratics,
               steps: int) -> torch.Tensor:
    """The mean loss over ``problem``'s functions before each step and after the last, (steps + 1,)."""
    theta0 = problem.theta.detach().clone()
    opt = make_opt([problem.theta])
    curve = []
    for _ in range(steps):
        opt.zero_grad()
        losses = problem()
        curve.append(losses.detach().mean())
        losses.sum().backward()
        opt.step()
    curve.append(problem().detach().mean())
    with torch.no_grad():
        problem.theta.copy_(theta0)
    return torch.stack(curve)


BASELINES: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": lambda params, lr: torch.optim.Adam(params, lr=lr),
    "rmsprop": lambda params, lr: torch.optim.RMSprop(params, lr=lr),
    "sgd": lambda params, lr: torch.optim.SGD(params, lr=lr),
}


def tune(name: str, problem: Quadratics, steps: int) -> float:
    """The learning rate of ``LR_GRID`` with the lowest mean final loss on the training functions."""
    def final(lr: float) -> float:
        value = loss_curve(lambda p: BASELINES[name](p, lr), problem, steps)[-1].item()
        return value if math.isfinite(value) else math.inf

    return min(LR_GRID, key=final)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=200, help="meta-iterations (batches of functions)")
    parser.add_argument("--functions", type=int, default=128, help="quadratics per meta-iteration")
    parser.add_argument("--horizon", type=int, default=100, help="inner steps per function (the paper: 100)")
    parser.add_argument("--unroll", type=int, default=20, help="steps per truncated window (the paper: 20)")
    parser.add_argument("--meta-lr", type=float, default=3e-3, help="Adam's lr on the LSTM's weights")
    parser.add_argument("--test-functions", type=int, default=500, help="held-out quadratics")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (one is fastest for these sizes)")
    parser.add_argument("--plot", metavar="PNG", help="write the held-out loss curves there (needs matplotlib)")
    parser.add_argument("--quick", action="store_true", help="a few seconds: 3 meta-iterations of 8 functions, "
                        "a horizon of 20 in windows of 5")
    args = parser.parse_args(argv)
    if args.quick:
        args.iterations, args.functions, args.horizon, args.unroll, args.test_functions = 3, 8, 20, 5, 16
    if args.horizon % args.unroll:
        parser.error(f"--horizon {args.horizon} is not a multiple of --unroll {args.unroll}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)

    lstm = CoordinateLSTM(hidden_size=20, num_layers=2, generator=generator)
    start = time.perf_counter()
    history = meta_train(lstm, args.iterations, args.functions, args.horizon, args.unroll, args.meta_lr, generator)
    trained = time.perf_counter() - start
    print(f"meta-trained {args.iterations} x {args.functions} quadratics, horizon {args.horizon} in windows of "
          f"{args.unroll}, in {trained:.1f} s; meta-loss {history[0]:.3g} -> {history[-1]:.3g}")

    training = Quadratics(args.functions, generator)
    rates = {name: tune(name, training, args.horizon) for name in BASELINES}
    print("tuned learning rates (grid " + ", ".join(f"{lr:g}" for lr in LR_GRID) + "): "
          + ", ".join(f"{name} {lr:g}" for name, lr in rates.items()))

    held_out = Quadratics(args.test_functions, generator)
    curves = {"learned": loss_curve(lambda p: LSTMOptimizer(p, lstm, lr=0.1), held_out, args.horizon)}
    for name, lr in rates.items():
        curves[name] = loss_curve(lambda p, name=name, lr=lr: BASELINES[name](p, lr), held_out, args.horizon)
    print(f"mean loss over {args.test_functions} held-out quadratics after n steps:")
    marks = sorted({1, 10, args.horizon // 2, args.horizon})
    print("  " + "".join(f"{'n=' + str(n):>10}" for n in marks) + "  optimizer")
    for name, curve in curves.items():
        print("  " + "".join(f"{curve[n].item():10.4g}" for n in marks) + f"  {name}")
    if args.plot:
        from _plotting import pyplot, save

        plt = pyplot()
        fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
        for name, curve in curves.items():
            left.plot(curve.numpy(), label=f"{name}" + (f" (lr {rates[name]:g})" if name in rates else " (LSTM)"))
        left.set(yscale="log", xlabel="step", ylabel="mean loss, held-out quadratics",
                 title="10-d quadratics (Andrychowicz et al. 2016, Fig. 4)")
        left.legend(fontsize=8)
        right.plot(history)
        right.set(yscale="log", xlabel="meta-iteration", ylabel="meta-loss (mean f over 100 steps)",
                  title="meta-training")
        fig.tight_layout()
        save(fig, args.plot)
    a, b, c = (curves[name][-1].item() for name in ("learned", "adam", "sgd"))
    print(f"held-out final loss: learned {a:.4g} adam {b:.4g} sgd {c:.4g}")


if __name__ == "__main__":
    main()
