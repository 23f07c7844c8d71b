"""The l0 plugin system (pluggy project ``l0``, entry-point group ``l0``).

A third-party package adds gate types, temperature schedules or calibration
losses by implementing the hooks of :class:`~l0_core.plugins.hookspecs.L0HookSpecs`
and declaring an entry point in its ``pyproject.toml``::

    [project.entry-points.l0]
    my_plugin = "my_package.l0_plugin"

where ``my_package/l0_plugin.py`` contains::

    from l0_core import hookimpl

    @hookimpl
    def l0_register_schedules(register):
        register("step", lambda progress, initial, final: initial if progress < 0.5 else final)

Every l0 class that makes gates or schedules then accepts the name
(``TemperatureScheduler(schedule="step")``, ``L0Linear(..., gate="my_gate")``).
Set ``L0_DISABLE_PLUGIN_AUTOLOAD=1`` to skip entry points (built-ins stay).
"""

from .hookspecs import PROJECT_NAME, L0HookSpecs, hookimpl, hookspec
from .manager import (
    DISABLE_AUTOLOAD_ENV,
    ENTRY_POINT_GROUP,
    KINDS,
    L0PluginWarning,
    PluginInfo,
    add_builtin_plugin,
    available,
    get_plugin_manager,
    list_plugins,
    lookup,
    register_plugin,
    unregister_plugin,
)

__all__ = [
    "DISABLE_AUTOLOAD_ENV",
    "ENTRY_POINT_GROUP",
    "KINDS",
    "L0HookSpecs",
    "L0PluginWarning",
    "PROJECT_NAME",
    "PluginInfo",
    "add_builtin_plugin",
    "available",
    "get_plugin_manager",
    "hookimpl",
    "hookspec",
    "list_plugins",
    "lookup",
    "register_plugin",
    "unregister_plugin",
]
