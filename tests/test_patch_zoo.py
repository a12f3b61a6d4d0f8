"""The patched module is a faithful stand-in for the original, on a zoo of modules.

Each row of ``ZOO`` builds a module and its inputs. For every row: the patched
module's outputs equal the original's; an inner loop of three SGD or Adam steps
gives the meta-gradients of a hand-written ``torch.func.functional_call`` unroll
(float64, rtol 1e-10); the original module is left unchanged; deep copies,
pickles and ``functional_call`` on the patched module work.
"""

from __future__ import annotations

import abc
import contextlib
import copy
import math
import pickle
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.utils import parametrizations, parametrize

import higher_core
from higher_core import patch

DT = torch.float64
Inputs = tuple[tuple[Any, ...], dict[str, Any]]


# -- modules of the zoo that torch does not ship ----------------------------------------
class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encode = nn.Linear(4, 4)
        self.decode = nn.Linear(4, 4)
        self.decode.weight = self.encode.weight

    def forward(self, x):
        return self.decode(torch.tanh(self.encode(x)))


class Containers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.plist = nn.ParameterList([nn.Parameter(torch.randn(3, 4)), nn.Parameter(torch.randn(4))])
        self.pdict = nn.ParameterDict({"scale": nn.Parameter(torch.rand(4) + 0.5), "shift": nn.Parameter(torch.randn(4))})

    def forward(self, x):
        hidden = torch.tanh(x @ self.plist[0] + self.plist[1])
        return hidden * self.pdict["scale"] + self.pdict["shift"]


HOOK_CALLS: list[str] = []


def _double_the_input(module, args):
    HOOK_CALLS.append("pre")
    return (2 * args[0],)


def _shift_the_output(module, args, output):
    HOOK_CALLS.append("post")
    return output + 1


class Hooked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 4)
        self.register_forward_pre_hook(_double_the_input)
        self.lin.register_forward_hook(_shift_the_output)

    def forward(self, x):
        return torch.tanh(self.lin(x))


class AbstractHead(nn.Module, abc.ABC):
    @abc.abstractmethod
    def head(self, x: torch.Tensor) -> torch.Tensor: ...

    def forward(self, x):
        return self.head(x)


class ConcreteHead(AbstractHead):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def head(self, x):
        return torch.sin(self.lin(x))


class KeywordOnly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x, *, scale, shift=0.0):
        return torch.tanh(self.lin(x)) * scale + shift


class Nested(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.ModuleDict({
            "blocks": nn.ModuleList([nn.Sequential(nn.Linear(3, 4), nn.Tanh()),
                                     nn.Sequential(nn.Sequential(nn.Linear(4, 4), nn.ReLU()))]),
            "head": nn.Linear(4, 2),
        })

    def forward(self, x):
        for block in self.body["blocks"]:
            x = block(x)
        return self.body["head"](x)


def _legacy_weight_norm() -> nn.Module:
    return nn.Sequential(torch.nn.utils.weight_norm(nn.Linear(3, 4)), nn.Tanh())


# -- the table ---------------------------------------------------------------------------
def _randn(*shape: int) -> Callable[[torch.Generator], Inputs]:
    return lambda g: ((torch.randn(*shape, dtype=DT, generator=g),), {})


def _self_attention(need_weights: bool) -> Callable[[torch.Generator], Inputs]:
    def inputs(g):
        x = torch.randn(2, 3, 4, dtype=DT, generator=g)
        return (x, x, x), {"need_weights": need_weights}
    return inputs


def _tokens(g):
    ids = torch.randint(0, 10, (2, 5), generator=g)
    ids[:, 0] = 0  # the padding index
    return (ids,), {}


def _keyword_only(g):
    return (torch.randn(4, 3, dtype=DT, generator=g),), {"scale": 1.5, "shift": torch.ones(2, dtype=DT)}


def _math_attention():
    return sdpa_kernel(SDPBackend.MATH)  # the other kernels have no double backward


@dataclass
class Case:
    name: str
    build: Callable[[], nn.Module]
    inputs: Callable[[torch.Generator], Inputs]
    train: bool = True
    context: Callable[[], contextlib.AbstractContextManager] = field(default=contextlib.nullcontext)

    def make(self) -> nn.Module:
        """The module, built the same way every time (seeded, float64)."""
        previous = torch.get_default_dtype()
        torch.set_default_dtype(DT)
        torch.manual_seed(0)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", ".*torch.nn.utils.weight_norm. is deprecated", FutureWarning)
                module = self.build()
        finally:
            torch.set_default_dtype(previous)
        return module.train(self.train)


ZOO = [
    Case("linear", lambda: nn.Linear(3, 2), _randn(4, 3)),
    Case("conv1d", lambda: nn.Conv1d(2, 3, 3), _randn(2, 2, 7)),
    Case("conv2d", lambda: nn.Conv2d(2, 3, 3, padding=1), _randn(2, 2, 5, 5)),
    Case("batchnorm1d-train", lambda: nn.Sequential(nn.Linear(3, 4, bias=False), nn.BatchNorm1d(4), nn.Tanh()), _randn(6, 3)),
    Case("batchnorm1d-eval", lambda: nn.Sequential(nn.Linear(3, 4, bias=False), nn.BatchNorm1d(4), nn.Tanh()), _randn(6, 3), train=False),
    Case("batchnorm2d-train", lambda: nn.Sequential(nn.Conv2d(2, 3, 3, bias=False), nn.BatchNorm2d(3), nn.Tanh()), _randn(2, 2, 5, 5)),
    Case("batchnorm2d-eval", lambda: nn.Sequential(nn.Conv2d(2, 3, 3, bias=False), nn.BatchNorm2d(3), nn.Tanh()), _randn(2, 2, 5, 5),
         train=False),
    Case("layernorm", lambda: nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4)), _randn(5, 3)),
    Case("groupnorm", lambda: nn.Sequential(nn.Conv1d(2, 4, 3), nn.GroupNorm(2, 4)), _randn(2, 2, 6)),
    Case("embedding-padding", lambda: nn.Sequential(nn.Embedding(10, 4, padding_idx=0), nn.Tanh()), _tokens),
    Case("dropout", lambda: nn.Sequential(nn.Linear(3, 6), nn.Dropout(0.5), nn.Linear(6, 2)), _randn(4, 3)),
    Case("rnn-bidirectional", lambda: nn.RNN(3, 4, num_layers=2, bidirectional=True, batch_first=True),
         _randn(2, 5, 3)),
    Case("lstm-proj", lambda: nn.LSTM(3, 5, num_layers=2, bidirectional=True, batch_first=True, proj_size=2),
         _randn(2, 5, 3)),
    Case("gru-dropout", lambda: nn.GRU(3, 4, num_layers=2, dropout=0.3), _randn(5, 2, 3)),
    Case("rnn-cell", lambda: nn.RNNCell(3, 4), _randn(2, 3)),
    Case("lstm-cell", lambda: nn.LSTMCell(3, 4), _randn(2, 3)),
    Case("gru-cell", lambda: nn.GRUCell(3, 4), _randn(2, 3)),
    Case("multihead-attention-weights", lambda: nn.MultiheadAttention(4, 2, batch_first=True),
         _self_attention(need_weights=True)),
    Case("multihead-attention-sdpa", lambda: nn.MultiheadAttention(4, 2, dropout=0.2, batch_first=True),
         _self_attention(need_weights=False), context=_math_attention),
    Case("transformer-encoder-layer",
         lambda: nn.TransformerEncoderLayer(4, 2, dim_feedforward=8, dropout=0.1, batch_first=True),
         _randn(2, 3, 4), context=_math_attention),
    Case("tied-weights", Tied, _randn(4, 4)),
    Case("parameter-list-and-dict", Containers, _randn(4, 3)),
    Case("weight-norm", lambda: nn.Sequential(parametrizations.weight_norm(nn.Linear(3, 4)), nn.Tanh()),
         _randn(4, 3)),
    Case("orthogonal-square", lambda: parametrizations.orthogonal(nn.Linear(4, 4)), _randn(3, 4)),
    Case("orthogonal-householder", lambda: parametrizations.orthogonal(nn.Linear(3, 5)), _randn(2, 3)),
    Case("spectral-norm-train", lambda: parametrizations.spectral_norm(nn.Linear(3, 4)), _randn(4, 3)),
    Case("spectral-norm-eval", lambda: parametrizations.spectral_norm(nn.Linear(3, 4)), _randn(4, 3),
         train=False),
    Case("legacy-weight-norm", _legacy_weight_norm, _randn(4, 3)),
    Case("hooks", Hooked, _randn(4, 3)),
    Case("abc-mixin", ConcreteHead, _randn(4, 3)),
    Case("keyword-only", KeywordOnly, _keyword_only),
    Case("nested-containers", Nested, _randn(4, 3)),
]
IDS = [case.name for case in ZOO]


# -- helpers -----------------------------------------------------------------------------
def _inputs(case: Case, seed: int) -> Inputs:
    return case.inputs(torch.Generator().manual_seed(seed))


def _leaves(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [leaf for item in out for leaf in _leaves(item)]
    return []


def _loss(out: Any) -> torch.Tensor:
    return sum(t.pow(2).mean() for t in _leaves(out) if t.is_floating_point())


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    tensors = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    return {name: t.detach().clone() for name, t in tensors.items()}


def _assert_unchanged(module: nn.Module, snapshot: dict[str, torch.Tensor]) -> None:
    now = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    assert now.keys() == snapshot.keys()
    for name, value in now.items():
        assert torch.equal(value, snapshot[name]), f"{name} of the original module changed"


def _assert_same(a: Any, b: Any) -> None:
    left, right = _leaves(a), _leaves(b)
    assert len(left) == len(right)
    for x, y in zip(left, right):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def _safe_sqrt(v: torch.Tensor) -> torch.Tensor:
    """sqrt with derivative 0 at 0, as the library's adaptive optimizers take it."""
    positive = v > 0
    return torch.where(positive, torch.where(positive, v, torch.ones_like(v)).sqrt(), torch.zeros_like(v))


SGD_LR, ADAM_LR, BETAS, EPS = 0.1, 0.05, (0.9, 0.999), 1e-8
OPTIMIZERS = {
    "sgd": lambda params: torch.optim.SGD(params, lr=SGD_LR),
    "adam": lambda params: torch.optim.Adam(params, lr=ADAM_LR, betas=BETAS, eps=EPS),
}


def _reference_unroll(module: nn.Module, weights: dict[str, torch.Tensor], opt: str,
                      support: Inputs, query: Inputs, steps: int = 3) -> torch.Tensor:
    """The query loss after ``steps`` hand-written SGD or Adam steps, through functional_call."""
    names, ws = list(weights), list(weights.values())
    exp_avg = [torch.zeros_like(w) for w in ws]
    exp_avg_sq = [torch.zeros_like(w) for w in ws]
    for t in range(1, steps + 1):
        loss = _loss(torch.func.functional_call(module, dict(zip(names, ws)), *support))
        grads = torch.autograd.grad(loss, ws, create_graph=True)
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
    return _loss(torch.func.functional_call(module, dict(zip(names, ws)), *query))


# -- the tests ---------------------------------------------------------------------------
@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: these ops are tiny, and more threads only contend (6x slower on 2 cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("case", ZOO, ids=IDS)
def test_outputs_equal_the_original(case):
    net = case.make()
    fnet = higher_core.monkeypatch(net)
    args, kwargs = _inputs(case, 1)
    HOOK_CALLS.clear()
    with case.context():
        torch.manual_seed(3)  # dropout draws the same masks from the same stream
        expected = net(*args, **kwargs)
        torch.manual_seed(3)
        got = fnet(*args, **kwargs)
    _assert_same(got, expected)
    for (name, buf), (_, original) in zip(fnet.named_buffers(), net.named_buffers()):
        assert buf is not original and torch.equal(buf, original), name  # e.g. running stats, moved alike
    if case.name == "hooks":
        assert HOOK_CALLS == ["pre", "post"] * 2


def _to(inputs: Inputs, device: torch.device | str) -> Inputs:
    args, kwargs = inputs
    move = lambda v: v.to(device) if isinstance(v, torch.Tensor) else v
    return tuple(move(a) for a in args), {k: move(v) for k, v in kwargs.items()}


def _check_meta_gradients(case: Case, opt: str, device: str = "cpu",
                          reference_context: Callable[[], Any] = contextlib.nullcontext) -> None:
    """Three inner steps through the patched module against the hand-written unroll."""
    net, reference = case.make().to(device), case.make().to(device)
    before = _snapshot(net)
    support, query = _to(_inputs(case, 1), device), _to(_inputs(case, 2), device)
    params = list(net.parameters())
    with case.context():
        torch.manual_seed(5)
        with higher_core.innerloop_ctx(net, OPTIMIZERS[opt](params), copy_initial_weights=False) as (fnet, diffopt):
            for _ in range(3):
                diffopt.step(_loss(fnet(*support[0], **support[1])))
            meta_loss = _loss(fnet(*query[0], **query[1]))
            grads = torch.autograd.grad(meta_loss, params)
        torch.manual_seed(5)
        with reference_context():
            expected_loss = _reference_unroll(reference, dict(net.named_parameters()), opt, support, query)
            expected = torch.autograd.grad(expected_loss, params)
    torch.testing.assert_close(meta_loss, expected_loss, rtol=1e-10, atol=1e-12)
    for name, g, e in zip(dict(net.named_parameters()), grads, expected):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12, msg=lambda m, name=name: f"{name}: {m}")
    assert any(g.abs().sum() > 0 for g in grads)
    for (name, buf), (_, ref_buf) in zip(fnet.named_buffers(), reference.named_buffers()):
        torch.testing.assert_close(buf, ref_buf, rtol=1e-10, atol=0, msg=name)  # buffers moved on the copy
    _assert_unchanged(net, before)


@pytest.mark.parametrize("opt", list(OPTIMIZERS))
@pytest.mark.parametrize("case", ZOO, ids=IDS)
def test_meta_gradients_equal_a_functional_call_unroll(case, opt):
    _check_meta_gradients(case, opt)


RNN_ROWS = [case for case in ZOO if isinstance(case.make(), nn.RNNBase)]


@pytest.mark.cuda
@pytest.mark.parametrize("case", RNN_ROWS, ids=[case.name for case in RNN_ROWS])
def test_rnn_meta_gradients_on_cuda_with_cudnn_enabled(case):
    """cuDNN's RNN has no double backward: the patched RNN turns it off while tracking, and back on."""
    assert torch.backends.cudnn.is_available(), "this torch has no cuDNN"
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        # The reference runs without cuDNN (it could not differentiate twice otherwise).
        _check_meta_gradients(case, "adam", "cuda", lambda: torch.backends.cudnn.flags(enabled=False))
        assert torch.backends.cudnn.enabled, "the patched RNN left cuDNN switched off"


def test_cudnn_is_switched_off_only_around_a_tracked_cuda_rnn():
    on_cuda = types.SimpleNamespace(_flat_weights_names=["w"], w=types.SimpleNamespace(is_cuda=True))
    with torch.backends.cudnn.flags(enabled=True):
        patch._rnn_cudnn_off(on_cuda, ())  # not marked as tracking higher-order gradients
        assert torch.backends.cudnn.enabled
        setattr(on_cuda, patch._NO_CUDNN, True)
        with torch.no_grad():
            patch._rnn_cudnn_off(on_cuda, ())
        assert torch.backends.cudnn.enabled
        patch._rnn_cudnn_off(on_cuda, ())
        assert not torch.backends.cudnn.enabled
        patch._rnn_cudnn_restore(on_cuda, (), None)
        assert torch.backends.cudnn.enabled
        flstm = higher_core.monkeypatch(nn.LSTM(2, 3))
        assert getattr(flstm._patched, patch._NO_CUDNN) is True
        assert patch._rnn_cudnn_restore in flstm._patched._forward_hooks.values()
        assert flstm._patched._forward_hooks_always_called  # restores even when the forward raises
        flstm.track_higher_grads = False
        assert getattr(flstm._patched, patch._NO_CUDNN) is False
        flstm(torch.randn(4, 1, 2))  # on the CPU: nothing to switch
        assert torch.backends.cudnn.enabled


@pytest.mark.parametrize("case", ZOO, ids=IDS)
def test_deepcopy_and_pickle_hold_detached_fast_weights(case):
    net = case.make()
    support = _inputs(case, 1)
    with case.context(), higher_core.innerloop_ctx(net, torch.optim.SGD(net.parameters(), lr=0.1)) as (fnet, diffopt):
        diffopt.step(_loss(fnet(*support[0], **support[1])))
        assert any(p.grad_fn is not None for p in fnet.fast_params)
        if any(parametrize.is_parametrized(m) for m in net.modules()):
            with pytest.raises(RuntimeError, match="parametrized modules"):  # torch refuses, so do we
                pickle.dumps(fnet)
            copies = [copy.deepcopy(fnet)]
        else:
            copies = [copy.deepcopy(fnet), pickle.loads(pickle.dumps(fnet))]
        query = _inputs(case, 2)
        torch.manual_seed(4)
        expected = fnet(*query[0], **query[1])
        for clone in copies:
            assert type(clone) is type(fnet) and clone.training == fnet.training
            for c, f in zip(clone.fast_params, fnet.fast_params):
                assert c.is_leaf and c.requires_grad == f.requires_grad and c is not f and torch.equal(c, f)
            for (name, c), (_, f) in zip(clone.named_buffers(), fnet.named_buffers()):
                assert c is not f, name
            torch.manual_seed(4)
            _assert_same(clone(*query[0], **query[1]), expected)


@pytest.mark.parametrize("case", ZOO, ids=IDS)
def test_functional_call_on_the_patched_module(case):
    net, reference = case.make(), case.make()
    fnet = higher_core.monkeypatch(net)
    before = fnet.fast_params
    weights = {name: 1.5 * p.detach() for name, p in fnet.named_parameters()}
    args, kwargs = _inputs(case, 1)
    with case.context():
        torch.manual_seed(6)
        got = torch.func.functional_call(fnet, weights, args, kwargs)
        torch.manual_seed(6)
        expected = torch.func.functional_call(reference, weights, args, kwargs)
    _assert_same(got, expected)
    assert all(a is b for a, b in zip(fnet.fast_params, before)) and len(fnet._fast_params) == 1
