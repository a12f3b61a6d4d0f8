"""Checks of a whole table: bad inputs, implementation flags, registration.

Unlike the row checks, these take an :class:`~higher_core.testing.OptimizerInfo`
(and, for :func:`check_error_input`, one of its bad inputs) rather than an
option row.
"""

from __future__ import annotations

import inspect
import re

import torch

from higher_core.optim import get_diff_optim
from higher_core.testing._problem import NotApplicable, Problem, _construct, _diff_step, _reference_step
from higher_core.testing._table import ErrorOptimizerInput, OptimizerInfo, OptimizerInput

__all__ = ["check_error_input", "check_implementation_flags", "check_registered", "IMPLEMENTATION_FLAGS"]

#: flags that only choose an implementation in torch.optim
IMPLEMENTATION_FLAGS = ("foreach", "fused", "capturable", "differentiable")


def _refused(bad: ErrorOptimizerInput, exc: Exception, side: str) -> None:
    assert isinstance(exc, bad.error_type), (
        f"{side} refused {bad.kwargs} with {type(exc).__name__}: {exc}; the row expects {bad.error_type.__name__}"
    )
    assert re.search(bad.error_regex, str(exc)), (
        f"{side} refused it with message {str(exc)!r}, which does not match {bad.error_regex!r}"
    )


def check_error_input(info: OptimizerInfo, bad: ErrorOptimizerInput,
                      device: torch.device | str | None = None) -> None:
    """The bad input is refused, by the side the row names, with the declared error type and message.

    ``raised_by="reference"``: the reference constructor refuses it.
    ``raised_by="differentiable"``: the reference accepts it, and building the
    differentiable optimizer (or its first step) refuses it.
    """
    problem = Problem(info.shapes, device=device)
    params = problem.leaves()
    row = OptimizerInput(kwargs=bad.kwargs, desc=bad.desc, second_group={})
    try:
        opt = _construct(info, params, row)
    except Exception as exc:  # noqa: BLE001 - the row says which error it must be
        if bad.raised_by == "differentiable":
            raise AssertionError(
                f"the reference {info.name} refused {bad.kwargs} ({type(exc).__name__}: {exc}), so the "
                "differentiable optimizer is never reached; mark the row raised_by=\"reference\""
            ) from exc
        _refused(bad, exc, f"the reference {info.name}")
        return
    if bad.raised_by == "reference":
        raise AssertionError(
            f"the reference {info.name} accepted {bad.kwargs}; if the differentiable optimizer is the one "
            "that must refuse it, mark the row raised_by=\"differentiable\""
        )
    try:
        diffopt = get_diff_optim(opt, params)
        _diff_step(info, diffopt, problem, problem.leaves())
    except Exception as exc:  # noqa: BLE001 - the row says which error it must be
        _refused(bad, exc, f"the differentiable {info.name}")
        return
    raise AssertionError(
        f"{bad.kwargs} was accepted by the reference and the differentiable optimizer (built and "
        f"stepped); expected {bad.error_type.__name__} matching {bad.error_regex!r}"
    )


def check_implementation_flags(info: OptimizerInfo, device: torch.device | str | None = None) -> list[str]:
    """Each implementation flag the reference accepts changes none of our numbers.

    For every flag in :data:`IMPLEMENTATION_FLAGS` that the reference's
    constructor takes, the differentiable optimizer built from a reference made
    with ``flag=True`` takes bit-identical steps to one built without it. Flags
    the reference refuses on this device, at construction or at its first step
    (``capturable`` on CPU, ``fused`` Adagrad on CUDA), are left out; raises :class:`NotApplicable` when none is left. Returns the flags checked.
    """
    accepted = inspect.signature(info.reference.__init__).parameters
    row = info.inputs[0]
    trajectories = {}
    refused = []
    for flag in (None, *IMPLEMENTATION_FLAGS):
        if flag is not None and flag not in accepted:
            continue
        problem = Problem(info.shapes, device=device)
        params = problem.leaves()
        try:
            opt = _construct(info, params, row, **({flag: True} if flag else {}))
            if flag is not None:  # some refuse a flag only at their first step (fused Adagrad on CUDA)
                probe = problem.leaves()
                _reference_step(_construct(info, probe, row, **{flag: True}), probe, problem)
        except (ValueError, RuntimeError, TypeError, AssertionError):  # torch asserts capturable's devices
            refused.append(flag)
            continue
        diffopt = get_diff_optim(opt, params)
        fast = problem.leaves()
        for _ in range(3):
            fast = _diff_step(info, diffopt, problem, fast)
        trajectories[flag] = fast
    plain = trajectories.pop(None)
    if not trajectories:
        raise NotApplicable(
            f"the reference accepts none of {', '.join(IMPLEMENTATION_FLAGS)}"
            + (f" ({', '.join(refused)}=True refused here)" if refused else "")
        )
    for flag, fast in trajectories.items():
        for i, (a, b) in enumerate(zip(fast, plain)):
            assert torch.equal(a, b), f"{info.name}: {flag}=True changed param {i}"
    return sorted(trajectories)


def check_registered(info: OptimizerInfo) -> str:
    """The reference type resolves, through the registry, to the plugin's class, listed by the host.

    ``get_diff_optim`` on a reference instance builds ``info.differentiable``
    (when the table names it), and the plugin host lists a plugin providing it
    for ``info.reference``. Returns that plugin's source (``higher-adam 0.1.0``).
    """
    from higher_core._plugins import EXPLICIT, plugin_host
    from higher_core._registry import resolve

    found = resolve(info.reference)
    if info.differentiable is not None:
        assert found is info.differentiable, (
            f"{info.name} resolves to {found.__qualname__}, not {info.differentiable.__qualname__}"
        )
    problem = Problem(info.shapes)
    params = problem.leaves()
    built = type(get_diff_optim(_construct(info, params, info.inputs[0]), params))
    assert built is found, f"get_diff_optim built {built.__qualname__}, not {found.__qualname__}"
    providers = plugin_host().table().providers.get(info.reference, [])
    sources = [p.plugin.source for p in providers if p.diff_type is found and p.plugin.name != EXPLICIT]
    assert sources, (
        f"no installed plugin lists {found.__qualname__} for {info.name}: return it from the "
        "plugin's higher_core_optimizers() hook and declare the plugin's entry point in the "
        "'higher_core.plugins' group"
    )
    return sources[0]
