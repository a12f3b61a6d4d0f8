from __future__ import annotations

import os
import re
import subprocess
import sys
import venv
import warnings
from importlib import metadata
from pathlib import Path

import pytest
import torch

import higher_core
from higher_core import register_optim, unregister_optim
from higher_core._registry import lookup

#: set to 1 (the ``cuda`` tox environments do) to make a missing GPU an error for CUDA tests
REQUIRE_CUDA = "HIGHER_CORE_REQUIRE_CUDA"


def _gpu_visible() -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a CUDA build with no driver warns when asked
        return torch.cuda.is_available()


GPU_VISIBLE = _gpu_visible()

# The suite's tensors are small: one thread avoids the cost of waking a second one for
# every tiny kernel (about 6x faster on the 2-core machines CI runs on).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


class ToySGD(higher_core.optim.DifferentiableOptimizer):
    """torch.optim.SGD (momentum, dampening, nesterov, weight decay, maximize): the core tests' own rule."""

    tensor_hyperparameters = ("lr", "momentum", "dampening", "weight_decay")
    complex_parameters = "real_view"
    scope = "element"

    def update_one(self, group, param, grad, state):
        grad = -grad if group["maximize"] else grad
        grad = grad + group["weight_decay"] * param
        if group["momentum"] != 0:
            buf = state.get("momentum_buffer")
            buf = grad if buf is None else group["momentum"] * buf + (1 - group["dampening"]) * grad
            grad = grad + group["momentum"] * buf if group["nesterov"] else buf
            state = {**state, "momentum_buffer": buf}
        return param - group["lr"] * grad, state


class ToyAdam(higher_core.optim.DifferentiableOptimizer):
    """torch.optim.Adam (with amsgrad and L2 weight decay): the core tests' own rule."""

    tensor_hyperparameters = ("lr", "betas", "eps", "weight_decay")
    scope = "element"

    def init_state(self, param, group):
        state = {"step": 0.0, "exp_avg": torch.zeros_like(param), "exp_avg_sq": torch.zeros_like(param)}
        if group["amsgrad"]:
            state["max_exp_avg_sq"] = torch.zeros_like(param)
        return state

    def update_one(self, group, param, grad, state):
        (beta1, beta2), step = group["betas"], state["step"] + 1
        grad = grad + group["weight_decay"] * param
        exp_avg = beta1 * state["exp_avg"] + (1 - beta1) * grad
        exp_avg_sq = beta2 * state["exp_avg_sq"] + (1 - beta2) * grad * grad
        new = {**state, "step": step, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
        if group["amsgrad"]:
            exp_avg_sq = new["max_exp_avg_sq"] = torch.maximum(state["max_exp_avg_sq"], exp_avg_sq)
        denom = exp_avg_sq.sqrt() / (1 - beta2**step) ** 0.5 + group["eps"]
        return param - group["lr"] / (1 - beta1**step) * exp_avg / denom, new


TOYS = {torch.optim.SGD: ToySGD, torch.optim.Adam: ToyAdam}


@pytest.fixture(autouse=True, scope="session")
def _toy_optimizers():
    """The core's tests and doctests run with no plugin installed: toys stand in for missing plugins."""
    registered = [t for t, toy in TOYS.items() if lookup(t) is None]
    for t in registered:
        register_optim(t, TOYS[t])
    yield
    for t in registered:
        unregister_optim(t)


@pytest.fixture
def host(monkeypatch):
    """A fresh plugin host in place of the process-wide one (entry points re-read, plugin variables unset)."""
    from higher_core import _plugins

    for variable in (_plugins.ONLY_ENV, _plugins.DISABLE_ENV, _plugins.STRICT_ENV):
        monkeypatch.delenv(variable, raising=False)
    fresh = _plugins.PluginHost()
    monkeypatch.setattr(_plugins, "_HOST", fresh)
    return fresh


def _requirement_closure(names: list[str]) -> tuple[list[metadata.Distribution], list[str]]:
    """The installed distributions ``names`` need (themselves included), and those needed but missing here."""
    from packaging.requirements import Requirement  # pytest's own dependency

    found: dict[str, metadata.Distribution] = {}
    missing: list[str] = []
    todo = list(names)
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in found or name in missing:
            continue
        try:
            dist = found[key] = metadata.distribution(key)
        except metadata.PackageNotFoundError:
            missing.append(name)
            continue
        for text in dist.requires or ():
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return list(found.values()), missing


def _checked(*command: str | Path) -> str:
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture
def source_build_lock(tmp_path_factory):
    """A lock shared by every pytest-xdist worker, to hold while building a wheel from this checkout.

    setuptools builds in the source tree's ``build/``: two workers building the core's wheel at once
    collide there (``File exists: build/bdist.../higher_core-0.1.0.dist-info``).
    """
    from filelock import FileLock  # torch's own dependency

    return FileLock(str(tmp_path_factory.getbasetemp().parent / "source-build.lock"))


@pytest.fixture
def fresh_venv():
    """Make a new virtual environment that sees this one's torch, pluggy and numpy and nothing else.

    Returns ``make(directory) -> python``. Torch and what it requires are shared through a ``.pth``
    file pointing at a folder of links, not installed again: a default torch build with its CUDA
    libraries is several GB, and two of them at once filled CI's disk on torch 2.4.1. pip sees the
    linked distributions as installed, so the wheels under test resolve against them; a requirement
    this environment lacks is installed there from the index, and one the new environment already
    has (ensurepip's older setuptools) is removed there so that it does not hide the linked one.
    """
    def make(directory: Path) -> Path:
        shared = directory.parent / (directory.name + "-shared")
        shared.mkdir()
        present, missing = _requirement_closure(["torch", "pluggy", "numpy"])
        linked = {re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower() for dist in present} - {"pip"}
        for dist in present:
            for top in {Path(str(f)).parts[0] for f in dist.files or ()} - {".."}:
                source, link = Path(dist.locate_file(top)), shared / top
                if source.exists() and not link.exists():
                    link.symlink_to(source, target_is_directory=source.is_dir())
        venv.create(directory, with_pip=True)
        python = directory / ("Scripts" if sys.platform == "win32" else "bin") / "python"
        site = _checked(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").strip()
        own = _checked(python, "-m", "pip", "list", "--format=freeze").split()
        shadowing = [name for name in (line.split("==")[0] for line in own)
                     if re.sub(r"[-_.]+", "-", name).lower() in linked]
        if shadowing:
            _checked(python, "-m", "pip", "uninstall", "-q", "-y", *shadowing)
        Path(site, "_shared_torch.pth").write_text(str(shared) + "\n")
        if missing:
            _checked(python, "-m", "pip", "install", "-q", *missing)
        return python

    return make


def _no_gpu_reason() -> str:
    build = f"a CUDA {torch.version.cuda} build" if torch.version.cuda else "a CPU build"
    return f"no CUDA GPU is visible (torch {torch.__version__}, {build})"


def pytest_report_header(config):
    required = " (required: " + REQUIRE_CUDA + "=1)" if os.environ.get(REQUIRE_CUDA) == "1" else ""
    gpu = torch.cuda.get_device_name(0) if GPU_VISIBLE else "none"
    return f"torch {torch.__version__}, CUDA {torch.version.cuda}, GPU: {gpu}{required}"


def pytest_runtest_setup(item):
    """Tests marked ``cuda`` skip with the reason where no GPU is visible, or fail where one is required."""
    if item.get_closest_marker("cuda") is None or GPU_VISIBLE:
        return
    if os.environ.get(REQUIRE_CUDA) == "1":
        pytest.fail(f"{REQUIRE_CUDA}=1 but {_no_gpu_reason()}; run the cuda environments on a machine "
                    "with a GPU and a CUDA build of torch (see README, Test matrix)", pytrace=False)
    pytest.skip(f"{_no_gpu_reason()}; {REQUIRE_CUDA}=1 (tox -e torch214-cuda) makes this an error")


def pytest_terminal_summary(terminalreporter):
    """Report how many conformance rows each optimizer has."""
    from higher_core.testing import installed_conformance

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # load failures are reported by the tests themselves
        infos = installed_conformance()
    if not infos:
        return
    terminalreporter.section("conformance rows per optimizer")
    for info in infos:
        skipped = ", ".join(f"{check} ({reason})" for check, reason in info.skips.items())
        terminalreporter.write_line(
            f"{info.name:<12} {len(info.inputs):>3} option rows, {len(info.error_inputs):>2} bad inputs"
            + (f"; skipped: {skipped}" if skipped else "")
        )
