"""The kit's pytest plugin: registers the ``higher_core_conformance`` marker, nothing else.

Loaded through the ``pytest11`` entry point of ``higher-core`` in every pytest
run where the package is installed, so it imports nothing (not torch, not the
kit): a project that does not use the kit pays for one marker line. Tests
made by :func:`higher_core.testing.conformance_tests` carry the marker, so
they run under ``filterwarnings = error`` and can be selected with
``pytest -m higher_core_conformance``.
"""

from __future__ import annotations

from typing import Any

MARKER = "higher_core_conformance"


def pytest_configure(config: Any) -> None:
    """Register the marker of the conformance tests."""
    config.addinivalue_line("markers", f"{MARKER}: a higher-core conformance check (higher_core.testing)")
