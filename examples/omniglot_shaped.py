"""MAML for 5-way few-shot classification of Omniglot-shaped images (no download), with higher-core.

Each class is a random "character": a prototype of 2-4 pen strokes and sometimes a dot, drawn
on a 28x28 canvas. Each example of a class redraws its strokes with the pen's endpoints jittered,
a random stroke width, a shift of up to 2 pixels and pixel noise, so examples of one class differ
as handwritten characters do. Training and held-out classes are disjoint. The model is the MAML
paper's Omniglot conv net, narrower (4 blocks of 3x3 stride-2 convolution, batch norm, ReLU).
MAML (one SGD step of lr 0.4 on the support set, as Finn et al. 2017 do for Omniglot) is compared
with the same network from its random initialisation, adapted the same way.

Run:  python examples/omniglot_shaped.py [--shots 1|5] [--plot omniglot.png]   (about a minute on one core)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn.functional import cross_entropy

import higher_core as higher

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the examples' helpers
from _progress import Progress  # noqa: E402

SIZE = 28
WAYS = 5
QUERIES = 5
INNER_LR = 0.4
TRAIN_CLASSES = range(0, 1000)
TEST_CLASSES = range(1000, 1300)
_GRID = torch.stack(torch.meshgrid(torch.arange(SIZE.__float__()), torch.arange(SIZE.__float__()),
                                   indexing="ij"), -1).reshape(-1, 2)  # (784, 2) pixel centres (row, col)


def prototype(label: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class ``label``'s strokes: segment endpoints (S, 2, 2) in pixels, and dots (D, 2)."""
    g = torch.Generator().manual_seed(7919 * label + 1)
    strokes = 5 + 18 * torch.rand(int(torch.randint(2, 5, (1,), generator=g)), 2, 2, generator=g)
    dots = 6 + 16 * torch.rand(int(torch.randint(0, 2, (1,), generator=g)), 2, generator=g)
    return strokes, dots


def draw(label: int, n: int, g: torch.Generator) -> torch.Tensor:
    """``n`` examples of class ``label``, shaped (n, 1, 28, 28), values in about [0, 1]."""
    strokes, dots = prototype(label)
    a = strokes[None, :, 0] + 0.8 * torch.randn(n, *strokes[:, 0].shape, generator=g)  # (n, S, 2)
    b = strokes[None, :, 1] + 0.8 * torch.randn(n, *strokes[:, 1].shape, generator=g)
    ab = b - a
    t = ((_GRID[None, None] - a[:, :, None]) * ab[:, :, None]).sum(-1) / ab.pow(2).sum(-1, keepdim=True).clamp_min(1e-6)
    nearest = a[:, :, None] + t.clamp(0, 1)[..., None] * ab[:, :, None]          # (n, S, 784, 2)
    distance = (_GRID[None, None] - nearest).pow(2).sum(-1).min(1).values      # (n, 784)
    if len(dots):
        distance = torch.minimum(distance, (_GRID[None, None] - dots[None, :, None]).pow(2).sum(-1).min(1).values)
    width = 0.8 + 0.7 * torch.rand(n, 1, generator=g)
    images = torch.exp(-distance / (2 * width ** 2)).reshape(n, 1, SIZE, SIZE)
    shifts = torch.randint(-2, 3, (n, 2), generator=g)
    images = torch.stack([torch.roll(im, tuple(s.tolist()), dims=(1, 2)) for im, s in zip(images, shifts)])
    return images + 0.1 * torch.randn(images.shape, generator=g)


def sample_task(classes: range, shots: int, g: torch.Generator) -> tuple[torch.Tensor, ...]:
    """A 5-way task: support (5*shots) and query (5*QUERIES) images and labels, classes relabelled 0-4."""
    picked = torch.randperm(len(classes), generator=g)[:WAYS]
    xs, ys, xq, yq = [], [], [], []
    for new_label, index in enumerate(picked.tolist()):
        images = draw(classes[index], shots + QUERIES, g)
        xs.append(images[:shots]), xq.append(images[shots:])
        ys.append(torch.full((shots,), new_label)), yq.append(torch.full((QUERIES,), new_label))
    return torch.cat(xs), torch.cat(ys), torch.cat(xq), torch.cat(yq)


def make_net(width: int = 32) -> nn.Module:
    """Four blocks of 3x3 stride-2 convolution, batch norm (batch statistics) and ReLU, then a linear layer."""
    blocks, channels = [], 1
    for _ in range(4):
        blocks += [nn.Conv2d(channels, width, 3, stride=2, padding=1),
                   nn.BatchNorm2d(width, track_running_stats=False), nn.ReLU()]
        channels = width
    return nn.Sequential(*blocks, nn.Flatten(), nn.Linear(width * 2 * 2, WAYS))


def adapt_and_score(net: nn.Module, task: tuple[torch.Tensor, ...], steps: int,
                    track: bool) -> tuple[torch.Tensor, float]:
    """``steps`` SGD steps on the support set; the query loss (differentiable if ``track``) and accuracy."""
    xs, ys, xq, yq = task
    inner_opt = torch.optim.SGD(net.parameters(), lr=INNER_LR)
    with higher.innerloop_ctx(net, inner_opt, copy_initial_weights=False, track_higher_grads=track) as (fnet, diffopt):
        for _ in range(steps):
            diffopt.step(cross_entropy(fnet(xs), ys))
        logits = fnet(xq)
        return cross_entropy(logits, yq), (logits.argmax(-1) == yq).float().mean().item()


def meta_train(net: nn.Module, iterations: int, meta_batch: int, shots: int, inner_steps: int,
               g: torch.Generator, progress: Progress) -> None:
    """MAML over tasks of the training classes (one task at a time; the meta-gradients accumulate)."""
    meta_opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for iteration in range(iterations):
        meta_opt.zero_grad()
        loss_sum = accuracy_sum = 0.0
        for _ in range(meta_batch):
            loss, accuracy = adapt_and_score(net, sample_task(TRAIN_CLASSES, shots, g), inner_steps, True)
            (loss / meta_batch).backward()
            loss_sum, accuracy_sum = loss_sum + loss.item(), accuracy_sum + accuracy
        meta_opt.step()
        progress.update(iteration + 1, **{"meta-loss": loss_sum / meta_batch, "acc": accuracy_sum / meta_batch})


def evaluate(net: nn.Module, tasks: list[tuple[torch.Tensor, ...]], steps: tuple[int, ...]) -> dict[int, float]:
    """Mean query accuracy on held-out tasks after each number of SGD steps."""
    return {s: sum(adapt_and_score(net, task, s, False)[1] for task in tasks) / len(tasks) for s in steps}


def plot(path: str, results: dict[str, dict[int, float]], shots: int) -> None:
    """Query accuracy before and after adaptation, meta-learned against random initial weights."""
    from _plotting import pyplot, save

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    steps = list(next(iter(results.values())))
    width = 0.8 / len(steps)
    shades = ("#bdbdbd", "#6baed6", "#08519c", "#08306b")
    for i, step in enumerate(steps):
        xs = [j + (i - (len(steps) - 1) / 2) * width for j in range(len(results))]
        label = "before adaptation" if step == 0 else f"after {step} SGD step{'s' * (step != 1)}"
        bars = ax.bar(xs, [r[step] for r in results.values()], width, color=shades[i % len(shades)], label=label)
        ax.bar_label(bars, fmt="%.2f", fontsize=8, padding=1)
    ax.axhline(1 / WAYS, color="black", lw=0.8, ls=":", label="chance")
    ax.set_xticks(range(len(results)), list(results))
    ax.set_ylim(0, 1.22)
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel("query accuracy, held-out classes")
    ax.set_title(f"{WAYS}-way {shots}-shot, Omniglot-shaped synthetic characters", fontsize=10)
    ax.legend(fontsize=8, frameon=False, loc="upper center", ncol=len(steps) + 1)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    save(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, default=1, choices=(1, 5))
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--meta-batch", type=int, default=4)
    parser.add_argument("--inner-steps", type=int, default=1)
    parser.add_argument("--test-tasks", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", metavar="FILE.png", help="draw accuracy before/after adaptation; needs matplotlib")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    maml_net, random_net = make_net(), make_net()
    random_net.load_state_dict(maml_net.state_dict())
    progress = Progress(args.iterations, "meta-training")
    start = time.perf_counter()
    meta_train(maml_net, args.iterations, args.meta_batch, args.shots, args.inner_steps,
               torch.Generator().manual_seed(args.seed), progress)
    progress.close()
    trained = time.perf_counter() - start

    test_g = torch.Generator().manual_seed(12345)
    tasks = [sample_task(TEST_CLASSES, args.shots, test_g) for _ in range(args.test_tasks)]
    steps = (0, args.inner_steps, 5 * args.inner_steps)
    results = {"MAML (meta-learned)": evaluate(maml_net, tasks, steps),
               "random init": evaluate(random_net, tasks, steps)}
    print(f"MAML, {WAYS}-way {args.shots}-shot Omniglot-shaped classification, {args.iterations} meta-iterations "
          f"x {args.meta_batch} tasks, meta-trained in {trained:.0f} s")
    print(f"query accuracy on {args.test_tasks} tasks of held-out classes, after n SGD steps (lr={INNER_LR}):")
    print(f"  {'weights':<22}" + "".join(f"{'n=' + str(s):>8}" for s in steps))
    for name, accuracy in results.items():
        print(f"  {name:<22}" + "".join(f"{accuracy[s]:>8.3f}" for s in steps))
    if args.plot:
        plot(args.plot, results, args.shots)


if __name__ == "__main__":
    main()
