"""Routing traces (moesched.routing_trace) and their synthetic generators (moesched.routing_gen)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from moesched.errors import MoeschedError
from moesched.routing_gen import cap_shares, generate, parse_spec, round_counts
from moesched.routing_trace import LayerRouting, RoutingTrace, TraceHeader, load, parse

HEADER = TraceHeader(layers=2, experts=4, ep=2, tokens_per_rank=8, top_k=2)


def _trace() -> RoutingTrace:
    recs = [LayerRouting.from_lists(s, l, [[8, 4, 2, 2], [1, 5, 5, 5]]) for s in range(3) for l in range(2)]
    return RoutingTrace(HEADER, tuple(recs))


def test_round_trip(tmp_path: Path) -> None:
    t = _trace()
    t.save(tmp_path / "t.jsonl")
    back = load(tmp_path / "t.jsonl")
    assert back == t
    assert back.steps == [0, 1, 2]


def test_loads_capacity_and_rank_matrix() -> None:
    r = _trace().records[0]
    assert r.expert_load() == [9, 9, 7, 7]
    assert r.imbalance() == pytest.approx(9 / 8)
    # capacity 4 per expert per source rank: row 0 keeps [4,4,2,2], row 1 [1,4,4,4]
    assert r.kept(4) == ((4, 4, 2, 2), (1, 4, 4, 4))
    assert r.dropped(4) == 4 + 1 + 1 + 1
    assert r.dropped(None) == 0
    # experts 0,1 on rank 0, experts 2,3 on rank 1
    assert r.rank_matrix() == ((12, 4), (6, 10))
    assert r.rank_matrix(4) == ((8, 4), (5, 8))
    assert r.rank_matrix(placement=[1, 0, 0, 1]) == ((6, 10), (10, 6))
    assert r.rank_imbalance() == pytest.approx(18 / 16)  # ranks receive 12 + 6 = 18 and 4 + 10 = 14
    assert r.rank_imbalance(placement=[1, 0, 0, 1]) == 1.0


def _lines(t: RoutingTrace) -> list[str]:
    return t.to_jsonl().splitlines()


@pytest.mark.parametrize("edit, msg", [
    (lambda L: [L[0].replace('"version": 1', '"version": 2')] + L[1:], "version"),
    (lambda L: [L[0].replace('"format": "moesched.routing"', '"format": "x"')] + L[1:], "not a routing trace"),
    (lambda L: L[:1] + [L[1].replace("[8,4,2,2]", "[8,-4,2,2]")] + L[2:], "negative"),
    (lambda L: L[:1] + [L[1].replace("[8,4,2,2]", "[8,4,2]")] + L[2:], "2 x 4"),
    (lambda L: L[:1] + [L[1].replace("[8,4,2,2]", "[80,4,2,2]")] + L[2:], "more copies"),
    (lambda L: L[:1] + [L[1].replace("[8,4,2,2]", "[8.5,4,2,2]")] + L[2:], "integers"),
    (lambda L: L[:-1], "1 of 2 layers"),
    (lambda L: L + [L[-1]], "twice"),
    (lambda L: L[:1] + L[3:] + L[1:3], "increasing"),
    (lambda L: L[:1] + [L[1].replace('"layer":0', '"layer":5')] + L[2:], "out of range"),
    (lambda L: [L[0].replace('"ep": 2', '"ep": 3')] + L[1:], "divide"),
    (lambda L: [L[0].replace('"top_k": 2', '"top_k": 5')] + L[1:], "exceeds experts"),
    (lambda L: L[:1], "no records"),
    (lambda L: L[:1] + ["{not json"], "not JSON"),
    (lambda L: L[:1] + [L[1].replace('"step"', '"stp"')] + L[2:], "keys"),
])
def test_bad_traces_are_refused(edit, msg: str) -> None:
    with pytest.raises(MoeschedError, match=msg) as e:
        parse(edit(_lines(_trace())))
    assert "\n" not in str(e.value)


def test_zipf_is_zipf_and_drifts() -> None:
    t = generate(parse_spec("zipf:1.0,seed=1"), layers=1, experts=8, ep=2, tokens_per_rank=840, top_k=1, steps=3)
    load = sorted(t.records[0].expert_load(), reverse=True)
    h = sum(1 / r for r in range(1, 9))
    assert all(abs(a - 2 * 840 / r / h) < 2 for r, a in enumerate(load, 1))  # 2 ranks x 840 / r / H(8, 1)
    assert t.records[0].copies == t.records[2].copies  # no drift: constant
    d = generate(parse_spec("zipf:1.2,drift=0.5,seed=1"), layers=1, experts=8, ep=2, tokens_per_rank=840,
                 top_k=2, steps=5)
    assert d.records[0].copies != d.records[4].copies
    for r in d.records:
        assert all(sum(row) == 840 * 2 for row in r.copies)
        assert max(r.expert_load()) <= 2 * 840  # an expert gets each token at most once


def test_even_and_dirichlet() -> None:
    e = generate(parse_spec("even"), layers=2, experts=4, ep=2, tokens_per_rank=8, top_k=2, steps=2)
    assert all(r.imbalance() == 1.0 for r in e.records)
    a = generate(parse_spec("dirichlet:0.1,seed=2"), layers=2, experts=16, ep=4, tokens_per_rank=64, top_k=2, steps=2)
    b = generate(parse_spec("dirichlet:100,seed=2"), layers=2, experts=16, ep=4, tokens_per_rank=64, top_k=2, steps=2)
    assert min(r.imbalance() for r in a.records) > max(r.imbalance() for r in b.records)


def test_cap_and_round() -> None:
    p = cap_shares([0.7, 0.2, 0.1], 0.5)
    assert p == pytest.approx([0.5, 0.5 * 2 / 3, 0.5 / 3])
    assert round_counts([0.5, 0.25, 0.25], 7) in ([4, 2, 1], [4, 1, 2], [3, 2, 2])
    assert sum(round_counts([1 / 3] * 3, 10)) == 10


@pytest.mark.parametrize("spec", ["zipf", "zipf:-1", "zipf:1,foo=2", "dirichlet:0", "dirichlet:1,drift=1",
                                  "uniform", "even:1", "zipf:x", "zipf:1,seed=1.5", "zipf:1,seed=inf",
                                  "zipf:1,seed=nan", "zipf:1,seed=1e400", "zipf:1,seed=-1", "zipf:nan"])
def test_bad_specs(spec: str) -> None:
    with pytest.raises(MoeschedError, match="routing spec"):
        parse_spec(spec)


def test_header_json_is_exact() -> None:
    d = json.loads(_lines(_trace())[0])
    assert d == {"format": "moesched.routing", "version": 1, "layers": 2, "experts": 4, "ep": 2,
                 "tokens_per_rank": 8, "top_k": 2, "router": "topk_softmax", "source": ""}


def test_cli_gen_and_show(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from moesched.cli import main
    out = tmp_path / "z.jsonl"
    assert main(["routing", "gen", "zipf:1.0,drift=0.2", "--model", "GPT2-Tiny-MoE", "--ep", "4", "--steps", "5",
                 "--out", str(out)]) == 0
    t = load(out)
    assert (t.header.layers, t.header.experts, t.header.ep, t.steps) == (12, 16, 4, [0, 1, 2, 3, 4])
    assert t.header.source == "zipf:1,drift=0.2,seed=0"
    assert main(["routing", "show", str(out)]) == 0
    text = capsys.readouterr().out
    h = sum(1 / r for r in range(1, 17))
    assert all(abs(r.imbalance() - 16 / h) < 0.01 for r in t.records)  # Zipf(1), 16 experts: E / H(16)
    assert f"{t.records[0].imbalance():.3f}" in text


@pytest.mark.parametrize("args, msg", [
    (["routing", "gen", "zipf:1", "--model", "GPT2-Tiny-MoE", "--ep", "3", "--out", "X"], "--ep 3"),
    (["routing", "gen", "pareto:1", "--model", "GPT2-Tiny-MoE", "--ep", "4", "--out", "X"], "kind"),
    (["routing", "gen", "zipf:1", "--model", "GPT2-Tiny-MoE", "--ep", "4", "--steps", "0", "--out", "X"], "--steps"),
    (["routing", "gen", "zipf:1", "--model", "Qwen3-30B-A3B", "--ep", "128", "--steps", "1000", "--out", "X"],
     "at most 127 steps"),
    (["routing", "show", "BAD"], "version"),
])
def test_cli_refuses_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], msg: str) -> None:
    from moesched.cli import main
    bad = tmp_path / "bad.jsonl"
    bad.write_text(_trace().to_jsonl().replace('"version": 1', '"version": 7'))
    args = [str(bad) if a == "BAD" else str(tmp_path / "x.jsonl") if a == "X" else a for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("moesched: error:") and msg in err and err.count("\n") == 1



def test_a_trace_that_does_not_fit_the_model_says_what_to_change(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    """A 12-layer trace prices a model of 12, 24, ... layers; other layer counts are told
    the trace's, other expert counts that the trace is of another model. One line, exit 2,
    nothing printed before."""
    from moesched.cli import main
    trace = tmp_path / "t.jsonl"
    assert main(["routing", "gen", "zipf:1.2", "--model", "GPT2-Tiny-MoE", "--ep", "4", "--steps", "3",
                 "--out", str(trace)]) == 0
    capsys.readouterr()
    cases = [("GPT2-Tiny-MoE", "5", "routing trace has 12 layers, the model GPT2-Tiny-MoE 5: the model's layers "
              "must be a multiple of the trace's (e.g. --layers 12)"),
             ("DeepSeek-V2-Lite", "12", "routing trace has 16 experts, the model DeepSeek-V2-Lite 64: "
              "a trace of this model is needed")]
    for model, layers, msg in cases:
        assert main(["simulate", "--model", model, "--layers", layers, "--routing", str(trace)]) == 2
        cap = capsys.readouterr()
        assert cap.err == f"moesched: error: {msg}\n" and cap.out == ""
    assert main(["simulate", "--model", "GPT2-Tiny-MoE", "--layers", "24", "--routing", str(trace),
                 "--schedules", "vanilla", "--routing-samples", "2"]) == 0
