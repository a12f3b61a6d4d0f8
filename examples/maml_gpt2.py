"""MAML on a tiny GPT-2: few-shot adaptation to a new token mapping, second order, on the CPU.

Each task is a random one-to-one mapping f from 8 "source" tokens to 8 "target"
tokens; a sequence lists 4 pairs ``x1 f(x1) x2 f(x2) ...`` and the model is
scored on predicting each f(x) from its x. The learner sees K = 4 sequences of
a new task (support) and is scored on 8 others (query). MAML meta-learns GPT-2
weights from which a few SGD steps on the support set learn the mapping
(second-order meta-gradients through ``scaled_dot_product_attention``: the
patched forward selects torch's math kernel by itself); the baseline pre-trains
the same model on all tasks jointly and fine-tunes it the same way.

The GPT-2 is built from a config (2 layers, width 32, 2 heads, vocabulary 16;
no download). Needs ``pip install transformers``.

Run:  python examples/maml_gpt2.py            (about a minute on one CPU core)
      python examples/maml_gpt2.py --quick    (a few seconds: the smoke test)
      python examples/maml_gpt2.py --plot maml_gpt2.png   (needs matplotlib)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.functional import cross_entropy

import higher_core as higher

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the examples' helpers, however this is loaded
from _progress import Progress  # noqa: E402

SOURCES, PAIRS, K, QUERY = 8, 4, 4, 8
VOCAB = 2 * SOURCES
INNER_LR = 0.5


def make_gpt2() -> nn.Module:
    try:
        import transformers
    except ImportError as exc:
        raise SystemExit("this example needs transformers: pip install transformers") from exc
    transformers.logging.set_verbosity_error()  # (its note that the config sets no loss_type)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=2 * PAIRS, n_embd=32, n_layer=2, n_head=2,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(config)


def sample_tasks(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` tasks' support and query sequences, ``[n, K, 2 * PAIRS]`` and ``[n, QUERY, 2 * PAIRS]``."""
    mapping = torch.argsort(torch.rand(n, SOURCES, generator=generator), dim=1) + SOURCES  # f, one per task
    x = torch.randint(0, SOURCES, (n, K + QUERY, PAIRS), generator=generator)
    y = torch.gather(mapping.unsqueeze(1).expand(-1, K + QUERY, -1), 2, x)
    sequences = torch.stack([x, y], dim=-1).flatten(-2)  # x1 f(x1) x2 f(x2) ...
    return sequences[:, :K], sequences[:, K:]


def loss_fn(model: nn.Module, sequences: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each f(x) predicted at its x; one loss per task, ``[T]`` (sequences ``[T, n, 2P]``)."""
    logits = model(input_ids=sequences, use_cache=False).logits[..., 0::2, :]
    targets = sequences[..., 1::2]
    return cross_entropy(logits.flatten(0, -2), targets.flatten(), reduction="none").view(targets.shape).mean((-1, -2))


def meta_train(model: nn.Module, iterations: int, meta_batch: int, inner_steps: int, seed: int,
               progress: Progress | None = None) -> None:
    meta_opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    inner_opt = torch.optim.SGD(model.parameters(), lr=INNER_LR)
    generator = torch.Generator().manual_seed(seed)
    for i in range(iterations):
        support, query = sample_tasks(meta_batch, generator)
        with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False, tasks=meta_batch) as (fmodel, diffopt):
            for _ in range(inner_steps):
                diffopt.step(loss_fn(fmodel, support))  # per-task losses [T]
            loss_fn(fmodel, query).mean().backward()  # second order, through the math attention kernel
        meta_opt.step()
        meta_opt.zero_grad()
        if progress is not None:
            progress.update(i + 1)


def pretrain(model: nn.Module, iterations: int, meta_batch: int, seed: int) -> None:
    """The baseline: the same model and data, trained on all tasks jointly (no inner loop)."""
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(iterations):
        support, query = sample_tasks(meta_batch, generator)
        loss_fn(model, torch.cat([support, query], 1)).mean().backward()
        opt.step()
        opt.zero_grad()


def evaluate(model: nn.Module, tasks: tuple[torch.Tensor, torch.Tensor], steps: tuple[int, ...]) -> dict[int, float]:
    """Mean query loss over the tasks after each number of SGD steps on the support set (test mode)."""
    support, query = tasks
    inner_opt = torch.optim.SGD(model.parameters(), lr=INNER_LR)
    losses = {}
    # Test mode keeps torch's fused attention kernel, which has no vmap batching rule on the CPU (torch warns
    # and runs it per task): the math kernel batches
    with sdpa_kernel(SDPBackend.MATH), \
            higher.innerloop_ctx(model, inner_opt, track_higher_grads=False, tasks=len(support)) as (fmodel, diffopt):
        for step in range(max(steps) + 1):
            if step in steps:
                with torch.no_grad():
                    losses[step] = float(loss_fn(fmodel, query).mean())
            diffopt.step(loss_fn(fmodel, support))
    return losses


def plot(path: str, curves: dict[str, dict[int, float]]) -> None:
    from _plotting import pyplot, save

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for (name, curve), style in zip(curves.items(), ("o-", "s--")):
        ax.plot(list(curve), list(curve.values()), style, label=name)
    ax.set_xlabel("SGD steps on the support set (K = 4 sequences)")
    ax.set_ylabel("query cross-entropy (nats)")
    ax.set_title("tiny GPT-2 on new token mappings")
    ax.legend()
    fig.tight_layout()
    save(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--meta-batch", type=int, default=8)
    parser.add_argument("--inner-steps", type=int, default=1)
    parser.add_argument("--test-tasks", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a few-second smoke run (3 iterations, 4 test tasks)")
    parser.add_argument("--plot", metavar="FILE.png", help="draw the query loss over adaptation steps")
    args = parser.parse_args()
    if args.quick:
        args.iterations, args.meta_batch, args.test_tasks = 3, 2, 4
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    maml_model = make_gpt2()
    torch.manual_seed(args.seed)
    baseline = make_gpt2()
    start = time.perf_counter()
    meta_train(maml_model, args.iterations, args.meta_batch, args.inner_steps, args.seed,
               Progress(args.iterations, "meta-training"))
    meta_seconds = time.perf_counter() - start
    pretrain(baseline, args.iterations, args.meta_batch, args.seed)
    test_tasks = sample_tasks(args.test_tasks, torch.Generator().manual_seed(10_000 + args.seed))
    steps = (0, 1, 2, 5)
    curves = {"MAML (meta-learned)": evaluate(maml_model, test_tasks, tuple(range(6))),
              "pre-trained baseline": evaluate(baseline, test_tasks, tuple(range(6)))}
    print(f"meta-training: {args.iterations} iterations x {args.meta_batch} tasks in {meta_seconds:.1f} s")
    print(f"| query cross-entropy on {args.test_tasks} new tasks, after n SGD steps | "
          + " | ".join(f"n={n}" for n in steps) + " |")
    print("|---|" + "---|" * len(steps))
    for name, curve in curves.items():
        print(f"| {name} | " + " | ".join(f"{curve[n]:.3f}" for n in steps) + " |")
    print(f"(chance: ln {SOURCES} = {torch.log(torch.tensor(float(SOURCES))):.3f} nats, a target among {SOURCES})")
    if args.plot:
        plot(args.plot, curves)
        print(f"figure: {args.plot}")
    print("checksum", repr(sum(float(p.detach().sum()) for p in maml_model.parameters())))


if __name__ == "__main__":
    main()
