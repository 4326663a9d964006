"""``python -m executor.launch [torchrun options] -m executor.run --plan plan.json ...``

torchrun with one line on failure. torchrun raises its own ``ChildFailedError`` (a Python
traceback and a failure table) whenever a worker exits non-zero, whatever the worker
printed; ``@record`` on the worker only adds an error file to that table. This launcher
takes torchrun's options (``--nproc_per_node``, ``--nnodes``, ``--rdzv-*``, ...), runs
the same agent programmatically (:func:`torch.distributed.run.run`) with every worker's
stderr sent to a log file, and then

- on success, copies each worker's stderr to its own stderr (rank by rank) and exits 0;
- on failure, prints ONE line and exits 2:
  ``moesched: error: rank R failed: <that rank's own one-line error>``, where R is the
  first rank that failed (torchrun's root cause); a rank killed by a signal reads
  ``rank R failed: killed by SIGKILL``.

Worker stdout (rank 0's result lines) passes through as it comes. Bounds are those of
:mod:`executor.watchdog`: a worker that dies or stops makes the launcher return within
the workers' ``--heartbeat-timeout`` plus a few seconds.
"""
from __future__ import annotations

import contextlib
import glob
import io
import logging
import os
import shutil
import signal
import sys
import tempfile

from executor import errors


def _quiet_torchrun() -> None:
    """torchrun's own log lines (the OMP banner, closing signals, the failure table) off."""
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def _parse(argv: list[str]):
    """torchrun's arguments; a bad one becomes the one error line (argparse's message)."""
    from torch.distributed import run as trun
    buf = io.StringIO()
    try:
        with contextlib.redirect_stderr(buf):
            return trun.parse_args(argv)
    except SystemExit as e:
        if e.code in (0, None):  # --help
            sys.stdout.write(buf.getvalue())
            raise
        msg = next((ln.split("error:", 1)[1].strip() for ln in buf.getvalue().splitlines() if "error:" in ln),
                   "bad arguments")
        from moesched.errors import MoeschedError
        raise MoeschedError(msg) from None


def _rank_stderr(log_dir: str, local_rank: int) -> str:
    """The text a local rank wrote to stderr (the latest attempt), or ''."""
    paths = sorted(glob.glob(os.path.join(log_dir, "**", "attempt_*", str(local_rank), "stderr.log"), recursive=True))
    if not paths:
        return ""
    with open(paths[-1], errors="replace") as f:
        return f.read()


# the lines a rank prints when another rank failed first (executor.errors, executor.watchdog)
CONSEQUENCES = ("communication with the other ranks failed", "stopped responding", "the launcher ended the run",
                "the rendezvous store", "failed: ")


def root_cause(exitcodes: dict[int, int], texts: dict[int, str], first: int) -> int:
    """The rank that failed first in fact: one killed by a signal other than the launcher's
    SIGTERM, else one whose own line is not a consequence of another rank's failure, else
    torchrun's first observed failure."""
    killed = [r for r, c in sorted(exitcodes.items()) if c < 0 and -c != signal.SIGTERM]
    if killed:
        return killed[0]
    for r in sorted(texts):
        own = [ln for ln in texts[r].splitlines() if ln.startswith(errors.PREFIX)]
        if own and not any(c in own[-1] for c in CONSEQUENCES):
            return r
    return first


def failure_line(rank: int, exitcode: int, stderr_text: str) -> str:
    """The launcher's one line for a failed rank: its own error line, its signal, or its
    last line of stderr."""
    own = [ln for ln in stderr_text.splitlines() if ln.startswith(errors.PREFIX)]
    if own:
        return f"rank {rank} failed: {own[-1][len(errors.PREFIX):]}"
    if exitcode < 0:
        try:
            return f"rank {rank} failed: killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"rank {rank} failed: killed by signal {-exitcode}"
    last = next((ln.strip() for ln in reversed(stderr_text.splitlines()) if ln.strip()), "")
    return f"rank {rank} failed with exit status {exitcode}" + (f": {last[:300]}" if last else "")


def _launch(argv: list[str]) -> int:
    from torch.distributed import run as trun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    _quiet_torchrun()
    args = _parse(argv)
    log_dir = tempfile.mkdtemp(prefix="moesched-launch-")
    args.log_dir, args.redirects, args.tee = log_dir, "2", "0"
    try:
        try:
            trun.run(args)
        except ChildFailedError as e:
            texts = {r: _rank_stderr(log_dir, f.local_rank) for r, f in e.failures.items()}
            rank = root_cause({r: f.exitcode for r, f in e.failures.items()}, texts, e.get_first_failure()[0])
            return errors.fail(failure_line(rank, e.failures[rank].exitcode, texts[rank]))
        nproc = int(args.nproc_per_node) if str(args.nproc_per_node).isdigit() else 0
        for local_rank in range(nproc):
            sys.stderr.write(_rank_stderr(log_dir, local_rank))
        return 0
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    errors.quiet_native_logs()  # here and, through the environment, in every worker
    return errors.guarded(lambda: _launch(sys.argv[1:] if argv is None else list(argv)), in_collectives=False)


if __name__ == "__main__":
    sys.exit(main())
