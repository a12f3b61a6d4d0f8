"""The conformance suite: every installed plugin's table, every row, every check.

Tables come from the ``higher_core_conformance`` hook of each installed plugin
(see ``higher_core.testing``); each becomes one parametrized test made by
``conformance_tests``, exactly what a third-party author's own suite runs. A
check that does not apply is skipped with its reason, shown in the summary.
"""

from __future__ import annotations

from higher_core._plugins import plugin_host
from higher_core.testing import conformance_tests, installed_conformance

INFOS = installed_conformance()

for _info in INFOS:
    globals()[f"test_{_info.name}"] = conformance_tests(_info)


def test_every_registered_optimizer_has_a_table():
    providers = plugin_host().table().providers
    tabled = {info.reference for info in INFOS}
    assert providers, "no optimizer plugin is installed"
    missing = sorted(t.__name__ for t in providers if t not in tabled)
    assert not missing, f"optimizers with no conformance table: {missing}"
