"""safe_sqrt and foreach_safe_sqrt: torch.sqrt's numbers, derivative 0 at 0 at every order."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

import higher_core
from higher_core.functional import foreach_safe_sqrt, safe_sqrt
from higher_core.testing import Problem

F64 = torch.float64

# the masked form safe_sqrt had before it became one op, sqrt(x + shift) * mask: the benchmark's
# baseline, and here the reference for the numbers that must not move
_BENCH = Path(__file__).parents[1] / "benchmarks" / "safe_sqrt.py"
_spec = importlib.util.spec_from_file_location("bench_safe_sqrt", _BENCH)
_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_bench)
_former_safe_sqrt = _bench.former_safe_sqrt


def _foreach_one(x: torch.Tensor) -> torch.Tensor:
    """foreach_safe_sqrt's result for ``x``, placed in a list between two other tensors."""
    return foreach_safe_sqrt([x.detach().abs(), x, x.detach() + 1])[1]


def _with_zeros(n: int = 40, dtype: torch.dtype = F64) -> torch.Tensor:
    """Positive values, exact zeros (+0 and -0) and negative values, in random order."""
    x = torch.rand(n, dtype=dtype) * 3 + 0.1
    x[::5] = 0.0
    x[1::7] = -0.0
    x[2::6] = -torch.rand(len(x[2::6]), dtype=dtype)
    return x


def _derivatives(op, x: torch.Tensor, v: torch.Tensor, orders: int = 3) -> list[torch.Tensor]:
    """[f(x), d/dx <f, v>, d/dx <d/dx <f, v>, v>, ...] with create_graph all along."""
    x = x.detach().requires_grad_()
    out = [op(x)]
    value = (out[0] * v).sum()
    for order in range(orders):
        (grad,) = torch.autograd.grad(value, x, create_graph=order < orders - 1)
        out.append(grad)
        value = (grad * v).sum()
    return out


def _assert_identical(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal values (nan where nan), signs of zero included."""
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(a.isnan(), b.isnan())
    kept = ~a.isnan()
    assert torch.equal(a[kept], b[kept])
    assert torch.equal(a[kept].signbit(), b[kept].signbit())


# -- forward ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_forward_is_torch_sqrt_bit_for_bit_where_x_is_positive(dtype):
    info = torch.finfo(dtype)
    x = torch.cat([
        torch.rand(1000, dtype=dtype),
        torch.rand(100, dtype=dtype) * info.tiny,  # subnormals
        torch.tensor([info.smallest_normal, info.tiny / 2**10, info.max, info.max / 3, info.eps, 1.0,
                      float("inf")], dtype=dtype),
        torch.exp(torch.randn(1000, dtype=F64) * 30).to(dtype),  # from tiny to huge
    ])
    assert (x > 0).all() and (x < info.smallest_normal).any()
    expected = torch.sqrt(x)
    for op in (safe_sqrt, _foreach_one, lambda t: safe_sqrt(t.requires_grad_()).detach()):
        _assert_identical(op(x.clone()), expected)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_forward_is_zero_at_zero_and_below_and_nan_at_nan(dtype):
    x = torch.tensor([0.0, -0.0, -1e-30, -1.0, -float("inf"), float("nan"), 4.0], dtype=dtype)
    for op in (safe_sqrt, _foreach_one):
        for needs_grad in (False, True):
            y = op(x.clone().requires_grad_(needs_grad)).detach()
            assert torch.equal(y[:5], torch.zeros(5, dtype=dtype))
            assert not y[[0, 2, 3, 4]].signbit().any()  # +0 below zero; -0 stays -0 as in torch.sqrt
            assert y[5].isnan() and y[6] == 2


def test_forward_needs_one_node_and_saves_no_graph_without_grad():
    x = torch.rand(5, dtype=F64, requires_grad=True)
    assert type(safe_sqrt(x).grad_fn).__name__ == "_SafeSqrtBackward"
    assert len({y.grad_fn for y in foreach_safe_sqrt([x, x * 2, x + 1])}) == 1
    with torch.no_grad():
        assert not safe_sqrt(x).requires_grad
        assert not any(y.requires_grad for y in foreach_safe_sqrt([x, x]))
    assert not safe_sqrt(x.detach()).requires_grad
    assert foreach_safe_sqrt([]) == []


# -- derivatives --------------------------------------------------------------------------


def test_gradcheck_and_gradgradcheck_on_positive_inputs():
    x = (torch.rand(7, dtype=F64) + 0.1).requires_grad_()
    y = (torch.rand(3, 2, dtype=F64) + 0.5).requires_grad_()
    assert gradcheck(safe_sqrt, (x,)) and gradgradcheck(safe_sqrt, (x,))
    both = lambda a, b: tuple(foreach_safe_sqrt([a, b]))  # noqa: E731
    assert gradcheck(both, (x, y)) and gradgradcheck(both, (x, y))


def test_third_order_gradgradcheck_on_positive_inputs():
    x = (torch.rand(5, dtype=F64) + 0.2).requires_grad_()
    for op in (safe_sqrt, lambda t: foreach_safe_sqrt([t])[0]):
        def first(t, op=op):
            return torch.autograd.grad(op(t).sum(), t, create_graph=True)[0]
        assert gradgradcheck(first, (x,))


def test_derivatives_through_entries_held_at_zero_are_zero_where_torch_sqrt_gives_nan():
    # x -> sqrt(x * m): the entries where m = 0 stay exactly 0 whatever x, so their derivative is
    # 0 (finite differences agree); torch.sqrt's backward gives 0 * inf = nan there
    m = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0], dtype=F64)
    x = (torch.rand(5, dtype=F64) + 0.1).requires_grad_()
    for op in (safe_sqrt, lambda t: foreach_safe_sqrt([t])[0]):
        assert gradcheck(lambda t, op=op: op(t * m), (x,))
        assert gradgradcheck(lambda t, op=op: op(t * m), (x,))
    (plain,) = torch.autograd.grad(torch.sqrt(x * m).sum(), x)
    assert plain.isnan().any()


@pytest.mark.parametrize("op", [safe_sqrt, _foreach_one], ids=["single", "foreach"])
def test_derivatives_at_every_order_are_exactly_zero_at_and_below_zero(op):
    x = torch.tensor([0.0, -0.0, -2.0, 4.0, 0.25], dtype=F64)
    v = torch.tensor([1.5, -2.0, 3.0, 1.0, -1.0], dtype=F64)
    y, d1, d2, d3 = _derivatives(op, x, v)
    assert torch.equal(y, torch.tensor([0.0, 0.0, 0.0, 2.0, 0.5], dtype=F64))
    assert torch.equal(d1[:3], torch.zeros(3, dtype=F64))
    assert torch.equal(d2[:3], torch.zeros(3, dtype=F64))
    assert torch.equal(d3[:3], torch.zeros(3, dtype=F64))
    pos, w = x[3:], v[3:]  # sqrt' = x^-1/2 / 2, sqrt'' = -x^-3/2 / 4, sqrt''' = 3 x^-5/2 / 8
    torch.testing.assert_close(d1[3:], w * pos**-0.5 / 2, rtol=1e-15, atol=0)
    torch.testing.assert_close(d2[3:], -(w**2) * pos**-1.5 / 4, rtol=1e-15, atol=0)
    torch.testing.assert_close(d3[3:], 3 * w**3 * pos**-2.5 / 8, rtol=1e-15, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_the_numbers_of_the_former_masked_form_at_the_first_two_orders(dtype):
    # the forward, the plain backward and the create_graph backward reproduce the former op's
    # numbers exactly (signs of zero included), so meta-gradients do not move either
    x, v = _with_zeros(60, dtype).abs(), torch.randn(60, dtype=dtype)  # the former form was for x >= 0
    expected = _derivatives(_former_safe_sqrt, x, v, orders=2)
    for op in (safe_sqrt, _foreach_one):
        got = _derivatives(op, x, v, orders=2)
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        _assert_identical(got[0], expected[0])
        _assert_identical(got[1], expected[1])
        xg = x.clone().requires_grad_()
        (plain,) = torch.autograd.grad(op(xg), xg, v)  # grad mode off inside the backward
        _assert_identical(plain, expected[1])


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_foreach_equals_single_tensor_at_every_order(dtype):
    xs = [_with_zeros(n, dtype).reshape(-1, 2) for n in (4, 10, 30)]
    vs = [torch.randn_like(x) for x in xs]
    leaves = [x.clone().requires_grad_() for x in xs]
    single = [safe_sqrt(x) for x in leaves]
    multi = foreach_safe_sqrt(leaves)
    for a, b in zip(multi, single):
        _assert_identical(a.detach(), b.detach())
    for create_graph in (False, True):
        grads_single = torch.autograd.grad(single, leaves, vs, create_graph=True, retain_graph=True)
        grads_multi = torch.autograd.grad(multi, leaves, vs, create_graph=create_graph, retain_graph=True)
        for a, b in zip(grads_multi, grads_single):
            _assert_identical(a.detach(), b.detach())
    second_single = torch.autograd.grad(grads_single, leaves, vs, create_graph=True)
    second_multi = torch.autograd.grad(grads_multi, leaves, vs, create_graph=True)
    for a, b in zip(second_multi, second_single):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    third_single = torch.autograd.grad(second_single, leaves, vs)
    third_multi = torch.autograd.grad(second_multi, leaves, vs)
    for a, b in zip(third_multi, third_single):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_foreach_with_unused_outputs_and_inputs_that_need_no_grad():
    a = torch.tensor([0.0, 4.0], dtype=F64, requires_grad=True)
    b = torch.tensor([9.0], dtype=F64)
    c = torch.tensor([16.0, 0.0], dtype=F64, requires_grad=True)
    ya, yb, yc = foreach_safe_sqrt([a, b, c])
    assert not yb.requires_grad
    (ga,) = torch.autograd.grad(ya.sum(), a)  # yc unused
    assert torch.equal(ga, torch.tensor([0.0, 0.25], dtype=F64))


def test_the_backward_stays_finite_under_anomaly_detection():
    x = torch.tensor([0.0, 1.0, 0.0], dtype=F64, requires_grad=True)
    with torch.autograd.set_detect_anomaly(True):
        for op in (safe_sqrt, _foreach_one):
            y, d1, d2, d3 = _derivatives(op, x, torch.ones(3, dtype=F64))
            assert all(torch.isfinite(d).all() for d in (d1, d2, d3))


def test_nan_propagates_through_the_derivative_as_in_torch_sqrt():
    x = torch.tensor([float("nan"), 1.0], dtype=F64, requires_grad=True)
    for op in (safe_sqrt, _foreach_one):
        (g,) = torch.autograd.grad(op(x).sum(), x)
        assert g[0].isnan() and g[1] == 0.5


def test_torch_func_transforms():
    x = torch.tensor([[0.0, 4.0], [9.0, -1.0]], dtype=F64)
    assert torch.equal(torch.func.vmap(safe_sqrt)(x), safe_sqrt(x))
    grad = torch.func.vmap(torch.func.grad(lambda t: safe_sqrt(t).sum()))(x)
    assert torch.equal(grad, torch.tensor([[0.0, 0.25], [1 / 6, 0.0]], dtype=F64))
    second = torch.func.grad(lambda t: torch.func.grad(lambda s: foreach_safe_sqrt([s])[0].sum())(t).sum())
    assert torch.equal(second(x[0]), torch.tensor([0.0, -1 / 32], dtype=F64))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")  # torch's forward-AD setup
def test_forward_mode_gives_derivative_zero_at_zero():
    x = torch.tensor([0.0, 4.0, -1.0], dtype=F64)
    ones, expected = torch.ones(3, dtype=F64), torch.tensor([0.0, 0.25, 0.0], dtype=F64)
    for op in (safe_sqrt, _foreach_one):
        assert torch.equal(torch.func.jvp(op, (x,), (ones,))[1], expected)
        assert torch.equal(torch.func.jacfwd(op)(x), torch.diag(expected))
        hessian = torch.func.hessian(lambda t, op=op: op(t).sum())(x)
        assert torch.equal(hessian, torch.diag(torch.tensor([0.0, -1 / 32, 0.0], dtype=F64)))
        with torch.autograd.forward_ad.dual_level():  # the tensor does not require grad
            dual = torch.autograd.forward_ad.make_dual(x, ones)
            assert torch.equal(torch.autograd.forward_ad.unpack_dual(op(dual)).tangent, expected)


# -- through an optimizer -----------------------------------------------------------------


@pytest.mark.parametrize("foreach", [False, True], ids=["per-tensor", "foreach"])
def test_adam_meta_gradient_and_its_hessian_vector_product_are_finite_with_exact_zeros(foreach):
    problem = Problem(((3, 2), (2,)))
    problem.data[1] = torch.zeros_like(problem.data[1])  # a gradient that is exactly zero
    leaves = problem.leaves()
    diffopt = higher_core.get_diff_optim(torch.optim.Adam(leaves, lr=0.05), leaves)
    diffopt.foreach = foreach
    start = problem.leaves()
    fast = list(start)
    for _ in range(3):
        fast = diffopt.step(problem.loss(fast), params=fast)
    assert torch.equal(diffopt.param_state[1]["exp_avg_sq"], torch.zeros(2, dtype=F64))
    meta = torch.autograd.grad(problem.loss(fast), start, create_graph=True)
    assert all(torch.isfinite(m).all() for m in meta)
    hvp = torch.autograd.grad(sum((m * m).sum() for m in meta), start)
    assert all(torch.isfinite(h).all() for h in hvp)
    # the loss does not depend on the second tensor: its meta-gradient is 0 (0 * inf = nan with
    # torch.sqrt's derivative at the zero second moment)
    assert torch.equal(meta[1], torch.zeros(2, dtype=F64))
