"""``moesched`` command line: one subcommand per module in :mod:`moesched.commands`, plus the
commands other packages register under the entry-point group ``moesched.commands`` (the torch
side registers ``profile`` and ``validate``: :mod:`executor.commands`).

Each command module defines ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``.
A :class:`MoeschedError` becomes ``moesched: error: <one line>`` and exit status 2.
Ctrl-C prints ``moesched: interrupted`` (status 130) and SIGTERM ``moesched: terminated``
(status 143): both unwind the stack as an exception, so :func:`moesched.fileio.write_atomic`
removes its temporary file and the previous output stays intact.
"""
from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from importlib import metadata
from pathlib import Path
from typing import Any
import threading

from moesched.errors import MoeschedError

#: Every command in the order of ``--help``; ``profile`` and ``validate`` are plug-ins.
COMMANDS = ("models", "schedules", "clusters", "simulate", "solve", "layouts", "sweep", "profile", "validate", "plot",
            "routing", "placement", "overlap")
PLUGIN_GROUP = "moesched.commands"


def plugin_commands() -> dict[str, metadata.EntryPoint]:
    """Commands registered under the entry-point group :data:`PLUGIN_GROUP`, by name: those of
    the installed metadata and, when moesched runs from a source checkout, those its
    ``pyproject.toml`` declares (they win: they match the code imported, also from a
    checkout on PYTHONPATH that was never installed)."""
    found = {ep.name: ep for ep in metadata.entry_points(group=PLUGIN_GROUP)}
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    try:
        import tomllib
        project = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {})
    except (ImportError, OSError, ValueError):  # Python 3.10, no checkout, unreadable
        return found
    if project.get("name") == "moesched":
        for name, value in project.get("entry-points", {}).get(PLUGIN_GROUP, {}).items():
            found[name] = metadata.EntryPoint(name, value, PLUGIN_GROUP)
    return found


class _Unavailable:
    """Stands in for a command whose module cannot be imported: says why, in one line."""

    def __init__(self, reason: str) -> None:
        self.HELP, self.reason = f"(unavailable: {reason})", reason

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        pass

    def run(self, args: argparse.Namespace) -> int:
        raise MoeschedError(self.reason)


def _command_modules() -> dict[str, Any]:
    """name -> command module, built-in or plug-in, in :data:`COMMANDS` order (other plug-ins
    after); a plug-in that fails to import, or a listed one nobody registered, is a stand-in."""
    plugins = plugin_commands()
    modules: dict[str, Any] = {}
    for name in COMMANDS + tuple(sorted(set(plugins) - set(COMMANDS))):
        if name in plugins:
            try:
                modules[name] = plugins[name].load()
            except ImportError as e:
                torch_missing = (e.name or "").split(".")[0] == "torch"
                modules[name] = _Unavailable(f"the {name} command needs torch: pip install torch" if torch_missing
                                             else f"the {name} command cannot be loaded: {e}")
            continue
        try:
            modules[name] = importlib.import_module(f"moesched.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"moesched.commands.{name}":
                raise
            modules[name] = _Unavailable(f"the {name} command is not installed: reinstall moesched "
                                         "(pip install torch, then pip install .)")
    return modules


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM, so that cleanup code (``finally``, ``except
    BaseException``) runs before the process exits."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse's own convention)
        self.exit(2, f"moesched: error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    """Run one command; the exit status (0 ok, 2 user error, 130 Ctrl-C, 143 SIGTERM)."""
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main else None
    try:
        return _main(argv)
    except MoeschedError as e:
        print(f"moesched: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("moesched: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("moesched: terminated", file=sys.stderr)
        return 143
    except BrokenPipeError:  # e.g. `moesched models | head`: the reader left; say nothing
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _main(argv: list[str] | None) -> int:
    parser = _Parser(prog="moesched", description="Profile, simulate, solve and execute MoE training schedules.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    modules = _command_modules()
    for name, mod in modules.items():
        mod.add_arguments(sub.add_parser(name, help=mod.HELP, description=mod.HELP))
    args, extra = parser.parse_known_args(argv)
    if extra and not isinstance(modules.get(args.command), _Unavailable):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not args.command:
        parser.error(f"give a command, one of: {', '.join(modules)} (moesched --help says what each does)")
    return int(modules[args.command].run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
