"""Batched tasks: ``innerloop_ctx(..., tasks=T)`` against a per-task loop and a hand-written vmap.

Two MAML workloads, one meta-gradient each (inner loop plus backward to the
initial weights):

- sine: the demo's MLP 1-40-40-1 (``examples/maml_sine.py``), 25 tasks of K=10
  support and 10 query points, 5 SGD steps (lr 0.01); and the demo's own
  configuration, 10 tasks, 1 step;
- conv: an Omniglot-shaped 4-block CNN (64 filters 3x3, BatchNorm, ReLU, 2x2
  max-pool) on 1x28x28 images, 5-way 1-shot (5 query images per class), 32
  tasks, 1 SGD step (lr 0.4). The batched module runs its forward as a loop
  over tasks on the CPU by default (``fmodel.batching``); the other mode is
  timed too.

Competitors: ``batched`` (``tasks=T``), ``loop`` (higher-core, one
``innerloop_ctx`` per task, as the demo does today) and, for the sine workload,
``vmap`` (the same maths by hand with ``torch.func.vmap`` over
``torch.func.functional_call``) and ``bmm by hand`` (the batched matrix products
higher-core runs for this MLP, written out without the library: the floor for
these ops). The demo's own meta-gradient (10 tasks, 1 step) is timed too, and
multiplied by its 2,500 meta-iterations. Before timing, each competitor's meta-gradients
are compared with the batched one's in float64 (a relative difference above 1e-9
is reported); timings are in float32, medians of interleaved repeats after a
warm-up. Ratios are competitor time / batched time (> 1: batched is faster).

Usage:
    python benchmarks/batched_tasks.py                  # CPU, one thread
    python benchmarks/batched_tasks.py --device cuda    # on a GPU
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, vmap
from torch.nn.functional import cross_entropy, mse_loss

import higher_core

Workload = dict[str, Callable[[], list[torch.Tensor]]]
DEMO_ITERATIONS = 2500  # examples/maml_sine.py's default


def _maml(net: nn.Module, opt: torch.optim.Optimizer, data: tuple[torch.Tensor, ...], steps: int,
          loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
          per_task: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Workload:
    """The MAML meta-gradient with one ``innerloop_ctx`` per task (``loop``) and with ``tasks=T``
    (``batched``, with ``fnet.batching`` left as chosen or set); ``per_task`` gives ``[T]`` losses."""
    xs, ys, xq, yq = data
    tasks = xs.shape[0]

    def meta_gradient(total: torch.Tensor) -> list[torch.Tensor]:
        return list(torch.autograd.grad(total, list(net.parameters())))

    def loop() -> list[torch.Tensor]:
        total = 0
        for i in range(tasks):
            with higher_core.innerloop_ctx(net, opt, copy_initial_weights=False) as (fnet, diffopt):
                for _ in range(steps):
                    diffopt.step(loss(fnet(xs[i]), ys[i]))
                total = total + loss(fnet(xq[i]), yq[i]) / tasks
        return meta_gradient(total)

    def batched(batching: str | None = None) -> list[torch.Tensor]:
        with higher_core.innerloop_ctx(net, opt, copy_initial_weights=False, tasks=tasks) as (fnet, diffopt):
            if batching is not None:
                fnet.batching = batching
            for _ in range(steps):
                diffopt.step(per_task(fnet(xs), ys))
            return meta_gradient(per_task(fnet(xq), yq).sum() / tasks)

    return {"batched": batched, "loop": loop, "batched, batching='vmap'": lambda: batched("vmap"),
            "batched, batching='loop'": lambda: batched("loop")}


# -- sine regression ---------------------------------------------------------------------------
def _sine(device: torch.device, dtype: torch.dtype, tasks: int = 25, steps: int = 5) -> tuple[nn.Module, Workload]:
    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1))
    net = net.to(device=device, dtype=dtype)
    amplitude = torch.empty(tasks, 1, 1).uniform_(0.1, 5.0, generator=g)
    phase = torch.empty(tasks, 1, 1).uniform_(0.0, 3.14, generator=g)
    x = torch.empty(tasks, 20, 1).uniform_(-5.0, 5.0, generator=g)
    y = amplitude * torch.sin(x - phase)
    xs, ys, xq, yq = (t.to(device=device, dtype=dtype) for t in (x[:, :10], y[:, :10], x[:, 10:], y[:, 10:]))
    opt = torch.optim.SGD(net.parameters(), lr=0.01)

    workload = _maml(net, opt, (xs, ys, xq, yq), steps, mse_loss, lambda out, y: (out - y).pow(2).mean((1, 2)))
    names = [n for n, _ in net.named_parameters()]

    def one(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(net, params, (x,))

    forward = vmap(one)

    def handwritten() -> list[torch.Tensor]:
        params = [p.expand(tasks, *p.shape) for p in net.parameters()]
        for _ in range(steps):
            losses = (forward(dict(zip(names, params)), xs) - ys).pow(2).mean((1, 2))
            grads = torch.autograd.grad(losses.sum(), params, create_graph=True)
            params = [p - 0.01 * g for p, g in zip(params, grads)]
        total = (forward(dict(zip(names, params)), xq) - yq).pow(2).mean((1, 2)).sum() / tasks
        return list(torch.autograd.grad(total, list(net.parameters())))

    def bmm_forward(params: list[torch.Tensor], h: torch.Tensor) -> torch.Tensor:
        for layer in range(3):  # the ops higher_core.batched._matmul runs for this MLP, written out
            weight, bias = params[2 * layer], params[2 * layer + 1]
            h = torch.bmm(h, weight.transpose(1, 2)) + bias.unsqueeze(1)
            h = h.relu() if layer < 2 else h
        return h

    def bmm_by_hand() -> list[torch.Tensor]:
        params = [p.expand(tasks, *p.shape) for p in net.parameters()]
        for _ in range(steps):
            losses = (bmm_forward(params, xs) - ys).pow(2).mean((1, 2))
            grads = torch.autograd.grad(losses.sum(), params, create_graph=True)
            params = [p - 0.01 * g for p, g in zip(params, grads)]
        total = (bmm_forward(params, xq) - yq).pow(2).mean((1, 2)).sum() / tasks
        return list(torch.autograd.grad(total, list(net.parameters())))

    return net, {"batched": workload["batched"], "loop": workload["loop"], "vmap": handwritten,
                 "bmm by hand": bmm_by_hand}


# -- Omniglot-shaped conv MAML -----------------------------------------------------------------
def _conv_net() -> nn.Module:
    layers: list[nn.Module] = []
    for channels in (1, 64, 64, 64):
        layers += [nn.Conv2d(channels, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2)]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(64, 5))


def _conv(device: torch.device, dtype: torch.dtype, tasks: int = 32, steps: int = 1,
          ways: int = 5, shots: int = 1, queries: int = 5) -> tuple[nn.Module, Workload]:
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = _conv_net().to(device=device, dtype=dtype)
    xs = torch.randn(tasks, ways * shots, 1, 28, 28, generator=g).to(device=device, dtype=dtype)
    xq = torch.randn(tasks, ways * queries, 1, 28, 28, generator=g).to(device=device, dtype=dtype)
    ys = torch.arange(ways).repeat_interleave(shots).expand(tasks, -1).to(device)
    yq = torch.arange(ways).repeat_interleave(queries).expand(tasks, -1).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.4)

    def per_task_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none").view(tasks, -1).mean(1)

    workload = _maml(net, opt, (xs, ys, xq, yq), steps, cross_entropy, per_task_ce)
    other = "vmap" if device.type == "cpu" else "loop"  # the default is the loop on the CPU, vmap elsewhere
    return net, {name: workload[name] for name in ("batched", "loop", f"batched, batching={other!r}")}


# -- measuring ---------------------------------------------------------------------------------
def _check(workload: Workload) -> dict[str, float]:
    """Each competitor's largest meta-gradient difference from the batched one, relative to the largest
    batched entry (float64)."""
    reference = workload["batched"]()
    scale = max(float(b.abs().max()) for b in reference)
    return {name: max(float((a - b).abs().max()) for a, b in zip(run(), reference)) / scale
            for name, run in workload.items()}


def _time(workload: Workload, repeats: int, device: torch.device) -> dict[str, float]:
    def once(run: Callable[[], list[torch.Tensor]]) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for run in workload.values():  # warm-up
        once(run)
    samples: dict[str, list[float]] = {name: [] for name in workload}
    for _ in range(repeats):
        for name, run in workload.items():
            samples[name].append(once(run))
    return {name: statistics.median(s) for name, s in samples.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on the CPU (default 1)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (default: 7 sine, 101 demo, 2 conv)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else f", {args.threads} thread(s)"))
    print(f"{'workload':<34}{'competitor':<28}{'time (ms)':>11}{'ratio':>8}{'max rel. diff':>15}")
    demo = functools.partial(_sine, tasks=10, steps=1)
    for title, make, repeats in (("sine MAML, 25 tasks, 5 steps", _sine, 7),
                                 ("the demo's meta-gradient", demo, 101),
                                 ("conv MAML, 32 tasks, 1 step", _conv, 2)):
        _, exact = make(device, torch.float64, tasks=4)  # the check needs no more tasks than that
        differences = _check(exact)
        _, workload = make(device, torch.float32)
        times = _time(workload, args.repeats or repeats, device)
        for name, seconds in times.items():
            ratio = seconds / times["batched"]
            print(f"{title:<34}{name:<28}{1e3 * seconds:>11.3f}{ratio:>7.2f}x{differences[name]:>15.1e}")
        if make is demo:
            print(f"{'':<34}(x {DEMO_ITERATIONS} meta-iterations: batched {DEMO_ITERATIONS * times['batched']:.1f} s, "
                  f"bmm by hand {DEMO_ITERATIONS * times['bmm by hand']:.1f} s, before sampling and the meta-optimizer)")


if __name__ == "__main__":
    main()
