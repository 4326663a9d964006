"""The executor's own watchdog: a dead, stopped or failed rank stops every other rank
with one line, within a bounded time.

Every rank runs two daemon threads beside its work (:class:`Watchdog`):

- the *beat* thread, every ``interval_s``, adds 1 to this rank's heartbeat counter in the
  rendezvous store (a TCPStore client of its own, at ``MASTER_ADDR:MASTER_PORT``: torchrun's
  agent store, or rank 0's when ranks are started by hand) and reads every peer's counter
  and the failure board;
- the *check* thread, every ``interval_s``, ends this rank (:func:`executor.errors.die`,
  one line, exit status 2) when
  * a peer's counter has not moved for ``timeout_s``:
    ``moesched: error: rank R stopped responding (no heartbeat for S s)``;
  * a peer posted a failure (its own one-line error, posted by :func:`executor.errors.die`):
    ``moesched: error: rank R failed: <its line>``;
  * the store itself gave no answer for ``timeout_s`` (its host is gone) while a peer had
    not finished: ``moesched: error: rank R: the rendezvous store ... stopped answering``.

Bound. A rank that dies (SIGKILL), stops (SIGSTOP) or hangs with its interpreter stuck
makes every other rank exit within ``timeout_s + 2 * interval_s`` (plus process exit); a
rank that fails with an error of its own, within about ``2 * interval_s``. The counter is
moved by a thread, not by the step, so a long healthy step never trips it. A stopped peer
on the same host is sent SIGCONT after it was declared dead, so that the launcher's
closing signal reaches it at once (torchrun otherwise waits 30 s before its SIGKILL).
A rank that finished (:meth:`Watchdog.finish`) is never reported.
"""
from __future__ import annotations

import os
import signal
import socket
import threading
import time
from datetime import timedelta

from executor import errors

DONE = 1 << 40  # added to a rank's counter when it finished normally
DEFAULT_TIMEOUT_S = 30.0


class Watchdog:
    """Heartbeats of one rank and its watch over the others (module docstring)."""

    def __init__(self, rank: int, world: int, timeout_s: float = DEFAULT_TIMEOUT_S,
                 interval_s: float | None = None, host: str | None = None, port: int | None = None):
        if not timeout_s > 0 or timeout_s == float("inf"):
            raise ValueError(f"timeout_s must be positive and finite, got {timeout_s}")
        self.rank, self.world, self.timeout_s = rank, world, float(timeout_s)
        self.interval_s = float(interval_s) if interval_s else min(1.0, self.timeout_s / 5)
        self.host = host or os.environ.get("MASTER_ADDR", "127.0.0.1")
        self.port = int(port or os.environ.get("MASTER_PORT", "29500"))
        run = os.environ.get("TORCHELASTIC_RUN_ID", "local")
        self.prefix = f"moesched_watchdog/{run}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
        self._stop = threading.Event()
        self._lock = threading.Lock()
        now = time.monotonic()
        self._seen = {r: (-1, now) for r in range(world) if r != rank}  # counter, when it last moved
        self._done: set[int] = set()
        self._round_ok = now
        self._failed: tuple[int, str] | None = None
        self._store = None
        self._threads: list[threading.Thread] = []

    # ---- store keys ----------------------------------------------------------------------
    def _key(self, what: str, rank: int) -> str:
        return f"{self.prefix}/{what}/{rank}"

    def start(self) -> Watchdog:
        """Connect to the store, post this rank's pid, start both threads; returns self."""
        import torch.distributed as dist
        self._store = dist.TCPStore(self.host, self.port, is_master=False, wait_for_workers=False,
                                    timeout=timedelta(seconds=self.timeout_s))
        self._store.set(self._key("pid", self.rank), f"{socket.gethostname()} {os.getpid()}")
        self._store.add(self._key("hb", self.rank), 1)
        errors.add_fail_hook(self.post_failure)
        for fn, name in ((self._beat, "moesched-heartbeat"), (self._check, "moesched-watchdog")):
            t = threading.Thread(target=fn, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def finish(self) -> None:
        """This rank finished normally: mark it done for the others and stop watching."""
        self._stop.set()
        errors.remove_fail_hook(self.post_failure)
        try:
            self._store.add(self._key("hb", self.rank), DONE)
        except Exception:  # noqa: BLE001 - the store host may be gone already; nothing to tell
            pass
        # Join the threads: a daemon thread still inside a store call when the interpreter
        # finalizes is unwound through C++ and aborts the process ("terminate called without
        # an active exception"), turning a finished rank into a failed one.
        for t in self._threads:
            t.join(min(self.timeout_s, 10.0))

    def __enter__(self) -> Watchdog:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finish()

    def post_failure(self, message: str) -> None:
        """Post this rank's one-line error for the others (waits at most 1 s for the store;
        nothing when the store gave no answer lately: its host is gone with the others)."""
        self._stop.set()
        with self._lock:
            if time.monotonic() - self._round_ok > 2 * self.interval_s + 1.0:
                return

        def post() -> None:
            try:
                self._store.set(self._key("fail", self.rank), message)
                self._store.add(f"{self.prefix}/failures", 1)
            except Exception:  # noqa: BLE001 - best effort: the others fall back to the heartbeat
                pass
        t = threading.Thread(target=post, daemon=True)
        t.start()
        t.join(1.0)

    # ---- threads -------------------------------------------------------------------------
    def _beat(self) -> None:
        st = self._store
        while not self._stop.is_set():
            try:
                st.add(self._key("hb", self.rank), 1)
                counts = {r: st.add(self._key("hb", r), 0) for r in self._seen}
                failures = st.add(f"{self.prefix}/failures", 0)
                failed = self._read_failure(st) if failures else None
            except Exception:  # noqa: BLE001 - judged by the check thread (no round for timeout_s)
                self._stop.wait(self.interval_s)
                continue
            now = time.monotonic()
            with self._lock:
                self._round_ok = now
                for r, c in counts.items():
                    if c >= DONE:
                        self._done.add(r)
                    if c != self._seen[r][0]:
                        self._seen[r] = (c, now)
                if failed is not None and self._failed is None:
                    self._failed = failed
            self._stop.wait(self.interval_s)

    def _read_failure(self, st) -> tuple[int, str] | None:
        for r in self._seen:
            k = self._key("fail", r)
            if st.check([k]):
                return r, st.get(k).decode(errors="replace")
        return None

    def _check(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(self.interval_s):
            now = time.monotonic()
            if now - last > 2 * self.interval_s + 1.0:  # this process was stopped itself: grace
                with self._lock:
                    self._round_ok = now
                    self._seen = {r: (c, now) for r, (c, _) in self._seen.items()}
            last = now
            verdict = self._verdict(now)
            if verdict is not None and not self._stop.is_set():
                errors.die(verdict)

    def _verdict(self, now: float) -> str | None:
        """The one line that ends this rank now, or None while every peer is fine."""
        with self._lock:
            if self._failed is not None:
                r, msg = self._failed
                return f"rank {r} failed: {msg}"
            live = [r for r in self._seen if r not in self._done]
            if not live:
                return None
            if now - self._round_ok > self.timeout_s:
                return (f"rank {self.rank}: the rendezvous store at {self.host}:{self.port} stopped answering "
                        f"for {self.timeout_s:g} s (its host, the launcher or rank 0, is gone)")
            stale = [r for r in live if now - self._seen[r][1] > self.timeout_s]
        if not stale:
            return None
        r = stale[0]
        self._resume_if_local(r)
        return f"rank {r} stopped responding (no heartbeat for {self.timeout_s:g} s)"

    def _resume_if_local(self, rank: int) -> None:
        """SIGCONT a stopped peer on this host, so the launcher's closing signal ends it now."""
        try:
            host, pid = self._store.get(self._key("pid", rank)).decode().split()
            if host == socket.gethostname():
                os.kill(int(pid), signal.SIGCONT)
        except Exception:  # noqa: BLE001 - another host, or the process is gone: nothing to do
            pass
