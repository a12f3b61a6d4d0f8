"""Bad inputs at the public boundary: a clear error naming the argument, never a silent result (issue 12).

One table, one row per bad call: ``BadInput(call, error, regex, desc)``, where
``call`` makes the bad call and ``regex`` must match the message (it names the
argument). The rows here are the patched module's and ``innerloop_ctx``'s; other
modules add their own tables.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn

import higher_core as higher
from higher_core import patch, utils


@dataclass(frozen=True)
class BadInput:
    call: Callable[[], Any]
    error: type[Exception]
    regex: str
    desc: str


def _net() -> nn.Linear:
    return nn.Linear(2, 1)


_OWN = object()


def _ctx(model: Any = _OWN, **kwargs: Any) -> None:
    net = _net()
    with higher.innerloop_ctx(net if model is _OWN else model, torch.optim.SGD(net.parameters(), lr=0.1), **kwargs):
        pass


def _fnet(**kwargs: Any) -> patch.PatchedModule:
    return patch.monkeypatch(_net(), **kwargs)


def _call_with(params: Any) -> Any:
    fnet = _fnet()
    return fnet(torch.ones(3, 2), params=params)


def _weights() -> list[torch.Tensor]:
    return [torch.zeros(1, 2), torch.zeros(1)]


def _update(params: Any) -> None:
    _fnet().update_params(params)


def _copy_to(target: Any, **kwargs: Any) -> None:
    _fnet().copy_to(target, **kwargs)


def _set(attribute: str, value: Any) -> None:
    setattr(_fnet(), attribute, value)


def _bn_copy_to(target: nn.Module) -> None:
    patch.monkeypatch(nn.BatchNorm1d(2)).copy_to(target, buffers=True)


def _bn_with_running_mean(value: torch.Tensor) -> nn.BatchNorm1d:
    bn = nn.BatchNorm1d(2)
    bn.running_mean = value
    return bn


ROWS = [
    # innerloop_ctx: the model and the flags
    BadInput(lambda: _ctx(model=lambda x: x), TypeError, r"innerloop_ctx\(model=.*nn\.Module, got function", "a function as model"),
    BadInput(lambda: _ctx(model=[_net()]), TypeError, r"innerloop_ctx\(model=.*got list", "a list as model"),
    BadInput(lambda: _ctx(model=None), TypeError, r"innerloop_ctx\(model=.*got NoneType", "None as model"),
    BadInput(lambda: _ctx(model=nn.Linear), TypeError, r"innerloop_ctx\(model=.*the class torch\.nn.*instantiate", "a module class"),
    BadInput(lambda: _ctx(model=torch.zeros(2)), TypeError, r"innerloop_ctx\(model=.*got Tensor", "a tensor as model"),
    BadInput(lambda: _ctx(track_higher_grads="no"), TypeError, r"innerloop_ctx\(track_higher_grads=.*True or False", "string flag"),
    BadInput(lambda: _ctx(track_higher_grads=None), TypeError, r"track_higher_grads=.*NoneType", "None flag"),
    BadInput(lambda: _ctx(track_higher_grads=1), TypeError, r"track_higher_grads=.*int", "int flag"),
    BadInput(lambda: _ctx(copy_initial_weights="False"), TypeError, r"innerloop_ctx\(copy_initial_weights=", "string flag"),
    BadInput(lambda: _ctx(copy_initial_weights=None), TypeError, r"copy_initial_weights=.*NoneType", "None flag"),
    BadInput(lambda: _ctx(device="gpu"), ValueError, r"innerloop_ctx\(device='gpu'\) is not a device", "unknown device"),
    BadInput(lambda: _ctx(device=1.5), TypeError, r"innerloop_ctx\(device=.*float", "float device"),
    BadInput(lambda: _ctx(device=True), TypeError, r"innerloop_ctx\(device=.*bool", "bool device"),
    # monkeypatch / make_functional / PatchedModule / buffer_sync / get_func_params
    BadInput(lambda: patch.monkeypatch(lambda x: x), TypeError, r"monkeypatch\(module=.*got function", "a function"),
    BadInput(lambda: patch.monkeypatch(_net(), track_higher_grads="no"), TypeError, r"monkeypatch\(track_higher_grads=", "string flag"),
    BadInput(lambda: patch.monkeypatch(_net(), copy_initial_weights="yes"), TypeError, r"monkeypatch\(copy_initial_weights=", "string flag"),
    BadInput(lambda: patch.monkeypatch(_net(), device="nowhere"), ValueError, r"monkeypatch\(device='nowhere'\)", "unknown device"),
    BadInput(lambda: patch.monkeypatch(patch.make_functional(_net())), ValueError, r"monkeypatch\(module=\.\.\.\) got a patched module with no fast weights yet.*params=", "patched, no weights"),
    BadInput(lambda: patch.make_functional({"w": 1}), TypeError, r"make_functional\(module=.*got dict", "a dict"),
    BadInput(lambda: patch.make_functional(_net(), encapsulator=5), TypeError, r"make_functional\(encapsulator=", "not callable"),
    BadInput(lambda: patch.PatchedModule(_net(), track_higher_grads="yes"), TypeError, r"PatchedModule\(track_higher_grads=", "string flag"),
    BadInput(lambda: patch.buffer_sync(None, _fnet()), TypeError, r"buffer_sync\(module=", "None module"),
    BadInput(lambda: utils.get_func_params([_net()]), TypeError, r"get_func_params\(module=.*got list", "a list"),
    # fmodel(x, params=...): one tensor per parameter, with its shape, dtype, device; named
    BadInput(lambda: _call_with([torch.zeros(1, 2), torch.zeros(8, 1)]), ValueError, r"params\[1\] \('bias'\) must have shape \(1,\)", "broadcastable wrong shape"),
    BadInput(lambda: _call_with([torch.zeros(1, 2), None]), TypeError, r"params\[1\] \('bias'\) must be a tensor.*NoneType", "None bias"),
    BadInput(lambda: _call_with([torch.zeros(2, 1), torch.zeros(1)]), ValueError, r"params\[0\] \('weight'\).*got shape \(2, 1\)", "transposed"),
    BadInput(lambda: _call_with([torch.zeros(1, 2, dtype=torch.float64), torch.zeros(1)]), ValueError, r"params\[0\] \('weight'\).*torch\.float64", "dtype"),
    BadInput(lambda: _call_with([torch.zeros(1, 2, device="meta"), torch.zeros(1)]), ValueError, r"params\[0\] \('weight'\).*on meta", "device"),
    BadInput(lambda: _call_with([torch.zeros(1, 2)]), ValueError, r"params has 1 tensors; expected 2", "too few"),
    BadInput(lambda: _call_with(_weights() + [torch.zeros(1)]), ValueError, r"params has 3 tensors; expected 2", "too many"),
    BadInput(lambda: _call_with(torch.zeros(1, 2)), TypeError, r"params must be a sequence of tensors.*Tensor", "one tensor"),
    BadInput(lambda: _call_with([torch.zeros(1, 2), "b"]), TypeError, r"params\[1\] \('bias'\) must be a tensor.*str", "a string"),
    BadInput(lambda: _call_with([[0.0, 0.0], torch.zeros(1)]), TypeError, r"params\[0\] \('weight'\) must be a tensor.*list", "a list"),
    # update_params / fast_params / attribute assignment: the same checks
    BadInput(lambda: _update([torch.zeros(1, 2), torch.zeros(8, 1)]), ValueError, r"update_params: params\[1\] \('bias'\)", "wrong shape"),
    BadInput(lambda: _update(None), TypeError, r"update_params: params must be a sequence.*NoneType", "None"),
    BadInput(lambda: _set("fast_params", [torch.zeros(1, 2)]), ValueError, r"update_params: params has 1 tensors", "setter"),
    BadInput(lambda: _set("track_higher_grads", "no"), TypeError, r"fmodel\.track_higher_grads must be True or False", "string"),
    BadInput(lambda: _set("training", "no"), TypeError, r"fmodel\.training must be True or False", "string"),
    BadInput(lambda: _fnet().parameters(time=5), ValueError, r"no fast weights for time=5", "time"),
    # copy_to: checked whole before anything is written
    BadInput(lambda: _copy_to(lambda x: x), TypeError, r"copy_to\(module=.*got function", "a function"),
    BadInput(lambda: _copy_to(nn.Linear(3, 1)), ValueError, r"copy_to\(module=.*'weight' of shape \(1, 3\).*Nothing was written", "shapes"),
    BadInput(lambda: _copy_to(nn.Sequential(_net())), ValueError, r"copy_to\(module=.*'0\.weight'.*'weight'", "names"),
    BadInput(lambda: _copy_to(nn.Linear(2, 1, bias=False)), ValueError, r"copy_to\(module=.*1 parameters where.*2", "count"),
    BadInput(lambda: _copy_to(_net(), buffers="yes"), TypeError, r"copy_to\(buffers=", "string flag"),
    BadInput(lambda: _bn_copy_to(nn.BatchNorm1d(2, track_running_stats=False)), ValueError,
             r"copy_to\(module=\.\.\., buffers=True\): buffer 'running_mean'.*missing", "missing buffers"),
    BadInput(lambda: _bn_copy_to(_bn_with_running_mean(torch.zeros(3))), ValueError,
             r"buffers=True\): buffer 'running_mean' of shape \(2,\) is of shape \(3,\)", "buffer shape"),
]


@pytest.mark.parametrize("row", ROWS, ids=[f"{i:02d}-{row.desc}" for i, row in enumerate(ROWS)])
def test_bad_input_is_refused_with_a_message_naming_the_argument(row: BadInput) -> None:
    with pytest.raises(row.error, match=row.regex):
        row.call()


def test_the_table_is_large_enough():
    assert len(ROWS) >= 25


# -- the silent cases: now refused, or behaving as documented -------------------------------------
def test_copy_to_writes_nothing_when_the_buffers_do_not_match():
    source, target = nn.BatchNorm1d(2), nn.BatchNorm1d(2, track_running_stats=False)
    fnet = patch.monkeypatch(source)
    fnet.update_params([torch.full((2,), 5.0), torch.full((2,), 7.0)])
    before = [p.detach().clone() for p in target.parameters()]
    with pytest.raises(ValueError, match="Nothing was written"):
        fnet.copy_to(target, buffers=True)
    assert all(torch.equal(p, b) for p, b in zip(target.parameters(), before))


def test_setting_training_switches_the_copy():
    fnet, x = patch.monkeypatch(nn.Dropout(0.5)), torch.ones(1000)
    fnet.training = False
    assert not fnet.training and not fnet._patched.training
    assert torch.equal(fnet(x), x)  # Dropout no longer drops
    fnet.train()
    assert fnet.training and fnet._patched.training and not torch.equal(fnet(x), x)


def test_track_higher_grads_is_one_public_flag():
    fnet = _fnet(track_higher_grads=False)
    assert fnet.track_higher_grads is False
    fnet.track_higher_grads = True
    assert fnet.track_higher_grads is True


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # torch's own import
def test_a_compiled_model_is_unwrapped_with_a_warning():
    net, x = nn.Linear(2, 1).double(), torch.randn(3, 2, dtype=torch.float64)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    # backend="eager": a compiled module all the same, without starting inductor's pool of compile workers
    compiled = torch.compile(net, backend="eager")
    with pytest.warns(UserWarning, match=r"innerloop_ctx\(model=\.\.\.\) got a torch\.compile'd module.*_orig_mod"):
        with higher.innerloop_ctx(compiled, opt, copy_initial_weights=False) as (fnet, diffopt):
            diffopt.step(fnet(x).pow(2).sum())
            fnet(x).pow(2).sum().backward()
    assert net.weight.grad is not None and net.weight.grad.shape == net.weight.shape


class _Tied(nn.Module):
    """An embedding tied to the output layer, and an LSTM (whose weight cache the copy must own)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(5, 3)
        self.rnn = nn.LSTM(3, 3, batch_first=True)
        self.out = nn.Linear(3, 5)
        self.out.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(self.rnn(self.embed(tokens))[0])


@pytest.mark.parametrize("copy_initial_weights", [True, False])
@pytest.mark.parametrize("make", [lambda: nn.Linear(2, 1).double(), lambda: _Tied().double()], ids=["linear", "tied+lstm"])
def test_a_patched_module_patched_again_runs_on_its_fast_weights(make, copy_initial_weights):
    """``monkeypatch(fnet)``: the same output, starting from fnet's latest fast weights; its own steps
    leave fnet alone, and without copies the meta-gradient reaches fnet's weights."""
    torch.manual_seed(0)
    net = make()
    x = torch.randn(4, 2, dtype=torch.float64) if isinstance(net, nn.Linear) else torch.tensor([[0, 3, 1], [4, 2, 2]])
    fnet = patch.monkeypatch(net)
    fnet.update_params([p * 1.5 for p in fnet.fast_params])  # fast weights that are not the module's
    before = [p.detach().clone() for p in fnet.fast_params]
    again = patch.monkeypatch(fnet, copy_initial_weights=copy_initial_weights)
    output = fnet(x).detach()
    assert torch.equal(again(x), output)
    assert all(torch.equal(a, b) for a, b in zip(again.fast_params, fnet.fast_params))
    assert [n for n, _ in again.named_parameters()] == [n for n, _ in fnet.named_parameters()]
    diffopt = higher.get_diff_optim(torch.optim.SGD(net.parameters(), lr=0.1), net.parameters(), fmodel=again)
    diffopt.step(again(x).pow(2).sum())
    assert not torch.equal(again(x), fnet(x))
    assert all(torch.equal(p, b) for p, b in zip(fnet.fast_params, before))  # fnet is untouched
    assert torch.equal(fnet(x), output)
    grads = torch.autograd.grad(again(x).pow(2).sum(), fnet.fast_params, allow_unused=True)
    assert all((g is not None) == (not copy_initial_weights) for g in grads)
