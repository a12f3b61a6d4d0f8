"""higher-l2l: meta-gradients w.r.t. the LSTM's weights, standalone = differentiable, truncation, bad inputs."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import higher_core
from higher_l2l import CoordinateLSTM, DifferentiableLSTMOptimizer, LSTMOptimizer, preprocess_gradient


class _Unroll(nn.Module):
    """The loss after ``steps`` differentiable steps, as a module whose only parameters are the LSTM's
    (so that ``torch.func.functional_call`` makes it a function of them, for gradcheck)."""

    def __init__(self, lstm: CoordinateLSTM, problem: nn.Module, steps: int) -> None:
        super().__init__()
        self.lstm, self.steps = lstm, steps
        self.__dict__["problem"] = problem  # not a submodule: its theta is not a meta-parameter here

    def forward(self) -> torch.Tensor:
        opt = LSTMOptimizer(self.problem.parameters(), self.lstm, lr=0.1)
        with higher_core.innerloop_ctx(self.problem, opt) as (fmodel, diffopt):
            total = torch.zeros((), dtype=torch.float64)
            for _ in range(self.steps):
                diffopt.step(fmodel())
                total = total + fmodel()
        return total


def test_gradcheck_of_the_meta_gradient_wrt_the_lstm_weights(tiny_lstm, quadratic):
    lstm = CoordinateLSTM(hidden_size=3, num_layers=2, generator=torch.Generator().manual_seed(1),
                          dtype=torch.float64)
    unroll = _Unroll(lstm, quadratic, steps=3)
    names = [name for name, _ in unroll.named_parameters()]
    weights = tuple(p.detach().clone().requires_grad_() for _, p in unroll.named_parameters())
    assert len(names) == 10  # two layers x four tensors, and the head's two

    def meta_loss(*ws: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(unroll, dict(zip(names, ws)), ())

    assert torch.autograd.gradcheck(meta_loss, weights)
    # the gradient the meta-optimizer sees is the one gradcheck checked
    unroll().backward()
    expected = torch.autograd.grad(meta_loss(*weights), weights)
    for name, p, e in zip(names, lstm.parameters(), expected):
        torch.testing.assert_close(p.grad, e, rtol=1e-12, atol=0, msg=name)
        assert p.grad.abs().sum() > 0, f"no meta-gradient reaches {name}"


def test_standalone_and_differentiable_step_identically():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    lstm = CoordinateLSTM(generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x, y = torch.randn(16, 4, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64)
    twin = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    twin.load_state_dict(model.state_dict())
    opt = LSTMOptimizer([{"params": twin[0].parameters()}, {"params": twin[2].parameters(), "lr": 0.05}], lstm)
    diff_ref = LSTMOptimizer([{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 0.05}],
                             lstm)
    with higher_core.innerloop_ctx(model, diff_ref) as (fmodel, diffopt):
        assert isinstance(diffopt, DifferentiableLSTMOptimizer)
        for step in range(8):
            diffopt.step(nn.functional.mse_loss(fmodel(x), y))
            opt.zero_grad()
            nn.functional.mse_loss(twin(x), y).backward()
            opt.step()
            for i, (fast, p) in enumerate(zip(fmodel.fast_params, twin.parameters())):
                torch.testing.assert_close(fast, p, rtol=1e-10, atol=0, msg=f"step {step}, param {i}")
                for key in ("hidden", "cell"):
                    torch.testing.assert_close(diffopt.param_state[i][key], opt.state[p][key], rtol=1e-10,
                                               atol=0, msg=f"step {step}, param {i}, {key}")


def test_truncate_equals_a_new_context_from_the_exported_state(tiny_lstm, quadratic):
    """Truncated meta-training: the second window's meta-gradient with truncate() equals the one of a
    new context built from an LSTMOptimizer that took the first window itself (state imported)."""

    def window(fmodel, diffopt, steps):
        total = torch.zeros((), dtype=torch.float64)
        for _ in range(steps):
            diffopt.step(fmodel())
            total = total + fmodel()
        return total

    start = quadratic.theta.detach().clone()
    with higher_core.innerloop_ctx(quadratic, LSTMOptimizer(quadratic.parameters(), tiny_lstm)) as (fmodel, diffopt):
        window(fmodel, diffopt, 4)
        diffopt.truncate()
        assert not any(t.requires_grad for s in diffopt.param_state.values() for t in s.values())
        truncated = torch.autograd.grad(window(fmodel, diffopt, 4), list(tiny_lstm.parameters()))

    opt = LSTMOptimizer(quadratic.parameters(), tiny_lstm)
    for _ in range(4):
        opt.zero_grad()
        quadratic().backward()
        opt.step()
    with higher_core.innerloop_ctx(quadratic, opt) as (fmodel, diffopt):
        fresh = torch.autograd.grad(window(fmodel, diffopt, 4), list(tiny_lstm.parameters()))
    for a, b in zip(truncated, fresh):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)
    assert not torch.equal(quadratic.theta.detach(), start)


def test_test_mode_keeps_no_graph_to_the_lstm(tiny_lstm, quadratic):
    opt = LSTMOptimizer(quadratic.parameters(), tiny_lstm)
    with higher_core.innerloop_ctx(quadratic, opt, track_higher_grads=False) as (fmodel, diffopt):
        for _ in range(3):
            diffopt.step(fmodel())
        assert not any(t.requires_grad for s in diffopt.param_state.values() for t in s.values())
        assert not fmodel.fast_params[0].grad_fn


def test_a_learned_output_scale_gets_its_meta_gradient(tiny_lstm, quadratic):
    opt = LSTMOptimizer(quadratic.parameters(), tiny_lstm, lr=0.1)
    lr = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    with higher_core.innerloop_ctx(quadratic, opt, override={"lr": [lr]}) as (fmodel, diffopt):
        for _ in range(3):
            diffopt.step(fmodel())
        (g,) = torch.autograd.grad(fmodel(), [lr])
    assert g != 0 and torch.isfinite(g)


def test_preprocessing_matches_the_paper():
    p = 10.0
    g = torch.tensor([2.0, -3e-3, math.exp(-p), 1e-6, -1e-6, 0.0], dtype=torch.float64)
    x = preprocess_gradient(g, p)
    expected = torch.tensor([[math.log(2.0) / p, 1.0], [math.log(3e-3) / p, -1.0], [-1.0, 1.0],
                             [-1.0, 1e-6 * math.exp(p)], [-1.0, -1e-6 * math.exp(p)], [-1.0, 0.0]],
                            dtype=torch.float64)
    torch.testing.assert_close(x, expected, rtol=1e-12, atol=1e-15)
    g = g.requires_grad_()
    (d,) = torch.autograd.grad(preprocess_gradient(g, p).sum(), [g])
    assert torch.isfinite(d).all() and d[-1] == math.exp(p)  # an exact zero: e^p through the second input


def test_float32_parameters_with_float64_weights():
    lstm = CoordinateLSTM(hidden_size=4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    w = torch.ones(3, requires_grad=True)
    opt = LSTMOptimizer([w], lstm)
    w.grad = torch.tensor([1.0, -2.0, 0.0])
    opt.step()
    assert w.dtype == torch.float32 and opt.state[w]["hidden"].dtype == torch.float32


# -- bad inputs --------------------------------------------------------------------------------
def test_bad_lstm_and_lr_say_what_to_do():
    w = torch.zeros(2, requires_grad=True)
    with pytest.raises(TypeError, match=r"lstm must be a higher_l2l.CoordinateLSTM .*got LSTM.*LSTMOptimizer\(params, lstm\)"):
        LSTMOptimizer([w], nn.LSTM(2, 20))
    with pytest.raises(ValueError, match=r"Invalid learning rate: -0.1 .*must be >= 0"):
        LSTMOptimizer([w], CoordinateLSTM(), lr=-0.1)
    with pytest.raises(TypeError, match="lr .*must be a number or a 1-element tensor, got str"):
        LSTMOptimizer([w], CoordinateLSTM(), lr="0.1")
    opt = LSTMOptimizer([w], CoordinateLSTM())
    with pytest.raises(ValueError, match="Invalid learning rate"):
        opt.add_param_group({"params": [torch.zeros(1, requires_grad=True)], "lr": -1.0})


@pytest.mark.parametrize("kwargs, message", [
    ({"hidden_size": 0}, "hidden_size must be a positive int, got 0"),
    ({"num_layers": 2.0}, "num_layers must be a positive int, got 2.0"),
    ({"preprocessing": 0.0}, r"preprocessing must be a positive number \(the paper's p = 10\), got 0.0"),
    ({"preprocessing": float("inf")}, "preprocessing must be a positive number"),
])
def test_bad_coordinate_lstm_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CoordinateLSTM(**kwargs)


def test_complex_and_sparse_are_refused_with_the_fix():
    z = torch.zeros(2, dtype=torch.complex64, requires_grad=True)
    opt = LSTMOptimizer([z], CoordinateLSTM())
    z.grad = torch.ones_like(z)
    with pytest.raises(ValueError, match=r"complex parameters; optimize torch.view_as_real\(p\)"):
        opt.step()
    w = torch.zeros(3, requires_grad=True)
    opt = LSTMOptimizer([w], CoordinateLSTM())
    w.grad = torch.zeros(3).to_sparse()
    with pytest.raises(ValueError, match=r"sparse gradients; densify them"):
        opt.step()
    diffopt = higher_core.get_diff_optim(LSTMOptimizer([z], CoordinateLSTM()), [z])
    with pytest.raises(ValueError, match="complex"):
        diffopt.step(z.abs().sum(), params=[z])


def test_a_reference_without_its_lstm_and_a_negative_override_are_refused():
    w = torch.zeros(2, requires_grad=True)
    opt = LSTMOptimizer([w], CoordinateLSTM())
    with pytest.raises(ValueError, match="Invalid learning rate"):
        higher_core.get_diff_optim(opt, [w], override={"lr": [-0.5]})
    with pytest.raises(ValueError, match="Invalid learning rate.*minimum -0.5"):
        higher_core.get_diff_optim(opt, [w], override={"lr": [torch.tensor([-0.5, 0.1])]})
    opt.lstm = None  # type: ignore[assignment]
    with pytest.raises(TypeError, match=r"no CoordinateLSTM in \.lstm \(got NoneType\); build it as LSTMOptimizer"):
        higher_core.get_diff_optim(opt, [w])
