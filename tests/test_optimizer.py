"""The DifferentiableOptimizer base: state import, overrides, callbacks, construction."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import higher_core
from higher_core.optim import apply_trainable_opt_params, create_diff_optim, get_trainable_opt_params

DT = torch.float64


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()


def _two_groups(model, **kwargs):
    return torch.optim.Adam(
        [{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 0.05}], lr=0.01, **kwargs
    )


X = torch.randn(6, 3, dtype=DT, generator=torch.Generator().manual_seed(1))


def _loss(fmodel, params=None):
    return fmodel(X, params=params).pow(2).mean()


def test_param_groups_refer_to_parameters_by_position_and_copy_no_weights():
    model = _model()
    opt = _two_groups(model)
    diffopt = higher_core.get_diff_optim(opt, model.parameters())
    assert [g["params"] for g in diffopt.param_groups] == [[0, 1], [2, 3]]
    assert diffopt.param_groups[1]["lr"] == 0.05
    assert not any(isinstance(v, torch.Tensor) for g in diffopt.param_groups for v in g.values())


def test_existing_state_is_copied_not_shared():
    model = _model()
    opt = _two_groups(model)
    for _ in range(2):
        opt.zero_grad()
        model(X).pow(2).mean().backward()
        opt.step()
    diffopt = higher_core.get_diff_optim(opt, model.parameters())
    for i, p in enumerate(model.parameters()):
        assert diffopt.state[i]["step"] == 2.0
        assert torch.equal(diffopt.state[i]["exp_avg"], opt.state[p]["exp_avg"])
        assert diffopt.state[i]["exp_avg"].data_ptr() != opt.state[p]["exp_avg"].data_ptr()


def test_step_returns_new_weights_in_reference_order_and_updates_fmodel():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    fmodel = higher_core.monkeypatch(model)
    diffopt = higher_core.get_diff_optim(opt, model.parameters(), fmodel=fmodel)
    before = fmodel.fast_params
    grads = torch.autograd.grad(_loss(fmodel), before)
    new = diffopt.step(_loss(fmodel))
    for b, g, n in zip(before, grads, new):
        torch.testing.assert_close(n, b - 0.1 * g, rtol=1e-14, atol=0)
    assert all(a is b for a, b in zip(fmodel.fast_params, new))


def test_step_without_fmodel_needs_params():
    model = _model()
    diffopt = higher_core.get_diff_optim(torch.optim.SGD(model.parameters(), lr=0.1), model.parameters())
    with pytest.raises(ValueError, match="needs params="):
        diffopt.step(model(X).sum())
    with pytest.raises(ValueError, match="got 1 parameters but the optimizer was built for 4"):
        diffopt.step(model(X).sum(), params=[model[0].weight])


def test_loss_that_does_not_require_grad_is_refused():
    model = _model()
    fmodel = higher_core.monkeypatch(model)
    diffopt = higher_core.get_diff_optim(torch.optim.SGD(model.parameters(), lr=0.1), model.parameters(),
                                         fmodel=fmodel)
    with torch.no_grad():
        loss = _loss(fmodel)
    with pytest.raises(ValueError, match="does not require grad"):
        diffopt.step(loss)


def test_unexpected_keywords_are_refused():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="unexpected keyword argument.*lrr"):
        higher_core.get_diff_optim(opt, model.parameters(), lrr=0.1)


def test_parameters_outside_reference_params_are_refused():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="not in reference_params"):
        higher_core.get_diff_optim(opt, list(model.parameters())[:2])


# -- overrides ------------------------------------------------------------------------


def test_tensor_override_receives_gradients_per_group():
    model = _model()
    opt = _two_groups(model)
    lrs = [torch.tensor(0.01, dtype=DT, requires_grad=True), torch.tensor(0.05, dtype=DT, requires_grad=True)]
    with higher_core.innerloop_ctx(model, opt, override={"lr": lrs}) as (fmodel, diffopt):
        for _ in range(2):
            diffopt.step(_loss(fmodel))
        g0, g1 = torch.autograd.grad(_loss(fmodel), lrs)
    assert g0.abs() > 0 and g1.abs() > 0


def test_override_matches_the_same_hyperparameters_given_to_torch():
    model = _model()
    reference = higher_core.get_diff_optim(_two_groups(model, betas=(0.5, 0.6)), model.parameters())
    overridden = higher_core.get_diff_optim(_two_groups(model), model.parameters(),
                                            override={"betas": [(0.5, 0.6)]})
    fast_a = fast_b = [p.detach().requires_grad_() for p in model.parameters()]
    fmodel = higher_core.monkeypatch(model)
    for _ in range(3):
        fast_a = reference.step(_loss(fmodel, fast_a), params=fast_a)
        fast_b = overridden.step(_loss(fmodel, fast_b), params=fast_b)
    for a, b in zip(fast_a, fast_b):
        assert torch.equal(a, b)


def test_step_override_takes_precedence():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    fmodel = higher_core.monkeypatch(model)
    diffopt = higher_core.get_diff_optim(opt, model.parameters(), fmodel=fmodel, override={"lr": [0.5]})
    before = fmodel.fast_params
    grads = torch.autograd.grad(_loss(fmodel), before)
    new = diffopt.step(_loss(fmodel), override={"lr": [0.0]})
    assert all(torch.equal(a, b) for a, b in zip(new, before))
    new = diffopt.step(_loss(fmodel))
    torch.testing.assert_close(new[0], before[0] - 0.5 * grads[0], rtol=1e-14, atol=0)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"lr": [0.1, 0.2, 0.3]}, r"override\['lr'\] has 3 values but the optimizer has 2 param group"),
        ({"momentum": [0.9]}, r"override key 'momentum' is not a hyperparameter of torch\.optim\.Adam; "
                              r"valid keys: amsgrad, betas, .*eps, .*lr"),
        ({"betas": (0.5, 0.6)}, r"override\['betas'\] for param group 0 must have 2 entries"),
        ({"lr": "fast"}, r"override\['lr'\] must be a list"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    model = _model()
    with pytest.raises(ValueError, match=message):
        higher_core.get_diff_optim(_two_groups(model), model.parameters(), override=override)


def test_get_trainable_opt_params_skips_flags():
    model = _model()
    opt = _two_groups(model, amsgrad=True, foreach=False)
    override = get_trainable_opt_params(opt)
    assert sorted(override) == ["betas", "eps", "lr", "weight_decay"]
    assert all(t.requires_grad and t.dtype == DT for t in override["betas"][1])
    assert override["lr"][1].item() == 0.05
    sgd = get_trainable_opt_params(torch.optim.SGD(model.parameters(), lr=0.1, nesterov=True, momentum=0.9))
    assert sorted(sgd) == ["dampening", "lr", "momentum", "weight_decay"]


def test_trainable_params_learn_and_are_applied_back():
    model = _model()
    opt = _two_groups(model)
    override = get_trainable_opt_params(opt)
    with higher_core.innerloop_ctx(model, opt, override=override) as (fmodel, diffopt):
        diffopt.step(_loss(fmodel))
        diffopt.step(_loss(fmodel))
        _loss(fmodel).backward()
    assert override["lr"][0].grad is not None and override["betas"][0][0].grad is not None
    with torch.no_grad():
        override["lr"][0] -= 0.001
    apply_trainable_opt_params(opt, override)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.009)
    assert isinstance(opt.param_groups[0]["lr"], float)
    assert isinstance(opt.param_groups[1]["betas"], tuple) and opt.param_groups[1]["betas"] == (0.9, 0.999)
    assert opt.param_groups[0]["amsgrad"] is False


def test_grad_callback_sees_gradients_in_reference_order():
    model = _model()
    model[2].bias.requires_grad_(False)
    seen = []

    def clip(grads):
        seen.append([g is None for g in grads])
        return [None if g is None else g.clamp(-1e-3, 1e-3) for g in grads]

    with higher_core.innerloop_ctx(model, torch.optim.SGD(model.parameters(), lr=1.0)) as (fmodel, diffopt):
        before = fmodel.fast_params
        new = diffopt.step(_loss(fmodel), grad_callback=clip)
    assert seen == [[False, False, False, True]]
    assert all((n - b).abs().max() <= 1e-3 + 1e-15 for n, b in zip(new, before))


# -- create_diff_optim -------------------------------------------------------------------


def test_create_diff_optim_with_fmodel_and_with_params():
    model = _model()
    fmodel = higher_core.monkeypatch(model)
    diffopt = create_diff_optim(torch.optim.Adam, {"lr": 0.1}, fmodel=fmodel)
    after = diffopt.step(_loss(fmodel))
    fast = [p.detach().clone().requires_grad_() for p in model.parameters()]
    diffopt2 = create_diff_optim(torch.optim.Adam, {"lr": 0.1}, params=fast)
    new = diffopt2.step(_loss(fmodel, fast), params=fast)
    for a, b in zip(new, after):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=0)


def test_create_diff_optim_accepts_param_group_dicts():
    model = _model()
    fmodel = higher_core.monkeypatch(model)
    fast = fmodel.fast_params
    diffopt = create_diff_optim(
        torch.optim.SGD, {"lr": 0.1}, params=[{"params": fast[:2], "lr": 0.0}, {"params": fast[2:]}], fmodel=fmodel
    )
    assert [g["lr"] for g in diffopt.param_groups] == [0.0, 0.1]
    new = diffopt.step(_loss(fmodel))
    assert torch.equal(new[0], fast[0]) and not torch.equal(new[2], fast[2])


def test_create_diff_optim_refuses_missing_inputs():
    with pytest.raises(ValueError, match="needs params= or fmodel="):
        create_diff_optim(torch.optim.SGD, {"lr": 0.1})
