"""Helpers for the multi-process tests that run on this machine's loopback."""
from __future__ import annotations

import random
import socket
from pathlib import Path


def _ephemeral_low() -> int:
    """The lowest port the kernel hands out to outgoing connections (32768 where unknown)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for torchrun's rendezvous), taken below the
    kernel's ephemeral range where one is: a port the kernel picked (bind to 0) is free only
    until the next outgoing connection (gloo's, a peer test's) is given it, before torchrun
    binds it."""
    low = _ephemeral_low()
    if low > 12000:
        for port in random.sample(range(10000, low), 64):
            if _bindable(port):
                return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
