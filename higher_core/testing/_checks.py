"""The checks of the conformance suite, one function per check.

Each takes an :class:`~higher_core.testing.OptimizerInfo` and one of its
:class:`~higher_core.testing.OptimizerInput` rows, builds a small problem with
two param groups (float64 but in ``check_complex`` and ``check_float32``), runs
the reference optimizer and the registered differentiable optimizer side by
side, and raises ``AssertionError`` on the first mismatch. Each also takes an
optional ``device`` (default: the CPU) on which the problem, the reference and
the differentiable optimizer run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch.autograd.gradcheck import GradcheckError

from higher_core.optim import get_diff_optim
from higher_core.testing._problem import (  # noqa: F401 - _groups re-exported for tests/test_cuda.py
    NotApplicable,
    Problem,
    _compare,
    _diff_step,
    _groups,
    _reference,
    _reference_step,
)
from higher_core.testing._table import OptimizerInfo, OptimizerInput

__all__ = [
    "check_parity",
    "check_gradcheck",
    "check_hypergradients",
    "check_finite_meta_gradients",
    "check_continue_from_reference",
    "check_frozen_and_unused",
    "check_complex",
    "check_float32",
]


def _assert_same_trajectory(info: OptimizerInfo, row: OptimizerInput, warmup: int,
                            dtype: torch.dtype = torch.float64,
                            device: torch.device | str | None = None,
                            tolerances: tuple[float, float] | None = None) -> None:
    rtol, atol = tolerances if tolerances is not None else (info.rtol, info.atol)
    problem = Problem(info.shapes, dtype=dtype, device=device)
    opt, ref_params = _reference(info, row, problem, warmup)
    fast = [p.detach().clone().requires_grad_() for p in ref_params]
    diffopt = get_diff_optim(opt, ref_params)
    for step in range(1, info.steps + 1):
        fast = _diff_step(info, diffopt, problem, fast)
        _reference_step(opt, ref_params, problem)
        for i, (ours, theirs) in enumerate(zip(fast, ref_params)):
            where = f"{info.name}[{row.desc}] step {step}, param {i}"
            _compare(where, ours, theirs, rtol, atol)
            ref_state = opt.state[theirs]
            for key, value in ref_state.items():
                assert key in diffopt.param_state.get(i, {}), f"{where}: state {key!r} missing"
                _compare(f"{where}, state {key!r}", diffopt.param_state[i][key], value, rtol, atol)


def check_parity(info: OptimizerInfo, row: OptimizerInput, device: torch.device | str | None = None) -> None:
    """Parameters and state equal the reference's after each of ``info.steps`` steps."""
    _assert_same_trajectory(info, row, warmup=0, device=device)


def check_continue_from_reference(info: OptimizerInfo, row: OptimizerInput,
                                  device: torch.device | str | None = None) -> None:
    """Built from a reference that already took 3 steps, the trajectory continues identically."""
    _assert_same_trajectory(info, row, warmup=3, device=device)


def check_complex(info: OptimizerInfo, row: OptimizerInput, device: torch.device | str | None = None) -> None:
    """With complex128 parameters, parameters and state equal the reference's (as for parity).

    A differentiable class that declares ``complex_parameters = "refuse"`` must
    instead refuse them at its first step with a ``ValueError`` that says so.
    """
    if row.kwargs.get("fused"):
        raise NotApplicable("torch's fused kernels do not take complex parameters")
    problem = Problem(info.shapes, dtype=torch.complex128, device=device)
    opt, ref_params = _reference(info, row, problem)
    diffopt = get_diff_optim(opt, ref_params)
    if getattr(type(diffopt), "complex_parameters", None) == "refuse":
        try:
            _diff_step(info, diffopt, problem, problem.leaves())
        except ValueError as exc:
            assert "complex" in str(exc), f"complex parameters refused without saying why: {exc}"
            return
        raise AssertionError('complex_parameters = "refuse", but a step with complex parameters was taken')
    _assert_same_trajectory(info, row, warmup=0, dtype=torch.complex128, device=device)


def check_float32(info: OptimizerInfo, row: OptimizerInput, device: torch.device | str | None = None) -> None:
    """With float32 parameters (the parity problem, cast), parameters and state equal the
    reference's, at ``info.rtol32`` and ``info.atol32``, with the reference's dtypes."""
    _assert_same_trajectory(info, row, warmup=0, dtype=torch.float32, device=device,
                            tolerances=(info.rtol32, info.atol32))


def _unrolled(info: OptimizerInfo, row: OptimizerInput, problem: Problem,
              steps: int) -> tuple[Callable[..., torch.Tensor], Callable[[], tuple[torch.Tensor, ...]]]:
    """The loss after ``steps`` differentiable steps, as a function of the starting weights,
    and a maker of fresh starting weights (the reference's after ``info.gradcheck_warmup`` steps)."""
    opt, ref_params = _reference(info, row, problem, warmup=info.gradcheck_warmup)
    start = [p.detach().clone() for p in ref_params]

    def leaves() -> tuple[torch.Tensor, ...]:
        return tuple(p.clone().requires_grad_() for p in start)

    def unrolled(*initial: torch.Tensor, override: Mapping[str, Any] | None = None) -> torch.Tensor:
        diffopt = get_diff_optim(opt, ref_params, override=override)
        fast = list(initial)
        for _ in range(steps):
            fast = _diff_step(info, diffopt, problem, fast)
        return problem.loss(fast)

    return unrolled, leaves


def _gradcheck(function: Callable[..., torch.Tensor], inputs: tuple[torch.Tensor, ...], what: str,
               second_order: bool = False, **kwargs: Any) -> None:
    """``gradcheck`` (or ``gradgradcheck``) whose failure says what was checked."""
    check = torch.autograd.gradgradcheck if second_order else torch.autograd.gradcheck
    try:
        passed = check(function, inputs, **kwargs)
    except GradcheckError as exc:
        raise AssertionError(f"{check.__name__} w.r.t. {what}: {exc}") from exc
    assert passed, f"{check.__name__} w.r.t. {what}"


def check_gradcheck(info: OptimizerInfo, row: OptimizerInput, steps: int = 2,
                    device: torch.device | str | None = None) -> None:
    """``gradcheck`` and ``gradgradcheck`` through two unrolled steps w.r.t. the starting weights
    (after ``info.gradcheck_warmup`` reference steps)."""
    problem = Problem(info.shapes, device=device)
    unrolled, leaves = _unrolled(info, row, problem, steps)
    inputs = leaves()
    _gradcheck(unrolled, inputs, "the initial weights")
    if "gradgradcheck" not in info.skips:
        _gradcheck(unrolled, inputs, "the initial weights", second_order=True)


#: gradcheck's finite-difference step: the largest step a hyperparameter's probe takes
PROBE_STEP = 1e-6
#: a nonzero hyperparameter is probed at most this fraction of its value away (its sign and range kept)
PROBE_FRACTION = 0.05


def probe_step(value: float) -> float:
    """The finite-difference step of the hypergradient probe at ``value``.

    ``PROBE_STEP`` (``gradcheck``'s), or ``PROBE_FRACTION`` of ``value`` when that
    is smaller, so that the central difference :math:`(f(v + h) - f(v - h)) / 2h`
    never leaves ``(0.95 v, 1.05 v)``: an ``eps=1e-8`` stays positive, and a
    value whose curvature grows like ``1 / v`` (an ``eps`` under a square root)
    is probed on its own scale. A value of ``0`` is probed at ``PROBE_STEP``.

    Example:
        >>> probe_step(0.9), probe_step(1e-8)
        (1e-06, 5e-10)
    """
    return PROBE_STEP if value == 0 else min(PROBE_STEP, abs(value) * PROBE_FRACTION)


def check_hypergradients(info: OptimizerInfo, row: OptimizerInput, steps: int = 2,
                         device: torch.device | str | None = None) -> list[str]:
    """``gradcheck`` w.r.t. every tensor hyperparameter, given as a float64 override.

    The hyperparameters are the row's, else the table's, else the
    ``tensor_hyperparameters`` of the class built from the prepared reference.
    A tuple hyperparameter (``betas``) is checked entry by entry. The probe is
    ``gradcheck``'s central difference with the step ``probe_step`` (``1e-6``,
    or 5% of a smaller value, so that ``eps=1e-8`` is probed within
    ``[0.95e-8, 1.05e-8]``, never at 0), at ``gradcheck``'s tolerances
    (``rtol=1e-3``, ``atol=1e-5``).

    To leave a hyperparameter out (one that is not differentiable at its
    value, or whose finite difference cannot be trusted), list the ones to check
    without it: ``OptimizerInput(..., hyperparameters=("lr", "betas"))`` for one
    row, or ``OptimizerInfo(..., hyperparameters=...)`` for the table; an empty
    tuple checks none. Returns the names checked.
    """
    problem = Problem(info.shapes, device=device)
    unrolled, leaves = _unrolled(info, row, problem, steps)
    opt, params = _reference(info, row, problem)
    checked = []
    names = row.hyperparameters if row.hyperparameters is not None else info.hyperparameters
    if names is None:
        names = type(get_diff_optim(opt, params)).tensor_hyperparameters
    for name in names:
        value = opt.param_groups[0][name]
        values = value if isinstance(value, tuple) else (value,)
        for k in range(len(values)):
            if values[k] is None:  # an entry that means "the default" (Adafactor's eps1)
                continue
            def of_hyperparameter(h: torch.Tensor, name: str = name, k: int = k) -> torch.Tensor:
                entries = list(values)
                entries[k] = h
                given = tuple(entries) if isinstance(value, tuple) else entries[0]
                return unrolled(*leaves(), override={name: [given]})

            label = f"{name}[{k}]" if isinstance(value, tuple) else name
            number = float(values[k])
            step = probe_step(number)
            what = f"hyperparameter {label}={number}" + (f" (finite-difference step {step:g})"
                                                        if step != PROBE_STEP else "")
            h = torch.tensor(number, dtype=torch.float64, device=problem.device, requires_grad=True)
            _gradcheck(of_hyperparameter, (h,), what, eps=step)
            checked.append(label)
    return checked


def check_finite_meta_gradients(info: OptimizerInfo, row: OptimizerInput, steps: int = 3,
                                device: torch.device | str | None = None) -> None:
    """With exact zeros in the gradients, meta-gradients are finite under anomaly detection,
    and the forward numbers still match the reference."""
    problem = Problem(info.shapes, device=device)
    problem.data[1] = torch.zeros_like(problem.data[1])  # param 1 meets only dead units
    problem.data[0].view(-1)[0] = 0.0  # one exact zero in param 0's gradient
    opt, ref_params = _reference(info, row, problem)
    initial = problem.leaves()
    with torch.autograd.set_detect_anomaly(True):
        diffopt = get_diff_optim(opt, ref_params)
        fast = list(initial)
        for _ in range(steps):
            fast = _diff_step(info, diffopt, problem, fast)
            _reference_step(opt, ref_params, problem)
        for i, (ours, theirs) in enumerate(zip(fast, ref_params)):
            _compare(f"param {i} with zero gradients", ours, theirs, info.rtol, info.atol)
        meta = torch.autograd.grad(problem.loss(fast), initial, allow_unused=True)
    for i, g in enumerate(meta):
        assert g is None or torch.isfinite(g).all(), f"meta-gradient of param {i} is not finite: {g}"


def check_frozen_and_unused(info: OptimizerInfo, row: OptimizerInput, steps: int = 3,
                            device: torch.device | str | None = None) -> None:
    """A fast weight that does not require grad, and one the loss does not reach, stay unchanged."""
    problem = Problem(info.shapes, device=device)
    opt, ref_params = _reference(info, row, problem)
    diffopt = get_diff_optim(opt, ref_params)
    fast = problem.leaves()
    fast[0] = fast[0].detach()  # frozen
    unused = fast[-1]
    n = len(fast)

    def partial_loss(params: Sequence[torch.Tensor]) -> torch.Tensor:
        return problem.loss(list(params[: n - 1]))

    for _ in range(steps):
        if info.closure:
            fast = diffopt.step(partial_loss, params=fast)
        else:
            fast = diffopt.step(partial_loss(fast), params=fast)
    assert torch.equal(fast[0], problem.initial[0]), "a frozen parameter changed"
    assert fast[-1] is unused, "a parameter the loss does not reach changed"
    assert not diffopt.param_state.get(0) and not diffopt.param_state.get(n - 1), (
        "state was created for a parameter with no gradient"
    )
