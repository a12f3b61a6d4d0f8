"""Install higher-core and every plugin under plugins/ from this working tree, as wheels.

Used by tox before the tests (tox does not notice changes to local path
dependencies, so the project is reinstalled on every run). Dependencies such as
torch and pluggy are expected to be installed already (tox's ``deps``).

Usage: python tools/install_local.py
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def local_distributions() -> list[Path]:
    """The core and every plugin directory that has a pyproject.toml."""
    return [ROOT, *sorted(p.parent for p in ROOT.glob("plugins/*/pyproject.toml"))]


def main() -> int:
    paths = [str(p) for p in local_distributions()]
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
               "--force-reinstall", *paths]
    print(f"installing {len(paths)} local distributions", flush=True)
    return subprocess.call(command)


if __name__ == "__main__":
    raise SystemExit(main())
