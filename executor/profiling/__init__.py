"""Measuring a profile on the target devices (``torchrun -m moesched profile``).

``timing`` (time primitives: CUDA events, spin-ahead, collectives issued alone, two streams
at once), ``bench`` (one compute task kind on synthetic inputs through the runtime's task
functions), ``context`` (the process group and its collectives per link scope), ``measure``
(compute, collectives, count exchange, interference), ``host`` (host issue costs from real
executor steps), ``main`` (the command: measure, fit with :mod:`moesched.costs`, write).
"""
