"""The conformance suite: every installed plugin's table, every row, every check.

Rows come from the ``higher_core_conformance`` hook of each installed plugin
(see ``higher_core.testing``). A check that does not apply to an optimizer is
skipped with the reason its table gives, shown in the test summary.
"""

from __future__ import annotations

import pytest

from higher_core._plugins import plugin_host
from higher_core.testing import (
    CHECK_FUNCTIONS,
    CHECKS,
    NotApplicable,
    check_error_input,
    check_implementation_flags,
    installed_conformance,
)

INFOS = installed_conformance()

ROW_CASES = [
    pytest.param(info, row, check, id=f"{info.name}-{row.desc}-{check}")
    for info in INFOS
    for row in info.inputs
    for check in CHECKS
]
ERROR_CASES = [
    pytest.param(info, bad, id=f"{info.name}-{bad.desc}") for info in INFOS for bad in info.error_inputs
]


@pytest.mark.parametrize(("info", "row", "check"), ROW_CASES)
def test_row(info, row, check):
    if check in info.skips:
        pytest.skip(f"{info.name}: {check} does not apply: {info.skips[check]}")
    try:
        CHECK_FUNCTIONS[check](info, row)
    except NotApplicable as reason:
        pytest.skip(f"{info.name}[{row.desc}]: {check} does not apply: {reason}")


@pytest.mark.parametrize(("info", "bad"), ERROR_CASES)
def test_bad_input_refused(info, bad):
    check_error_input(info, bad)


@pytest.mark.parametrize("info", [pytest.param(i, id=i.name) for i in INFOS])
def test_implementation_flags_change_no_numbers(info):
    checked = check_implementation_flags(info)
    print(f"{info.name}: flags checked: {', '.join(checked) or 'none accepted here'}")


def test_every_registered_optimizer_has_a_table():
    providers = plugin_host().table().providers
    tabled = {info.reference for info in INFOS}
    assert providers, "no optimizer plugin is installed"
    missing = sorted(t.__name__ for t in providers if t not in tabled)
    assert not missing, f"optimizers with no conformance table: {missing}"
