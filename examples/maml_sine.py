"""MAML on few-shot sine-wave regression (Finn et al. 2017), with higher-core.

Each task is a sine wave y = A sin(x - phi), A ~ U[0.1, 5], phi ~ U[0, pi],
x ~ U[-5, 5]; the learner sees K = 10 points (support) and is scored on 10
others (query). MAML meta-learns initial weights from which a few SGD steps on
the support set fit the task; the baseline pre-trains the same network on all
tasks jointly and fine-tunes it the same way.

Run:  python examples/maml_sine.py   (meta-training in 11-20 s on one CPU core)
      python examples/maml_sine.py --plot maml_sine.png   (Finn et al. 2017, Fig. 2; needs matplotlib)
      torchrun --nproc_per_node=2 examples/maml_sine.py --distributed   (the meta-batch split in 2)
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn.functional import mse_loss

import higher_core as higher

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the examples' helpers, however this is loaded
from _progress import Progress  # noqa: E402

K = 10
INNER_LR = 0.01


# Each task's row of U[0, 1) draws maps to amplitude (row 0), phase (row 1) and inputs: offset + scale * u.
_AFFINE = {dtype: (torch.tensor([0.1, 0.0] + [-5.0] * (2 * K), dtype=dtype).unsqueeze(-1),
                   torch.tensor([4.9, math.pi] + [10.0] * (2 * K), dtype=dtype).unsqueeze(-1))
           for dtype in (torch.float32, torch.float64)}


def _tasks_from_uniform(u: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Tasks from U[0, 1) draws shaped (n, 2K + 2, 1): support and query inputs and targets, (n, K, 1)."""
    offset, scale = _AFFINE[u.dtype]
    v = torch.addcmul(offset, u, scale)
    x = v[:, 2:]
    y = v[:, :1] * torch.sin(x - v[:, 1:2])
    return x[:, :K], y[:, :K], x[:, K:], y[:, K:]


def sample_tasks(n: int, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    """``n`` tasks: support and query inputs and targets, shaped (n, K, 1)."""
    return _tasks_from_uniform(torch.rand(n, 2 * K + 2, 1, generator=generator, dtype=dtype))


def sample_meta_batch(seed: int, iteration: int, tasks: range, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """Tasks ``tasks`` of meta-iteration ``iteration``: rows of one draw seeded by ``(seed, iteration)``.

    Task ``i`` is row ``i`` of the draw (torch's CPU generator fills a tensor in
    order, so the first rows do not depend on how many follow): it depends only
    on ``(seed, iteration, i)``, and the meta-batch of one process is the
    concatenation of the shares of several.
    """
    generator = torch.Generator().manual_seed(iteration_seed(seed, iteration))
    draws = torch.rand(tasks.stop, 2 * K + 2, 1, dtype=dtype, generator=generator)
    return _tasks_from_uniform(draws[tasks.start:])


def iteration_seed(seed: int, iteration: int) -> int:
    """A 32-bit seed for one meta-iteration (torch's CPU generator keeps only 32 bits of a seed)."""
    return int.from_bytes(hashlib.blake2b(f"{seed},{iteration}".encode(), digest_size=4).digest(), "little")


def make_net() -> nn.Module:
    return nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1))


def query_losses(model: nn.Module, inner_opt: torch.optim.Optimizer, tasks: tuple[torch.Tensor, ...],
                 inner_steps: int) -> torch.Tensor:
    """Every task of the meta-batch at once (``tasks=``): ``inner_steps`` SGD steps on each
    support set, then each query loss; inputs shaped (T, K, 1), the losses (T,)."""
    xs, ys, xq, yq = tasks
    with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False, tasks=len(xs)) as (fnet, diffopt):
        for _ in range(inner_steps):
            diffopt.step((fnet(xs) - ys).pow(2).mean((1, 2)))
        return (fnet(xq) - yq).pow(2).mean((1, 2))


def share(meta_batch: int, rank: int, world: int) -> range:
    """The tasks of the meta-batch that process ``rank`` of ``world`` runs (a contiguous share)."""
    if meta_batch % world:
        raise SystemExit(f"--meta-batch {meta_batch} must be a multiple of the number of processes ({world})")
    size = meta_batch // world
    return range(rank * size, (rank + 1) * size)


def meta_train(model: nn.Module, meta_opt: torch.optim.Optimizer, iterations: int, meta_batch: int,
               inner_steps: int, seed: int, dtype: torch.dtype = torch.float32, rank: int = 0, world: int = 1,
               progress: Progress | None = None) -> None:
    """MAML; ``model`` may be a DistributedDataParallel, and then runs this process's share of each meta-batch."""
    inner_opt = torch.optim.SGD(model.parameters(), lr=INNER_LR)
    mine = share(meta_batch, rank, world)
    for iteration in range(iterations):
        xs, ys, xq, yq = sample_meta_batch(seed, iteration, mine, dtype)
        meta_opt.zero_grad()
        loss = query_losses(model, inner_opt, (xs, ys, xq, yq), inner_steps).mean()
        meta_loss = loss.item()
        # averages the meta-gradients across processes under DDP; loss.backward() otherwise
        higher.distributed.backward(loss, model)
        meta_opt.step()
        if progress is not None:
            progress.update(iteration + 1, **{"meta-loss": meta_loss})


def pretrain(net: nn.Module, iterations: int, meta_batch: int, seed: int, dtype: torch.dtype) -> None:
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for iteration in range(iterations):
        xs, ys, _, _ = sample_meta_batch(seed, iteration, range(meta_batch), dtype)
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


def adapted_predictions(net: nn.Module, task: tuple[torch.Tensor, ...], x: torch.Tensor,
                        steps: tuple[int, ...]) -> dict[int, torch.Tensor]:
    """``net``'s predictions at ``x`` after each number of SGD steps on the task's support set."""
    xs, ys = task[0], task[1]
    inner_opt = torch.optim.SGD(net.parameters(), lr=INNER_LR)
    predictions = {}
    with higher.innerloop_ctx(net, inner_opt, track_higher_grads=False) as (fnet, diffopt):
        for step in range(max(steps) + 1):
            if step in steps:
                with torch.no_grad():
                    predictions[step] = fnet(x).squeeze(-1)
            if step < max(steps):
                diffopt.step(mse_loss(fnet(xs), ys))
    return predictions


def plot(path: str, nets: dict[str, nn.Module], curves: dict[str, dict[int, float]], dtype: torch.dtype) -> None:
    """Finn et al. (2017) Fig. 2: fits on held-out waves after 0, 1, 10 steps, and the query-loss curves."""
    from _plotting import pyplot, save

    plt = pyplot()
    u = torch.rand(3, 2 * K + 2, 1, generator=torch.Generator().manual_seed(2017), dtype=dtype)
    tasks = _tasks_from_uniform(u)
    grid = torch.linspace(-5, 5, 200, dtype=dtype).unsqueeze(-1)
    steps = (0, 1, 10)
    fig = plt.figure(figsize=(12, 5.2))
    layout = fig.add_gridspec(len(nets), 4, width_ratios=(1, 1, 1, 1.25), wspace=0.35, hspace=0.3,
                              left=0.05, right=0.98, bottom=0.14, top=0.9)
    colors = {0: "#9ecae1", 1: "#3182bd", 10: "#08306b"}
    for row, (name, net) in enumerate(nets.items()):
        for col in range(3):
            ax = fig.add_subplot(layout[row, col])
            task = tuple(t[col] for t in tasks)
            amplitude, phase = 0.1 + 4.9 * u[col, 0, 0], math.pi * u[col, 1, 0]
            ax.plot(grid[:, 0], amplitude * torch.sin(grid[:, 0] - phase), color="#d62728", lw=2,
                    label="true function")
            for step, prediction in adapted_predictions(net, task, grid, steps).items():
                ax.plot(grid[:, 0], prediction, color=colors[step], lw=1.3, ls="--" if step == 0 else "-",
                        label=f"after {step} step{'s' * (step != 1)}")
            ax.scatter(task[0][:, 0], task[1][:, 0], color="black", marker="^", s=18, zorder=3,
                       label=f"{K} support points")
            ax.set_ylim(-5.5, 5.5)
            ax.tick_params(labelsize=7)
            if col == 0:
                ax.set_ylabel(name, fontsize=9)
            if row == 0 and col == 0:
                fig.legend(*ax.get_legend_handles_labels(), loc="lower center", ncol=5, fontsize=8, frameon=False)
    ax = fig.add_subplot(layout[:, 3])
    for (name, curve), color in zip(curves.items(), ("#08306b", "#e6550d")):
        ax.plot(list(curve), list(curve.values()), marker="o", ms=3, color=color, label=name)
    ax.set_xlabel("SGD steps on the support set", fontsize=9)
    ax.set_ylabel("query MSE (held-out tasks)", fontsize=9)
    ax.set_ylim(bottom=0)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=8, frameon=False)
    ax.set_title("loss after adaptation", fontsize=9)
    fig.suptitle(f"MAML vs pre-training, few-shot sine regression (K={K}, SGD lr={INNER_LR})", fontsize=10)
    save(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2500)
    parser.add_argument("--meta-batch", type=int, default=10)
    parser.add_argument("--inner-steps", type=int, default=1)
    parser.add_argument("--test-tasks", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads; the demo's tensors are tiny, so a second thread costs more in "
                             "waking it (sin, sqrt of a few hundred floats: milliseconds) than it saves")
    parser.add_argument("--distributed", action="store_true",
                        help="split each meta-batch across the processes of torchrun (gloo on CPU, NCCL on GPU)")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="draw the fits and loss curves (Finn et al. 2017, Fig. 2); needs matplotlib")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    torch.set_num_threads(args.threads)

    rank, world = 0, 1
    if args.distributed:
        higher.distributed.init_process_group()
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    torch.manual_seed(args.seed)
    maml_net, baseline_net = make_net().to(dtype), make_net().to(dtype)
    baseline_net.load_state_dict(maml_net.state_dict())
    model = torch.nn.parallel.DistributedDataParallel(maml_net) if args.distributed else maml_net
    # built before the clock starts: torch.optim's first optimizer imports torch._dynamo (about 3 s on
    # a 2-core machine, once per process), which is not meta-training. fused=True: one kernel per tensor
    meta_opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    start = time.perf_counter()
    progress = Progress(args.iterations, "meta-training") if rank == 0 else None
    meta_train(model, meta_opt, args.iterations, args.meta_batch, args.inner_steps, args.seed, dtype, rank, world, progress)
    if progress is not None:
        progress.close()
    trained = time.perf_counter() - start
    if args.distributed:
        del model, meta_opt  # DDP's reducer before the group: on torch < 2.8 the other order can hang
        gc.collect()
        torch.distributed.destroy_process_group()
    if rank != 0:
        return
    pretrain(baseline_net, args.iterations, args.meta_batch, args.seed, dtype)

    test_tasks = sample_tasks(args.test_tasks, torch.Generator().manual_seed(12345), dtype)
    steps = (0, 1, 10)
    rows = {"MAML (meta-learned)": evaluate(maml_net, test_tasks, steps),
            "pre-trained baseline": evaluate(baseline_net, test_tasks, steps)}
    processes = f" on {world} processes" if args.distributed else ""
    print(f"MAML sine regression, K={K} shots, {args.iterations} meta-iterations "
          f"x {args.meta_batch} tasks, meta-trained in {trained:.0f} s{processes}")
    print(f"query MSE on {args.test_tasks} new tasks, after n SGD steps (lr={INNER_LR}) on the support set:")
    print(f"  {'weights':<22}" + "".join(f"{'n=' + str(s):>10}" for s in steps))
    for name, losses in rows.items():
        print(f"  {name:<22}" + "".join(f"{losses[s]:>10.3f}" for s in steps))
    if args.plot:
        curves = {name: evaluate(net, test_tasks, tuple(range(11)))
                  for name, net in (("MAML (meta-learned)", maml_net), ("pre-trained baseline", baseline_net))}
        plot(args.plot, {"MAML": maml_net, "pre-trained": baseline_net}, curves, dtype)
    print("checksum", repr(sum(float(p.detach().sum()) for p in maml_net.parameters())))


if __name__ == "__main__":
    main()
