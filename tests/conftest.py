from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_terminal_summary(terminalreporter):
    """Report how many conformance rows each optimizer has."""
    import warnings

    from higher_core.testing import installed_conformance

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # load failures are reported by the tests themselves
        infos = installed_conformance()
    if not infos:
        return
    terminalreporter.section("conformance rows per optimizer")
    for info in infos:
        skipped = ", ".join(f"{check} ({reason})" for check, reason in info.skips.items())
        terminalreporter.write_line(
            f"{info.name:<12} {len(info.inputs):>3} option rows, {len(info.error_inputs):>2} bad inputs"
            + (f"; skipped: {skipped}" if skipped else "")
        )
