"""iMAML on few-shot sine-wave regression (Rajeswaran et al. 2019), with higher-core.

The tasks, network and evaluation are those of ``maml_sine.py``. Where MAML differentiates
through its inner SGD steps, iMAML adapts to each task by (approximately) solving

    w*(w0) = argmin_w  support_loss(w) + lam/2 ||w - w0||^2

in test mode (no graph, so the inner loop may be long), and takes the meta-gradient of the
query loss w.r.t. the initial weights w0 from the optimality condition of that problem
(``higher_core.implicit``: the implicit function theorem, solved by conjugate gradient).

Run:  python examples/imaml_sine.py   (well under a minute on one core)
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
from maml_sine import INNER_LR, K, evaluate, make_net, sample_tasks
from torch.nn.functional import mse_loss

import higher_core as higher
from higher_core import implicit


def meta_train(net: torch.nn.Module, iterations: int, meta_batch: int, inner_steps: int, inner_lr: float,
               lam: float, g: torch.Generator) -> tuple[int, int]:
    """iMAML; return (solves, solves that missed the CG tolerance, i.e. approximate meta-gradients)."""
    meta_opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    inner_opt = torch.optim.SGD(net.parameters(), lr=inner_lr)
    solver = implicit.CG(tol=1e-2, max_iter=10)
    inexact = 0
    for _ in range(iterations):
        xs, ys, xq, yq = sample_tasks(meta_batch, g)
        meta_opt.zero_grad()
        for i in range(meta_batch):
            with higher.innerloop_ctx(net, inner_opt, copy_initial_weights=False,
                                      track_higher_grads=False) as (fnet, diffopt):
                def inner(w: list[torch.Tensor], w0: list[torch.Tensor]) -> torch.Tensor:
                    prox = sum(((a - b) ** 2).sum() for a, b in zip(w, w0))
                    return mse_loss(fnet(xs[i], params=w), ys[i]) + 0.5 * lam * prox

                for _ in range(inner_steps):
                    diffopt.step(inner(fnet.fast_params, list(net.parameters())))
                with warnings.catch_warnings():  # counted below instead of printed once per task
                    warnings.simplefilter("ignore", implicit.ImplicitSolveWarning)
                    result = implicit.meta_backward(mse_loss(fnet(xq[i]), yq[i]) / meta_batch, fnet.parameters(),
                                                    implicit.stationary(inner), net.parameters(), solver=solver)
                inexact += not result.converged
        meta_opt.step()
    return iterations * meta_batch, inexact


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--meta-batch", type=int, default=4)
    parser.add_argument("--inner-steps", type=int, default=10)
    parser.add_argument("--inner-lr", type=float, default=0.02)
    parser.add_argument("--lam", type=float, default=5.0, help="strength of the proximal term")
    parser.add_argument("--test-tasks", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    net = make_net()
    test_tasks = sample_tasks(args.test_tasks, torch.Generator().manual_seed(12345))
    steps = (0, 1, 10)
    before = evaluate(net, test_tasks, steps)
    start = time.perf_counter()
    solves, inexact = meta_train(net, args.iterations, args.meta_batch, args.inner_steps, args.inner_lr, args.lam,
                                 torch.Generator().manual_seed(1))
    trained = time.perf_counter() - start
    after = evaluate(net, test_tasks, steps)
    print(f"iMAML sine regression, K={K} shots, {args.iterations} meta-iterations x {args.meta_batch} tasks, "
          f"inner loop: {args.inner_steps} SGD steps (lr={args.inner_lr}, lam={args.lam}) in test mode, "
          f"meta-trained in {trained:.0f} s")
    print(f"CG solves that missed tol=1e-2 within 10 products: {inexact} of {solves}")
    print(f"query MSE on {args.test_tasks} new tasks, after n SGD steps (lr={INNER_LR}) on the support set:")
    print(f"  {'weights':<22}" + "".join(f"{'n=' + str(s):>10}" for s in steps))
    for name, losses in (("initial (random)", before), ("iMAML (meta-learned)", after)):
        print(f"  {name:<22}" + "".join(f"{losses[s]:>10.3f}" for s in steps))


if __name__ == "__main__":
    main()
