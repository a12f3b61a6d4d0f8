"""A meta-batch of tasks in one pass (``tasks=T``) equals one inner loop per task (float64)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.functional import mse_loss

import higher_core
from higher_core._optimizer import DifferentiableOptimizer
from higher_core.compat import optimizer_available
from higher_core.batched import BatchingError, _matmul
from higher_core.testing import NotApplicable, check_batched, installed_conformance

DT = torch.float64
T = 4
STEPS = 3
RTOL, ATOL = 1e-10, 1e-12

_INFOS = installed_conformance()


def _own_step(info) -> bool:
    from higher_core._registry import resolve

    return resolve(info.reference).step is not DifferentiableOptimizer.step


_OWN_STEP = [info for info in _INFOS if _own_step(info)]


# Every row of every installed plugin's table runs T tasks at once against T inner loops (fast weights,
# state, meta-gradients w.r.t. the initial weights and a learned lr, shared and per task) as the kit's
# ``batched`` check, in tests/test_conformance.py.
@pytest.mark.parametrize("info", _OWN_STEP, ids=[info.name for info in _OWN_STEP])
def test_a_rule_with_its_own_step_is_not_batched_with_the_reason(info):
    """A rule with its own step (LBFGS's closure) is refused ``tasks=``: the kit's check does not apply, says why."""
    with pytest.raises(NotApplicable, match="cannot be batched"):
        check_batched(info, info.inputs[0], tasks=T)


def _mlp(unused: bool = False) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 6), nn.Tanh(), nn.Linear(6, 1)).double()
    if unused:
        net.register_parameter("unused", nn.Parameter(torch.randn(3, dtype=DT)))
    return net


def _tasks(n: int = T, points: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, points, 2, generator=g, dtype=DT)
    return x, (x * torch.arange(1, n + 1, dtype=DT).view(n, 1, 1)).sin().sum(-1, keepdim=True)


def _per_task_losses(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (out - y).pow(2).mean(dim=tuple(range(1, out.dim())))


def _loop(model, make_opt, x, y, lrs=None, steps=STEPS):
    """One inner loop per task (the reference): fast weights, states and the summed query loss."""
    fasts, states, total = [], [], 0
    for t in range(x.shape[0]):
        override = None if lrs is None else {"lr": [lrs[t]]}
        with higher_core.innerloop_ctx(model, make_opt(model), copy_initial_weights=False,
                                       override=override) as (fmodel, diffopt):
            for _ in range(steps):
                diffopt.step(mse_loss(fmodel(x[t]), y[t]))
            total = total + mse_loss(fmodel(x[t]), y[t])
            fasts.append(fmodel.fast_params)
            states.append(diffopt.param_state)
    return fasts, states, total


def _batched(model, make_opt, x, y, lr=None, steps=STEPS):
    with higher_core.innerloop_ctx(model, make_opt(model), copy_initial_weights=False, tasks=x.shape[0],
                                   override=None if lr is None else {"lr": [lr]}) as (fmodel, diffopt):
        for _ in range(steps):
            diffopt.step(_per_task_losses(fmodel(x), y))
        return fmodel, diffopt, _per_task_losses(fmodel(x), y).sum()


def _assert_same(fmodel, diffopt, fasts, states):
    for t, (fast, state) in enumerate(zip(fasts, states)):
        for ours, theirs in zip(fmodel.fast_params, fast):
            torch.testing.assert_close(ours[t], theirs, rtol=RTOL, atol=ATOL)
        ours_state = diffopt.state_of_task(t)
        assert sorted(ours_state) == sorted(state)
        for i in state:
            for key, value in state[i].items():
                if isinstance(value, torch.Tensor):
                    torch.testing.assert_close(ours_state[i][key], value, rtol=RTOL, atol=ATOL)
                else:
                    assert ours_state[i][key] == value, key


OPTIMIZERS = {
    "sgd-momentum-nesterov": lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, nesterov=True),
    "adam-amsgrad-weight_decay": lambda m: torch.optim.Adam(m.parameters(), lr=0.05, amsgrad=True,
                                                            weight_decay=0.1),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_maml_equals_per_task_loop(name):
    """Fast weights, state and meta-gradients (initial weights and a learned lr) of an MLP's meta-batch."""
    make_opt = OPTIMIZERS[name]
    model = _mlp()
    x, y = _tasks()
    lr = torch.tensor(make_opt(model).defaults["lr"], dtype=DT, requires_grad=True)
    fasts, states, total = _loop(model, make_opt, x, y, lrs=[lr] * T)
    expected = torch.autograd.grad(total, [*model.parameters(), lr])
    fmodel, diffopt, batched_total = _batched(model, make_opt, x, y, lr=lr)
    _assert_same(fmodel, diffopt, fasts, states)
    got = torch.autograd.grad(batched_total, [*model.parameters(), lr])
    for ours, theirs in zip(got, expected):
        torch.testing.assert_close(ours, theirs, rtol=RTOL, atol=ATOL)
    assert diffopt.scope == "element"


@pytest.mark.parametrize("learned", [False, True], ids=["fixed", "learned"])
def test_per_task_lr_override(learned):
    """An lr of shape [T] gives task t its own step size (and, learned, its own hypergradient)."""
    make_opt = OPTIMIZERS["sgd-momentum-nesterov"]
    model = _mlp()
    x, y = _tasks()
    lrs = torch.tensor([0.05, 0.1, 0.2, 0.3], dtype=DT, requires_grad=learned)
    fasts, states, total = _loop(model, make_opt, x, y, lrs=list(lrs.unbind()))
    fmodel, diffopt, batched_total = _batched(model, make_opt, x, y, lr=lrs)
    _assert_same(fmodel, diffopt, fasts, states)
    if learned:
        torch.testing.assert_close(torch.autograd.grad(batched_total, lrs)[0],
                                   torch.autograd.grad(total, lrs)[0], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_per_element_lrs_meta_sgd_equal_per_task_loops(name):
    """Meta-SGD with tasks=: one learned lr per parameter element (a param group per parameter) gives each
    task the fast weights and state of its own inner loop, and the summed meta-gradient w.r.t. the lrs."""
    model = _mlp()
    x, y = _tasks()
    opt_type = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}[name]
    make_opt = lambda m: opt_type([{"params": [p]} for p in m.parameters()], lr=0.1)  # noqa: E731
    torch.manual_seed(2)
    lrs = [(0.1 * torch.rand_like(p)).requires_grad_() for p in model.parameters()]
    fasts, states, total = [], [], 0
    for t in range(T):
        with higher_core.innerloop_ctx(model, make_opt(model), copy_initial_weights=False,
                                       override={"lr": lrs}) as (fmodel, diffopt):
            for _ in range(STEPS):
                diffopt.step(mse_loss(fmodel(x[t]), y[t]))
            total = total + mse_loss(fmodel(x[t]), y[t])
            fasts.append(fmodel.fast_params)
            states.append(diffopt.param_state)
    with higher_core.innerloop_ctx(model, make_opt(model), copy_initial_weights=False, tasks=T,
                                   override={"lr": lrs}) as (fmodel, diffopt):
        for _ in range(STEPS):
            diffopt.step(_per_task_losses(fmodel(x), y))
        batched_total = _per_task_losses(fmodel(x), y).sum()
    _assert_same(fmodel, diffopt, fasts, states)
    for ours, theirs in zip(torch.autograd.grad(batched_total, [*model.parameters(), *lrs]),
                            torch.autograd.grad(total, [*model.parameters(), *lrs])):
        torch.testing.assert_close(ours, theirs, rtol=RTOL, atol=ATOL)


def test_per_task_override_at_a_step_and_bad_shapes():
    model = _mlp()
    x, y = _tasks()
    with higher_core.innerloop_ctx(model, OPTIMIZERS["sgd-momentum-nesterov"](model), tasks=T) as (fmodel, diffopt):
        diffopt.step(_per_task_losses(fmodel(x), y), override={"lr": [torch.zeros(T, dtype=DT)]})
        for ours, initial in zip(fmodel.fast_params, fmodel.parameters(time=0)):
            assert torch.equal(ours, initial)  # lr 0 for every task: nothing moved
        with pytest.raises(ValueError, match=r"lr"):
            diffopt.step(_per_task_losses(fmodel(x), y), override={"lr": [torch.full((T,), -1.0, dtype=DT)]})
        with pytest.raises(ValueError, match=r"shape"):
            diffopt.step(_per_task_losses(fmodel(x), y), override={"lr": [torch.ones(T + 1, dtype=DT)]})


def test_batchnorm_keeps_per_task_running_statistics():
    """BatchNorm in training mode: outputs, T sets of running statistics and meta-gradients as per task."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 1)).double()
    make_opt = OPTIMIZERS["adam-amsgrad-weight_decay"]
    x, y = _tasks(points=6)
    fasts, states, total = [], [], 0
    buffers = []
    for t in range(T):
        with higher_core.innerloop_ctx(model, make_opt(model), copy_initial_weights=False) as (fmodel, diffopt):
            for _ in range(STEPS):
                diffopt.step(mse_loss(fmodel(x[t]), y[t]))
            total = total + mse_loss(fmodel(x[t]), y[t])
            fasts.append(fmodel.fast_params)
            states.append(diffopt.param_state)
            buffers.append(dict(fmodel.named_buffers()))
    fmodel, diffopt, batched_total = _batched(model, make_opt, x, y)
    assert fmodel.batching == "vmap"
    _assert_same(fmodel, diffopt, fasts, states)
    for name, stacked in fmodel.named_buffers():
        for t in range(T):
            torch.testing.assert_close(stacked[t], buffers[t][name], rtol=RTOL, atol=ATOL)
    for ours, theirs in zip(torch.autograd.grad(batched_total, list(model.parameters())),
                            torch.autograd.grad(total, list(model.parameters()))):
        torch.testing.assert_close(ours, theirs, rtol=RTOL, atol=ATOL)
    assert torch.equal(model[1].running_mean, torch.zeros(4, dtype=DT))  # the original is untouched


def test_unused_parameter_stays_and_gets_no_meta_gradient():
    model = _mlp(unused=True)
    make_opt = OPTIMIZERS["adam-amsgrad-weight_decay"]
    x, y = _tasks()
    fasts, states, total = _loop(model, make_opt, x, y)
    fmodel, diffopt, batched_total = _batched(model, make_opt, x, y)
    _assert_same(fmodel, diffopt, fasts, states)
    unused = [name for name, _ in model.named_parameters()].index("unused")
    assert fmodel.fast_params[unused] is list(fmodel.parameters(time=0))[unused]
    assert unused not in diffopt.param_state
    got = torch.autograd.grad(batched_total, list(model.parameters()), allow_unused=True)
    expected = torch.autograd.grad(total, list(model.parameters()), allow_unused=True)
    assert got[unused] is None and expected[unused] is None
    for k, (ours, theirs) in enumerate(zip(got, expected)):
        if k != unused:
            torch.testing.assert_close(ours, theirs, rtol=RTOL, atol=ATOL)


def test_gradcheck_two_step_batched_unroll():
    """gradcheck and gradgradcheck of the summed query loss after 2 batched Adam steps w.r.t. the initial weights."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)).double()
    x, y = _tasks(n=2, points=3)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)

    def unrolled(*initial):
        diffopt = higher_core.get_diff_optim(opt, model.parameters(), tasks=2)
        fmodel = higher_core.monkeypatch(model, tasks=2)
        fast = [p.expand(2, *p.shape) for p in initial]
        for _ in range(2):
            fast = diffopt.step(_per_task_losses(fmodel(x, params=fast), y), params=fast)
        return _per_task_losses(fmodel(x, params=fast), y).sum()

    inputs = tuple(p.detach().clone().requires_grad_() for p in model.parameters())
    assert torch.autograd.gradcheck(unrolled, inputs)
    assert torch.autograd.gradgradcheck(unrolled, inputs)


class _DataDependent(nn.Module):
    """A forward with a data-dependent branch, which vmap cannot batch."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 1).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.lin(x)
        return out * 2 if out.sum() > 0 else out


def test_unbatchable_module_falls_back_to_a_loop_with_the_same_numbers():
    torch.manual_seed(0)
    model = _DataDependent()
    make_opt = OPTIMIZERS["sgd-momentum-nesterov"]
    x, y = _tasks()
    fasts, states, total = _loop(model, make_opt, x, y)
    fmodel, diffopt, batched_total = _batched(model, make_opt, x, y)
    assert fmodel.batching == "loop" and "RuntimeError" in fmodel.fallback_reason
    _assert_same(fmodel, diffopt, fasts, states)
    for ours, theirs in zip(torch.autograd.grad(batched_total, list(model.parameters())),
                            torch.autograd.grad(total, list(model.parameters()))):
        torch.testing.assert_close(ours, theirs, rtol=RTOL, atol=ATOL)


@pytest.mark.skipif(not optimizer_available("Adafactor"), reason="torch.optim.Adafactor needs torch >= 2.5")
def test_tensor_scope_rules_step_each_task_alone():
    """Adafactor reduces over whole tensors: each task is stepped by its own copy of the rule."""
    model = _mlp()
    make_opt = lambda m: torch.optim.Adafactor(m.parameters(), lr=0.05)  # noqa: E731
    x, y = _tasks()
    fasts, states, total = _loop(model, make_opt, x, y)
    fmodel, diffopt, batched_total = _batched(model, make_opt, x, y)
    assert diffopt.scope == "tensor"
    _assert_same(fmodel, diffopt, fasts, states)
    assert diffopt.param_state[0]["row_var"].shape[0] == T


def test_history_test_mode_truncate_copy_to_and_export_state():
    model = _mlp()
    opt = OPTIMIZERS["adam-amsgrad-weight_decay"](model)
    x, y = _tasks()
    with higher_core.innerloop_ctx(model, opt, tasks=T) as (fmodel, diffopt):
        for _ in range(2):
            diffopt.step(_per_task_losses(fmodel(x), y))
        assert len([list(fmodel.parameters(time=k)) for k in range(3)]) == 3
        diffopt.truncate()
        assert all(p.is_leaf for p in fmodel.fast_params)
        assert all(not v.requires_grad for s in diffopt.param_state.values() for v in s.values()
                   if isinstance(v, torch.Tensor))
        with pytest.raises(ValueError, match="task="):
            fmodel.copy_to(model)
        with pytest.raises(ValueError, match="task="):
            diffopt.export_state(opt)
        fmodel.copy_to(model, task=2)
        diffopt.export_state(opt, task=2)
        assert torch.equal(model[0].weight, fmodel.fast_params[0][2])
        assert torch.equal(opt.state[model[0].weight]["exp_avg"], diffopt.param_state[0]["exp_avg"][2])
        assert float(opt.state[model[0].weight]["step"]) == 2.0
    with higher_core.innerloop_ctx(model, opt, tasks=T, track_higher_grads=False) as (fmodel, diffopt):
        for _ in range(2):
            diffopt.step(_per_task_losses(fmodel(x), y))
        assert not any(p.requires_grad and not p.is_leaf for p in fmodel.fast_params)
        with pytest.raises(ValueError, match="track_higher_grads=False keeps only the latest"):
            fmodel.parameters(time=1)


def test_refusals_name_the_problem():
    model = _mlp()
    x, y = _tasks()
    with pytest.raises(ValueError, match="tasks must be a positive int"):
        higher_core.monkeypatch(model, tasks=0)
    with pytest.raises(BatchingError, match="closure"):
        higher_core.get_diff_optim(torch.optim.LBFGS(model.parameters()), model.parameters(), tasks=T)
    with higher_core.innerloop_ctx(model, OPTIMIZERS["sgd-momentum-nesterov"](model), tasks=T) as (fmodel, diffopt):
        with pytest.raises(ValueError, match=r"leading dimension .* \(shape \[4, \.\.\.\]\)"):
            fmodel(x[0])
        with pytest.raises(ValueError, match=r"per-task losses, shape \[4\]"):
            diffopt.step(_per_task_losses(fmodel(x), y)[:2])
        with pytest.raises(ValueError, match=r"must have shape \(4, 6, 2\)"):
            diffopt.step(_per_task_losses(fmodel(x), y).sum(), params=[p[0] for p in fmodel.fast_params])
        # a scalar loss is the sum of the per-task losses
        fast = diffopt.step(_per_task_losses(fmodel(x), y).sum())
        assert fast[0].shape == (T, 6, 2)
    with pytest.raises(ValueError, match="same tasks"):
        higher_core.get_diff_optim(torch.optim.SGD(model.parameters(), lr=0.1), model.parameters(), tasks=T,
                                   fmodel=higher_core.monkeypatch(model, tasks=T + 1))


def test_conv_on_cpu_runs_the_forward_as_a_loop_with_the_numbers_of_vmap():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(8, 1)).double()
    x = torch.randn(T, 3, 1, 4, 4, dtype=DT)
    y = torch.randn(T, 3, 1, dtype=DT)
    results = []
    for batching in ("loop", "vmap"):
        opt = OPTIMIZERS["adam-amsgrad-weight_decay"](model)
        with higher_core.innerloop_ctx(model, opt, copy_initial_weights=False, tasks=T) as (fmodel, diffopt):
            assert fmodel.batching == "loop" and "convolutions on the CPU" in fmodel.fallback_reason
            fmodel.batching = batching
            for _ in range(2):
                diffopt.step(_per_task_losses(fmodel(x), y))
            total = _per_task_losses(fmodel(x), y).sum()
            results.append([*fmodel.fast_params, *(b for _, b in fmodel.named_buffers()),
                            *torch.autograd.grad(total, list(model.parameters()))])
    for ours, theirs in zip(*results):
        torch.testing.assert_close(ours, theirs, rtol=RTOL, atol=ATOL)
    with pytest.raises(ValueError, match="batching must be 'vmap' or 'loop'"):
        fmodel.batching = "threads"


_ACTIVATIONS = sorted(_matmul.ELEMENTWISE, key=lambda t: t.__name__)


@pytest.mark.parametrize("activation", _ACTIVATIONS, ids=[t.__name__ for t in _ACTIVATIONS])
@pytest.mark.parametrize("shape", [(2,), (5, 2), (3, 5, 2)], ids=["1d", "2d", "3d"])
def test_mlp_runs_without_vmap_with_the_per_task_numbers(activation, shape):
    """A Sequential of Linear layers and an element-wise activation runs as batched matrix products
    (no vmap); outputs and gradients equal each task's own forward, for inputs of any rank, bias or not."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 5), activation(), nn.Sequential(nn.Linear(5, 3, bias=False)),
                          activation(), nn.Linear(3, 1)).double()
    fmodel = higher_core.monkeypatch(model, tasks=T)
    assert fmodel._plan is not None and fmodel.batching == "vmap"
    x = torch.randn(T, *shape, dtype=DT)
    fast = [p.detach().clone().requires_grad_() for p in fmodel.fast_params]
    out = fmodel(x, params=fast)
    names = [name for name, _ in model.named_parameters()]
    own = [torch.func.functional_call(model, dict(zip(names, [p[t] for p in fast])), (x[t],)) for t in range(T)]
    for t in range(T):
        torch.testing.assert_close(out[t], own[t], rtol=RTOL, atol=ATOL)
    for ours, theirs in zip(torch.autograd.grad(out.pow(2).sum(), fast),
                            torch.autograd.grad(sum(o.pow(2).sum() for o in own), fast)):
        torch.testing.assert_close(ours, theirs, rtol=RTOL, atol=ATOL)


def test_mlp_without_vmap_keeps_the_modules_errors():
    """A wrong input width raises what the module's own forward raises, as under vmap."""
    fmodel = higher_core.monkeypatch(_mlp(), tasks=T)
    assert fmodel._plan is not None
    with pytest.raises(RuntimeError, match="cannot be multiplied"):
        fmodel(torch.randn(T, 5, 3, dtype=DT))


@pytest.mark.parametrize("copy_initial_weights", [True, False])
@pytest.mark.parametrize("name", ["sgd-momentum-nesterov", "adam-amsgrad-weight_decay"])
def test_test_mode_detaches_every_weight_as_the_unbatched_path(name, copy_initial_weights):
    """track_higher_grads=False: every returned weight is a detached leaf, the one no step touched too
    (it stayed the model's expanded parameter before), so nothing reaches the model."""
    model = _mlp(unused=True)
    x, y = _tasks()
    with higher_core.innerloop_ctx(model, OPTIMIZERS[name](model), tasks=T, track_higher_grads=False,
                                   copy_initial_weights=copy_initial_weights) as (fmodel, diffopt):
        for _ in range(2):
            new = diffopt.step(_per_task_losses(fmodel(x), y))
            assert all(p.is_leaf and p.grad_fn is None and p.requires_grad for p in new)
            assert all(a is b for a, b in zip(new, fmodel.fast_params))
        sum(p.sum() for p in new).backward()
    assert all(p.grad is None for p in model.parameters())


class _Failing(nn.Module):
    """A module whose forward raises ``error`` once, as memory running out under vmap would (the loop,
    one task at a time, would then succeed). Not an MLP: it runs under vmap."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 1).double()
        self.error: BaseException | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        error, self.error = self.error, None
        if error is not None:
            raise error
        return self.lin(x).tanh()


@pytest.mark.parametrize("error", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
    RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 80 GB"),
    RuntimeError("a bug in the module"),
    NotImplementedError("a method the module leaves to subclasses"),
], ids=["cuda-oom", "cpu-oom", "a RuntimeError", "a NotImplementedError"])
def test_vmap_errors_other_than_an_unsupported_op_propagate_and_keep_the_mode(error):
    """Out of memory or the module's own error: raised as it is, and vmap stays the mode for the next call."""
    model = _Failing()
    fmodel = higher_core.monkeypatch(model, tasks=T)
    x = torch.randn(T, 3, 2, dtype=DT)
    model_copy = fmodel._module
    model_copy.error = error
    with pytest.raises(type(error), match=str(error)[:20]):
        fmodel(x)
    assert fmodel.batching == "vmap" and fmodel.fallback_reason is None
    assert fmodel(x).shape == (T, 3, 1) and fmodel.batching == "vmap"


@pytest.mark.parametrize("call", [lambda t: t.sum().item(), lambda t: bool(t.sum() > 0)], ids=["item", "branch"])
def test_what_vmap_cannot_batch_falls_back_to_the_loop(call):
    """vmap's own refusals (.item(), data-dependent control flow) are what switches to the loop, with the reason."""
    from higher_core.batched._module import unsupported_by_vmap

    with pytest.raises(RuntimeError) as raised:
        torch.func.vmap(call)(torch.ones(2, 3))
    assert unsupported_by_vmap(raised.value)
    assert not unsupported_by_vmap(torch.OutOfMemoryError("vmap: CUDA out of memory"))
