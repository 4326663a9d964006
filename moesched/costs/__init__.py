"""From measured samples to the costs of a profile (the pure-Python half of profiling; the
measuring half is :mod:`executor.profiling`).

``fit`` (lines and two-regime fits of (x, µs) samples), ``host`` (fits of the host issue
costs of :mod:`moesched.host`), ``calibrate`` (corrections from tasks timed inside real
executor steps), ``build`` (a profile from the profiler's raw rows; ``refit``), ``check``
(every fit of a profile against its points: ``moesched profile --check``). The profile
format itself is :mod:`moesched.profile`.
"""
