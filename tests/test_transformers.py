"""Hugging Face transformers through ``innerloop_ctx``: second-order meta-gradients, exact, with the default attention.

Each row of ``MODELS`` builds a tiny model from a config (2 layers, hidden 16,
vocabulary 50, 8 tokens; no download) in float64, as ``transformers`` builds it
by default (``scaled_dot_product_attention`` where the model supports it). Two
inner steps of SGD or Adam through the patched module give the meta-gradients
of a hand-written ``torch.func.functional_call`` unroll (rtol 1e-10), with
``copy_initial_weights`` both ways and with ``tasks=``; tied weights, buffers
(position ids, rotary frequencies), ``generation_config``, gradient
checkpointing and hooks behave as on the original model, which is left unchanged.
Skipped, with the reason, where ``transformers`` is not installed (CI installs it).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

import higher_core
from higher_core.batched import BatchingError
from higher_core.errors import MissingDoubleBackwardError

tf = pytest.importorskip("transformers", reason="the transformers tests need `pip install transformers` (tox.ini)")

V, SEQ, STEPS = 50, 8, 2
SGD_LR, ADAM_LR, BETAS, EPS = 0.1, 0.01, (0.9, 0.999), 1e-8
OPTIMIZERS = {
    "sgd": lambda params: torch.optim.SGD(params, lr=SGD_LR),
    "adam": lambda params: torch.optim.Adam(params, lr=ADAM_LR, betas=BETAS, eps=EPS),
}
Batch = dict[str, Any]


def _tokens(g: torch.Generator, n: int = SEQ) -> torch.Tensor:
    return torch.randint(1, V, (2, n), generator=g)


def _causal_lm(g: torch.Generator) -> Batch:
    ids = _tokens(g)
    return {"input_ids": ids, "labels": ids, "use_cache": False}


def _classify_text(g: torch.Generator) -> Batch:
    return {"input_ids": _tokens(g), "labels": torch.randint(0, 3, (2,), generator=g)}


def _seq2seq(g: torch.Generator) -> Batch:
    return {"input_ids": _tokens(g), "labels": _tokens(g, 4), "use_cache": False}


def _classify_images(g: torch.Generator) -> Batch:
    return {"pixel_values": torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64),
            "labels": torch.randint(0, 3, (2,), generator=g)}


@dataclass
class Model:
    name: str
    build: Callable[[], torch.nn.Module]
    batch: Callable[[torch.Generator], Batch]
    #: why tasks= runs the tasks in a loop rather than under vmap (None: vmap)
    loop_reason: str | None = None

    def make(self) -> torch.nn.Module:
        torch.manual_seed(0)
        return self.build().double()


MODELS = [
    Model("gpt2", lambda: tf.GPT2LMHeadModel(tf.GPT2Config(
        vocab_size=V, n_positions=SEQ, n_embd=16, n_layer=2, n_head=2, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)),
        _causal_lm),
    # BERT's forward branches on its inputs' values (a padding check, `torch.all(mask == 1)`): vmap cannot batch it
    Model("bert", lambda: tf.BertForSequenceClassification(tf.BertConfig(
        vocab_size=V, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=SEQ, hidden_dropout_prob=0, attention_probs_dropout_prob=0, num_labels=3)),
        _classify_text, loop_reason="vmap: It looks like you're calling .item()"),
    Model("llama", lambda: tf.LlamaForCausalLM(tf.LlamaConfig(
        vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=SEQ, tie_word_embeddings=True)), _causal_lm),
    Model("t5", lambda: tf.T5ForConditionalGeneration(tf.T5Config(
        vocab_size=V, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_decoder_layers=2, num_heads=2,
        dropout_rate=0, decoder_start_token_id=0, pad_token_id=0)), _seq2seq),
    # ViT's patch embedding is a convolution: on the CPU the loop is faster than vmap's grouped convolutions
    Model("vit", lambda: tf.ViTForImageClassification(tf.ViTConfig(
        image_size=8, patch_size=4, num_channels=3, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, hidden_dropout_prob=0, attention_probs_dropout_prob=0, num_labels=3)),
        _classify_images, loop_reason="convolutions on the CPU"),
]
IDS = [m.name for m in MODELS]
BY_NAME = dict(zip(IDS, MODELS))

# torch < 2.5 has no vmap batching rule for the math attention kernel: vmap runs it per task, with this warning
_NO_MATH_BATCHING_RULE = "ignore:There is a performance drop because we have not yet implemented the batching rule"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: these ops are tiny, and more threads only contend on 2 cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _safe_sqrt(v: torch.Tensor) -> torch.Tensor:
    """sqrt with derivative 0 at 0, as the library's adaptive optimizers take it."""
    positive = v > 0
    return torch.where(positive, torch.where(positive, v, torch.ones_like(v)).sqrt(), torch.zeros_like(v))


def _reference_unroll(make: Callable[[], torch.nn.Module], weights: list[torch.Tensor], opt: str,
                      support: Batch, query: Batch) -> torch.Tensor:
    """The query loss after STEPS hand-written SGD or Adam steps, through functional_call, math attention.

    Every call gets a fresh model, every name of a tied weight its tensor:
    ``functional_call`` leaves a swapped tensor behind in a model whose module is
    reachable by two paths (T5's ``shared`` is also ``encoder.embed_tokens``; torch 2.13).
    """
    model = make()
    index = {id(p): i for i, p in enumerate(model.parameters())}
    names = [(name, index[id(p)]) for name, p in model.named_parameters(remove_duplicate=False)]
    call = lambda ws, batch: torch.func.functional_call(make(), {n: ws[i] for n, i in names}, (), batch).loss
    ws = list(weights)
    exp_avg = [torch.zeros_like(w) for w in ws]
    exp_avg_sq = [torch.zeros_like(w) for w in ws]
    with sdpa_kernel(SDPBackend.MATH):  # the fused kernels have no double backward
        for t in range(1, STEPS + 1):
            grads = torch.autograd.grad(call(ws, support), ws, create_graph=True)
            if opt == "sgd":
                ws = [w - SGD_LR * g for w, g in zip(ws, grads)]
                continue
            (b1, b2), new = BETAS, []
            for i, (w, g) in enumerate(zip(ws, grads)):
                exp_avg[i] = b1 * exp_avg[i] + (1 - b1) * g
                exp_avg_sq[i] = b2 * exp_avg_sq[i] + (1 - b2) * g * g
                denom = _safe_sqrt(exp_avg_sq[i]) / math.sqrt(1 - b2**t) + EPS
                new.append(w - ADAM_LR / (1 - b1**t) * exp_avg[i] / denom)
            ws = new
        return call(ws, query)


def _expected(spec: Model, opt: str, support: Batch, query: Batch) -> tuple[torch.Tensor, list]:
    initial = [p.detach().clone().requires_grad_() for p in spec.make().parameters()]
    loss = _reference_unroll(spec.make, initial, opt, support, query)
    return loss, list(torch.autograd.grad(loss, initial))


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in [*model.named_parameters(), *model.named_buffers()]}


def _assert_close(got: list[torch.Tensor], expected: list[torch.Tensor], names: list[str]) -> None:
    assert len(got) == len(expected)
    for name, g, e in zip(names, got, expected):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-13, msg=lambda m, name=name: f"{name}: {m}")
    assert all(torch.isfinite(g).all() for g in got) and any(g.abs().sum() > 0 for g in got)


@pytest.mark.parametrize("copy_initial_weights", [False, True], ids=["maml", "copied"])
@pytest.mark.parametrize("opt", list(OPTIMIZERS))
@pytest.mark.parametrize("spec", MODELS, ids=IDS)
def test_meta_gradients_equal_a_functional_call_unroll(spec, opt, copy_initial_weights):
    model = spec.make()
    before = _snapshot(model)
    g = torch.Generator().manual_seed(1)
    support, query = spec.batch(g), spec.batch(g)
    params = list(model.parameters())
    with higher_core.innerloop_ctx(model, OPTIMIZERS[opt](params),
                                   copy_initial_weights=copy_initial_weights) as (fmodel, diffopt):
        for _ in range(STEPS):
            diffopt.step(fmodel(**support).loss)
        meta_loss = fmodel(**query).loss
        grads = torch.autograd.grad(meta_loss, params if not copy_initial_weights else fmodel.parameters(time=0))
    expected_loss, expected = _expected(spec, opt, support, query)
    torch.testing.assert_close(meta_loss, expected_loss, rtol=1e-10, atol=0)
    _assert_close(list(grads), expected, [name for name, _ in model.named_parameters()])
    after = _snapshot(model)
    assert all(torch.equal(after[name], value) for name, value in before.items())  # the original is untouched


def test_tasks_refuse_a_module_reachable_by_two_paths():
    """torch.func.functional_call, under every batched forward, leaves a swapped tensor behind in a module
    reachable by two paths (T5: ``shared`` is ``encoder.embed_tokens``), so later calls would read a stale
    tensor: wrong meta-gradients (torch 2.13). ``tasks=`` refuses it, naming both paths; without ``tasks=``
    the patched module is exact (test_meta_gradients_equal_a_functional_call_unroll)."""
    model = BY_NAME["t5"].make()
    with pytest.raises(BatchingError, match=r"'shared' is also 'encoder.embed_tokens'.*no tasks="):
        with higher_core.innerloop_ctx(model, OPTIMIZERS["sgd"](list(model.parameters())), tasks=2):
            pass


@pytest.mark.filterwarnings(_NO_MATH_BATCHING_RULE)
@pytest.mark.parametrize("spec", [m for m in MODELS if m.name != "t5"], ids=[i for i in IDS if i != "t5"])
def test_tasks_give_each_tasks_meta_gradient(spec):
    """``tasks=2``: vmap where the forward allows it, else the loop (``fallback_reason`` says why)."""
    model = spec.make()
    g = torch.Generator().manual_seed(2)
    supports, queries = [spec.batch(g) for _ in range(2)], [spec.batch(g) for _ in range(2)]
    stack = lambda batches: {k: torch.stack([b[k] for b in batches]) if isinstance(v, torch.Tensor) else v
                             for k, v in batches[0].items()}
    params = list(model.parameters())
    with higher_core.innerloop_ctx(model, OPTIMIZERS["sgd"](params), copy_initial_weights=False,
                                   tasks=2) as (fmodel, diffopt):
        for _ in range(STEPS):
            diffopt.step(fmodel(**stack(supports)).loss)
        grads = torch.autograd.grad(fmodel(**stack(queries)).loss.sum(), params)
        assert fmodel.batching == ("vmap" if spec.loop_reason is None else "loop")
        assert spec.loop_reason is None or spec.loop_reason in fmodel.fallback_reason
    per_task = [_expected(spec, "sgd", s, q)[1] for s, q in zip(supports, queries)]
    _assert_close(list(grads), [a + b for a, b in zip(*per_task)], [name for name, _ in model.named_parameters()])


def _meta_gradient(model: torch.nn.Module, batch: Batch, **options: Any) -> list[torch.Tensor]:
    params = list(model.parameters())
    with higher_core.innerloop_ctx(model, OPTIMIZERS["sgd"](params), copy_initial_weights=False,
                                   **options) as (fmodel, diffopt):
        diffopt.step(fmodel(**batch).loss)
        return list(torch.autograd.grad(fmodel(**batch).loss, params))


def test_without_the_math_kernel_the_meta_backward_names_the_op_and_the_fix():
    model = BY_NAME["gpt2"].make()
    with pytest.raises(MissingDoubleBackwardError,
                       match=r"derivative of _scaled_dot_product_\w+_backward.*math_attention=True") as caught:
        _meta_gradient(model, _causal_lm(torch.Generator().manual_seed(3)), math_attention=False)
    assert "is not implemented" in str(caught.value.__cause__)  # torch's own error, kept


def test_tied_weights_stay_one_fast_weight():
    for name, head, embedding in [("gpt2", "lm_head", "transformer.wte"), ("llama", "lm_head", "model.embed_tokens"),
                                  ("t5", "lm_head", "shared")]:
        model = BY_NAME[name].make()
        assert model.get_submodule(head).weight is model.get_submodule(embedding).weight
        with higher_core.innerloop_ctx(model, OPTIMIZERS["sgd"](model.parameters())) as (fmodel, diffopt):
            diffopt.step(fmodel(**BY_NAME[name].batch(torch.Generator().manual_seed(4))).loss)
            assert fmodel.get_submodule(head).weight is fmodel.get_submodule(embedding).weight, name
            assert len(fmodel.fast_params) == len(list(model.parameters()))


def test_buffers_are_the_copys_own_and_stay_in_place():
    model = BY_NAME["bert"].make()
    fmodel = higher_core.monkeypatch(model)
    ids = fmodel.bert.embeddings.position_ids
    assert ids is not model.bert.embeddings.position_ids and torch.equal(ids, model.bert.embeddings.position_ids)
    assert ids.dtype == torch.long and "bert.embeddings.position_ids" in dict(fmodel.named_buffers())
    llama = higher_core.monkeypatch(BY_NAME["llama"].make())
    assert llama.model.rotary_emb.inv_freq.dtype == torch.float64  # moved with .double(), kept by the copy


def test_generate_runs_with_the_fast_weights_and_the_shared_generation_config():
    model = BY_NAME["gpt2"].make()
    prompt = {"input_ids": _tokens(torch.Generator().manual_seed(5), 4),
              "attention_mask": torch.ones(2, 4, dtype=torch.long)}
    with higher_core.innerloop_ctx(model, OPTIMIZERS["sgd"](model.parameters())) as (fmodel, diffopt):
        for _ in range(3):
            diffopt.step(fmodel(**_causal_lm(torch.Generator().manual_seed(6))).loss)
        assert fmodel.generation_config is model.generation_config
        adapted = copy.deepcopy(model)
        fmodel.copy_to(adapted)
        with torch.no_grad():
            got = fmodel.generate(**prompt, max_new_tokens=3, do_sample=False, pad_token_id=0)
            expected = adapted.generate(**prompt, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert torch.equal(got, expected)


# torch 2.4's own checkpoint code calls the deprecated torch.cpu.amp.autocast
@pytest.mark.filterwarnings("ignore:.*torch.cpu.amp.autocast.*is deprecated:FutureWarning")
def test_gradient_checkpointing_is_refused_for_second_order_and_exact_for_first_order():
    """Checkpointing recomputes the forward in the meta-backward with the latest fast weights: refused there."""
    model = BY_NAME["gpt2"].make()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    batch = _causal_lm(torch.Generator().manual_seed(7))
    assert higher_core.monkeypatch(model).is_gradient_checkpointing  # the flags are the model's
    with pytest.raises(ValueError, match=r"gradient checkpointing is on in GPT2Model.*gradient_checkpointing_disable"):
        _meta_gradient(model, batch)
    first_order = []
    for _ in range(2):
        params = list(model.parameters())
        with higher_core.innerloop_ctx(model, OPTIMIZERS["sgd"](params), track_higher_grads=False) as (fmodel, diffopt):
            for _ in range(STEPS):
                diffopt.step(fmodel(**batch).loss)
            first_order.append(torch.autograd.grad(fmodel(**batch).loss, fmodel.parameters()))
        model.gradient_checkpointing_disable()
    _assert_close(list(first_order[0]), list(first_order[1]), [name for name, _ in model.named_parameters()])


def test_hooks_on_the_original_fire_in_the_patched_forward():
    model = BY_NAME["gpt2"].make()
    calls = []
    model.transformer.h[0].register_forward_hook(lambda module, args, out: calls.append(type(module).__name__))
    _meta_gradient(model, _causal_lm(torch.Generator().manual_seed(8)))
    assert calls == ["GPT2Block"] * 2  # the step's forward and the query's


def _autocast_meta_gradient(spec: Model, opt: str, autocast: bool) -> torch.Tensor:
    torch.manual_seed(0)
    model = spec.build()  # float32 parameters, fast weights and optimizer state
    g = torch.Generator().manual_seed(9)
    support, query = spec.batch(g), spec.batch(g)
    params = list(model.parameters())
    with higher_core.innerloop_ctx(model, OPTIMIZERS[opt](params), copy_initial_weights=False) as (fmodel, diffopt):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            for _ in range(STEPS):
                diffopt.step(fmodel(**support).loss)
            loss = fmodel(**query).loss
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])


@pytest.mark.parametrize("spec", [BY_NAME["gpt2"], BY_NAME["llama"]], ids=["gpt2", "llama"])
def test_autocast_bfloat16_meta_gradients_are_finite_and_close_to_float32(spec):
    """README "Transformers", mixed precision: SGD within 5% (measured 0.4-3.2%); Adam finite only.

    Adam's first steps are nearly ``lr * sign(g)``, whose derivative is set by ``eps``:
    its meta-gradient is as sensitive to bfloat16's rounding as to anything (float32
    against float64 already differ by up to 0.3%), so only finiteness is pinned.
    """
    full, mixed = _autocast_meta_gradient(spec, "sgd", False), _autocast_meta_gradient(spec, "sgd", True)
    assert mixed.dtype == torch.float32 and torch.isfinite(mixed).all()
    assert (mixed - full).norm() / full.norm() < 0.05
    assert torch.isfinite(_autocast_meta_gradient(spec, "adam", True)).all()
