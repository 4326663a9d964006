"""The watchdog in one process: rank 0's watchdog against a peer played by the test through
the same TCPStore (a stale counter, a finished peer, a posted failure)."""
from __future__ import annotations

import time
from datetime import timedelta

import pytest
import torch.distributed as dist
from localhost import free_port

from executor import errors
from executor.watchdog import DONE, Watchdog


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch):
    """(rank 0's watchdog, the store, the lines its die() would print); nothing exits."""
    port = free_port()
    store = dist.TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=5))
    lines: list[str] = []
    monkeypatch.setattr(errors, "die", lambda msg: lines.append(msg))
    wd = Watchdog(0, 2, timeout_s=1.0, interval_s=0.1, host="127.0.0.1", port=port)
    yield wd, store, lines
    wd.finish()


def _wait(lines: list[str], s: float = 3.0) -> None:
    end = time.time() + s
    while not lines and time.time() < end:
        time.sleep(0.05)


def test_a_silent_peer_is_reported_after_the_timeout(world) -> None:
    wd, store, lines = world
    wd.start()
    t0 = time.time()
    _wait(lines)
    assert lines and lines[0] == "rank 1 stopped responding (no heartbeat for 1 s)", lines
    assert 0.9 <= time.time() - t0 < 1.0 + 2 * 0.1 + 3.0  # the bound, and room for a loaded machine


def test_a_beating_or_finished_peer_is_not_reported(world) -> None:
    wd, store, lines = world
    key = f"{wd.prefix}/hb/1"
    wd.start()
    for _ in range(20):  # 2 s of heartbeats, twice the timeout
        store.add(key, 1)
        time.sleep(0.1)
    assert lines == []
    store.add(key, DONE)
    time.sleep(1.5)
    assert lines == []


def test_a_posted_failure_reaches_the_peer(world) -> None:
    wd, store, lines = world
    wd.start()
    store.set(f"{wd.prefix}/fail/1", "out of memory")
    store.add(f"{wd.prefix}/failures", 1)
    _wait(lines, 0.8)
    assert lines[:1] == ["rank 1 failed: out of memory"]


def test_timeout_must_be_positive_and_finite() -> None:
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            Watchdog(0, 2, timeout_s=bad)
