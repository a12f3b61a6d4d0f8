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


# -- C: diffopt.state in higher's layout (one mapping per param group, keyed by position in the group) --
def _two_groups(net: nn.Linear, **kwargs) -> torch.optim.SGD:
    return torch.optim.SGD([{"params": [net.bias]}, {"params": [net.weight], "lr": 0.05}], lr=0.1, **kwargs)


def test_state_iterates_as_higher_per_group_mappings():
    from itertools import chain

    net, x = _linear(), torch.randn(4, 3, dtype=torch.float64)
    with higher.innerloop_ctx(net, _two_groups(net, momentum=0.9)) as (fnet, diffopt):
        diffopt.step(fnet(x).pow(2).sum())
    # by hand: the first momentum buffer is the gradient (higher and torch), of sum((x W^T + b)^2)
    y = x @ net.weight.detach().T + net.bias.detach()
    grad_w, grad_b = 2 * y.T @ x, 2 * y.sum(0)
    buffers = [s["momentum_buffer"] for s in chain(*(g.values() for g in diffopt.state))]  # higher's idiom
    torch.testing.assert_close([b.detach() for b in buffers], [grad_b, grad_w], rtol=1e-12, atol=0)
    assert len(diffopt.state) == 2 and list(diffopt.state[1]) == [0]  # state[group][position in group]
    assert diffopt.state[1][0] is diffopt.param_state[0]  # the weight: group 1, position 0; global position 0


def test_state_written_through_higher_layout_is_the_optimizers_state():
    net, x = _linear(), torch.randn(4, 3, dtype=torch.float64)
    with higher.innerloop_ctx(net, torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.5)) as (fnet, diffopt):
        diffopt.state[0][1]["momentum_buffer"] = torch.ones(1, dtype=torch.float64)  # higher's defaultdict
        new = diffopt.step(fnet(x).pow(2).sum())
    grad_b = 2 * (x @ net.weight.detach().T + net.bias.detach()).sum(0)
    torch.testing.assert_close(new[1].detach(), net.bias.detach() - 0.1 * (0.5 * 1 + grad_b), rtol=1e-12, atol=0)


def test_contract_style_use_of_state_is_refused_loudly():
    net = _linear()
    diffopt = higher.get_diff_optim(torch.optim.SGD(net.parameters(), lr=0.1), net.parameters())
    with pytest.raises(AttributeError, match=r"diffopt\.state has no values\(\).*param_state"):
        diffopt.state.values()
    with pytest.raises(TypeError, match=r"param_state"):
        0 in diffopt.state  # noqa: B015
    with pytest.raises(KeyError, match=r"positions within the param group.*param_state"):
        diffopt.state[0]["momentum_buffer"]


def test_param_groups_params_are_positions_into_the_fast_weights():
    """A documented difference: ``param_groups[i]['params']`` holds positions; the tensors are one lookup away."""
    net, x = _linear(), torch.randn(4, 3, dtype=torch.float64)
    with higher.innerloop_ctx(net, _two_groups(net)) as (fnet, diffopt):
        diffopt.step(fnet(x).pow(2).sum())
        current = [[fnet.fast_params[i] for i in group["params"]] for group in diffopt.param_groups]
        assert current[0][0] is fnet.fast_params[1] and current[1][0] is fnet.fast_params[0]


# -- D: higher's documented way to add an optimizer: a registered ``_update`` subclass ------------
class _MomentumSGD(torch.optim.SGD):
    """A new reference type, so that the old-style rule is the one registered for it."""


def _old_style_sgd() -> type:
    with pytest.deprecated_call(match=r"_add is deprecated.*update_one"):
        from higher_core.optim import _add
    with pytest.deprecated_call(match=r"_GroupedGradsType is deprecated"):
        from higher_core.optim import _GroupedGradsType

    with pytest.deprecated_call(match=r"overrides higher's _update.*update_one\(group, param, grad, state\)"):
        class OldSGD(higher.optim.DifferentiableOptimizer):  # higher's DifferentiableSGD, as users copied it
            def _update(self, grouped_grads: _GroupedGradsType, **kwargs) -> None:
                for group_idx, (group, grads) in enumerate(zip(self.param_groups, grouped_grads)):
                    for p_idx, (p, g) in enumerate(zip(group["params"], grads)):
                        if g is None:
                            continue
                        if group["weight_decay"] != 0:
                            g = _add(g, group["weight_decay"], p)
                        param_state = self.state[group_idx][p_idx]
                        if "momentum_buffer" not in param_state:
                            buf = param_state["momentum_buffer"] = g
                        else:
                            buf = _add(param_state["momentum_buffer"].mul(group["momentum"]), 1 - group["dampening"], g)
                            param_state["momentum_buffer"] = buf
                        group["params"][p_idx] = _add(p, -group["lr"], buf)
    return OldSGD


def test_a_registered_old_style_subclass_trains_as_computed_by_hand():
    old_sgd = _old_style_sgd()
    higher.register_optim(_MomentumSGD, old_sgd)
    try:
        net, x, lr, momentum = _linear(), torch.randn(4, 3, dtype=torch.float64), 0.1, 0.9
        opt = _MomentumSGD([{"params": [net.weight]}, {"params": [net.bias], "lr": 0.2}], lr=lr, momentum=momentum,
                           dampening=0.1, weight_decay=0.01)
        with higher.innerloop_ctx(net, opt, copy_initial_weights=False) as (fnet, diffopt):
            assert type(diffopt) is old_sgd
            for _ in range(3):
                diffopt.step(fnet(x).pow(2).sum())
            fnet(x).pow(2).sum().backward()
            assert sorted(diffopt.param_state) == [0, 1]
    finally:
        higher.unregister_optim(_MomentumSGD)
    # by hand on leaves: g = grad + wd p; buf = g, then m buf + (1 - d) g; p -= lr buf
    w0, b0 = (p.detach().clone().requires_grad_() for p in (net.weight, net.bias))
    params, lrs, bufs = [w0, b0], [lr, 0.2], [None, None]
    for _ in range(3):
        grads = torch.autograd.grad((x @ params[0].T + params[1]).pow(2).sum(), params, create_graph=True)
        for k in range(2):
            g = grads[k] + 0.01 * params[k]
            bufs[k] = g if bufs[k] is None else momentum * bufs[k] + 0.9 * g
            params[k] = params[k] - lrs[k] * bufs[k]
    torch.testing.assert_close([p.detach() for p in fnet.fast_params], [p.detach() for p in params], rtol=1e-12, atol=0)
    (x @ params[0].T + params[1]).pow(2).sum().backward()
    torch.testing.assert_close([net.weight.grad, net.bias.grad], [w0.grad, b0.grad], rtol=1e-10, atol=0)


def test_a_subclass_that_adds_update_one_is_run_through_it_without_a_warning():
    class Migrated(_old_style_sgd()):
        def update_one(self, group, param, grad, state):
            return param - group["lr"] * grad, state  # ignores weight decay, unlike the old _update

    net, x = _linear(), torch.randn(4, 3, dtype=torch.float64)
    diffopt = Migrated(torch.optim.SGD(net.parameters(), lr=0.1, weight_decay=0.5), net.parameters())
    fast = [p.detach().clone().requires_grad_() for p in net.parameters()]
    new = diffopt.step((x @ fast[0].T + fast[1]).pow(2).sum(), params=fast)
    y = x @ net.weight.detach().T + net.bias.detach()
    torch.testing.assert_close([p.detach() for p in new], [net.weight.detach() - 0.1 * 2 * y.T @ x,
                                                           net.bias.detach() - 0.1 * 2 * y.sum(0)], rtol=1e-12, atol=0)


def test_old_helpers_keep_their_semantics():
    with pytest.deprecated_call(match=r"higher_core\.optim\._add is deprecated"):
        from higher_core.optim import _add
    with pytest.deprecated_call():
        from higher_core.optim import _maybe_mask
    t, u = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 5.0])
    assert torch.equal(_add(t, u), torch.tensor([4.0, 7.0]))  # tensor + other
    assert torch.equal(_add(t, 2.0, u), torch.tensor([7.0, 12.0]))  # tensor + value * other
    leaf = torch.tensor([1.0, 0.0, 2.0], requires_grad=True)
    squared = leaf * leaf
    _maybe_mask(squared, squared == 0)  # higher's Adam: no gradient through exact zeros
    squared.sqrt().sum().backward()
    assert torch.equal(leaf.grad, torch.tensor([1.0, 0.0, 1.0]))  # sqrt(x^2)' = 1 where unmasked


# -- B: ParameterList of betas, per-parameter learned lr in a defaultdict (MAML++) ----------------
def _adam_unroll(betas: nn.ParameterList, x: torch.Tensor) -> torch.Tensor:
    net = _linear()
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    with higher.innerloop_ctx(net, opt, override={"betas": betas}) as (fnet, diffopt):
        for _ in range(2):
            diffopt.step(fnet(x).pow(2).sum())
        return fnet(x).pow(2).sum()


def test_a_parameter_list_of_betas_steps_as_torch_and_learns():
    x = torch.randn(4, 3, dtype=torch.float64)
    net = _linear()
    opt = torch.optim.Adam(net.parameters(), lr=0.1, betas=(0.8, 0.95))
    for _ in range(2):
        opt.zero_grad()
        net(x).pow(2).sum().backward()
        opt.step()
    betas = nn.ParameterList([nn.Parameter(torch.tensor([0.8, 0.95], dtype=torch.float64))])
    meta = _adam_unroll(betas, x)
    torch.testing.assert_close(meta, net(x).pow(2).sum(), rtol=1e-10, atol=0)
    (grad,) = torch.autograd.grad(meta, list(betas))
    h, numeric = 1e-6, []
    for k in range(2):  # central differences, float64
        shift = torch.zeros(2, dtype=torch.float64)
        shift[k] = h
        up, down = (_adam_unroll(nn.ParameterList([nn.Parameter(betas[0].detach() + s)]), x).item()
                    for s in (shift, -shift))
        numeric.append((up - down) / (2 * h))
    assert grad.abs().min() > 0
    torch.testing.assert_close(grad, torch.tensor(numeric, dtype=torch.float64), rtol=1e-5, atol=0)


def test_per_parameter_learned_lr_in_a_defaultdict_as_maml_plus_plus():
    from collections import defaultdict

    net, x = _linear(), torch.randn(4, 3, dtype=torch.float64)
    opt = torch.optim.SGD([{"params": [p]} for p in net.parameters()], lr=0.1)  # one group per parameter
    learned = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (0.05, 0.2)]
    override: defaultdict[str, list] = defaultdict(list)
    for lr in learned:
        override["lr"].append(lr)
    with higher.innerloop_ctx(net, opt, override=override) as (fnet, diffopt):
        for _ in range(2):
            diffopt.step(fnet(x).pow(2).sum())
        meta = fnet(x).pow(2).sum()
    grads = torch.autograd.grad(meta, learned)
    # by hand: p_k <- p_k - lr_k g_k, twice, on leaves
    lrs = [lr.detach().clone().requires_grad_() for lr in learned]
    params = [p.detach().clone() for p in net.parameters()]
    for _ in range(2):
        params = [p.requires_grad_() if p.is_leaf else p for p in params]
        gs = torch.autograd.grad((x @ params[0].T + params[1]).pow(2).sum(), params, create_graph=True)
        params = [p - lr * g for p, lr, g in zip(params, lrs, gs)]
    expected = torch.autograd.grad((x @ params[0].T + params[1]).pow(2).sum(), lrs)
    torch.testing.assert_close(list(grads), list(expected), rtol=1e-10, atol=0)


# -- issue 24: real higher code that must keep running ---------------------------------------------
def _meta_sgd_by_hand(net: nn.Module, lrs: list[torch.Tensor], x: torch.Tensor, steps: int) -> list[torch.Tensor]:
    """p <- p - lr * g element by element, on leaves: the meta-gradient w.r.t. each per-element lr."""
    lrs = [lr.detach().clone().requires_grad_() for lr in lrs]
    params = [p.detach().clone().requires_grad_() for p in net.parameters()]
    for _ in range(steps):
        gs = torch.autograd.grad((x @ params[0].T + params[1]).pow(2).sum(), params, create_graph=True)
        params = [p - lr * g for p, lr, g in zip(params, lrs, gs)]
    return list(torch.autograd.grad((x @ params[0].T + params[1]).pow(2).sum(), lrs))


def test_meta_sgd_learns_one_lr_per_parameter_element():
    """Meta-SGD: a param group per parameter and ``lr_i = init_lr * ones_like(p_i)`` learned, as higher ran it."""
    net, x, init_lr = _linear(), torch.randn(4, 3, dtype=torch.float64), 0.1
    opt = torch.optim.SGD([{"params": [p]} for p in net.parameters()], lr=init_lr)
    lrs = [(init_lr * torch.ones_like(p)).requires_grad_() for p in net.parameters()]
    with higher.innerloop_ctx(net, opt, override={"lr": lrs}) as (fnet, diffopt):
        for _ in range(2):
            diffopt.step(fnet(x).pow(2).sum())
        meta = fnet(x).pow(2).sum()
    grads = torch.autograd.grad(meta, lrs)
    assert all(g.shape == lr.shape and g.abs().min() > 0 for g, lr in zip(grads, lrs))
    torch.testing.assert_close(list(grads), _meta_sgd_by_hand(net, lrs, x, 2), rtol=1e-10, atol=0)


def test_meta_sgd_lrs_in_a_parameter_list_at_every_step():
    """The same with the lrs in an ``nn.ParameterList`` given at each step, and of distinct values."""
    net, x = _linear(), torch.randn(4, 3, dtype=torch.float64)
    opt = torch.optim.SGD([{"params": [p]} for p in net.parameters()], lr=0.1)
    torch.manual_seed(1)
    lrs = nn.ParameterList([nn.Parameter(0.2 * torch.rand_like(p)) for p in net.parameters()])
    with higher.innerloop_ctx(net, opt) as (fnet, diffopt):
        for _ in range(3):
            diffopt.step(fnet(x).pow(2).sum(), override={"lr": lrs})
        meta = fnet(x).pow(2).sum()
    grads = torch.autograd.grad(meta, list(lrs))
    torch.testing.assert_close(list(grads), _meta_sgd_by_hand(net, list(lrs), x, 3), rtol=1e-10, atol=0)


def test_a_hyper_network_drives_a_functional_module_in_test_mode():
    """``make_functional(net)``, ``track_higher_grads = False``, ``f_net(x, params=hypernet(z))``: the loss
    reaches the hyper-network (higher detached in the optimizer's step, never explicit ``params=``)."""
    torch.manual_seed(0)
    net, hyper = nn.Linear(3, 2).double(), nn.Linear(4, 8).double()
    f_net = patch.make_functional(net)
    f_net.track_higher_grads = False
    x = torch.randn(5, 3, dtype=torch.float64)
    for _ in range(2):  # a new set of weights at every call
        z = torch.randn(4, dtype=torch.float64)
        weights = hyper(z)
        loss = f_net(x, params=[weights[:6].view(2, 3), weights[6:]]).pow(2).sum()
        grads = torch.autograd.grad(loss, list(hyper.parameters()), retain_graph=True)
        by_hand = torch.autograd.grad((x @ weights[:6].view(2, 3).T + weights[6:]).pow(2).sum(),
                                      list(hyper.parameters()))
        torch.testing.assert_close(list(grads), list(by_hand), rtol=1e-12, atol=0)


def test_explicit_params_keep_their_graph_in_test_mode_and_the_step_still_detaches():
    """Test mode with monkeypatch: an initial (aliasing) weight passed back through ``params=`` is not cut
    from the model; the optimizer's step then returns detached weights only."""
    net, hyper = _linear(), nn.Linear(2, 3).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    fnet = patch.monkeypatch(net, copy_initial_weights=False, track_higher_grads=False)
    weight = hyper(torch.ones(2, dtype=torch.float64)).view(1, 3)
    loss = fnet(x, params=[weight, fnet.fast_params[1]]).pow(2).sum()
    assert all(g is not None for g in torch.autograd.grad(loss, [*hyper.parameters(), net.bias]))
    diffopt = higher.get_diff_optim(torch.optim.SGD(net.parameters(), lr=0.1), net.parameters(), fmodel=fnet)
    new = diffopt.step(fnet(x).pow(2).sum())
    assert all(p.is_leaf and p.requires_grad for p in new) and fnet.fast_params == new
