"""The safe square root against a plain ``torch.sqrt``: forward, backward, double backward.

Rows: ``torch.sqrt`` (nan derivatives at 0: the speed to reach), the masked
form ``safe_sqrt`` had before it became one autograd op (``sqrt(x + shift) *
mask``), and the op as it is now. Workloads: one tensor of 1M elements, and
a list of 200 tensors of 5k elements (``torch._foreach_sqrt``, the former
``_foreach_*`` masked form, ``foreach_safe_sqrt``, and ``safe_sqrt`` called on
each tensor). Columns: the forward alone, forward + backward, and forward +
backward with ``create_graph=True`` + a second backward (a meta-gradient's
Hessian-vector product). Times are medians of repeats on one thread, in
float32, as ratios to the plain square root (< 1 would be faster).

Usage:
    python benchmarks/safe_sqrt.py [--repeats 5] [--dtype float32]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence

import torch

from higher_core.functional import foreach_safe_sqrt, safe_sqrt

Op = Callable[[list[torch.Tensor]], Sequence[torch.Tensor]]
Key = tuple[str, str]  # (row, phase)
PHASES = ("forward", "fwd+bwd", "fwd+2 bwd")


def former_safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """safe_sqrt before it became one op (tests/test_safe_sqrt.py checks the op against it)."""
    with torch.no_grad():
        positive = x > 0
        mask = positive.to(x.dtype)
        shift = torch.where(positive, 0.0, 1.0 - x)
    return torch.sqrt(x + shift) * mask


def former_foreach_safe_sqrt(xs: list[torch.Tensor]) -> list[torch.Tensor]:
    """foreach_safe_sqrt before it became one op (for non-negative inputs only)."""
    with torch.no_grad():
        signs = torch._foreach_sign(xs)
        shift = torch._foreach_add(torch._foreach_neg(signs), 1)
    return torch._foreach_mul(torch._foreach_sqrt(torch._foreach_add(xs, shift)), signs)


def per_tensor(op: Callable[[torch.Tensor], torch.Tensor]) -> Op:
    return lambda xs: [op(x) for x in xs]


ONE_TENSOR: dict[str, Op] = {
    "torch.sqrt": per_tensor(torch.sqrt),
    "former masked form": per_tensor(former_safe_sqrt),
    "safe_sqrt (one op)": per_tensor(safe_sqrt),
}
MANY_TENSORS: dict[str, Op] = {
    "torch._foreach_sqrt": torch._foreach_sqrt,
    "former foreach masked form": former_foreach_safe_sqrt,
    "foreach_safe_sqrt (one op)": foreach_safe_sqrt,
    "safe_sqrt per tensor": per_tensor(safe_sqrt),
}


def phases(op: Op, xs: list[torch.Tensor]) -> dict[str, Callable[[], object]]:
    """The three timed calls: forward, + backward, + double backward."""
    vs = [torch.randn_like(x) for x in xs]
    ws = [torch.randn_like(x) for x in xs]

    def forward() -> object:
        return op(xs)

    def backward() -> object:
        return torch.autograd.grad(op(xs), xs, vs)

    def double_backward() -> object:
        grads = torch.autograd.grad(op(xs), xs, vs, create_graph=True)
        return torch.autograd.grad(grads, xs, ws)

    return dict(zip(PHASES, (forward, backward, double_backward)))


def median_times(fns: dict[Key, Callable[[], object]], repeats: int, number: int) -> dict[Key, float]:
    """Median seconds per call of each function, the functions interleaved within every repeat."""
    for fn in fns.values():  # warm-up (and the allocator's growth) before any timing
        fn()
    times: dict[Key, list[float]] = {key: [] for key in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            start = time.perf_counter()
            for _ in range(number):
                fn()
            times[key].append((time.perf_counter() - start) / number)
    return {key: statistics.median(t) for key, t in times.items()}


def inputs(sizes: list[int], dtype: torch.dtype) -> list[torch.Tensor]:
    """Second moments as an optimizer sees them: non-negative, one entry in ten exactly zero."""
    xs = [torch.rand(n, dtype=dtype) for n in sizes]
    for x in xs:
        x[::10] = 0
    return [x.requires_grad_() for x in xs]


def table(title: str, ops: dict[str, Op], xs: list[torch.Tensor], repeats: int, number: int) -> None:
    fns = {(name, phase): fn for name, op in ops.items() for phase, fn in phases(op, xs).items()}
    timed = median_times(fns, repeats, number)
    base = next(iter(ops))
    print(f"\n{title}")
    print(f"{'':28s}" + "".join(f"{phase:>22s}" for phase in PHASES))
    for name in ops:
        cells = "".join(f"{timed[name, phase] * 1e3:10.2f} ms ({timed[name, phase] / timed[base, phase]:4.2f}x)"
                        for phase in PHASES)
        print(f"{name:28s}{cells}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    print(f"torch {torch.__version__}, one thread, {args.dtype}, median of {args.repeats} repeats; "
          "ratios to the plain square root")
    table("one tensor of 1M elements", ONE_TENSOR, inputs([1_000_000], dtype), args.repeats, 3)
    table("200 tensors of 5k elements", MANY_TENSORS, inputs([5_000] * 200, dtype), args.repeats, 3)


if __name__ == "__main__":
    main()
