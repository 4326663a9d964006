"""One-line errors for the torch-side entry points (``executor.run``, ``executor.selfcheck``,
``moesched validate``, the profiler): every failure ends in ONE line
``moesched: error: ...`` on stderr and exit status 2, on every rank, with no traceback.

- :func:`fail` prints the line (at most once per process) and returns 2, for a ``main``
  that can still return normally.
- :func:`die` prints the line and ends the process at once with ``os._exit(2)``: for a
  failure seen from a helper thread (the watchdog) or after a collective failed, when the
  main thread may be blocked in a collective and the process group's teardown could hang.
- :func:`guarded` runs an entry point's ``main`` and turns every exception into that line:
  :class:`moesched.errors.MoeschedError` as it is, a backend error of a collective (a peer
  died or stopped) as ``rank R: communication with the other ranks failed (...)``, OSError,
  MemoryError and any other exception as one line naming its type; KeyboardInterrupt and
  SIGTERM (torchrun's closing signal) as one line too.

This module imports neither torch nor anything of the executor at import time.
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import threading
import time
from typing import Callable

PREFIX = "moesched: error: "
EXIT_USER = 2
_printed = threading.Lock()
_done = [False]
_hooks: list[Callable[[str], None]] = []  # told the line before die() ends the process


class ArgParser(argparse.ArgumentParser):
    """argparse with one error line: ``moesched: error: <message>`` on stderr, status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USER, f"{PREFIX}{one_line(message)}\n")


def rank_label() -> str:
    """``rank R`` of this process under torchrun (``RANK``), or ``rank 0`` alone."""
    return f"rank {os.environ.get('RANK', '0')}"


def one_line(text: str) -> str:
    """``text`` as one line: whitespace runs (newlines included) become single spaces."""
    return " ".join(str(text).split())


def _print_once(message: str) -> bool:
    """Print ``moesched: error: message`` on stderr unless a line was printed already."""
    with _printed:
        if _done[0]:
            return False
        _done[0] = True
        try:
            sys.stderr.write(PREFIX + one_line(message) + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
    return True


def fail(message: str) -> int:
    """Print the one error line (once per process) and return the exit status 2."""
    _print_once(message)
    return EXIT_USER


def add_fail_hook(hook: Callable[[str], None]) -> None:
    """Call ``hook(line)`` in :func:`die` before the process ends (the watchdog posts the
    line for the other ranks)."""
    _hooks.append(hook)


def remove_fail_hook(hook: Callable[[str], None]) -> None:
    if hook in _hooks:
        _hooks.remove(hook)


def die(message: str) -> None:
    """Print the one error line (once per process), tell the fail hooks, and end the process
    now with status 2, without running exit handlers (a process group's teardown may block
    on a dead peer)."""
    if _print_once(message):
        for hook in list(_hooks):
            try:
                hook(one_line(message))
            except Exception:  # noqa: BLE001 - the line is printed; ending the process matters more
                pass
    else:  # another thread printed its line and is ending the process: let it finish
        time.sleep(2.0)
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        pass
    os._exit(EXIT_USER)


def first_line(exc: BaseException) -> str:
    """The first non-empty line of ``str(exc)`` (at most 300 characters)."""
    return next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")[:300]


def describe(exc: BaseException, with_rank: bool = True) -> str:
    """One line for an exception that escaped an entry point (``with_rank``: led by
    ``rank R:`` where the message itself does not name the problem's place)."""
    from moesched.errors import MoeschedError
    if isinstance(exc, MoeschedError):
        return str(exc)
    first = first_line(exc)
    if _is_comm_error(exc):
        detail = re.sub(r"^\[[^\]]*\.(cc|cpp|h):\d+\]\s*", "", first).split(". ")[0]
        return (f"{rank_label()}: communication with the other ranks failed, a peer rank has probably "
                f"stopped ({type(exc).__name__}: {detail})")
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.strerror or first}: {exc.filename}"
    lead = f"{rank_label()}: " if with_rank else ""
    if isinstance(exc, MemoryError):
        return f"{lead}out of memory"
    return f"{lead}{type(exc).__name__}: {first}" if first else f"{lead}{type(exc).__name__}"


def _is_comm_error(exc: BaseException) -> bool:
    """Whether ``exc`` comes from a collective or the rendezvous store (gloo, NCCL, c10d)."""
    dist = sys.modules.get("torch.distributed")
    kinds = tuple(k for k in (getattr(dist, "DistError", None),) if isinstance(k, type))
    if kinds and isinstance(exc, kinds):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        s in text for s in ("Gloo", "gloo", "NCCL", "Connection closed by peer", "Connection reset by peer",
                            "Socket Timeout", "timed out", "ProcessGroup"))


def _on_sigterm(signum: int, _frame: object) -> None:
    die(f"{rank_label()} stopped: the launcher ended the run (signal {signal.Signals(signum).name}; "
        f"another rank failed or the run was cancelled)")


def quiet_native_logs() -> None:
    """Keep torch's C++ log lines (c10d socket retries with their stack frames) off stderr,
    unless the user set ``TORCH_CPP_LOG_LEVEL``. Effective only before torch is imported."""
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "FATAL")


def install_signal_handlers() -> None:
    """SIGTERM (torchrun's closing signal when another rank failed) ends this rank with the
    one line instead of a silent death or a traceback. Main thread only."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


def exit_now(status: int) -> None:
    """End a torchrun program with ``status`` once its process group is destroyed. Status 0:
    flush the output and skip interpreter finalization, where gloo's worker threads can
    still abort the process ("terminate called without an active exception", seen on
    loaded CPUs; pytorch/pytorch#179291 describes the finalization race). Any other status
    exits normally: a quick exit would let torchrun stop the peers before they print their
    own error line."""
    if status != 0:
        raise SystemExit(status)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)


def guarded(main: Callable[[], int], in_collectives: bool = True) -> int:
    """Run ``main()`` and return its exit status; any exception becomes the one error line
    and status 2. With ``in_collectives`` (a process group may be up) an exception ends the
    process at once (:func:`die`): a failed collective leaves the group unusable and its
    teardown may block on the dead peer."""
    install_signal_handlers()
    try:
        return int(main() or 0)
    except SystemExit as e:  # argparse: its own one line (usage + error) and status 2
        if isinstance(e.code, int) or e.code is None:
            return int(e.code or 0)
        return fail(str(e.code))
    except KeyboardInterrupt:
        msg = f"{rank_label()} interrupted"
    except BaseException as e:  # noqa: BLE001 - the one place that turns every failure into one line
        msg = describe(e)
    if in_collectives and _dist_initialized():
        die(msg)
    return fail(msg)


def _dist_initialized() -> bool:
    dist = sys.modules.get("torch.distributed")
    try:
        return bool(dist is not None and dist.is_available() and dist.is_initialized())
    except Exception:  # noqa: BLE001
        return False
