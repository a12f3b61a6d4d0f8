"""Build and check the release distributions of the core and of every plugin (``tox -e release``).

For each distribution (this directory and each plugins/*/): build the sdist and the wheel
(``python -m build``), build a second wheel from the sdist alone and check that it holds the
same files with the same contents, run ``twine check --strict`` on everything, and check the
versions: the core's ``pyproject.toml`` and ``higher_core.__version__`` agree, every built file
carries its pyproject's version, every plugin's ``higher-core`` range includes the core's
version, and the core's ``[all]`` extra names existing plugins with ranges that include their
versions.

Usage: python tools/release_check.py [--out dist/release] [--only higher-core,higher-adam]
Prints one line per check and exits non-zero if any failed.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent


def projects() -> dict[str, Path]:
    """Distribution name -> its directory: the core, then each plugin."""
    found = {}
    for directory in [ROOT, *sorted(p.parent for p in ROOT.glob("plugins/*/pyproject.toml"))]:
        found[tomllib.loads((directory / "pyproject.toml").read_text())["project"]["name"]] = directory
    return found


def metadata(directory: Path) -> dict:
    return tomllib.loads((directory / "pyproject.toml").read_text())["project"]


def build(source: Path, out: Path, *kinds: str) -> list[Path]:
    """``python -m build`` without isolation (the environment has the build backend)."""
    out.mkdir(parents=True, exist_ok=True)
    before = set(out.iterdir())
    subprocess.run([sys.executable, "-m", "build", "--no-isolation", *kinds, "--outdir", str(out), str(source)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return sorted(set(out.iterdir()) - before)


def wheel_contents(wheel: Path) -> dict[str, str]:
    """Each file of a wheel and the sha256 of its bytes (RECORD, which lists those hashes, left out)."""
    with zipfile.ZipFile(wheel) as z:
        return {n: hashlib.sha256(z.read(n)).hexdigest() for n in z.namelist() if not n.endswith(".dist-info/RECORD")}


def check_sdist_rebuild(sdist: Path, wheel: Path, work: Path) -> str | None:
    """A wheel built from the sdist alone has the same files and contents as the one built from the tree."""
    with tarfile.open(sdist) as tar:
        tar.extractall(work, filter="data")
    (unpacked,) = [p for p in work.iterdir() if p.is_dir()]
    (rebuilt,) = build(unpacked, work / "wheel", "--wheel")
    ours, theirs = wheel_contents(wheel), wheel_contents(rebuilt)
    if ours == theirs:
        return None
    missing, extra = sorted(set(ours) - set(theirs)), sorted(set(theirs) - set(ours))
    changed = sorted(n for n in set(ours) & set(theirs) if ours[n] != theirs[n])
    return f"missing from the sdist's wheel: {missing}; only in it: {extra}; different: {changed}"


def check_versions(names: dict[str, Path]) -> list[str]:
    """Version agreements between the core and the plugins."""
    problems = []
    core = metadata(ROOT)
    core_version = Version(core["version"])
    init = (ROOT / "higher_core" / "__init__.py").read_text()
    declared = re.search(r'^__version__ = "([^"]+)"', init, re.M)
    if not declared or Version(declared.group(1)) != core_version:
        problems.append(f"higher_core.__version__ ({declared and declared.group(1)}) != pyproject's {core_version}")
    for name, directory in names.items():
        if directory == ROOT:
            continue
        requirements = [Requirement(r) for r in metadata(directory).get("dependencies", [])]
        on_core = [r for r in requirements if canonicalize_name(r.name) == "higher-core"]
        if not on_core:
            problems.append(f"{name} does not depend on higher-core")
        for r in on_core:
            if not r.specifier.contains(core_version, prereleases=True):
                problems.append(f"{name} requires {r}, which excludes the core's version {core_version}")
    plugin_versions = {canonicalize_name(n): Version(metadata(d)["version"]) for n, d in names.items() if d != ROOT}
    for extra, requirements in core.get("optional-dependencies", {}).items():
        for r in map(Requirement, requirements):
            name = canonicalize_name(r.name)
            if name.startswith("higher-") and name not in plugin_versions:
                problems.append(f"the core's [{extra}] extra names {r.name}, which is not under plugins/")
            elif name in plugin_versions and not r.specifier.contains(plugin_versions[name], prereleases=True):
                problems.append(f"the core's [{extra}] extra requires {r}, which excludes {name} {plugin_versions[name]}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist" / "release")
    parser.add_argument("--only", help="comma-separated distribution names (default: all)")
    args = parser.parse_args(argv)
    names = projects()
    selected = {n: d for n, d in names.items() if not args.only or n in args.only.split(",")}
    shutil.rmtree(args.out, ignore_errors=True)
    failures = 0

    def report(what: str, problem: str | None) -> None:
        nonlocal failures
        failures += problem is not None
        print(f"{'FAIL' if problem else 'ok  '} {what}" + (f": {problem}" if problem else ""), flush=True)

    for problem in check_versions(names) or [None]:
        report("versions agree", problem)
    built: list[Path] = []
    for name, directory in selected.items():
        version = metadata(directory)["version"]
        try:
            files = build(directory, args.out, "--sdist", "--wheel")
        except subprocess.CalledProcessError as exc:
            report(f"{name}: build", exc.stderr.strip().splitlines()[-1] if exc.stderr.strip() else str(exc))
            continue
        built += files
        stem = f"{canonicalize_name(name).replace('-', '_')}-{version}"
        sdists = [f for f in files if f.name == f"{stem}.tar.gz"]
        wheels = [f for f in files if f.name.startswith(f"{stem}-") and f.suffix == ".whl"]
        report(f"{name} {version}: sdist and wheel named with the pyproject's version",
               None if len(sdists) == 1 and len(wheels) == 1 else f"built {[f.name for f in files]}")
        if sdists and wheels:
            with tempfile.TemporaryDirectory() as work:
                report(f"{name}: the sdist builds the same wheel", check_sdist_rebuild(sdists[0], wheels[0], Path(work)))
    twine = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *map(str, built)],
                           capture_output=True, text=True)
    bad = [line for line in twine.stdout.splitlines() if "PASSED" not in line and line.strip()]
    report(f"twine check --strict ({len(built)} files)", None if twine.returncode == 0 else "; ".join(bad)[-2000:])
    print(f"{len(selected)} distributions, {len(built)} files in {args.out}; {failures} check(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
