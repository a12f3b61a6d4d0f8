"""The conformance kit catches what it claims to: toy optimizers with one deliberate defect each.

``Toy`` is a reference with momentum whose step adds ``relu(m) / (relu(m) + eps)``
(``0 / 0`` at a probe ``eps = 0``, as Adam's ``m / (sqrt(v) + eps)`` at a zero gradient); ``ToyRule`` is its correct
differentiable rule. Each variant of the rule breaks one thing, and the check
that should catch it must fail with a message naming it.
"""

from __future__ import annotations

import subprocess
import sys
from contextlib import contextmanager
from dataclasses import replace

import pytest
import torch
from torch.autograd.gradcheck import GradcheckError

import higher_core
from higher_core.functional import foreach_mul
from higher_core.optim import DifferentiableOptimizer
from higher_core.testing import (
    ErrorOptimizerInput,
    NotApplicable,
    OptimizerInfo,
    OptimizerInput,
    check_complex,
    check_error_input,
    check_hypergradients,
    check_implementation_flags,
    check_no_mutation,
    check_parity,
    check_registered,
    run_check,
    run_conformance,
)


class Toy(torch.optim.Optimizer):
    """SGD with momentum whose step adds ``relu(m) / (relu(m) + eps)``."""

    def __init__(self, params, lr=0.1, momentum=0.5, eps=1e-6, strict=False):
        if lr < 0:
            raise ValueError(f"Invalid learning rate: {lr}")
        super().__init__(params, {"lr": lr, "momentum": momentum, "eps": eps, "strict": strict})

    @torch.no_grad()
    def step(self, closure=None):
        with torch.enable_grad():
            loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                buf = state.get("momentum_buffer", torch.zeros_like(p)) * group["momentum"] + p.grad
                state["momentum_buffer"] = buf
                p.sub_(group["lr"] * (buf + self.extra(buf, group)))
        return loss

    @staticmethod
    def extra(buf, group):
        """What the step adds to the momentum: ``relu(m) / (relu(m) + eps)``."""
        pos = buf.clamp(min=0)
        return pos / (pos + group["eps"])


class ToyTrain(Toy):
    """A reference that must be put in train mode before it steps (as schedule-free optimizers)."""

    def train(self):
        self.training = True

    def step(self, closure=None):
        if not getattr(self, "training", False):
            raise RuntimeError("call opt.train() before opt.step()")
        return super().step(closure)


class ToyRule(DifferentiableOptimizer):
    tensor_hyperparameters = ("lr", "eps")

    def check_param_groups(self, param_groups):
        for group in param_groups:
            if group["strict"]:
                raise ValueError("strict=True is not supported")

    def init_state(self, param, group):
        return {"momentum_buffer": torch.zeros_like(param)}

    def update_one(self, group, param, grad, state):
        buf = state["momentum_buffer"] * group["momentum"] + grad
        pos = torch.relu(buf)
        return param - group["lr"] * (buf + pos / (pos + group["eps"])), {"momentum_buffer": buf}


class MutatingRule(ToyRule):
    def update_one(self, group, param, grad, state):
        new_param, new_state = super().update_one(group, param, grad, state)
        state["momentum_buffer"].copy_(grad)  # the quiet bug: the numbers stay right
        return new_param, new_state


class NoInitState(ToyRule):
    def init_state(self, param, group):
        return {}


class RefusesComplex(ToyRule):
    complex_parameters = "refuse"


class DetachedLr(ToyRule):
    def update_one(self, group, param, grad, state):
        lr = group["lr"].detach() if isinstance(group["lr"], torch.Tensor) else group["lr"]
        return super().update_one({**group, "lr": lr}, param, grad, state)


ROW = OptimizerInput({"lr": 0.1, "momentum": 0.5}, "momentum")
INFO = OptimizerInfo(Toy, [ROW], steps=3, differentiable=ToyRule)


class _Plugin:
    def __init__(self, reference, rule):
        self.offered = {reference: rule}

    @higher_core.hookimpl
    def higher_core_optimizers(self):
        return self.offered


#: every plugin object made here stays alive: the host notices a change of plugins by their ids,
#: which a new object could otherwise reuse
_MADE: list[_Plugin] = []


@contextmanager
def plugged(rule, reference=Toy):
    _MADE.append(_Plugin(reference, rule))
    name = higher_core.register_plugin(_MADE[-1])
    try:
        yield
    finally:
        higher_core.unregister_plugin(name)


def test_the_correct_toy_passes_the_checks_the_variants_fail():
    with plugged(ToyRule):
        result = run_conformance(INFO, checks=("parity", "no_mutation", "hypergradients", "truncate"))
    assert result == {"rows": 1, "checks": 5, "not_applicable": 1}  # Toy takes no implementation flag


def test_no_mutation_catches_a_quiet_in_place_copy():
    with plugged(MutatingRule):
        check_parity(INFO, ROW)  # the numbers are right
        with pytest.raises(AssertionError, match=r"modified state\[\d+\]\['momentum_buffer'\] in place"):
            check_no_mutation(INFO, ROW)


def test_a_missing_init_state_is_named():
    with plugged(NoInitState), pytest.raises(
        AssertionError, match="read state key 'momentum_buffer' that init_state did not create; implement init_state"
    ):
        check_parity(INFO, ROW)


def test_a_failure_names_the_row_the_check_and_the_hyperparameter():
    with plugged(DetachedLr), pytest.raises(
        AssertionError, match=r"Toy\[momentum\], check 'hypergradients': .*gradcheck w\.r\.t\. hyperparameter lr=0\.1"
    ):
        run_check(INFO, "hypergradients", ROW)


def test_the_hypergradient_probe_stays_inside_the_range():
    # gradcheck's central difference would probe eps=1e-6 at exactly 0, where relu(m) / (relu(m) + eps)
    # is 0 / 0 for the entries with m <= 0
    m = torch.tensor([-1.0, 0.5], dtype=torch.float64)
    with pytest.raises(GradcheckError, match=r"numerical:tensor\(\[\[nan"):
        h = torch.tensor(1e-6, dtype=torch.float64, requires_grad=True)
        torch.autograd.gradcheck(lambda e: (torch.relu(m) / (torch.relu(m) + e)).sum(), (h,))
    with plugged(ToyRule):
        assert check_hypergradients(INFO, ROW) == ["lr", "eps"]


def test_error_rows_are_checked_on_the_side_they_name():
    refused = ErrorOptimizerInput({"lr": -0.1}, ValueError, "Invalid learning rate", "negative lr")
    ours = ErrorOptimizerInput({"lr": 0.1, "strict": True}, ValueError, "strict=True is not supported", "strict",
                               raised_by="differentiable")
    with plugged(ToyRule):
        check_error_input(INFO, refused)
        check_error_input(INFO, ours)
        with pytest.raises(AssertionError, match='accepted .*mark the row raised_by="differentiable"'):
            check_error_input(INFO, replace(ours, raised_by="reference"))
        with pytest.raises(AssertionError, match='refused .*mark the row raised_by="reference"'):
            check_error_input(INFO, replace(refused, raised_by="differentiable"))
    with pytest.raises(ValueError, match="raised_by='torch'"):
        ErrorOptimizerInput({}, ValueError, "", "bad side", raised_by="torch")


def test_a_declared_refusal_of_complex_parameters_is_checked():
    # without the declaration the refusal is a failure (a ValueError from the first step)
    with plugged(RefusesComplex):
        check_complex(INFO, ROW)


def test_a_check_that_does_not_apply_says_why():
    with plugged(ToyRule), pytest.raises(NotApplicable, match="accepts none of foreach, fused"):
        check_implementation_flags(INFO)


def test_the_reference_is_prepared_before_it_steps():
    info = OptimizerInfo(ToyTrain, [ROW], steps=3, hyperparameters=("lr",), prepare=lambda opt: opt.train())
    with plugged(ToyRule, ToyTrain):
        assert run_conformance(info, checks=("parity", "hypergradients", "export_state"))["checks"] == 4
        with pytest.raises(AssertionError, match="call opt.train"):
            run_check(replace(info, prepare=None), "parity", ROW)


def test_check_registered_needs_the_plugin_host():
    with plugged(ToyRule):
        assert check_registered(INFO).startswith("runtime plugin")
    higher_core.register_optim(Toy, ToyRule)
    try:
        with pytest.raises(AssertionError, match="no installed plugin lists ToyRule for Toy"):
            check_registered(INFO)
    finally:
        higher_core.unregister_optim(Toy)
    with plugged(MutatingRule), pytest.raises(AssertionError, match="resolves to MutatingRule, not ToyRule"):
        check_registered(INFO)


AUTHOR_TEST = """
import torch, higher_core
from higher_core.optim import DifferentiableOptimizer
from higher_core.testing import OptimizerInfo, OptimizerInput, conformance_tests

class Tiny(torch.optim.SGD):
    pass

class DifferentiableTiny(DifferentiableOptimizer):
    def update_one(self, group, param, grad, state):
        return param - group["lr"] * grad, state

class Plugin:
    @higher_core.hookimpl
    def higher_core_optimizers(self):
        return {Tiny: DifferentiableTiny}

higher_core.register_plugin(Plugin())
test_tiny = conformance_tests(OptimizerInfo(Tiny, [OptimizerInput({"lr": 0.1}, "plain")]),
                              checks=("parity", "no_mutation", "group_statistics"))
"""


def test_an_author_runs_the_kit_in_their_own_pytest(tmp_path):
    (tmp_path / "test_tiny.py").write_text(AUTHOR_TEST)
    (tmp_path / "pytest.ini").write_text("[pytest]\nfilterwarnings = error\n")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "--strict-markers", str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, check=False,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "4 passed, 1 skipped" in out, out  # parity, no_mutation, registered, flags; group_statistics n/a
    assert "Tiny[plain]: group_statistics does not apply" in out, out


def test_a_problem_takes_a_0d_parameter():
    problem = higher_core.testing.Problem([(2,), ()])
    assert [tuple(p.shape) for p in problem.initial] == [(2,), ()]
    assert problem.loss(problem.leaves()).dim() == 0
    info = replace(INFO, shapes=((3,), ()))  # the 0-d parameter forms group 1 on its own
    with plugged(ToyRule):
        result = run_conformance(info, checks=("parity", "hypergradients", "export_state", "truncate"))
    assert result == {"rows": 1, "checks": 5, "not_applicable": 1}  # Toy takes no implementation flag


def test_a_declared_refusal_of_complex_parameters_wins_over_an_old_update_complex():
    with pytest.warns(DeprecationWarning, match="defines _update_complex, which the base class no longer calls"):
        class OldComplex(ToyRule):
            complex_parameters = "refuse"

            def _update_complex(self, group, params, grads, states):  # the old private hook: steps them anyway
                return self.update(group, params, grads, states)

    problem = higher_core.testing.Problem(INFO.shapes, dtype=torch.complex128)
    params = problem.leaves()
    with plugged(OldComplex):
        diffopt = higher_core.get_diff_optim(Toy(params, lr=0.1), params)
        with pytest.raises(ValueError, match=r"OldComplex does not support complex parameters .*"
                                             r"complex_parameters = 'refuse'"):
            diffopt.step(problem.loss(params), params=params)
        check_complex(INFO, ROW)  # the kit's complex check sees the refusal


class SqrtToy(Toy):
    """Toy whose step adds ``sqrt(relu(m) + eps)``: an ``eps`` under a square root, curved on the scale of eps."""

    @staticmethod
    def extra(buf, group):
        return (buf.clamp(min=0) + group["eps"]).sqrt()


class SqrtToyRule(ToyRule):
    def update_one(self, group, param, grad, state):
        buf = state["momentum_buffer"] * group["momentum"] + grad
        return param - group["lr"] * (buf + (torch.relu(buf) + group["eps"]).sqrt()), {"momentum_buffer": buf}


def test_the_hypergradient_probe_steps_on_the_scale_of_a_small_value():
    # a one-sided difference with step 1e-6 at eps=1e-6 reads sqrt's derivative 7% low (462 for 500)
    from higher_core.testing._checks import probe_step

    assert probe_step(0.1) == 1e-6 and probe_step(0.0) == 1e-6 and probe_step(1e-6) == pytest.approx(5e-8)
    info = OptimizerInfo(SqrtToy, [ROW], steps=3, differentiable=SqrtToyRule)
    with plugged(SqrtToyRule, SqrtToy):
        run_check(info, "parity", ROW)
        assert check_hypergradients(info, ROW) == ["lr", "eps"]
        # leaving a hyperparameter out of the probe: list the ones to check, for a row or the table
        assert check_hypergradients(info, replace(ROW, hyperparameters=("lr",))) == ["lr"]
        assert check_hypergradients(replace(info, hyperparameters=()), ROW) == []


class OwnStep(ToyRule):
    """A rule with its own step (as LBFGS re-evaluates a closure): it cannot run batched over tasks."""

    def step(self, loss, params=None, override=None, grad_callback=None, **kwargs):
        return super().step(loss, params, override, grad_callback, **kwargs)


def test_batched_tasks_are_a_kit_check_of_every_row():
    assert "batched" in higher_core.testing.CHECKS and "check_batched" in higher_core.testing.__all__
    with plugged(ToyRule):
        # every check but group_statistics, flat_weights (scope "global"), vectorised (update_one alone) and
        # the flags applies: batched too
        assert run_conformance(INFO) == {"rows": 1, "checks": len(higher_core.testing.CHECKS) + 2 - 4,
                                         "not_applicable": 4}
        run_check(INFO, "batched", ROW)  # four tasks at once equal four inner loops, shared and per-task lr
    with plugged(OwnStep), pytest.raises(NotApplicable, match=r"Toy\[momentum\]: batched does not apply: .*"
                                                               r"has its own step .* cannot be batched"):
        run_check(INFO, "batched", ROW)
    with plugged(ToyRule), pytest.raises(NotApplicable, match="batched does not apply: no tasks here"):
        run_check(replace(INFO, skips={"batched": "no tasks here"}), "batched", ROW)


class VectorisedToy(ToyRule):
    """ToyRule with a multi-tensor ``update`` beside its ``update_one``: the same rule."""

    def update(self, group, params, grads, states):
        bufs = torch._foreach_add(foreach_mul([s["momentum_buffer"] for s in states], group["momentum"]), grads)
        pos = [torch.relu(b) for b in bufs]
        directions = torch._foreach_add(bufs, [q / (q + group["eps"]) for q in pos])
        return torch._foreach_sub(params, foreach_mul(directions, group["lr"])), [
            {**s, "momentum_buffer": b} for s, b in zip(states, bufs)]


class VectorisedWrongly(ToyRule):
    """A multi-tensor ``update`` one part in 1e9 away from its ``update_one``."""

    def update(self, group, params, grads, states):
        new, states = super().update(group, params, grads, states)
        return [p * (1 + 1e-9) for p in new], states


def test_the_vectorised_form_is_checked_against_update_one():
    assert "vectorised" in higher_core.testing.CHECKS and "check_vectorised" in higher_core.testing.__all__
    with plugged(VectorisedToy):
        run_check(INFO, "vectorised", ROW)
    with plugged(VectorisedWrongly), pytest.raises(AssertionError,
                                                   match=r"vectorised: fast weight 0 \(update against update_one\)"):
        run_check(INFO, "vectorised", ROW)
    with plugged(ToyRule), pytest.raises(NotApplicable, match="written as update_one alone"):
        run_check(INFO, "vectorised", ROW)
