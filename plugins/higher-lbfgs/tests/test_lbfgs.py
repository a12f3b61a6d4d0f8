"""LBFGS-specific behaviour of higher-lbfgs (the shared suite covers the rest)."""

from __future__ import annotations

import pytest
import torch
from higher_lbfgs._line_search import strong_wolfe
from torch.optim.lbfgs import _strong_wolfe

import higher_core
from higher_core.functional import add_scaled_exact as add_scaled
from higher_core.testing import Problem

SHAPES = ((3, 2), (2,), (2, 2))


#: (parameter dtype, loss dtype): torch reads the loss as a Python number, so a float32 loss, and a
#: float64 loss of float32 parameters, must both give torch's float32 numbers
DTYPES = [(torch.float64, torch.float64), (torch.float32, torch.float32), (torch.float32, torch.float64)]
DTYPE_IDS = ["float64", "float32", "float32-params-float64-loss"]


def _rugged(seed: int, n: int = 4, dtype: torch.dtype = torch.float64, loss_dtype: torch.dtype = torch.float64):
    g = torch.Generator().manual_seed(seed)
    a, w, b, c = (torch.rand(n, generator=g, dtype=torch.float64).mul(s).to(loss_dtype)
                  for s in (3.0, 4.0, 0.5, 0.05))
    x0 = (torch.randn(n, generator=g, dtype=torch.float64) * 2).to(dtype)

    def f(x):
        return (a * torch.sin(w * x) + b * x * x + c * x**4).sum()

    return f, x0


def _value_and_grad(f, x):
    x = x.detach().requires_grad_()
    y = f(x)
    return y.detach(), torch.autograd.grad(y, x)[0]


def _torch_steps(opt, params, loss_fn, steps):
    def closure():
        opt.zero_grad()
        loss = loss_fn(params)
        loss.backward()
        return loss.detach()  # a value: torch 2.8's LBFGS warns on float() of a loss that requires grad

    for _ in range(steps):
        opt.step(closure)


def _assert_same_state(ours, theirs):
    assert set(ours) == set(theirs)
    for key, value in theirs.items():
        mine = ours[key]
        if isinstance(value, list):
            assert len(mine) == len(value), key
            pairs = [(a, b) for a, b in zip(mine, value) if b is not None]
        else:
            pairs = [(mine, value)]
        for a, b in pairs:
            if isinstance(b, torch.Tensor):
                assert isinstance(a, torch.Tensor) and a.dtype == b.dtype, (key, a, b)
                assert torch.equal(a.detach(), b), key
            elif isinstance(a, torch.Tensor):
                assert a.item() == b, key
            else:
                assert a == b, key


@pytest.mark.parametrize(("dtype", "loss_dtype"), DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize(("max_ls", "tolerance_change"), [(25, 1e-9), (3, 1e-9), (25, 1.0)])
def test_strong_wolfe_takes_torch_branches_and_numbers(max_ls, tolerance_change, dtype, loss_dtype):
    # rugged 1-D slices, first steps from tiny to huge: bracketing, extrapolation, zoom,
    # swapped brackets, complex cubic roots, the evaluation budget and the bracket tolerance
    for seed in range(30):
        f, x0 = _rugged(seed, dtype=dtype, loss_dtype=loss_dtype)
        fx, gx = _value_and_grad(f, x0)
        d = -gx
        gtd = gx.dot(d)
        for t0 in (1e-3, 0.1, 1.0, 10.0, 1000.0):
            def along_torch(x, t, direction, f=f):
                value, grad = _value_and_grad(f, torch.add(x, direction, alpha=t))
                return float(value), grad

            def along(t, f=f, x0=x0, d=d):
                return _value_and_grad(f, add_scaled(x0, d, t))

            theirs = _strong_wolfe(along_torch, x0, t0, d, float(fx), gx, gtd, max_ls=max_ls,
                                   tolerance_change=tolerance_change)
            ours = strong_wolfe(along, t0, d, fx, gx, gtd, max_ls=max_ls, tolerance_change=tolerance_change)
            assert float(ours[0]) == theirs[0] and torch.equal(ours[1], theirs[1])
            assert float(ours[2]) == float(theirs[2]) and ours[3] == theirs[3], (seed, t0)
            assert not isinstance(theirs[2], torch.Tensor) or ours[2].dtype == theirs[2].dtype, (seed, t0)


@pytest.mark.parametrize(
    "options",
    [
        {"history_size": 2, "max_iter": 7},
        {"line_search_fn": "strong_wolfe", "history_size": 3, "max_iter": 6},
        {"line_search_fn": "strong_wolfe", "lr": 5.0, "max_iter": 5, "max_eval": 9},
        {"lr": torch.tensor(0.3), "max_iter": 4},
    ],
)
@pytest.mark.parametrize(("dtype", "loss_dtype"), DTYPES, ids=DTYPE_IDS)
def test_rugged_loss_matches_torch_bit_for_bit(options, dtype, loss_dtype):
    f, x0 = _rugged(7, n=6, dtype=dtype, loss_dtype=loss_dtype)
    params = [x0[:4].reshape(2, 2).clone().requires_grad_(), x0[4:].clone().requires_grad_()]

    def loss(ps):
        return f(torch.cat([p.reshape(-1) for p in ps]))

    opt = torch.optim.LBFGS(params, **options)
    diffopt = higher_core.get_diff_optim(opt, params)
    fast = [p.detach().clone().requires_grad_() for p in params]
    for _ in range(6):
        fast = diffopt.step(loss, params=fast)
        _torch_steps(opt, params, loss, 1)
        assert all(torch.equal(a.detach(), b.detach()) for a, b in zip(fast, params))
        _assert_same_state(diffopt.param_state[0], opt.state[params[0]])


def test_two_param_groups_refused():
    params = Problem(SHAPES).leaves()
    opt = torch.optim.LBFGS(params[:2])
    opt.add_param_group({"params": params[2:]})
    with pytest.raises(ValueError, match="per-parameter options"):
        higher_core.get_diff_optim(opt, params)


def test_step_needs_a_closure():
    problem = Problem(SHAPES)
    params = problem.leaves()
    diffopt = higher_core.get_diff_optim(torch.optim.LBFGS(params), params)
    with pytest.raises(TypeError, match="closure"):
        diffopt.step(problem.loss(params), params=params)


def test_closure_over_fmodel_fast_weights():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).double()
    reference = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).double()
    reference.load_state_dict(model.state_dict())
    x = torch.randn(16, 3, dtype=torch.float64)
    y = torch.randn(16, 1, dtype=torch.float64)
    opt = torch.optim.LBFGS(model.parameters(), max_iter=5, line_search_fn="strong_wolfe")
    with higher_core.innerloop_ctx(model, opt) as (fmodel, diffopt):
        for _ in range(2):
            diffopt.step(lambda p: (fmodel(x, params=p) - y).pow(2).mean())
        adapted = fmodel.fast_params
        meta = torch.autograd.grad((fmodel(x) - y).pow(2).mean(), fmodel.init_fast_params)
    ref_opt = torch.optim.LBFGS(reference.parameters(), max_iter=5, line_search_fn="strong_wolfe")
    _torch_steps(ref_opt, list(reference.parameters()), lambda _: (reference(x) - y).pow(2).mean(), 2)
    for a, b in zip(adapted, reference.parameters()):
        assert torch.equal(a.detach(), b.detach())
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in meta)


def test_grad_callback_sees_every_evaluation():
    problem = Problem(SHAPES)
    params = problem.leaves()
    calls = []

    def callback(grads):
        calls.append(len(grads))
        return grads

    opt = torch.optim.LBFGS(params, max_iter=6, line_search_fn="strong_wolfe", lr=3.0)
    diffopt = higher_core.get_diff_optim(opt, params, grad_callback=callback)
    fast = problem.leaves()
    for _ in range(2):
        fast = diffopt.step(problem.loss, params=fast)
    assert len(calls) == diffopt.param_state[0]["func_evals"] > 2 * 6


def test_export_state_lets_torch_continue():
    problem = Problem(SHAPES)
    params, reference = problem.leaves(), problem.leaves()
    opt = torch.optim.LBFGS(params, max_iter=3, history_size=4)
    ref_opt = torch.optim.LBFGS(reference, max_iter=3, history_size=4)
    diffopt = higher_core.get_diff_optim(opt, params)
    fast = problem.leaves()
    for _ in range(3):
        fast = diffopt.step(problem.loss, params=fast)
    with torch.no_grad():
        for p, f in zip(params, fast):
            p.copy_(f)
    diffopt.export_state(opt)
    _torch_steps(ref_opt, reference, problem.loss, 3)
    _torch_steps(opt, params, problem.loss, 3)
    _torch_steps(ref_opt, reference, problem.loss, 3)
    assert all(torch.equal(a, b) for a, b in zip(params, reference))
    _assert_same_state(opt.state[params[0]], ref_opt.state[reference[0]])


def test_truncate_detaches_the_memory_and_test_mode_keeps_no_graph():
    problem = Problem(SHAPES)
    params = problem.leaves()
    opt = torch.optim.LBFGS(params, max_iter=4)
    diffopt = higher_core.get_diff_optim(opt, params)
    fast = diffopt.step(problem.loss, params=problem.leaves())
    state = diffopt.param_state[0]
    assert state["old_dirs"][0].grad_fn is not None
    diffopt.truncate()
    tensors = [v for value in state.values() for v in (value if isinstance(value, list) else [value])
               if isinstance(v, torch.Tensor)]
    assert tensors and all(v.grad_fn is None for v in tensors)

    test_mode = higher_core.get_diff_optim(opt, params, track_higher_grads=False)
    fast = test_mode.step(problem.loss, params=problem.leaves())
    assert all(p.is_leaf for p in fast)
    assert all(v.grad_fn is None for v in test_mode.param_state[0]["old_dirs"])


@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"])
def test_gradcheck_continuing_from_a_warm_memory(line_search_fn):
    # the suite unrolls from an empty state; here the memory, H_diag and t come from torch
    problem = Problem(SHAPES)
    params = problem.leaves()
    opt = torch.optim.LBFGS(params, lr=0.5, max_iter=3, history_size=3, line_search_fn=line_search_fn)
    _torch_steps(opt, params, problem.loss, 2)
    start = [p.detach().clone() for p in params]

    def unrolled(*initial):
        diffopt = higher_core.get_diff_optim(opt, params)
        fast = list(initial)
        for _ in range(2):
            fast = diffopt.step(problem.loss, params=fast)
        return problem.loss(fast)

    inputs = tuple(p.clone().requires_grad_() for p in start)
    assert torch.autograd.gradcheck(unrolled, inputs)
    assert torch.autograd.gradgradcheck(unrolled, inputs)
