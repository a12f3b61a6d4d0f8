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
        assert diffopt.param_state[i]["step"] == 2.0
        assert torch.equal(diffopt.param_state[i]["exp_avg"], opt.state[p]["exp_avg"])
        assert diffopt.param_state[i]["exp_avg"].data_ptr() != opt.state[p]["exp_avg"].data_ptr()


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
                              r"valid keys: betas, eps, lr, weight_decay"),
        ({"amsgrad": [True]}, r"override key 'amsgrad' is not a hyperparameter .*valid keys: betas"),
        ({"lr": [-0.1]}, r"override of lr for param group 0: torch\.optim\.Adam refuses these values: "
                         r"Invalid learning rate: -0\.1"),
        ({"betas": [(1.5, 0.99)]}, r"Invalid beta parameter at index 0: 1\.5"),
        ({"lr": [torch.ones(4)]}, r"override\['lr'\] for param group 0 is a tensor of shape \(4,\), but its "
                                  r"parameter 0 has shape \(4, 3\): the value does not broadcast against it"),
        ({"betas": [(torch.tensor(0.9), torch.ones(2))]}, r"override\['betas'\] .* shape \(2,\)"),
        ({"lr": [True]}, r"override\['lr'\] for param group 0 must be a number or a 0-d tensor, got bool"),
        ({"betas": (0.5, 0.6)}, r"override\['betas'\] for param group 0 must have 2 entries"),
        ({"lr": "fast"}, r"override\['lr'\] must be a list"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    model = _model()
    with pytest.raises(ValueError, match=message):
        higher_core.get_diff_optim(_two_groups(model), model.parameters(), override=override)
    diffopt = higher_core.get_diff_optim(_two_groups(model), model.parameters())  # the same at a step
    fast = [p.detach().clone().requires_grad_() for p in model.parameters()]
    with pytest.raises(ValueError, match=message):
        diffopt.step(_loss(higher_core.monkeypatch(model), fast), params=fast, override=override)


class _HistoryChecked(higher_core.optim.DifferentiableOptimizer):
    """Refuses momentum >= 1 in check_param_groups, which must see construction overrides too."""

    tensor_hyperparameters = ("lr", "momentum")

    def check_param_groups(self, param_groups):
        for group in param_groups:
            if float(group["momentum"]) >= 1:
                raise ValueError(f"momentum must be below 1, got {group['momentum']}")

    def update_one(self, group, param, grad, state):
        return param - group["lr"] * grad, state


def test_construction_overrides_pass_check_param_groups():
    model = _model()

    class Ref(torch.optim.SGD):
        pass

    higher_core.register_optim(Ref, _HistoryChecked)
    try:
        with pytest.raises(ValueError, match="momentum must be below 1, got 1.5"):
            higher_core.get_diff_optim(Ref(model.parameters(), lr=0.1), model.parameters(),
                                       override={"momentum": [1.5]})
    finally:
        higher_core.unregister_optim(Ref)


def _two_steps(model, override=None, step_override=None):
    fmodel = higher_core.monkeypatch(model)
    diffopt = higher_core.get_diff_optim(_two_groups(model), model.parameters(), fmodel=fmodel, override=override)
    for _ in range(2):
        diffopt.step(_loss(fmodel), override=step_override)
    return fmodel.fast_params


def test_parameter_list_and_tuples_of_tensors_are_accepted_as_overrides():
    model = _model()
    lrs = nn.ParameterList([nn.Parameter(torch.tensor(0.02, dtype=DT)), nn.Parameter(torch.tensor(0.03, dtype=DT))])
    betas = nn.ParameterList([nn.Parameter(torch.tensor([0.8, 0.9], dtype=DT))])
    got = _two_steps(model, override={"lr": lrs, "betas": betas})
    expected = _two_steps(model, override={"lr": [0.02, 0.03], "betas": [(0.8, 0.9)]})
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)
    assert all(g.abs().sum() > 0 for g in torch.autograd.grad(_loss(higher_core.monkeypatch(model), got),
                                                              [*lrs, *betas]))

    pair = (torch.tensor(0.7, dtype=DT, requires_grad=True), torch.tensor(0.95, dtype=DT, requires_grad=True))
    got = _two_steps(model, step_override={"betas": [pair, list(pair)]})
    expected = _two_steps(model, override={"betas": [(0.7, 0.95)]})
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)
    assert all(g.abs() > 0 for g in torch.autograd.grad(_loss(higher_core.monkeypatch(model), got), pair))


def test_step_override_applies_to_that_step_only():
    model = _model()
    fmodel = higher_core.monkeypatch(model)
    diffopt = higher_core.get_diff_optim(torch.optim.SGD(model.parameters(), lr=0.1), model.parameters(),
                                         fmodel=fmodel)
    before = [p.detach().clone() for p in fmodel.fast_params]
    diffopt.step(_loss(fmodel), override={"lr": [0.0]})
    torch.testing.assert_close([p.detach() for p in fmodel.fast_params], before, rtol=0, atol=0)
    grads = torch.autograd.grad(_loss(fmodel), fmodel.fast_params)
    new = diffopt.step(_loss(fmodel))  # lr 0.1 again
    torch.testing.assert_close(new[0], before[0] - 0.1 * grads[0], rtol=1e-14, atol=0)


def test_track_higher_grads_is_the_fmodels_flag():
    model = _model()
    fmodel = higher_core.monkeypatch(model)
    diffopt = higher_core.get_diff_optim(torch.optim.SGD(model.parameters(), lr=0.1), model.parameters(),
                                         fmodel=fmodel)
    fmodel.track_higher_grads = False
    assert diffopt.track_higher_grads is False
    new = diffopt.step(_loss(fmodel))
    assert all(p.grad_fn is None for p in new)
    diffopt.track_higher_grads = True
    assert fmodel.track_higher_grads is True
    with pytest.raises(ValueError, match="the optimizer follows its fmodel"):
        higher_core.get_diff_optim(torch.optim.SGD(model.parameters(), lr=0.1), model.parameters(),
                                   fmodel=fmodel, track_higher_grads=False)


class _Counting(higher_core.optim.DifferentiableOptimizer):
    """Per-group running state: a step counter k that scales the step, as schedule-free optimizers keep one."""

    def import_group_state(self, group):
        return {"k": group.pop("k", torch.tensor(0.0, dtype=DT))}

    def update_group_state(self, group, state, params, grads):
        return {**state, "k": state["k"] + group["lr"]}

    def update_one(self, group, param, grad, state):
        return param - group["k"] * grad, state


def test_per_group_running_state_is_imported_advanced_detached_and_exported():
    model = _model()

    class Ref(torch.optim.SGD):
        pass

    opt = Ref(model.parameters(), lr=0.1)
    opt.param_groups[0]["k"] = 0.5
    higher_core.register_optim(Ref, _Counting)
    try:
        with higher_core.innerloop_ctx(model, opt) as (fmodel, diffopt):
            assert "k" not in diffopt.param_groups[0]
            diffopt.step(_loss(fmodel), override={"lr": [torch.tensor(0.25, dtype=DT, requires_grad=True)]})
            assert diffopt.group_state[0]["k"].requires_grad
            diffopt.truncate()
            assert not diffopt.group_state[0]["k"].requires_grad
            diffopt.step(_loss(fmodel))
            diffopt.export_state(opt)
    finally:
        higher_core.unregister_optim(Ref)
    assert opt.param_groups[0]["k"] == pytest.approx(0.5 + 0.25 + 0.1, rel=1e-15)


class _ComplexRule(higher_core.optim.DifferentiableOptimizer):
    def update_one(self, group, param, grad, state):
        return param - group["lr"] * grad, {**state, "seen": param.dtype}


@pytest.mark.parametrize(("mode", "dtype"), [("native", torch.complex128), ("real_view", DT)])
def test_complex_parameters_modes(mode, dtype):
    rule = type("Rule", (_ComplexRule,), {"complex_parameters": mode})
    weight = torch.randn(3, dtype=torch.complex128, requires_grad=True)
    opt = torch.optim.SGD([weight], lr=0.1)
    diffopt = rule(opt, [weight])
    new = diffopt.step((weight.abs() ** 2).sum(), params=[weight])
    assert diffopt.param_state[0]["seen"] == dtype and new[0].dtype == torch.complex128
    grad = torch.autograd.grad((weight.abs() ** 2).sum(), weight)[0]
    torch.testing.assert_close(new[0], weight - 0.1 * grad, rtol=1e-15, atol=0)


def test_complex_parameters_refused_by_default():
    weight = torch.randn(3, dtype=torch.complex128, requires_grad=True)
    diffopt = _ComplexRule(torch.optim.SGD([weight], lr=0.1), [weight])
    with pytest.raises(ValueError, match="_ComplexRule does not support complex parameters"):
        diffopt.step((weight.abs() ** 2).sum(), params=[weight])


def test_complex_as_real_is_a_deprecated_alias():
    with pytest.warns(DeprecationWarning, match="complex_parameters = 'real_view'"):
        class Old(_ComplexRule):
            complex_as_real = True
    assert Old.complex_parameters == "real_view"


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
