"""The torch side of moesched: task kernels, the plan interpreter and the torchrun entry point.

Modules: ``layers`` (the MoE transformer and a plain reference model), ``ffn`` (hand-written
expert math), ``state`` (per-step buffers and index bookkeeping), ``comm`` (process groups
and all-to-all helpers), ``tasks`` and ``comm_tasks`` (one function per task kind of
:mod:`moesched.graph`: compute, communication), ``runtime`` (:class:`PlannedStep`, the plan
interpreter), ``issue`` (how a step's tasks are launched, in plan order), ``run`` (``python -m executor.run``), ``profiling`` (measuring a
profile), ``commands`` (the ``moesched profile`` and ``moesched validate`` commands,
registered with the moesched CLI through an entry point).

Imports from moesched only its pure-Python modules; never ortools.
"""
