"""Muon-specific behaviour of higher-muon (the shared suite covers the rest)."""

from __future__ import annotations

import pytest
import torch

from higher_core.compat import optimizer_available

if not optimizer_available("Muon"):  # the plugin registers nothing there (tests/test_compat.py)
    pytest.skip("torch.optim.Muon needs torch >= 2.9", allow_module_level=True)

from higher_muon import DifferentiableMuon  # noqa: E402
from higher_muon._muon import newton_schulz  # noqa: E402
import higher_core  # noqa: E402
from higher_core.testing import Problem  # noqa: E402

SHAPES = ((3, 2), (2, 3), (2, 2))
OPTIONS = [
    {"lr": 0.02},
    {"lr": 0.02, "nesterov": False, "momentum": 0.5},
    {"lr": 0.02, "eps": 10.0, "adjust_lr_fn": "match_rms_adamw", "weight_decay": 0.3},
    {"lr": 0.02, "ns_coefficients": (3.0, -3.2, 1.2), "ns_steps": 2, "momentum": 0.0},
]


def _unrolled(problem, opt, params, steps, override=None, **kwargs):
    def run(*initial):
        diffopt = higher_core.get_diff_optim(opt, params, override=override, **kwargs)
        fast = list(initial)
        for _ in range(steps):
            fast = diffopt.step(problem.loss(fast), params=fast)
        return problem.loss(fast)

    return run


def _groups(params):
    return [{"params": params[:-1]}, {"params": params[-1:], "lr": 0.01}]


@pytest.mark.parametrize("options", OPTIONS)
def test_full_precision_gradcheck_and_gradgradcheck(options):
    problem = Problem(SHAPES)
    params = problem.leaves()
    opt = torch.optim.Muon(_groups(params), **options)
    fn = _unrolled(problem, opt, params, 2, ns_dtype=None)
    inputs = tuple(problem.leaves())
    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


@pytest.mark.parametrize("name", DifferentiableMuon.tensor_hyperparameters)
def test_full_precision_hypergradients(name):
    problem = Problem(SHAPES)
    params = problem.leaves()
    opt = torch.optim.Muon(_groups(params), lr=0.02, momentum=0.9, weight_decay=0.2)

    def of_hyperparameter(h):
        return _unrolled(problem, opt, params, 2, override={name: [h]}, ns_dtype=None)(*problem.leaves())

    h = torch.tensor(float(opt.param_groups[0][name]), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(of_hyperparameter, (h,))


def test_bfloat16_forward_is_torch_and_straight_through_gradient_is_close():
    problem = Problem(SHAPES)
    params = problem.leaves()
    opt = torch.optim.Muon(_groups(params), lr=0.02)
    initial = problem.leaves()
    meta = {}
    for ns_dtype in (torch.bfloat16, None):
        loss = _unrolled(problem, opt, params, 3, ns_dtype=ns_dtype)(*initial)
        meta[ns_dtype] = torch.autograd.grad(loss, initial)
    diffopt = higher_core.get_diff_optim(opt, params)  # torch's bfloat16 numbers by default
    fast = problem.leaves()
    for _ in range(3):
        fast = diffopt.step(problem.loss(fast), params=fast)
        opt.zero_grad()
        problem.loss(params).backward()
        opt.step()
    assert all(torch.equal(a.detach(), b.detach()) for a, b in zip(fast, params))
    for straight_through, exact in zip(meta[torch.bfloat16], meta[None]):
        torch.testing.assert_close(straight_through, exact, rtol=1e-2, atol=1e-2)


def test_newton_schulz_matches_torch_and_orthogonalises():
    g = torch.Generator().manual_seed(1)
    for shape in ((3, 2), (2, 3), (4, 4)):
        x = torch.randn(*shape, generator=g, dtype=torch.float64)
        ours = newton_schulz(x.bfloat16(), (3.4445, -4.7750, 2.0315), 5, 1e-7)
        theirs = torch.optim._muon._zeropower_via_newtonschulz(x, (3.4445, -4.7750, 2.0315), 5, 1e-7)
        assert torch.equal(ours, theirs)
        full = newton_schulz(x, (3.4445, -4.7750, 2.0315), 5, 1e-7)
        singular_values = torch.linalg.svdvals(full)
        assert ((singular_values > 0.6) & (singular_values < 1.3)).all()


def test_zero_gradient_second_order_meta_gradient_is_finite():
    problem = Problem(SHAPES)
    problem.data[1] = torch.zeros_like(problem.data[1])  # param 1's gradient is exactly zero
    params = problem.leaves()
    opt = torch.optim.Muon(_groups(params), lr=0.02)
    initial = problem.leaves()
    for ns_dtype in (torch.bfloat16, None):
        with torch.autograd.set_detect_anomaly(True):
            loss = _unrolled(problem, opt, params, 2, ns_dtype=ns_dtype)(*initial)
            meta = torch.autograd.grad(loss, initial, create_graph=True)
            second = torch.autograd.grad(sum(g.sum() for g in meta), initial, allow_unused=True)
        assert all(g is None or torch.isfinite(g).all() for g in (*meta, *second))


def test_only_two_dimensional_parameters():
    with pytest.raises(ValueError, match="2D"):
        higher_core.create_diff_optim(torch.optim.Muon, {"lr": 0.02}, params=[torch.zeros(3, requires_grad=True)])


def test_bad_ns_dtype_refused():
    params = Problem(((2, 2),)).leaves()
    with pytest.raises(ValueError, match="ns_dtype"):
        higher_core.get_diff_optim(torch.optim.Muon(params), params, ns_dtype=torch.int32)
