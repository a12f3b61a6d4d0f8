"""Inner-loop benchmarks: higher-core against higher, TorchOpt and a hand-written loop.

Every workload runs for every competitor in the same process, interleaved, after
warm-up; times are medians of repeated runs. Peak memory is measured in a fresh
subprocess per competitor (CPU: the growth of the resident set; CUDA: the
allocator's peak). Before timing, every competitor's meta-gradients are computed
in float64 and compared with higher-core's (a difference above 1e-6 of the
largest entry is reported as a mismatch); timings are in float32.
The table reports each competitor's time and memory as a ratio to higher-core's
(> 1: higher-core is faster / smaller).

Usage (tox installs the competitors in an isolated environment):
    tox -e bench                       # CPU, sizes for 2 cores
    tox -e bench -- --device cuda      # on a GPU machine
    python benchmarks/run.py --help
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import workloads  # noqa: E402

COMPETITORS = ("higher_core", "higher", "torchopt", "handwritten")


def available(library: str) -> bool:
    if library == "handwritten":
        return True
    try:
        __import__(library)
    except ImportError:
        return False
    return True


def torchopt_note() -> str:
    try:
        import torchopt._C  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any failure means the pure-Python path
        return f"torchopt's compiled extension does not load on torch {torch.__version__} ({type(exc).__name__}); its pure-Python path is measured"
    return "torchopt's compiled extension loaded"


# -- building the runs --------------------------------------------------------------------


def build(workload: str, library: str, device: str, meta_batch: int, steps: int | None = None,
          dtype: torch.dtype = torch.float32) -> Callable:
    def tasks(count: int) -> list[tuple[torch.Tensor, ...]]:
        return [tuple(t.to(dtype) if t.is_floating_point() else t for t in task)
                for task in workloads.few_shot_tasks(count, device=device)]

    if workload == "many-tensors":
        return workloads.many_tensors(library, workloads.ManyTensors().to(device, dtype))
    if workload == "many-tensors-mixed":
        return workloads.many_tensors(library, workloads.ManyTensors(shapes=workloads.mixed_shapes()).to(device, dtype))
    if workload == "conv-maml":
        return workloads.conv_maml(library, workloads.conv_net().to(device, dtype), tasks(meta_batch))
    if workload == "adaptation":
        return workloads.adaptation(library, workloads.conv_net().to(device, dtype), tasks(1)[0], steps or 20)
    raise ValueError(f"unknown workload {workload!r}")


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def compare(results: dict[str, list[torch.Tensor]]) -> dict[str, str]:
    """Each competitor's largest meta-gradient difference from higher-core's, relative to the largest entry.

    Relative to the whole meta-gradient, not per tensor: a conv bias followed by
    BatchNorm has a true gradient of zero, so its entries are rounding noise.
    """
    ours = results["higher_core"]
    scale = max(o.abs().max().item() for o in ours) or 1.0
    verdicts = {}
    for library, grads in results.items():
        worst = max((g - o).abs().max().item() for g, o in zip(grads, ours)) / scale
        verdicts[library] = f"same ({worst:.0e})" if worst < 1e-6 else f"MISMATCH (max rel. diff {worst:.1e})"
    return verdicts


def time_interleaved(runs: dict[str, Callable], device: str, repeats: int, warmup: int = 2) -> dict[str, float]:
    for run in runs.values():
        for _ in range(warmup):
            run()
    samples: dict[str, list[float]] = {name: [] for name in runs}
    order = list(runs)
    for _ in range(repeats):
        random.shuffle(order)
        for name in order:
            sync(device)
            start = time.perf_counter()
            runs[name]()
            sync(device)
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) for name, s in samples.items()}


# -- memory, in a fresh process -------------------------------------------------------------


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    """This process's resident-set high-water mark (VmHWM: unlike ``ru_maxrss``, not inherited
    from the parent process across fork and exec)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def memory_child(workload: str, library: str, device: str, meta_batch: int, steps: int | None) -> None:
    """Run once in this (fresh) process and print the peak memory the run added, in bytes."""
    torch.manual_seed(0)
    if os.environ.get("BENCH_THREADS"):
        torch.set_num_threads(int(os.environ["BENCH_THREADS"]))
    run = build(workload, library, device, meta_batch, steps)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        run()
        torch.cuda.synchronize()
        print(torch.cuda.max_memory_allocated() - before)
    else:
        before = _rss_bytes()
        run()
        print(max(_peak_rss_bytes() - before, 0))


def peak_memory(workload: str, library: str, device: str, meta_batch: int, steps: int | None = None) -> int:
    code = ("import sys; sys.path.insert(0, %r); import run; run.memory_child(%r, %r, %r, %d, %r)"
            % (str(Path(__file__).resolve().parent), workload, library, device, meta_batch, steps))
    # glibc keeps freed blocks mapped, so the resident set would also count fragmentation: put
    # every block of 64 KiB or more in its own mapping, returned to the system when freed.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return int(out.stdout.strip().splitlines()[-1])


# -- start-up --------------------------------------------------------------------------------

STARTUP = """
import time
import torch
opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)])
start = time.perf_counter()
import {library} as lib
lib.optim.get_diff_optim(opt, opt.param_groups[0]["params"])
print(time.perf_counter() - start)
"""


def startup_time(library: str, repeats: int = 7) -> float:
    samples = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", STARTUP.format(library=library)], capture_output=True,
                             text=True, check=True)
        samples.append(float(out.stdout.strip().splitlines()[-1]))
    return statistics.median(samples)


# -- the report ------------------------------------------------------------------------------


def ratio(value: float, ours: float) -> str:
    return f"{value / ours:.2f}x" if ours > 0 else "n/a"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--meta-batch", type=int, default=None, help="tasks per meta-batch (8 on CPU, 32 on CUDA)")
    parser.add_argument("--workloads", default="many-tensors,many-tensors-mixed,conv-maml,adaptation,startup")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = parser.parse_args(argv)
    meta_batch = args.meta_batch or (32 if args.device.startswith("cuda") else 8)
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["BENCH_THREADS"] = str(args.threads)  # for the memory subprocesses
    competitors = [c for c in COMPETITORS if available(c)]
    chosen = args.workloads.split(",")
    torch.manual_seed(0)

    print(f"# higher-core inner-loop benchmarks, {datetime.date.today()}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else ""))
    print(f"competitors: {', '.join(competitors)}; {torchopt_note() if 'torchopt' in competitors else ''}")
    print("ratios are competitor / higher-core: above 1 means higher-core is faster or smaller\n")
    raw: dict[str, dict] = {}

    header = "| workload | competitor | time | time ratio | peak memory | memory ratio | meta-gradients |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for workload in [w for w in chosen if w in ("many-tensors", "many-tensors-mixed", "conv-maml")]:
        # the check runs in float64, where only a real difference in the maths shows; timing in float32
        verdicts = compare({c: [g.detach() for g in build(workload, c, args.device, meta_batch,
                                                          dtype=torch.float64)()] for c in competitors})
        runs = {c: build(workload, c, args.device, meta_batch) for c in competitors}
        times = time_interleaved(runs, args.device, args.repeats)
        memory = {c: peak_memory(workload, c, args.device, meta_batch) for c in competitors}
        raw[workload] = {"time_s": times, "peak_bytes": memory, "meta_gradients": verdicts}
        for c in competitors:
            print(f"| {workload} | {c} | {times[c] * 1e3:.0f} ms | {ratio(times[c], times['higher_core'])} | "
                  f"{memory[c] / 2**20:.1f} MiB | {ratio(memory[c], memory['higher_core'])} | {verdicts[c]} |")

    if "adaptation" in chosen:
        raw["adaptation"] = {}
        for c in competitors:
            short, long = (peak_memory("adaptation", c, args.device, 1, steps) for steps in (20, 200))
            raw["adaptation"][c] = {"peak_bytes_20": short, "peak_bytes_200": long}
            print(f"| adaptation, 20 -> 200 steps | {c} | | | {short / 2**20:.1f} -> {long / 2**20:.1f} MiB | "
                  f"growth {ratio(long, short)} | |")

    if "startup" in chosen:
        raw["startup"] = {}
        ours = startup_time("higher_core")
        for c in [c for c in competitors if c in ("higher_core", "higher")]:
            value = ours if c == "higher_core" else startup_time(c)
            raw["startup"][c] = value
            print(f"| start-up (import + first get_diff_optim, minus torch) | {c} | {value * 1e3:.0f} ms | "
                  f"{ratio(value, ours)} | | | |")
    if args.json:
        args.json.write_text(json.dumps(raw, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
