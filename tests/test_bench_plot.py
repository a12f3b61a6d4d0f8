"""benchmarks/plot.py reads the ratio tables of RESULTS.md and draws them."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("bench_plot", ROOT / "benchmarks" / "plot.py")
plot = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plot)

TABLE = """## CPU

| workload | competitor | time | time ratio | peak memory | memory ratio | meta-gradients |
|---|---|---|---|---|---|---|
| w1 | higher_core | 10 ms | 1.00x | 5 MiB | 1.00x | same |
| w1 | higher | 15 ms | 1.50x | 4 MiB | 0.80x | same |
| w2 (detail) | torchopt | 9 ms | 0.90x | | | |

| target | measured |
|---|---|
| x | 2.00x |

## CUDA

Not measured.
"""


def test_read_tables_takes_the_ratio_columns_only():
    tables = plot.read_tables(TABLE)
    assert tables == {"CPU": {"time": {"w1": {"higher": 1.5}, "w2": {"torchopt": 0.9}},
                              "peak memory": {"w1": {"higher": 0.8}}}}


def test_plot_writes_one_png_per_section(tmp_path):
    pytest.importorskip("matplotlib", reason='plots need matplotlib (pip install "higher-core[examples]")')
    # a separate process: matplotlib's own deprecation warnings are not this project's to fail on
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "plot.py"), "--out", str(tmp_path)],
                   check=True, capture_output=True, env={**os.environ, "MPLBACKEND": "Agg"}, timeout=120)
    sections = plot.read_tables((ROOT / "benchmarks" / "RESULTS.md").read_text())
    pngs = sorted(tmp_path.glob("*.png"))
    assert [p.name for p in pngs] == sorted(plot.png_name(name) for name in sections)
    assert plot.png_name("CPU: workload 1 (issue 27)") == "bench_cpu_workload_1_issue_27.png"
    assert all(p.stat().st_size > 10_000 for p in pngs)
