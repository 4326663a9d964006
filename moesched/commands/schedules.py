"""``moesched schedules``: the published schedule policies, with paper and summary."""
from __future__ import annotations

import argparse

from moesched import schedules

HELP = "list the schedule policies (published baselines)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    mods = [schedules.get(name) for name in schedules.POLICIES]
    width = max(len(n) for n in schedules.POLICIES)
    for name, mod in zip(schedules.POLICIES, mods):
        paper = " ".join(str(getattr(mod, "PAPER", "")).split())
        summary = " ".join(str(getattr(mod, "SUMMARY", "")).split())
        print(f"{name.ljust(width)}  {paper}")
        if summary:
            print(f"{' ' * width}  {summary}")
        limits = " ".join(str(getattr(mod, "LIMITS", "")).split())
        if limits:
            print(f"{' ' * width}  not modelled: {limits}")
    return 0
