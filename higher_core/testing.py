"""Checks that a differentiable optimizer matches its reference optimizer.

Plain functions, usable from any test suite (a third-party plugin's too): each
builds a small float64 problem with two param groups, runs the reference
optimizer (e.g. ``torch.optim.Adam``) and the registered differentiable one
side by side, and raises ``AssertionError`` on the first mismatch.

Example:
    >>> import torch
    >>> from higher_core.testing import assert_parity, assert_gradcheck
    >>> assert_parity(torch.optim.SGD, {"lr": 0.1, "momentum": 0.9})
    >>> assert_gradcheck(torch.optim.SGD, {"lr": 0.1, "momentum": 0.9})
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from higher_core._optimizer import DifferentiableOptimizer
from higher_core.optim import get_diff_optim

__all__ = [
    "Problem",
    "make_problem",
    "assert_parity",
    "assert_gradcheck",
    "assert_finite_meta_gradients",
    "assert_frozen_and_unused_unchanged",
    "run_reference",
]

SHAPES: tuple[tuple[int, ...], ...] = ((3, 2), (2,), (2, 2))
"""Shapes of the parameters: the first two form group 0, the last group 1."""


class Problem:
    """A small deterministic float64 problem: parameters, data and a loss.

    The loss has ReLU units that are dead for part of the data, so some
    gradient entries are exactly zero.
    """

    def __init__(self, seed: int = 0, shapes: Sequence[tuple[int, ...]] = SHAPES) -> None:
        g = torch.Generator().manual_seed(seed)
        self.initial = [torch.randn(*s, generator=g, dtype=torch.float64) for s in shapes]
        self.data = [torch.randn(*s, generator=g, dtype=torch.float64) for s in shapes]

    def loss(self, params: Sequence[torch.Tensor]) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float64)
        for p, d in zip(params, self.data):
            total = total + (torch.relu(p * d + 0.25) ** 2).sum() + 0.5 * (p * d).sin().sum()
        return total

    def leaves(self) -> list[torch.Tensor]:
        return [p.clone().requires_grad_() for p in self.initial]

    def groups(self, params: Sequence[torch.Tensor], kwargs: Mapping[str, Any],
               second_group: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Two param groups; the second scales ``lr`` by 0.5 unless told otherwise."""
        second = dict(second_group) if second_group is not None else (
            {"lr": kwargs["lr"] * 0.5} if isinstance(kwargs.get("lr"), float) else {}
        )
        return [{"params": list(params[:-1])}, {"params": [params[-1]], **second}]


def make_problem(seed: int = 0) -> Problem:
    """The default :class:`Problem`."""
    return Problem(seed)


def run_reference(opt_type: type[torch.optim.Optimizer], kwargs: Mapping[str, Any], problem: Problem,
                  steps: int, warmup: int = 0) -> tuple[torch.optim.Optimizer, list[torch.Tensor]]:
    """Build the reference optimizer on fresh leaves and take ``warmup`` steps."""
    params = problem.leaves()
    opt = opt_type(problem.groups(params, kwargs), **kwargs)
    for _ in range(warmup):
        _reference_step(opt, params, problem)
    return opt, params


def _reference_step(opt: torch.optim.Optimizer, params: list[torch.Tensor], problem: Problem) -> None:
    opt.zero_grad()
    problem.loss(params).backward()
    opt.step()


def _compare(name: str, ours: Any, theirs: Any, rtol: float, atol: float) -> None:
    if isinstance(theirs, torch.Tensor) and theirs.numel() == 1 and not isinstance(ours, torch.Tensor):
        theirs = theirs.item()
    if isinstance(theirs, torch.Tensor):
        torch.testing.assert_close(torch.as_tensor(ours).detach(), theirs.detach(), rtol=rtol, atol=atol,
                                   msg=lambda m: f"{name}: {m}")
    elif theirs is not None:
        assert ours == theirs or abs(ours - theirs) <= atol + rtol * abs(theirs), f"{name}: {ours} != {theirs}"


def assert_parity(opt_type: type[torch.optim.Optimizer], kwargs: Mapping[str, Any], *, steps: int = 10,
                  warmup: int = 0, rtol: float = 1e-10, atol: float = 1e-12, seed: int = 0,
                  override: Mapping[str, Any] | None = None) -> None:
    """Parameters and optimizer state match the reference after each of ``steps`` steps.

    ``warmup`` reference steps are taken first; the differentiable optimizer then
    continues from the reference's state (pre-trained moments continue exactly).
    """
    problem = Problem(seed)
    opt, ref_params = run_reference(opt_type, kwargs, problem, steps, warmup)
    fast = [p.detach().clone().requires_grad_() for p in ref_params]
    diffopt = get_diff_optim(opt, ref_params, override=override)
    for step in range(steps):
        fast = diffopt.step(problem.loss(fast), params=fast)
        _reference_step(opt, ref_params, problem)
        for i, (ours, theirs) in enumerate(zip(fast, ref_params)):
            _compare(f"step {step + 1}, param {i}", ours, theirs, rtol, atol)
            for key, value in opt.state[theirs].items():
                assert key in diffopt.state[i], f"step {step + 1}, param {i}: state {key!r} missing"
                _compare(f"step {step + 1}, param {i}, state {key!r}", diffopt.state[i][key], value, rtol, atol)


def _unroll(opt_type: type[torch.optim.Optimizer], kwargs: Mapping[str, Any], problem: Problem,
            steps: int) -> Callable[..., torch.Tensor]:
    """A function of (initial weights..., override tensors...) -> final loss after ``steps`` steps."""
    opt, ref_params = run_reference(opt_type, kwargs, problem, 0)

    def unrolled(*inputs: torch.Tensor, override: Mapping[str, Any] | None = None) -> torch.Tensor:
        diffopt = get_diff_optim(opt, ref_params, override=override)
        fast = list(inputs)
        for _ in range(steps):
            fast = diffopt.step(problem.loss(fast), params=fast)
        return problem.loss(fast)

    return unrolled


def assert_gradcheck(opt_type: type[torch.optim.Optimizer], kwargs: Mapping[str, Any], *, steps: int = 2,
                     hyperparameters: Sequence[str] = ("lr",), seed: int = 0,
                     gradgrad: bool = True) -> None:
    """``gradcheck`` (and ``gradgradcheck``) through ``steps`` unrolled steps.

    With respect to the initial weights, and to each named hyperparameter given
    as a float64 tensor override (a tuple hyperparameter such as ``betas`` is
    checked entry by entry).
    """
    problem = Problem(seed)
    unrolled = _unroll(opt_type, kwargs, problem, steps)
    initial = problem.leaves()
    assert torch.autograd.gradcheck(unrolled, tuple(initial)), "gradcheck w.r.t. initial weights"
    if gradgrad:
        assert torch.autograd.gradgradcheck(unrolled, tuple(initial)), "gradgradcheck w.r.t. initial weights"
    opt, _ = run_reference(opt_type, kwargs, problem, 0)
    for name in hyperparameters:
        value = opt.param_groups[0][name]
        values = value if isinstance(value, tuple) else (value,)
        for k in range(len(values)):
            def of_hyperparameter(h: torch.Tensor, name: str = name, k: int = k) -> torch.Tensor:
                entries = list(values)
                entries[k] = h
                hv = tuple(entries) if isinstance(value, tuple) else entries[0]
                return unrolled(*problem.leaves(), override={name: [hv]})
            h = torch.tensor(float(values[k]), dtype=torch.float64, requires_grad=True)
            assert torch.autograd.gradcheck(of_hyperparameter, (h,)), f"gradcheck w.r.t. {name}[{k}]"


def assert_finite_meta_gradients(opt_type: type[torch.optim.Optimizer], kwargs: Mapping[str, Any], *,
                                 steps: int = 3, seed: int = 0) -> None:
    """With exact zeros in the gradients, meta-gradients are finite under anomaly detection.

    Some parameters meet only dead ReLU units (their gradient is exactly zero)
    and forward numbers still match the reference.
    """
    problem = Problem(seed)
    problem.data[1] = torch.zeros_like(problem.data[1])  # param 1: gradient exactly zero
    problem.data[0][0] = 0.0  # a row of exact zeros in param 0's gradient
    opt, ref_params = run_reference(opt_type, kwargs, problem, 0)
    initial = problem.leaves()
    with torch.autograd.set_detect_anomaly(True):
        diffopt = get_diff_optim(opt, ref_params)
        fast = list(initial)
        for _ in range(steps):
            fast = diffopt.step(problem.loss(fast), params=fast)
            _reference_step(opt, ref_params, problem)
        for i, (ours, theirs) in enumerate(zip(fast, ref_params)):
            _compare(f"param {i} with zero gradients", ours, theirs, 1e-10, 1e-12)
        meta = torch.autograd.grad(problem.loss(fast), initial)
    for i, g in enumerate(meta):
        assert torch.isfinite(g).all(), f"meta-gradient of param {i} is not finite: {g}"


def assert_frozen_and_unused_unchanged(opt_type: type[torch.optim.Optimizer], kwargs: Mapping[str, Any],
                                       *, steps: int = 3, seed: int = 0) -> DifferentiableOptimizer:
    """A fast weight that does not require grad, and one the loss does not reach, stay unchanged."""
    problem = Problem(seed)
    opt, ref_params = run_reference(opt_type, kwargs, problem, 0)
    diffopt = get_diff_optim(opt, ref_params)
    fast = problem.leaves()
    fast[0] = fast[0].detach()  # frozen
    unused = fast[2]
    for _ in range(steps):
        fast = diffopt.step(problem.loss(fast[:2]), params=fast)
    assert torch.equal(fast[0], problem.initial[0]), "a frozen parameter changed"
    assert fast[2] is unused, "a parameter the loss does not reach changed"
    assert 0 not in diffopt.state and 2 not in diffopt.state, "state was created for a parameter with no gradient"
    return diffopt
