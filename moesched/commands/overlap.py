"""``moesched overlap TRACE``: how much communication a torch.profiler trace hid under
compute (:mod:`moesched.profiler_trace`)."""
from __future__ import annotations

import argparse

from moesched.profiler_trace import overlap_report, read_kernels

HELP = "report the communication a torch.profiler trace (Chrome JSON) ran under compute"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("trace", help="a torch.profiler Chrome trace (export_chrome_trace) with CUDA kernels")


def run(args: argparse.Namespace) -> int:
    kernels, labels = read_kernels(args.trace)
    print("\n".join(overlap_report(kernels, labels).lines()))
    return 0
