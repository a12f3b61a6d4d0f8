"""The core stays minimal: what a bare ``import higher_core`` loads, measured.

Lines of code are counted as a reader counts them: no blank lines, no comment
lines and no docstrings. A bare import must load at most :data:`MAX_LINES` of
them, none of the optional layers (batched tasks, implicit gradients,
torch.distributed, the conformance kit), and no function longer than
:data:`MAX_FUNCTION_LINES` lines of code. Each import runs in a fresh
interpreter, so what other tests imported does not count.
"""

from __future__ import annotations

import ast
import io
import json
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

MAX_LINES = 2000
MAX_FUNCTION_LINES = 60
LAYERS = ("higher_core.batched", "higher_core.implicit", "higher_core.distributed", "higher_core.testing",
          "higher_core._solvers", "higher_core.unrolling")


def _loaded_by(statement: str) -> dict[str, str]:
    """``{module name: file}`` of every ``higher_core`` module that ``statement`` imports, in a fresh process."""
    probe = (f"import sys, json\n{statement}\n"
             "print(json.dumps({n: m.__file__ for n, m in sys.modules.items() if n.split('.')[0] == 'higher_core'}))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _docstring_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                lines.update(range(first.lineno, first.end_lineno + 1))
    return lines


def code_lines(source: str) -> set[int]:
    """The numbers of the lines that hold code (not blank, not only a comment, not a docstring)."""
    skipped = _docstring_lines(ast.parse(source))
    lines: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
                          tokenize.DEDENT, tokenize.ENDMARKER):
            continue
        lines.update(n for n in range(token.start[0], token.end[0] + 1) if n not in skipped)
    return lines


def test_code_lines_counts_what_a_reader_counts():
    source = '"""Doc."""\n\n# a comment\nx = 1  # trailing\n\n\ndef f():\n    """Doc\n    more."""\n    return (1,\n            2)\n'
    assert sorted(code_lines(source)) == [4, 7, 10, 11]


@pytest.fixture(scope="module")
def bare_import() -> dict[str, str]:
    return _loaded_by("import higher_core")


def test_a_bare_import_loads_at_most_2000_lines_of_code(bare_import):
    sizes = {name: len(code_lines(Path(path).read_text())) for name, path in bare_import.items()}
    total = sum(sizes.values())
    listing = ", ".join(f"{name} {n}" for name, n in sorted(sizes.items(), key=lambda kv: -kv[1]))
    assert total <= MAX_LINES, f"import higher_core loads {total} lines of code in {len(sizes)} modules: {listing}"


def test_a_bare_import_loads_no_optional_layer(bare_import):
    assert sorted(name for name in bare_import if name.startswith(LAYERS)) == []


def test_no_function_of_the_core_is_longer_than_60_lines(bare_import):
    long = []
    for name, path in bare_import.items():
        source = Path(path).read_text()
        lines = code_lines(source)
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = len([k for k in lines if node.lineno <= k <= node.end_lineno])
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name} ({n} lines)")
    assert long == []


@pytest.mark.parametrize("layer", ["batched", "implicit", "distributed"])
def test_each_layer_is_imported_on_first_use(layer):
    loaded = _loaded_by(f"import higher_core\nhigher_core.{layer}")
    assert f"higher_core.{layer}" in loaded
