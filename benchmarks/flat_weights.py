"""Flat fast weights: every element-wise rule on one buffer per param group, against its per-tensor path.

Workload 1 of ``benchmarks/run.py`` (``ManyTensors``: parameter tensors of
mixed shapes, a smooth loss, a learned ``lr`` given as a tensor, ``steps``
inner steps, then the meta-gradient with respect to the weights and the
``lr``), run for several element-wise rules, each three ways in the same
process, interleaved, after a warm-up (medians):

- ``flat``: higher-core as installed (``flat_weights = True``, the default);
- ``per-tensor``: the same rule with ``flat_weights = False`` (one kernel per
  tensor and operation, or the plugin's own ``torch._foreach_*`` rule);
- ``foreach`` (Adam only): the hand-written ``torch._foreach_*`` loop of
  ``benchmarks/workloads.py``, the floor a good engineer writes by hand.

Before timing, the two higher-core paths' meta-gradients are compared in float64
(they agree to about one unit in the last place; above 1e-12 is reported).
Three tables: one row per rule (200 tensors, 1M numbers, 5 steps), the time
per inner step for 50/200/800 tensors at the same total size (Adam), and for
1/5/20 inner steps (Adam, 200 tensors). Ratios are time / flat time (> 1:
the flat path is faster).

Usage:
    python benchmarks/flat_weights.py               # CPU, one thread, about 3 minutes
    python benchmarks/flat_weights.py --quick       # small sizes, a few seconds (a smoke test)
    python benchmarks/flat_weights.py --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

import higher_core

sys.path.insert(0, str(Path(__file__).resolve().parent))
import workloads  # noqa: E402

Run = Callable[[], list[torch.Tensor]]


def _lion() -> type[torch.optim.Optimizer] | None:
    try:
        from lion_pytorch import Lion
    except ImportError:
        return None
    return Lion


def rules() -> dict[str, Callable[..., torch.optim.Optimizer]]:
    """The element-wise rules measured, each as a constructor over parameters (``lr`` set per rule)."""
    table: dict[str, Callable[..., torch.optim.Optimizer]] = {
        "Adam": lambda p: torch.optim.Adam(p, lr=1e-2),
        "AdamW": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=1e-2),
        "SGD (momentum)": lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9),
        "RMSprop": lambda p: torch.optim.RMSprop(p, lr=1e-3),
        "Adagrad": lambda p: torch.optim.Adagrad(p, lr=1e-2),
        "NAdam": lambda p: torch.optim.NAdam(p, lr=1e-2),
        "Adadelta": lambda p: torch.optim.Adadelta(p, lr=1.0),
    }
    lion = _lion()
    if lion is not None:
        table["Lion"] = lambda p: lion(p, lr=1e-4)
    return table


def higher_core_run(model: torch.nn.Module, make_opt: Callable[..., torch.optim.Optimizer], steps: int,
                    flat: bool) -> Run:
    """The inner loop with a learned lr, then the meta-gradient (weights and lr)."""
    weights = list(model.parameters())
    opt = make_opt(model.parameters())
    lr0 = opt.param_groups[0]["lr"]

    def run() -> list[torch.Tensor]:
        lr = torch.tensor(lr0, dtype=weights[0].dtype, device=weights[0].device, requires_grad=True)
        with higher_core.innerloop_ctx(model, opt, copy_initial_weights=False, override={"lr": [lr]}) as (
                fmodel, diffopt):
            diffopt.flat_weights = flat
            for _ in range(steps):
                diffopt.step(fmodel())
            meta = fmodel()
        return list(torch.autograd.grad(meta, [*weights, lr]))

    return run


def _median_times(runs: dict[str, Run], repeats: int, sync: Callable[[], None]) -> dict[str, float]:
    for run in runs.values():  # warm-up
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            sync()
            start = time.perf_counter()
            run()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def _agree(model_f64: torch.nn.Module, make_opt: Callable[..., torch.optim.Optimizer], steps: int) -> str:
    flat = higher_core_run(model_f64, make_opt, steps, True)()
    per_tensor = higher_core_run(model_f64, make_opt, steps, False)()
    worst = max(((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item() for a, b in zip(flat, per_tensor))
    return f"same ({worst:.0e})" if worst <= 1e-12 else f"MISMATCH ({worst:.1e})"


def _models(count: int, scalars: int, device: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    model = workloads.ManyTensors(count=count, scalars=scalars).to(device)
    return model, workloads.ManyTensors(count=count, scalars=scalars).to(device=device, dtype=torch.float64)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    if args.quick:
        scalars, counts, step_counts, count, steps = 20_000, (10, 40), (1, 3), 10, 2
    else:
        scalars, counts, step_counts, count, steps = 1_000_000, (50, 200, 800), (1, 5, 20), 200, 5
    print(f"torch {torch.__version__}, {args.device}, {torch.get_num_threads()} thread(s); "
          f"{count} tensors, {scalars:,} numbers, {steps} steps unless said; medians of {args.repeats}\n")

    print("| rule | flat | per-tensor | per-tensor / flat | foreach (by hand) / flat | meta-gradients |")
    print("|---|---|---|---|---|---|")
    model, model64 = _models(count, scalars, args.device)
    for name, make_opt in rules().items():
        runs = {"flat": higher_core_run(model, make_opt, steps, True),
                "per-tensor": higher_core_run(model, make_opt, steps, False)}
        if name == "Adam":
            runs["foreach"] = workloads.many_tensors("handwritten", model, steps=steps)
        t = _median_times(runs, args.repeats, sync)
        by_hand = f"{t['foreach'] / t['flat']:.2f}x" if "foreach" in t else ""
        print(f"| {name} | {1e3 * t['flat']:.0f} ms | {1e3 * t['per-tensor']:.0f} ms | "
              f"{t['per-tensor'] / t['flat']:.2f}x | {by_hand} | {_agree(model64, make_opt, 2)} |")

    adam = rules()["Adam"]
    print("\n| tensors (same total size) | flat, per step | per-tensor, per step | foreach by hand, per step | "
          "per-tensor / flat | foreach / flat |")
    print("|---|---|---|---|---|---|")
    for n in counts:
        model, _ = _models(n, scalars, args.device)
        t = _median_times({"flat": higher_core_run(model, adam, steps, True),
                           "per-tensor": higher_core_run(model, adam, steps, False),
                           "foreach": workloads.many_tensors("handwritten", model, steps=steps)}, args.repeats, sync)
        print(f"| {n} | {1e3 * t['flat'] / steps:.1f} ms | {1e3 * t['per-tensor'] / steps:.1f} ms | "
              f"{1e3 * t['foreach'] / steps:.1f} ms | {t['per-tensor'] / t['flat']:.2f}x | {t['foreach'] / t['flat']:.2f}x |")

    print(f"\n| inner steps ({count} tensors) | flat, per step | per-tensor, per step | foreach by hand, per step | "
          "per-tensor / flat | foreach / flat |")
    print("|---|---|---|---|---|---|")
    model, _ = _models(count, scalars, args.device)
    for s in step_counts:
        t = _median_times({"flat": higher_core_run(model, adam, s, True),
                           "per-tensor": higher_core_run(model, adam, s, False),
                           "foreach": workloads.many_tensors("handwritten", model, steps=s)}, args.repeats, sync)
        print(f"| {s} | {1e3 * t['flat'] / s:.1f} ms | {1e3 * t['per-tensor'] / s:.1f} ms | "
              f"{1e3 * t['foreach'] / s:.1f} ms | {t['per-tensor'] / t['flat']:.2f}x | {t['foreach'] / t['flat']:.2f}x |")
    print("\nper step: the whole unroll and its meta-gradient, divided by the number of inner steps")


if __name__ == "__main__":
    main()
