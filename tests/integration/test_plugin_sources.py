"""Every plugin codes against the public contract only: no underscore name of higher_core."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import higher_core
from higher_core.optim import DifferentiableOptimizer

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"
SOURCES = sorted(p for p in PLUGINS.glob("*/higher_*/**/*.py") if "build" not in p.parts)


class _Probe(DifferentiableOptimizer):
    pass


def _base_private_names() -> set[str]:
    """Underscore attributes of the base class and of an instance (``_fmodel``, ``_flat_layout``, ...)."""
    weight = torch.zeros(1, requires_grad=True)
    instance = _Probe(torch.optim.SGD([weight], lr=0.1), [weight])
    names = set(dir(DifferentiableOptimizer)) | set(vars(instance))
    return {n for n in names if n.startswith("_") and not (n.startswith("__") and n.endswith("__"))}


#: the base class's former private helpers, which plugins used before the contract was public
FORMER = {"_fast_weights", "_groups_for_step", "_finish_step", "_gradients", "_override", "_update_complex",
          "_check_devices", "_reference_name", "_optimizer_name", "_device", "_track_higher_grads"}
PRIVATE = _base_private_names() | FORMER


def _private(dotted: str) -> bool:
    parts = dotted.split(".")
    return parts[0] == "higher_core" and any(p.startswith("_") for p in parts[1:])


def violations(source: str) -> list[str]:
    """The underscore names of higher_core that ``source`` imports or uses."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "higher_core":
            if _private(node.module):
                found.append(f"line {node.lineno}: from {node.module} import ...")
            found += [f"line {node.lineno}: from {node.module} import {a.name}"
                      for a in node.names if a.name.startswith("_")]
        elif isinstance(node, ast.Import):
            found += [f"line {node.lineno}: import {a.name}" for a in node.names if _private(a.name)]
        elif isinstance(node, ast.Attribute):
            if node.attr in PRIVATE:
                found.append(f"line {node.lineno}: .{node.attr} (a private name of DifferentiableOptimizer)")
            elif node.attr.startswith("_") and _private(_dotted(node)):
                found.append(f"line {node.lineno}: {_dotted(node)}")
    return found


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def test_the_plugins_sources_are_found():
    assert len(SOURCES) >= 16 and len({p.parts[-3] for p in SOURCES}) >= 16


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PLUGINS)))
def test_plugin_uses_only_public_names_of_higher_core(path):
    assert violations(path.read_text()) == [], f"{path} uses private names of higher_core"


@pytest.mark.parametrize("source", [
    "from higher_core._optimizer import DifferentiableOptimizer",
    "import higher_core._overrides",
    "from higher_core.functional import _foreach_scalar_op",
    "x = higher_core.functional._foreach_scalar_op",
    "class A:\n    def f(self):\n        return self._fast_weights(None)",
    "def f(run):\n    return run.optimizer._gradients",
    "class A:\n    def _update_complex(self):\n        pass\n    def g(self):\n        return self._update_complex()",
])
def test_the_check_catches_private_names(source):
    assert violations(source)


def test_the_check_allows_public_names_and_the_plugins_own_private_ones():
    source = ("from higher_core.optim import DifferentiableOptimizer\nimport torch\n"
              "class A(DifferentiableOptimizer):\n    def f(self):\n"
              "        self._init_lr = 1\n        return self.fast_weights(None), torch._foreach_add, self._init_lr")
    assert violations(source) == []


def test_the_contract_names_are_public():
    assert {"plugin_hooks", "hookimpl", "register_optim"} <= set(higher_core.__all__)
    for name in ("fast_weights", "groups_for_step", "gradients", "check_devices", "finish_step",
                 "update", "update_one", "update_groups", "init_state", "check_param_groups",
                 "import_state", "export_param_state", "import_group_state", "update_group_state",
                 "export_group_state", "detach_state", "truncate", "export_state", "step"):
        assert callable(getattr(DifferentiableOptimizer, name)) and getattr(DifferentiableOptimizer, name).__doc__
