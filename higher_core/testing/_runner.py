"""Running the checks: by name, with failures that say the table, row, check and hyperparameter.

:func:`run_check` runs one check of one row; :func:`conformance_tests` turns
a table into one parametrized pytest test (a case per row and check, per bad
input, and per table check), for an author's own test suite.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from higher_core.testing import _checks, _state_checks
from higher_core.testing._batched_check import check_batched
from higher_core.testing._flat_check import check_flat_weights
from higher_core.testing._vectorised_check import check_vectorised
from higher_core.testing._problem import NotApplicable
from higher_core.testing._table import CHECKS, ErrorOptimizerInput, OptimizerInfo, OptimizerInput
from higher_core.testing._table_checks import check_error_input, check_implementation_flags, check_registered

__all__ = ["CHECK_FUNCTIONS", "TABLE_CHECKS", "run_check", "conformance_cases", "conformance_tests"]

#: the function that runs each check of :data:`CHECKS`, by name
CHECK_FUNCTIONS: dict[str, Callable[[OptimizerInfo, OptimizerInput], Any]] = {
    "parity": _checks.check_parity,
    "gradcheck": _checks.check_gradcheck,
    "hypergradients": _checks.check_hypergradients,
    "finite_meta_gradients": _checks.check_finite_meta_gradients,
    "continue_from_reference": _checks.check_continue_from_reference,
    "frozen_and_unused": _checks.check_frozen_and_unused,
    "complex": _checks.check_complex,
    "float32": _checks.check_float32,
    "no_mutation": _state_checks.check_no_mutation,
    "export_state": _state_checks.check_export_state,
    "truncate": _state_checks.check_truncate,
    "group_statistics": _state_checks.check_group_statistics,
    "flat_weights": check_flat_weights,
    "vectorised": check_vectorised,
    "batched": check_batched,
}
"""Row checks by name: each takes a table and one of its rows."""

TABLE_CHECKS: dict[str, Callable[[OptimizerInfo], Any]] = {
    "registered": check_registered,
    "implementation_flags": check_implementation_flags,
}
"""Checks of a whole table, by name."""


def run_check(info: OptimizerInfo, check: str, row: OptimizerInput | ErrorOptimizerInput | None = None) -> Any:
    """Run one check; a failure is an ``AssertionError`` that names the table, row and check.

    ``check`` is a name of :data:`CHECK_FUNCTIONS` (with an option ``row``),
    ``"bad_input"`` (with an :class:`ErrorOptimizerInput`), or a name of
    :data:`TABLE_CHECKS` (no row). A check that does not apply, or is named in
    ``info.skips``, raises :class:`NotApplicable` with the reason.

    Returns:
        What the check returns (the hyperparameters or flags checked, say).
    """
    where = f"{info.name}[{row.desc}]" if row is not None else info.name
    if check in info.skips:
        raise NotApplicable(f"{where}: {check} does not apply: {info.skips[check]}")
    if isinstance(row, OptimizerInput) and check in row.skips:
        raise NotApplicable(f"{where}: {check} does not apply to this row: {row.skips[check]}")
    try:
        if check == "bad_input":
            assert isinstance(row, ErrorOptimizerInput), "the bad_input check needs an ErrorOptimizerInput"
            return check_error_input(info, row)
        if check in TABLE_CHECKS:
            return TABLE_CHECKS[check](info)
        assert isinstance(row, OptimizerInput), f"the {check} check needs an OptimizerInput row"
        return CHECK_FUNCTIONS[check](info, row)
    except NotApplicable as exc:
        raise NotApplicable(f"{where}: {check} does not apply: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - re-raised with the row and the check named
        raise AssertionError(f"{where}, check {check!r}: {type(exc).__name__}: {exc}") from exc


@dataclass(frozen=True)
class Case:
    """One test of a table: a check and the row (option row or bad input) it runs on, if any."""

    info: OptimizerInfo
    check: str
    row: OptimizerInput | ErrorOptimizerInput | None = None

    @property
    def id(self) -> str:
        return f"{self.info.name}-{self.row.desc}-{self.check}" if self.row is not None else (
            f"{self.info.name}-{self.check}")

    def run(self) -> Any:
        return run_check(self.info, self.check, self.row)


def conformance_cases(info: OptimizerInfo, checks: Sequence[str] = CHECKS) -> list[Case]:
    """Every case of a table: each row with each of ``checks``, each bad input, each table check."""
    cases = [Case(info, check, row) for row in info.inputs for check in checks]
    cases += [Case(info, "bad_input", bad) for bad in info.error_inputs]
    cases += [Case(info, check) for check in TABLE_CHECKS]
    return cases


def conformance_tests(info: OptimizerInfo, checks: Sequence[str] = CHECKS) -> Callable[[Case], None]:
    """A pytest test function running the kit over ``info``, one parametrized case per check.

    Assign it to a ``test_`` name in a test module; a check that does not apply
    is reported as a skip with its reason. No pytest plugin is needed (and
    none is installed: a ``pytest11`` entry point would import torch into every
    pytest run of the environment); ``pytest -k Lion`` selects one table's cases.

    Args:
        info: the table to check.
        checks: the row checks to run (default: all of :data:`CHECKS`).

    Returns:
        The test function.

    Example (in the author's ``tests/test_conformance.py``)::

        from higher_core.testing import conformance_tests
        from higher_lion._conformance import LION_INFO

        test_lion = conformance_tests(LION_INFO)
    """
    import pytest

    @pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in conformance_cases(info, checks)])
    def test_conformance(case: Case) -> None:
        try:
            case.run()
        except NotApplicable as reason:
            pytest.skip(str(reason))

    test_conformance.__name__ = f"test_{info.name}_conformance"
    return test_conformance
