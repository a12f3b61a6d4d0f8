"""Every docstring example in the core and the installed plugins runs."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import higher_core
from higher_core._plugins import plugin_host


def _modules():
    names = [m.name for m in pkgutil.walk_packages(higher_core.__path__, "higher_core.")
             if m.name != "higher_core.__main__"]
    plugin_packages = sorted({r.entry_point.split("=")[1].strip().split(":")[0]
                              for r in plugin_host().records() if r.entry_point})
    return ["higher_core", *names, *plugin_packages]


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module, name):
        if test.examples:
            runner.run(test)
    assert runner.failures == 0, f"{runner.failures} docstring example(s) failed in {name}"
