"""Peak memory of implicit against unrolled meta-gradients, as the inner loop grows.

One iMAML meta-gradient (an MLP, SGD on a task loss with a proximal term, the query loss
differentiated w.r.t. the initial weights) is computed in a fresh subprocess per row,
either unrolled (``innerloop_ctx(..., copy_initial_weights=False)``, then ``.backward()``)
or implicitly (``track_higher_grads=False``, then ``higher_core.implicit.meta_backward``
with conjugate gradient). The peak is the resident set's high-water mark (VmHWM) minus
the resident set before the meta-gradient (after a one-step warm-up run), as in
``benchmarks/run.py``; the implicit rows take the median of ``--repeats`` processes, since
VmHWM jitters by ~0.2 MiB between identical runs, a few percent of their small peak.

Usage:  python benchmarks/implicit_memory.py [--steps 10,100,1000] [--width 256]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.nn.functional import mse_loss

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import _peak_rss_bytes, _rss_bytes  # noqa: E402

import higher_core as higher  # noqa: E402
from higher_core import implicit  # noqa: E402

LAM, LR, POINTS = 10.0, 0.01, 100


def meta_gradient(mode: str, steps: int, width: int) -> None:
    """One iMAML meta-gradient into ``model``'s ``.grad``, unrolled or implicit."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(1, width), torch.nn.Tanh(), torch.nn.Linear(width, width),
                                torch.nn.Tanh(), torch.nn.Linear(width, 1))
    x, xq = torch.linspace(-5, 5, POINTS).unsqueeze(1), torch.linspace(-4.9, 4.9, POINTS).unsqueeze(1)
    y, yq = torch.sin(x), torch.sin(xq)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    track = mode == "unrolled"
    with higher.innerloop_ctx(model, opt, copy_initial_weights=False, track_higher_grads=track) as (fmodel, diffopt):
        def inner(w: list[torch.Tensor], w0: list[torch.Tensor]) -> torch.Tensor:
            prox = sum(((a - b) ** 2).sum() for a, b in zip(w, w0))
            return mse_loss(fmodel(x, params=w), y) + 0.5 * LAM * prox

        for _ in range(steps):
            diffopt.step(inner(fmodel.fast_params, list(model.parameters())))
        outer = mse_loss(fmodel(xq), yq)
        if track:
            outer.backward()
        else:
            implicit.meta_backward(outer, fmodel.parameters(), implicit.stationary(inner), model.parameters(),
                                   solver=implicit.CG(tol=1e-6, max_iter=50))


def child(mode: str, steps: int, width: int) -> None:
    """In a fresh process: print the peak memory one meta-gradient adds (bytes) and its time (s)."""
    torch.set_num_threads(1)
    meta_gradient(mode, 1, width)  # warm-up: plugin discovery and lazy initialisation are not the loop's
    before = _rss_bytes()
    start = time.perf_counter()
    meta_gradient(mode, steps, width)
    print(max(_peak_rss_bytes() - before, 0), time.perf_counter() - start)


def measure(mode: str, steps: int, width: int) -> tuple[int, float]:
    # as in run.py: blocks of 64 KiB or more in their own mappings, so that freed memory leaves the RSS
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    out = subprocess.run([sys.executable, __file__, "--child", mode, str(steps), "--width", str(width)],
                         capture_output=True, text=True, check=True, env=env)
    peak, seconds = out.stdout.split()
    return int(peak), float(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="10,100,1000", help="inner-loop lengths, comma-separated")
    parser.add_argument("--width", type=int, default=256, help="hidden width of the 1-w-w-1 tanh MLP")
    parser.add_argument("--repeats", type=int, default=5, help="fresh processes per implicit row (median)")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.width)
        return
    steps = [int(s) for s in args.steps.split(",")]
    params = 3 * args.width + args.width * (args.width + 1) + 1
    print(f"# implicit vs unrolled meta-gradient memory: MLP 1-{args.width}-{args.width}-1 ({params} parameters, "
          f"float32), {POINTS} points, SGD inner loop, CG (tol 1e-6, <= 50 products), torch {torch.__version__}, "
          f"1 thread; implicit: median of {args.repeats} processes (VmHWM jitters by ~0.2 MiB between identical runs), "
          "unrolled: one")
    print("| inner steps | implicit peak | unrolled peak | unrolled / implicit | implicit time | unrolled time |")
    print("|---|---|---|---|---|---|")
    implicit_peaks = []
    for n in steps:
        runs = [measure("implicit", n, args.width) for _ in range(args.repeats)]
        imp, imp_s = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
        unr, unr_s = measure("unrolled", n, args.width)
        implicit_peaks.append(imp)
        print(f"| {n} | {imp / 2**20:.1f} MiB | {unr / 2**20:.1f} MiB | {unr / imp:.1f}x | {imp_s:.2f} s | {unr_s:.2f} s |")
    spread = (max(implicit_peaks) - min(implicit_peaks)) / min(implicit_peaks)
    print(f"\nimplicit peak spread over {args.steps} steps: {100 * spread:.1f}% "
          f"({'flat: within 5%' if spread <= 0.05 else 'NOT flat: above 5%'})")


if __name__ == "__main__":
    main()
