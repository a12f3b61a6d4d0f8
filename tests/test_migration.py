"""Migration from ``higher``: the patched module behaves as higher's did (issue 11, items A and F).

Each case states higher's documented behaviour (or computes the expected numbers
by hand with plain tensor operations on leaves) and checks ours against it.
"""

from __future__ import annotations

import tempfile
import threading

import pytest
import torch
from torch import nn

import higher_core as higher
from higher_core import patch


def _linear(seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(3, 1).double()


# -- A: with copy_initial_weights=False the initial fast weights are not the model's leaves ----------
def test_zero_grad_in_the_context_leaves_the_models_gradient_alone():
    net = _linear()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    net.weight.grad = torch.ones_like(net.weight)
    with higher.innerloop_ctx(net, opt, copy_initial_weights=False) as (fnet, _):
        fnet.zero_grad()
        fnet.zero_grad(set_to_none=False)
    assert torch.equal(net.weight.grad, torch.ones_like(net.weight))  # higher: stays ones


def test_meta_gradients_accumulate_over_episodes_despite_zero_grad():
    net, x = _linear(), torch.randn(4, 3, dtype=torch.float64)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)

    def episode(scale: float) -> None:
        with higher.innerloop_ctx(net, opt, copy_initial_weights=False) as (fnet, diffopt):
            fnet.zero_grad()
            diffopt.step(fnet(x).pow(2).sum())
            (scale * fnet(x).pow(2).sum()).backward()

    episode(1.0)
    first = net.weight.grad.clone()
    net.weight.grad = None
    episode(2.0)
    second = net.weight.grad.clone()
    net.weight.grad = None
    episode(1.0)
    episode(2.0)
    torch.testing.assert_close(net.weight.grad, first + second, rtol=1e-12, atol=0)
    torch.testing.assert_close(second, 2 * first, rtol=1e-12, atol=0)


def test_prototype_maml_loss_steps_along_the_fast_weights_path_only():
    """``d.step((f(x) * net(x)).sum())``: the inner gradient is taken w.r.t. the fast weights only."""
    net, x, lr = _linear(), torch.randn(5, 3, dtype=torch.float64), 0.1
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    with higher.innerloop_ctx(net, opt, copy_initial_weights=False) as (fnet, diffopt):
        diffopt.step((fnet(x) * net(x)).sum())
        stepped = [p.detach().clone() for p in fnet.fast_params]
        fnet(x).pow(2).sum().backward()
    # by hand: loss = sum_i f_i * y0_i with y0 = x W0^T + b0 held fixed, so dL/dW = y0^T x, dL/db = sum y0
    w0, b0 = net.weight.detach().clone().requires_grad_(), net.bias.detach().clone().requires_grad_()
    y0 = x @ w0.T + b0
    w1, b1 = w0 - lr * (y0.T @ x), b0 - lr * y0.sum(0)
    torch.testing.assert_close(stepped, [w1.detach(), b1.detach()], rtol=1e-12, atol=0)
    (x @ w1.T + b1).pow(2).sum().backward()  # the meta-gradient goes through both (as in higher)
    torch.testing.assert_close([net.weight.grad, net.bias.grad], [w0.grad, b0.grad], rtol=1e-10, atol=0)


def test_initial_fast_weights_alias_the_parameters_cheaply():
    net = _linear()
    fnet = patch.monkeypatch(net, copy_initial_weights=False)
    for fast, p in zip(fnet.fast_params, net.parameters()):
        assert fast is not p and not fast.is_leaf and fast.data_ptr() == p.data_ptr()  # no copy


def test_test_mode_detaches_a_weight_the_loss_does_not_reach():
    class WithUnused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 1).double()
            self.unused = nn.Parameter(torch.ones(2, dtype=torch.float64))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

    net, x = WithUnused(), torch.randn(4, 3, dtype=torch.float64)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with higher.innerloop_ctx(net, opt, copy_initial_weights=False, track_higher_grads=False) as (fnet, diffopt):
        diffopt.step(fnet(x).pow(2).sum())
        assert all(p.is_leaf and p.requires_grad for p in fnet.fast_params)  # higher: every weight detached
        sum(p.sum() for p in fnet.fast_params).backward()
    assert all(p.grad is None for p in net.parameters())  # nothing reaches the model


# -- F: the patched module shares what it does not need to copy -------------------------------------
class Tempered(nn.Module):
    """A linear layer divided by a learned temperature (a plain tensor attribute), holding a lock and a file."""

    def __init__(self, log) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2).double()
        self.temperature = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
        self.lock = threading.Lock()
        self.log = log
        self.seen: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.lock:
            self.seen.append(len(x))
        return self.fc(x) / self.temperature


def test_a_module_with_a_lock_a_file_and_a_learned_temperature():
    torch.manual_seed(0)
    x, lr = torch.randn(4, 3, dtype=torch.float64), 0.3
    with tempfile.TemporaryFile("w+") as log:
        net = Tempered(log)
        opt = torch.optim.SGD(net.parameters(), lr=lr)
        with higher.innerloop_ctx(net, opt, copy_initial_weights=False) as (fnet, diffopt):
            assert fnet.lock is net.lock and fnet.log is net.log and fnet.seen is net.seen  # shared, as in higher
            for _ in range(2):
                diffopt.step(fnet(x).pow(2).sum())
            fnet(x).pow(2).sum().backward()
        assert net.seen == [4, 4, 4]
    # by hand: two SGD steps on sum((x W^T + b)^2) / T^2, then the same loss; all on leaves
    w0 = net.fc.weight.detach().clone().requires_grad_()
    b0 = net.fc.bias.detach().clone().requires_grad_()
    t = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    w, b = w0, b0
    for _ in range(2):
        gw, gb = torch.autograd.grad(((x @ w.T + b) / t).pow(2).sum(), (w, b), create_graph=True)
        w, b = w - lr * gw, b - lr * gb
    ((x @ w.T + b) / t).pow(2).sum().backward()
    assert net.temperature.grad is not None  # higher: the learned temperature gets its meta-gradient
    torch.testing.assert_close(net.temperature.grad, t.grad, rtol=1e-10, atol=0)
    torch.testing.assert_close([net.fc.weight.grad, net.fc.bias.grad], [w0.grad, b0.grad], rtol=1e-10, atol=0)


def test_buffers_are_per_context():
    net = nn.BatchNorm1d(2).double()
    fnet = patch.monkeypatch(net)
    fnet(torch.randn(4, 2, dtype=torch.float64))
    assert torch.equal(net.running_mean, torch.zeros(2, dtype=torch.float64))
    assert int(net.num_batches_tracked) == 0 and int(fnet.num_batches_tracked) == 1


def test_hooks_are_copied_not_shared():
    net, calls = nn.LSTM(2, 3), []
    net.register_forward_hook(lambda m, a, out: calls.append(1))
    fnet = patch.monkeypatch(net)
    fnet(torch.randn(1, 4, 2))
    assert calls == [1]  # the original's hook fires in the copy
    assert patch._rnn_cudnn_off not in net._forward_pre_hooks.values()  # the copy's own hooks stay there


def test_a_fast_weight_assigned_in_a_copied_rnn_leaves_the_originals_weight_cache_alone():
    torch.manual_seed(0)
    net, x = nn.GRU(2, 3), torch.randn(5, 1, 2)
    before = net(x)[0].detach()
    fnet = patch.monkeypatch(net)
    fnet.weight_hh_l0 = torch.zeros_like(net.weight_hh_l0)
    assert not torch.equal(fnet(x)[0], before)
    assert torch.equal(net(x)[0], before)


@pytest.mark.parametrize("copy_initial_weights", [True, False])
def test_the_original_is_untouched(copy_initial_weights):
    net = Tempered(None)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    fnet = patch.monkeypatch(net, copy_initial_weights=copy_initial_weights)
    fnet.fc.weight = torch.zeros(2, 3, dtype=torch.float64)
    fnet(torch.randn(2, 3, dtype=torch.float64))
    assert type(net.fc.weight) is nn.Parameter and "weight" in net.fc._parameters
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
