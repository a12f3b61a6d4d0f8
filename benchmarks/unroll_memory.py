"""Peak memory and time of one meta-gradient through K inner steps: unrolled, checkpointed, offloaded, implicit.

The inner problem is iMAML's (an MLP fitting a sine, SGD on the task loss plus a proximal term
towards the initial weights), so that the implicit meta-gradient has the optimality condition it
needs; the meta-gradient is the query loss's w.r.t. the initial weights, in float64. Each row is
one fresh subprocess:

- ``unrolled``: ``innerloop_ctx(..., copy_initial_weights=False)``, K steps, ``.backward()``;
- ``checkpointed``: the same steps through ``higher_core.unroll(..., checkpoint="sqrt")``: segments
  of sqrt(K) steps, recomputed during the backward;
- ``offloaded`` (on a GPU only): the unrolled loop inside ``higher_core.offload()``;
- ``implicit``: ``track_higher_grads=False`` and ``higher_core.implicit.meta_backward`` (conjugate
  gradient): another estimator (exact only at a converged inner problem), for its memory.

Peak: on the CPU the resident set's high-water mark (VmHWM) minus the resident set before the
meta-gradient (after a one-step warm-up), as in ``benchmarks/run.py``; on a GPU
``torch.cuda.max_memory_allocated``. The checkpointed meta-gradients are compared with the
unrolled ones (max over tensors of max |a - b| / max |b|). The last line is the K=1000 summary.

Usage:  python benchmarks/unroll_memory.py [--steps 10,100,1000] [--width 256] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.nn.functional import mse_loss

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import _peak_rss_bytes, _rss_bytes  # noqa: E402

import higher_core as higher  # noqa: E402

LAM, LR, POINTS = 10.0, 0.01, 100
MODES = ("unrolled", "checkpointed", "offloaded", "implicit")


def meta_gradient(mode: str, steps: int, width: int, device: str) -> list[torch.Tensor]:
    """One meta-gradient w.r.t. the initial weights of the 1-width-width-1 MLP, by ``mode``."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(1, width), torch.nn.Tanh(), torch.nn.Linear(width, width),
                                torch.nn.Tanh(), torch.nn.Linear(width, 1)).to(device, torch.float64)
    x = torch.linspace(-5, 5, POINTS, dtype=torch.float64, device=device).unsqueeze(1)
    xq = torch.linspace(-4.9, 4.9, POINTS, dtype=torch.float64, device=device).unsqueeze(1)
    y, yq = torch.sin(x), torch.sin(xq)
    w0 = list(model.parameters())
    opt = torch.optim.SGD(w0, lr=LR)

    def inner(fmodel: torch.nn.Module, w: list[torch.Tensor], anchor: list[torch.Tensor]) -> torch.Tensor:
        prox = sum(((a - b) ** 2).sum() for a, b in zip(w, anchor))
        return mse_loss(fmodel(x, params=w), y) + 0.5 * LAM * prox

    def step(fmodel: torch.nn.Module, diffopt: higher.optim.DifferentiableOptimizer, k: int) -> None:
        diffopt.step(inner(fmodel, fmodel.fast_params, w0))

    track = mode != "implicit"
    with higher.innerloop_ctx(model, opt, copy_initial_weights=False, track_higher_grads=track) as (fmodel, diffopt):
        if mode == "checkpointed":
            higher.unroll(step, fmodel, diffopt, steps=steps, checkpoint="sqrt")
        elif mode == "offloaded":
            with higher.offload():
                higher.unroll(step, fmodel, diffopt, steps=steps)
                outer = mse_loss(fmodel(xq), yq)
        else:
            higher.unroll(step, fmodel, diffopt, steps=steps)
        if mode != "offloaded":
            outer = mse_loss(fmodel(xq), yq)
        if track:
            return list(torch.autograd.grad(outer, w0))
        higher.implicit.meta_backward(outer, fmodel.parameters(),
                                      higher.implicit.stationary(lambda w, m: inner(fmodel, w, m)), w0,
                                      solver=higher.implicit.CG(tol=1e-6, max_iter=50))
        return [p.grad for p in w0]


def child(mode: str, steps: int, width: int, device: str, save: str) -> None:
    """In a fresh process: print the peak memory one meta-gradient adds (bytes) and its time (s)."""
    torch.set_num_threads(1)
    meta_gradient(mode, 1, width, device)  # warm-up: plugin discovery and lazy initialisation are not the loop's
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _rss_bytes()
    start = time.perf_counter()
    grads = meta_gradient(mode, steps, width, device)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else _peak_rss_bytes()
    if save:
        torch.save([g.cpu() for g in grads], save)
    print(max(peak - before, 0), seconds)


def measure(mode: str, steps: int, width: int, device: str, save: str = "") -> tuple[int, float]:
    # as in run.py: blocks of 64 KiB or more in their own mappings, so that freed memory leaves the RSS
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    out = subprocess.run([sys.executable, __file__, "--child", mode, str(steps), "--width", str(width),
                          "--device", device, "--save", save], capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(f"{mode} K={steps} failed:\n{out.stderr}")
    peak, seconds = out.stdout.split()[-2:]
    return int(peak), float(seconds)


def max_rel_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(((x - y).abs().max() / y.abs().max()).item() for x, y in zip(a, b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="10,100,1000", help="inner-loop lengths, comma-separated")
    parser.add_argument("--width", type=int, default=256, help="hidden width of the 1-w-w-1 tanh MLP")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--child", nargs=2, metavar=("MODE", "STEPS"), help=argparse.SUPPRESS)
    parser.add_argument("--save", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.width, args.device, args.save)
        return
    modes = [m for m in MODES if m != "offloaded" or args.device == "cuda"]
    params = 3 * args.width + args.width * (args.width + 1) + 1
    where = torch.cuda.get_device_name(0) if args.device == "cuda" else "CPU, 1 thread, VmHWM"
    print(f"# meta-gradient memory and time: MLP 1-{args.width}-{args.width}-1 ({params} parameters, float64), "
          f"{POINTS} points, SGD inner loop with a proximal term; checkpointed: segments of sqrt(K) steps; "
          f"torch {torch.__version__}, {where}"
          + ("" if args.device == "cuda" else "; offloaded: GPU only (on the CPU it would only copy)"))
    print("| K | " + " | ".join(f"{m} peak | {m} time" for m in modes) + " | checkpointed/unrolled peak | time | "
          "max rel diff |")
    print("|---" * (2 * len(modes) + 4) + "|")
    summary = ""
    with tempfile.TemporaryDirectory() as tmp:
        for k in [int(s) for s in args.steps.split(",")]:
            files = {m: os.path.join(tmp, f"{m}{k}.pt") for m in ("unrolled", "checkpointed")}
            rows = {m: measure(m, k, args.width, args.device, files.get(m, "")) for m in modes}
            diff = max_rel_diff(torch.load(files["checkpointed"]), torch.load(files["unrolled"]))
            peak_ratio = rows["checkpointed"][0] / rows["unrolled"][0]
            time_ratio = rows["checkpointed"][1] / rows["unrolled"][1]
            cells = " | ".join(f"{rows[m][0] / 2**20:.1f} MiB | {rows[m][1]:.2f} s" for m in modes)
            print(f"| {k} | {cells} | {peak_ratio:.3f} | {time_ratio:.2f} | {diff:.1e} |", flush=True)
            summary = f"K={k} checkpointed/unrolled: peak {peak_ratio:.3f} time {time_ratio:.2f} max rel diff {diff:.1e}"
    print()
    print(summary)


if __name__ == "__main__":
    main()
