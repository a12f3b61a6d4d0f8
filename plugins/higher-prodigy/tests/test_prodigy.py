"""higher-prodigy: what the conformance kit (tests/test_conformance.py) does not reach.

Prodigy keeps its step-size estimate ``d`` (and ``d_max``, ``d_numerator``,
``k``, ...) in its param groups; the kit's ``group_statistics`` check compares
them step by step, and these tests add the continued case, the default
configuration, the gradient through the starting weights, and the options refused.
"""

from __future__ import annotations

import pytest
import torch
from prodigyopt import Prodigy

import higher_core
from higher_core.testing import Problem
from higher_prodigy._conformance import PRODIGY_INFO

SHAPES = ((3, 2), (2,), (2, 2))
ROWS = list(PRODIGY_INFO.inputs)


def _setup(kwargs, second_group=None, problem=None):
    problem = problem or Problem(SHAPES)
    ref = problem.leaves()
    opt = Prodigy([{"params": ref[:-1]}, {"params": ref[-1:], **(second_group or {})}], **kwargs)
    return problem, ref, opt


def _torch_step(opt, ref, problem):
    opt.zero_grad()
    problem.loss(ref).backward()
    opt.step()


def _number(x):
    return x.detach().item() if isinstance(x, torch.Tensor) else float(x)


def _assert_group_state_equal(diffopt, opt, where):
    for index, (ours, theirs) in enumerate(zip(diffopt.group_state, opt.param_groups)):
        for key in ("d", "d_max", "d_numerator", "d_denom", "d_hat", "k"):
            if key not in theirs:
                assert key not in ours, f"{where}: group {index} has {key} before prodigyopt"
                continue
            got, expected = _number(ours[key]), float(theirs[key])
            assert abs(got - expected) <= 1e-10 * abs(expected) + 1e-300, (
                f"{where}: group {index} {key}: {got} != {expected}"
            )


@pytest.mark.parametrize("warmup", [0, 3], ids=["from-start", "continued"])
@pytest.mark.parametrize("row", ROWS, ids=[row.desc for row in ROWS])
def test_group_state_matches_prodigyopt(row, warmup):
    problem, ref, opt = _setup(row.kwargs, row.second_group)
    for _ in range(warmup):
        _torch_step(opt, ref, problem)
    diffopt = higher_core.get_diff_optim(opt, ref)
    _assert_group_state_equal(diffopt, opt, "imported")
    fast = [p.detach().clone().requires_grad_() for p in ref]
    for step in range(10):
        fast = diffopt.step(problem.loss(fast), params=fast)
        _torch_step(opt, ref, problem)
        _assert_group_state_equal(diffopt, opt, f"{row.desc} step {step + 1}")


def test_default_configuration_matches_and_has_exact_gradients():
    # d0=1e-6 (the default): tiny steps; parity on everything, and gradcheck from scratch,
    # which holds only because the starting weights x0 stay in the graph
    problem, ref, opt = _setup({})
    diffopt = higher_core.get_diff_optim(opt, ref)
    fast = [p.detach().clone().requires_grad_() for p in ref]
    for _ in range(10):
        fast = diffopt.step(problem.loss(fast), params=fast)
        _torch_step(opt, ref, problem)
        for i, (ours, theirs) in enumerate(zip(fast, ref)):
            torch.testing.assert_close(ours.detach(), theirs.detach(), rtol=1e-10, atol=1e-12)
            for key, value in opt.state[theirs].items():
                got = diffopt.param_state[i][key]
                torch.testing.assert_close(torch.as_tensor(got).detach(), torch.as_tensor(value),
                                           rtol=1e-10, atol=1e-12)
        _assert_group_state_equal(diffopt, opt, "defaults")

    problem, ref, opt = _setup({})

    def unrolled(*initial):
        diffopt = higher_core.get_diff_optim(opt, ref)
        weights = list(initial)
        for _ in range(4):
            weights = diffopt.step(problem.loss(weights), params=weights)
        return problem.loss(weights)

    inputs = tuple(problem.leaves())
    assert torch.autograd.gradcheck(unrolled, inputs)
    assert torch.autograd.gradgradcheck(unrolled, inputs)


@pytest.mark.parametrize(
    ("kwargs", "name", "value"),
    [({"d0": 0.05, "beta3": 0.9}, "beta3", 0.9), ({"d0": 0.05, "growth_rate": 1.05}, "growth_rate", 1.05)],
    ids=["beta3", "growth_rate"],
)
def test_hypergradients_the_table_cannot_reach(kwargs, name, value):
    # the table's defaults are beta3=None and growth_rate=inf, which are not differentiable points
    problem, ref, opt = _setup(kwargs)
    for _ in range(3):
        _torch_step(opt, ref, problem)
    start = [p.detach().clone() for p in ref]

    def of_hyperparameter(h):
        diffopt = higher_core.get_diff_optim(opt, ref, override={name: [h]})
        weights = [p.clone().requires_grad_() for p in start]
        for _ in range(3):
            weights = diffopt.step(problem.loss(weights), params=weights)
        return problem.loss(weights)

    h = torch.tensor(value, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(of_hyperparameter, (h,))
    (grad,) = torch.autograd.grad(of_hyperparameter(h), h)
    assert grad != 0


def test_every_trainable_hyperparameter_gets_a_meta_gradient():
    problem, ref, opt = _setup({"d0": 0.05})
    override = higher_core.optim.get_trainable_opt_params(opt)
    assert sorted(override) == ["betas", "d_coef", "eps", "growth_rate", "lr", "weight_decay"]
    diffopt = higher_core.get_diff_optim(opt, ref, override=override)
    fast = problem.leaves()
    for _ in range(4):
        fast = diffopt.step(problem.loss(fast), params=fast)
    learned = [override[name][0] for name in ("lr", "d_coef", "eps", "weight_decay")]
    grads = torch.autograd.grad(problem.loss(fast), [*learned, *override["betas"][0]])
    assert all(torch.isfinite(g) and g != 0 for g in grads)
    # growth_rate=inf (the default) never limits d: no gradient, and no inf * 0 = nan either
    assert torch.autograd.grad(problem.loss(fast), override["growth_rate"][0], allow_unused=True) == (None,)


def test_export_state_lets_prodigyopt_continue():
    problem, ref, opt = _setup({"d0": 0.05, "weight_decay": 0.1})
    twin_problem, twin, twin_opt = _setup({"d0": 0.05, "weight_decay": 0.1})
    diffopt = higher_core.get_diff_optim(opt, ref)
    fast = [p.detach().clone().requires_grad_() for p in ref]
    for _ in range(4):
        fast = diffopt.step(problem.loss(fast), params=fast)
        _torch_step(twin_opt, twin, twin_problem)
    with torch.no_grad():
        for p, f in zip(ref, fast):
            p.copy_(f)
    diffopt.export_state(opt)
    assert type(opt.state[ref[0]]["step"]) is int and type(opt.param_groups[0]["d"]) is float
    for _ in range(3):  # ordinary training continues identically
        _torch_step(opt, ref, problem)
        _torch_step(twin_opt, twin, twin_problem)
    for a, b in zip(ref, twin):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert opt.param_groups[0]["k"] == twin_opt.param_groups[0]["k"] == 7


def test_all_zero_parameter_keeps_its_starting_point_in_the_graph():
    problem = Problem(SHAPES)
    problem.initial[1] = torch.zeros_like(problem.initial[1])
    _, ref, opt = _setup({"d0": 0.05}, problem=problem)
    diffopt = higher_core.get_diff_optim(opt, ref)  # from the start
    _torch_step(opt, ref, problem)
    assert opt.state[ref[1]]["p0"].dim() == 0  # prodigyopt's memory-saving form ...
    continued = higher_core.get_diff_optim(opt, ref)  # ... imported as it is
    start = problem.leaves()
    fast = diffopt.step(problem.loss(start), params=start)
    assert diffopt.param_state[1]["p0"].shape == (2,) and diffopt.param_state[1]["p0"].requires_grad
    resumed = [p.detach().clone().requires_grad_() for p in ref]
    for _ in range(3):
        fast = diffopt.step(problem.loss(fast), params=fast)
        resumed = continued.step(problem.loss(resumed), params=resumed)
        _torch_step(opt, ref, problem)
    for ours, other, theirs in zip(fast, resumed, ref):
        torch.testing.assert_close(ours.detach(), theirs.detach(), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(other.detach(), theirs.detach(), rtol=1e-10, atol=1e-12)
    (meta,) = torch.autograd.grad(problem.loss(fast), start[1])
    assert torch.isfinite(meta).all() and meta.abs().sum() > 0


def test_no_progress_returns_before_the_update_like_prodigyopt():
    p = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    opt = Prodigy([p], d0=0.05)
    diffopt = higher_core.get_diff_optim(opt, [p])
    w = p.detach().clone().requires_grad_()
    (new,) = diffopt.step(0 * w.sum(), params=[w])  # every gradient entry is 0
    opt.zero_grad()
    (0 * p.sum()).backward()
    opt.step()
    assert new is w and torch.equal(p.detach(), w.detach())
    assert diffopt.group_state[0]["k"] == opt.param_groups[0]["k"] == 0
    assert diffopt.param_state[0]["step"] == opt.state[p]["step"] == 0


def test_truncate_and_test_mode_detach_the_step_size():
    problem, ref, opt = _setup({"d0": 0.05})
    for track in (True, False):
        diffopt = higher_core.get_diff_optim(opt, ref, track_higher_grads=track)
        fast = problem.leaves()
        for _ in range(3):
            fast = diffopt.step(problem.loss(fast), params=fast)
        assert diffopt.group_state[0]["d"].requires_grad is track
        diffopt.truncate()
        assert not any(isinstance(v, torch.Tensor) and v.requires_grad
                       for group in diffopt.group_state for v in group.values())
        assert not any(v.requires_grad for state in diffopt.param_state.values()
                       for v in state.values() if isinstance(v, torch.Tensor))


def test_refused_options_name_themselves():
    problem = Problem(SHAPES)
    ref = problem.leaves()
    differing = Prodigy([{"params": ref[:-1]}, {"params": ref[-1:], "lr": 0.5}])
    with pytest.raises(ValueError, match="lr: param groups have the learning rates"):
        higher_core.get_diff_optim(differing, ref)

    opt = Prodigy([{"params": ref[:-1]}, {"params": ref[-1:]}], d0=0.05)
    with pytest.raises(ValueError, match=r"override \['d'\]: these are Prodigy's running"):
        higher_core.get_diff_optim(opt, ref, override={"d": [0.1]})
    diffopt = higher_core.get_diff_optim(opt, ref)
    with pytest.raises(ValueError, match="override key 'd_max' is not a hyperparameter"):
        diffopt.step(problem.loss(ref), params=ref, override={"d_max": [0.1]})
    with pytest.raises(ValueError, match="override key 'fsdp_in_use' is not a hyperparameter"):
        diffopt.step(problem.loss(ref), params=ref, override={"fsdp_in_use": [True]})

    sharded = torch.zeros(2, requires_grad=True)
    sharded._fsdp_flattened = True
    with pytest.raises(ValueError, match="fsdp_in_use=True is not supported"):
        higher_core.get_diff_optim(Prodigy([sharded]), [sharded])

    z = torch.zeros(2, dtype=torch.complex128, requires_grad=True)
    with pytest.raises(ValueError, match="complex parameters are not supported"):
        higher_core.get_diff_optim(Prodigy([z]), [z])
