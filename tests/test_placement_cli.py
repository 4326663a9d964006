"""``moesched placement``: the table, the CSV and plot outputs, and bad input (one line, exit 2)."""
from __future__ import annotations

from pathlib import Path

import pytest

from moesched.cli import main

ROUTING = Path(__file__).resolve().parents[1] / "routing"
TRACE = str(ROUTING / "h200-bytelm-L4-E16-dsv3.jsonl")
NOT_DROPPING = ("static", "eplb", "flexmoe", "hot")

BASE = ["placement", "--model", "DeepSeek-V2-Lite", "--layers", "3", "--steps", "30", "--interval", "10"]


def test_placement_replays_every_policy(tmp_path, capsys):
    csv, png = tmp_path / "r.csv", tmp_path / "r.png"
    assert main(BASE + ["--routing", "zipf:1.2", "--csv", str(csv), "--png", str(png)]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()}
    for name in ("static", "capacity", "eplb", "flexmoe", "hot", "moesched", "ideal"):
        assert name in rows, out
    total = {n: float(rows[n][1]) for n in ("static", "eplb", "flexmoe", "hot", "moesched", "ideal")}
    assert total["moesched"] <= min(total[n] for n in ("static", "eplb", "flexmoe", "hot"))
    assert total["ideal"] <= total["moesched"] < total["static"]
    lines = csv.read_text().splitlines()
    assert lines[0] == "policy,step,step_us,balance,balance_before,migrated" and len(lines) == 1 + 6 * 30
    assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("extra, msg", [
    (["--routing", "zipf:abc"], "expected zipf:S"),
    (["--routing", "zipf:5000"], "s <= 100"),
    (["--routing", "zipf:1", "--policies", "static,nope"], "--policies"),
    (["--routing", "zipf:1", "--interval", "0"], "--interval"),
    (["--routing", "zipf:1", "--threshold", "0.5"], "--threshold"),
    (["--routing", "zipf:1", "--slots", "900"], "over the GPU"),
    (["--routing", "zipf:1", "--steps", "0"], "--steps"),
    (["--routing", "zipf:1", "--seed", "-1"], "--seed"),
    (["--routing", "zipf:1", "--drift-steps", "inf"], "--drift-steps"),
    (["--routing", "zipf:1", "--cluster", "1x3"], "experts do not divide over the 3 ranks of 1x3"),
    (["--routing", "/nonexistent/trace.jsonl"], "trace"),
])
def test_bad_input_is_one_line_and_exit_2(extra, msg, capsys):
    assert main(BASE + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("moesched: error:") and msg in err[0], err


def test_placement_replays_a_shipped_trace(capsys):
    argv = ["placement", "--model", "GPT2-XL-MoE", "--layers", "2", "--interval", "25",
            "--routing", TRACE]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "recorded on EP" in out
    total = {line.split()[0]: float(line.split()[1]) for line in out.splitlines()
             if line.split() and line.split()[0] in ("static", "eplb", "flexmoe", "hot", "moesched", "ideal")}
    assert total["moesched"] <= min(total[n] for n in ("static", "eplb", "flexmoe", "hot"))
    assert total["ideal"] / total["moesched"] >= 0.9
    # a trace of 16 experts on a model of 8: one line, exit 2
    assert main(["placement", "--model", "Mixtral-7B-FSMoE", "--routing", TRACE]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "16 experts" in err[0]


def _totals(out: str) -> dict[str, float]:
    return {line.split()[0]: float(line.split()[1]) for line in out.splitlines()
            if line.split() and line.split()[0] in NOT_DROPPING + ("moesched", "ideal")}


@pytest.mark.parametrize("model, trace, layers, of_ideal", [
    ("GPT2-XL-MoE", "h200-bytelm-L4-E16-topk.jsonl", "2", 0.9),
    # 90.7% with split experts (88.6% without: no replica-free persistent placement passes
    # 89.5% here; benchmarks/placement_bound.py bounds splitting the hottest at 92.3%)
    ("Mixtral-7B-FSMoE", "bytelm-L4-E8-top2.jsonl", "7", 0.90),
])
def test_moesched_matches_the_best_policy_on_each_shipped_trace(model, trace, layers, of_ideal, capsys):
    argv = ["placement", "--model", model, "--layers", layers, "--interval", "25", "--routing", str(ROUTING / trace),
            "--policies", ",".join(NOT_DROPPING + ("moesched",))]
    assert main(argv) == 0
    total = _totals(capsys.readouterr().out)
    assert total["moesched"] <= min(total[n] for n in NOT_DROPPING)
    assert total["ideal"] / total["moesched"] >= of_ideal


def test_placement_bound_groupings():
    """benchmarks/placement_bound.py enumerates every grouping once: 105 pairings of 8
    experts on 4 ranks; 1505 groupings of at most 3 (Stirling numbers, capped)."""
    import sys
    sys.path.insert(0, str(ROUTING.parent / "benchmarks"))
    from placement_bound import groupings
    assert len(list(groupings(8, 4, 2))) == 105
    gs = list(groupings(8, 4, 3))
    assert len(gs) == len(set(gs)) == 1505 and all(max(g.count(x) for x in set(g)) <= 3 for g in gs)
