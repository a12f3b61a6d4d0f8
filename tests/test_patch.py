"""Stateless patching: fast weights, buffers, history, devices."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import higher_core
from higher_core.patch import PatchedModule, buffer_sync, make_functional, monkeypatch


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)).double()


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _assert_unchanged(module, snapshot):
    for key, value in module.state_dict().items():
        assert torch.equal(value, snapshot[key]), f"{key} of the original module changed"


def test_outputs_equal_the_original_for_the_same_weights():
    net = _net().eval()
    fnet = monkeypatch(net)
    x = torch.randn(5, 3, dtype=torch.float64)
    torch.testing.assert_close(fnet(x), net(x), rtol=0, atol=0)
    assert isinstance(fnet, PatchedModule) and isinstance(fnet, higher_core.patch._MonkeyPatchBase)


def test_inner_loop_never_changes_the_original_module():
    net = _net().train()
    before = _snapshot(net)
    opt = torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9)
    x = torch.randn(8, 3, dtype=torch.float64)
    with higher_core.innerloop_ctx(net, opt, copy_initial_weights=False) as (fnet, diffopt):
        for _ in range(3):
            diffopt.step(fnet(x).pow(2).sum())
        fnet(x).pow(2).sum().backward()
        assert not torch.equal(fnet.fast_params[0], net[0].weight)
        # running statistics moved on the patched copy only
        assert not torch.equal(fnet[1].running_mean, before["1.running_mean"])
        assert fnet[1].num_batches_tracked.item() == 4
    _assert_unchanged(net, before)
    assert net[0].weight.grad is not None  # MAML: meta-gradients reach the module
    assert not opt.state  # the torch optimizer's state is untouched


def test_children_and_buffers_are_reachable_as_attributes():
    net = _net()
    fnet = monkeypatch(net)
    assert fnet[1].running_mean is not net[1].running_mean
    torch.testing.assert_close(fnet[1].running_mean, net[1].running_mean)
    named = nn.Module()
    named.bn = nn.BatchNorm1d(2)
    assert monkeypatch(named).bn.running_mean is not named.bn.running_mean


def test_train_and_eval_switch_the_patched_module_only():
    net = _net().train()
    fnet = monkeypatch(net)
    fnet.eval()
    assert not fnet.training and not fnet[1].training
    assert net.training and net[1].training
    fnet.train()
    assert fnet[1].training


def test_fast_weight_history_and_time():
    net = nn.Linear(2, 1).double()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x = torch.randn(4, 2, dtype=torch.float64)
    with higher_core.innerloop_ctx(net, opt) as (fnet, diffopt):
        initial = list(fnet.parameters())
        steps = [diffopt.step(fnet(x).pow(2).sum()) for _ in range(3)]
        assert list(fnet.parameters(time=0)) == initial
        for t, weights in enumerate(steps, start=1):
            assert all(a is b for a, b in zip(fnet.parameters(time=t), weights))
        assert all(a is b for a, b in zip(fnet.parameters(), steps[-1]))
        assert all(a is b for a, b in zip(fnet.fast_params, steps[-1]))
        assert all(a is b for a, b in zip(fnet.init_fast_params, initial))
        with pytest.raises(ValueError, match="no fast weights for time=7"):
            fnet.parameters(time=7)


def test_copy_initial_weights():
    net = nn.Linear(2, 1)
    copied = monkeypatch(net, copy_initial_weights=True)
    assert all(f is not p and f.is_leaf and torch.equal(f, p) for f, p in zip(copied.fast_params, net.parameters()))
    shared = monkeypatch(net, copy_initial_weights=False)
    # non-leaf aliases of the parameters (higher: clones): same memory, gradients reach the parameters
    assert all(f is not p and not f.is_leaf and f.data_ptr() == p.data_ptr()
               for f, p in zip(shared.fast_params, net.parameters()))
    shared(torch.ones(1, 2)).sum().backward()
    assert torch.equal(net.weight.grad, torch.ones(1, 2)) and torch.equal(net.bias.grad, torch.ones(1))


def test_test_mode_keeps_only_the_latest_weights_and_no_graph():
    net = nn.Linear(2, 1).double()
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    x = torch.randn(4, 2, dtype=torch.float64)
    with higher_core.innerloop_ctx(net, opt, track_higher_grads=False) as (fnet, diffopt):
        for _ in range(3):
            weights = diffopt.step(fnet(x).pow(2).sum())
        assert all(w.is_leaf and w.requires_grad for w in weights)
        assert all(s["exp_avg"].grad_fn is None for s in diffopt.param_state.values())
        assert len(fnet._fast_params) == 1
        with pytest.raises(ValueError, match="keeps only the latest"):
            fnet.parameters(time=1)
    assert net.weight.grad is None


def test_calling_with_params_makes_them_the_latest():
    net = nn.Linear(2, 1).double()
    fnet = monkeypatch(net)
    x = torch.randn(3, 2, dtype=torch.float64)
    new = [torch.zeros_like(p, requires_grad=True) for p in net.parameters()]
    assert torch.equal(fnet(x, params=new), torch.zeros(3, 1, dtype=torch.float64))
    assert fnet.fast_params is not None and all(a is b for a, b in zip(fnet.fast_params, new))
    fnet(x, params=new)
    assert len(fnet._fast_params) == 2  # the same weights again are not appended twice
    with pytest.raises(ValueError, match="expected 2 fast weights"):
        fnet(x, params=new[:1])


def test_make_functional_needs_params_and_runs_the_encapsulator():
    net = nn.Linear(2, 2)
    fnet = make_functional(net)
    with pytest.raises(ValueError, match="no fast weights yet"):
        fnet(torch.ones(1, 2))
    weights = [p.detach().clone() for p in net.parameters()]
    torch.testing.assert_close(fnet(torch.ones(1, 2), params=weights), net(torch.ones(1, 2)))
    seen = []
    make_functional(net, encapsulator=lambda f, m: seen.append((type(f), m)))
    assert seen == [(PatchedModule, net)]


def test_buffer_sync_copies_the_buffers():
    net = _net()
    fnet = monkeypatch(net)
    with torch.no_grad():
        net[1].running_mean.fill_(3.0)
    buffer_sync(net, fnet)
    assert torch.equal(fnet[1].running_mean, net[1].running_mean)
    assert fnet[1].running_mean is not net[1].running_mean


def test_device_is_honoured_for_weights_and_buffers():
    net = _net()
    fnet = monkeypatch(net, device="meta")
    assert all(p.device.type == "meta" for p in fnet.fast_params)
    assert fnet[1].running_mean.device.type == "meta"
    assert net[1].running_mean.device.type == "cpu"
    assert fnet(torch.empty(5, 3, dtype=torch.float64, device="meta")).device.type == "meta"


def test_frozen_parameters_stay_frozen():
    net = nn.Linear(2, 2).double()
    net.bias.requires_grad_(False)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with higher_core.innerloop_ctx(net, opt) as (fnet, diffopt):
        assert not fnet.fast_params[1].requires_grad
        new = diffopt.step(fnet(torch.ones(1, 2, dtype=torch.float64)).sum())
        assert torch.equal(new[1], net.bias)


def test_tied_weights_are_one_fast_weight():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.encode = nn.Linear(3, 3, bias=False)
            self.decode = nn.Linear(3, 3, bias=False)
            self.decode.weight = self.encode.weight

        def forward(self, x):
            return self.decode(self.encode(x))

    net = Tied().double()
    fnet = monkeypatch(net)
    assert len(fnet.fast_params) == 1
    w = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 3, dtype=torch.float64)
    torch.testing.assert_close(fnet(x, params=[w]), x @ w.t() @ w.t())
    assert fnet.encode.weight is w and fnet.decode.weight is w


def test_recurrent_modules_use_the_fast_weights():
    lstm = nn.LSTM(3, 4, num_layers=2, batch_first=True).double()
    flstm = monkeypatch(lstm)
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    doubled = [2 * p for p in flstm.fast_params]
    out, _ = flstm(x, params=doubled)
    expected, _ = torch.func.functional_call(lstm, dict(zip(dict(lstm.named_parameters()), doubled)), (x,))
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_get_func_params_and_flatten():
    net = nn.Linear(2, 1)
    copies = higher_core.utils.get_func_params(net)
    assert all(c.is_leaf and c.requires_grad and c is not p for c, p in zip(copies, net.parameters()))
    assert all(c.data_ptr() != p.data_ptr() for c, p in zip(copies, net.parameters()))
    assert higher_core.utils.flatten({"a": [1, (2, {3})], "b": {"c": 4}}) == [1, 2, 3, 4]


# -- a stand-in for the original ------------------------------------------------------------
class _TiedPair(nn.Module):
    def __init__(self):
        super().__init__()
        self.encode = nn.Linear(3, 3, bias=False)
        self.decode = nn.Linear(3, 3, bias=False)
        self.decode.weight = self.encode.weight

    def forward(self, x):
        return self.decode(torch.tanh(self.encode(x)))


def test_no_class_is_created_per_submodule():
    net = _net()
    fnet = monkeypatch(net)
    assert type(fnet) is PatchedModule
    assert [type(m) for m in fnet.children()] == [type(m) for m in net.children()]
    assert "weight" not in fnet[0]._parameters and fnet[0].weight is fnet.fast_params[0]


def test_child_calls_use_the_current_fast_weights():
    net = _net().eval()
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    x = torch.randn(5, 3, dtype=torch.float64)
    with higher_core.innerloop_ctx(net, opt) as (fnet, diffopt):
        diffopt.step(fnet(x).pow(2).sum())
        w, b = fnet.fast_params[:2]
        torch.testing.assert_close(fnet[0](x), torch.nn.functional.linear(x, w, b), rtol=0, atol=0)
        assert not torch.equal(fnet[0](x), net[0](x))


def test_train_and_eval_leave_the_original_alone_at_every_depth():
    net = nn.Sequential(nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5)), nn.BatchNorm1d(2))
    fnet = monkeypatch(net).eval()
    assert not any(m.training for m in fnet.modules()) and all(m.training for m in net.modules())
    fnet.train()
    net.eval()
    assert all(m.training for m in fnet.modules()) and not any(m.training for m in net.modules())


def test_assigning_a_fast_weight_by_attribute_takes_effect_and_is_tracked():
    net = _net().eval()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x = torch.randn(5, 3, dtype=torch.float64)
    with higher_core.innerloop_ctx(net, opt) as (fnet, diffopt):
        diffopt.step(fnet(x).pow(2).sum())
        t = torch.ones(4, 3, dtype=torch.float64, requires_grad=True)
        fnet[0].weight = t
        assert fnet[0].weight is t
        torch.testing.assert_close(fnet[0](x), x @ t.T + fnet.fast_params[1], rtol=0, atol=0)
        assert fnet.fast_params[0] is t and next(fnet.parameters(time=2)) is t  # appended to the history
        new = diffopt.step(fnet(x).pow(2).sum())  # the step starts from t
        assert torch.autograd.grad(fnet(x, params=new).sum(), t)[0].abs().sum() > 0
        # the top level, an nn.Parameter, and a weight restored by functional_call
        fnet.fast_params = new
        p = nn.Parameter(torch.zeros(2, dtype=torch.float64))
        fnet[3].bias = p
        assert fnet.fast_params[-1] is p and "bias" not in fnet[3]._parameters
        fnet[3].bias = torch.ones(2, dtype=torch.float64)  # a plain tensor may follow a Parameter
        assert torch.equal(fnet.fast_params[-1], torch.ones(2, dtype=torch.float64))
    flin = monkeypatch(nn.Linear(2, 1))
    flin.weight = torch.zeros(1, 2)
    assert flin.weight is flin.fast_params[0] and flin._patched.weight is flin.weight


def test_assigning_a_tied_weight_reties_it():
    fnet = monkeypatch(_TiedPair().double())
    t = torch.eye(3, dtype=torch.float64, requires_grad=True)
    fnet.decode.weight = t
    x = torch.randn(2, 3, dtype=torch.float64)
    torch.testing.assert_close(fnet(x), torch.tanh(x), rtol=0, atol=0)  # re-tied at the call
    assert fnet.encode.weight is t and fnet.fast_params == [t]
    fnet.encode.weight, fnet.decode.weight = t * 2, t * 3
    with pytest.raises(ValueError, match=r"tied fast weights \['encode.weight', 'decode.weight'\]"):
        fnet(x)


def test_assigning_something_else_than_a_tensor_is_an_error():
    fnet = monkeypatch(nn.Linear(2, 1))
    fnet.bias = None
    with pytest.raises(TypeError, match="the fast weight 'bias' is now NoneType; assign a tensor"):
        _ = fnet.fast_params


def test_named_parameters_and_state_dict_are_the_originals_with_fast_weights():
    net = _TiedPair().double()
    fnet = monkeypatch(nn.Sequential(net, nn.BatchNorm1d(3)))
    fnet.update_params([2 * p for p in fnet.fast_params])
    assert [n for n, _ in fnet.named_parameters()] == ["0.encode.weight", "1.weight", "1.bias"]
    assert [n for n, _ in fnet.named_parameters(remove_duplicate=False)][:2] == ["0.encode.weight", "0.decode.weight"]
    state = fnet.state_dict()
    reference = nn.Sequential(_TiedPair(), nn.BatchNorm1d(3)).state_dict()
    assert list(state) == list(reference)
    torch.testing.assert_close(state["0.decode.weight"], 2 * net.encode.weight.detach())
    assert state["0.encode.weight"].grad_fn is None and fnet[0].encode.weight.grad_fn is not None
    assert "weight" not in fnet[0].encode._parameters  # put back as an attribute


def test_functional_call_with_parameters_leaves_the_fast_weights_alone():
    net = nn.Linear(2, 2).double()
    fnet = monkeypatch(net, copy_initial_weights=False)  # the fast weights alias the nn.Parameters
    before = fnet.fast_params
    x = torch.randn(3, 2, dtype=torch.float64)
    doubled = {name: nn.Parameter(2 * p.detach()) for name, p in net.named_parameters()}
    got = torch.func.functional_call(fnet, doubled, (x,))
    torch.testing.assert_close(got, torch.func.functional_call(net, doubled, (x,)), rtol=0, atol=0)
    torch.func.functional_call(fnet, dict(net.named_parameters()), (x,))
    assert all(a is b for a, b in zip(fnet.fast_params, before)) and len(fnet._fast_params) == 1
    torch.testing.assert_close(fnet(x), net(x), rtol=0, atol=0)


def test_a_deep_copy_starts_its_history_from_detached_weights():
    net = _net().eval()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x = torch.randn(5, 3, dtype=torch.float64)
    net[0].bias.requires_grad_(False)  # frozen before the context copies the flags (as higher's clones)
    with higher_core.innerloop_ctx(net, opt, copy_initial_weights=False) as (fnet, diffopt):
        diffopt.step(fnet(x).pow(2).sum())
        clone = copy.deepcopy(fnet)
    assert len(clone._fast_params) == 1 and clone.track_higher_grads
    assert [p.requires_grad for p in clone.fast_params] == [True, False, True, True, True, True]
    assert all(p.is_leaf and type(p) is torch.Tensor for p in clone.fast_params)
    clone.update_params([p + 1 for p in clone.fast_params])  # and it runs its own inner loop
    assert not torch.equal(clone(x), fnet(x))
    empty = copy.deepcopy(make_functional(nn.Linear(2, 1)))
    assert empty.fast_params is None
