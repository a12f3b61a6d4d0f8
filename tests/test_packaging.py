"""Packaging: wheels of the core and two plugins, installed into a fresh virtual environment.

`pip install higher-core higher-adam` (from freshly built wheels, next to only
torch and pluggy) makes an Adam inner loop work, while SGD is refused with the
`pip install higher-sgd` that provides it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

USER_SCRIPT = """
import torch
import higher_core as higher
from higher_core.errors import UnsupportedOptimizerError

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
x, y = torch.randn(16, 3), torch.randn(16, 1)
opt = torch.optim.Adam(model.parameters(), lr=0.01)
with higher.innerloop_ctx(model, opt, copy_initial_weights=False) as (fmodel, diffopt):
    for _ in range(3):
        diffopt.step(torch.nn.functional.mse_loss(fmodel(x), y))
    torch.nn.functional.mse_loss(fmodel(x), y).backward()
assert all(p.grad is not None for p in model.parameters())
print("adam inner loop: ok")

try:
    higher.get_diff_optim(torch.optim.SGD(model.parameters(), lr=0.1), model.parameters())
except UnsupportedOptimizerError as exc:
    print("sgd refused:", exc)
else:
    raise SystemExit("SGD was not refused")
"""


def _run(*command: str | Path, cwd: Path | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIGHER_CORE_")}  # no plugin filters
    result = subprocess.run([str(c) for c in command], cwd=cwd, capture_output=True, text=True, env=env)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.mark.slow
def test_wheels_install_into_a_fresh_environment(tmp_path, fresh_venv, source_build_lock):
    wheels = tmp_path / "wheels"
    with source_build_lock:
        _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", wheels,
             ROOT, ROOT / "plugins" / "higher-sgd", ROOT / "plugins" / "higher-adam")
    names = sorted(p.name.split("-")[0] for p in wheels.glob("*.whl"))
    assert names == ["higher_adam", "higher_core", "higher_sgd"]

    env = tmp_path / "venv"
    python = fresh_venv(env)  # torch and pluggy shared from this environment, nothing else
    _run(python, "-m", "pip", "install", "-q", "--no-index", "--find-links", wheels, "higher-core", "higher-adam")
    installed = _run(python, "-m", "pip", "list", "--format=freeze")
    assert "higher-adam==0.1.0" in installed and "higher-sgd" not in installed

    out = _run(python, "-c", textwrap.dedent(USER_SCRIPT), cwd=tmp_path)
    assert "adam inner loop: ok" in out
    assert "`pip install higher-sgd`" in out
