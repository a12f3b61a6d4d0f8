"""Every docstring example in the core and the installed plugins runs."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import higher_core
from higher_core._plugins import plugin_host


def _package_modules(name):
    package = importlib.import_module(name)
    found = [name]
    if hasattr(package, "__path__"):
        found += [m.name for m in pkgutil.walk_packages(package.__path__, name + ".") if not m.name.endswith("__main__")]
    return found


def _modules():
    """The core's modules and every module of every installed plugin package."""
    plugin_packages = sorted({r.entry_point.split("=")[1].strip().split(":")[0].split(".")[0]
                              for r in plugin_host().records() if r.entry_point})
    return [m for package in ["higher_core", *plugin_packages] for m in _package_modules(package)]


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module, name):
        if test.examples:
            runner.run(test)
    assert runner.failures == 0, f"{runner.failures} docstring example(s) failed in {name}"
