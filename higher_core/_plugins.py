"""The plugin host: entry-point discovery through pluggy, isolated per plugin.

Installed plugins are found through the entry point group
``higher_core.plugins``. Discovery is lazy (the first lookup loads them) and
cached; plugins registered at run time with :func:`register_plugin` are seen
by the next lookup. A plugin that fails to import, or whose hook raises, is
reported with a :class:`~higher_core.errors.PluginLoadWarning` naming its
distribution, and every other plugin keeps working.

Environment variables:

``HIGHER_CORE_STRICT_PLUGINS=1``
    a plugin that fails to load raises :class:`~higher_core.errors.PluginLoadError`
    instead of warning (for CI).
``HIGHER_CORE_DISABLE_PLUGINS=name,name``
    entry points (by entry point or distribution name) that are not loaded;
    ``*`` disables every installed plugin.
``HIGHER_CORE_PLUGINS=name,name``
    load only these entry points (by entry point or distribution name).
"""

from __future__ import annotations

import os
import sys
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pluggy

from higher_core import hookspecs
from higher_core.errors import PluginLoadError, PluginLoadWarning

if sys.version_info >= (3, 10):
    from importlib import metadata as importlib_metadata
else:  # pragma: no cover - exercised only on Python 3.9
    import importlib_metadata

__all__ = [
    "hookimpl",
    "PluginHost",
    "PluginRecord",
    "PluginFailure",
    "Provider",
    "plugin_host",
    "register_plugin",
    "unregister_plugin",
]

STRICT_ENV = "HIGHER_CORE_STRICT_PLUGINS"
DISABLE_ENV = "HIGHER_CORE_DISABLE_PLUGINS"
ONLY_ENV = "HIGHER_CORE_PLUGINS"

hookimpl = pluggy.HookimplMarker(hookspecs.PROJECT_NAME)
"""Marker for hook implementations: decorate ``higher_core_optimizers`` with it."""


@dataclass(frozen=True)
class PluginRecord:
    """Where a registered plugin came from."""

    name: str
    distribution: str | None = None
    version: str | None = None
    entry_point: str | None = None

    @property
    def source(self) -> str:
        """Human-readable origin, e.g. ``higher-adam 0.1.0`` or ``runtime plugin 'mine'``."""
        if self.distribution is None:
            return f"runtime plugin {self.name!r}"
        return f"{self.distribution} {self.version}".rstrip()


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be loaded or whose hook raised."""

    source: str
    error: str


@dataclass(frozen=True)
class Provider:
    """One differentiable optimizer offered by one plugin."""

    optimizer_type: type
    diff_type: type
    plugin: PluginRecord


@dataclass
class _Table:
    providers: dict[type, list[Provider]] = field(default_factory=dict)
    failures: list[PluginFailure] = field(default_factory=list)


def _env_names(variable: str) -> set[str] | None:
    raw = os.environ.get(variable)
    if raw is None or not raw.strip():
        return None
    return {part.strip() for part in raw.split(",") if part.strip()}


def _strict() -> bool:
    return os.environ.get(STRICT_ENV, "").strip().lower() not in ("", "0", "false", "no")


class PluginHost:
    """Owns the pluggy :class:`~pluggy.PluginManager` and the optimizer table it yields."""

    def __init__(self, group: str = hookspecs.ENTRY_POINT_GROUP) -> None:
        self.group = group
        self.manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.manager.add_hookspecs(hookspecs)
        self._records: dict[str, PluginRecord] = {}
        self._load_failures: list[PluginFailure] = []
        self._entry_points_loaded = False
        self._table: _Table | None = None
        self._snapshot: frozenset[int] = frozenset()
        self._lock = threading.RLock()

    # -- registration ---------------------------------------------------------------
    def register(self, plugin: Any, name: str | None = None, record: PluginRecord | None = None) -> str:
        """Register ``plugin`` (a module or object with hook implementations).

        Hook implementations are validated here, not at first use: a hook name
        that is not in :mod:`higher_core.hookspecs` is refused.
        """
        with self._lock:
            plugin_name = self.manager.register(plugin, name=name)
            if plugin_name is None:  # blocked name
                raise ValueError(f"plugin name {name!r} is blocked")
            try:
                self._check_hooks(plugin, plugin_name)
            except Exception:
                self.manager.unregister(plugin)
                raise
            self._records[plugin_name] = record or PluginRecord(name=plugin_name)
            return plugin_name

    def unregister(self, plugin: Any) -> None:
        with self._lock:
            name = self.manager.get_name(plugin)
            self.manager.unregister(plugin)
            self._records.pop(name or "", None)

    def _check_hooks(self, plugin: Any, plugin_name: str) -> None:
        for caller in self.manager.get_hookcallers(plugin) or ():
            if caller.spec is None and caller.name.startswith("higher_core"):
                known = ", ".join(n for n in dir(hookspecs) if n.startswith("higher_core_"))
                raise pluggy.PluginValidationError(
                    plugin,
                    f"plugin {plugin_name!r} implements unknown hook {caller.name!r}; "
                    f"known hooks: {known}",
                )

    # -- entry points -----------------------------------------------------------------
    def _load_entry_points(self) -> None:
        only = _env_names(ONLY_ENV)
        disabled = _env_names(DISABLE_ENV) or set()
        for ep in importlib_metadata.entry_points(group=self.group):
            dist = getattr(ep, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else None
            version = dist.version if dist is not None else None
            names = {ep.name, dist_name} - {None}
            if "*" in disabled or names & disabled:
                continue
            if only is not None and not names & only:
                continue
            record = PluginRecord(
                name=f"{dist_name or '?'}:{ep.name}",
                distribution=dist_name or f"entry point {ep.name!r}",
                version=version,
                entry_point=f"{ep.name} = {ep.value}",
            )
            try:
                plugin = ep.load()
                if self.manager.is_registered(plugin):
                    continue
                self.register(plugin, name=record.name, record=record)
            except Exception as exc:  # noqa: BLE001 - isolate every plugin
                self._report(record.source, exc, during="loading entry point " + record.entry_point)

    def _report(self, source: str, exc: BaseException, during: str) -> None:
        failure = PluginFailure(source=source, error=f"{type(exc).__name__}: {exc}")
        self._load_failures.append(failure)
        message = (
            f"higher-core plugin from {source} failed while {during}: {failure.error}. "
            f"Its optimizers are unavailable; every other plugin keeps working "
            f"(set {STRICT_ENV}=1 to make this an error)."
        )
        if _strict():
            raise PluginLoadError(message) from exc
        warnings.warn(message, PluginLoadWarning, stacklevel=4)

    # -- the optimizer table ------------------------------------------------------------
    def table(self) -> _Table:
        """The providers of every optimizer type, rebuilt when plugins change."""
        with self._lock:
            if not self._entry_points_loaded:
                self._entry_points_loaded = True
                self._load_entry_points()
            snapshot = frozenset(map(id, self.manager.get_plugins()))
            if self._table is None or snapshot != self._snapshot:
                self._table = self._build_table()
                self._snapshot = snapshot
            return self._table

    def _build_table(self) -> _Table:
        from higher_core._optimizer import DifferentiableOptimizer

        table = _Table(failures=list(self._load_failures))
        before = len(self._load_failures)
        for impl in self.manager.hook.higher_core_optimizers.get_hookimpls():
            record = self._records.get(impl.plugin_name, PluginRecord(name=impl.plugin_name))
            try:
                offered = impl.function()
                pairs = offered.items() if isinstance(offered, Mapping) else list(offered)
                for optimizer_type, diff_type in pairs:
                    if not (isinstance(diff_type, type) and issubclass(diff_type, DifferentiableOptimizer)):
                        raise TypeError(
                            f"it offers {diff_type!r} for {optimizer_type!r}, which is not a "
                            "subclass of higher_core.optim.DifferentiableOptimizer"
                        )
                    if not isinstance(optimizer_type, type):
                        raise TypeError(f"it offers {optimizer_type!r}, which is not a type")
                    providers = table.providers.setdefault(optimizer_type, [])
                    if all(p.diff_type is not diff_type for p in providers):
                        providers.append(Provider(optimizer_type, diff_type, record))
            except Exception as exc:  # noqa: BLE001 - isolate every plugin
                self._report(record.source, exc, during="calling higher_core_optimizers()")
        table.failures.extend(self._load_failures[before:])
        del self._load_failures[before:]
        return table

    def records(self) -> list[PluginRecord]:
        """Every registered plugin, after loading the installed ones."""
        self.table()
        return list(self._records.values())


_HOST = PluginHost()


def plugin_host() -> PluginHost:
    """The process-wide plugin host (entry points are loaded on first use)."""
    return _HOST


def register_plugin(plugin: Any, name: str | None = None) -> str:
    """Register a plugin object at run time; the next optimizer lookup sees it.

    Example:
        >>> import torch, higher_core
        >>> class MyPlugin:
        ...     @higher_core.hookimpl
        ...     def higher_core_optimizers(self):
        ...         return {}
        >>> name = higher_core.register_plugin(MyPlugin(), name="mine")
        >>> higher_core.unregister_plugin(name)
    """
    return _HOST.register(plugin, name=name)


def unregister_plugin(plugin_or_name: Any) -> None:
    """Remove a plugin registered with :func:`register_plugin` (by object or name)."""
    plugin = plugin_or_name
    if isinstance(plugin_or_name, str):
        plugin = _HOST.manager.get_plugin(plugin_or_name)
        if plugin is None:
            raise ValueError(f"no plugin named {plugin_or_name!r} is registered")
    _HOST.unregister(plugin)
