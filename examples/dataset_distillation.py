"""Dataset distillation (Wang et al. 2018) on a synthetic classification problem, with checkpointed unrolls.

A few synthetic samples ``x~`` (``--per-class`` per class, fixed labels) and the inner learning
rate ``eta`` are learned so that a fresh network trained only on them, by ``K`` steps of full-batch
SGD from a random initialisation, classifies the real data well:

    theta_{k+1} = theta_k - eta grad CE(f(x~; theta_k), y~),    loss(x~, eta) = CE(f(X; theta_K), Y)

on a batch ``(X, Y)`` of real training points, and Adam steps on ``x~`` and ``log eta`` with the
meta-gradient, which runs back through all ``K`` inner steps. Each outer step draws a new
initialisation ``theta_0`` (the paper's random-init setting, so the samples cannot fit one network)
and a new real batch. The unroll is ``higher_core.unroll(step, fmodel, diffopt, K,
checkpoint="sqrt", inputs=[x~])``: only the state every ``sqrt(K)`` steps is kept, and each
segment is recomputed during the backward.

The real data (no download) is a Gaussian mixture: ``--classes`` classes in ``--dim`` dimensions,
each class ``--modes`` blobs (std 0.6) around random centres, drawn with a fixed ``torch.Generator``;
2,000 training and 2,000 held-out points. Everything runs in float64 on the CPU, one thread.

Run:  python examples/dataset_distillation.py            (about 40 s on one CPU core, 25 s of it distilling)
      python examples/dataset_distillation.py --quick    (a few seconds: the tests' smoke run)

It prints:

- for one meta-gradient (one fixed initialisation and real batch), plain and with
  ``checkpoint="sqrt"``: the peak memory autograd holds for the backward (the most bytes of
  distinct storages of the tensors saved for backward alive at once, counted with
  ``torch.autograd.graph.saved_tensors_hooks``: the graph's memory, not the process's), the time
  (best of 3), and the largest difference between the two meta-gradients relative to the largest
  entry of the plain one, on a line
  ``K=<K> checkpointed/plain: peak <ratio> time <ratio> max rel diff <d>``;
- the distillation's time and its meta-loss at the start and the end;
- the real training loss and held-out accuracy of ``--evals`` fresh networks (the same
  initialisations for every row) trained for ``K`` steps only on the initial random synthetic
  samples, on the distilled samples (with the learned lr), on as many random real samples (a
  new balanced draw per network) and on all the training points, the last two with the learning
  rate of a grid that gives the lowest training loss; the last line sums this up.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.functional import cross_entropy

import higher_core as higher

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the examples' helpers, however this is loaded
from _progress import Progress  # noqa: E402

DTYPE = torch.float64
LR_GRID = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)


@dataclass
class Problem:
    """The real data: training and held-out points ``(n, dim)`` with labels ``(n,)``."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: int


def make_problem(classes: int, modes: int, dim: int, n_train: int, n_test: int, g: torch.Generator) -> Problem:
    """A Gaussian mixture: class ``c`` is ``modes`` blobs (std 0.6) around centres uniform in [-3, 3]^dim."""
    centres = 6 * torch.rand(classes, modes, dim, generator=g, dtype=DTYPE) - 3

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(classes, (n,), generator=g)
        mode = torch.randint(modes, (n,), generator=g)
        return centres[labels, mode] + 0.6 * torch.randn(n, dim, generator=g, dtype=DTYPE), labels

    (x_train, y_train), (x_test, y_test) = draw(n_train), draw(n_test)
    return Problem(x_train, y_train, x_test, y_test, classes)


def make_net(dim: int, hidden: int, classes: int) -> nn.Module:
    """A fresh ``dim-hidden-hidden-classes`` tanh MLP (torch's default initialisation, global generator)."""
    return nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                         nn.Linear(hidden, classes)).to(DTYPE)


def distilled_loss(net: nn.Module, x_syn: torch.Tensor, y_syn: torch.Tensor, log_lr: torch.Tensor,
                   real: tuple[torch.Tensor, torch.Tensor], steps: int, checkpoint: int | str | None) -> torch.Tensor:
    """The loss on the ``real`` batch of ``net`` after ``steps`` SGD steps on the synthetic samples (with a graph)."""
    opt = torch.optim.SGD(net.parameters(), lr=math.exp(log_lr.item()))

    def inner_step(fnet: higher.patch.PatchedModule, diffopt: higher.optim.DifferentiableOptimizer, k: int) -> None:
        diffopt.step(cross_entropy(fnet(x_syn), y_syn))

    with higher.innerloop_ctx(net, opt, override={"lr": [log_lr.exp()]}) as (fnet, diffopt):
        higher.unroll(inner_step, fnet, diffopt, steps, checkpoint=checkpoint, inputs=[x_syn])
        return cross_entropy(fnet(real[0]), real[1])


class SavedBytes:
    """``saved_tensors_hooks`` that count the bytes of the distinct storages autograd holds for the backward.

    A storage counts from the first time a tensor on it is saved until the last saved reference to
    it is freed (with the graph node that saved it, or at the end of the backward); ``peak`` is the
    most counted at once.
    """

    def __init__(self) -> None:
        self.now = self.peak = 0
        self._refs: dict[int, int] = {}

    def pack(self, tensor: torch.Tensor) -> _Held:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if self._refs.get(key, 0) == 0:
            self.now += storage.nbytes()
            self.peak = max(self.peak, self.now)
        self._refs[key] = self._refs.get(key, 0) + 1
        return _Held(self, key, storage.nbytes(), tensor.detach())  # (the tensor itself, with its grad_fn, would
        # make a cycle with the node that saves it, which the garbage collector cannot see)

    def release(self, key: int, nbytes: int) -> None:
        self._refs[key] -= 1
        if self._refs[key] == 0:
            del self._refs[key]
            self.now -= nbytes

    def hooks(self) -> torch.autograd.graph.saved_tensors_hooks:
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda held: held.tensor)


class _Held:
    """One saved reference: tells its :class:`SavedBytes` when autograd lets go of it."""

    def __init__(self, meter: SavedBytes, key: int, nbytes: int, tensor: torch.Tensor) -> None:
        self.meter, self.key, self.nbytes, self.tensor = meter, key, nbytes, tensor

    def __del__(self) -> None:
        self.meter.release(self.key, self.nbytes)


@dataclass
class MetaGradient:
    """One meta-gradient w.r.t. the synthetic samples and the log learning rate, its peak and its time."""

    grads: list[torch.Tensor]
    peak_bytes: int
    seconds: float


def meta_gradient(net: nn.Module, x_syn: torch.Tensor, y_syn: torch.Tensor, log_lr: torch.Tensor,
                  real: tuple[torch.Tensor, torch.Tensor], steps: int, checkpoint: int | str | None,
                  repeats: int = 3) -> MetaGradient:
    """Time one meta-gradient (the best of ``repeats``), then compute it again under :class:`SavedBytes` for its peak."""
    def grads() -> list[torch.Tensor]:
        return list(torch.autograd.grad(distilled_loss(net, x_syn, y_syn, log_lr, real, steps, checkpoint),
                                        [x_syn, log_lr]))

    seconds = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        timed = grads()
        seconds = min(seconds, time.perf_counter() - start)
    meter = SavedBytes()
    with meter.hooks():
        measured = grads()
    assert all(torch.equal(a, b) for a, b in zip(timed, measured))
    return MetaGradient(timed, meter.peak, seconds)


def max_relative_difference(got: list[torch.Tensor], expected: list[torch.Tensor]) -> float:
    """max over tensors of ``max|got - expected| / max|expected|``."""
    return max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(got, expected))


def distill(x_syn: torch.Tensor, y_syn: torch.Tensor, log_lr: torch.Tensor, problem: Problem,
            make: Callable[[], nn.Module], iterations: int, steps: int, checkpoint: int | str | None,
            meta_lr: float, batch: int, g: torch.Generator) -> list[float]:
    """Meta-train ``x_syn`` and ``log_lr`` in place (a fresh network and real batch each iteration); the meta-losses."""
    meta_opt = torch.optim.Adam([{"params": [x_syn]}, {"params": [log_lr], "lr": 0.3 * meta_lr}], lr=meta_lr)
    history = []
    bar = Progress(iterations, "distilling")
    for iteration in range(iterations):
        meta_opt.zero_grad()
        loss = distilled_loss(make(), x_syn, y_syn, log_lr, real_batch(problem, batch, g), steps, checkpoint)
        loss.backward()
        meta_opt.step()
        history.append(loss.item())
        bar.update(iteration + 1, **{"meta-loss": loss.item()})
    bar.close()
    return history


def real_batch(problem: Problem, size: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``size`` random training points and their labels."""
    chosen = torch.randperm(len(problem.y_train), generator=g)[:size]
    return problem.x_train[chosen], problem.y_train[chosen]


def train_fresh(net: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float, steps: int) -> nn.Module:
    """``steps`` steps of plain ``torch.optim.SGD`` (no higher-core) on ``(x, y)``, full batch."""
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        cross_entropy(net(x), y).backward()
        opt.step()
    return net


@dataclass
class Score:
    """Mean and standard deviation over initialisations of the real training loss and the test accuracy."""

    loss: float
    accuracy: float
    accuracy_std: float


def score(samples: Callable[[int], tuple[torch.Tensor, torch.Tensor]], lr: float, problem: Problem,
          make: Callable[[], nn.Module], steps: int, evals: int) -> Score:
    """Train ``evals`` fresh networks, network ``i`` on ``samples(i)``, and score them on the real data."""
    losses, accuracies = [], []
    for i in range(evals):
        net = train_fresh(make(), *samples(i), lr, steps)
        with torch.no_grad():
            losses.append(cross_entropy(net(problem.x_train), problem.y_train).item())
            accuracies.append((net(problem.x_test).argmax(1) == problem.y_test).double().mean().item())
    return Score(statistics.mean(losses), statistics.mean(accuracies), statistics.pstdev(accuracies))


def tuned(samples: Callable[[int], tuple[torch.Tensor, torch.Tensor]], problem: Problem,
          make: Callable[[], nn.Module], steps: int, evals: int = 3) -> float:
    """The learning rate of ``LR_GRID`` with the lowest real training loss over ``evals`` networks (not scored later)."""
    return min(LR_GRID, key=lambda lr: score(samples, lr, problem, seeded(make, 30_000), steps, evals).loss)


def random_real(problem: Problem, per_class: int, seed: int) -> Callable[[int], tuple[torch.Tensor, torch.Tensor]]:
    """Draw ``i``: ``per_class`` random training points of each class (its own generator per draw)."""
    def draw(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed + i)
        picks = [torch.nonzero(problem.y_train == c).flatten() for c in range(problem.classes)]
        chosen = torch.cat([p[torch.randperm(len(p), generator=g)[:per_class]] for p in picks])
        return problem.x_train[chosen], problem.y_train[chosen]
    return draw


def seeded(make: Callable[[], nn.Module], seed: int) -> Callable[[], nn.Module]:
    """``make`` whose ``i``-th call draws its weights from seed ``seed + i`` (every row of the table gets the
    same initialisations), leaving torch's global generator as it was."""
    calls = [0]

    def fresh() -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + calls[0])
            calls[0] += 1
            return make()
    return fresh


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--modes", type=int, default=3, help="blobs per class")
    parser.add_argument("--dim", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=32, help="width of the MLP's two hidden layers")
    parser.add_argument("--per-class", type=int, default=2, help="synthetic samples per class")
    parser.add_argument("--steps", type=int, default=100, help="inner SGD steps K (unrolled)")
    parser.add_argument("--checkpoint", default="sqrt", help='steps per segment while distilling, "sqrt" or "none"')
    parser.add_argument("--iterations", type=int, default=150, help="outer (meta) steps")
    parser.add_argument("--batch", type=int, default=256, help="real training points per outer step")
    parser.add_argument("--meta-lr", type=float, default=0.05, help="Adam's lr on the samples (0.3x on the log lr)")
    parser.add_argument("--lr", type=float, default=0.1, help="initial inner learning rate")
    parser.add_argument("--evals", type=int, default=10, help="fresh networks per row of the final table")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a few seconds: K=50, 30 outer steps, 5 networks per row")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.iterations, args.evals = 50, 30, 5
    checkpoint = {"none": None, "sqrt": "sqrt"}.get(args.checkpoint) or int(args.checkpoint)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    problem = make_problem(args.classes, args.modes, args.dim, 2000, 2000, g)
    n = args.classes * args.per_class
    x_syn = torch.randn(n, args.dim, generator=g, dtype=DTYPE).requires_grad_()
    y_syn = torch.arange(args.classes).repeat_interleave(args.per_class)
    log_lr = torch.tensor(math.log(args.lr), dtype=DTYPE, requires_grad=True)
    make = lambda: make_net(args.dim, args.hidden, args.classes)  # noqa: E731
    print(f"dataset distillation: {args.classes} classes x {args.modes} Gaussian blobs in {args.dim}-d "
          f"({len(problem.y_train)} training, {len(problem.y_test)} held-out points); {n} synthetic samples "
          f"({args.per_class} per class) and the inner lr learned through K={args.steps} SGD steps of a "
          f"{args.dim}-{args.hidden}-{args.hidden}-{args.classes} tanh MLP from a fresh random init; float64, 1 thread")

    net, real = make(), real_batch(problem, args.batch, g)
    for ckpt in (None, "sqrt"):  # warm-up: plugin discovery and first calls are not the meta-gradient's
        meta_gradient(net, x_syn, y_syn, log_lr, real, 3, ckpt, repeats=1)
    plain = meta_gradient(net, x_syn, y_syn, log_lr, real, args.steps, None)
    ckpt = meta_gradient(net, x_syn, y_syn, log_lr, real, args.steps, "sqrt")
    segment = higher.unrolling.segment_length(max(args.steps - 1, 1), "sqrt")
    print(f"one meta-gradient (w.r.t. the {n} samples and the lr, {args.batch} real points); peak = the most bytes of "
          "distinct storages saved for the backward alive at once (torch.autograd.graph.saved_tensors_hooks)")
    for label, row in (("plain unroll", plain), (f'checkpoint="sqrt" ({segment} steps per segment)', ckpt)):
        print(f"  {label:<42} peak {row.peak_bytes / 2**20:7.2f} MiB  time {row.seconds:6.3f} s (best of 3)")
    diff = max_relative_difference(ckpt.grads, plain.grads)
    print(f"K={args.steps} checkpointed/plain: peak {ckpt.peak_bytes / plain.peak_bytes:.3f} "
          f"time {ckpt.seconds / plain.seconds:.2f} max rel diff {diff:.2e}")

    evaluate = lambda samples, lr: score(samples, lr, problem, seeded(make, 10_000), args.steps, args.evals)  # noqa: E731
    initial = evaluate(lambda i: (x_syn.detach().clone(), y_syn), args.lr)
    start = time.perf_counter()
    history = distill(x_syn, y_syn, log_lr, problem, make, args.iterations, args.steps, checkpoint, args.meta_lr,
                      args.batch, g)
    learned_lr = math.exp(log_lr.item())
    print(f"distilled in {time.perf_counter() - start:.1f} s: {args.iterations} outer steps, checkpoint="
          f"{checkpoint!r}, meta-loss {statistics.mean(history[:5]):.3f} -> {statistics.mean(history[-5:]):.3f} "
          f"(mean of the first and last 5), inner lr {args.lr:g} -> {learned_lr:.3g}")

    distilled = evaluate(lambda i: (x_syn.detach(), y_syn), learned_lr)
    draw = random_real(problem, args.per_class, seed=20_000)
    best_lr = tuned(draw, problem, make, args.steps)
    real_few = evaluate(draw, best_lr)
    def full(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return problem.x_train, problem.y_train
    full_lr = tuned(full, problem, make, args.steps)
    everything = evaluate(full, full_lr)
    print(f"fresh networks trained {args.steps} full-batch SGD steps, mean over {args.evals} inits:")
    print(f"  {'trained on':<52}{'real loss':>10}{'test accuracy':>20}")
    for name, s in ((f"{n} initial synthetic samples (random, lr {args.lr:g})", initial),
                    (f"{n} distilled samples (learned lr {learned_lr:.3g})", distilled),
                    (f"{n} random real samples (best lr of grid: {best_lr:g})", real_few),
                    (f"all {len(problem.y_train)} training points (best lr of grid: {full_lr:g})", everything)):
        print(f"  {name:<52}{s.loss:>10.3f}{s.accuracy:>14.3f} ± {s.accuracy_std:.3f}")
    print(f"real loss: initial {initial.loss:.4f} distilled {distilled.loss:.4f}; test accuracy: initial "
          f"{initial.accuracy:.3f} distilled {distilled.accuracy:.3f} random real {real_few.accuracy:.3f}")


if __name__ == "__main__":
    main()
