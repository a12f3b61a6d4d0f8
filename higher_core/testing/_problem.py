"""The test problem of the conformance kit and the side-by-side stepping every check uses.

:class:`Problem` is a small deterministic loss over a few parameters; the
helpers build the reference optimizer for a row (prepared with
``OptimizerInfo.prepare``), step it with a closure, step the differentiable
optimizer, and compare numbers with messages that say where they differ.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from higher_core._optimizer import DifferentiableOptimizer
from higher_core.testing._table import OptimizerInfo, OptimizerInput

__all__ = ["NotApplicable", "Problem"]


class NotApplicable(Exception):
    """A check that does not apply to this row; the message says why (the suite prints it)."""


class Problem:
    """A small deterministic float64 problem: parameters, data and a loss.

    The loss has ReLU units that are dead for part of the data, so some
    gradient entries are exactly zero. With ``dtype=torch.complex128`` the
    parameters are complex and the loss real. Another ``dtype`` (``float32``)
    casts the float64 (or complex128) numbers, so every precision solves the same
    problem; the loss is computed in the parameters' real dtype. With ``device``,
    the numbers (drawn on the CPU, so the same on every device) are moved there.
    A shape may be ``()``: a 0-d parameter (a learned scale, say).
    """

    def __init__(self, shapes: Sequence[tuple[int, ...]], seed: int = 0,
                 dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> None:
        g = torch.Generator().manual_seed(seed)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        drawn = torch.complex128 if dtype.is_complex else torch.float64

        def draw(shape: tuple[int, ...]) -> torch.Tensor:
            return torch.randn(tuple(shape), generator=g, dtype=drawn).to(device=self.device, dtype=dtype)

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


def _construct(info: OptimizerInfo, params: Sequence[torch.Tensor], row: OptimizerInput,
               **extra: Any) -> torch.optim.Optimizer:
    """The reference optimizer for ``row``, prepared by ``info.prepare`` (``opt.train()``, say)."""
    opt = info.reference(_groups(info, params, row), **{**row.kwargs, **extra})
    if info.prepare is not None:
        info.prepare(opt)
    return opt


def _reference(info: OptimizerInfo, row: OptimizerInput, problem: Problem,
               warmup: int = 0) -> tuple[torch.optim.Optimizer, list[torch.Tensor]]:
    params = problem.leaves()
    opt = _construct(info, params, row)
    for _ in range(warmup):
        _reference_step(opt, params, problem)
    return opt, params


def _with_learned_lr(info: OptimizerInfo, row: OptimizerInput,
                     problem: Problem) -> tuple[DifferentiableOptimizer, list[torch.Tensor], torch.Tensor | None]:
    """The row's differentiable optimizer on ``problem``'s leaves, its ``lr`` a tensor that requires grad
    where the row gives a number (``None`` otherwise): ``(diffopt, leaves, lr)``."""
    from higher_core.optim import get_diff_optim

    opt, params = _reference(info, row, problem)
    lr = torch.tensor(row.kwargs["lr"], dtype=torch.float64, device=problem.device, requires_grad=True) \
        if isinstance(row.kwargs.get("lr"), float) else None
    return get_diff_optim(opt, params, override={"lr": [lr]} if lr is not None else None), params, lr


def _reference_step(opt: torch.optim.Optimizer, params: list[torch.Tensor], problem: Problem) -> None:
    def closure() -> torch.Tensor:
        opt.zero_grad()
        with torch.enable_grad():
            loss = problem.loss(params)
            loss.backward()
        return loss.detach()  # a value: torch 2.8's LBFGS warns on float() of a loss that requires grad

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


def _missing_init_state(diffopt: DifferentiableOptimizer, fast: Sequence[torch.Tensor], key: Any) -> bool:
    """Whether ``key`` is a state key the rule read that neither the state nor ``init_state`` has."""
    if not isinstance(key, str) or any(key in group for group in diffopt.param_groups):
        return False
    for group in diffopt.param_groups:
        for i in group["params"]:
            if diffopt.param_state.get(i):
                if key in diffopt.param_state[i]:
                    return False
            elif key in diffopt.init_state(fast[i], group):
                return False
    return True


def _diff_step(info: OptimizerInfo, diffopt: DifferentiableOptimizer, problem: Problem,
               fast: list[torch.Tensor]) -> list[torch.Tensor]:
    try:
        if info.closure:
            return diffopt.step(problem.loss, params=fast)
        return diffopt.step(problem.loss(fast), params=fast)
    except KeyError as exc:
        key = exc.args[0] if exc.args else None
        if _missing_init_state(diffopt, fast, key):
            raise AssertionError(
                f"the rule read state key {key!r} that init_state did not create; implement "
                f"init_state(param, group) in {type(diffopt).__name__} to return the state a "
                "parameter has before its first step (with the reference's key names)"
            ) from exc
        raise


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
