"""Helpers for the compatibility modules that keep l0-python 0.6's import paths working."""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any


def reexport(namespace: dict[str, Any], *sources: str | tuple[str, Iterable[str]]) -> list[str]:
    """Copy public names from subpackage modules into ``namespace`` and return them.

    Parameters
    ----------
    namespace : dict
        The ``globals()`` of the compatibility module.
    *sources : str or (str, names)
        A module name, whose ``__all__`` is copied (dunder names skipped), or
        a ``(module name, names)`` pair, of which the names the module has
        are copied (so a subpackage still being written contributes what
        exists).

    Returns
    -------
    list of str
        The names copied, in order, for the module's ``__all__``.

    Examples
    --------
    >>> ns = {}
    >>> reexport(ns, ("l0_core", ["HardConcrete", "NoSuchName"]))
    ['HardConcrete']
    """
    exported: list[str] = []
    for source in sources:
        if isinstance(source, str):
            module = importlib.import_module(source)
            names: Iterable[str] = getattr(module, "__all__", ())
        else:
            module = importlib.import_module(source[0])
            names = [n for n in source[1] if hasattr(module, n)]
        for name in names:
            if name.startswith("__"):
                continue
            namespace[name] = getattr(module, name)
            if name not in exported:
                exported.append(name)
    return exported
