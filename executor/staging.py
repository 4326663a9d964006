"""Host index arrays to the device without a per-array pinned allocation.

The executor derives row indices on the host from the routing counts (numpy, ``state.py``)
and the GPU kernels need them. ``Tensor.pin_memory()`` per array took 25-60 µs of host time
per transfer on 1 x H200 (20-40 transfers a step). A
:class:`Staging` keeps one pinned host buffer and one device buffer per dtype for the life
of a :class:`executor.runtime.PlannedStep`, hands out consecutive slices during a step
(a numpy copy into pinned memory, then one asynchronous copy on the current stream), and
starts again at offset 0 on :meth:`reset`.

Safety: a slice is reused only in the next step, and a step ends with the host holding its
loss, after the compute stream waited for every other stream, so every copy and every
kernel that read a slice has finished. An array that does not fit goes through
``pin_memory()`` on its own and the buffer grows (to twice the step's need) at the next
reset.
"""
from __future__ import annotations

import numpy as np
import torch

DTYPES = {np.dtype(np.int64): torch.int64, np.dtype(np.int32): torch.int32}


class Staging:
    """Per-step bump allocator of pinned host + device int buffers (module docstring)."""

    def __init__(self, device: torch.device, elements: int = 1 << 16):
        self.device = device
        self._bufs: dict[np.dtype, tuple[torch.Tensor, np.ndarray, torch.Tensor]] = {}
        self._off: dict[np.dtype, int] = {}
        self._want: dict[np.dtype, int] = {d: elements for d in DTYPES}

    def _alloc(self, dt: np.dtype, n: int) -> None:
        host = torch.empty(n, dtype=DTYPES[dt], pin_memory=True)
        self._bufs[dt] = (host, host.numpy(), torch.empty(n, dtype=DTYPES[dt], device=self.device))

    def reset(self) -> None:
        """Start a step: every slice free again (the last step is over)."""
        for dt, want in self._want.items():
            if dt not in self._bufs or self._bufs[dt][1].size < want:
                self._alloc(dt, want)
            self._off[dt] = 0

    def put(self, a: np.ndarray) -> torch.Tensor:
        """``a`` (int64 or int32, any shape) as a device tensor of the same shape, copied on
        the current stream."""
        a = np.ascontiguousarray(a)
        dt = a.dtype
        if dt not in DTYPES:
            raise TypeError(f"staging holds int64 and int32 arrays, not {dt}")
        o, n = self._off.get(dt, 0), a.size
        bufs = self._bufs.get(dt)
        if bufs is None or o + n > bufs[1].size:
            self._want[dt] = max(self._want[dt], 2 * (o + n))
            return torch.from_numpy(a).pin_memory().to(self.device, non_blocking=True)
        host, host_np, dev = bufs
        self._off[dt] = o + n
        host_np[o:o + n] = a.reshape(-1)
        out = dev[o:o + n]
        out.copy_(host[o:o + n], non_blocking=True)
        return out.view(a.shape)
