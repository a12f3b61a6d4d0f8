from __future__ import annotations

import os
import warnings

import pytest
import torch

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
