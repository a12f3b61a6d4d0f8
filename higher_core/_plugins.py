"""The plugin host: entry-point discovery through pluggy, isolated per plugin.

Installed plugins are found through the entry point group
``higher_core.plugins``. Discovery is lazy (the first lookup loads them) and
finishes or is retried: a ``KeyboardInterrupt`` while it runs leaves it
unfinished, so the next lookup loads again. Every plugin is validated when it
is registered, as pluggy validates hooks: a hook name that is not in
:mod:`higher_core.hookspecs` is refused, and its optimizer table is checked
whole (a table with one bad entry registers nothing). A plugin that fails to
import (any exception, ``SystemExit`` included) or to validate is reported with
a :class:`~higher_core.errors.PluginLoadWarning` naming its distribution, and
every other plugin keeps working; in strict mode every other plugin is loaded
first and one :class:`~higher_core.errors.PluginLoadError` lists every failure.
A plugin whose optimizer the installed torch does not have (it raised
:class:`~higher_core.errors.OptimizerUnavailableError` while importing, through
:func:`higher_core.compat.torch_optimizer`) is not broken: it registers nothing,
is listed as unavailable with the reason, and strict mode ignores it.

:func:`higher_core.register_optim` is a plugin too: registered first, with a
``tryfirst`` hook implementation (reserved for it: another plugin marking its
optimizers hook ``tryfirst`` is refused), so its entries win over any other
plugin's in the same table. The environment variables are read by :mod:`higher_core._plugin_env`.
"""

from __future__ import annotations

import sys
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pluggy

from higher_core import hookspecs
from higher_core._plugin_env import DISABLE_ENV, ONLY_ENV, STRICT_ENV, Selection, normalize, strict
from higher_core.errors import OptimizerUnavailableError, PluginLoadError, PluginLoadWarning

if sys.version_info >= (3, 10):
    from importlib import metadata as importlib_metadata
else:  # pragma: no cover - exercised only on Python 3.9
    import importlib_metadata

__all__ = [
    "hookimpl",
    "PluginHost",
    "PluginRecord",
    "PluginFailure",
    "PluginExclusion",
    "PluginUnavailable",
    "Provider",
    "plugin_host",
    "register_plugin",
    "unregister_plugin",
    "STRICT_ENV",
    "DISABLE_ENV",
    "ONLY_ENV",
]

hookimpl = hookspecs.hookimpl
"""Marker for hook implementations: decorate ``higher_core_optimizers`` with it."""

EXPLICIT = "higher_core.register_optim"
"""The name of the plugin that holds :func:`higher_core.register_optim`'s entries."""


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
class PluginExclusion:
    """An installed plugin that an environment variable kept from loading."""

    plugin: PluginRecord
    variable: str
    names: frozenset[str]  # its entry point and distribution names, normalised


@dataclass(frozen=True)
class PluginUnavailable:
    """An installed plugin whose optimizer the installed torch does not have (it registers nothing)."""

    plugin: PluginRecord
    reason: str


@dataclass(frozen=True)
class Provider:
    """One differentiable optimizer offered by one plugin (higher ``priority`` wins)."""

    optimizer_type: type
    diff_type: type
    plugin: PluginRecord
    priority: int = 0


@dataclass
class _Table:
    providers: dict[type, list[Provider]] = field(default_factory=dict)
    failures: list[PluginFailure] = field(default_factory=list)
    excluded: list[PluginExclusion] = field(default_factory=list)
    unavailable: list[PluginUnavailable] = field(default_factory=list)

    def best(self, optimizer_type: type) -> list[Provider]:
        """The providers of ``optimizer_type`` with the highest priority (more than one: a conflict)."""
        providers = self.providers.get(optimizer_type, [])
        top = max((p.priority for p in providers), default=0)
        return [p for p in providers if p.priority == top]


class _ExplicitRegistrations:
    """The entries of :func:`higher_core.register_optim`, as a plugin that runs first."""

    def __init__(self) -> None:
        self.entries: dict[type, type] = {}

    @hookimpl(tryfirst=True)
    def higher_core_optimizers(self) -> dict[type, type]:
        return dict(self.entries)


def _check_table(offered: Any) -> list[tuple[type, type]]:
    """Every ``(optimizer type, differentiable type)`` pair of a hook's table, or a ``TypeError`` listing the bad ones."""
    if isinstance(offered, Mapping):
        pairs = list(offered.items())
    else:
        try:
            pairs = [tuple(pair) for pair in offered]
        except TypeError:
            raise TypeError(
                f"higher_core_optimizers() returned {offered!r}; it must return a mapping "
                "{optimizer type: DifferentiableOptimizer subclass} or an iterable of such pairs"
            ) from None
    from higher_core._optimizer import DifferentiableOptimizer

    problems = []
    for pair in pairs:
        if len(pair) != 2:
            problems.append(f"{pair!r} is not an (optimizer type, differentiable type) pair")
            continue
        optimizer_type, diff_type = pair
        if not isinstance(optimizer_type, type):
            problems.append(f"{optimizer_type!r} is not a type")
        if not (isinstance(diff_type, type) and issubclass(diff_type, DifferentiableOptimizer)):
            problems.append(f"{diff_type!r} (offered for {optimizer_type!r}) is not a subclass "
                            "of higher_core.optim.DifferentiableOptimizer")
    if problems:
        raise TypeError("its optimizer table is invalid, so none of it was registered: " + "; ".join(problems))
    return pairs


class PluginHost:
    """Owns the pluggy :class:`~pluggy.PluginManager` and the optimizer table it yields."""

    def __init__(self, group: str = hookspecs.ENTRY_POINT_GROUP) -> None:
        self.group = group
        self.manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.manager.add_hookspecs(hookspecs)
        self._records: dict[str, PluginRecord] = {}
        self._offers: dict[str, list[Provider]] = {}
        self._failures: list[tuple[PluginFailure, BaseException, str]] = []
        self._excluded: list[PluginExclusion] = []
        self._unavailable: list[PluginUnavailable] = []
        self._discovered = False
        self._table: _Table | None = None
        self._lock = threading.RLock()
        self._explicit = _ExplicitRegistrations()
        self.register(self._explicit, name=EXPLICIT)

    # -- registration ---------------------------------------------------------------
    def register(self, plugin: Any, name: str | None = None, record: PluginRecord | None = None) -> str:
        """Register ``plugin`` (a module or object with hook implementations), validated now.

        A hook name that is not in :mod:`higher_core.hookspecs`, or an optimizer
        table with a bad entry, raises :class:`pluggy.PluginValidationError`
        naming the plugin, and nothing of the plugin is registered.
        """
        with self._lock:
            plugin_name = self.manager.register(plugin, name=name)
            if plugin_name is None:  # blocked name
                raise ValueError(f"plugin name {name!r} is blocked")
            record = record or PluginRecord(name=plugin_name)
            try:
                self._check_hooks(plugin, record)
                self._offers[plugin_name] = self._read_offers(plugin, plugin_name, record)
            except BaseException:
                self.manager.unregister(plugin)
                self._offers.pop(plugin_name, None)
                raise
            self._records[plugin_name] = record
            self._table = None
            return plugin_name

    def unregister(self, plugin: Any) -> None:
        """Remove ``plugin`` and its optimizers from the table."""
        with self._lock:
            name = self.manager.get_name(plugin)
            self.manager.unregister(plugin)
            self._records.pop(name or "", None)
            self._offers.pop(name or "", None)
            self._table = None

    def set_explicit(self, optimizer_type: type, diff_type: type | None) -> None:
        """Add (or, with ``None``, remove) a :func:`~higher_core.register_optim` entry."""
        with self._lock:
            if diff_type is None:
                self._explicit.entries.pop(optimizer_type, None)
            else:
                self._explicit.entries[optimizer_type] = diff_type
            self._offers[EXPLICIT] = self._read_offers(self._explicit, EXPLICIT, self._records[EXPLICIT])
            self._table = None

    def _check_hooks(self, plugin: Any, record: PluginRecord) -> None:
        unknown = sorted(c.name for c in self.manager.get_hookcallers(plugin) or () if c.spec is None)
        if unknown:
            raise pluggy.PluginValidationError(
                plugin,
                f"{record.source} implements unknown hook(s) {', '.join(map(repr, unknown))}; "
                f"known hooks: {', '.join(hookspecs.HOOK_NAMES)}",
            )
        if plugin is not self._explicit and any(
                impl.tryfirst for impl in self.manager.hook.higher_core_optimizers.get_hookimpls()
                if impl.plugin is plugin):
            raise pluggy.PluginValidationError(
                plugin,
                f"{record.source} marks higher_core_optimizers tryfirst, which is reserved for "
                "higher_core.register_optim (the user's choice wins over every plugin); remove tryfirst",
            )

    def _read_offers(self, plugin: Any, plugin_name: str, record: PluginRecord) -> list[Provider]:
        offers: list[Provider] = []
        for impl in self.manager.hook.higher_core_optimizers.get_hookimpls():
            if impl.plugin_name != plugin_name:
                continue
            priority = 1 if impl.tryfirst else -1 if impl.trylast else 0
            try:
                pairs = _check_table(impl.function())
            except Exception as exc:  # noqa: BLE001 - reported with the plugin's name
                raise pluggy.PluginValidationError(
                    plugin, f"{record.source}: higher_core_optimizers() failed: {type(exc).__name__}: {exc}"
                ) from exc
            offers.extend(Provider(t, d, record, priority) for t, d in pairs)
        return offers

    # -- entry points -----------------------------------------------------------------
    def _discover(self) -> None:
        """Load every selected entry point; raises ``KeyboardInterrupt`` with discovery unfinished.

        An unknown ``HIGHER_CORE_STRICT_PLUGINS`` value is refused first (a
        ``ValueError``, with discovery unfinished), whether or not a plugin fails.
        """
        strict()
        self._failures = []
        self._excluded = []
        self._unavailable = []
        selection = Selection.from_environment()
        installed: dict[str, str] = {}
        for ep in importlib_metadata.entry_points(group=self.group):
            dist = getattr(ep, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else None
            record = PluginRecord(
                name=f"{dist_name or '?'}:{ep.name}",
                distribution=dist_name or f"entry point {ep.name!r}",
                version=dist.version if dist is not None else None,
                entry_point=f"{ep.name} = {ep.value}",
            )
            names = frozenset(normalize(n) for n in (ep.name, dist_name) if n)
            installed.update({n: f"{dist_name or '?'} (entry point {ep.name})" for n in names})
            variable = selection.excluded_by(names)
            if variable is not None:
                self._excluded.append(PluginExclusion(record, variable, names))
            elif self.manager.get_plugin(record.name) is None:
                self._load(ep, record)
        selection.warn_unmatched(installed)
        self._discovered = True

    def _load(self, ep: Any, record: PluginRecord) -> None:
        during = "loading entry point " + str(record.entry_point)
        try:
            plugin = ep.load()
            if not self.manager.is_registered(plugin):
                self.register(plugin, name=record.name, record=record)
        except KeyboardInterrupt:
            raise
        except OptimizerUnavailableError as exc:  # this torch lacks its optimizer: not a broken plugin
            self._unavailable.append(PluginUnavailable(record, str(exc)))
        except BaseException as exc:  # noqa: BLE001 - SystemExit from a plugin must not end the program
            self._fail(record.source, exc, during, self._failures)

    @staticmethod
    def _fail(source: str, exc: BaseException, during: str,
              into: list[tuple[PluginFailure, BaseException, str]]) -> None:
        failure = PluginFailure(source=source, error=f"{type(exc).__name__}: {exc}")
        into.append((failure, exc, during))
        if not strict():
            warnings.warn(
                f"higher-core plugin from {source} failed while {during}: {failure.error}. "
                f"Its optimizers are unavailable; every other plugin keeps working "
                f"(set {STRICT_ENV}=1 to make this an error).",
                PluginLoadWarning,
                stacklevel=6,
            )

    def _raise_if_strict(self, failures: list[tuple[PluginFailure, BaseException, str]]) -> None:
        if failures and strict():
            listed = "; ".join(f"{f.source} failed while {during}: {f.error}" for f, _, during in failures)
            raise PluginLoadError(
                f"{len(failures)} higher-core plugin(s) failed ({STRICT_ENV} is set, so this is an "
                f"error; every other plugin was loaded): {listed}. Fix or uninstall them, or leave "
                f"them out with {DISABLE_ENV}."
            ) from failures[0][1]

    # -- the optimizer table ------------------------------------------------------------
    def table(self, raise_failures: bool = True) -> _Table:
        """The providers of every optimizer type, after loading the installed plugins.

        Args:
            raise_failures: in strict mode, raise :class:`PluginLoadError` when a plugin failed.
        """
        with self._lock:
            if not self._discovered:
                self._discover()
            if self._table is None:
                self._table = self._build_table()
            if raise_failures:
                self._raise_if_strict(self._failures)
            return self._table

    def _build_table(self) -> _Table:
        table = _Table(failures=[f for f, _, _ in self._failures], excluded=list(self._excluded),
                       unavailable=list(self._unavailable))
        for offers in self._offers.values():
            for offer in offers:
                providers = table.providers.setdefault(offer.optimizer_type, [])
                if all(p.diff_type is not offer.diff_type or p.priority != offer.priority for p in providers):
                    providers.append(offer)
        return table

    def records(self) -> list[PluginRecord]:
        """Every registered plugin (not :func:`register_optim`'s), after loading the installed ones."""
        self.table(raise_failures=False)
        return [r for name, r in self._records.items() if name != EXPLICIT]

    def conformance(self) -> list[object]:
        """Every plugin's ``higher_core_conformance`` tables, each plugin's hook called on its own.

        A hook that raises is reported like a plugin that fails to load: a
        :class:`PluginLoadWarning` naming it, or, in strict mode, one
        :class:`PluginLoadError` after every other plugin's hook ran.
        """
        self.table()
        failures: list[tuple[PluginFailure, BaseException, str]] = []
        infos: list[object] = []
        for impl in self.manager.hook.higher_core_conformance.get_hookimpls():
            record = self._records.get(impl.plugin_name, PluginRecord(name=impl.plugin_name))
            try:
                infos.extend(impl.function())
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # noqa: BLE001 - isolate every plugin
                self._fail(record.source, exc, "calling higher_core_conformance()", failures)
        self._raise_if_strict(failures)
        return infos


_HOST = PluginHost()


def plugin_host() -> PluginHost:
    """The process-wide plugin host (entry points are loaded on first use)."""
    return _HOST


def register_plugin(plugin: Any, name: str | None = None) -> str:
    """Register a plugin object at run time; the next optimizer lookup sees it.

    Its hooks and its optimizer table are validated now
    (:class:`pluggy.PluginValidationError` naming it otherwise).

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
        if plugin is None or plugin_or_name == EXPLICIT:
            raise ValueError(f"no plugin named {plugin_or_name!r} is registered")
    _HOST.unregister(plugin)
