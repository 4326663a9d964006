"""The largest sizes moesched accepts, so that a typo (a cluster of 10^8 GPUs, a model of
10^12 layers) is refused in one line rather than hanging a search or a simulation."""
from __future__ import annotations

#: Most ranks (nodes x GPUs per node) of a cluster or of a profile's hardware.
MAX_RANKS = 65536
#: Most layers of a model (and of ``--layers``).
MAX_LAYERS = 1024
#: Most experts of a model.
MAX_EXPERTS = 65536
#: Largest width, head count, sequence length, micro-batch or vocabulary of a model.
MAX_WIDTH = 1 << 24
#: Most memory of one GPU, bytes (1 PiB; an H200 has 141 GB).
MAX_GPU_MEMORY_BYTES = 1 << 50
