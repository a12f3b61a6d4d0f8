"""Flat fast weights (higher_core._flat): same numbers as the per-tensor step, in every situation.

The conformance kit's ``flat_weights`` check compares the two paths on every row
of every element-wise plugin; these tests cover what a table row does not:
gradgradcheck through the flat buffers, layouts that must fall back (mixed
dtypes, distinct scalar state), frozen and unused parameters, the patched
module's history, ``copy_to``/``truncate``/``export_state``, test mode, batched
tasks, the reuse of the buffers from step to step, and rules that break the
element-wise contract.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import higher_core
from higher_core import _stepping
from higher_core.optim import DifferentiableOptimizer


@pytest.fixture(autouse=True)
def _small_groups_lay_out(monkeypatch):
    """The tests' models are small: lay out groups of two tensors or more (the threshold has its own test)."""
    monkeypatch.setattr(_stepping, "MIN_TENSORS", 2)


def _model(dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).to(dtype)


def _loss(fmodel: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return fmodel(x).pow(2).mean() + fmodel(x).sin().sum()


def _one_buffer(tensors: list[torch.Tensor]) -> bool:
    return len({t.untyped_storage().data_ptr() for t in tensors}) == 1


def _unroll(flat: bool, make_opt: Callable[[nn.Module], torch.optim.Optimizer], steps: int = 3,
            model: nn.Module | None = None, **ctx: Any) -> dict[str, Any]:
    """An inner loop with a learned lr; everything the two paths must agree on."""
    model = model if model is not None else _model()
    x = torch.randn(4, 3, dtype=next(model.parameters()).dtype, generator=torch.Generator().manual_seed(1))
    opt = make_opt(model)
    lr = torch.tensor(opt.param_groups[0]["lr"], dtype=torch.float64, requires_grad=True)
    with higher_core.innerloop_ctx(model, opt, copy_initial_weights=False, override={"lr": [lr]}, **ctx) as (
            fmodel, diffopt):
        diffopt.flat_weights = flat
        for _ in range(steps):
            diffopt.step(_loss(fmodel, x))
        meta = torch.autograd.grad(_loss(fmodel, x), [*model.parameters(), lr])
        history = [list(fmodel.parameters(time=t)) for t in range(steps + 1)]
        return {"fmodel": fmodel, "diffopt": diffopt, "meta": meta, "history": history, "opt": opt,
                "model": model}


def _assert_same(flat: dict[str, Any], per_tensor: dict[str, Any]) -> None:
    for ours, theirs in zip(flat["history"], per_tensor["history"]):
        for a, b in zip(ours, theirs):
            assert torch.equal(a, b)
    # autograd adds gradient contributions in the order the graph delivers them, which the
    # flat layout changes: meta-gradients agree to about one unit in the last place
    for a, b in zip(flat["meta"], per_tensor["meta"]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
    ours, theirs = flat["diffopt"].param_state, per_tensor["diffopt"].param_state
    assert sorted(ours) == sorted(theirs)
    for i in theirs:
        assert sorted(ours[i]) == sorted(theirs[i])
        for key, value in theirs[i].items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(ours[i][key], value), (i, key)
            else:
                assert ours[i][key] == value, (i, key)


def adam(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=0.05)


def sgd_momentum(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)


@pytest.mark.parametrize("make_opt", [adam, sgd_momentum])
def test_flat_equals_per_tensor_and_is_laid_out_flat(make_opt):
    flat, per_tensor = _unroll(True, make_opt), _unroll(False, make_opt)
    _assert_same(flat, per_tensor)
    assert _one_buffer(flat["history"][-1]) and not _one_buffer(per_tensor["history"][-1])
    state = flat["diffopt"].param_state
    for key in state[0]:
        if isinstance(state[0][key], torch.Tensor):
            assert _one_buffer([s[key] for s in state.values()]), key


@pytest.mark.parametrize("make_opt", [adam, sgd_momentum])
def test_gradcheck_and_gradgradcheck_through_two_flat_steps(make_opt):
    model = _model()
    x = torch.randn(4, 3, dtype=torch.float64)
    weights = [p.detach().clone().requires_grad_() for p in model.parameters()]
    laid_out = []

    def unrolled(lr: torch.Tensor, *initial: torch.Tensor) -> torch.Tensor:
        opt = make_opt(model)
        fmodel = higher_core.monkeypatch(model)
        diffopt = higher_core.get_diff_optim(opt, model.parameters(), fmodel=fmodel, override={"lr": [lr]})
        fast = list(initial)
        for _ in range(2):
            fast = diffopt.step(fmodel(x, params=fast).pow(2).mean(), params=fast)
        laid_out.append(_one_buffer(fast))
        return fmodel(x, params=fast).pow(3).sum()

    lr = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(unrolled, (lr, *weights))
    assert torch.autograd.gradgradcheck(unrolled, (lr, *weights))
    assert all(laid_out)


def test_mixed_dtypes_in_one_group_fall_back_with_the_same_numbers():
    def mixed() -> nn.Module:
        model = _model()
        model[2].to(torch.float32)
        return model

    class Cast(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = mixed()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net[2](self.net[1](self.net[0](x)).float()).double()

    flat, per_tensor = _unroll(True, adam, model=Cast()), _unroll(False, adam, model=Cast())
    _assert_same(flat, per_tensor)
    assert not _one_buffer(flat["history"][-1][:2])


def test_frozen_and_unused_parameters_keep_their_semantics():
    class Partly(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 3)
            self.unused = nn.Parameter(torch.ones(2))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.c(self.b(self.a(x)))

    def model() -> nn.Module:
        torch.manual_seed(0)
        m = Partly().double()
        m.b.weight.requires_grad_(False)
        return m

    runs = {}
    for flat in (True, False):
        m = model()
        x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        opt = torch.optim.Adam(m.parameters(), lr=0.05)
        with higher_core.innerloop_ctx(m, opt) as (fmodel, diffopt):
            diffopt.flat_weights = flat
            initial = list(fmodel.parameters())
            for _ in range(3):
                diffopt.step(fmodel(x).pow(2).mean())
            runs[flat] = (initial, list(fmodel.parameters()), diffopt.param_state)
    (initial, last, state), (_, reference, reference_state) = runs[True], runs[False]
    names = [n for n, _ in model().named_parameters()]
    frozen, unused = names.index("b.weight"), names.index("unused")
    assert torch.equal(last[frozen], initial[frozen]) and last[unused] is initial[unused]
    assert frozen not in state and unused not in state
    stepping = [i for i in range(len(names)) if i not in (frozen, unused)]
    assert _one_buffer([last[i] for i in stepping])
    for a, b in zip(last, reference):
        assert torch.equal(a, b)
    assert sorted(state) == sorted(reference_state)


@pytest.mark.parametrize("make_opt", [sgd_momentum, adam])
def test_a_parameter_reached_only_later(make_opt):
    """Step 1 lays out the reached weights; step 2 reaches the rest, which have no state yet: per tensor.

    From step 3, SGD's momentum buffers lay out again; Adam's step counts differ
    between the two layers for good (its bias corrections too), so it stays per tensor.
    """
    runs = {}
    for flat in (True, False):
        model = _model()
        x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        with higher_core.innerloop_ctx(model, make_opt(model)) as (fmodel, diffopt):
            diffopt.flat_weights = flat
            first = fmodel[0]
            diffopt.step(first(x).pow(2).mean())  # only the first layer
            after_first = list(fmodel.parameters())
            diffopt.step(fmodel(x).pow(2).mean())
            after_second = list(fmodel.parameters())
            diffopt.step(fmodel(x).pow(2).mean())
            runs[flat] = (after_first, after_second, list(fmodel.parameters()))
    for ours, theirs in zip(runs[True], runs[False]):
        for a, b in zip(ours, theirs):
            assert torch.equal(a, b)
    after_first, after_second, last = runs[True]
    assert _one_buffer(after_first[:2]) and not _one_buffer(after_second)
    assert _one_buffer(last) == (make_opt is sgd_momentum)


class _CountCat(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.cats = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        if func is torch.ops.aten.cat.default:
            self.cats += 1
        return func(*args, **(kwargs or {}))


def test_buffers_are_reused_from_step_to_step_and_laid_out_again_when_replaced():
    model = _model()
    x = torch.randn(4, 3, dtype=torch.float64)
    with higher_core.innerloop_ctx(model, adam(model)) as (fmodel, diffopt):
        diffopt.step(fmodel(x).pow(2).mean())  # lays out weights, gradients; the state starts flat
        counts = []
        for _ in range(2):
            loss = fmodel(x).pow(2).mean()
            with _CountCat() as mode:
                diffopt.step(loss)
            counts.append(mode.cats)
        fmodel[0].bias = fmodel[0].bias * 1.0  # a weight replaced by hand
        loss = fmodel(x).pow(2).mean()
        with _CountCat() as mode:
            diffopt.step(loss)
        counts.append(mode.cats)
        diffopt.truncate()
        loss = fmodel(x).pow(2).mean()
        with _CountCat() as mode:
            diffopt.step(loss)
        counts.append(mode.cats)
        assert sorted(diffopt.param_state[0]) == ["exp_avg", "exp_avg_sq", "step"]  # builds per-tensor views
        loss = fmodel(x).pow(2).mean()
        with _CountCat() as mode:
            diffopt.step(loss)
        counts.append(mode.cats)
        diffopt.param_state[0]["exp_avg"] = diffopt.param_state[0]["exp_avg"] * 1.0  # a state tensor replaced
        loss = fmodel(x).pow(2).mean()
        with _CountCat() as mode:
            diffopt.step(loss)
        counts.append(mode.cats)
    # reused: only the gradients are laid out; a weight replaced: the weights too; truncated: the weights (the
    # flat state is detached where it is); state read: its views are reused; a state tensor replaced: that key
    assert counts == [1, 1, 2, 2, 1, 2]


def test_copy_to_truncate_export_state_and_test_mode_as_per_tensor():
    results = {}
    for flat in (True, False):
        model = _model()
        x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        opt = adam(model)
        with higher_core.innerloop_ctx(model, opt) as (fmodel, diffopt):
            diffopt.flat_weights = flat
            held = diffopt.param_state  # a reference held across steps shows the latest state
            for step in range(4):
                diffopt.step(fmodel(x).pow(2).mean())
                if step == 1:
                    diffopt.truncate()
            assert held[0]["step"] == 4 and held is diffopt.param_state
            fmodel.copy_to(model)
            diffopt.export_state(opt)
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()  # torch continues from the exported state
        with higher_core.innerloop_ctx(model, opt, track_higher_grads=False) as (fmodel, diffopt):
            diffopt.flat_weights = flat
            for _ in range(3):
                weights = diffopt.step(fmodel(x).pow(2).mean())
            assert all(w.is_leaf and w.requires_grad for w in weights)
        results[flat] = [p.detach().clone() for p in model.parameters()] + weights
    for a, b in zip(results[True], results[False]):
        assert torch.equal(a, b)


def test_batched_tasks_lay_out_task_by_element_buffers():
    tasks = 3
    runs = {}
    for flat in (True, False):
        model = _model()
        xs = torch.randn(tasks, 4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        with higher_core.innerloop_ctx(model, adam(model), copy_initial_weights=False, tasks=tasks) as (
                fmodel, diffopt):
            diffopt._rules[0].flat_weights = flat
            for _ in range(3):
                diffopt.step(fmodel(xs).pow(2).mean((1, 2)))
            meta = torch.autograd.grad(fmodel(xs).pow(3).sum(), list(model.parameters()))
            runs[flat] = (list(fmodel.parameters()), meta, diffopt.param_state)
    (weights, meta, state), (ref_weights, ref_meta, ref_state) = runs[True], runs[False]
    assert all(w.shape[0] == tasks for w in weights) and _one_buffer(weights)
    for a, b in zip(weights, ref_weights):
        assert torch.equal(a, b)
    for a, b in zip(meta, ref_meta):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
    for i in ref_state:
        for key, value in ref_state[i].items():
            assert torch.equal(state[i][key], value) if isinstance(value, torch.Tensor) else state[i][key] == value


# A rule written as ``update`` only is deprecated (it has no ``update_one`` to be checked against) and still runs.
with pytest.warns(DeprecationWarning, match=r"implements update\(\) without update_one\(\)"):
    class ListRule(DifferentiableOptimizer):
        """A third-party element-wise rule written as ``update`` (lists) only: SGD."""

        scope = "element"

        def update(self, group, params, grads, states):
            return [p - group["lr"] * g for p, g in zip(params, grads)], states

    class WrongCount(DifferentiableOptimizer):
        """Breaks the contract: declares element scope, returns nothing for the parameters it is given."""

        scope = "element"

        def update(self, group, params, grads, states):
            return [], []


def test_a_rule_written_as_update_runs_flat_and_a_broken_one_is_named():
    model = _model()
    x = torch.randn(4, 3, dtype=torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    fmodel = higher_core.monkeypatch(model)
    diffopt = ListRule(opt, model.parameters(), fmodel=fmodel)
    expected = [p - 0.1 * g for p, g in zip(fmodel.parameters(), torch.autograd.grad(
        fmodel(x).pow(2).mean(), list(fmodel.parameters())))]
    new = diffopt.step(fmodel(x).pow(2).mean())
    assert _one_buffer(new)
    for a, b in zip(new, expected):
        assert torch.equal(a, b)
    broken = WrongCount(opt, model.parameters(), fmodel=higher_core.monkeypatch(model))
    with pytest.raises(TypeError, match="element-wise rule .* must return one new parameter"):
        broken.step(broken._fmodel(x).pow(2).mean())


class DistinctScalars(DifferentiableOptimizer):
    """State with a 0-d tensor per parameter (distinct objects): cannot be laid out, stepped per tensor."""

    scope = "element"

    def init_state(self, param, group):
        return {"scale": torch.tensor(1.0, dtype=param.dtype)}

    def update_one(self, group, param, grad, state):
        return param - group["lr"] * state["scale"] * grad, {"scale": state["scale"] * 0.5}


def test_state_that_cannot_be_laid_out_is_stepped_per_tensor():
    model = _model()
    x = torch.randn(4, 3, dtype=torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    runs = {}
    for flat in (True, False):
        fmodel = higher_core.monkeypatch(model)
        diffopt = DistinctScalars(opt, model.parameters(), fmodel=fmodel)
        diffopt.flat_weights = flat
        diffopt.step(fmodel(x).pow(2).mean())  # from init_state on the flat buffer: one shared scalar
        for i in diffopt.param_state:  # make them distinct objects, as a per-tensor step would
            diffopt.param_state[i] = {"scale": diffopt.param_state[i]["scale"].clone()}
        runs[flat] = diffopt.step(fmodel(x).pow(2).mean())
    assert not _one_buffer(runs[True])
    for a, b in zip(runs[True], runs[False]):
        assert torch.equal(a, b)


def test_every_way_of_reading_the_state_store_sees_the_laid_out_state():
    import copy
    import pickle

    model = _model()
    x = torch.randn(4, 3, dtype=torch.float64)
    # test mode: the state is detached, so deepcopy and pickle can copy its tensors
    with higher_core.innerloop_ctx(model, adam(model), track_higher_grads=False) as (fmodel, diffopt):
        for _ in range(2):
            diffopt.step(fmodel(x).pow(2).mean())
        store = diffopt.param_state
        positions = list(range(4))
        readings = {
            "len": lambda: list(range(len(store))), "iter": lambda: sorted(store), "keys": lambda: sorted(store.keys()),
            "items": lambda: sorted(i for i, _ in store.items()), "dict": lambda: sorted(dict(store)),
            "unpack": lambda: sorted({**store}), "copy": lambda: sorted(store.copy()),
            "deepcopy": lambda: sorted(copy.deepcopy(store)), "pickle": lambda: sorted(pickle.loads(pickle.dumps(store))),
            "get": lambda: [i for i in positions if store.get(i) is not None], "in": lambda: [i for i in positions if i in store],
        }
        for name, read in readings.items():
            diffopt.step(fmodel(x).pow(2).mean())  # lays the state out again
            assert read() == positions, name
        assert store[1]["step"] == 2 + len(readings)
        assert type(copy.deepcopy(store)) is dict


def test_groups_below_the_threshold_are_stepped_per_tensor(monkeypatch):
    monkeypatch.setattr(_stepping, "MIN_TENSORS", 5)
    x = torch.randn(4, 3, dtype=torch.float64)
    for layers, laid_out in ((2, False), (3, True)):  # 4 tensors, then 6
        torch.manual_seed(0)
        model = nn.Sequential(*[nn.Linear(3, 3) for _ in range(layers)]).double()
        with higher_core.innerloop_ctx(model, adam(model)) as (fmodel, diffopt):
            assert _one_buffer(diffopt.step(fmodel(x).pow(2).mean())) == laid_out


def test_a_plain_dict_assigned_to_param_state_is_filled_by_flat_steps():
    runs = {}
    for flat in (True, False):
        model = _model()
        x = torch.randn(4, 3, dtype=torch.float64)
        with higher_core.innerloop_ctx(model, adam(model)) as (fmodel, diffopt):
            diffopt.flat_weights = flat
            diffopt.step(fmodel(x).pow(2).mean())
            diffopt.param_state = dict(diffopt.param_state)  # a plain dict, as a user may assign one
            diffopt.step(fmodel(x).pow(2).mean())
            runs[flat] = (type(diffopt.param_state), diffopt.param_state, list(fmodel.parameters()))
    (kind, state, weights), (_, reference_state, reference) = runs[True], runs[False]
    assert kind is dict and _one_buffer(weights)
    for a, b in zip(weights, reference):
        assert torch.equal(a, b)
    for i, expected in reference_state.items():
        assert state[i]["step"] == expected["step"] == 2
        assert torch.equal(state[i]["exp_avg_sq"], expected["exp_avg_sq"])


class _SameShapes(nn.Module):
    """Three weight matrices of one shape, so that one per-element lr broadcasts to each of them."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.ws = nn.ParameterList([nn.Parameter(torch.randn(4, 3, dtype=torch.float64)) for _ in range(3)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum((x @ w.T).tanh().sum() for w in self.ws)


@pytest.mark.parametrize("shape", [(4, 3), (3,), (1, 3), (1, 1)])
@pytest.mark.parametrize("make_opt", [lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9), adam],
                         ids=["sgd", "adam"])
def test_a_per_element_lr_steps_the_group_per_tensor_with_the_same_numbers(shape, make_opt):
    """An lr shaped for each parameter (not for the flat buffer): the group is stepped per tensor, with the
    numbers of flat_weights=False (a (1, 1) lr made the flat buffer (1, N) before)."""
    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    lr0 = 0.02 + 0.1 * torch.rand(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    runs = {}
    for flat in (True, False):
        model = _SameShapes()
        lr = lr0.clone().requires_grad_()
        with higher_core.innerloop_ctx(model, make_opt(model), override={"lr": [lr]}) as (fmodel, diffopt):
            diffopt.flat_weights = flat
            for _ in range(3):
                diffopt.step(fmodel(x))
            runs[flat] = (list(fmodel.fast_params), torch.autograd.grad(fmodel(x), lr)[0], diffopt._stepper.flat_groups)
    (weights, meta, layouts), (reference, reference_meta, _) = runs[True], runs[False]
    assert not layouts  # nothing was laid out
    assert all(torch.equal(a, b) for a, b in zip(weights, reference))
    assert torch.equal(meta, reference_meta)
