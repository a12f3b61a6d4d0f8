"""The cost of the double-backward attention kernel: torch's math kernel against its default (fused) one.

A tiny GPT-2 (``transformers``, built from a config) on the CPU, float32, one
thread. Columns: the forward alone; forward + backward (``create_graph=True``,
as an inner step takes it); forward + backward + a second backward (the
meta-gradient of one inner SGD step: only the math kernel has one). Times are
medians of repeats, in ms; the ratio is math / default.

Usage:
    python benchmarks/attention.py [--repeats 20] [--hidden 32 128] [--seq 8 64]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

PHASES = ("forward", "fwd+bwd", "fwd+2 bwd")


def _model(hidden: int, seq: int) -> torch.nn.Module:
    import transformers

    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=50, n_positions=seq, n_embd=hidden, n_layer=2, n_head=2,
                                     resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    return transformers.GPT2LMHeadModel(config)


def _phases(model: torch.nn.Module, ids: torch.Tensor) -> dict[str, Callable[[], object]]:
    names, params = zip(*model.named_parameters())
    loss = lambda ws: torch.func.functional_call(model, dict(zip(names, ws)), (),
                                                 {"input_ids": ids, "labels": ids, "use_cache": False}).loss

    def double() -> None:
        grads = torch.autograd.grad(loss(params), params, create_graph=True)
        torch.autograd.grad(loss([p - 0.1 * g for p, g in zip(params, grads)]), params)

    return {"forward": lambda: loss(params),
            "fwd+bwd": lambda: torch.autograd.grad(loss(params), params, create_graph=True),
            "fwd+2 bwd": double}


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--hidden", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--seq", type=int, nargs="+", default=[8, 64])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, float32, GPT-2 with 2 layers and 2 heads, batch 8; ms (median)")
    print("| hidden | seq | phase | default kernel | math kernel | math / default |")
    print("|---|---|---|---|---|---|")
    for hidden in args.hidden:
        for seq in args.seq:
            model = _model(hidden, seq)
            ids = torch.randint(0, 50, (8, seq), generator=torch.Generator().manual_seed(0))
            phases = _phases(model, ids)
            for phase in PHASES:
                with sdpa_kernel(SDPBackend.MATH):
                    math = _median_ms(phases[phase], args.repeats)
                if phase == "fwd+2 bwd":
                    print(f"| {hidden} | {seq} | {phase} | no double backward | {math:.2f} | - |")
                    continue
                default = _median_ms(phases[phase], args.repeats)
                print(f"| {hidden} | {seq} | {phase} | {default:.2f} | {math:.2f} | {math / default:.2f} |")


if __name__ == "__main__":
    main()
