"""The benchmark workloads, each written once per competitor.

Competitors: ``higher_core`` (this project), ``higher`` (0.2.1, the library we
replace), ``torchopt`` (0.7.3, its functional API) and ``handwritten`` (a
``torch.func.functional_call`` loop with the same update rule, written with the
fastest primitives torch offers: the floor for Python overhead). Every
competitor returns the meta-gradients, which the runner compares.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.functional import cross_entropy

Meta = Callable[[], list[torch.Tensor]]

BETAS, EPS = (0.9, 0.999), 1e-8


# -- workload 1: many tensors, Adam with a learnable lr ------------------------------------


class ManyTensors(nn.Module):
    """``count`` parameter tensors of mixed shapes (about ``scalars`` numbers) and a smooth loss."""

    def __init__(self, count: int = 200, scalars: int = 1_000_000, seed: int = 0,
                 shapes: list[tuple[int, ...]] | None = None) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        if shapes is None:
            kinds = [(64, 64), (512,), (32, 8, 8), (48, 96), (1000,)]
            base = [kinds[i % len(kinds)] for i in range(count)]
            scale = math.sqrt(scalars / sum(math.prod(s) for s in base))
            shapes = [tuple(max(1, round(d * scale)) if j == 0 else d for j, d in enumerate(s)) for s in base]
        self.weights = nn.ParameterList(nn.Parameter(0.1 * torch.randn(*s, generator=g)) for s in shapes)
        for i, s in enumerate(shapes):
            self.register_buffer(f"data{i}", torch.randn(*s, generator=g))

    def forward(self) -> torch.Tensor:
        total = 0.0
        for i, w in enumerate(self.weights):
            total = total + (torch.tanh(w * getattr(self, f"data{i}")) ** 2).mean()
        return total


def mixed_shapes(count: int = 200, smallest: int = 8, largest: int = 16_384) -> list[tuple[int, ...]]:
    """``count`` shapes whose sizes grow geometrically from ``smallest`` to ``largest`` elements.

    As in a conv net or a transformer: biases and norm scales (vectors of a few
    dozen), conv kernels (``[c_out, c_in, 3, 3]``) and weight matrices, about 436k
    numbers in all for the defaults.
    """
    shapes: list[tuple[int, ...]] = []
    for i in range(count):
        size = round(smallest * (largest / smallest) ** (i / (count - 1)))
        if size < 64 or i % 3 == 0:
            shapes.append((size,))
        elif i % 3 == 1:
            shapes.append((max(1, round(size / 72)), 8, 3, 3))
        else:
            shapes.append((max(1, round(size / 64)), 64))
    return shapes


def many_tensors(library: str, model: ManyTensors, steps: int = 5, lr0: float = 1e-2) -> Meta:
    """Adam for ``steps`` steps with ``lr`` given as a tensor; meta-gradient w.r.t. weights and lr."""
    weights = list(model.parameters())
    lr = torch.tensor(lr0, dtype=weights[0].dtype, requires_grad=True)

    if library in ("higher_core", "higher"):
        lib: Any = __import__(library)
        opt = torch.optim.Adam(model.parameters(), lr=lr0)

        def run() -> list[torch.Tensor]:
            with lib.innerloop_ctx(model, opt, copy_initial_weights=False, override={"lr": [lr]}) as (fm, diffopt):
                for _ in range(steps):
                    diffopt.step(fm())
                meta = fm()
            return list(torch.autograd.grad(meta, [*weights, lr]))

        return run

    names = [n for n, _ in model.named_parameters()]
    buffers = dict(model.named_buffers())

    def loss(params: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return functional_call(model, {**dict(zip(names, params)), **buffers}, ())

    if library == "torchopt":
        import torchopt

        def run() -> list[torch.Tensor]:
            opt = torchopt.adam(lr=lr, betas=BETAS, eps=EPS, moment_requires_grad=True)
            params = tuple(weights)
            state = opt.init(params)
            for _ in range(steps):
                grads = torch.autograd.grad(loss(params), params, create_graph=True)
                updates, state = opt.update(grads, state, inplace=False)
                params = torchopt.apply_updates(params, updates, inplace=False)
            return list(torch.autograd.grad(loss(params), [*weights, lr]))

        return run

    def run() -> list[torch.Tensor]:  # handwritten, with torch._foreach_* ops
        beta1, beta2 = BETAS
        params = list(weights)
        exp_avg = [torch.zeros_like(p) for p in params]
        exp_avg_sq = [torch.zeros_like(p) for p in params]
        for t in range(1, steps + 1):
            grads = list(torch.autograd.grad(loss(tuple(params)), params, create_graph=True))
            exp_avg = torch._foreach_lerp(exp_avg, grads, 1 - beta1)
            exp_avg_sq = torch._foreach_addcmul(torch._foreach_mul(exp_avg_sq, beta2), grads, grads, 1 - beta2)
            denom = torch._foreach_add(torch._foreach_div(torch._foreach_sqrt(exp_avg_sq),
                                                          math.sqrt(1 - beta2**t)), EPS)
            step = lr / (1 - beta1**t)
            params = torch._foreach_sub(params, torch._foreach_mul(torch._foreach_div(exp_avg, denom),
                                                                   [step] * len(params)))
        return list(torch.autograd.grad(loss(tuple(params)), [*weights, lr]))

    return run


# -- workload 2: MAML on an Omniglot-shaped conv net -------------------------------------


def conv_net(ways: int = 5, seed: int = 0) -> nn.Module:
    """The four-layer, 64-channel conv net of MAML-Omniglot (28x28 inputs, BatchNorm)."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for c_in in (1, 64, 64, 64):
        layers += [nn.Conv2d(c_in, 64, 3, padding=1), nn.BatchNorm2d(64, momentum=1.0), nn.ReLU(), nn.MaxPool2d(2)]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(64, ways))


def few_shot_tasks(count: int, ways: int = 5, shots: int = 5, queries: int = 15,
                   seed: int = 0, device: str = "cpu") -> list[tuple[torch.Tensor, ...]]:
    """Synthetic tasks with Omniglot's shapes: (x_support, y_support, x_query, y_query)."""
    g = torch.Generator().manual_seed(seed)
    tasks = []
    for _ in range(count):
        xs = torch.randn(ways * shots, 1, 28, 28, generator=g)
        xq = torch.randn(ways * queries, 1, 28, 28, generator=g)
        ys = torch.arange(ways).repeat_interleave(shots)
        yq = torch.arange(ways).repeat_interleave(queries)
        tasks.append(tuple(t.to(device) for t in (xs, ys, xq, yq)))
    return tasks


def conv_maml(library: str, model: nn.Module, tasks: list[tuple[torch.Tensor, ...]], steps: int = 5,
              lr: float = 0.1) -> Meta:
    """MAML: ``steps`` SGD steps per task; meta-gradient of the query loss w.r.t. the initial weights."""
    weights = list(model.parameters())

    if library in ("higher_core", "higher"):
        lib: Any = __import__(library)
        opt = torch.optim.SGD(model.parameters(), lr=lr)

        def run() -> list[torch.Tensor]:
            meta = 0.0
            for xs, ys, xq, yq in tasks:
                with lib.innerloop_ctx(model, opt, copy_initial_weights=False) as (fm, diffopt):
                    for _ in range(steps):
                        diffopt.step(cross_entropy(fm(xs), ys))
                    meta = meta + cross_entropy(fm(xq), yq)
            return list(torch.autograd.grad(meta, weights))

        return run

    names = [n for n, _ in model.named_parameters()]

    def loss(params: list[torch.Tensor], buffers: dict[str, torch.Tensor], x: torch.Tensor,
             y: torch.Tensor) -> torch.Tensor:
        return cross_entropy(functional_call(model, {**dict(zip(names, params)), **buffers}, (x,)), y)

    def fresh_buffers() -> dict[str, torch.Tensor]:  # the patched copies' own running stats
        return {n: b.clone() for n, b in model.named_buffers()}

    if library == "torchopt":
        import torchopt

        def run() -> list[torch.Tensor]:
            meta = 0.0
            for xs, ys, xq, yq in tasks:
                opt = torchopt.sgd(lr=lr)
                params, buffers = tuple(weights), fresh_buffers()
                state = opt.init(params)
                for _ in range(steps):
                    grads = torch.autograd.grad(loss(list(params), buffers, xs, ys), params, create_graph=True)
                    updates, state = opt.update(grads, state, inplace=False)
                    params = torchopt.apply_updates(params, updates, inplace=False)
                meta = meta + loss(list(params), buffers, xq, yq)
            return list(torch.autograd.grad(meta, weights))

        return run

    def run() -> list[torch.Tensor]:  # handwritten
        meta = 0.0
        for xs, ys, xq, yq in tasks:
            params, buffers = list(weights), fresh_buffers()
            for _ in range(steps):
                grads = torch.autograd.grad(loss(params, buffers, xs, ys), params, create_graph=True)
                params = torch._foreach_add(params, grads, alpha=-lr)
            meta = meta + loss(params, buffers, xq, yq)
        return list(torch.autograd.grad(meta, weights))

    return run


# -- workload 3: test-time adaptation, no higher-order graph -------------------------------


def adaptation(library: str, model: nn.Module, task: tuple[torch.Tensor, ...], steps: int,
               lr: float = 0.1) -> Callable[[], torch.Tensor]:
    """``steps`` SGD steps with ``track_higher_grads=False``; returns the adapted query logits."""
    xs, ys, xq, _ = task
    if library in ("higher_core", "higher"):
        lib: Any = __import__(library)
        opt = torch.optim.SGD(model.parameters(), lr=lr)

        def run() -> torch.Tensor:
            with lib.innerloop_ctx(model, opt, track_higher_grads=False) as (fm, diffopt):
                for _ in range(steps):
                    diffopt.step(cross_entropy(fm(xs), ys))
                with torch.no_grad():
                    return fm(xq)

        return run

    names = [n for n, _ in model.named_parameters()]

    def forward(params: list[torch.Tensor], buffers: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(model, {**dict(zip(names, params)), **buffers}, (x,))

    if library == "torchopt":
        import torchopt

        def run() -> torch.Tensor:
            opt = torchopt.sgd(lr=lr)
            params = tuple(p.detach().requires_grad_() for p in model.parameters())
            buffers = {n: b.clone() for n, b in model.named_buffers()}
            state = opt.init(params)
            for _ in range(steps):
                grads = torch.autograd.grad(cross_entropy(forward(list(params), buffers, xs), ys), params)
                updates, state = opt.update(grads, state, inplace=False)
                with torch.no_grad():
                    params = tuple(p.requires_grad_() for p in torchopt.apply_updates(params, updates, inplace=False))
            with torch.no_grad():
                return forward(list(params), buffers, xq)

        return run

    def run() -> torch.Tensor:  # handwritten
        params = [p.detach().requires_grad_() for p in model.parameters()]
        buffers = {n: b.clone() for n, b in model.named_buffers()}
        for _ in range(steps):
            grads = torch.autograd.grad(cross_entropy(forward(params, buffers, xs), ys), params)
            with torch.no_grad():
                params = [p.requires_grad_() for p in torch._foreach_add(params, grads, alpha=-lr)]
        with torch.no_grad():
            return forward(params, buffers, xq)

    return run
