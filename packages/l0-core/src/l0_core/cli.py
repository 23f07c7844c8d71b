"""Command line: ``l0 plugins`` (or ``python -m l0_core plugins``)."""

from __future__ import annotations

import argparse
import importlib
import sys

from .plugins import list_plugins

#: sibling packages that register built-in plugins when imported
_FAMILY = ("l0_nn", "l0_gates", "l0_calibrate")


def _plugins(out) -> int:
    for module in _FAMILY:  # list what the installed l0 packages register too
        try:
            importlib.import_module(module)
        except ImportError:
            pass
    for info in list_plugins():
        version = f" {info.version}" if info.version else ""
        dist = f" ({info.distribution}{version})" if info.distribution else ""
        out.write(f"{info.name}{dist}\n")
        if not info.registered:
            out.write("    (registers nothing)\n")
        for kind, names in sorted(info.registered.items()):
            out.write(f"    {kind}: {', '.join(sorted(names))}\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``l0`` console command.

    Examples
    --------
    >>> import io, contextlib
    >>> buf = io.StringIO()
    >>> with contextlib.redirect_stdout(buf):
    ...     rc = main(["plugins"])
    >>> rc
    0
    >>> "hard_concrete" in buf.getvalue()
    True
    """
    parser = argparse.ArgumentParser(prog="l0", description="l0 command line tools")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("plugins", help="list loaded plugins and what each registered")
    args = parser.parse_args(argv)
    if args.command == "plugins":
        return _plugins(sys.stdout)
    return 2  # pragma: no cover - argparse rejects other commands


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
