"""`higher-core plugins` and `python -m higher_core plugins`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from higher_core import _cli


def _run(*args, env_extra=None, pythonpath=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIGHER_CORE_")}
    env.update(env_extra or {})
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "higher_core", *args], capture_output=True, text=True, env=env)


def test_lists_plugins_with_versions_and_optimizers():
    result = _run("plugins")
    assert result.returncode == 0, result.stderr
    assert "higher-adam 0.1.0" in result.stdout
    assert "torch.optim.Adam -> higher_adam._adam.DifferentiableAdam" in result.stdout
    assert "torch.optim.SGD -> higher_sgd._sgd.DifferentiableSGD" in result.stdout


def test_json_output_for_machines():
    result = _run("plugins", "--json")
    report = json.loads(result.stdout)
    by_dist = {p["distribution"]: p for p in report["plugins"]}
    assert by_dist["higher-sgd"]["version"] == "0.1.0"
    assert by_dist["higher-sgd"]["optimizers"] == [
        {"optimizer": "torch.optim.SGD", "differentiable": "higher_sgd._sgd.DifferentiableSGD"}
    ]
    assert report["failed"] == [] and report["conflicts"] == {}


@pytest.fixture
def broken_plugin(tmp_path):
    (tmp_path / "higher_broken_cli.py").write_text("raise ImportError('missing dependency xyz')\n")
    info = tmp_path / "higher_broken_cli-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: higher-broken-cli\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text("[higher_core.plugins]\nbroken = higher_broken_cli\n")
    return tmp_path


def test_failed_plugin_is_reported_and_strict_fails(broken_plugin):
    result = _run("plugins", pythonpath=broken_plugin)
    assert result.returncode == 0
    assert "FAILED higher-broken-cli 0.3: ImportError: missing dependency xyz" in result.stdout
    assert "higher-adam 0.1.0" in result.stdout  # the others still load
    strict = _run("plugins", "--strict", "--json", pythonpath=broken_plugin)
    assert strict.returncode == 1
    assert json.loads(strict.stdout)["failed"][0]["source"] == "higher-broken-cli 0.3"


def test_console_script_is_installed():
    assert _cli.main(["plugins", "--json"]) == 0


def test_excluded_plugins_and_unknown_names_are_shown():
    env = {"HIGHER_CORE_DISABLE_PLUGINS": "Higher_SGD,higher-nope"}
    result = _run("plugins", env_extra=env)
    assert result.returncode == 0, result.stderr
    assert "EXCLUDED higher-sgd 0.1.0 (by HIGHER_CORE_DISABLE_PLUGINS)" in result.stdout
    assert "WARNING HIGHER_CORE_DISABLE_PLUGINS names 'higher-nope', which matches no installed" in result.stdout
    assert "torch.optim.SGD ->" not in result.stdout and "higher-adam 0.1.0" in result.stdout
    report = json.loads(_run("plugins", "--json", env_extra=env).stdout)
    assert report["excluded"] == [
        {"source": "higher-sgd 0.1.0", "entry_point": "sgd = higher_sgd", "variable": "HIGHER_CORE_DISABLE_PLUGINS"}
    ]


def test_strict_environment_still_prints_the_report(broken_plugin):
    result = _run("plugins", env_extra={"HIGHER_CORE_STRICT_PLUGINS": "1"}, pythonpath=broken_plugin)
    assert result.returncode == 0, result.stderr
    assert "FAILED higher-broken-cli 0.3: ImportError: missing dependency xyz" in result.stdout
    assert "Traceback" not in result.stderr


def test_an_unknown_strict_value_is_one_clear_line_not_a_traceback():
    result = _run("plugins", env_extra={"HIGHER_CORE_STRICT_PLUGINS": "n"})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("higher-core: HIGHER_CORE_STRICT_PLUGINS='n'")
    assert "accepted" in result.stderr and result.stdout == ""


def test_a_plugin_for_an_optimizer_this_torch_lacks_is_listed_as_unavailable(tmp_path):
    (tmp_path / "higher_future_cli.py").write_text(
        "from higher_core.compat import torch_optimizer\nFutureOpt = torch_optimizer('FutureOpt')\n")
    info = tmp_path / "higher_future_cli-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: higher-future-cli\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[higher_core.plugins]\nfuture = higher_future_cli\n")
    result = _run("plugins", "--strict", pythonpath=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "UNAVAILABLE higher-future-cli 0.1: torch.optim.FutureOpt is not in this torch" in result.stdout
    assert "FAILED" not in result.stdout
