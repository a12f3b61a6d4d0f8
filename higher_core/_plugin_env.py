"""The plugin host's environment variables, read as users spell them.

``HIGHER_CORE_STRICT_PLUGINS`` takes ``1/0``, ``true/false``, ``yes/no``, ``on/off`` in any
case (empty is off); another value is a ``ValueError`` listing these spellings, raised when the
plugins are loaded, as it cannot be told whether the user meant on or off.
``HIGHER_CORE_PLUGINS`` and ``HIGHER_CORE_DISABLE_PLUGINS`` take comma-separated entry
point or distribution names, compared after PEP 503 normalisation (``higher_adam``,
``Higher-Adam`` and ``higher.adam`` all name ``higher-adam``). A name that matches
nothing gives a :class:`~higher_core.errors.PluginLoadWarning` naming the variable.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

from higher_core.errors import PluginLoadWarning

__all__ = ["STRICT_ENV", "DISABLE_ENV", "ONLY_ENV", "normalize", "strict", "Selection"]

STRICT_ENV = "HIGHER_CORE_STRICT_PLUGINS"
DISABLE_ENV = "HIGHER_CORE_DISABLE_PLUGINS"
ONLY_ENV = "HIGHER_CORE_PLUGINS"

_ON = ("1", "true", "yes", "on")
_OFF = ("0", "false", "no", "off", "")


def normalize(name: str) -> str:
    """A distribution or entry point name as PEP 503 compares it: ``Higher_Adam`` -> ``higher-adam``."""
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


def strict() -> bool:
    """Whether ``HIGHER_CORE_STRICT_PLUGINS`` is on.

    Raises:
        ValueError: for a value that is none of the accepted spellings (the
            message lists them).
    """
    raw = os.environ.get(STRICT_ENV)
    if raw is None:
        return False
    value = raw.strip().lower()
    if value in _ON:
        return True
    if value in _OFF:
        return False
    raise ValueError(
        f"{STRICT_ENV}={raw!r} is not a recognised value; accepted (any case): "
        f"{'/'.join(_ON)} to turn it on, {'/'.join(_OFF[:-1])} (or empty) to turn it off. "
        f"Set one of them, or unset {STRICT_ENV}"
    )


def _names(variable: str) -> set[str] | None:
    raw = os.environ.get(variable)
    if raw is None or not raw.strip():
        return None
    return {normalize(part) for part in raw.split(",") if part.strip()}


@dataclass(frozen=True)
class Selection:
    """Which installed plugins ``HIGHER_CORE_PLUGINS`` / ``HIGHER_CORE_DISABLE_PLUGINS`` keep."""

    only: frozenset[str] | None
    disabled: frozenset[str]

    @classmethod
    def from_environment(cls) -> Selection:
        """Read both variables now."""
        only = _names(ONLY_ENV)
        return cls(None if only is None else frozenset(only), frozenset(_names(DISABLE_ENV) or ()))

    def excluded_by(self, names: Iterable[str]) -> str | None:
        """The variable that excludes a plugin known by ``names`` (normalised), or ``None``."""
        keys = set(names)
        if "*" in self.disabled or keys & self.disabled:
            return DISABLE_ENV
        if self.only is not None and not keys & self.only:
            return ONLY_ENV
        return None

    def warn_unmatched(self, installed: dict[str, str]) -> None:
        """Warn about every name that matches no installed plugin.

        Args:
            installed: normalised name -> how to show the plugin (``higher-adam (entry point adam)``).
        """
        shown = ", ".join(sorted(set(installed.values()))) or "none"
        for variable, names in ((ONLY_ENV, self.only or ()), (DISABLE_ENV, self.disabled)):
            for name in sorted(set(names) - set(installed) - {"*"}):
                warnings.warn(
                    f"{variable} names {name!r}, which matches no installed higher-core plugin "
                    f"(names are compared as PEP 503 normalises them). Installed: {shown}.",
                    PluginLoadWarning,
                    stacklevel=5,
                )
