"""``moesched`` command line: one subcommand per module in :mod:`moesched.commands`.

Each command module defines ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``.
A :class:`MoeschedError` becomes ``moesched: error: <one line>`` and exit status 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from moesched.errors import MoeschedError

COMMANDS = ("models", "schedules", "simulate", "solve", "sweep", "profile", "validate", "plot")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse's own convention)
        self.exit(2, f"moesched: error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="moesched", description="Profile, simulate, solve and execute MoE training schedules.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    modules = {}
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"moesched.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"moesched.commands.{name}":
                continue
            raise
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        modules[name] = mod
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        return int(modules[args.command].run(args) or 0)
    except MoeschedError as e:
        print(f"moesched: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("moesched: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `moesched models | head`: the reader left; say nothing
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
