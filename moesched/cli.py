"""``moesched`` command line: one subcommand per module in :mod:`moesched.commands`.

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
import threading

from moesched.errors import MoeschedError

COMMANDS = ("models", "schedules", "simulate", "solve", "sweep", "profile", "validate", "plot")


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
    return int(modules[args.command].run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
