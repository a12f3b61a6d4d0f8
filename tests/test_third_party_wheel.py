"""A third-party plugin from outside this repository, installed as a wheel into a fresh environment.

The plugin below is what an author would write in their own project: a
``pyproject.toml`` and one module (not a ``higher-*`` distribution, no package
directory) with an optimizer of its own, its differentiable version, and the
two hooks. It is built into a wheel, installed next to a wheel of higher-core
(and torch and pluggy only) into a new virtual environment, and found there by
``higher-core plugins``, ``get_diff_optim`` and the conformance kit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PYPROJECT = """
[build-system]
requires = ["setuptools>=77"]
build-backend = "setuptools.build_meta"

[project]
name = "tinyopt"
version = "0.3.0"
requires-python = ">=3.9"
dependencies = ["higher-core>=0.1,<0.2", "torch>=2.4"]

[project.entry-points."higher_core.plugins"]
scaled_sgd = "tinyopt"

[tool.setuptools]
py-modules = ["tinyopt"]
"""

MODULE = '''
"""tinyopt: an optimizer of its own, made differentiable through higher-core's entry point."""

from __future__ import annotations

import torch

from higher_core import hookimpl
from higher_core.functional import add_scaled
from higher_core.optim import DifferentiableOptimizer


class ScaledSGD(torch.optim.Optimizer):
    """SGD whose step is scaled: p -= lr * scale * grad."""

    def __init__(self, params, lr=0.1, scale=0.5):
        if lr < 0:
            raise ValueError(f"Invalid learning rate: {lr}")
        super().__init__(params, {"lr": lr, "scale": scale})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-group["lr"] * group["scale"])
        return loss


class DifferentiableScaledSGD(DifferentiableOptimizer):
    """A differentiable ScaledSGD."""

    tensor_hyperparameters = ("lr", "scale")
    complex_as_real = True

    def update(self, group, params, grads, states):
        step = -group["lr"] * group["scale"]
        return [add_scaled(p, g, step) for p, g in zip(params, grads)], list(states)


@hookimpl
def higher_core_optimizers():
    return {ScaledSGD: DifferentiableScaledSGD}


@hookimpl
def higher_core_conformance():
    from higher_core.testing import ErrorOptimizerInput, OptimizerInfo, OptimizerInput

    return [OptimizerInfo(
        ScaledSGD,
        [OptimizerInput({"lr": 0.1}, "default"),
         OptimizerInput({"lr": 0.1, "scale": 2.0}, "groups-differ", second_group={"scale": 0.25})],
        [ErrorOptimizerInput({"lr": -1.0}, ValueError, "Invalid learning rate", "negative lr")],
    )]
'''

USER_SCRIPT = """
import torch
import higher_core
from higher_core.testing import installed_conformance, run_conformance
import tinyopt

model = torch.nn.Linear(3, 1)
opt = tinyopt.ScaledSGD(model.parameters(), lr=0.1)
diffopt = higher_core.get_diff_optim(opt, model.parameters())
assert type(diffopt) is tinyopt.DifferentiableScaledSGD, type(diffopt)
with higher_core.innerloop_ctx(model, opt, copy_initial_weights=False) as (fmodel, diffopt):
    for _ in range(2):
        diffopt.step(fmodel(torch.ones(4, 3)).pow(2).mean())
    fmodel(torch.ones(4, 3)).pow(2).mean().backward()
assert all(p.grad is not None for p in model.parameters())
(info,) = installed_conformance()
print("conformance:", run_conformance(info))
print("get_diff_optim:", type(diffopt).__module__, type(diffopt).__name__)
"""


def _run(*command: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    result = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.mark.slow
def test_third_party_plugin_wheel_is_found_in_a_fresh_environment(tmp_path, fresh_venv, source_build_lock):
    source = tmp_path / "tinyopt-src"
    source.mkdir()
    (source / "pyproject.toml").write_text(textwrap.dedent(PYPROJECT))
    (source / "tinyopt.py").write_text(textwrap.dedent(MODULE))

    wheels = tmp_path / "wheels"
    with source_build_lock:
        _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", wheels,
             source, ROOT)
    assert sorted(p.name.split("-")[0] for p in wheels.glob("*.whl")) == ["higher_core", "tinyopt"]

    env_dir = tmp_path / "venv"
    python = fresh_venv(env_dir)  # torch and pluggy shared from this environment, nothing else
    bin_dir = python.parent
    # only the plugin is asked for: higher-core comes in as its dependency
    _run(python, "-m", "pip", "install", "-q", "--no-index", "--find-links", wheels, "tinyopt")
    installed = _run(python, "-m", "pip", "list", "--format=freeze")
    assert "tinyopt==0.3.0" in installed and "higher-core==0.1.0" in installed

    # the caller's plugin restrictions (HIGHER_CORE_PLUGINS, ...) must not leak into the new environment
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIGHER_CORE_")}
    env["HIGHER_CORE_STRICT_PLUGINS"] = "1"
    report = json.loads(_run(python, "-m", "higher_core", "plugins", "--json", "--strict", cwd=tmp_path, env=env))
    assert report["failed"] == [] and report["conflicts"] == {}
    (plugin,) = report["plugins"]
    assert (plugin["distribution"], plugin["version"], plugin["entry_point"].split("=")[0].strip()) == (
        "tinyopt", "0.3.0", "scaled_sgd")
    assert plugin["optimizers"] == [
        {"optimizer": "tinyopt.ScaledSGD", "differentiable": "tinyopt.DifferentiableScaledSGD"}
    ]
    text = _run(bin_dir / "higher-core", "plugins", cwd=tmp_path, env=env)
    assert "tinyopt 0.3.0" in text and "tinyopt.ScaledSGD -> tinyopt.DifferentiableScaledSGD" in text

    out = _run(python, "-c", textwrap.dedent(USER_SCRIPT), cwd=tmp_path, env=env)
    assert "get_diff_optim: tinyopt DifferentiableScaledSGD" in out
    assert "conformance: {'rows': 2," in out
