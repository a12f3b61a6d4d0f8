"""The conformance kit: one table per optimizer, one suite for all.

A plugin declares an :class:`OptimizerInfo` per optimizer (its option
combinations, and its bad inputs with the side that must refuse each) and
returns it from the ``higher_core_conformance`` hook. The kit checks every row
against the reference class:

* ``parity`` (and ``continue_from_reference``, ``complex``, ``float32``):
  parameters and state equal the reference's over 10 steps, from a fresh
  reference or one that already stepped, with complex and float32 parameters;
* ``gradcheck``, ``hypergradients``, ``finite_meta_gradients``:
  ``gradcheck``/``gradgradcheck`` through two unrolled steps, w.r.t. the
  weights and every tensor hyperparameter (a central difference with step
  ``1e-6``, or 5% of a smaller value, so that ``eps=1e-8`` is probed on its own
  scale and never at 0; leave one out by listing the others in the row's or the
  table's ``hyperparameters``), finite meta-gradients with exact zeros;
* ``frozen_and_unused``, ``no_mutation``: parameters without a gradient stay
  put, and a step changes none of its inputs in place;
* ``export_state``, ``truncate``, ``group_statistics``: the reference
  continues identically after ``export_state``, ``truncate`` cuts gradients
  without changing numbers, running statistics per group match the reference's;
* ``flat_weights``: an element-wise rule stepped on flat buffers equals it
  stepped tensor by tensor, bit for bit (weights, state, meta-gradients);
* ``vectorised``: a rule's ``update`` (its multi-tensor form) equals its
  ``update_one`` applied tensor by tensor (weights, state, meta-gradients to
  ``rtol=1e-12``);
* ``batched``: ``tasks=4`` tasks stepped at once equal four separate inner
  loops (fast weights, state, meta-gradients w.r.t. the weights and a learned
  ``lr``, shared and one per task); not applicable to a rule that refuses
  ``tasks=`` (its ``BatchingError`` is the reason: LBFGS's closure);
* per table: every bad input is refused by the side its row names
  (``raised_by``), implementation flags change no number, and the reference
  type resolves to the plugin's class (``check_registered``).

A check that does not apply raises :class:`NotApplicable` with the reason; a
failure names the table, the row, the check (and the hyperparameter). In an
author's own pytest run, one line makes the tests (see
:func:`conformance_tests`)::

    test_lion = conformance_tests(LION_INFO)

Example:
    >>> import torch
    >>> from higher_core.testing import ErrorOptimizerInput, OptimizerInfo, OptimizerInput, run_conformance
    >>> info = OptimizerInfo(
    ...     torch.optim.SGD,
    ...     [OptimizerInput({"lr": 0.1, "momentum": 0.9}, "momentum")],
    ...     [ErrorOptimizerInput({"lr": -0.1}, ValueError, "Invalid learning rate", "negative lr",
    ...                          raised_by="reference")],
    ... )
    >>> run_conformance(info, checks=("parity", "no_mutation"))
    {'rows': 1, 'checks': 5, 'not_applicable': 0}
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from higher_core.testing._checks import (
    check_complex,
    check_continue_from_reference,
    check_finite_meta_gradients,
    check_float32,
    check_frozen_and_unused,
    check_gradcheck,
    check_hypergradients,
    check_parity,
)
from higher_core.testing._batched_check import check_batched
from higher_core.testing._flat_check import check_flat_weights
from higher_core.testing._vectorised_check import check_vectorised
from higher_core.testing._problem import NotApplicable, Problem
from higher_core.testing._runner import (
    CHECK_FUNCTIONS,
    TABLE_CHECKS,
    conformance_cases,
    conformance_tests,
    run_check,
)
from higher_core.testing._state_checks import (
    check_export_state,
    check_group_statistics,
    check_no_mutation,
    check_truncate,
)
from higher_core.testing._table import (
    CHECKS,
    DEFAULT_SHAPES,
    ErrorOptimizerInput,
    OptimizerInfo,
    OptimizerInput,
    common_error_inputs,
    multi_element_lr_refusal,
)
from higher_core.testing._table_checks import check_error_input, check_implementation_flags, check_registered

__all__ = [
    "CHECKS",
    "CHECK_FUNCTIONS",
    "DEFAULT_SHAPES",
    "TABLE_CHECKS",
    "ErrorOptimizerInput",
    "OptimizerInfo",
    "OptimizerInput",
    "NotApplicable",
    "Problem",
    "check_batched",
    "check_complex",
    "check_continue_from_reference",
    "check_error_input",
    "check_export_state",
    "check_finite_meta_gradients",
    "check_flat_weights",
    "check_float32",
    "check_frozen_and_unused",
    "check_gradcheck",
    "check_group_statistics",
    "check_hypergradients",
    "check_implementation_flags",
    "check_no_mutation",
    "check_parity",
    "check_registered",
    "check_truncate",
    "check_vectorised",
    "common_error_inputs",
    "multi_element_lr_refusal",
    "conformance_cases",
    "conformance_tests",
    "installed_conformance",
    "run_check",
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

    Runs ``checks`` on the selected rows (default: all), then every bad input
    and the table checks. Checks named in ``info.skips``, and those that raise
    :class:`NotApplicable`, are counted as not applicable.

    Returns:
        The number of rows, of checks run, and of checks that did not apply.
    """
    selected = list(info.inputs) if rows is None else [info.inputs[i] for i in rows]
    ran = skipped = 0
    for case in conformance_cases(info, checks):
        if isinstance(case.row, OptimizerInput) and not any(case.row is row for row in selected):
            continue
        try:
            case.run()
        except NotApplicable:
            skipped += 1
            continue
        ran += 1
    return {"rows": len(selected), "checks": ran, "not_applicable": skipped}
