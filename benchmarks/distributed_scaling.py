"""Meta-iterations per second of the MAML demo on 1 and 2 processes (gloo, one thread each).

Each process runs its share of the meta-batch (the demo's ``meta_train``, with the
model in DistributedDataParallel on 2 processes); the figure is meta-iterations
per second of the slowest process after one warm-up iteration, and the ratio of
2 processes to 1 (ideal: 2.0 on 2 idle cores). Quote it only from a quiet machine.

Run:  python benchmarks/distributed_scaling.py [--meta-batch 1024 --inner-steps 5 --iterations 10]
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib.util
import os
import socket
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import higher_core

_spec = importlib.util.spec_from_file_location("maml_sine", Path(__file__).parents[1] / "examples" / "maml_sine.py")
maml_sine = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(maml_sine)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(rank: int, world: int, port: int, args: argparse.Namespace, results: mp.SimpleQueue) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = maml_sine.make_net()
    model = net
    if world > 1:
        higher_core.distributed.init_process_group("gloo", timeout=datetime.timedelta(seconds=120),
                                                   init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                                   world_size=world)
        model = torch.nn.parallel.DistributedDataParallel(net)
    train = maml_sine.meta_train
    train(model, 1, args.meta_batch, args.inner_steps, 0, torch.float32, rank, world)  # warm-up
    if world > 1:
        dist.barrier()
    start = time.perf_counter()
    train(model, args.iterations, args.meta_batch, args.inner_steps, 1, torch.float32, rank, world)
    if world > 1:
        dist.barrier()  # the slowest process sets the pace
    results.put(time.perf_counter() - start)
    if world > 1:
        del model  # DDP's reducer before the group: on torch < 2.8 the other order can hang
        gc.collect()
        dist.destroy_process_group()


def iterations_per_second(world: int, args: argparse.Namespace) -> float:
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    results = ctx.SimpleQueue()
    mp.start_processes(_run, args=(world, _free_port(), args, results), nprocs=world, join=True,
                       start_method=ctx.get_start_method())
    return args.iterations / max(results.get() for _ in range(world))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meta-batch", type=int, default=1024,
                        help="tasks per meta-iteration (large, so that compute dominates: with tasks= a small one is communication-bound)")
    parser.add_argument("--inner-steps", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=10)
    args = parser.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    rates = {world: iterations_per_second(world, args) for world in (1, 2)}
    print(f"MAML sine, meta-batch {args.meta_batch} tasks x {args.inner_steps} inner steps, "
          f"{args.iterations} meta-iterations, gloo, 1 thread per process "
          f"(load average {load:.1f} at the start: quote figures from a quiet machine only)")
    print(f"{'processes':>10}{'meta-it/s':>12}{'ratio':>8}")
    for world, rate in rates.items():
        print(f"{world:>10}{rate:>12.2f}{rate / rates[1]:>8.2f}")


if __name__ == "__main__":
    main()
