"""Per-step expert loads for the placement replay from a routing trace (:mod:`moesched.routing_trace`).

A trace counts the copies every EP rank of the recorded job routed to each expert; the
replay needs the copies each expert receives in one step of the *replayed* job
(``loads[step][layer][expert]``). The trace gives the distribution over experts; its
volume is rescaled to the replayed cluster: every one of its ``ranks`` EP ranks routes
T*k copies (the model's tokens per rank times top-k,
before capacity). A model with more layers than the trace reuses the trace's layers in
turn (model layer l replays trace layer l mod layers).
"""
from __future__ import annotations

from moesched.errors import MoeschedError
from moesched.fileio import check_input
from moesched.models import MoEModel


def trace_loads(path: str, model: MoEModel, ranks: int) -> tuple[list[list[list[float]]], str]:
    """(loads[step][layer][expert], a label) of the trace at ``path`` for ``model`` on an EP
    group of ``ranks``; one-line MoeschedError for a bad file or an expert count that
    differs from the model's."""
    check_input(path, "routing trace")
    from moesched import routing_trace
    trace = routing_trace.load(path)
    h = trace.header
    if h.experts != model.experts:
        raise MoeschedError(f"routing trace {path} has {h.experts} experts, model {model.name} has {model.experts}")
    by_step: dict[int, dict[int, list[int]]] = {}
    for step, layer, load in routing_trace.iter_layer_loads(trace):
        by_step.setdefault(step, {})[layer] = load
    copies = ranks * model.tokens * model.top_k
    loads = []
    for step in sorted(by_step):
        layers = by_step[step]
        row = []
        for l in range(model.layers):
            n = layers[l % h.layers]
            tot = sum(n)
            row.append([copies * x / tot if tot else copies / model.experts for x in n])
        loads.append(row)
    reuse = f", its {h.layers} layers reused over {model.layers}" if h.layers != model.layers else ""
    return loads, f"trace {path} ({len(loads)} steps, recorded on EP {h.ep}{reuse}; {h.source or 'no source'})"
