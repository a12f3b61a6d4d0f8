"""Check, before the tests, that tox installed the torch the environment pins.

Prints the torch version, its CUDA version and whether a GPU is visible, and
exits non-zero when the version differs from ``HIGHER_CORE_TORCH`` or when
``HIGHER_CORE_REQUIRE_CUDA=1`` meets a CPU build.

Usage (tox runs it): HIGHER_CORE_TORCH=2.13.0 python tools/check_torch.py
"""

from __future__ import annotations

import os
import sys
import warnings

import torch


def main() -> int:
    pin = os.environ["HIGHER_CORE_TORCH"]
    need_cuda = os.environ.get("HIGHER_CORE_REQUIRE_CUDA") == "1"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a CUDA build with no driver warns when asked
        visible = torch.cuda.is_available()
    print(f"torch {torch.__version__} cuda {torch.version.cuda} gpu visible {visible} pinned {pin}"
          + (" (a CUDA build)" if need_cuda else ""), flush=True)
    if torch.__version__.split("+")[0] != pin:
        print(f"torch {torch.__version__} is installed, not the pinned {pin}; recreate the environment: tox -r",
              file=sys.stderr)
        return 1
    if need_cuda and torch.version.cuda is None:
        print(f"torch {torch.__version__} is a CPU build; point pip at a CUDA wheel index (README, Test matrix)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
