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

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from higher_core._optimizer import DifferentiableOptimizer
from higher_core.optim import get_diff_optim
from higher_core.testing._table import ErrorOptimizerInput, OptimizerInfo, OptimizerInput

__all__ = [
    "Problem",
    "check_parity",
    "check_gradcheck",
    "check_hypergradients",
    "check_finite_meta_gradients",
    "check_continue_from_reference",
    "check_frozen_and_unused",
    "NotApplicable",
    "check_complex",
    "check_float32",
    "check_error_input",
    "check_implementation_flags",
    "CHECK_FUNCTIONS",
]


class Problem:
    """A small deterministic float64 problem: parameters, data and a loss.

    The loss has ReLU units that are dead for part of the data, so some
    gradient entries are exactly zero. With ``dtype=torch.complex128`` the
    parameters are complex and the loss real. Another ``dtype`` (``float32``)
    casts the float64 (or complex128) numbers, so every precision solves the same
    problem; the loss is computed in the parameters' real dtype. With ``device``,
    the numbers (drawn on the CPU, so the same on every device) are moved there.
    """

    def __init__(self, shapes: Sequence[tuple[int, ...]], seed: int = 0,
                 dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> None:
        g = torch.Generator().manual_seed(seed)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        drawn = torch.complex128 if dtype.is_complex else torch.float64

        def draw(shape: tuple[int, ...]) -> torch.Tensor:
            return torch.randn(*shape, generator=g, dtype=drawn).to(device=self.device, dtype=dtype)

        self.initial = [draw(s) for s in shapes]
        self.data = [draw(s) for s in shapes]
        self.loss_dtype = dtype.to_real()

    def loss(self, params: Sequence[torch.Tensor]) -> torch.Tensor:
        total = torch.zeros((), dtype=self.loss_dtype, device=self.device)
        for p, d in zip(params, self.data):
            z = p * d
            if z.is_complex():
                total = total + 0.1 * (z.abs() ** 2).sum() + 0.5 * z.imag.sin().sum()
                z = z.real
            total = total + (torch.relu(z + 0.25) ** 2).sum() + 0.5 * z.sin().sum()
        return total

    def leaves(self) -> list[torch.Tensor]:
        return [p.clone().requires_grad_() for p in self.initial]


def _groups(info: OptimizerInfo, params: Sequence[torch.Tensor], row: OptimizerInput) -> list[dict[str, Any]]:
    if info.single_group:
        return [{"params": list(params)}]
    second = dict(row.second_group) if row.second_group is not None else (
        {"lr": row.kwargs["lr"] * 0.5} if isinstance(row.kwargs.get("lr"), float) else {}
    )
    return [{"params": list(params[:-1])}, {"params": [params[-1]], **second}]


def _reference(info: OptimizerInfo, row: OptimizerInput, problem: Problem,
               warmup: int = 0) -> tuple[torch.optim.Optimizer, list[torch.Tensor]]:
    params = problem.leaves()
    opt = info.reference(_groups(info, params, row), **row.kwargs)
    for _ in range(warmup):
        _reference_step(opt, params, problem)
    return opt, params


def _reference_step(opt: torch.optim.Optimizer, params: list[torch.Tensor], problem: Problem) -> None:
    def closure() -> torch.Tensor:
        opt.zero_grad()
        with torch.enable_grad():
            loss = problem.loss(params)
            loss.backward()
        return loss

    # torch's differentiable=True mode needs non-leaf parameters; the flag only
    # chooses an implementation, so the reference numbers come from the default one.
    holders = [h for h in (opt.defaults, *opt.param_groups) if h.get("differentiable")]
    for holder in holders:
        holder["differentiable"] = False
    try:
        opt.step(closure)
    finally:
        for holder in holders:
            holder["differentiable"] = True


def _diff_step(info: OptimizerInfo, diffopt: DifferentiableOptimizer, problem: Problem,
               fast: list[torch.Tensor]) -> list[torch.Tensor]:
    if info.closure:
        return diffopt.step(problem.loss, params=fast)
    return diffopt.step(problem.loss(fast), params=fast)


def _compare(name: str, ours: Any, theirs: Any, rtol: float, atol: float) -> None:
    if isinstance(theirs, torch.Tensor) and theirs.numel() == 1 and not isinstance(ours, torch.Tensor):
        theirs = theirs.item()
    if isinstance(theirs, torch.Tensor):
        assert isinstance(ours, torch.Tensor), f"{name}: expected a tensor, got {ours!r}"
        torch.testing.assert_close(ours.detach(), theirs.detach(), rtol=rtol, atol=atol,
                                   msg=lambda m: f"{name}: {m}")
    elif isinstance(theirs, (int, float)) and not isinstance(theirs, bool):
        ours = ours.item() if isinstance(ours, torch.Tensor) else ours
        assert abs(ours - theirs) <= atol + rtol * abs(theirs), f"{name}: {ours} != {theirs}"
    elif isinstance(theirs, (list, tuple)):
        assert len(ours) == len(theirs), f"{name}: {len(ours)} entries != {len(theirs)}"
        for k, (a, b) in enumerate(zip(ours, theirs)):
            _compare(f"{name}[{k}]", a, b, rtol, atol)
    elif theirs is not None:
        assert ours == theirs, f"{name}: {ours!r} != {theirs!r}"


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
                assert key in diffopt.state.get(i, {}), f"{where}: state {key!r} missing"
                _compare(f"{where}, state {key!r}", diffopt.state[i][key], value, rtol, atol)


def check_parity(info: OptimizerInfo, row: OptimizerInput, device: torch.device | str | None = None) -> None:
    """Parameters and state equal the reference's after each of ``info.steps`` steps."""
    _assert_same_trajectory(info, row, warmup=0, device=device)


def check_continue_from_reference(info: OptimizerInfo, row: OptimizerInput,
                                  device: torch.device | str | None = None) -> None:
    """Built from a reference that already took 3 steps, the trajectory continues identically."""
    _assert_same_trajectory(info, row, warmup=3, device=device)


class NotApplicable(Exception):
    """A check that does not apply to this row; the message says why (the suite prints it)."""


def check_complex(info: OptimizerInfo, row: OptimizerInput, device: torch.device | str | None = None) -> None:
    """With complex128 parameters, parameters and state equal the reference's (as for parity)."""
    if row.kwargs.get("fused"):
        raise NotApplicable("torch's fused kernels do not take complex parameters")
    _assert_same_trajectory(info, row, warmup=0, dtype=torch.complex128, device=device)


def check_float32(info: OptimizerInfo, row: OptimizerInput, device: torch.device | str | None = None) -> None:
    """With float32 parameters (the parity problem, cast), parameters and state equal the
    reference's, at ``info.rtol32`` and ``info.atol32``, with the reference's dtypes."""
    _assert_same_trajectory(info, row, warmup=0, dtype=torch.float32, device=device,
                            tolerances=(info.rtol32, info.atol32))


#: flags that only choose an implementation in torch.optim
IMPLEMENTATION_FLAGS = ("foreach", "fused", "capturable", "differentiable")


def check_implementation_flags(info: OptimizerInfo, device: torch.device | str | None = None) -> list[str]:
    """Each implementation flag the reference accepts changes none of our numbers.

    For every flag in :data:`IMPLEMENTATION_FLAGS` that the reference's
    constructor takes, the differentiable optimizer built from a reference made
    with ``flag=True`` takes bit-identical steps to one built without it. Flags
    the reference refuses on this device (``capturable`` on CPU, say) are left
    out. Returns the flags checked.
    """
    import inspect

    accepted = inspect.signature(info.reference.__init__).parameters
    row = info.inputs[0]
    trajectories = {}
    for flag in (None, *IMPLEMENTATION_FLAGS):
        if flag is not None and flag not in accepted:
            continue
        problem = Problem(info.shapes, device=device)
        params = problem.leaves()
        try:
            opt = info.reference(_groups(info, params, row), **{**row.kwargs, **({flag: True} if flag else {})})
        except (ValueError, RuntimeError, TypeError):
            continue
        diffopt = get_diff_optim(opt, params)
        fast = problem.leaves()
        for _ in range(3):
            fast = _diff_step(info, diffopt, problem, fast)
        trajectories[flag] = fast
    plain = trajectories.pop(None)
    for flag, fast in trajectories.items():
        for i, (a, b) in enumerate(zip(fast, plain)):
            assert torch.equal(a, b), f"{info.name}: {flag}=True changed param {i}"
    return sorted(trajectories)


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


def check_gradcheck(info: OptimizerInfo, row: OptimizerInput, steps: int = 2,
                    device: torch.device | str | None = None) -> None:
    """``gradcheck`` and ``gradgradcheck`` through two unrolled steps w.r.t. the starting weights
    (after ``info.gradcheck_warmup`` reference steps)."""
    problem = Problem(info.shapes, device=device)
    unrolled, leaves = _unrolled(info, row, problem, steps)
    inputs = leaves()
    assert torch.autograd.gradcheck(unrolled, inputs), "gradcheck w.r.t. the initial weights"
    if "gradgradcheck" not in info.skips:
        assert torch.autograd.gradgradcheck(unrolled, inputs), "gradgradcheck w.r.t. the initial weights"


def hyperparameters_of(info: OptimizerInfo, diff_type: type[DifferentiableOptimizer]) -> list[str]:
    return list(info.hyperparameters if info.hyperparameters is not None else diff_type.tensor_hyperparameters)


def check_hypergradients(info: OptimizerInfo, row: OptimizerInput, steps: int = 2,
                         device: torch.device | str | None = None) -> list[str]:
    """``gradcheck`` w.r.t. every tensor hyperparameter, given as a float64 override.

    A tuple hyperparameter (``betas``) is checked entry by entry. Returns the
    names checked.
    """
    from higher_core._registry import resolve

    problem = Problem(info.shapes, device=device)
    unrolled, leaves = _unrolled(info, row, problem, steps)
    opt, _ = _reference(info, row, problem)
    checked = []
    names = row.hyperparameters if row.hyperparameters is not None else hyperparameters_of(info, resolve(info.reference))
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

            h = torch.tensor(float(values[k]), dtype=torch.float64, device=problem.device, requires_grad=True)
            assert torch.autograd.gradcheck(of_hyperparameter, (h,)), f"gradcheck w.r.t. {name}[{k}]"
            checked.append(f"{name}[{k}]" if isinstance(value, tuple) else name)
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
    assert 0 not in diffopt.state and n - 1 not in diffopt.state, (
        "state was created for a parameter with no gradient"
    )


def check_error_input(info: OptimizerInfo, bad: ErrorOptimizerInput,
                      device: torch.device | str | None = None) -> None:
    """The bad input is refused with the declared error type and message."""
    problem = Problem(info.shapes, device=device)
    params = problem.leaves()
    row = OptimizerInput(kwargs=bad.kwargs, desc=bad.desc, second_group={})
    try:
        opt = info.reference(_groups(info, params, row), **bad.kwargs)
        get_diff_optim(opt, params)
    except bad.error_type as exc:
        assert re.search(bad.error_regex, str(exc)), (
            f"{info.name}[{bad.desc}]: message {str(exc)!r} does not match {bad.error_regex!r}"
        )
        return
    raise AssertionError(f"{info.name}[{bad.desc}]: {bad.kwargs} was accepted; expected {bad.error_type.__name__}")


#: the function that runs each check of :data:`CHECKS`, by name
CHECK_FUNCTIONS: dict[str, Callable[[OptimizerInfo, OptimizerInput], Any]] = {
    "parity": check_parity,
    "gradcheck": check_gradcheck,
    "hypergradients": check_hypergradients,
    "finite_meta_gradients": check_finite_meta_gradients,
    "continue_from_reference": check_continue_from_reference,
    "frozen_and_unused": check_frozen_and_unused,
    "complex": check_complex,
    "float32": check_float32,
}
