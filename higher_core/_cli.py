"""The ``higher-core`` command: ``higher-core plugins [--json] [--strict]``.

Lists every installed plugin distribution with its version, the optimizers it
provides (reference type -> differentiable class), every plugin that failed
to load, with its error, every installed plugin whose optimizer the installed
torch lacks (unavailable, with the torch it needs), every installed plugin that an environment variable
excludes, with the variable, and the warnings discovery gave (a name in
``HIGHER_CORE_PLUGINS`` that matches nothing, for example).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from typing import Any

__all__ = ["main", "plugin_report"]


def _name(t: type) -> str:
    from higher_core._registry import qualified_name

    return qualified_name(t)


def plugin_report() -> dict[str, Any]:
    """What ``higher-core plugins --json`` prints: plugins, their optimizers, failures, exclusions."""
    from higher_core._plugins import plugin_host

    host = plugin_host()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # failures and warnings are part of the report
        table = host.table(raise_failures=False)
        records = host.records()
    plugins = []
    for record in records:
        provided = [
            {"optimizer": _name(p.optimizer_type), "differentiable": _name(p.diff_type)}
            for providers in table.providers.values()
            for p in providers
            if p.plugin == record
        ]
        plugins.append({
            "name": record.name,
            "distribution": record.distribution,
            "version": record.version,
            "entry_point": record.entry_point,
            "optimizers": sorted(provided, key=lambda o: o["optimizer"]),
        })
    conflicts = {
        _name(t): sorted(p.plugin.source for p in providers)
        for t, providers in table.providers.items()
        if len(providers) > 1
    }
    return {
        "plugins": sorted(plugins, key=lambda p: p["name"]),
        "failed": [{"source": f.source, "error": f.error} for f in table.failures],
        "unavailable": [{"source": u.plugin.source, "entry_point": u.plugin.entry_point, "reason": u.reason}
                        for u in table.unavailable],
        "excluded": [{"source": e.plugin.source, "entry_point": e.plugin.entry_point, "variable": e.variable}
                     for e in table.excluded],
        "conflicts": conflicts,
        # a failure's own warning repeats "failed"; the rest (names that match no plugin) are listed
        "warnings": [str(w.message) for w in caught if not str(w.message).startswith("higher-core plugin from")],
    }


def _print_text(report: dict[str, Any]) -> None:
    if not report["plugins"] and not report["excluded"] and not report["unavailable"]:
        print("no higher-core plugins installed (try `pip install higher-adam`)")
    for plugin in report["plugins"]:
        origin = plugin["distribution"] or plugin["name"]
        print(f"{origin} {plugin['version'] or ''}".rstrip())
        for opt in plugin["optimizers"]:
            print(f"    {opt['optimizer']} -> {opt['differentiable']}")
        if not plugin["optimizers"]:
            print("    (no optimizers)")
    for failure in report["failed"]:
        print(f"FAILED {failure['source']}: {failure['error']}")
    for unavailable in report["unavailable"]:
        print(f"UNAVAILABLE {unavailable['source']}: {unavailable['reason']}")
    for excluded in report["excluded"]:
        print(f"EXCLUDED {excluded['source']} (by {excluded['variable']})")
    for optimizer, sources in report["conflicts"].items():
        print(f"CONFLICT {optimizer}: claimed by {' and '.join(sources)}")
    for message in report["warnings"]:
        print(f"WARNING {message}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="higher-core", description="higher-core's plugin tools")
    commands = parser.add_subparsers(dest="command", required=True)
    plugins = commands.add_parser("plugins", help="list installed plugins and the optimizers they provide")
    plugins.add_argument("--json", action="store_true", help="print JSON for machines")
    plugins.add_argument("--strict", action="store_true",
                         help="exit with status 1 when a plugin failed to load or two plugins conflict")
    args = parser.parse_args(argv)

    try:
        report = plugin_report()
    except ValueError as error:  # a plugin environment variable with a value it does not take
        print(f"higher-core: {error}", file=sys.stderr)
        return 2
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
    else:
        _print_text(report)
    return 1 if args.strict and (report["failed"] or report["conflicts"]) else 0
