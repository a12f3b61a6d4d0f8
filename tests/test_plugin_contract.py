"""What outside plugin authors hit when they wrote plugins from the docs: the base class's contract.

Each reference here is a small third-party-style optimizer (not from ``torch.optim``) with one
habit: it counts its constructions, counts steps with a Python int, or keeps an option on the
instance instead of in its param groups.
"""

from __future__ import annotations

import math

import pytest
import torch

import higher_core
from higher_core.optim import DifferentiableOptimizer

DT = torch.float64


class Counted(torch.optim.Optimizer):
    """Plain SGD whose constructor counts its calls (as one that prints a banner would show them)."""

    constructed = 0

    def __init__(self, params, lr=0.1):
        type(self).constructed += 1
        if not lr >= 0:
            raise ValueError(f"Invalid learning rate: {lr}")
        super().__init__(params, {"lr": lr})


class PlainRule(DifferentiableOptimizer):
    scope = "element"

    def update_one(self, group, param, grad, state):
        return param - group["lr"] * grad, state


@pytest.fixture
def registered():
    made = []

    def register(reference, rule):
        higher_core.register_optim(reference, rule)
        made.append(reference)

    yield register
    for reference in made:
        higher_core.unregister_optim(reference)


def _weight() -> torch.Tensor:
    return torch.tensor([1.0, -2.0, 0.5], dtype=DT, requires_grad=True)


def test_a_step_override_is_validated_once_per_distinct_value(registered):
    registered(Counted, PlainRule)
    w = _weight()
    diffopt = higher_core.get_diff_optim(Counted([w], lr=0.1), [w])
    learned = torch.tensor(0.03, dtype=DT, requires_grad=True)
    fast = [w]
    overrides = [0.05, torch.tensor(0.05, dtype=DT), learned, 0.07]  # a new 0-d tensor each time: keyed on its value
    before = Counted.constructed
    for _ in range(5):
        for value in overrides:
            fast = diffopt.step((fast[0] ** 2).sum(), params=fast, override={"lr": [value]})
    # 0.05 (a number or a tensor), the learned value's group value (0.1: it is not probed itself), 0.07
    assert Counted.constructed - before <= 3
    with pytest.raises(ValueError, match="refuses these values: Invalid learning rate: -0.1"):
        diffopt.step((fast[0] ** 2).sum(), params=fast, override={"lr": [-0.1]})
    assert fast[0].grad_fn is not None  # the step kept its graph: nothing cached holds or cuts it


class IntCount(torch.optim.Optimizer):
    """Bias-corrected momentum that counts steps with a Python int (as much research code does)."""

    def __init__(self, params, lr=0.1, beta=0.9):
        super().__init__(params, {"lr": lr, "beta": beta})

    @torch.no_grad()
    def step(self, closure=None):
        with torch.enable_grad():
            loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                state["step"] = state.get("step", 0) + 1
                state["m"] = state.get("m", torch.zeros_like(p)) * group["beta"] + p.grad
                p.sub_(group["lr"] * state["m"] / (1 - group["beta"] ** state["step"]))
        return loss


class IntCountRule(DifferentiableOptimizer):
    scope = "element"
    start = 0.0  # as the built-in plugins count; the type of ``step`` the reference holds is exported

    def init_state(self, param, group):
        return {"step": self.start, "m": torch.zeros_like(param)}

    def update_one(self, group, param, grad, state):
        step = state["step"] + 1
        m = state["m"] * group["beta"] + grad
        return param - group["lr"] * m / (1 - group["beta"] ** step), {"step": step, "m": m}


class IntCountIntRule(IntCountRule):
    start = 0


@pytest.mark.parametrize("rule", [IntCountRule, IntCountIntRule])
def test_export_state_writes_step_in_the_type_the_reference_holds(registered, rule):
    from higher_core.testing import OptimizerInfo, OptimizerInput, run_check

    registered(IntCount, rule)
    row = OptimizerInput({"lr": 0.1, "beta": 0.9}, "default")
    run_check(OptimizerInfo(IntCount, [row], steps=3), "export_state", row)  # a float32 step: 6.0 relative
    w = _weight()
    opt = IntCount([w])
    diffopt = higher_core.get_diff_optim(opt, [w])
    fast = diffopt.step((w ** 2).sum(), params=[w])
    diffopt.export_state(opt)
    assert type(opt.state[w]["step"]) is int  # nothing tells (no state, not torch.optim): a Python count
    w.grad = torch.ones_like(w)
    opt.step()
    assert opt.state[w]["step"] == 2
    diffopt = higher_core.get_diff_optim(opt, [w])  # the reference holds an int now: an int it is
    diffopt.step((fast[0] ** 2).sum(), params=fast)
    diffopt.export_state(opt)
    assert type(opt.state[w]["step"]) is int and opt.state[w]["step"] == 3


def test_export_state_writes_torch_optimizers_step_as_a_tensor():
    w = _weight()
    opt = torch.optim.Adam([w], lr=0.1)
    diffopt = higher_core.get_diff_optim(opt, [w])
    diffopt.step((w ** 2).sum(), params=[w])
    diffopt.export_state(opt)
    step = opt.state[w]["step"]
    assert isinstance(step, torch.Tensor) and step.dim() == 0 and step.dtype == torch.float32 and step == 1


class OnTheInstance(torch.optim.Optimizer):
    """SGD that keeps an option on the instance, not in its param groups (as AdaBelief keeps ``rectify``)."""

    def __init__(self, params, lr=0.1, halve=False):
        super().__init__(params, {"lr": lr})
        self.halve = halve

    @torch.no_grad()
    def step(self, closure=None):
        with torch.enable_grad():
            loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.sub_(group["lr"] * (0.5 if self.halve else 1.0) * p.grad)
        return loss


class OnTheInstanceRule(DifferentiableOptimizer):
    scope = "element"

    def import_options(self, other):
        return {"halve": other.halve}

    def check_param_groups(self, param_groups):
        assert "halve" in self.options  # read before the groups are checked

    def update_one(self, group, param, grad, state):
        return param - group["lr"] * (0.5 if self.options["halve"] else 1.0) * grad, state


def test_options_kept_on_the_reference_instance_reach_the_rule(registered):
    from higher_core.testing import OptimizerInfo, OptimizerInput, run_check

    registered(OnTheInstance, OnTheInstanceRule)
    rows = [OptimizerInput({"lr": 0.1}, "default"), OptimizerInput({"lr": 0.1, "halve": True}, "halve")]
    info = OptimizerInfo(OnTheInstance, rows, steps=3)
    for row in rows:
        for check in ("parity", "export_state", "flat_weights"):
            run_check(info, check, row)
    w = _weight()
    diffopt = higher_core.get_diff_optim(OnTheInstance([w], halve=True), [w])
    assert diffopt.options == {"halve": True}
    (new,) = diffopt.step((w ** 2).sum(), params=[w])
    torch.testing.assert_close(new, w - 0.1 * 0.5 * 2 * w, rtol=0, atol=0)


def test_the_plugin_guide_lists_every_class_attribute_with_its_default():
    import pathlib
    import typing

    guide = (pathlib.Path(__file__).parents[1] / "docs" / "plugin-guide.md").read_text()
    hints = typing.get_type_hints(DifferentiableOptimizer, include_extras=True)
    declared = sorted(name for name, hint in hints.items()
                      if not name.startswith("_") and typing.get_origin(hint) is typing.ClassVar)
    assert declared == ["complex_parameters", "flat_weights", "fused", "scope", "tensor_hyperparameters"]
    rows = {line.split("|")[1].strip(" `"): line for line in guide.splitlines() if line.startswith("| `")}
    for name in declared:
        assert name in rows, f"docs/plugin-guide.md does not list the class attribute {name}"
        assert f"`{getattr(DifferentiableOptimizer, name)!r}`" in rows[name].replace('"', "'"), rows[name]
    assert "**deprecated**" in rows["complex_as_real"]
    assert "import_options" in guide and "export_param_state" in guide and "hyperparameters=" in guide
