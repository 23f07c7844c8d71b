"""The plugin manager: loading, registries and lookup by name."""

from __future__ import annotations

import importlib.metadata
import os
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any

import pluggy
import torch

from .hookspecs import PROJECT_NAME, L0HookSpecs

__all__ = [
    "DISABLE_AUTOLOAD_ENV",
    "ENTRY_POINT_GROUP",
    "KINDS",
    "L0PluginWarning",
    "PluginInfo",
    "add_builtin_plugin",
    "available",
    "get_plugin_manager",
    "list_plugins",
    "lookup",
    "register_plugin",
    "unregister_plugin",
]

ENTRY_POINT_GROUP = "l0"
DISABLE_AUTOLOAD_ENV = "L0_DISABLE_PLUGIN_AUTOLOAD"

#: kind -> hook that fills it
_SINGULAR = {"gates": "gate", "schedules": "schedule", "losses": "loss"}

KINDS: dict[str, str] = {
    "gates": "l0_register_gates",
    "schedules": "l0_register_schedules",
    "losses": "l0_register_losses",
}

_BUILTIN_PLUGINS: list[str] = ["l0_core.builtins"]


class L0PluginWarning(UserWarning):
    """Warning about a plugin that could not be loaded or registered something wrong."""


@dataclass
class PluginInfo:
    """What one loaded plugin is and what it registered.

    Attributes
    ----------
    name : str
        The plugin's name in the manager (the entry-point name for
        installed plugins).
    distribution : str or None
        Distribution that provides it, when loaded from an entry point.
    version : str or None
        That distribution's version.
    registered : dict
        ``kind -> [names]`` that this plugin registered.

    Examples
    --------
    >>> info = {p.name: p for p in list_plugins()}["l0_core.builtins"]
    >>> "hard_concrete" in info.registered["gates"]
    True
    """

    name: str
    distribution: str | None = None
    version: str | None = None
    registered: dict[str, list[str]] = field(default_factory=dict)


_lock = threading.RLock()
_pm: pluggy.PluginManager | None = None
_dists: dict[str, tuple[str | None, str | None]] = {}
_cache: dict[str, tuple[tuple, dict[str, tuple[Any, str]]]] = {}
#: ``kind -> name -> message`` for registrations refused by type (see :func:`lookup`).
_refused: dict[str, dict[str, str]] = {}


def _refusal(kind: str, obj: Any) -> str | None:
    """Why ``obj`` cannot be registered as a ``kind`` entry (None when it can)."""
    if kind == "gates":
        if not isinstance(obj, type) or not issubclass(obj, torch.nn.Module):
            return f"a gate must be a torch.nn.Module subclass, got {_describe(obj)}"
    elif not callable(obj):
        return f"a {_SINGULAR[kind]} must be callable, got {_describe(obj)}"
    return None


def _describe(obj: Any) -> str:
    kind = "class" if isinstance(obj, type) else type(obj).__name__
    return f"{kind} {obj!r}"[:120]


def _warn(msg: str) -> None:
    warnings.warn(msg, L0PluginWarning, stacklevel=3)


def _validate_plugin(pm: pluggy.PluginManager, plugin: object, name: str) -> bool:
    """Warn about hooks a plugin implements that no spec declares, and drop it if so."""
    unknown = sorted(c.name for c in (pm.get_hookcallers(plugin) or []) if c.spec is None)
    if unknown:
        known = sorted(n for n in dir(L0HookSpecs) if n.startswith("l0_"))
        _warn(
            f"l0 plugin {name!r} implements unknown hook(s) {unknown}; known hooks are {known}. "
            "The plugin was not loaded: fix the hook name or upgrade l0-core."
        )
        pm.unregister(plugin)
        return False
    return True


def _register(pm: pluggy.PluginManager, plugin: object, name: str) -> bool:
    try:
        pm.register(plugin, name=name)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # pluggy validation, duplicate names, a SystemExit
        _warn(f"l0 plugin {name!r} could not be registered: {exc}")
        return False
    return _validate_plugin(pm, plugin, name)


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    try:
        eps = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    except Exception as exc:  # pragma: no cover - broken metadata
        _warn(f"could not read the {ENTRY_POINT_GROUP!r} entry points: {exc}")
        return
    for ep in eps:
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        try:
            plugin = ep.load()
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # SystemExit included: a plugin never ends the process
            _warn(
                f"l0 plugin {ep.name!r} ({ep.value}) failed to import and was skipped: "
                f"{type(exc).__name__}: {exc}"
            )
            continue
        dist = getattr(ep, "dist", None)
        _dists[ep.name] = (
            getattr(dist, "name", None) if dist else None,
            getattr(dist, "version", None) if dist else None,
        )
        _register(pm, plugin, ep.name)


def get_plugin_manager() -> pluggy.PluginManager:
    """Return the process-wide ``l0`` plugin manager, creating it on first use.

    Built-in plugins are registered first, then (unless the environment
    variable ``L0_DISABLE_PLUGIN_AUTOLOAD`` is set to a non-empty value other
    than ``0``) every entry point of the group ``l0``. A plugin that fails to
    import, or implements an unknown hook, is skipped with an
    :class:`L0PluginWarning`; it never stops the import of an l0 package.

    Examples
    --------
    >>> pm = get_plugin_manager()
    >>> pm.project_name
    'l0'
    """
    global _pm
    with _lock:
        if _pm is None:
            pm = pluggy.PluginManager(PROJECT_NAME)
            pm.add_hookspecs(L0HookSpecs)
            import importlib

            for mod_name in _BUILTIN_PLUGINS:
                _register(pm, importlib.import_module(mod_name), mod_name)
            _pm = pm
            if os.environ.get(DISABLE_AUTOLOAD_ENV, "") in ("", "0"):
                _load_entry_points(pm)
        return _pm


def add_builtin_plugin(module_name: str) -> None:
    """Register a sibling package's built-in plugin module (idempotent).

    l0-nn, l0-gates and l0-calibrate call this on import so that their
    built-in gates, schedules and losses go through the same hooks as third
    parties, and are registered even when entry-point autoloading is off.

    Examples
    --------
    >>> add_builtin_plugin("l0_core.builtins")  # already there: no-op
    """
    import importlib

    with _lock:
        if module_name not in _BUILTIN_PLUGINS:
            _BUILTIN_PLUGINS.append(module_name)
        if _pm is not None and _pm.get_plugin(module_name) is None:
            _register(_pm, importlib.import_module(module_name), module_name)


def register_plugin(plugin: object, name: str | None = None) -> str:
    """Register a plugin object (module or instance with ``@hookimpl`` methods) in-process.

    Parameters
    ----------
    plugin : object
        Object whose ``l0_*`` methods are marked with :data:`l0_core.hookimpl`.
    name : str, optional
        Name to list it under; defaults to pluggy's canonical name.

    Returns
    -------
    str
        The name it was registered under (pass it to :func:`unregister_plugin`).

    Examples
    --------
    >>> from l0_core import hookimpl
    >>> class Plugin:
    ...     @hookimpl
    ...     def l0_register_schedules(self, register):
    ...         register("half", lambda p, a, b: a + (b - a) * min(1.0, 2 * p))
    >>> name = register_plugin(Plugin(), name="doc-example")
    >>> "half" in available("schedules")
    True
    >>> unregister_plugin(name)
    """
    pm = get_plugin_manager()
    with _lock:
        name = name or pm.get_canonical_name(plugin)
        if pm.get_plugin(name) is not None:
            raise ValueError(f"a plugin named {name!r} is already registered; pass another name")
        if not _register(pm, plugin, name):
            raise ValueError(f"plugin {name!r} was rejected; see the warning for why")
        return name


def unregister_plugin(plugin_or_name: object) -> None:
    """Remove a plugin registered with :func:`register_plugin` (by object or name).

    Examples
    --------
    >>> from l0_core import hookimpl
    >>> class P:
    ...     @hookimpl
    ...     def l0_register_schedules(self, register):
    ...         register("p-example", lambda p, a, b: b)
    >>> unregister_plugin(register_plugin(P()))
    >>> "p-example" in available("schedules")
    False
    """
    pm = get_plugin_manager()
    with _lock:
        if isinstance(plugin_or_name, str):
            if pm.get_plugin(plugin_or_name) is None:
                raise ValueError(f"no plugin named {plugin_or_name!r} is registered")
            pm.unregister(name=plugin_or_name)
        else:
            pm.unregister(plugin_or_name)


def _plugins_key(pm: pluggy.PluginManager) -> tuple:
    return tuple(sorted((name, id(p)) for name, p in pm.list_name_plugin()))


def _build(kind: str) -> dict[str, tuple[Any, str]]:
    pm = get_plugin_manager()
    key = _plugins_key(pm)
    cached = _cache.get(kind)
    if cached is not None and cached[0] == key:
        return cached[1]
    hook_name = KINDS[kind]
    entries: dict[str, tuple[Any, str]] = {}
    refused: dict[str, str] = {}
    caller = getattr(pm.hook, hook_name)
    # Built-ins first, then the rest in registration order (pluggy calls the
    # last registered first, so walk the implementations ourselves).
    impls = list(caller.get_hookimpls())
    impls.sort(key=lambda impl: (impl.plugin_name not in _BUILTIN_PLUGINS,))
    for impl in impls:
        plugin_name = impl.plugin_name

        def register(name: str, obj: Any, _plugin: str = plugin_name) -> None:
            if not isinstance(name, str) or not name:
                _warn(
                    f"l0 plugin {_plugin!r} registered a {_SINGULAR[kind]} with an invalid name {name!r}"
                )
                return
            refusal = _refusal(kind, obj)
            if refusal is not None:
                message = (
                    f"l0 plugin {_plugin!r} registered {_SINGULAR[kind]} {name!r}, but {refusal}"
                )
                refused[name] = message
                _warn(f"{message}; it is ignored. Fix the plugin.")
                return
            if name in entries:
                _warn(
                    f"l0 plugin {_plugin!r} registered {_SINGULAR[kind]} {name!r}, "
                    f"already registered by {entries[name][1]!r}; the second one is ignored. "
                    "Rename it in the plugin."
                )
                return
            entries[name] = (obj, _plugin)

        try:
            impl.function(register)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # SystemExit included: a plugin never ends the process
            _warn(
                f"l0 plugin {plugin_name!r} failed in {hook_name}: {type(exc).__name__}: {exc}; "
                "what it registered before the error is kept"
            )
    _cache[kind] = (key, entries)
    _refused[kind] = refused
    return entries


def available(kind: str) -> list[str]:
    """Names registered for ``kind`` (``"gates"``, ``"schedules"`` or ``"losses"``), sorted.

    Examples
    --------
    >>> "hard_concrete" in available("gates")
    True
    """
    _check_kind(kind)
    return sorted(_build(kind))


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")


def lookup(kind: str, name: str, *, argument: str | None = None) -> Any:
    """Return the object registered under ``name`` for ``kind``.

    Parameters
    ----------
    kind : str
        ``"gates"``, ``"schedules"`` or ``"losses"``.
    name : str
        Registered name.
    argument : str, optional
        Name of the user-facing argument, used in the error message.

    Raises
    ------
    ValueError
        When no such name is registered; the message lists the names that are.

    Examples
    --------
    >>> lookup("schedules", "linear")(0.5, 1.0, 0.0)
    0.5
    """
    _check_kind(kind)
    entries = _build(kind)
    if isinstance(name, str) and name not in entries and name in _refused.get(kind, {}):
        raise TypeError(
            f"{_refused[kind][name]}; fix the plugin or choose another {_SINGULAR[kind]}"
        )
    if not isinstance(name, str) or name not in entries:
        arg = argument or _SINGULAR[kind]
        raise ValueError(
            f"unknown {_SINGULAR[kind]} {name!r} for {arg}; available: {sorted(entries)}. "
            "Install or register a plugin that provides it (see l0_core.plugins)."
        )
    return entries[name][0]


def list_plugins() -> list[PluginInfo]:
    """List loaded plugins, their distribution versions and what each registered.

    Examples
    --------
    >>> names = [p.name for p in list_plugins()]
    >>> "l0_core.builtins" in names
    True
    """
    pm = get_plugin_manager()
    infos: dict[str, PluginInfo] = {}
    for name, _plugin in pm.list_name_plugin():
        dist, version = _dists.get(name, (None, None))
        if name in _BUILTIN_PLUGINS or name.startswith("l0_"):
            dist = dist or "l0-" + name.split(".")[0][3:]
            try:
                version = version or importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                pass
        infos[name] = PluginInfo(name=name, distribution=dist, version=version)
    for kind in KINDS:
        for reg_name, (_obj, plugin_name) in _build(kind).items():
            if plugin_name in infos:
                infos[plugin_name].registered.setdefault(kind, []).append(reg_name)
    return list(infos.values())
