"""Sphinx configuration of the higher-core documentation (``tox -e docs``)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "_ext"))

import higher_core  # noqa: E402  (the installed package is what is documented)

project = "higher-core"
author = "the higher-core authors"
copyright = "2026, the higher-core authors"
release = version = higher_core.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.doctest",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_parser",
    "higher_docs",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "_readme", "Thumbs.db", ".DS_Store"]
myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 3

# autodoc: follow each module's __all__, types in the description, members in source order
autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
add_module_names = False
autodoc_type_aliases = {"PatchedModule": "higher_core.patch.PatchedModule"}

# broken references are errors (with -W); names outside these docs without an inventory are listed here
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(torch|pluggy|typing|collections\.abc|datetime|lion_pytorch|prodigyopt)(\..*)?"),
    (r"py:.*", r"(Tensor|Module|Optimizer|Generator|TracebackType|ParamSpec|T|P|R)"),
    (r"py:.*", r"(.*\.)?_[A-Za-z].*"),   # private helpers named in signatures
    (r"py:data", r"IMPLEMENTATION_FLAGS"),  # a private table of higher_core.testing
    (r"py:class", r"(Mapping|Iterable|Sequence)\[.*"),  # string forward references inside type aliases
    (r"py:class", r"(Any|Callable|Iterable|Iterator|Mapping|Sequence|Union|Optional|ModuleType)"),
    (r"py:class", r"(optional|default.*|callable|iterable|tensor|tensors|per param group)"),
    (r"py:class", r"(nn\..*|Dropout|BatchNorm.*|Override)"),   # torch names; the private override type
]

# doctest: the pages' ``{doctest}`` and ``{testcode}`` blocks (docstring examples run in the py tests)
doctest_test_doctest_blocks = ""
doctest_global_setup = "import torch\ntorch.manual_seed(0)"

html_theme = "furo"
html_title = f"higher-core {release}"
html_static_path = ["_static"]
html_theme_options = {
    "light_css_variables": {"color-brand-primary": "#ee4c2c", "color-brand-content": "#c0392b"},
    "dark_css_variables": {"color-brand-primary": "#ff7043", "color-brand-content": "#ff8a65"},
}
