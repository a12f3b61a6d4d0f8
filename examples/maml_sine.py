"""MAML on few-shot sine-wave regression (Finn et al. 2017), with higher-core.

Each task is a sine wave y = A sin(x - phi), A ~ U[0.1, 5], phi ~ U[0, pi],
x ~ U[-5, 5]; the learner sees K = 10 points (support) and is scored on 10
others (query). MAML meta-learns initial weights from which a few SGD steps on
the support set fit the task; the baseline pre-trains the same network on all
tasks jointly and fine-tunes it the same way.

Run:  python examples/maml_sine.py   (about a minute on 2 CPU cores)
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from torch import nn
from torch.nn.functional import mse_loss

import higher_core as higher

K = 10
INNER_LR = 0.01


def sample_tasks(n: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """``n`` tasks: support and query inputs and targets, shaped (n, K, 1)."""
    amplitude = torch.empty(n, 1, 1).uniform_(0.1, 5.0, generator=generator)
    phase = torch.empty(n, 1, 1).uniform_(0.0, math.pi, generator=generator)
    x = torch.empty(n, 2 * K, 1).uniform_(-5.0, 5.0, generator=generator)
    y = amplitude * torch.sin(x - phase)
    return x[:, :K], y[:, :K], x[:, K:], y[:, K:]


def make_net() -> nn.Module:
    return nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1))


def meta_train(net: nn.Module, iterations: int, meta_batch: int, inner_steps: int, g: torch.Generator) -> None:
    meta_opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    inner_opt = torch.optim.SGD(net.parameters(), lr=INNER_LR)
    for _ in range(iterations):
        xs, ys, xq, yq = sample_tasks(meta_batch, g)
        meta_opt.zero_grad()
        for i in range(meta_batch):
            with higher.innerloop_ctx(net, inner_opt, copy_initial_weights=False) as (fnet, diffopt):
                for _ in range(inner_steps):
                    diffopt.step(mse_loss(fnet(xs[i]), ys[i]))
                (mse_loss(fnet(xq[i]), yq[i]) / meta_batch).backward()
        meta_opt.step()


def pretrain(net: nn.Module, iterations: int, meta_batch: int, g: torch.Generator) -> None:
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(iterations):
        xs, ys, _, _ = sample_tasks(meta_batch, g)
        opt.zero_grad()
        mse_loss(net(xs.reshape(-1, 1)), ys.reshape(-1, 1)).backward()
        opt.step()


def evaluate(net: nn.Module, tasks: tuple[torch.Tensor, ...], steps: tuple[int, ...]) -> dict[int, float]:
    """Mean query loss after each number of SGD steps on the support set (test mode)."""
    xs, ys, xq, yq = tasks
    inner_opt = torch.optim.SGD(net.parameters(), lr=INNER_LR)
    totals = dict.fromkeys(steps, 0.0)
    for i in range(xs.shape[0]):
        with higher.innerloop_ctx(net, inner_opt, track_higher_grads=False) as (fnet, diffopt):
            for step in range(max(steps) + 1):
                if step in totals:
                    with torch.no_grad():
                        totals[step] += mse_loss(fnet(xq[i]), yq[i]).item()
                if step < max(steps):
                    diffopt.step(mse_loss(fnet(xs[i]), ys[i]))
    return {s: total / xs.shape[0] for s, total in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2500)
    parser.add_argument("--meta-batch", type=int, default=10)
    parser.add_argument("--inner-steps", type=int, default=1)
    parser.add_argument("--test-tasks", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    maml_net, baseline_net = make_net(), make_net()
    baseline_net.load_state_dict(maml_net.state_dict())
    start = time.perf_counter()
    meta_train(maml_net, args.iterations, args.meta_batch, args.inner_steps, torch.Generator().manual_seed(1))
    trained = time.perf_counter() - start
    pretrain(baseline_net, args.iterations, args.meta_batch, torch.Generator().manual_seed(1))

    test_tasks = sample_tasks(args.test_tasks, torch.Generator().manual_seed(12345))
    steps = (0, 1, 10)
    rows = {"MAML (meta-learned)": evaluate(maml_net, test_tasks, steps),
            "pre-trained baseline": evaluate(baseline_net, test_tasks, steps)}
    print(f"MAML sine regression, K={K} shots, {args.iterations} meta-iterations "
          f"x {args.meta_batch} tasks, meta-trained in {trained:.0f} s")
    print(f"query MSE on {args.test_tasks} new tasks, after n SGD steps (lr={INNER_LR}) on the support set:")
    print(f"  {'weights':<22}" + "".join(f"{'n=' + str(s):>10}" for s in steps))
    for name, losses in rows.items():
        print(f"  {name:<22}" + "".join(f"{losses[s]:>10.3f}" for s in steps))


if __name__ == "__main__":
    main()
