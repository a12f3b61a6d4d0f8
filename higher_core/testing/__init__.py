"""The conformance kit: one table per optimizer, one suite for all.

A plugin declares an :class:`OptimizerInfo` per optimizer (its option
combinations and bad inputs) and returns it from the ``higher_core_conformance``
hook. :func:`run_conformance` (or the per-check functions) checks every row
against the reference class: parity over 10 steps on parameters and state (in
float64, with complex parameters, and in float32), ``gradcheck``/``gradgradcheck``
through two unrolled steps, hypergradients for every tensor hyperparameter,
finite meta-gradients with exact zeros, continuing from a reference that already
stepped, frozen and unused parameters, and every bad input.

Example:
    >>> import torch
    >>> from higher_core.testing import OptimizerInfo, OptimizerInput, run_conformance
    >>> info = OptimizerInfo(torch.optim.SGD, [OptimizerInput({"lr": 0.1, "momentum": 0.9}, "momentum")])
    >>> run_conformance(info, checks=("parity",))
    {'rows': 1, 'checks': 2}
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from higher_core.testing._checks import (
    CHECK_FUNCTIONS,
    NotApplicable,
    Problem,
    check_complex,
    check_continue_from_reference,
    check_error_input,
    check_finite_meta_gradients,
    check_float32,
    check_frozen_and_unused,
    check_gradcheck,
    check_hypergradients,
    check_implementation_flags,
    check_parity,
)
from higher_core.testing._table import (
    CHECKS,
    DEFAULT_SHAPES,
    ErrorOptimizerInput,
    OptimizerInfo,
    OptimizerInput,
)

__all__ = [
    "CHECKS",
    "CHECK_FUNCTIONS",
    "DEFAULT_SHAPES",
    "ErrorOptimizerInput",
    "OptimizerInfo",
    "OptimizerInput",
    "NotApplicable",
    "Problem",
    "check_complex",
    "check_continue_from_reference",
    "check_error_input",
    "check_finite_meta_gradients",
    "check_float32",
    "check_frozen_and_unused",
    "check_gradcheck",
    "check_hypergradients",
    "check_implementation_flags",
    "check_parity",
    "installed_conformance",
    "run_conformance",
]


def installed_conformance() -> list[OptimizerInfo]:
    """The conformance tables of every installed plugin, in a stable order.

    Each plugin's hook is called on its own: one that raises gives a
    :class:`~higher_core.errors.PluginLoadWarning` naming it (an error in strict
    mode) and the others still return their tables.
    """
    from higher_core._plugins import plugin_host

    infos: list[OptimizerInfo] = list(plugin_host().conformance())  # type: ignore[arg-type]
    return sorted(infos, key=lambda info: info.name)


def run_conformance(info: OptimizerInfo, checks: Sequence[str] = CHECKS,
                    rows: Iterable[int] | None = None) -> dict[str, int]:
    """Run the suite for one table outside pytest; raises on the first failure.

    Checks named in ``info.skips``, and those that raise :class:`NotApplicable`
    for a row, are skipped. Returns the number of rows and of checks run.
    """
    selected = list(info.inputs) if rows is None else [info.inputs[i] for i in rows]
    ran = 0
    for row in selected:
        for name in checks:
            if name in info.skips:
                continue
            try:
                CHECK_FUNCTIONS[name](info, row)
            except NotApplicable:
                continue
            ran += 1
    for bad in info.error_inputs:
        check_error_input(info, bad)
        ran += 1
    check_implementation_flags(info)
    ran += 1
    return {"rows": len(selected), "checks": ran}
