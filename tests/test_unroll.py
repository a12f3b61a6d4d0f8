"""Checkpointed unrolls (``higher_core.unroll``) give the plain unroll's meta-gradients, and refuse what they cannot replay."""

from __future__ import annotations

import gc
import random
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import higher_core
from higher_core import compat

RTOL = 1e-10


def _close(a: list[torch.Tensor], b: list[torch.Tensor], rtol: float = RTOL) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=rtol, atol=rtol * max(1.0, y.abs().max().item()))


def _mlp(batchnorm: bool = False, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(1)
    layers: list[nn.Module] = [nn.Linear(3, 6)]
    if batchnorm:
        layers.append(nn.BatchNorm1d(6))
    layers += [nn.Tanh(), *([nn.Dropout(dropout)] if dropout else []), nn.Linear(6, 1)]
    return nn.Sequential(*layers).double()


def _data(steps: int, tasks: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    lead = (steps,) if tasks is None else (steps, tasks)
    return torch.randn(*lead, 8, 3, generator=g, dtype=torch.float64), torch.randn(*lead, 8, 1, generator=g,
                                                                                    dtype=torch.float64)


def _meta_gradients(make_opt, checkpoint, steps=9, *, model=None, learned_lr=True, tasks=None, seed=0):
    """The meta-gradient w.r.t. the initial weights (and a learned lr) after ``steps`` inner steps."""
    model = model if model is not None else _mlp()
    opt = make_opt(model.parameters())
    device = next(model.parameters()).device
    x, y = (t.to(device) for t in _data(steps, tasks))
    lr = torch.tensor(opt.param_groups[0]["lr"], dtype=torch.float64, device=device, requires_grad=True)
    override = {"lr": [lr]} if learned_lr else None

    def inner_step(fmodel, diffopt, k):
        out = fmodel(x[k])
        loss = F.mse_loss(out, y[k]) if tasks is None else (out - y[k]).pow(2).mean((1, 2))
        diffopt.step(loss)

    torch.manual_seed(seed)
    with higher_core.innerloop_ctx(model, opt, copy_initial_weights=False, override=override,
                                   **({} if tasks is None else {"tasks": tasks})) as (fmodel, diffopt):
        higher_core.unroll(inner_step, fmodel, diffopt, steps=steps, checkpoint=checkpoint)
        meta = fmodel(x[0]).pow(2).mean()
        wrt = [*model.parameters(), *([lr] if learned_lr else [])]
        return list(torch.autograd.grad(meta, wrt)), [p.detach() for p in fmodel.fast_params], fmodel


OPTIMIZERS = {
    "SGD": lambda p: torch.optim.SGD(p, lr=0.1),
    "SGD momentum nesterov wd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True,
                                                          weight_decay=0.01),
    "Adam": lambda p: torch.optim.Adam(p, lr=0.01),
    "Adam amsgrad maximize": lambda p: torch.optim.Adam(p, lr=0.01, amsgrad=True, weight_decay=0.1),
    "RMSprop centered": lambda p: torch.optim.RMSprop(p, lr=0.01, centered=True, momentum=0.5),
}


@pytest.mark.parametrize("make_opt", OPTIMIZERS.values(), ids=OPTIMIZERS.keys())
@pytest.mark.parametrize("checkpoint", [1, 3, "sqrt", 100])
def test_checkpointed_equals_unrolled(make_opt, checkpoint):
    expected, weights, _ = _meta_gradients(make_opt, None)
    got, got_weights, _ = _meta_gradients(make_opt, checkpoint)
    _close(got, expected)
    _close(got_weights, weights)


def _deep_mlp() -> nn.Module:
    """Ten parameter tensors: an element-wise rule steps them as one flat group (Adam: one fused node)."""
    torch.manual_seed(1)
    return nn.Sequential(*[m for _ in range(4) for m in (nn.Linear(3, 3), nn.Tanh())], nn.Linear(3, 1)).double()


@pytest.mark.parametrize("name", ["Adam", "SGD momentum nesterov wd"])
def test_flat_and_fused_groups(name):
    expected, _, _ = _meta_gradients(OPTIMIZERS[name], None, model=_deep_mlp())
    got, _, fmodel = _meta_gradients(OPTIMIZERS[name], 3, model=_deep_mlp())
    _close(got, expected)


def test_whole_step_rule_prodigy():
    prodigyopt = pytest.importorskip("prodigyopt")
    make_opt = lambda p: prodigyopt.Prodigy(p, lr=1.0, weight_decay=0.01)  # noqa: E731
    expected, _, _ = _meta_gradients(make_opt, None, learned_lr=False)
    got, _, _ = _meta_gradients(make_opt, 2, learned_lr=False)
    assert any(g.abs().max() > 0 for g in expected)
    _close(got, expected)


def _lbfgs_meta_gradients(checkpoint, steps=6):
    model = _mlp()
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=3, history_size=4)
    x, y = _data(steps)

    def inner_step(fmodel, diffopt, k):
        diffopt.step(lambda params: F.mse_loss(fmodel(x[k], params=params), y[k]))

    with higher_core.innerloop_ctx(model, opt, copy_initial_weights=False) as (fmodel, diffopt):
        higher_core.unroll(inner_step, fmodel, diffopt, steps=steps, checkpoint=checkpoint)
        return list(torch.autograd.grad(fmodel(x[0]).pow(2).mean(), list(model.parameters())))


def test_whole_step_rule_lbfgs():
    _close(_lbfgs_meta_gradients(2), _lbfgs_meta_gradients(None))


def test_batchnorm_buffers_replay():
    expected, _, plain = _meta_gradients(OPTIMIZERS["Adam"], None, model=_mlp(batchnorm=True))
    got, _, checkpointed = _meta_gradients(OPTIMIZERS["Adam"], 3, model=_mlp(batchnorm=True))
    _close(got, expected)
    for a, b in zip(checkpointed.buffers(), plain.buffers()):  # after the backward's recomputations too
        assert torch.equal(a, b)


def test_dropout_replays_the_generator():
    expected, _, _ = _meta_gradients(OPTIMIZERS["SGD"], None, model=_mlp(dropout=0.3), seed=5)
    got, _, _ = _meta_gradients(OPTIMIZERS["SGD"], 2, model=_mlp(dropout=0.3), seed=5)
    _close(got, expected)


def test_generator_goes_on_as_after_a_plain_unroll():
    after = []
    for checkpoint in (None, 2):
        _meta_gradients(OPTIMIZERS["SGD"], checkpoint, model=_mlp(dropout=0.3), seed=5)
        after.append(torch.get_rng_state())
    assert torch.equal(after[0], after[1])


@pytest.mark.parametrize("make_opt", [OPTIMIZERS["Adam"], OPTIMIZERS["SGD momentum nesterov wd"]],
                         ids=["Adam", "SGD momentum"])
def test_tasks(make_opt):
    expected, _, _ = _meta_gradients(make_opt, None, tasks=3)
    got, _, _ = _meta_gradients(make_opt, 3, tasks=3)
    _close(got, expected)


def test_global_scope_rule_with_tasks():
    prodigyopt = pytest.importorskip("prodigyopt")
    make = lambda p: prodigyopt.Prodigy(p, lr=1.0)  # noqa: E731  (one rule per task)
    expected, _, _ = _meta_gradients(make, None, tasks=2, learned_lr=False)
    got, _, _ = _meta_gradients(make, 3, tasks=2, learned_lr=False)
    _close(got, expected)


def _per_step_lr_unroll(checkpoint, declare=True, steps=7):
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5)
    x, y = _data(steps)
    lrs = torch.full((steps,), 0.1, dtype=torch.float64, requires_grad=True)

    def inner_step(fmodel, diffopt, k):
        diffopt.step(F.mse_loss(fmodel(x[k]), y[k]), override={"lr": [lrs[k]]})

    with higher_core.innerloop_ctx(model, opt, copy_initial_weights=False) as (fmodel, diffopt):
        higher_core.unroll(inner_step, fmodel, diffopt, steps=steps, checkpoint=checkpoint,
                           inputs=[lrs] if declare else ())
        return list(torch.autograd.grad(fmodel(x[0]).pow(2).mean(), [*model.parameters(), lrs]))


def test_inputs_receive_their_gradient():
    expected = _per_step_lr_unroll(None)
    assert expected[-1].abs().min() > 0
    _close(_per_step_lr_unroll(3), expected)


def test_undeclared_input_is_refused():
    with pytest.raises(RuntimeError, match=r"reads a tensor that requires grad \(shape \(7,\).*inputs=\["):
        _per_step_lr_unroll(3, declare=False)


def _synthetic_data_unroll(checkpoint, declare, steps=7):
    """Dataset distillation's shape: the steps train on data computed from a leaf that requires grad."""
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(3)
    psi = torch.randn(8, 3, generator=g, dtype=torch.float64, requires_grad=True)
    x_syn = 2 * psi.tanh()
    y_syn = torch.randn(8, 1, generator=g, dtype=torch.float64)

    def inner_step(fmodel, diffopt, k):
        diffopt.step(F.mse_loss(fmodel(x_syn), y_syn))

    named = {"data": [x_syn], "leaf": [psi], "both": [x_syn, psi], "none": []}[declare]
    with higher_core.innerloop_ctx(model, opt) as (fmodel, diffopt):
        higher_core.unroll(inner_step, fmodel, diffopt, steps=steps, checkpoint=checkpoint, inputs=named)
        return torch.autograd.grad(fmodel(x_syn[:2].detach()).pow(2).mean(), [psi])


@pytest.mark.parametrize("declare", ["data", "leaf"])
def test_synthetic_data(declare):
    expected = _synthetic_data_unroll(None, "none")
    assert expected[0].abs().max() > 0
    _close(_synthetic_data_unroll(2, declare), expected)


def test_only_steps_that_read_an_older_graph_keep_it_in_each_backward():
    from higher_core._replay import LoopState
    from higher_core._unroll_inputs import refuse_undeclared, segment_inputs

    model = _mlp()
    psi = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
    x_syn = 2 * psi.tanh()
    with higher_core.innerloop_ctx(model, torch.optim.SGD(model.parameters(), lr=0.1)) as (fmodel, diffopt):
        def reads(x):
            return lambda fm, do, k: do.step(fm(x).pow(2).mean())

        for x, named, older in [(psi.detach(), [], False), (psi, [psi], False), (x_syn, [x_syn], False),
                                (x_syn, [psi], True)]:
            extras = segment_inputs(named, fmodel, diffopt, LoopState.capture(fmodel, diffopt))
            assert refuse_undeclared(reads(x), fmodel, diffopt, 0, extras) is older


def test_a_tensor_and_its_ancestor_are_refused():
    with pytest.raises(ValueError, match=r"shape \(8, 3\) is computed from another tensor .*counted twice"):
        _synthetic_data_unroll(2, "both")


def test_undeclared_synthetic_data_is_refused():
    with pytest.raises(RuntimeError, match=r"reads a tensor that requires grad \(shape \(8, 3\)"):
        _synthetic_data_unroll(2, "none")


def _proximal_unroll(checkpoint, plain_steps=0, steps=7):
    """iMAML's inner loss: a proximal term reads the initial weights (``model.parameters()``) at every step."""
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = _data(steps + plain_steps)
    w0 = list(model.parameters())

    def inner_step(fmodel, diffopt, k):
        prox = sum(((w - v) ** 2).sum() for w, v in zip(fmodel.fast_params, w0))
        diffopt.step(F.mse_loss(fmodel(x[k]), y[k]) + 0.5 * prox)

    with higher_core.innerloop_ctx(model, opt, copy_initial_weights=False) as (fmodel, diffopt):
        for k in range(plain_steps):
            inner_step(fmodel, diffopt, k)
        higher_core.unroll(lambda fm, do, k: inner_step(fm, do, k + plain_steps), fmodel, diffopt, steps=steps,
                           checkpoint=checkpoint)
        return list(torch.autograd.grad(fmodel(x[0]).pow(2).mean(), w0))


def test_steps_that_read_the_initial_weights():
    _close(_proximal_unroll(2), _proximal_unroll(None))


def test_steps_after_plain_ones():
    _close(_proximal_unroll(2, plain_steps=2), _proximal_unroll(None, plain_steps=2))


def test_gradcheck_through_a_segment_boundary():
    x, y = _data(5)

    def meta_loss(w0, lr):
        model = nn.Linear(3, 1).double()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        fmodel = higher_core.monkeypatch(model, copy_initial_weights=True)
        diffopt = higher_core.get_diff_optim(opt, model.parameters(), fmodel=fmodel, override={"lr": [lr]})
        fmodel.update_params([w0[:, :3], w0[0, 3:]])

        def inner_step(fm, do, k):
            do.step(F.mse_loss(fm(x[k]), y[k]))

        higher_core.unroll(inner_step, fmodel, diffopt, steps=5, checkpoint=2)
        kept.append((inner_step, fmodel, diffopt))  # gradcheck differentiates each output more than once
        return fmodel(x[0]).pow(2).mean()

    kept = []

    w0 = torch.randn(1, 4, dtype=torch.float64, requires_grad=True)
    lr = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(meta_loss, (w0, lr))


def test_history_gains_one_entry_per_segment():
    _, _, fmodel = _meta_gradients(OPTIMIZERS["SGD"], 3, steps=10)
    # the initial weights, the first (plain) step, then steps 1-3, 4-6, 7-9
    assert len(fmodel._fast_params) == 5


def test_plain_unroll_is_the_loop():
    expected, weights, _ = _meta_gradients(OPTIMIZERS["Adam"], None)
    model = _mlp()
    opt = OPTIMIZERS["Adam"](model.parameters())
    x, y = _data(9)
    lr = torch.tensor(0.01, dtype=torch.float64, requires_grad=True)
    with higher_core.innerloop_ctx(model, opt, copy_initial_weights=False, override={"lr": [lr]}) as (fm, do):
        for k in range(9):
            do.step(F.mse_loss(fm(x[k]), y[k]))
        got = torch.autograd.grad(fm(x[0]).pow(2).mean(), [*model.parameters(), lr])
    for a, b in zip(got, expected):
        assert torch.equal(a, b)


def test_test_mode_runs_the_plain_loop():
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = _data(4)
    calls = []

    def inner_step(fmodel, diffopt, k):
        calls.append(k)
        diffopt.step(F.mse_loss(fmodel(x[k]), y[k]))

    with higher_core.innerloop_ctx(model, opt, track_higher_grads=False) as (fmodel, diffopt):
        higher_core.unroll(inner_step, fmodel, diffopt, steps=4, checkpoint=2)
    assert calls == [0, 1, 2, 3]


def test_step_fn_that_does_not_replay_is_refused():
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = _data(6)
    rng = random.Random(0)

    def inner_step(fmodel, diffopt, k):
        diffopt.step(F.mse_loss(fmodel(x[k]) * rng.uniform(0.5, 1.5), y[k]))

    with higher_core.innerloop_ctx(model, opt, copy_initial_weights=False) as (fmodel, diffopt):
        higher_core.unroll(inner_step, fmodel, diffopt, steps=6, checkpoint=2)
        with pytest.raises(RuntimeError, match=r"did not replay the forward: fast weight \d differs"):
            fmodel(x[0]).sum().backward()


def test_meta_gradients_of_meta_gradients_are_refused():
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = _data(4)
    with higher_core.innerloop_ctx(model, opt, copy_initial_weights=False) as (fmodel, diffopt):
        higher_core.unroll(lambda fm, do, k: do.step(F.mse_loss(fm(x[k]), y[k])), fmodel, diffopt, steps=4,
                           checkpoint=2)
        with pytest.raises(RuntimeError, match="not gradients of meta-gradients"):
            torch.autograd.grad(fmodel(x[0]).sum(), list(model.parameters()), create_graph=True)


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"steps": -1}, ValueError, r"steps=\.\.\.\): give the number of inner steps"),
    ({"steps": 2.0}, ValueError, r"an int >= 0\), got 2\.0"),
    ({"checkpoint": 0}, ValueError, r"checkpoint=\.\.\.\): give the steps per segment"),
    ({"checkpoint": "log"}, ValueError, r"\"sqrt\" or None, got 'log'"),
    ({"checkpoint": True}, ValueError, r"got True"),
    ({"inputs": [1.0]}, TypeError, r"inputs=\.\.\.\): give tensors, got float at position 0"),
    ({"step_fn": "step"}, TypeError, r"step_fn must be callable as step_fn\(fmodel, diffopt, k\)"),
    ({"other_fmodel": True}, ValueError, r"diffopt must step fmodel"),
])
def test_bad_arguments(kwargs, error, match):
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with higher_core.innerloop_ctx(model, opt) as (fmodel, diffopt):
        other = higher_core.monkeypatch(model)
        call = {"step_fn": lambda fm, do, k: None, "fmodel": other if kwargs.pop("other_fmodel", False) else fmodel,
                "diffopt": diffopt, "steps": 3, "checkpoint": 2, **kwargs}
        with pytest.raises(error, match=match):
            higher_core.unroll(**call)


def test_segment_length():
    from higher_core.unrolling import segment_length

    assert [segment_length(k, "sqrt") for k in (1, 10, 99, 1000)] == [1, 3, 10, 32]
    assert segment_length(1000, 7) == 7


def _offloaded_meta_gradients(device: str, offloaded: bool) -> list[torch.Tensor]:
    model = _mlp().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    x, y = (t.to(device) for t in _data(5))
    with higher_core.innerloop_ctx(model, opt, copy_initial_weights=False) as (fmodel, diffopt):
        with higher_core.offload() if offloaded else torch.autograd.graph.saved_tensors_hooks(lambda t: t,
                                                                                              lambda t: t):
            for k in range(5):
                diffopt.step(F.mse_loss(fmodel(x[k]), y[k]))
            meta = fmodel(x[0]).pow(2).mean()
        return [g.cpu() for g in torch.autograd.grad(meta, list(model.parameters()))]


def test_offload_keeps_the_meta_gradients():
    expected = _offloaded_meta_gradients("cpu", offloaded=False)
    got = _offloaded_meta_gradients("cpu", offloaded=True)
    for a, b in zip(got, expected):
        assert torch.equal(a, b)


@pytest.mark.cuda
def test_offload_on_the_gpu_keeps_the_meta_gradients():
    _close(_offloaded_meta_gradients("cuda", offloaded=True), _offloaded_meta_gradients("cuda", offloaded=False))


@pytest.mark.cuda
def test_checkpointed_on_the_gpu():
    model = _mlp().cuda()
    expected, _, _ = _meta_gradients(OPTIMIZERS["Adam"], None, model=model)
    got, _, _ = _meta_gradients(OPTIMIZERS["Adam"], 3, model=model)
    _close(got, expected, rtol=1e-9)


def _checkpointed_loss(steps=6):
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = _data(steps)

    def inner_step(fmodel, diffopt, k):
        diffopt.step(F.mse_loss(fmodel(x[k]), y[k]))

    with higher_core.innerloop_ctx(model, opt, copy_initial_weights=False) as (fmodel, diffopt):
        higher_core.unroll(inner_step, fmodel, diffopt, steps=steps, checkpoint=2)
        return model, fmodel(x[0]).pow(2).mean(), (inner_step, fmodel, diffopt)


def test_the_unroll_is_freed_after_its_backward():
    model, loss, objects = _checkpointed_loss()  # the patched module is alive only through the graph
    fmodel = weakref.ref(objects[1])
    del objects
    gc.collect()
    assert fmodel() is not None
    torch.autograd.grad(loss, list(model.parameters()))
    del loss
    gc.collect()
    assert fmodel() is None


def test_a_second_backward_while_the_objects_live():
    model, loss, objects = _checkpointed_loss()
    first = torch.autograd.grad(loss, list(model.parameters()), retain_graph=True)
    second = torch.autograd.grad(loss, list(model.parameters()))
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    del objects


def test_a_second_backward_once_the_caller_let_go():
    model, loss, objects = _checkpointed_loss()
    del objects
    first = torch.autograd.grad(loss, list(model.parameters()), retain_graph=True)
    gc.collect()
    if compat.torch_at_least(2, 5):  # the first backward said it keeps the graph: the segments keep what they need
        second = torch.autograd.grad(loss, list(model.parameters()))
        for a, b in zip(first, second):
            assert torch.equal(a, b)
    else:  # torch 2.4 does not say, so the segments let go after every backward
        with pytest.raises(RuntimeError, match="second backward through a checkpointed segment needs step_fn"):
            torch.autograd.grad(loss, list(model.parameters()))
